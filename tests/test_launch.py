"""The train stage's submitit launch: a real child process (local executor), results and failures.

The jobs are builtins, so the child process can unpickle them without this test module on its path.
"""

from __future__ import annotations

import os

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
