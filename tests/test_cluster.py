"""The pipeline on a real one-node SLURM cluster (tests/local_slurm.py), as a cluster user runs it.

The profile template is installed with the README's command into a fresh config folder, given the site lines a
user adds (partition, params set), and `snakemake --profile slurm all` runs verbatim on a copy of the smoke
params with training on SLURM as 2 gloo tasks, an MLflow server for the jobs and a DVC remote. One run is shared
by the tests of this module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import copy_project

pytestmark = pytest.mark.slow
RUN_TIMEOUT = 1500  # seconds for the whole DAG on 2 cores; the run is killed (and its jobs cancelled) past it
PARADIGMS = ["maskgit", "var", "dit", "sit"]
VARIANTS = ["static", "tuned-static", "adaptive"]
# SLURM jobs per rule of the smoke DAG (train runs on the submitting host and submits through submitit).
RULE_JOBS = {"prepare_data": 1, "train_evaluator": 1, "refstats": 1, "train_tokenizer": 2, "pretrain": 4,
             "tune_static": 4, "train_reward_backbone": 1, "train_fidelity_classifier": 1, "sample": 12,
             "evaluate": 12, "tradeoff": 4, "refine": 4, "report": 1}
TRAINED = ("adaptive", "fidelity")  # the policies of the default target, each a submitit job


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_jobs() -> list[dict]:
    """Every job the controller remembers: id, name, comment (the Snakemake plugin puts the rule there),
    state, CPUs and memory."""
    fields = ["id", "name", "comment", "state", "cpus", "memory"]
    squeue = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%j|%k|%T|%C|%m"], capture_output=True,
                            text=True, check=True, timeout=30)
    return [dict(zip(fields, line.split("|"))) for line in squeue.stdout.splitlines()]


@pytest.fixture(scope="module")
def cluster_run(slurm_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    project = copy_project(root / "project")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    # Where jobs would write if they ignored the server: it must stay empty.
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'not-the-server.db'}"
    env.update(HOME=str(root / "home"), XDG_CONFIG_HOME=str(root / "config"))

    # The README's install command, then the site lines a user edits in the installed profile.
    subprocess.run(["make", "slurm-profile"], cwd=project, env=env, check=True, capture_output=True, timeout=60)
    profile_file = root / "config" / "snakemake" / "slurm" / "config.yaml"
    profile = yaml.safe_load(profile_file.read_text())
    profile["configfile"] = "params/cluster.yaml"
    profile["default-resources"].update(slurm_partition=slurm_cluster.partition, mem_mb=1000, runtime=30)
    profile["slurm-no-account"] = True  # the local cluster has no accounts
    profile["slurm-init-seconds-before-status-checks"] = 2  # short jobs: ask early
    profile_file.write_text(yaml.safe_dump(profile))

    params = yaml.safe_load((project / "params" / "smoke.yaml").read_text())
    params["launch"].update(executor="slurm", tasks_per_node=2, cpus_per_task=1, mem_gb=2,
                            slurm_partition=slurm_cluster.partition)
    params["resources"] = {"pretrain": {"mem_mb": 1500}}
    params["tracking"] = {"server": True, "host": "127.0.0.1", "port": port}
    params["dvc_remote"] = {"name": "shared", "url": str(root / "dvc-remote")}
    (project / "params" / "cluster.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("set: default", "set: cluster")
                        .replace("params/default.yaml:paradigms", "params/cluster.yaml:paradigms"))

    start = time.monotonic()
    process = subprocess.Popen(["snakemake", "--profile", "slurm", "all"], cwd=project, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        subprocess.run(["scancel", "--full", f"--partition={slurm_cluster.partition}"], timeout=30)
        pytest.fail(f"snakemake --profile slurm all ran past {RUN_TIMEOUT} s:\n{output[-5000:]}")
    seconds = time.monotonic() - start
    print(f"snakemake --profile slurm all: {seconds:.0f} s")
    assert process.returncode == 0, output[-8000:]
    return {"project": project, "output": output, "root": root, "port": port, "jobs": slurm_jobs()}


def test_every_rule_runs_as_a_slurm_job_with_its_resources(cluster_run):
    project, jobs = cluster_run["project"], cluster_run["jobs"]
    assert (project / "results" / "cluster" / "summary.md").is_file()
    rule_jobs = {}
    for job in jobs:
        if job["comment"].startswith("rule_"):
            rule = next(name for name in RULE_JOBS if job["comment"].startswith(f"rule_{name}_")
                        or job["comment"] == f"rule_{name}")
            rule_jobs.setdefault(rule, []).append(job)
    assert {rule: len(found) for rule, found in rule_jobs.items()} == RULE_JOBS, jobs
    assert all(job["state"] == "COMPLETED" for found in rule_jobs.values() for job in found)
    # Memory from the params set for pretrain, the profile's default elsewhere.
    assert {job["memory"] for job in rule_jobs["pretrain"]} == {"1500M"}
    assert {job["memory"] for job in rule_jobs["sample"]} == {"1000M"}
    # Snakemake reports each submission with its SLURM job id.
    assert cluster_run["output"].count("submitted with SLURM jobid") >= sum(RULE_JOBS.values())


def test_training_runs_through_submitit_on_slurm_as_two_tasks(cluster_run):
    project, jobs = cluster_run["project"], cluster_run["jobs"]
    training = {job["name"]: job for job in jobs if job["name"].startswith("adagen-train-")}
    assert sorted(training) == sorted(f"adagen-train-{paradigm}-{variant}" for paradigm in PARADIGMS
                                      for variant in TRAINED)
    for paradigm in PARADIGMS:
        job = training[f"adagen-train-{paradigm}-adaptive"]
        assert job["state"] == "COMPLETED" and job["cpus"] == "2"
        details = subprocess.run(["scontrol", "show", "job", job["id"]], capture_output=True, text=True, check=True,
                                 timeout=30).stdout
        assert "NumTasks=2" in details.split()
        folder = project / "logs" / "cluster" / "submitit" / f"train-{paradigm}-adaptive"
        ranks = sorted(path.name.rsplit("_", 2)[-2] for path in folder.glob(f"{job['id']}_*_log.out"))
        assert ranks == ["0", "1"]
        info = json.loads((project / "results" / "cluster" / paradigm / "policy" / "adaptive.json").read_text())
        assert info["iterations"] == 2 and len(info["history"]) == 2


def test_mlflow_runs_of_every_job_are_in_the_one_server_store(cluster_run):
    from mlflow.tracking import MlflowClient

    project, root, jobs = cluster_run["project"], cluster_run["root"], cluster_run["jobs"]
    assert not (root / "not-the-server.db").exists()
    # The server was stopped by its process id at the end: nothing listens on its port any more.
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", cluster_run["port"])):
        pass
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cluster").experiment_id])
    job_ids = {job["id"] for job in jobs}
    assert len(runs) == sum(RULE_JOBS.values()) + len(TRAINED) * len(PARADIGMS)
    assert all(run.info.status == "FINISHED" and run.data.tags["slurm_job_id"] in job_ids for run in runs)
    assert len({run.data.tags["slurm_job_id"] for run in runs}) == len(runs)
    # Artifacts went through the server into the project's artifact folder.
    sample = next(run for run in runs if run.data.tags["stage"] == "sample")
    assert any(path.suffix == ".png" and sample.info.run_id in path.parts
               for path in (project / "mlartifacts").rglob("*"))


def test_outputs_are_committed_and_pushed_to_the_dvc_remote(cluster_run):
    project, root = cluster_run["project"], cluster_run["root"]

    def dvc(*arguments: str) -> str:
        result = subprocess.run(["dvc", *arguments], cwd=project, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert any((root / "dvc-remote").rglob("*"))
    assert "up to date" in dvc("status", "--with-deps", "report")
    assert "in sync" in dvc("status", "--cloud", "--remote", "shared", "--with-deps", "report")
    # Recording hashes touched no output: Snakemake still finds nothing to do.
    again = subprocess.run(["snakemake", "-n", "--configfile", "params/cluster.yaml", "--cores", "1", "all"],
                           cwd=project, capture_output=True, text=True, timeout=300)
    assert "Nothing to be done" in again.stdout + again.stderr
