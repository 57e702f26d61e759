"""Shared fixtures: offline hygiene and a throwaway MLflow store for every test."""

from __future__ import annotations

import os
import shutil
import sys
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline_environment(tmp_path_factory, monkeypatch):
    """This environment's tools first on PATH; no hub downloads, no analytics; MLflow/torch caches in a
    temporary folder."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def copy_project(target: Path) -> Path:
    """The repository's tracked and unignored files (no .venv, no results), in a fresh git repository."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        source = REPO / name
        if source.is_symlink() or source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name, follow_symlinks=False)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=target, check=True)
    return target


@pytest.fixture
def project_copy(tmp_path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM cluster on localhost (tests/local_slurm.py) for the tests that need one. Skipped where
    slurm-wlm and munge are not installed, unless ADAGEN_REQUIRE_SLURM=1 (CI), where that is a failure."""
    from local_slurm import LocalSlurm, missing

    reason = missing()
    if reason:
        if os.environ.get("ADAGEN_REQUIRE_SLURM") == "1":
            pytest.fail(f"ADAGEN_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
