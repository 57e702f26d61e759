"""The train stage's submitit launch: a real child process (local executor), results and failures.

The jobs are builtins, so the child process can unpickle them without this test module on its path.
"""

from __future__ import annotations

import os
import signal

import pytest

from adagen.launch import JobFailed, run_job

LOCAL = {"executor": "local", "timeout_min": 5}


def test_a_local_job_runs_in_another_process_and_returns_its_result(tmp_path, capsys):
    assert run_job(os.getpid, launch=LOCAL, folder=tmp_path, name="adagen-test") != os.getpid()
    assert run_job(divmod, 17, 5, launch=LOCAL, folder=tmp_path, name="adagen-test") == (3, 2)
    run_job(print, "hello from the job", launch=LOCAL, folder=tmp_path, name="adagen-test")
    assert "hello from the job" in capsys.readouterr().out  # the job's log is copied to ours


def test_a_debug_job_runs_in_this_process(tmp_path):
    assert run_job(os.getpid, launch={**LOCAL, "executor": "debug"}, folder=tmp_path, name="t") == os.getpid()


def test_a_failing_job_raises_with_the_end_of_its_log(tmp_path):
    with pytest.raises(JobFailed, match="adagen-test") as error:
        run_job(int, "the reward backbone is missing", launch=LOCAL, folder=tmp_path, name="adagen-test")
    assert "invalid literal for int() with base 10: 'the reward backbone is missing'" in str(error.value)


def test_adagen_train_without_its_inputs_fails_with_a_clear_message(tmp_path):
    """The stage runs inside the submitit job; its missing-input error comes back to the command line."""
    import subprocess
    import sys

    from conftest import copy_project

    project = copy_project(tmp_path / "project")
    result = subprocess.run([sys.executable, "-m", "adagen.cli", "train", "--params", "params/smoke.yaml",
                             "--paradigm", "dit"], cwd=project, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert result.returncode == 1
    assert "adagen-train-dit-adaptive" in result.stderr and "missing input" in result.stderr
    assert "tuned-static.json: run `adagen tune-static --paradigm dit`" in result.stderr
    assert (project / "logs" / "smoke" / "submitit" / "train-dit-adaptive").is_dir()


def train_until_done(checkpoint: str, iterations: int, pid_file: str | None = None) -> dict:
    """A tiny AdaGen training that checkpoints every iteration (the job of the preemption test); it leaves
    its process id in `pid_file` for the test to signal."""
    import dataclasses
    from pathlib import Path

    if pid_file is not None:
        Path(pid_file).write_text(str(os.getpid()))
    from adagen.rl.train import train_adagen
    from test_adagen_training import SETTINGS, setup, state_of

    generator, action_map, policy, critic, discriminator, reals, labels = setup()
    summary = train_adagen(generator, action_map, policy, critic, discriminator, reals, labels,
                           dataclasses.replace(SETTINGS, iterations=iterations, checkpoint_every=1),
                           checkpoint_path=checkpoint, fingerprint="requeue")
    return {"state": state_of(policy, critic, discriminator), "resumed_from": summary["resumed_from_iteration"],
            "rewards": [entry["reward"] for entry in summary["history"]]}


@pytest.mark.parametrize("executor", ["local", pytest.param("slurm", marks=pytest.mark.slow)])
def test_a_preempted_training_job_requeues_and_ends_as_if_never_stopped(executor, request, tmp_path, monkeypatch):
    """The job is signalled mid-run (what SLURM sends before a timeout or preemption): submitit requeues the
    same call, training resumes from its last checkpoint and ends exactly where an uninterrupted run does. On
    the local executor the signal goes to the task's process; on the one-node SLURM cluster (tests/local_slurm.py)
    it is sent by scancel, as SLURM does, and submitit requeues the job with scontrol."""
    import time
    from pathlib import Path

    import torch

    from adagen.launch import submit_job, wait_for

    launch = LOCAL
    if executor == "slurm":
        cluster = request.getfixturevalue("slurm_cluster")
        launch = {**LOCAL, "executor": "slurm", "slurm_partition": cluster.partition, "cpus_per_task": 1,
                  "mem_gb": 1}
    tests = str(Path(__file__).resolve().parent)  # the job process imports this module's training function
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    iterations = 40
    # The reference runs as a job too: same kind of process, same thread count, so the same float arithmetic.
    reference = run_job(train_until_done, str(tmp_path / "reference.pt"), iterations, launch=launch,
                        folder=tmp_path / "jobs", name="adagen-reference")
    job = submit_job(train_until_done, str(tmp_path / "job.pt"), iterations, str(tmp_path / "pid"), launch=launch,
                     folder=tmp_path / "jobs", name="adagen-requeue")
    deadline = time.monotonic() + 300
    while not (tmp_path / "job.pt").exists() and time.monotonic() < deadline and not job.done():
        time.sleep(0.05)
    if executor == "slurm":
        job._interrupt(timeout=True)  # scancel --signal USR2: SLURM's warning before the time limit
    else:
        # What SLURM sends a job before its time limit or on preemption (submitit's default USR2), to the task.
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGUSR2)
    result = wait_for(job, launch, "adagen-requeue")
    assert result["resumed_from"] is not None and 0 < result["resumed_from"] < iterations
    assert result["rewards"] == reference["rewards"]
    assert all(torch.equal(a, b) for a, b in zip(result["state"], reference["state"]))
    if executor == "slurm":  # the same SLURM job, started a second time
        import subprocess

        details = subprocess.run(["scontrol", "show", "job", job.job_id], capture_output=True, text=True,
                                 check=True, timeout=30).stdout.split()
        assert "Restarts=1" in details
