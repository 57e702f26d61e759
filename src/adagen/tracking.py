"""MLflow tracking: one run per stage invocation. The only module of the package that imports mlflow.

Library code never talks to MLflow: it takes a `report(metrics, step)` callback, and the stage entry point
passes `StageRun.log_metrics`. Store: `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the working
directory (the repository root when run by Snakemake or DVC) with artifacts in `mlartifacts/`. Stages run
in parallel under Snakemake share the sqlite file, so every write holds an exclusive file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ARTIFACT_DIR = "mlartifacts"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _flatten(mapping: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def git_commit() -> str:
    """HEAD of the working directory's repository, with '-dirty' when tracked files changed."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.strip() + ("-dirty" if dirty.strip() else "")


def file_md5(path: Path) -> str:
    """MD5 of a file, the hash DVC records for it in dvc.lock."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class StageRun:
    """An open MLflow run of one stage; methods are safe to call from a training loop."""

    def __init__(self, client, run_id: str, lock_path: Path | None):
        self._client = client
        self.run_id = run_id
        self._lock_path = lock_path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        with open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key.replace("@", "_"), float(value), now, step) for key, value in metrics.items()
                 if value is not None]
        with self._locked():
            self._client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        with self._locked():
            self._client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        with self._locked():
            self._client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


class UntrackedRun:
    """A StageRun that records nothing: the other ranks of a distributed stage (rank 0 tracks)."""

    run_id = None

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        pass

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass


@contextlib.contextmanager
def stage_run(
    *,
    set_name: str,
    stage: str,
    params: dict,
    params_hash: str,
    paradigm: str | None = None,
    variant: str | None = None,
    inputs: dict[str, Path] | None = None,
) -> Iterator[StageRun]:
    """Open a run named after the stage in the experiment of the params set; close it FINISHED or FAILED."""
    import mlflow  # imported here: half a second or more, only stages that record runs pay it
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else None
    tags = {
        "stage": stage,
        "params_set": set_name,
        "params_hash": params_hash,
        "git_commit": git_commit(),
        "mlflow.runName": "-".join(part for part in (stage, paradigm, variant) if part),
    }
    if paradigm:
        tags["paradigm"] = paradigm
    if variant:
        tags["variant"] = variant
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]  # where the stage ran, to find its job's log
    for name, path in (inputs or {}).items():
        if Path(path).is_file():
            tags[f"input.{name}.md5"] = file_md5(Path(path))
    run = StageRun(None, "", lock_path)
    with run._locked():
        # Opening the store checks (and on first use creates) its tables: one process at a time, or two jobs
        # starting together both try to create them.
        client = run._client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(set_name)
        if experiment is None:
            artifacts = Path(ARTIFACT_DIR).resolve().as_uri() if lock_path else None
            experiment_id = client.create_experiment(set_name, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        run.run_id = client.create_run(experiment_id, tags=tags).info.run_id
        flat = [mlflow.entities.Param(key, value[:6000]) for key, value in _flatten(params).items()]
        for start in range(0, len(flat), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.run_id, params=flat[start : start + 100])
    try:
        yield run
    except BaseException:
        with run._locked():
            client.set_terminated(run.run_id, status="FAILED")
        raise
    with run._locked():
        client.set_terminated(run.run_id, status="FINISHED")


class TrackingServer:
    """`mlflow server` on the project's store, for the jobs of a cluster run (params `tracking`): jobs on many
    nodes must not share one sqlite file, so they all talk to this one process instead. `start()` returns once
    it answers; `stop()` ends it by its process id."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5000, log_path: str | Path = "mlflow-server.log",
                 store: str = DEFAULT_TRACKING_URI, artifacts: str = ARTIFACT_DIR):
        import socket

        self.host, self.port, self.log_path = host, port, Path(log_path)
        self.store, self.artifacts = store, artifacts
        # Bound to every interface, it is reached by this machine's name (what jobs on other nodes resolve).
        self.reachable_as = socket.getfqdn() if host in ("0.0.0.0", "::") else host
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.reachable_as}:{self.port}"

    def command(self) -> list[str]:
        import sys

        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store,
                   "--artifacts-destination", self.artifacts, "--host", self.host, "--port", str(self.port),
                   # One worker process: sqlite takes one writer at a time, and one process serialises them.
                   "--workers", "1"]
        if self.reachable_as not in ("127.0.0.1", "localhost"):
            # MLflow only accepts Host headers of localhost and private addresses unless told otherwise.
            command += ["--allowed-hosts", f"{self.reachable_as},{self.reachable_as}:{self.port}"]
        return command

    def start(self, timeout: float = 120.0) -> str:
        """Start the server (its output in `log_path`) and wait until /health answers; returns its URI."""
        import urllib.request

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            # Its own process group: stop() ends the server together with its uvicorn worker.
            # No job runner: its eight queue consumers serve MLflow's GenAI jobs, which no stage submits.
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True,
                                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.uri
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server on {self.host}:{self.port} did not start; its log "
                                   f"({self.log_path}):\n{self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)

    def stop(self, timeout: float = 30.0) -> None:
        """End the server and every process it started (its process group), SIGKILL after `timeout` s."""
        import signal

        if self.process is None:
            return
        group = self.process.pid
        deadline = time.monotonic() + timeout
        try:
            os.killpg(group, signal.SIGTERM)
            while time.monotonic() < deadline + 10:
                self.process.poll()  # reap the server itself; init reaps its children
                # Signal 0 only asks whether the group still has a process (ProcessLookupError once empty).
                os.killpg(group, signal.SIGKILL if time.monotonic() > deadline else 0)
                time.sleep(0.1)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None
