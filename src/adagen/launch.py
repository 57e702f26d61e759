"""Where training runs: the `train` stage hands its work to a submitit executor and waits for it.

`local` runs it in a child process on this machine (what a laptop and the embedded default use), `debug` in
this very process (for a debugger), `slurm` as a cluster job. The job's own stdout/stderr stay in its submitit
folder and are copied to ours when it ends, so pipeline logs hold the progress bars too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import submitit


class JobFailed(RuntimeError):
    """The submitted job raised; the message holds the end of its log."""


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not Path(path).is_file():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


class Requeueable(submitit.helpers.Checkpointable):
    """`function(*args)` as a job that submitit requeues on preemption or timeout (SLURM's signal, or
    `job._interrupt()` on the local executor). The requeued call starts over and the work resumes from its own
    last checkpoint (training checkpoints every `checkpoint_every` iterations and continues exactly)."""

    def __init__(self, function: Callable[..., Any]):
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


def run_job(function: Callable[..., Any], *args: Any, launch: dict, folder: str | Path, name: str) -> Any:
    """`function(*args)` through the `launch` params' executor; returns its result once the job has ended."""
    return wait_for(submit_job(function, *args, launch=launch, folder=folder, name=name), launch, name)


def submit_job(function: Callable[..., Any], *args: Any, launch: dict, folder: str | Path,
               name: str) -> submitit.Job:
    """Submit `function(*args)` (requeued on preemption) to the `launch` params' executor; returns the job."""
    executor = submitit.AutoExecutor(folder=Path(folder), cluster=launch["executor"])
    # On one machine only the process count applies: nodes, GPUs and memory are the machine's own.
    keys = (("tasks_per_node", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "slurm_partition",
             "slurm_account") if launch["executor"] == "slurm" else ("tasks_per_node",))
    resources = {key: launch[key] for key in keys if launch.get(key) is not None}
    if launch["executor"] == "debug" and resources.get("tasks_per_node", 1) > 1:
        raise ValueError("executor debug runs one process in this one: use tasks_per_node 1 (or executor local)")
    executor.update_parameters(name=name, timeout_min=launch["timeout_min"], **resources)
    return executor.submit(Requeueable(function), *args)


def wait_for(job: submitit.Job, launch: dict, name: str) -> Any:
    """The job's result (rank 0's), once it has ended; its logs copied to ours; a failure as JobFailed."""
    try:
        return job.results()[0]  # every task returns; rank 0's result is the job's
    except submitit.core.utils.FailedJobError as error:
        stderr = getattr(job.paths, "stderr", None)
        raise JobFailed(f"{name} (submitit job {job.job_id}, log {stderr}) failed:\n{_tail(stderr) or error}") from None
    finally:
        for stream, path in ((sys.stdout, getattr(job.paths, "stdout", None)),
                             (sys.stderr, getattr(job.paths, "stderr", None))):
            if launch["executor"] != "debug" and path is not None and Path(path).is_file():
                stream.write(Path(path).read_text(errors="replace"))
                stream.flush()
