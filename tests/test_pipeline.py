"""End to end: the smoke params set through Snakemake, then DVC on the same outputs, with MLflow runs.

One run of the whole DAG is shared by the tests of this module (it takes a minute or two on 2 cores).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import copy_project

STAGES = {"prepare-data", "train-evaluator", "refstats", "train-tokenizer", "pretrain", "tune-static",
          "train-reward-backbone", "train-fidelity-classifier", "train", "tradeoff", "refine", "sample", "evaluate",
          "report"}
PER_PARADIGM = {"pretrain", "tune-static", "tradeoff", "refine"}  # one run per paradigm
TRAINED = ["adaptive", "fidelity"]  # the policies the default target trains per paradigm
PER_VARIANT = {"sample", "evaluate"}  # one run per paradigm and variant
PARADIGMS = ["maskgit", "var", "dit", "sit"]  # those of params/smoke.yaml
VARIANTS = ["static", "tuned-static", "adaptive"]  # those of params/smoke.yaml
SAMPLES = 2 * 40  # 2 evaluation seeds of 40 samples
TOKEN_PARADIGMS = ["maskgit", "var"]
SMOKE_NFE = {"maskgit": 4, "var": 4, "dit": 4, "sit": 4}  # 4 steps, 4 scales (1, 2, 4, 8), 4 evaluations
pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def finished_smoke_run(tmp_path_factory):
    """A project copy on which `snakemake --configfile params/smoke.yaml --cores 2 all` has run."""
    monkeypatch = pytest.MonkeyPatch()
    # The tools of this environment first on PATH, and MLflow's default store (sqlite at the project root).
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    project = copy_project(tmp_path_factory.mktemp("e2e") / "project")
    first = run(["snakemake", "--configfile", "params/smoke.yaml", "--cores", "2", "all"], project)
    yield project, first
    monkeypatch.undo()


def test_outputs_of_every_stage(finished_smoke_run):
    project, _ = finished_smoke_run
    results = project / "results" / "smoke"
    with open(results / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["paradigm", "variant", "nfe", "extra_calls", "fid", "fid_spread", "isc", "kid",
                             "precision", "recall", "seeds", "n_samples", "seconds"]
    # Per paradigm: the variants on every seed, then the refined samplers and the lambda sweep on the first seed.
    one_seed = {paradigm: ["adaptive+bestof2", *(["adaptive+lookahead2"] if paradigm in TOKEN_PARADIGMS else []),
                           "adaptive+lambda0", "adaptive+lambda1"] for paradigm in PARADIGMS}
    expected = []
    for paradigm in PARADIGMS:
        expected += [(paradigm, variant, "2", str(SAMPLES)) for variant in VARIANTS]
        expected += [(paradigm, variant, "1", str(SAMPLES // 2)) for variant in one_seed[paradigm]]
    assert [(row["paradigm"], row["variant"], row["seeds"], row["n_samples"]) for row in rows] == expected
    for row in rows:
        plain = SMOKE_NFE[row["paradigm"]]
        if row["variant"].startswith("adaptive+bestof2"):  # two candidates, a discriminator call for each
            assert (int(row["nfe"]), int(row["extra_calls"])) == (2 * plain, 2)
        elif row["variant"].startswith("adaptive+lookahead2"):  # extra branches at the branching steps, critic calls
            assert plain < int(row["nfe"]) < 2 * plain and int(row["extra_calls"]) > 0
        else:
            assert (int(row["nfe"]), int(row["extra_calls"])) == (plain, 0)
    assert all(np.isfinite(float(row["fid"])) and float(row["fid"]) > 0 for row in rows)
    summary = (results / "summary.md").read_text()
    assert "uniform noise" in summary and "Adaptive vs baselines" in summary
    assert "Inference-time refinement" in summary and "refine maskgit" in summary
    for paradigm in PARADIGMS:  # the plain policy's row in the refinement table is its evaluation's first seed
        refined = json.loads((results / paradigm / "metrics" / "refinement.json").read_text())
        plain = json.loads((results / paradigm / "metrics" / "adaptive.json").read_text())["per_seed"][0]
        assert refined["rows"][0]["fid"] == plain["fid"] and refined["seed"] == plain["seed"] == 0
        for figure in (results / paradigm / "fid-vs-nfe.png", results / paradigm / "samples" / "refined.png"):
            assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"{paradigm}/" + \
                str(figure.relative_to(results / paradigm)) in summary
    # The refined grid: three rows per sampler (each class has four samples on the first seed), ten classes.
    refined_grid = Image.open(results / "dit" / "samples" / "refined.png")
    samplers = 2  # dit: plain and best-of-2
    assert refined_grid.size == (10 * (16 + 2) * 4 + 2 * 4, (3 * samplers) * (16 + 2) * 4 + 2 * 4)
    for paradigm in PARADIGMS:
        assert f"| {paradigm} | static | 4 |" in summary and f"pretrain {paradigm}" in summary
        assert f"| {paradigm} | tuned-static |" in summary and f"train {paradigm} adaptive" in summary
        for figure in (results / paradigm / "schedules.png", results / paradigm / "training-adaptive.png"):
            assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.name in summary
    for paradigm in TOKEN_PARADIGMS:
        assert f"train-tokenizer {paradigm}" in summary
        tokenizer = json.loads((results / paradigm / "tokenizer" / "tokenizer.json").read_text())
        assert tokenizer["val_psnr"] > 0 and 0 < tokenizer["codebook_usage"] <= 1
    samples = np.load(results / "dit" / "samples" / "static.npz")
    assert samples["images"].dtype == np.uint8 and samples["images"].shape == (SAMPLES, 1, 16, 16)
    assert samples["seeds"].tolist() == [0] * 40 + [1000] * 40
    # The schedule as applied, per sample and decision, the same decisions for every variant.
    adaptive = np.load(results / "dit" / "samples" / "adaptive.npz")
    assert samples["action_cfg"].ndim == 2 and samples["action_cfg"].shape == adaptive["action_cfg"].shape
    assert samples["action_cfg"].shape[0] == SAMPLES and np.ptp(samples["action_cfg"], axis=0).max() == 0
    assert (results / "dit" / "samples" / "static.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((results / "dit" / "metrics" / "static.json").read_text())
    assert {"fid", "fid_spread", "isc", "kid", "precision", "recall", "n_samples", "nfe", "forwards",
            "seconds"} <= set(metrics)
    assert [row["seed"] for row in metrics["per_seed"]] == [0, 1000]
    assert metrics["fid"] == pytest.approx(np.mean([row["fid"] for row in metrics["per_seed"]]))
    assert metrics["forwards"] == 2 * metrics["nfe"] == 8
    for paradigm in PARADIGMS:
        for variant in VARIANTS:
            assert np.load(results / paradigm / "samples" / f"{variant}.npz")["images"].shape == (SAMPLES, 1, 16, 16)
    refstats = json.loads((project / "data" / "smoke" / "refstats" / "refstats.json").read_text())
    assert refstats["sanity"]["fid_noise_vs_val"] > 10 * refstats["sanity"]["fid_train_vs_val"]
    # Nothing half-written is left behind.
    assert not list(project.rglob(".*.tmp*"))


def test_a_second_run_does_nothing(finished_smoke_run):
    project, _ = finished_smoke_run
    again = run(["snakemake", "-n", "--configfile", "params/smoke.yaml", "--cores", "2", "all"], project)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_mlflow_has_one_finished_run_per_stage(finished_smoke_run):
    from mlflow.tracking import MlflowClient

    project, _ = finished_smoke_run
    assert (project / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.tags["stage"] for r in runs} == STAGES
    assert len(runs) == (len(STAGES) - len(PER_PARADIGM) - len(PER_VARIANT) - 2 + len(TOKEN_PARADIGMS)
                         + len(PER_PARADIGM) * len(PARADIGMS) + len(TRAINED) * len(PARADIGMS)
                         + len(PER_VARIANT) * len(PARADIGMS) * len(VARIANTS))
    for stage in PER_PARADIGM:
        assert sorted(r.data.tags["paradigm"] for r in runs if r.data.tags["stage"] == stage) == sorted(PARADIGMS)
    assert sorted((r.data.tags["paradigm"], r.data.tags["variant"]) for r in runs if r.data.tags["stage"] == "train") \
        == sorted((p, v) for p in PARADIGMS for v in TRAINED)
    for stage in PER_VARIANT:
        assert sorted((r.data.tags["paradigm"], r.data.tags["variant"]) for r in runs
                      if r.data.tags["stage"] == stage) == sorted((p, v) for p in PARADIGMS for v in VARIANTS)
    assert sorted(r.data.tags["paradigm"] for r in runs if r.data.tags["stage"] == "train-tokenizer") == \
        sorted(TOKEN_PARADIGMS)
    for stage_run in runs:
        assert stage_run.info.status == "FINISHED"
        assert stage_run.data.tags["params_hash"] and stage_run.data.tags["git_commit"] != "unknown"
        assert stage_run.data.params["generators.dit.sampling.nfe"] == "4"
    by_stage = {r.data.tags["stage"]: r for r in runs
                if r.data.tags.get("paradigm", "dit") == "dit" and r.data.tags.get("variant", "static") == "static"}
    losses = client.get_metric_history(by_stage["pretrain"].info.run_id, "train/loss")
    assert len(losses) >= 2  # a curve, not a single number
    artifacts = [a.path for a in client.list_artifacts(by_stage["sample"].info.run_id)]
    assert "static.png" in artifacts
    assert by_stage["evaluate"].data.metrics["fid"] > 0


def test_dvc_records_the_snakemake_outputs_and_reruns_one_paradigm(finished_smoke_run):
    project, _ = finished_smoke_run
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("set: default", "set: smoke")
                        .replace("params/default.yaml:paradigms", "params/smoke.yaml:paradigms"))
    # The default target's stages (the ablations have not run yet).
    run(["dvc", "commit", "--force", "--no-relink", "--with-deps", "report"], project)
    status = run(["dvc", "status", "--with-deps", "report"], project)
    assert "up to date" in status.stdout, status.stdout
    # Recording the outputs must not make Snakemake think they changed.
    again = run(["snakemake", "-n", "--configfile", "params/smoke.yaml", "--cores", "2", "all"], project)
    assert "Nothing to be done" in again.stdout + again.stderr
    results = project / "results" / "smoke"
    untouched = {path: path.stat().st_mtime_ns for path in [
        results / "maskgit" / "generator" / "model.pt", results / "maskgit" / "tokenizer" / "tokenizer.pt",
        *(results / paradigm / "metrics" / "static.json" for paradigm in PARADIGMS if paradigm != "maskgit")]}

    # A new MaskGIT schedule: `dvc repro evaluate@maskgit-static` samples and evaluates MaskGIT's static
    # variant again, nothing else.
    params_file = project / "params" / "smoke.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["generators"]["maskgit"]["sampling"]["steps"] = 3
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], project)
    assert "sample@maskgit" in status.stdout and "pretrain-on-tokens@maskgit" not in status.stdout
    repro = run(["dvc", "repro", "evaluate@maskgit-static"], project)
    ran = sorted(line.split("'")[1] for line in repro.stdout.splitlines() if line.startswith("Running stage"))
    assert ran == ["evaluate@maskgit-static", "sample@maskgit"], repro.stdout
    assert {path: path.stat().st_mtime_ns for path in untouched} == untouched
    assert json.loads((results / "maskgit" / "metrics" / "static.json").read_text())["nfe"] == 3


def test_mlflow_ui_serves_the_runs(finished_smoke_run):
    """`mlflow ui` on the project's store answers with the runs, their params, curves and artifacts."""
    import socket
    import time
    import urllib.request

    project, _ = finished_smoke_run
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=project, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def call(path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow ui did not start")
                time.sleep(0.5)
        experiment = call("/api/2.0/mlflow/experiments/get-by-name?experiment_name=smoke")["experiment"]
        runs = call("/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        stages = {tag["value"] for run_ in runs for tag in run_["data"]["tags"] if tag["key"] == "stage"}
        assert stages == STAGES
        pretrain = next(r for r in runs if {"key": "stage", "value": "pretrain"} in r["data"]["tags"])
        assert any(p["key"] == "generators.dit.pretrain.steps" for p in pretrain["data"]["params"])
        run_id = pretrain["info"]["run_id"]
        history = call(f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=train/loss")["metrics"]
        assert len(history) >= 2
        sample = next(r for r in runs if {"key": "stage", "value": "sample"} in r["data"]["tags"])
        variant = next(tag["value"] for tag in sample["data"]["tags"] if tag["key"] == "variant")
        files = call(f"/api/2.0/mlflow/artifacts/list?run_id={sample['info']['run_id']}")["files"]
        assert f"{variant}.png" in {entry["path"] for entry in files}
        with urllib.request.urlopen(base + "/", timeout=10) as response:
            assert b"<html" in response.read().lower()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_the_default_target_trains_a_policy_per_paradigm_from_the_tuned_schedule(finished_smoke_run):
    """tune-static, reward backbone, then policy + discriminator per paradigm (through a submitit job), started
    from the tuned-static schedule and selected by its probes; every variant at the same NFE."""
    project, _ = finished_smoke_run
    results = project / "results" / "smoke"
    backbone = json.loads((results / "reward" / "backbone.json").read_text())
    assert 0 <= backbone["val_accuracy"] <= 1
    for paradigm in PARADIGMS:
        info = json.loads((results / paradigm / "policy" / "adaptive.json").read_text())
        assert info["iterations"] == 2 and len(info["history"]) == 2 and info["start_from"] == "tuned-static"
        assert all(0 < entry["reward"] < 1 for entry in info["history"])
        assert [probe["iteration"] for probe in info["probes"]] == [0, 1, 2]  # smoke: a probe every iteration
        best = min(info["probes"], key=lambda probe: probe["score"])
        assert info["selected_iteration"] == best["iteration"]
        assert (project / "logs" / "smoke" / "submitit" / f"train-{paradigm}-adaptive").is_dir()
        metrics = json.loads((results / paradigm / "metrics" / "adaptive.json").read_text())
        # Equal NFE (the static variant of MaskGIT may have been resampled at 3 steps by the DVC test).
        assert metrics["variant"] == "adaptive" and metrics["nfe"] == SMOKE_NFE[paradigm]
        assert not (results / paradigm / "policy" / "training-state-adaptive.pt").exists()
        tuned = json.loads((results / paradigm / "policy" / "tuned-static.json").read_text())
        assert tuned["chosen"] in tuned["grid"]
        assert tuned["chosen"]["fid_train"] == min(row["fid_train"] for row in tuned["grid"])
        assert all(0 <= row["precision_train"] <= 1 and 0 <= row["recall_train"] <= 1 for row in tuned["grid"])
        tuned_metrics = json.loads((results / paradigm / "metrics" / "tuned-static.json").read_text())
        assert tuned_metrics["settings"] == tuned["sampling"] and tuned_metrics["nfe"] == SMOKE_NFE[paradigm]
        assert metrics["settings"] == tuned["sampling"]  # the policy's zero output is the tuned schedule
        # Equal labels and noise for every variant: the paired ratios of the summary are defined.
        tuned_labels = np.load(results / paradigm / "samples" / "tuned-static.npz")["labels"]
        for variant in VARIANTS:
            samples = np.load(results / paradigm / "samples" / f"{variant}.npz")
            assert samples["labels"].tolist() == tuned_labels.tolist()


def test_the_ablations_target_trains_learned_static_and_fixed_reward_policies(finished_smoke_run):
    project, _ = finished_smoke_run
    run(["snakemake", "--configfile", "params/smoke.yaml", "--cores", "2", "ablations"], project)
    results = project / "results" / "smoke"
    for paradigm in PARADIGMS:
        for variant in ("learned-static", "fixed-reward"):
            info = json.loads((results / paradigm / "policy" / f"{variant}.json").read_text())
            assert len(info["history"]) == 2 and all(0 < entry["reward"] < 1 for entry in info["history"])
            metrics = json.loads((results / paradigm / "metrics" / f"{variant}.json").read_text())
            assert metrics["variant"] == variant and metrics["n_samples"] == SAMPLES


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_sample_command_on_a_finished_pipeline(finished_smoke_run, paradigm, tmp_path):
    """`adagen sample --out/--grid/--png-dir` from the artifacts alone; the stage's samples stay untouched."""
    project, _ = finished_smoke_run
    stage_samples = project / "results" / "smoke" / paradigm / "samples" / "adaptive.npz"
    before = stage_samples.stat().st_mtime_ns
    result = run(["adagen", "sample", "--params", "params/smoke.yaml", "--paradigm", paradigm, "--variant", "adaptive",
                  "--labels", "3,1,4,1,5", "--seed", "7", "--out", str(tmp_path / "s.npz"),
                  "--grid", str(tmp_path / "grid.png"), "--png-dir", str(tmp_path / "png")], project)
    samples = np.load(tmp_path / "s.npz")
    assert samples["images"].dtype == np.uint8 and samples["images"].shape[0] == 5
    assert samples["labels"].tolist() == [3, 1, 4, 1, 5] and samples["seeds"].tolist() == [7, 8, 9, 10, 11]
    assert int(samples["nfe"]) == SMOKE_NFE[paradigm] and f"{SMOKE_NFE[paradigm]} NFE" in result.stdout
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert sorted(path.name for path in (tmp_path / "png").iterdir())[0] == "000000_class3.png"
    assert stage_samples.stat().st_mtime_ns == before


def test_generate_is_batch_size_invariant_and_matches_the_stage(finished_smoke_run, monkeypatch):
    from adagen.generate import generate

    project, _ = finished_smoke_run
    monkeypatch.chdir(project)
    one = generate("params/smoke.yaml", "dit", "adaptive", count=6, seed=0, batch_size=6)
    three = generate("params/smoke.yaml", "dit", "adaptive", count=6, seed=0, batch_size=2)
    assert torch_equal(one.images, three.images) and one.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert all(torch_equal(one.actions[name], three.actions[name]) for name in one.actions)
    # The stage's first evaluation seed, first six class-balanced samples: the same images.
    smoke = yaml.safe_load((project / "params" / "smoke.yaml").read_text())
    first_seed = generate("params/smoke.yaml", "dit", "adaptive", count=6, seed=smoke["sample"]["seeds"][0])
    stage = np.load(project / "results" / "smoke" / "dit" / "samples" / "adaptive.npz")["images"][:6]
    assert np.array_equal(first_seed.images.numpy(), stage)
    fewer = generate("params/smoke.yaml", "dit", "static", count=2, steps=2)
    assert fewer.nfe == 2 and fewer.settings["nfe"] == 2


@pytest.mark.parametrize("paradigm", ["maskgit", "sit"])
def test_best_of_n_keeps_the_discriminators_choice_and_counts_its_compute(finished_smoke_run, monkeypatch, paradigm):
    import torch
    from adagen.generate import CANDIDATE_SEED_STRIDE, generate, load_discriminator, select_candidates
    from adagen.config import Paths, load_params

    project, _ = finished_smoke_run
    monkeypatch.chdir(project)
    plain = generate("params/smoke.yaml", paradigm, "adaptive", count=5, seed=3)
    best = generate("params/smoke.yaml", paradigm, "adaptive", count=5, seed=3, best_of=3, selection="max")
    resampled = generate("params/smoke.yaml", paradigm, "adaptive", count=5, seed=3, best_of=3)
    assert plain.candidates == 1 and plain.discriminator_calls == 0 and plain.rewards is None
    assert best.nfe == 3 * plain.nfe and best.forwards == 3 * plain.forwards and best.discriminator_calls == 3
    candidates = [generate("params/smoke.yaml", paradigm, "adaptive", count=5, seed=3 + j * CANDIDATE_SEED_STRIDE)
                  for j in range(3)]
    assert torch_equal(candidates[0].images, plain.images)  # candidate 0 is the plain sample
    discriminator = load_discriminator(load_params("params/smoke.yaml"), Paths.for_params_file("params/smoke.yaml"),
                                       paradigm, "adaptive")
    for i in range(5):  # a sample's candidates are scored together, whatever the other samples
        scores = discriminator.candidate_rewards(torch.stack([c.images[i] for c in candidates]).float() / 255.0,
                                                 candidates[0].labels[i]).numpy()
        winner = int(np.argmax(scores))
        assert torch_equal(best.images[i], candidates[winner].images[i])
        assert np.allclose(best.rewards[:, i].numpy(), scores, atol=1e-5)
    alone = generate("params/smoke.yaml", paradigm, "adaptive", labels=best.labels[2:3].tolist(), seed=5, best_of=3)
    assert torch_equal(alone.images[0], resampled.images[2])  # nor on the batch it is in
    assert torch.equal(resampled.rewards, best.rewards)
    for i, kept in enumerate(select_candidates(resampled.rewards, "resample", 3)):
        assert torch_equal(resampled.images[i], candidates[kept].images[i])


def test_resampling_draws_candidates_in_proportion_to_the_density_ratio():
    import torch
    from adagen.generate import select_candidates

    rewards = torch.tensor([0.5, 0.8, 0.2]).unsqueeze(1).expand(3, 6000)  # ratios r / (1 - r): 1, 4, 0.25
    kept = select_candidates(rewards, "resample", seed=11)
    assert np.bincount(kept, minlength=3) / 6000 == pytest.approx(np.array([1, 4, 0.25]) / 5.25, abs=0.02)
    assert np.array_equal(select_candidates(rewards[:, 100:130], "resample", seed=111), kept[100:130])  # seed + i
    assert np.array_equal(select_candidates(torch.tensor([[0.1, 0.9], [0.3, 0.2]]), "max", seed=0), [1, 0])


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


@pytest.mark.parametrize("arguments, message", [
    (["--paradigm", "dit", "--count", "-3"], "count must be at least 1, got -3"),
    (["--paradigm", "dit", "--labels", "1,x"], "not a comma-separated list of integers"),
    (["--paradigm", "dit", "--labels", "12"], "labels must be class indices in [0, 10)"),
    (["--paradigm", "dit", "--variant", "adaptive", "--steps", "9"], "was trained for 4 steps, not 9"),
    (["--paradigm", "var", "--steps", "3"], "var: the number of steps is fixed by the tokenizer's scales"),
    (["--paradigm", "gan"], "paradigm 'gan' is not in paradigms"),
    (["--paradigm", "dit", "--count", "3"], "--count, --labels, --steps, --best-of, --lookahead and --lambda need --out, --grid"),
    (["--paradigm", "dit", "--best-of", "0"], "best_of must be at least 1, got 0"),
    (["--paradigm", "dit", "--best-of", "2", "--selection", "top"], "Invalid value for '--selection'"),
    (["--paradigm", "dit", "--variant", "adaptive", "--lambda", "-0.1"], "lambda must lie in [0, 1], got -0.1"),
    (["--paradigm", "dit", "--variant", "adaptive", "--lookahead", "2"], "an ODE step draws none"),
    (["--paradigm", "var", "--variant", "static", "--lookahead", "2"], "needs the critic of a trained policy"),
])
def test_sample_command_rejects_bad_arguments(finished_smoke_run, tmp_path, arguments, message):
    project, _ = finished_smoke_run
    base = ["adagen", "sample", "--params", "params/smoke.yaml"]
    out = [] if "need --out, --grid" in message else ["--out", str(tmp_path / "s.npz")]
    result = subprocess.run(base + arguments + out, cwd=project, capture_output=True, text=True)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not (tmp_path / "s.npz").exists()


def test_sample_command_names_the_missing_artifacts(project_copy, tmp_path):
    result = subprocess.run(["adagen", "sample", "--params", "params/smoke.yaml", "--paradigm", "dit",
                             "--variant", "adaptive", "--out", str(tmp_path / "s.npz")],
                            cwd=project_copy, capture_output=True, text=True)
    assert result.returncode != 0
    assert "missing input data/smoke/dataset.json: run `adagen prepare-data`" in result.stderr, result.stderr


def test_training_runs_as_a_two_task_distributed_job(finished_smoke_run):
    """launch.tasks_per_node 2: two processes (gloo) share the rollouts; rank 0 tracks and writes the policy."""
    import shutil

    project, _ = finished_smoke_run
    params = yaml.safe_load((project / "params" / "smoke.yaml").read_text())
    params["launch"]["tasks_per_node"] = 2
    (project / "params" / "ddp.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(project / "data" / "smoke", project / "data" / "ddp")
    shutil.copytree(project / "results" / "smoke", project / "results" / "ddp")
    for path in (project / "results" / "ddp" / "dit" / "policy").glob("adaptive.*"):
        path.unlink()
    run(["adagen", "train", "--params", "params/ddp.yaml", "--paradigm", "dit", "--variant", "adaptive"], project)
    info = json.loads((project / "results" / "ddp" / "dit" / "policy" / "adaptive.json").read_text())
    assert info["iterations"] == 2 and len(info["history"]) == 2
    assert (project / "results" / "ddp" / "dit" / "policy" / "adaptive.pt").is_file()
    job_logs = sorted(path.name for path in (project / "logs" / "ddp" / "submitit" / "train-dit-adaptive").iterdir()
                      if path.name.endswith("_log.out"))
    assert [name.rsplit("_", 2)[-2] for name in job_logs] == ["0", "1"]  # one log per task (rank)


def test_dvc_push_to_a_local_remote_and_pull_in_another_checkout_rebuilds_nothing(finished_smoke_run, tmp_path):
    """The sharing path of a cluster: outputs recorded and pushed to a DVC remote (a shared folder here); another
    checkout pulls them and finds every stage up to date."""
    project, _ = finished_smoke_run
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("set: default", "set: smoke")
                        .replace("params/default.yaml:paradigms", "params/smoke.yaml:paradigms"))
    run(["dvc", "commit", "--force", "--no-relink", "--with-deps", "report"], project)
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "--default", "shared", str(remote)], project)
    pushed = run(["dvc", "push", "--with-deps", "report"], project)
    assert any(remote.rglob("*")), pushed.stdout
    for command in (["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run"]):
        run(command, project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "results").exists()
    run(["dvc", "pull", "--with-deps", "report"], clone)
    status = run(["dvc", "status", "--with-deps", "report"], clone)
    assert "up to date" in status.stdout, status.stdout
    for name in ("summary.csv", "summary.md"):
        assert (clone / "results" / "smoke" / name).read_bytes() == (project / "results" / "smoke" / name).read_bytes()
    dry = run(["dvc", "repro", "--dry", "report"], clone)
    assert "Running stage" not in dry.stdout, dry.stdout


def test_html_report_renders_in_a_headless_browser(finished_smoke_run, tmp_path):
    """`snakemake --report report.html` on the finished run: one self-contained page with the summary table, the
    schedule and training plots and the sample grids, which a headless Chromium renders."""
    project, _ = finished_smoke_run
    run(["snakemake", "--configfile", "params/smoke.yaml", "--report", str(tmp_path / "report.html")], project)
    page = (tmp_path / "report.html").read_text()
    for name in ("summary.csv", "schedules.png", "training-adaptive.png", "tuned-static.png", "Sample",
                 "Schedules", "Training"):
        assert name in page, name
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("ADAGEN_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    # No network, no first-run work: this machine refuses outside connections.
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--virtual-time-budget=15000",
             f"--screenshot={tmp_path / 'shot.png'}", (tmp_path / "report.html").as_uri()]
    subprocess.run([browser, *flags], capture_output=True, timeout=120, check=True)
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    # Rendered, not blank: the side bar, text and the workflow graph cover a good part of the page in many colours.
    # Measured against the page's own background (its commonest colour): a darkness threshold (pixel sum < 700)
    # failed on a correctly rendered page, whose light side bar and thin graph lines it did not count.
    colours, counts = np.unique(shot.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    assert (np.abs(shot - background).sum(axis=2) > 8).mean() > 0.1
    assert len(colours) > 100


def test_fidelity_policy_and_the_lambda_knob(finished_smoke_run, monkeypatch):
    """The default target trains a fidelity policy per setting and sweeps the blend; lambda 0 is the adaptive policy
    and lambda 1 the fidelity policy, exactly."""
    from adagen.generate import generate
    from adagen.io import sha256_of_file

    project, _ = finished_smoke_run
    monkeypatch.chdir(project)
    results = project / "results" / "smoke"
    for paradigm in PARADIGMS:
        sweep = json.loads((results / paradigm / "metrics" / "tradeoff.json").read_text())
        assert [row["lambda"] for row in sweep["rows"]] == [0.0, 1.0]
        assert all(np.isfinite(row["fid"]) and 0 <= row["precision"] <= 1 for row in sweep["rows"])
        assert (results / paradigm / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The sweep's lambda 0 is the adaptive variant on the first evaluation seed: the same FID as that seed's.
    adaptive = json.loads((results / "dit" / "metrics" / "adaptive.json").read_text())
    sweep = json.loads((results / "dit" / "metrics" / "tradeoff.json").read_text())
    assert sweep["rows"][0]["fid"] == adaptive["per_seed"][0]["fid"]
    # The fidelity policy fine-tunes the adaptive one.
    fidelity_info = json.loads((results / "dit" / "policy" / "fidelity.json").read_text())
    assert fidelity_info["fine_tunes"]["sha256"] == sha256_of_file(results / "dit" / "policy" / "adaptive.pt")
    # It acts around the cell of highest precision (ties: lower recall) of its start search from the adaptive
    # policy's schedule, which that search scored first.
    search = fidelity_info["start"]
    adaptive_settings = json.loads((results / "dit" / "metrics" / "adaptive.json").read_text())["settings"]
    assert [row["cfg"] for row in search["grid"]] == [adaptive_settings["cfg"], 4.0]
    # On tune-static's seeds (smoke.yaml), its first cell is the tuned-static schedule itself: the same FID.
    tuned = json.loads((results / "dit" / "policy" / "tuned-static.json").read_text())
    assert search["grid"][0]["fid_train"] == pytest.approx(tuned["chosen"]["fid_train"], rel=1e-9)
    assert search["chosen"] == min(search["grid"], key=lambda row: (-row["precision_train"], row["recall_train"]))
    assert search["sampling"] == {**adaptive_settings, "cfg": search["chosen"]["cfg"]}
    summary = (results / "summary.md").read_text()
    assert "Fidelity-diversity knob" in summary and "train-fidelity-classifier" in summary
    plain = generate("params/smoke.yaml", "dit", "adaptive", count=6, seed=3)
    blended_zero = generate("params/smoke.yaml", "dit", "adaptive", count=6, seed=3, lam=0.0)
    assert torch_equal(plain.images, blended_zero.images) and torch_equal(plain.actions["cfg"], blended_zero.actions["cfg"])
    fidelity = generate("params/smoke.yaml", "dit", "fidelity", count=6, seed=3)
    blended_one = generate("params/smoke.yaml", "dit", "adaptive", count=6, seed=3, lam=1.0)
    assert torch_equal(fidelity.images, blended_one.images)
    half = generate("params/smoke.yaml", "dit", "adaptive", count=6, seed=3, lam=0.5)
    assert not torch_equal(half.actions["cfg"], plain.actions["cfg"])
    with pytest.raises(ValueError, match=r"lambda must lie in \[0, 1\], got 1.5"):
        generate("params/smoke.yaml", "dit", "adaptive", count=2, lam=1.5)
    with pytest.raises(ValueError, match="variant 'static' has none"):
        generate("params/smoke.yaml", "dit", "static", count=2, lam=0.5)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


@pytest.mark.parametrize("paradigm", TOKEN_PARADIGMS)
def test_lookahead_with_the_trained_critic_counts_its_compute(finished_smoke_run, monkeypatch, paradigm):
    from adagen.generate import generate

    project, _ = finished_smoke_run
    monkeypatch.chdir(project)
    plain = generate("params/smoke.yaml", paradigm, "adaptive", count=4, seed=11)
    guided = generate("params/smoke.yaml", paradigm, "adaptive", count=4, seed=11, lookahead=3)
    branching = SMOKE_NFE[paradigm] - 1
    assert guided.critic_calls == 3 * branching
    assert guided.nfe == plain.nfe + 2 * branching  # one guided evaluation per step and branch
    assert guided.images.shape == plain.images.shape


def test_refinement_benchmark_over_every_seed(finished_smoke_run):
    """benchmarks/refinement.py on a finished run: a row per sampler and seed, candidate 0 the plain sample, and
    the paired FID differences over the seeds; its first seed's rows are the refine stage's."""
    project, _ = finished_smoke_run
    output = run([sys.executable, "benchmarks/refinement.py", "--params", "params/smoke.yaml", "--paradigm", "var",
                  "--best-of", "2", "--lookahead", "2", "--all-seeds"], project).stdout
    rows = [line.split(" | ") for line in output.splitlines() if line.startswith("| var | adaptive")]
    assert [(row[1], row[2]) for row in rows[:6]] == [
        (name, seed) for seed in ("0", "1000")
        for name in ("adaptive", "adaptive + best of 2 (resample)", "adaptive + lookahead 2")]
    stage = json.loads((project / "results" / "smoke" / "var" / "metrics" / "refinement.json").read_text())["rows"]
    assert [float(row[3]) for row in rows[:3]] == [pytest.approx(entry["fid"], abs=5e-4) for entry in stage]
    assert "refined - plain, mean +- std over seeds" in output and len(rows) == 8


def test_tradeoff_benchmark_over_every_seed(finished_smoke_run):
    """benchmarks/tradeoff.py on a finished run: each lambda on all evaluation seeds together, and the trend."""
    project, _ = finished_smoke_run
    output = run([sys.executable, "benchmarks/tradeoff.py", "--params", "params/smoke.yaml", "--paradigm", "dit"],
                 project).stdout
    rows = [line.split(" | ") for line in output.splitlines() if line.startswith("| dit |")]
    assert [row[1] for row in rows] == ["0", "1"]
    assert all(0 <= float(row[3]) <= 1 and 0 <= float(row[4]) <= 1 for row in rows)
    assert "dit: Spearman with lambda, precision" in output and "(2 seeds x 40 samples per lambda)" in output


def test_static_tradeoff_benchmark(finished_smoke_run):
    """benchmarks/static_tradeoff.py on a finished run: the tuned-static settings with one knob scaled, a row per
    factor on every seed, and the trends of precision, recall and the fidelity score."""
    project, _ = finished_smoke_run
    output = run([sys.executable, "benchmarks/static_tradeoff.py", "--params", "params/smoke.yaml", "--paradigm", "var",
                  "--knob", "cfg", "--factors", "1", "2"], project).stdout
    tuned = json.loads((project / "results" / "smoke" / "var" / "policy" / "tuned-static.json").read_text())["sampling"]
    rows = [line.strip("| ").split(" | ") for line in output.splitlines() if line.startswith("| var | cfg |")]
    assert [row[2] for row in rows] == [f"{tuned['cfg'] * factor:.3g} (x{factor})" for factor in (1, 2)]
    assert all(0 <= float(row[4]) <= 1 and 0 <= float(row[5]) <= 1 and float(row[6]) <= 0 for row in rows)
    assert "var cfg: Spearman with the factor, precision" in output and "(2 seeds x 40 samples per value)" in output
