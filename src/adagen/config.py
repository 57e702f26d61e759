"""Params sets: loading, schema validation with messages that name the key, and the pipeline's paths.

A params set is one YAML file under `params/`; its stem (`default`, `smoke`, `imagenet`) names the set and
the folders its outputs go to. The same schema is used by Snakemake (`workflow/rules/common.smk`) and by
every `adagen` command, and the cross-key checks below run in both, so no stage starts on bad input.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class ParamsError(ValueError):
    """A params file that cannot be used; the message names the file and the key."""


def schema() -> dict:
    """The params schema shipped with the package (workflow/schemas/ links to the same file)."""
    text = resources.files("adagen").joinpath("schemas/params.schema.yaml").read_text()
    return yaml.safe_load(text)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(part) for part in error.absolute_path]
    if error.validator == "required":
        # The missing key is in the message, not the path: name it in full.
        missing = error.message.split("'")[1] if "'" in error.message else ""
        parts.append(missing)
    if error.validator == "additionalProperties":
        patterns = [re.compile(pattern) for pattern in error.schema.get("patternProperties", {})]
        unexpected = [key for key in error.instance if key not in error.schema.get("properties", {})
                      and not any(pattern.search(key) for pattern in patterns)]
        parts.append(",".join(sorted(unexpected)))
    return ".".join(parts) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {})) + sorted(
            f"names matching {pattern}" for pattern in error.schema.get("patternProperties", {}))
        return f"unknown key (allowed here: {', '.join(allowed)})"
    if error.validator == "not" and error.validator_value == {}:  # the schema's `unused`: see its description
        return "not used here: source pretrain trains the network, source download fetches it"
    return error.message


def validate_params(params: Any, source: str = "params") -> dict:
    """Check `params` against the schema and the cross-key rules; raise ParamsError listing every problem."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(params).__name__}")
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [f"{_key_path(error)}: {_describe(error)}" for error in errors]
    if not problems:
        problems = _cross_key_problems(params)
    if problems:
        raise ParamsError(f"{source}: invalid params\n" + "\n".join(f"  - {p}" for p in problems))
    return params


def _cross_key_problems(params: dict) -> list[str]:
    """Rules a JSON schema cannot state clearly."""
    problems = []
    data = params["data"]
    if data["source"] in ("folder", "npz") and not data["path"]:
        problems.append(f"data.path: required when data.source is {data['source']!r}")
    if params["evaluator"]["kind"] == "classifier" and params["evaluator"]["weights_path"]:
        problems.append("evaluator.weights_path: only used by kind 'inception' (the classifier is trained)")
    if params["evaluator"]["kind"] == "inception" and not params["evaluator"]["weights_path"]:
        problems.append("evaluator.weights_path: required by kind 'inception' (no downloads at run time)")
    reference = params["metrics"].get("reference", {"source": "val"})
    if reference["source"] == "file" and ("checkpoint" in reference) == ("path" in reference):
        problems.append("metrics.reference: source file needs one of checkpoint (a registry asset) or path")
    if reference["source"] == "val" and ({"checkpoint", "path"} & set(reference)):
        problems.append("metrics.reference: checkpoint and path are for source file")
    if "adagen" in params["metrics"].get("protocols", []) and params["evaluator"]["kind"] != "inception":
        problems.append("metrics.protocols: the adagen protocol is defined on Inception features (evaluator.kind inception)")
    if reference["source"] == "file" and params["evaluator"]["kind"] != "inception":
        problems.append("metrics.reference: published reference statistics are Inception features (evaluator.kind inception)")
    if "fidelity" in params["variants"] and "fidelity" not in params["adagen"]:
        problems.append("adagen.fidelity: needed by variant fidelity (its reward and classifier)")
    fidelity = params["adagen"].get("fidelity")
    if fidelity and fidelity["classifier"]["seed"] == params["evaluator"]["seed"] and params["evaluator"]["kind"] == "classifier":
        problems.append("adagen.fidelity.classifier.seed: must differ from evaluator.seed (the fidelity score must "
                        "not be the metrics' network)")
    if "released" in params["variants"]:
        problems += [f"generators.{name}.released_policy: needed by variant released" for name in params["paradigms"]
                     if "released_policy" not in params["generators"].get(name, {})]
    for paradigm in params["paradigms"]:
        if paradigm not in params["generators"]:
            problems.append(f"generators.{paradigm}: missing, but {paradigm!r} is listed in paradigms")
    adagen = params["adagen"]
    for paradigm in params["paradigms"]:
        if paradigm not in adagen["smoothing"]:
            problems.append(f"adagen.smoothing.{paradigm}: missing, but {paradigm!r} is listed in paradigms")
    for paradigm, grid in adagen["tuning"]["grids"].items():
        sampling = params["generators"].get(paradigm, {}).get("sampling", {})
        for key in grid:
            if key not in sampling:
                problems.append(f"adagen.tuning.grids.{paradigm}.{key}: not a sampling key of {paradigm} "
                                f"({', '.join(sorted(sampling))})")
    # Noise seed ranges [seed, seed + n) of the evaluation runs, the tuning search and the selection probes
    # must not share samples.
    sample = params["sample"]
    ranges = [(f"sample.seeds: evaluation run {i}", seed, sample["n_samples"])
              for i, seed in enumerate(sample["seeds"])]
    ranges.append(("adagen.tuning.seed: the tuned-static search", adagen["tuning"]["seed"],
                   adagen["tuning"]["n_samples"]))
    ranges.append(("adagen.selection.seed: the selection probes", adagen["selection"]["seed"],
                   adagen["selection"]["n_samples"]))
    for (name_a, a, n_a), (name_b, b, n_b) in itertools.combinations(ranges, 2):
        if a < b + n_b and b < a + n_a:
            problems.append(f"{name_a} and {name_b.split(': ', 1)[1]} use the same noise seeds "
                            f"([{a}, {a + n_a}) and [{b}, {b + n_b}))")
    problems += _asset_problems(params)
    backbone = adagen["reward_backbone"]["network"]
    if max(adagen["discriminator"]["block_indices"]) >= backbone["depth"]:
        problems.append(f"adagen.discriminator.block_indices: the backbone has {backbone['depth']} blocks")
    if backbone["embed_dim"] % backbone["num_heads"]:
        problems.append("adagen.reward_backbone.network.num_heads: must divide embed_dim")
    backbone_side = adagen["reward_backbone"].get("image_size", data["resolution"])
    if backbone_side % backbone["patch_size"]:
        problems.append(f"adagen.reward_backbone.network.patch_size: must divide the backbone's input side {backbone_side}")
    # Settings are named after their paradigm (the schema's patterns): `var-d16` is a setting of var.
    for setting, section in params["generators"].items():
        paradigm, key = setting.split("-", 1)[0], f"generators.{setting}"
        if paradigm in ("maskgit", "var"):
            problems += _token_problems(section, key, data["resolution"], paradigm == "var")
            continue
        # Time runs from noise to data: down in VP time (DiT), up on SiT's interpolant.
        time_runs_down = paradigm == "dit"
        network, sampling = section["network"], section["sampling"]
        side = data["resolution"]
        if section.get("vae"):  # a latent generator: the network sees the VAE's latents
            side //= 2 ** (len(section["vae"]["block_out_channels"]) - 1)
        if network["hidden_size"] % network["num_heads"]:
            problems.append(f"{key}.network.num_heads: must divide hidden_size")
        if side % network["patch_size"]:
            problems.append(f"{key}.network.patch_size: must divide the input side {side}")
        if network["hidden_size"] % 4:
            problems.append(f"{key}.network.hidden_size: must be a multiple of 4 (2-D sin-cos positions)")
        if time_runs_down and sampling["t_end"] >= sampling["t_start"]:
            problems.append(f"{key}.sampling.t_end: must be below t_start (time runs from noise at 1 to data at 0)")
        if not time_runs_down and sampling["t_end"] <= sampling["t_start"]:
            problems.append(f"{key}.sampling.t_end: must be above t_start (time runs from noise at 0 to data at 1)")
    return problems


def _asset_problems(params: dict) -> list[str]:
    """Every asset a params set names must be in the registry (`adagen fetch --list`)."""
    from adagen.assets import load_registry

    named = {f"assets.local.{name}": name for name in params.get("assets", {}).get("local", {})}
    for key, section in (("evaluator", params["evaluator"]), ("metrics.reference", params["metrics"].get("reference", {}))):
        if "checkpoint" in section:
            named[f"{key}.checkpoint"] = section["checkpoint"]
    if "checkpoint" in params["adagen"]["reward_backbone"]:
        named["adagen.reward_backbone.checkpoint"] = params["adagen"]["reward_backbone"]["checkpoint"]
    for setting, section in params["generators"].items():
        for key, owner in (("checkpoint", section), ("tokenizer.checkpoint", section.get("tokenizer") or {}),
                           ("vae.checkpoint", section.get("vae") or {})):
            if "checkpoint" in owner:
                named[f"generators.{setting}.{key}"] = owner["checkpoint"]
        if "released_policy" in section:
            named[f"generators.{setting}.released_policy"] = section["released_policy"]
    known = load_registry()
    return [f"{key}: unknown asset {name!r} (see `adagen fetch --list`)" for key, name in named.items() if name not in known]


def _token_problems(section: dict, key: str, resolution: int, multiscale: bool) -> list[str]:
    """A token paradigm's tokenizer must fit the images and, for VAR, end its scales at the latent side."""
    problems, tokenizer = [], section["tokenizer"]["network"]
    halvings = len(tokenizer["ch_mult"]) - 1
    if resolution % 2**halvings:
        problems.append(f"{key}.tokenizer.network.ch_mult: {halvings} halvings do not divide data.resolution {resolution}")
    side = resolution // 2**halvings
    if tokenizer["quant_conv_kernel"] == 0 and tokenizer["z_channels"] != tokenizer["codebook_dim"]:
        problems.append(f"{key}.tokenizer.network.codebook_dim: must equal z_channels without quant_conv")
    patch_nums = tokenizer.get("patch_nums")
    if multiscale and not patch_nums:
        problems.append(f"{key}.tokenizer.network.patch_nums: required (the scales VAR predicts)")
    if not multiscale and patch_nums:
        problems.append(f"{key}.tokenizer.network.patch_nums: only for multi-scale tokenizers (var)")
    if patch_nums and (list(patch_nums) != sorted(set(patch_nums)) or patch_nums[-1] != side):
        problems.append(f"{key}.tokenizer.network.patch_nums: must increase strictly and end at the latent side {side}")
    network = section["network"]
    if network["embed_dim"] % network["num_heads"]:
        problems.append(f"{key}.network.num_heads: must divide embed_dim")
    top_k = section["sampling"].get("top_k")
    if top_k is not None and top_k > tokenizer["codebook_size"]:
        problems.append(f"{key}.sampling.top_k: above the codebook size {tokenizer['codebook_size']}")
    return problems


def load_params(path: str | Path) -> dict:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from error
    return validate_params(params, source=str(path))


def params_hash(params: dict) -> str:
    """Short hash of a params set's content (order-independent), for run tags."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Paths:
    """Stable output paths of one params set (DESIGN.md section 7); Snakefile and dvc.yaml use the same."""

    set_name: str

    @classmethod
    def for_params_file(cls, params_path: str | Path) -> "Paths":
        return cls(Path(params_path).stem)

    @property
    def data_dir(self) -> Path:
        return Path("data") / self.set_name

    @property
    def dataset(self) -> Path:
        return self.data_dir / "dataset.npz"

    @property
    def dataset_info(self) -> Path:
        return self.data_dir / "dataset.json"

    @property
    def refstats_dir(self) -> Path:
        return self.data_dir / "refstats"

    @property
    def refstats_info(self) -> Path:
        return self.refstats_dir / "refstats.json"

    @property
    def results_dir(self) -> Path:
        return Path("results") / self.set_name

    @property
    def evaluator(self) -> Path:
        return self.results_dir / "evaluator" / "evaluator.pt"

    @property
    def evaluator_info(self) -> Path:
        return self.results_dir / "evaluator" / "evaluator.json"

    def tokenizer(self, paradigm: str) -> Path:
        return self.results_dir / paradigm / "tokenizer" / "tokenizer.pt"

    def tokenizer_info(self, paradigm: str) -> Path:
        return self.results_dir / paradigm / "tokenizer" / "tokenizer.json"

    def tokenizer_checkpoint(self, paradigm: str) -> Path:
        return self.results_dir / paradigm / "tokenizer" / "training-state.pt"

    @property
    def reward_backbone(self) -> Path:
        return self.results_dir / "reward" / "backbone.pt"

    @property
    def reward_backbone_info(self) -> Path:
        return self.results_dir / "reward" / "backbone.json"

    @property
    def reward_backbone_checkpoint(self) -> Path:
        return self.results_dir / "reward" / "training-state.pt"

    @property
    def fidelity_classifier(self) -> Path:
        return self.results_dir / "fidelity" / "classifier.pt"

    @property
    def fidelity_classifier_info(self) -> Path:
        return self.results_dir / "fidelity" / "classifier.json"

    def tradeoff(self, paradigm: str) -> Path:
        """The fidelity-diversity sweep: metrics of the adaptive/fidelity blend at each lambda."""
        return self.results_dir / paradigm / "metrics" / "tradeoff.json"

    def tradeoff_plot(self, paradigm: str) -> Path:
        return self.results_dir / paradigm / "tradeoff.png"

    def refinement(self, paradigm: str) -> Path:
        """Inference-time refinement: metrics and compute of best-of-N and lookahead beside the plain policy."""
        return self.results_dir / paradigm / "metrics" / "refinement.json"

    def refinement_grid(self, paradigm: str) -> Path:
        """Samples of the plain and refined adaptive policy, three rows each, on the same labels and seeds."""
        return self.results_dir / paradigm / "samples" / "refined.png"

    def fid_nfe_plot(self, paradigm: str) -> Path:
        return self.results_dir / paradigm / "fid-vs-nfe.png"

    def tuned_static(self, paradigm: str) -> Path:
        """The tuned-static schedule: the chosen sampling settings and the whole grid with its FIDs."""
        return self.results_dir / paradigm / "policy" / "tuned-static.json"

    def policy(self, paradigm: str, variant: str) -> Path:
        """Policy, critic and discriminator of a trained variant (adaptive, learned-static)."""
        return self.results_dir / paradigm / "policy" / f"{variant}.pt"

    def policy_info(self, paradigm: str, variant: str) -> Path:
        return self.results_dir / paradigm / "policy" / f"{variant}.json"

    def policy_checkpoint(self, paradigm: str, variant: str) -> Path:
        return self.results_dir / paradigm / "policy" / f"training-state-{variant}.pt"

    def generator(self, paradigm: str) -> Path:
        return self.results_dir / paradigm / "generator" / "model.pt"

    def generator_info(self, paradigm: str) -> Path:
        return self.results_dir / paradigm / "generator" / "model.json"

    def generator_checkpoint(self, paradigm: str) -> Path:
        """Resumable training state; not a pipeline output, so a failed run keeps it."""
        return self.results_dir / paradigm / "generator" / "training-state.pt"

    def samples(self, paradigm: str, variant: str) -> Path:
        return self.results_dir / paradigm / "samples" / f"{variant}.npz"

    def grid(self, paradigm: str, variant: str) -> Path:
        return self.results_dir / paradigm / "samples" / f"{variant}.png"

    def metrics(self, paradigm: str, variant: str) -> Path:
        return self.results_dir / paradigm / "metrics" / f"{variant}.json"

    @property
    def submitit_dir(self) -> Path:
        return Path("logs") / self.set_name / "submitit"

    def schedules_plot(self, paradigm: str) -> Path:
        return self.results_dir / paradigm / "schedules.png"

    def training_plot(self, paradigm: str, variant: str) -> Path:
        return self.results_dir / paradigm / f"training-{variant}.png"

    @property
    def summary_csv(self) -> Path:
        return self.results_dir / "summary.csv"

    @property
    def summary_md(self) -> Path:
        return self.results_dir / "summary.md"
