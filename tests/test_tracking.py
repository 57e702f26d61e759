"""The MLflow tracking server a cluster run shares (params `tracking`): started, used by a stage, stopped by PID."""

from __future__ import annotations

import os
import socket

import pytest

from adagen.tracking import TrackingServer, stage_run


def test_a_stage_records_through_the_server_into_its_store_and_the_server_stops(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the server's store and artifacts are relative to where Snakemake runs
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = TrackingServer("127.0.0.1", port, log_path=tmp_path / "logs" / "mlflow-server.log")
    assert server.start() == f"http://127.0.0.1:{port}"
    group = server.process.pid  # its own process group: the server and its worker
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        monkeypatch.setenv("SLURM_JOB_ID", "42")
        (tmp_path / "grid.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        with stage_run(set_name="cluster", stage="sample", params={"sample": {"n_samples": 8}},
                       params_hash="abc", paradigm="dit", variant="static") as run:
            run.log_metrics({"fid": 3.5})
            run.log_artifact(tmp_path / "grid.png")
    finally:
        server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (recorded,) = client.search_runs([client.get_experiment_by_name("cluster").experiment_id])
    assert recorded.info.status == "FINISHED" and recorded.data.metrics == {"fid": 3.5}
    assert recorded.data.tags["slurm_job_id"] == "42" and recorded.data.params["sample.n_samples"] == "8"
    assert [path.name for path in (tmp_path / "mlartifacts").rglob("*.png")] == ["grid.png"]
