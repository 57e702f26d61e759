# Around the DAG, in the Snakemake process only (its jobs run with --no-hooks): the MLflow server the jobs share
# (params `tracking`), and after a successful run the outputs recorded by DVC and pushed to its remote (params
# `dvc_remote`).
import shlex

import yaml
from snakemake.logging import logger

from adagen.tracking import TrackingServer

TRACKING = config.get("tracking", {"server": False})
SERVER = (TrackingServer(TRACKING.get("host", "127.0.0.1"), TRACKING.get("port", 5000),
                         log_path=f"{LOGS}/mlflow-server.log") if TRACKING["server"] else None)
DVC_REMOTE = config.get("dvc_remote")


def dvc_set_problem():
    """Why dvc.yaml cannot record this run's outputs (it names one params set in its vars), or None."""
    entries = yaml.safe_load(Path("dvc.yaml").read_text())["vars"]
    dvc_set = next((entry["set"] for entry in entries if isinstance(entry, dict) and "set" in entry), None)
    params_files = {entry.split(":")[0] for entry in entries if isinstance(entry, str)}
    if PARAMS_FILE != f"params/{dvc_set}.yaml" or params_files != {PARAMS_FILE}:
        return (f"dvc_remote: dvc.yaml records params set {dvc_set!r} ({', '.join(sorted(params_files))}), this run "
                f"is {PARAMS_FILE}: set `set` and the params file in dvc.yaml's vars to it")
    return None


if DVC_REMOTE and (problem := dvc_set_problem()):
    raise WorkflowError(problem)


def share_with_dvc():
    """Record what the run made in dvc.lock (hashes only: no file is touched, so Snakemake still finds it up to
    date) and push it to the remote of the params set."""
    name = DVC_REMOTE["name"]
    shell(f"dvc remote add --local --force {name} {shlex.quote(DVC_REMOTE['url'])}")
    shell("dvc commit --force --no-relink --with-deps report")
    shell(f"dvc push --remote {name} --with-deps report")


onstart:
    if SERVER:
        # Every job inherits the environment (sbatch exports it), the submitit training jobs too.
        os.environ["MLFLOW_TRACKING_URI"] = SERVER.start()
        logger.info(f"MLflow tracking server {SERVER.uri} (pid {SERVER.process.pid}, log {SERVER.log_path})")


onsuccess:
    try:
        if DVC_REMOTE:
            share_with_dvc()
    finally:
        if SERVER:
            SERVER.stop()


onerror:
    if SERVER:
        SERVER.stop()
