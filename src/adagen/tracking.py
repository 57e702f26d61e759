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
