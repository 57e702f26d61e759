"""Snakemake and DVC run the same commands with the same outputs; packaging files agree."""

from __future__ import annotations

import re
import subprocess
import tomllib

import yaml

from conftest import REPO


def snakemake_jobs(workdir, *targets, inputs: bool = False) -> dict[str, set[str]]:
    """{shell command without its log redirection: outputs (or inputs)} from a forced dry run of `targets`."""
    command = ["snakemake", "-n", "-p", "--nolock", "--forceall", "--cores", "1", *(targets or ["all"])]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=True)
    jobs, paths, key = {}, set(), "input:" if inputs else "output:"
    for line in result.stdout.splitlines():
        line = line.strip()
        if line.startswith(key):
            paths = {path.strip() for path in line.removeprefix(key).split(",")}
        elif line.startswith("Shell command:"):
            command = re.sub(r"\s*>\s*\S+\s+2>&1\s*$", "", line.removeprefix("Shell command:").strip())
            if command != "None":  # the target rule `all` runs nothing
                jobs[" ".join(command.split())] = paths
    return jobs


def dvc_stages(workdir) -> dict[str, set[str]]:
    from dvc.repo import Repo

    with Repo(str(workdir)) as repo:
        return {" ".join(stage.cmd.split()): {out.def_path for out in stage.outs} for stage in repo.index.stages}


def test_snakemake_and_dvc_agree_on_commands_and_outputs():
    snakemake = snakemake_jobs(REPO, "all", "ablations")
    dvc = dvc_stages(REPO)
    # data, evaluator, refstats, reward backbone, fidelity classifier, report + 2 tokenizers + pretrain,
    # tune-static, tradeoff, refine x 4 paradigms + train x 4 paradigms x 4 policies + sample, evaluate x 4 x 5
    # variants
    assert len(snakemake) == 6 + 2 + 4 * 4 + 4 * 4 + 2 * 4 * 5
    assert snakemake.keys() == dvc.keys()
    for command, outputs in snakemake.items():
        assert outputs == dvc[command], command


def test_dvc_splits_the_paradigms_of_the_default_set_by_tokenizer():
    from adagen.config import load_params
    from adagen.generators import PARADIGMS

    variables = {key: value for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["vars"]
                 if isinstance(entry, dict) for key, value in entry.items()}
    paradigms = load_params(REPO / "params" / "default.yaml")["paradigms"]
    assert variables["token_paradigms"] == [p for p in paradigms if PARADIGMS[p].uses_tokenizer]
    assert variables["pixel_paradigms"] == [p for p in paradigms if not PARADIGMS[p].uses_tokenizer]


def test_every_cli_stage_is_in_the_pipeline():
    from adagen.cli import main

    # Utilities, not stages: validate, info, and fetch (full-scale assets; its stage comes with the ImageNet set).
    commands = {name for name in main.commands if name not in ("validate", "info", "fetch")}
    rules = "\n".join(path.read_text() for path in (REPO / "workflow" / "rules").glob("*.smk"))
    in_snakemake = {name for name in commands if f'"adagen {name} ' in rules}
    assert in_snakemake == commands
    # dvc.yaml runs the embedded default, whose generators and policies are all trained here: it has no stage
    # that fetches official weights.
    in_dvc = {command.split()[1] for command in dvc_stages(REPO)}
    assert in_dvc == commands - {"get-generator", "get-policy"}


def test_dvc_report_has_the_inputs_of_the_snakemake_report():
    """DVC's report stage lists its deps one by one; they must be what Snakemake's report rule reads."""
    from dvc.repo import Repo

    snakemake = snakemake_jobs(REPO, "all", inputs=True)["adagen report --params params/default.yaml"]
    with Repo(str(REPO)) as repo:
        report = next(stage for stage in repo.index.stages if stage.cmd.startswith("adagen report"))
        deps = {dep.def_path for dep in report.deps}
    # Snakemake also lists the checkpoints and data the report only reads through the files above.
    assert deps <= snakemake
    assert {path for path in snakemake if path.endswith((".json", ".png", ".npz"))} <= deps


def test_environment_yml_lists_every_dependency_of_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[<>=!~\[ ]", requirement)[0].lower() for requirement in project["dependencies"]}
    wanted |= {re.split(r"[<>=!~\[ ]", r)[0].lower() for r in project["optional-dependencies"]["test"]}
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    listed = {re.split(r"[<>=!~\[ ]", entry)[0].lower() for entry in pip_section if not entry.startswith("-e")}
    assert wanted == listed


def test_environment_yml_pins_match_constraints():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    for entry in pip_section:
        if "==" in entry:
            name, version = entry.split("==")
            assert pins[name.lower().replace("_", "-")] == version, entry


def test_a_policy_retrains_only_when_what_its_training_reads_changes():
    """Snakemake's train params and dvc.yaml's train stages name the same `adagen` keys: the fidelity section only
    for the fidelity policy, never the refine stage's nor the tuning grid."""
    from adagen.config import load_params
    from adagen.stages import training_section

    adagen = load_params(REPO / "params" / "default.yaml")["adagen"]
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, variant in (("train", "adaptive"), ("train-fidelity", "fidelity"), ("train-ablation", "learned-static")):
        named = next(entry for entry in stages[stage].get("do", stages[stage])["params"] if isinstance(entry, dict))
        keys = {key.removeprefix("adagen.") for key in next(iter(named.values())) if key.startswith("adagen.")}
        assert keys == set(training_section(adagen, variant)), stage
    assert "fidelity" not in training_section(adagen, "adaptive") and "refinement" not in training_section(adagen, "fidelity")
