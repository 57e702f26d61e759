"""Params validation: every bad params file stops before any work, with a message naming the key."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from adagen.cli import main
from adagen.config import ParamsError, Paths, load_params, schema, validate_params
from conftest import REPO, load_yaml

DEFAULT = load_yaml(REPO / "params" / "default.yaml")


def test_shipped_params_sets_are_valid():
    for path in sorted((REPO / "params").glob("*.yaml")):
        assert load_params(path)["paradigms"], path


def test_workflow_schema_is_the_package_schema():
    workflow_schema = REPO / "workflow" / "schemas" / "params.schema.yaml"
    assert yaml.safe_load(workflow_schema.read_text()) == schema()


def _set(params: dict, dotted: str, value) -> dict:
    params = copy.deepcopy(params)
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return params


_DELETE = object()

BAD_PARAMS = [
    # (dotted key, new value, text the message must contain)
    ("generators.dit.pretrain.lrate", 0.1, "generators.dit.pretrain.lrate: unknown key"),
    ("data.resoluton", 32, "data.resoluton: unknown key"),
    ("data.resolution", "32", "data.resolution: '32' is not of type 'integer'"),
    ("data.channels", 2, "data.channels"),
    ("data.val_fraction", 1.5, "data.val_fraction"),
    ("sample.n_samples", -3, "sample.n_samples"),
    ("generators.dit.sampling.cfg", -1.0, "generators.dit.sampling.cfg"),
    ("generators.dit.sampling.nfe", 0, "generators.dit.sampling.nfe"),
    ("sample.seeds", _DELETE, "sample.seeds"),
    ("sample.seeds", [0, 10], "sample.seeds: evaluation run 0 and evaluation run 1 use the same noise seeds"),
    ("adagen.tuning.seed", 100, "evaluation run 0 and the tuned-static search use the same noise seeds"),
    ("paradigms", ["dit", "gan"], "paradigms.1"),
    ("data.source", "folder", "data.path: required when data.source is 'folder'"),
    ("generators.dit.network.num_heads", 3, "generators.dit.network.num_heads: must divide hidden_size"),
    ("generators.dit.sampling.t_end", 0.95, "generators.dit.sampling.t_end: must be below t_start"),
    ("generators.var.tokenizer.network.patch_nums", [1, 2, 4], "patch_nums: must increase strictly and end at the latent side 8"),
    ("generators.var.tokenizer.network.patch_nums", [1, 4, 2, 8], "patch_nums: must increase strictly"),
    ("generators.var.tokenizer.network.patch_nums", _DELETE, "generators.var.tokenizer.network.patch_nums: required"),
    ("generators.maskgit.tokenizer.network.patch_nums", [1, 8], "patch_nums: only for multi-scale tokenizers (var)"),
    ("generators.var.sampling.top_k", 300, "generators.var.sampling.top_k: above the codebook size 256"),
    ("generators.maskgit.tokenizer.network.codebook_dim", 8, "codebook_dim: must equal z_channels without quant_conv"),
    ("generators.maskgit.tokenizer.network.ch_mult", [1, 2, 2, 2, 2, 2], "ch_mult: 5 halvings do not divide data.resolution 16"),
    ("generators.maskgit.tokenizer.network.style", "vqgan", "generators.maskgit.tokenizer.network.style"),
    ("generators.maskgit.network.depth", 5, "generators.maskgit.network.depth"),
    ("generators.maskgit.sampling.mask_ratio", 0.5, "generators.maskgit.sampling.mask_ratio: unknown key"),
    ("resources", {"default": {"mem": 1000}}, "resources.default.mem: unknown key"),
    ("resources", {"train": {"mem_mb": 1000}}, "resources.train: unknown key"),  # sized by `launch`
    ("resources", {"pretrain": {"slurm_partition": 3}}, "resources.pretrain.slurm_partition"),
    ("tracking", {"server": True, "hots": "0.0.0.0"}, "tracking.hots: unknown key"),
    ("tracking", {"host": "127.0.0.1"}, "tracking.server: 'server' is a required property"),
    ("dvc_remote", {"name": "shared"}, "dvc_remote.url: 'url' is a required property"),
    ("dvc_remote", {"name": "a b", "url": "/shared/dvc"}, "dvc_remote.name"),
]


@pytest.mark.parametrize("dotted,value,expected", BAD_PARAMS, ids=[case[0] for case in BAD_PARAMS])
def test_bad_params_are_rejected_with_the_key_named(dotted, value, expected):
    with pytest.raises(ParamsError) as caught:
        validate_params(_set(DEFAULT, dotted, value), "bad.yaml")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("bad.yaml")


def test_cluster_sections_are_valid():
    params = {**DEFAULT, "resources": {"default": {"mem_mb": 8000, "runtime": 60, "slurm_partition": "gpu"},
                                       "pretrain": {"gpu": 1, "cpus_per_task": 8, "slurm_extra": "--qos=high"}},
              "tracking": {"server": True, "host": "0.0.0.0", "port": 5001},
              "dvc_remote": {"name": "shared", "url": "s3://bucket/adagen"}}
    assert validate_params(params, "cluster.yaml") is params


def test_all_problems_are_reported_at_once():
    params = _set(_set(DEFAULT, "data.resolution", "x"), "metrics.batch_sizee", 3)
    with pytest.raises(ParamsError) as caught:
        validate_params(params, "bad.yaml")
    assert "data.resolution" in str(caught.value) and "metrics.batch_sizee" in str(caught.value)


def test_not_yaml_and_not_a_mapping(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(listing)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")


@pytest.mark.parametrize("stage", ["prepare-data", "train-evaluator", "refstats", "report"])
def test_cli_stops_before_any_work(tmp_path, monkeypatch, stage):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "params" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(yaml.safe_dump(_set(DEFAULT, "evaluator.epoch", 3)))
    result = CliRunner().invoke(main, [stage, "--params", str(bad)])
    assert result.exit_code != 0
    assert "evaluator.epoch: unknown key" in result.output
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_rejects_a_paradigm_not_in_the_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "one.yaml"
    params.write_text(yaml.safe_dump(_set(DEFAULT, "paradigms", ["dit"])))
    result = CliRunner().invoke(main, ["pretrain", "--params", str(params), "--paradigm", "sit"])
    assert result.exit_code != 0 and "paradigm 'sit' is not in paradigms ['dit']" in result.output
    assert list(tmp_path.iterdir()) == [params]


def test_dry_run_lists_outputs_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "mine.yaml"
    params.write_text(yaml.safe_dump(DEFAULT))
    result = CliRunner().invoke(main, ["sample", "--params", str(params), "--paradigm", "dit", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert str(Paths("mine").samples("dit", "static")) in result.output
    assert list(tmp_path.iterdir()) == [params]


def test_snakemake_rejects_a_bad_params_file_naming_the_key(project_copy):
    bad = project_copy / "params" / "bad.yaml"
    bad.write_text(yaml.safe_dump(_set(DEFAULT, "sample.batch_sise", 8)))
    result = subprocess.run(["snakemake", "-n", "--configfile", "params/bad.yaml", "--cores", "1", "all"],
                            cwd=project_copy, capture_output=True, text=True)
    assert result.returncode != 0
    assert "batch_sise" in result.stdout + result.stderr
    assert not (project_copy / "results").exists()


def test_snakemake_refuses_a_dvc_remote_when_dvc_yaml_names_another_set(project_copy):
    """dvc_remote pushes what dvc.yaml records: a run of another params set would push nothing of its own."""
    params = project_copy / "params" / "shared.yaml"
    params.write_text(yaml.safe_dump({**DEFAULT, "dvc_remote": {"name": "shared", "url": "/tmp/nowhere"}}))
    result = subprocess.run(["snakemake", "-n", "--configfile", "params/shared.yaml", "--cores", "1", "all"],
                            cwd=project_copy, capture_output=True, text=True)
    assert result.returncode != 0
    assert "dvc_remote: dvc.yaml records params set 'default'" in result.stdout + result.stderr
    dvc_yaml = project_copy / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("set: default", "set: shared")
                        .replace("params/default.yaml:paradigms", "params/shared.yaml:paradigms"))
    result = subprocess.run(["snakemake", "-n", "--configfile", "params/shared.yaml", "--cores", "1", "all"],
                            cwd=project_copy, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_inception_evaluator_pins_its_weights_file(tmp_path, monkeypatch):
    """Full scale: nothing is trained; the weights file is checked and its hash recorded for the metrics."""
    from adagen.io import load_checkpoint, load_json, sha256_of_file

    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    params = tmp_path / "full.yaml"
    evaluator = dict(DEFAULT["evaluator"], kind="inception", weights_path=str(weights))
    params.write_text(yaml.safe_dump(dict(DEFAULT, evaluator=evaluator)))

    missing = CliRunner().invoke(main, ["train-evaluator", "--params", str(params)])
    assert missing.exit_code != 0 and f"evaluator.weights_path: {weights} not found" in missing.output
    assert not Paths("full").evaluator.exists()

    weights.write_bytes(b"stand-in for the Inception weights")
    done = CliRunner().invoke(main, ["train-evaluator", "--params", str(params)])
    assert done.exit_code == 0, done.output
    pinned = load_checkpoint(Paths("full").evaluator)
    assert pinned["kind"] == "inception" and pinned["sha256"] == sha256_of_file(weights)
    assert load_json(Paths("full").evaluator_info)["weights_path"] == str(weights)


def test_inception_evaluator_needs_a_weights_path():
    params = _set(DEFAULT, "evaluator.kind", "inception")
    with pytest.raises(ParamsError, match="evaluator.weights_path: required by kind 'inception'"):
        validate_params(params, "full.yaml")
