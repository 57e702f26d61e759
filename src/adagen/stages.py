"""The pipeline's stages as plain functions of (params, paths, run): what each `adagen <stage>` does.

The CLI parses and validates, opens the MLflow run and calls one of these; Snakemake and DVC call the CLI.
Each stage reads only its inputs' files and writes its outputs atomically, with its wall time inside.
"""

from __future__ import annotations

import csv
import functools
import io as text_io
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adagen import distributed
from adagen.assets import fetch_named, record_path
from adagen.config import Paths, params_hash
from adagen.data import export_dataset, load_dataset
from adagen.generators import paradigm_of
from adagen.generators.tokenizer import build_tokenizer, load_tokenizer, tokenizer_loss, tokenizer_quality
from adagen.generators.latent import LatentDecoder, sd_vae
from adagen.io import (
    atomic_path, load_checkpoint, load_weights, saved_state_dict, load_json, load_npz, save_checkpoint, save_json, save_npz, sha256_of_file,
)
from adagen.metrics import (
    AdaGenProtocolInception, adagen_protocol_scores, adagen_protocol_statistics, import_reference_statistics,
    compute_reference, evaluate_images, held_out_scores, load_classifier, sanity_figures, save_classifier,
    train_classifier,
)
from adagen.policy.actions import ActionMap
from adagen.policy.agent import AdaptivePolicy
from adagen.plots import plot_fid_vs_nfe, plot_schedules, plot_tradeoff, plot_training
from adagen.policy.network import build_policy, load_policy
from adagen.pretrain import train_generator
from adagen.reward.backbone import (
    IMAGENET_MEAN, IMAGENET_STD, accuracy, backbone_config, backbone_input, classification_loss, classifier_confidence, load_backbone,
)
from adagen.reward.discriminator import ProjectedDiscriminator, discriminator_config
from adagen.reward.fidelity import class_log_probability, with_fidelity
from adagen.rl.train import PPOSettings, train_adagen
from adagen.sampling import class_balanced_labels, sample_images, save_grid
from adagen.tracking import StageRun
from adagen.tuning import coordinate_search

# Sampling variants (`variants` in params picks the reported ones) and those that sample with a trained policy.
VARIANTS = ("static", "tuned-static", "adaptive", "learned-static", "fixed-reward", "fidelity", "released")
POLICY_VARIANTS = ("adaptive", "learned-static", "fixed-reward", "fidelity")  # trained by the pipeline
# The AdaGen release's policy of a setting (`generators.<setting>.released_policy`), fetched by `get-policy`.
RELEASED = "released"
SUMMARY_COLUMNS = ("paradigm", "variant", "nfe", "extra_calls", "fid", "fid_spread", "isc", "kid", "precision",
                   "recall", "seeds", "n_samples", "seconds")


class MissingInput(FileNotFoundError):
    """A stage's input is absent: the message names it and the stage that makes it."""


def require(path: Path, made_by: str) -> Path:
    if not Path(path).exists():
        raise MissingInput(f"missing input {path}: run `adagen {made_by}` (or the pipeline) first")
    return Path(path)


def prepare_data(params: dict, paths: Paths, run: StageRun) -> dict:
    started = time.perf_counter()
    info = export_dataset(params["data"], paths.dataset)
    info["seconds"] = time.perf_counter() - started
    save_json(paths.dataset_info, info)
    run.log_metrics({"n_train": info["n_train"], "n_val": info["n_val"], "num_classes": info["num_classes"]})
    run.log_artifact(paths.dataset_info)
    return info


def train_evaluator(params: dict, paths: Paths, run: StageRun) -> dict:
    """The metrics' feature network: train the classifier, or pin the configured Inception weights."""
    started = time.perf_counter()
    evaluator = params["evaluator"]
    if evaluator["kind"] == "inception":
        # Nothing to train: record which weights file every later metric uses, so a swapped file is caught.
        weights = Path(evaluator["weights_path"])
        if not weights.is_file() and evaluator.get("checkpoint"):
            fetched = fetch_named(evaluator["checkpoint"], {**(params.get("assets") or {}), "folder": str(weights.parent)})
            if fetched != weights:
                raise ValueError(f"evaluator.weights_path: asset {evaluator['checkpoint']} is fetched as {fetched}")
        if not weights.is_file():
            raise MissingInput(f"evaluator.weights_path: {weights} not found (inception-v3-compat weights, "
                               "pt_inception-2015-12-05-6726825d.pth)")
        info = {"kind": "inception", "weights_path": str(weights), "sha256": sha256_of_file(weights)}
        save_checkpoint(paths.evaluator, dict(info))
    else:
        dataset = load_dataset(require(paths.dataset, "prepare-data"))
        settings = {key: evaluator[key] for key in ("width", "feature_dim", "epochs", "batch_size", "lr", "seed")}
        model, info = train_classifier(
            dataset.train_images, dataset.train_labels, dataset.val_images, dataset.val_labels,
            num_classes=dataset.num_classes, report=run.log_metrics, **settings,
        )
        info = {"kind": "classifier", **info}
        save_classifier(paths.evaluator, model, info)
    info["seconds"] = time.perf_counter() - started
    save_json(paths.evaluator_info, info)
    run.log_artifact(paths.evaluator_info)
    return info


ADAGEN_REFERENCE = "adagen-protocol.npz"  # in the refstats folder: the AdaGen protocol's reference mu, sigma


def _reference(params: dict, dataset) -> tuple[np.ndarray, dict | None]:
    """The reported metrics' reference: the val split's images, or a published reference file's images (NCHW)
    and its statistics (`metrics.reference`)."""
    section = params["metrics"].get("reference", {"source": "val"})
    if section["source"] == "val":
        return dataset.val_images, None
    path = fetch_named(section["checkpoint"], params.get("assets")) if "checkpoint" in section else Path(section["path"])
    published = load_npz(require(path, "fetch"))
    missing = [key for key in ("arr_0", "mu", "sigma") if key not in published]
    if missing:
        raise ValueError(f"{path}: a reference file holds arr_0 (images), mu and sigma (ADM's reference batch "
                         f"format); {', '.join(missing)} missing")
    return np.ascontiguousarray(published["arr_0"].transpose(0, 3, 1, 2)), {**published, "file": path}


def refstats(params: dict, paths: Paths, run: StageRun) -> dict:
    """The reference of the reported metrics: its features cached for torch-fidelity (with the published FID
    statistics where the reference is a file), the AdaGen protocol's statistics, and sanity figures."""
    started = time.perf_counter()
    dataset = load_dataset(require(paths.dataset, "prepare-data"))
    evaluator = require(paths.evaluator, "train-evaluator")
    args = (params["evaluator"], params["metrics"], evaluator, paths.refstats_dir)
    reference_images, published = _reference(params, dataset)
    info = compute_reference(reference_images, *args)
    if published is not None:
        import_reference_statistics(published["mu"], published["sigma"], params["evaluator"], paths.refstats_dir)
        # Hashed here once; evaluations only read the file (fetch has verified a fetched one).
        info["published"] = {"file": str(published["file"]), "sha256": sha256_of_file(published["file"]),
                             "n_images": len(reference_images)}
    if "adagen" in params["metrics"].get("protocols", []):
        if published is not None:  # the file's statistics serve both protocols
            statistics = {"mu": published["mu"], "sigma": published["sigma"]}
        else:
            extractor = AdaGenProtocolInception(params["evaluator"]["weights_path"])
            batches = [extractor.features(torch.from_numpy(reference_images[i : i + 100]).float() / 255.0)
                       for i in range(0, len(reference_images), 100)]
            statistics = adagen_protocol_statistics(np.concatenate([b["adagen_features"] for b in batches]))
        save_npz(paths.refstats_dir / ADAGEN_REFERENCE, mu=np.asarray(statistics["mu"]),
                 sigma=np.asarray(statistics["sigma"]))
    info["sanity"] = sanity_figures(dataset.train_images, reference_images, *args)
    info["seconds"] = time.perf_counter() - started
    save_json(paths.refstats_info, info)
    run.log_metrics(info["sanity"])
    run.log_artifact(paths.refstats_info)
    return info


def _train(network, loss_fn, dataset, train_params: dict, fingerprint: str, checkpoint: Path, run: StageRun):
    """Train on the train split with resumable checkpoints; the finished EMA model supersedes the state file."""
    ema, summary = train_generator(network, loss_fn, dataset.train_images, dataset.train_labels, **train_params,
                                   checkpoint_path=checkpoint, fingerprint=fingerprint, report=run.log_metrics)
    checkpoint.unlink(missing_ok=True)
    return ema, summary


def train_tokenizer(params: dict, paths: Paths, run: StageRun, paradigm: str) -> dict:
    """The VQ tokenizer of a token paradigm: reconstruction + codebook losses, then per-code usage on val."""
    started = time.perf_counter()
    dataset = load_dataset(require(paths.dataset, "prepare-data"))
    section = params["generators"][paradigm]["tokenizer"]
    torch.manual_seed(section["train"]["seed"])
    tokenizer = build_tokenizer(section["network"], resolution=dataset.resolution, channels=dataset.channels)
    dataset_hash = load_json(require(paths.dataset_info, "prepare-data"))["sha256"]
    fingerprint = params_hash({"data": dataset_hash, **section})
    ema, summary = _train(tokenizer, tokenizer_loss, dataset, section["train"], fingerprint,
                          paths.tokenizer_checkpoint(paradigm), run)
    save_checkpoint(paths.tokenizer(paradigm), {"config": asdict(ema.config), "state_dict": ema.state_dict()})
    quality = tokenizer_quality(ema, dataset.val_images)
    info = {**summary, **quality, "parameters": sum(p.numel() for p in ema.parameters()),
            "seconds": time.perf_counter() - started}
    save_json(paths.tokenizer_info(paradigm), info)
    run.log_metrics({key: info[key] for key in ("parameters", *quality)})
    return info


def _tokenizer_of(paths: Paths, paradigm: str):
    made_by = f"train-tokenizer --paradigm {paradigm}` or `adagen get-generator --paradigm {paradigm}"
    return load_tokenizer(_saved_network(load_checkpoint(require(paths.tokenizer(paradigm), made_by))))


def _saved_network(entry: dict) -> dict:
    """A saved network as {"config", "state_dict"}, whether it holds its weights or names a downloaded file."""
    return {"config": entry["config"], "state_dict": saved_state_dict(entry)}


def _weights_entry(path: Path) -> dict:
    """How a generator file refers to a fetched weights file: where, its size, and the hash fetch verified."""
    record = load_json(record_path(path))
    return {"weights": str(path.resolve()), "size": path.stat().st_size, "sha256": record["sha256"],
            "asset": record["name"], "license": record["license"]}


def _vae_config(vae_params: dict) -> dict:
    """diffusers AutoencoderKL settings of a params `vae` section (one encoder/decoder block per width)."""
    levels = len(vae_params["block_out_channels"])
    return {"block_out_channels": tuple(vae_params["block_out_channels"]), "layers_per_block": vae_params["layers_per_block"],
            "latent_channels": vae_params["latent_channels"], "scaling_factor": vae_params["scaling_factor"],
            "down_block_types": ("DownEncoderBlock2D",) * levels, "up_block_types": ("UpDecoderBlock2D",) * levels}


def get_generator(params: dict, paths: Paths, run: StageRun, paradigm: str) -> dict:
    """A downloaded generator (`source: download`): fetch its weights (and its tokenizer's or VAE's) through the
    asset registry, load them strictly into the configured networks, so a wrong file fails here, and write the
    generator (and tokenizer) files the later stages read, which name the verified weights instead of copying
    gigabytes. A generator trained by the pipeline comes from `pretrain` instead."""
    started = time.perf_counter()
    section, spec = params["generators"][paradigm], paradigm_of(paradigm)
    if section.get("source", "pretrain") != "download":
        raise ValueError(f"generators.{paradigm}: source is pretrain; run `adagen pretrain --paradigm {paradigm}`")
    fetch = functools.partial(fetch_named, assets_params=params.get("assets"))
    side, channels = params["data"]["resolution"], params["data"]["channels"]
    extra, files = {}, {}
    if spec.uses_tokenizer:
        tokenizer_file = fetch(section["tokenizer"]["checkpoint"])
        tokenizer = load_weights(tokenizer_file, build_tokenizer(section["tokenizer"]["network"], resolution=side,
                                                                 channels=channels))
        files["tokenizer"] = _weights_entry(tokenizer_file)
        save_checkpoint(paths.tokenizer(paradigm), {"config": asdict(tokenizer.config), **files["tokenizer"]})
        save_json(paths.tokenizer_info(paradigm), {**files["tokenizer"], "seconds": time.perf_counter() - started,
                                                   "parameters": sum(p.numel() for p in tokenizer.parameters())})
        extra["tokenizer"] = tokenizer
    vae_entry = None
    if section.get("vae"):  # a latent generator: it sees the VAE's latents, not pixels
        vae_file, vae_config = fetch(section["vae"]["checkpoint"]), _vae_config(section["vae"])
        load_weights(vae_file, sd_vae(**vae_config))
        files["vae"] = _weights_entry(vae_file)
        vae_entry = {"config": vae_config, **files["vae"]}
        side //= 2 ** (len(vae_config["block_out_channels"]) - 1)
        channels = vae_config["latent_channels"]
    model_file = fetch(section["checkpoint"])
    network = load_weights(model_file, spec.build_network(section["network"], resolution=side, channels=channels,
                                                          num_classes=section["num_classes"], **extra))
    files["generator"] = _weights_entry(model_file)
    save_checkpoint(paths.generator(paradigm), {"paradigm": spec.name, "config": asdict(network.config),
                                                **files["generator"], "vae": vae_entry})
    info = {"source": "download", "files": files, "parameters": sum(p.numel() for p in network.parameters()),
            "seconds": time.perf_counter() - started}
    save_json(paths.generator_info(paradigm), info)
    run.log_metrics({"parameters": info["parameters"]})
    for entry in files.values():
        run.set_tags({f"weights.{entry['asset']}.sha256": entry["sha256"], f"license.{entry['asset']}": entry["license"]})
    return info


def pretrain(params: dict, paths: Paths, run: StageRun, paradigm: str) -> dict:
    started = time.perf_counter()
    dataset = load_dataset(require(paths.dataset, "prepare-data"))
    section = params["generators"][paradigm]
    spec = paradigm_of(paradigm)
    dataset_hash = load_json(require(paths.dataset_info, "prepare-data"))["sha256"]
    settings = {"data": dataset_hash, **{key: section[key] for key in ("network", "objective", "pretrain")}}
    token_args = {}
    if spec.uses_tokenizer:  # the generator learns the tokens of this exact tokenizer
        token_args = {"tokenizer": _tokenizer_of(paths, paradigm)}
        settings["tokenizer"] = sha256_of_file(paths.tokenizer(paradigm))
    torch.manual_seed(section["pretrain"]["seed"])  # the initial weights belong to the run's seed too
    network = spec.build_network(section["network"], resolution=dataset.resolution, channels=dataset.channels,
                                 num_classes=dataset.num_classes, **token_args)
    loss_fn = functools.partial(spec.training_loss, **section["objective"], **token_args)
    ema, summary = _train(network, loss_fn, dataset, section["pretrain"], params_hash(settings),
                          paths.generator_checkpoint(paradigm), run)
    save_checkpoint(paths.generator(paradigm), {
        "paradigm": paradigm, "config": asdict(ema.config), "state_dict": ema.state_dict(),
    })
    info = {**summary, "parameters": sum(p.numel() for p in ema.parameters()),
            "seconds": time.perf_counter() - started}
    save_json(paths.generator_info(paradigm), info)
    run.log_metrics({"parameters": info["parameters"]})
    return info


def generator_factory(paths: Paths, paradigm: str):
    """Load a pretrained generator (and its tokenizer) once; return sampling settings -> step-wise sampler."""
    spec = paradigm_of(paradigm)
    made_by = f"pretrain --paradigm {paradigm}` or `adagen get-generator --paradigm {paradigm}"
    saved = load_checkpoint(require(paths.generator(paradigm), made_by))
    network = spec.load_network(_saved_network(saved))
    extra = {"tokenizer": _tokenizer_of(paths, paradigm)} if spec.uses_tokenizer else {}
    if saved.get("vae"):
        vae = sd_vae(**saved["vae"]["config"])
        vae.load_state_dict(saved_state_dict(saved["vae"]))
        extra["decoder"] = LatentDecoder(vae)
    return lambda sampling: spec.make_generator(network, sampling, **extra)


def load_generator(params: dict, paths: Paths, paradigm: str, sampling: dict | None = None):
    """The step-wise sampler of a pretrained generator, with the params set's baseline schedule or `sampling`."""
    return generator_factory(paths, paradigm)(sampling or params["generators"][paradigm]["sampling"])


def _search_static(params: dict, paths: Paths, run: StageRun, paradigm: str, dataset, base: dict, grid: dict,
                   search: dict, key, *, sweeps: int = 1) -> dict:
    """Coordinate search over `grid` from `base`, each cell judged by FID, precision and recall against the train
    split of `search["n_samples"]` class-balanced samples on `search["seed"]` (the val split and the evaluation
    seeds stay untouched); the best cell by `key` (as for `min`) with its full settings and every scored cell."""
    labels = class_balanced_labels(search["n_samples"], dataset.num_classes)
    make_generator = generator_factory(paths, paradigm)
    evaluator = require(paths.evaluator, "train-evaluator")
    progress = tqdm(desc=f"search {paradigm}", unit="cell")

    def score(cell: dict, scratch: str) -> dict[str, float]:
        images = sample_images(make_generator({**base, **cell}), labels, seed=search["seed"],
                               batch_size=params["sample"]["batch_size"], progress=False)["images"]
        scores = held_out_scores(images, dataset.train_images, params["evaluator"], params["metrics"], evaluator,
                                 scratch, precision_recall=True)
        scores = {f"{name}_train": value for name, value in scores.items()}
        progress.update()
        run.log_metrics(scores, progress.n)
        return scores

    with tempfile.TemporaryDirectory(prefix="adagen-train-features-") as scratch:
        rows = coordinate_search(grid, base, lambda cell: score(cell, scratch), key=key, sweeps=sweeps)
    progress.close()
    chosen = min(rows, key=key)
    return {"sampling": {**base, **{knob: chosen[knob] for knob in grid}}, "chosen": chosen, "grid": rows}


def tune_static(params: dict, paths: Paths, run: StageRun, paradigm: str) -> dict:
    """The tuned-static baseline: coordinate search over the params' candidate values of the sampling settings,
    judged by FID against the train split on seeds of its own, so the val split and the reported seeds stay
    untouched. Each cell's precision and recall there are kept beside its FID."""
    started = time.perf_counter()
    dataset = load_dataset(require(paths.dataset, "prepare-data"))
    tuning, base = params["adagen"]["tuning"], params["generators"][paradigm]["sampling"]
    result = _search_static(params, paths, run, paradigm, dataset, base, tuning["grids"].get(paradigm, {}), tuning,
                            key=lambda row: row["fid_train"], sweeps=tuning["sweeps"])
    result["seconds"] = time.perf_counter() - started
    save_json(paths.tuned_static(paradigm), result)
    run.log_artifact(paths.tuned_static(paradigm))
    return result


def train_reward_backbone(params: dict, paths: Paths, run: StageRun) -> dict:
    """The discriminator's frozen features: a tiny timm ViT trained as a classifier on the train split, or at full
    scale (`source: download`) DINO ViT-S/16's weights fetched through the registry."""
    from timm.models.vision_transformer import VisionTransformer

    started = time.perf_counter()
    section = params["adagen"]["reward_backbone"]
    if section.get("source") == "download":
        weights = fetch_named(section["checkpoint"], params.get("assets"))
        # DINO has no classifier head (num_classes 0) and sees ImageNet-normalised RGB at its own side.
        config = dict(section["network"], img_size=section["image_size"], in_chans=3, num_classes=0)
        backbone = load_weights(weights, VisionTransformer(**config))
        save_checkpoint(paths.reward_backbone, {"config": config, **_weights_entry(weights),
                                                "mean": IMAGENET_MEAN, "std": IMAGENET_STD})
        info = {"source": "download", **_weights_entry(weights), "seconds": time.perf_counter() - started,
                "parameters": sum(p.numel() for p in backbone.parameters())}
        save_json(paths.reward_backbone_info, info)
        return info
    dataset = load_dataset(require(paths.dataset, "prepare-data"))
    config = backbone_config(section["network"], resolution=dataset.resolution, channels=dataset.channels,
                             num_classes=dataset.num_classes)
    torch.manual_seed(section["train"]["seed"])
    dataset_hash = load_json(require(paths.dataset_info, "prepare-data"))["sha256"]
    ema, summary = _train(VisionTransformer(**config), classification_loss, dataset, section["train"],
                          params_hash({"data": dataset_hash, **section}), paths.reward_backbone_checkpoint, run)
    save_checkpoint(paths.reward_backbone, {"config": config, "state_dict": ema.state_dict()})
    info = {**summary, "val_accuracy": accuracy(ema, dataset.val_images, dataset.val_labels),
            "parameters": sum(p.numel() for p in ema.parameters()), "seconds": time.perf_counter() - started}
    save_json(paths.reward_backbone_info, info)
    run.log_metrics({"val_accuracy": info["val_accuracy"]})
    return info


def _probe(params: dict, paths: Paths, generator, train_images: np.ndarray, scratch_dir: str):
    """The checkpoint-selection probe of AdaGen training: samples of the deterministic policy on fixed seeds,
    scored by FID against the train split in `adagen.selection.features` (the reward backbone's by default: not
    the reported metric's network); FID in the other feature space is logged beside it."""
    selection, num_classes = params["adagen"]["selection"], load_json(paths.dataset_info)["num_classes"]
    labels = class_balanced_labels(selection["n_samples"], num_classes)
    spaces = {"reward-backbone": ({"kind": "reward-backbone"}, require(paths.reward_backbone, "train-reward-backbone")),
              "evaluator": (params["evaluator"], require(paths.evaluator, "train-evaluator"))}

    def probe(policy: AdaptivePolicy) -> dict[str, float]:
        images = sample_images(generator, labels, seed=selection["seed"], batch_size=params["sample"]["batch_size"],
                               policy=policy, progress=False)["images"]
        fids = {f"fid_{name}_train": held_out_scores(images, train_images, evaluator, params["metrics"], path,
                                                     Path(scratch_dir) / name)["fid"]
                for name, (evaluator, path) in spaces.items()}
        return {"score": fids[f"fid_{selection['features']}_train"], **fids}

    return probe


def training_section(adagen: dict, variant: str) -> dict:
    """What a policy variant's training reads of `adagen` (the train rule's params, the resume fingerprint): the
    fidelity section only for the fidelity policy, never the refine stage's nor the tuning grid (its result, the
    tuned-static file, is an input of its own), so that changing those leaves the other policies trained."""
    return {key: value for key, value in adagen.items()
            if key not in ("refinement", "tuning") and (key != "fidelity" or variant == "fidelity")}


def train_policy(params: dict, paths: Paths, run: StageRun, paradigm: str, variant: str) -> dict:
    """AdaGen: policy, critic and discriminator trained jointly on the frozen generator (rl/train.py).

    The policy's zero output is the `adagen.start_from` schedule (the params' own or the tuned-static one), so
    training starts from the best static schedule known and the probe at iteration 0 measures exactly it.
    """
    if variant not in POLICY_VARIANTS:
        raise ValueError(f"variant {variant!r} has no policy to train (trainable: {', '.join(POLICY_VARIANTS)})")
    started = time.perf_counter()
    adagen = params["adagen"]
    start = sampling_settings(params, paths, paradigm, adagen["start_from"])
    dataset = load_dataset(require(paths.dataset, "prepare-data"))
    adaptive_start, fidelity_start = start, None
    if variant == "fidelity":  # (each rank of a multi-GPU job repeats this short seeded search: the same result)
        fidelity_start = _fidelity_start(params, paths, run, paradigm, dataset, adaptive_start)
        start = fidelity_start["sampling"]
    generator = load_generator(params, paths, paradigm, start)
    saved_backbone = load_checkpoint(require(paths.reward_backbone, "train-reward-backbone"))
    backbone = load_backbone(saved_backbone)
    torch.manual_seed(adagen["ppo"]["seed"])  # initial weights of the discriminator heads, policy and critic
    discriminator = ProjectedDiscriminator(backbone, discriminator_config(
        adagen["discriminator"], num_classes=dataset.num_classes, **backbone_input(saved_backbone)))
    sizes = dict(feature_dim=generator.feature_dim, grid=generator.feature_grid)
    policy = build_policy(adagen["policy"], **sizes, num_outputs=len(generator.action_specs))
    critic = build_policy(adagen["policy"], **sizes, num_outputs=1)
    smoothing = adagen["smoothing"][paradigm]
    fingerprint_parts = {"generator": sha256_of_file(paths.generator(paradigm)), "variant": variant,
                         "backbone": sha256_of_file(paths.reward_backbone),
                         **training_section(adagen, variant), "start": start}
    ppo = adagen["ppo"]
    reward_fn = None  # the discriminator's
    if variant == "fixed-reward":
        reward_fn = classifier_confidence(backbone)
    if variant == "fidelity":
        # The fidelity policy continues the adaptive one (policy, critic and discriminator) under the fidelity
        # reward, a short fine-tune, around its own start schedule (adagen.fidelity.start).
        adaptive_file = require(paths.policy(paradigm, "adaptive"), _policy_made_by(paradigm, "adaptive"))
        adaptive_saved = load_checkpoint(adaptive_file)
        if adaptive_saved["sampling"] != adaptive_start:
            raise ValueError(f"{paradigm}: the adaptive policy acts around other settings than adagen.start_from's")
        policy.load_state_dict(adaptive_saved["policy"]["state_dict"])
        critic.load_state_dict(adaptive_saved["critic"]["state_dict"])
        missing, unexpected = discriminator.load_state_dict(adaptive_saved["discriminator"], strict=False)
        if unexpected or any(not key.startswith("backbone.") for key in missing):
            raise ValueError(f"{adaptive_file}: its discriminator heads do not fit adagen.discriminator")
        fingerprint_parts["adaptive"] = sha256_of_file(adaptive_file)
        ppo = dict(ppo, **adagen["fidelity"].get("ppo", {}), d_warmup_steps=0)  # its discriminator comes trained
        score = class_log_probability(load_classifier(require(paths.fidelity_classifier, "train-fidelity-classifier")))
        reward_fn = with_fidelity(discriminator.reward, score, adagen["fidelity"]["weight"])
    fingerprint = params_hash(fingerprint_parts)
    settings = PPOSettings(**dict(ppo, std_decay_at=tuple(ppo["std_decay_at"])))
    with tempfile.TemporaryDirectory(prefix="adagen-train-features-") as scratch:
        # The fidelity policy keeps its last state: selecting it by FID would undo what its reward asks for.
        probe = None if variant == "fidelity" else _probe(params, paths, generator, dataset.train_images, scratch)
        summary = train_adagen(generator, ActionMap(generator, smoothing), policy, critic, discriminator,
                               dataset.train_images, dataset.train_labels, settings,
                               checkpoint_path=paths.policy_checkpoint(paradigm, variant), fingerprint=fingerprint,
                               zero_state=variant == "learned-static", reward_fn=reward_fn, probe=probe,
                               probe_every=adagen["selection"]["every"], report=run.log_metrics)
    if distributed.rank_and_size()[0] > 0:  # rank 0 writes the outputs
        return summary
    heads = {key: value for key, value in discriminator.state_dict().items() if not key.startswith("backbone.")}
    save_checkpoint(paths.policy(paradigm, variant), {
        "variant": variant, "sampling": start, "schedule": generator.baseline_schedule(), "smoothing": smoothing,
        "discriminator": heads,
        "policy": {"config": asdict(policy.config), "state_dict": policy.state_dict()},
        "critic": {"config": asdict(critic.config), "state_dict": critic.state_dict()},
    })
    paths.policy_checkpoint(paradigm, variant).unlink(missing_ok=True)
    info = {**summary, "start_from": adagen["start_from"], "seconds": time.perf_counter() - started}
    if variant == "fidelity":
        info["fine_tunes"] = {"variant": "adaptive", "sha256": fingerprint_parts["adaptive"]}
        info["start"] = fidelity_start
    save_json(paths.policy_info(paradigm, variant), info)
    run.log_metrics({"selected_iteration": info["selected_iteration"] or 0})
    run.log_artifact(paths.policy_info(paradigm, variant))
    return info


def _fidelity_start(params: dict, paths: Paths, run: StageRun, paradigm: str, dataset, adaptive_start: dict) -> dict:
    """The schedule the fidelity policy acts around: with `adagen.fidelity.start`, the cell of highest precision
    (ties: lower recall) against the train split in a coordinate search over its grid from the adaptive policy's
    schedule, the knob's faithful end, far beyond what a short fine-tune moves; else the adaptive policy's own."""
    search = params["adagen"]["fidelity"].get("start")
    if search is None:
        return {"sampling": adaptive_start}
    return _search_static(params, paths, run, paradigm, dataset, adaptive_start, search["grids"].get(paradigm, {}),
                          search, key=lambda row: (-row["precision_train"], row["recall_train"]))


def _policy_made_by(paradigm: str, variant: str) -> str:
    if variant == RELEASED:
        return f"get-policy --paradigm {paradigm}"
    return f"train --paradigm {paradigm} --variant {variant}"


def get_policy(params: dict, paths: Paths, run: StageRun, paradigm: str) -> dict:
    """The released AdaGen policy of a setting, fetched through the registry and loaded strictly into the policy
    network at the params' size (the release holds the actor only, under AdaGen's module names). It acts around
    the params' own schedule, the paper's baseline, with the params' smoothing, like a policy trained here."""
    started = time.perf_counter()
    asset = params["generators"][paradigm].get("released_policy")
    if asset is None:
        raise ValueError(f"generators.{paradigm}.released_policy: not set, so there is no released policy to fetch")
    weights = fetch_named(asset, params.get("assets"))
    sampling = params["generators"][paradigm]["sampling"]
    generator = load_generator(params, paths, paradigm, sampling)
    policy = load_weights(weights, build_policy(params["adagen"]["policy"], feature_dim=generator.feature_dim,
                                                grid=generator.feature_grid, num_outputs=len(generator.action_specs)))
    save_checkpoint(paths.policy(paradigm, RELEASED), {
        "policy": {"config": asdict(policy.config), **_weights_entry(weights)},
        "smoothing": params["adagen"]["smoothing"][paradigm], "sampling": sampling})
    info = {**_weights_entry(weights), "parameters": sum(p.numel() for p in policy.parameters()),
            "seconds": time.perf_counter() - started}
    save_json(paths.policy_info(paradigm, RELEASED), info)
    run.set_tags({f"weights.{asset}.sha256": info["sha256"]})
    return info


def load_sampling_policy(paths: Paths, paradigm: str, variant: str, generator, lam: float = 0.0):
    """None for the static schedules; the trained (or released) policy's deterministic actions otherwise.

    `lam` > 0 blends the adaptive policy with the fidelity policy (the fidelity-diversity knob, METHOD.md 6)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    if lam > 0 and variant != "adaptive":
        raise ValueError(f"lambda blends the adaptive policy with the fidelity policy; variant {variant!r} has none")
    if variant not in (*POLICY_VARIANTS, RELEASED):
        return None
    made_by = _policy_made_by(paradigm, variant)
    saved = load_checkpoint(require(paths.policy(paradigm, variant), made_by))
    blend = {}
    if lam > 0:  # each policy around its own schedule, blended before the one smoothing both share
        fidelity = load_checkpoint(require(paths.policy(paradigm, "fidelity"), _policy_made_by(paradigm, "fidelity")))
        if fidelity["smoothing"] != saved["smoothing"]:
            raise ValueError(f"{paradigm}: the adaptive and fidelity policies smooth their actions differently")
        blend = {"blend": load_policy(fidelity["policy"]),
                 "blend_map": ActionMap(generator, fidelity["smoothing"], schedule=fidelity["schedule"])}
    return AdaptivePolicy(load_policy(saved["policy"]), ActionMap(generator, saved["smoothing"]),
                          zero_state=variant == "learned-static", lam=lam, **blend)


def train_fidelity_classifier(params: dict, paths: Paths, run: StageRun) -> dict:
    """The fidelity score's frozen classifier: the metrics' classifier architecture trained with a seed and width of
    its own, so that it is neither the evaluation network nor the discriminator's backbone."""
    started = time.perf_counter()
    dataset = load_dataset(require(paths.dataset, "prepare-data"))
    model, info = train_classifier(dataset.train_images, dataset.train_labels, dataset.val_images, dataset.val_labels,
                                   num_classes=dataset.num_classes, report=run.log_metrics,
                                   **params["adagen"]["fidelity"]["classifier"])
    save_classifier(paths.fidelity_classifier, model, info)
    info = {**info, "seconds": time.perf_counter() - started}
    save_json(paths.fidelity_classifier_info, info)
    return info


def tradeoff(params: dict, paths: Paths, run: StageRun, paradigm: str) -> dict:
    """The fidelity-diversity sweep: the adaptive policy blended with the fidelity policy at each of
    `adagen.fidelity.lambdas`, sampled with the evaluation's labels and first seed, evaluated like a variant.
    Precision should rise and recall fall with lambda; their Spearman correlations with lambda are recorded."""
    from scipy.stats import spearmanr

    started = time.perf_counter()
    settings = sampling_settings(params, paths, paradigm, "adaptive")
    generator = load_generator(params, paths, paradigm, settings)
    dataset = load_dataset(require(paths.dataset, "prepare-data"))
    reference_images, _ = _reference(params, dataset)
    section, lambdas = params["sample"], params["adagen"]["fidelity"]["lambdas"]
    labels = class_balanced_labels(section["n_samples"], dataset.num_classes)
    rows = []
    for lam in lambdas:
        if lam == 0:  # the adaptive policy itself: its evaluation's first seed holds these very samples' metrics
            scores, compute = _plain_first_seed(params, paths, paradigm)
            rows.append({"lambda": lam, **scores, "nfe": compute["nfe"]})
            continue
        policy = load_sampling_policy(paths, paradigm, "adaptive", generator, lam=lam)
        result = sample_images(generator, labels, seed=section["seeds"][0], batch_size=section["batch_size"],
                               policy=policy, progress=False)
        scores = evaluate_images(result["images"], reference_images, params["evaluator"], params["metrics"],
                                 require(paths.evaluator, "train-evaluator"), require(paths.refstats_dir, "refstats"))
        rows.append({"lambda": lam, **scores, "nfe": result["nfe"]})
        run.log_metrics({f"{key}_lambda": scores[key] for key in ("fid", "precision", "recall")}, step=int(lam * 100))
    trend = {f"spearman_{key}": float(spearmanr(lambdas, [row[key] for row in rows]).statistic)
             for key in ("precision", "recall", "fid")} if len(lambdas) > 1 else {}
    payload = {"paradigm": paradigm, "rows": rows, **trend, "seconds": time.perf_counter() - started}
    save_json(paths.tradeoff(paradigm), payload)
    plot_tradeoff(paths.tradeoff_plot(paradigm), paradigm, rows)
    run.log_metrics(trend)
    run.log_artifact(paths.tradeoff_plot(paradigm))
    return payload


def _plain_first_seed(params: dict, paths: Paths, paradigm: str) -> tuple[dict, dict]:
    """The adaptive policy's metrics on the first evaluation seed (its evaluation has them: the very samples that
    the refined and blended samplers are set beside) and its compute per sample."""
    plain = load_json(require(paths.metrics(paradigm, "adaptive"), f"evaluate --paradigm {paradigm} --variant adaptive"))
    first = next(row for row in plain["per_seed"] if row["seed"] == params["sample"]["seeds"][0])
    return {key: value for key, value in first.items() if key != "seed"}, {key: plain[key] for key in ("nfe", "forwards")}


def refine(params: dict, paths: Paths, run: StageRun, paradigm: str) -> dict:
    """Inference-time refinement (METHOD.md 5) on the evaluation's labels and first seed: the adaptive policy's
    best of N candidates by its trained discriminator (chosen by `adagen.refinement.selection`) and, for the
    stochastic paradigms (MaskGIT, VAR), the value-guided lookahead of K candidate next states per step. Each is
    evaluated like a variant and set beside the plain policy's metrics on the same samples' seed (read from its
    evaluation: the same images), with its compute per sample: generator NFE and forwards, discriminator and
    critic calls."""
    from adagen.generate import generate_from  # it builds on this module's loaders

    started = time.perf_counter()
    section, refinement = params["sample"], params["adagen"]["refinement"]
    dataset = load_dataset(require(paths.dataset, "prepare-data"))
    reference_images, _ = _reference(params, dataset)
    scores, compute = _plain_first_seed(params, paths, paradigm)
    rows = [{"variant": "adaptive", **scores, **compute, "discriminator_calls": 0, "critic_calls": 0}]
    # The grid: the first three samples of every class from each sampler, the plain ones from the stage's samples.
    plain_samples = load_npz(require(paths.samples(paradigm, "adaptive"), f"sample --paradigm {paradigm} --variant adaptive"))
    first_seed = plain_samples["seeds"] == section["seeds"][0]
    shown = [_first_per_class(plain_samples["images"][first_seed], plain_samples["labels"][first_seed])]
    options = [(f"adaptive+bestof{refinement['best_of']}",
                {"best_of": refinement["best_of"], "selection": refinement["selection"]})]
    if refinement["lookahead"] > 1 and paradigm_of(paradigm).stochastic_steps:
        options.append((f"adaptive+lookahead{refinement['lookahead']}", {"lookahead": refinement["lookahead"]}))
    for name, option in options:
        result = generate_from(params, paths, paradigm, "adaptive", count=section["n_samples"], seed=section["seeds"][0],
                               batch_size=section["batch_size"], **option)
        scores = evaluate_images(result.images.numpy(), reference_images, params["evaluator"], params["metrics"],
                                 require(paths.evaluator, "train-evaluator"), require(paths.refstats_dir, "refstats"))
        rows.append({"variant": name, **scores, "nfe": result.nfe, "forwards": result.forwards,
                     "discriminator_calls": result.discriminator_calls, "critic_calls": result.critic_calls})
        shown.append(_first_per_class(result.images.numpy(), result.labels.numpy()))
        run.log_metrics({f"{name.replace('+', '_')}/{key}": scores[key] for key in ("fid", "precision", "recall")})
    payload = {"paradigm": paradigm, "seed": section["seeds"][0], "n_samples": section["n_samples"], "rows": rows,
               "seconds": time.perf_counter() - started}
    save_grid(paths.refinement_grid(paradigm), np.concatenate([images for images, _ in shown]),
              np.concatenate([labels for _, labels in shown]), per_class=3 * len(shown))
    save_json(paths.refinement(paradigm), payload)
    run.log_artifact(paths.refinement(paradigm))
    run.log_artifact(paths.refinement_grid(paradigm))
    return payload


def _first_per_class(images: np.ndarray, labels: np.ndarray, count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images of every class, in their order (a grid's rows for one sampler)."""
    keep = np.concatenate([np.flatnonzero(labels == label)[:count] for label in np.unique(labels)])
    keep.sort()
    return images[keep], labels[keep]


def sampling_settings(params: dict, paths: Paths, paradigm: str, variant: str) -> dict:
    """The baseline settings a variant's generator is built with: the params' own, or the tuned ones."""
    if variant == "tuned-static":
        return load_json(require(paths.tuned_static(paradigm), f"tune-static --paradigm {paradigm}"))["sampling"]
    if variant in (*POLICY_VARIANTS, RELEASED):  # the schedule the policy acts around, kept in its file
        return load_checkpoint(require(paths.policy(paradigm, variant), _policy_made_by(paradigm, variant)))["sampling"]
    return params["generators"][paradigm]["sampling"]


def sample(params: dict, paths: Paths, run: StageRun, paradigm: str, variant: str) -> dict:
    """Class-balanced samples of one variant, one run per evaluation seed. Every variant of a paradigm uses the
    same labels and noise seeds (common random numbers), so their differences are the schedules' alone."""
    settings = sampling_settings(params, paths, paradigm, variant)
    generator = load_generator(params, paths, paradigm, settings)
    policy = load_sampling_policy(paths, paradigm, variant, generator)
    num_classes = load_json(require(paths.dataset_info, "prepare-data"))["num_classes"]
    section = params["sample"]
    labels = class_balanced_labels(section["n_samples"], num_classes)
    # The AdaGen protocol measures the float images as decoded: their features are taken here, before rounding.
    features = (AdaGenProtocolInception(params["evaluator"]["weights_path"]).features
                if "adagen" in params["metrics"].get("protocols", []) else None)
    runs = [sample_images(generator, labels, seed=seed, batch_size=section["batch_size"], policy=policy,
                          features=features) for seed in section["seeds"]]
    extracted = {key: np.concatenate([result["features"][key] for result in runs])
                 for key in (runs[0].get("features") or {})}
    images = np.concatenate([result["images"] for result in runs])
    actions = {f"action_{name}": np.concatenate([result["actions"][name] for result in runs])
               for name in runs[0]["actions"]}
    seconds = sum(result["seconds"] for result in runs)
    nfe, forwards = runs[0]["nfe"], runs[0]["forwards"]
    save_npz(paths.samples(paradigm, variant), images=images, labels=np.tile(labels, len(runs)),
             seeds=np.repeat(np.asarray(section["seeds"], dtype=np.int64), len(labels)), **actions,
             settings=np.asarray(json.dumps(settings)), **extracted,
             nfe=np.int64(nfe), forwards=np.int64(forwards), seconds=np.float64(seconds))
    save_grid(paths.grid(paradigm, variant), runs[0]["images"], labels)
    run.log_metrics({"nfe": nfe, "forwards": forwards, "seconds": seconds})
    run.log_artifact(paths.grid(paradigm, variant))
    return {"nfe": nfe, "forwards": forwards, "seconds": seconds}


# Averaged over the evaluation seeds, with their spread (the AdaGen protocol's two where it is reported).
SEED_METRICS = ("fid", "isc", "kid", "precision", "recall", "fid_adagen", "isc_adagen")


def evaluate(params: dict, paths: Paths, run: StageRun, paradigm: str, variant: str) -> dict:
    """The metrics of each evaluation seed's samples against the val split; their mean and standard deviation."""
    started = time.perf_counter()
    samples = load_npz(require(paths.samples(paradigm, variant), f"sample --paradigm {paradigm} --variant {variant}"))
    dataset = load_dataset(require(paths.dataset, "prepare-data"))
    reference_images, _ = _reference(params, dataset)
    adagen_protocol = "adagen" in params["metrics"].get("protocols", [])
    if adagen_protocol and "adagen_features" not in samples:
        raise MissingInput(f"{paths.samples(paradigm, variant)} has no AdaGen-protocol features: rerun `adagen "
                           f"sample --paradigm {paradigm} --variant {variant}` with metrics.protocols [.., adagen]")
    per_seed = []
    for seed in np.unique(samples["seeds"]):
        chosen = samples["seeds"] == seed
        scores = evaluate_images(samples["images"][chosen], reference_images, params["evaluator"],
                                 params["metrics"], require(paths.evaluator, "train-evaluator"),
                                 require(paths.refstats_dir, "refstats"))
        if adagen_protocol:
            scores |= adagen_protocol_scores(samples["adagen_features"][chosen], samples["adagen_logits"][chosen],
                                             load_npz(paths.refstats_dir / ADAGEN_REFERENCE),
                                             params["metrics"]["isc_splits"])
        per_seed.append({"seed": int(seed), **scores})
    summary = {}
    for key in (key for key in SEED_METRICS if key in per_seed[0]):
        values = np.array([scores[key] for scores in per_seed])
        summary[key] = float(values.mean())
        summary[f"{key}_spread"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    payload = {
        **summary, "paradigm": paradigm, "variant": variant, "seeds": len(per_seed),
        "n_samples": int(len(samples["images"])), "nfe": int(samples["nfe"]), "forwards": int(samples["forwards"]),
        "seconds": float(samples["seconds"]), "evaluate_seconds": time.perf_counter() - started,
        "settings": json.loads(str(samples["settings"])), "per_seed": per_seed,
    }
    save_json(paths.metrics(paradigm, variant), payload)
    run.log_metrics(summary)
    run.log_artifact(paths.metrics(paradigm, variant))
    return payload


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# The targets for AdaGen: FID ratio of adaptive to each baseline, per evaluation seed (paired samples).
GAIN_TARGETS = {"static": 0.6, "tuned-static": 0.9, "learned-static": 1.0, "fixed-reward": 1.0}


def paired_gains(params: dict, paths: Paths) -> list[dict]:
    """adaptive FID / baseline FID per evaluation seed (same labels and noise: common random numbers), mean and
    spread over the seeds, for every baseline among the reported variants."""
    rows = []
    if "adaptive" not in params["variants"]:
        return rows
    for paradigm in params["paradigms"]:
        adaptive = {row["seed"]: row["fid"] for row in load_json(paths.metrics(paradigm, "adaptive"))["per_seed"]}
        for baseline in (v for v in params["variants"] if v in GAIN_TARGETS):
            other = {row["seed"]: row["fid"] for row in load_json(paths.metrics(paradigm, baseline))["per_seed"]}
            ratios = np.array([adaptive[seed] / other[seed] for seed in adaptive])
            rows.append({"paradigm": paradigm, "baseline": baseline, "ratio": float(ratios.mean()),
                         "ratio_spread": float(ratios.std(ddof=1)) if len(ratios) > 1 else 0.0,
                         "target": GAIN_TARGETS[baseline], "met": bool(ratios.mean() <= GAIN_TARGETS[baseline])})
    return rows


def _figures(params: dict, paths: Paths) -> list[str]:
    """The schedules applied per variant and the training curves of each policy, as Markdown image lines."""
    lines = []
    for paradigm in params["paradigms"]:
        actions = {}
        for variant in params["variants"]:
            samples = load_npz(paths.samples(paradigm, variant))
            actions[variant] = {key.removeprefix("action_"): samples[key] for key in samples
                                if key.startswith("action_")}
        plot_schedules(paths.schedules_plot(paradigm), f"{paradigm}: actions per step (mean +- std over samples)",
                       actions)
        lines.append(f"![{paradigm} schedules]({paths.schedules_plot(paradigm).relative_to(paths.results_dir)})\n")
        for variant in (v for v in params["variants"] if v in POLICY_VARIANTS):
            plot_training(paths.training_plot(paradigm, variant), f"{paradigm} {variant}",
                          load_json(paths.policy_info(paradigm, variant)))
            image = paths.training_plot(paradigm, variant).relative_to(paths.results_dir)
            lines.append(f"![{paradigm} {variant} training]({image})\n")
    return lines


def report(params: dict, paths: Paths, run: StageRun) -> list[dict]:
    """summary.csv and summary.md: one row per paradigm and variant (mean and spread over the evaluation seeds),
    the paired gains of the adaptive policy, sanity figures, stage times, schedule plots and sample grids."""
    rows = []
    columns = SUMMARY_COLUMNS
    if "adagen" in params["metrics"].get("protocols", []):  # the AdaGen protocol's FID and IS beside the standard ones
        at = columns.index("fid") + 1
        columns = (*columns[:at], "fid_adagen", "fid_adagen_spread", *columns[at:at + 1], "isc_adagen", *columns[at + 1:])
    for paradigm in params["paradigms"]:
        for variant in params["variants"]:
            metrics = load_json(require(paths.metrics(paradigm, variant), f"evaluate --paradigm {paradigm}"))
            rows.append({column: metrics.get(column, "") for column in columns} | {"extra_calls": 0})
        rows += [{column: row.get(column, "") for column in columns} for row in _one_seed_rows(params, paths, paradigm)]
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(paths.summary_csv) as tmp:
        tmp.write_text(buffer.getvalue())

    refstats_info = load_json(require(paths.refstats_info, "refstats"))
    seeds = len(params["sample"]["seeds"])
    lines = [f"# adagen summary: params set `{paths.set_name}`", "",
             f"Every variant of a paradigm is sampled with the same labels and initial noise (common random numbers), "
             f"{params['sample']['n_samples']} samples per seed, {seeds} seeds; FID is mean +- standard deviation "
             "over the seeds.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row[c]) for c in columns) + " |" for row in rows]
    gains = paired_gains(params, paths)
    if gains:
        lines += ["", "## Adaptive vs baselines (FID ratio per seed, paired)", "",
                  "| paradigm | baseline | adaptive / baseline | spread | target | met |", "|---|---|---|---|---|---|"]
        lines += [f"| {g['paradigm']} | {g['baseline']} | {g['ratio']:.3f} | {g['ratio_spread']:.3f} | "
                  f"<= {g['target']} | {'yes' if g['met'] else 'no'} |" for g in gains]
    lines += _refinement_lines(params, paths)
    lines += _tradeoff_lines(params, paths)
    sanity = refstats_info["sanity"]
    lines += ["", "Sanity figures of the feature network (FID against the val split): "
              f"train split {sanity['fid_train_vs_val']:.3g} (floor: real vs real), "
              f"uniform noise {sanity['fid_noise_vs_val']:.4g} (ceiling).", "", "## Stage wall times (s)", "",
              "| stage | seconds |", "|---|---|"]
    for stage, seconds in stage_times(params, paths).items():
        lines.append(f"| {stage} | {seconds:.1f} |")
    lines += ["", "## Schedules and training", "", *_figures(params, paths), "## Samples", ""]
    for paradigm in params["paradigms"]:
        for variant in params["variants"]:
            grid = paths.grid(paradigm, variant).relative_to(paths.results_dir)
            lines.append(f"**{paradigm} / {variant}**\n\n![{paradigm} {variant}]({grid})\n")
    with atomic_path(paths.summary_md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    run.log_artifact(paths.summary_csv)
    run.log_artifact(paths.summary_md)
    for paradigm in params["paradigms"]:
        run.log_artifact(paths.schedules_plot(paradigm))
    return rows


def _one_seed_rows(params: dict, paths: Paths, paradigm: str) -> list[dict]:
    """Summary rows of the refined samplers and of the lambda sweep (the first evaluation seed's samples only):
    variants `adaptive+bestofN`, `adaptive+lookaheadK` and `adaptive+lambdaL`, with their compute per sample."""
    rows = []
    common = {"paradigm": paradigm, "seeds": 1, "n_samples": params["sample"]["n_samples"]}
    if "refinement" in params["adagen"]:
        refined = load_json(require(paths.refinement(paradigm), f"refine --paradigm {paradigm}"))["rows"][1:]
        rows += [{**row, **common, "extra_calls": row["discriminator_calls"] + row["critic_calls"]} for row in refined]
    if "fidelity" in params["adagen"]:
        sweep = load_json(require(paths.tradeoff(paradigm), f"tradeoff --paradigm {paradigm}"))["rows"]
        rows += [{**row, **common, "variant": f"adaptive+lambda{row['lambda']:g}", "extra_calls": 0} for row in sweep]
    return rows


def _refinement_lines(params: dict, paths: Paths) -> list[str]:
    """Inference-time refinement per setting beside the plain policy on the same seed, and FID against compute."""
    if "refinement" not in params["adagen"]:
        return []
    lines = ["", "## Inference-time refinement (first evaluation seed)", "",
             "| setting | sampling | FID | plain adaptive FID | precision | recall | NFE | discriminator calls | "
             "critic calls |", "|---|---|---|---|---|---|---|---|---|"]
    figures = []
    for paradigm in params["paradigms"]:
        refined = load_json(require(paths.refinement(paradigm), f"refine --paradigm {paradigm}"))
        plain = refined["rows"][0]
        lines += [f"| {paradigm} | {row['variant']} | {row['fid']:.4g} | {plain['fid']:.4g} | {row['precision']:.3f} | "
                  f"{row['recall']:.3f} | {row['nfe']} | {row['discriminator_calls']} | {row['critic_calls']} |"
                  for row in refined["rows"]]
        points = []
        for variant in (v for v in ("static", "tuned-static", "adaptive") if v in params["variants"]):
            metrics = load_json(paths.metrics(paradigm, variant))
            points.append({"label": f"{variant} ({metrics['seeds']} seeds)", "nfe": metrics["nfe"],
                           "fid": metrics["fid"], "spread": metrics["fid_spread"], "refined": False})
        points += [{"label": f"{row['variant']} (seed {refined['seed']})", "nfe": row["nfe"], "fid": row["fid"],
                    "spread": None, "refined": True} for row in refined["rows"]]
        plot_fid_vs_nfe(paths.fid_nfe_plot(paradigm), f"{paradigm}: FID against compute", points)
        figures.append(f"![{paradigm} FID vs NFE]({paths.fid_nfe_plot(paradigm).relative_to(paths.results_dir)})\n")
        samplers = ", ".join(row["variant"] for row in refined["rows"])
        figures.append(f"**{paradigm}**, three rows each: {samplers}\n\n"
                       f"![{paradigm} refined samples]({paths.refinement_grid(paradigm).relative_to(paths.results_dir)})\n")
    return lines + ["", *figures]


def _tradeoff_lines(params: dict, paths: Paths) -> list[str]:
    """The fidelity-diversity sweep per setting: metrics at each lambda and their rank correlation with lambda."""
    if "fidelity" not in params["adagen"]:
        return []
    lines = ["", "## Fidelity-diversity knob (adaptive blended with the fidelity policy)", "",
             "| setting | lambda | FID | precision | recall | IS |", "|---|---|---|---|---|---|"]
    trends = []
    for paradigm in params["paradigms"]:
        sweep = load_json(require(paths.tradeoff(paradigm), f"tradeoff --paradigm {paradigm}"))
        lines += [f"| {paradigm} | {row['lambda']:g} | {row['fid']:.4g} | {row['precision']:.3f} | {row['recall']:.3f} | "
                  f"{row['isc']:.3g} |" for row in sweep["rows"]]
        if "spearman_precision" in sweep:
            trends.append(f"{paradigm}: precision {sweep['spearman_precision']:+.2f}, recall {sweep['spearman_recall']:+.2f}")
        plot = paths.tradeoff_plot(paradigm).relative_to(paths.results_dir)
        lines.append(f"\n![{paradigm} tradeoff]({plot})\n")
    if trends:
        lines += ["", "Spearman correlation with lambda: " + "; ".join(trends) + "."]
    return lines


def stage_times(params: dict, paths: Paths) -> dict[str, float]:
    """Wall time of every stage, read back from the seconds each one stored in its output."""
    times = {
        "prepare-data": load_json(paths.dataset_info)["seconds"],
        "train-evaluator": load_json(paths.evaluator_info)["seconds"],
        "refstats": load_json(paths.refstats_info)["seconds"],
    }
    if any(variant in POLICY_VARIANTS for variant in params["variants"]):
        times["train-reward-backbone"] = load_json(paths.reward_backbone_info)["seconds"]
    if "fidelity" in params["adagen"]:
        times["train-fidelity-classifier"] = load_json(paths.fidelity_classifier_info)["seconds"]
    for paradigm in params["paradigms"]:
        if params["generators"][paradigm].get("source") == "download":  # one stage fetches generator and tokenizer
            times[f"get-generator {paradigm}"] = load_json(paths.generator_info(paradigm))["seconds"]
        else:
            if paradigm_of(paradigm).uses_tokenizer:
                times[f"train-tokenizer {paradigm}"] = load_json(paths.tokenizer_info(paradigm))["seconds"]
            times[f"pretrain {paradigm}"] = load_json(paths.generator_info(paradigm))["seconds"]
        for variant in params["variants"]:
            if variant in POLICY_VARIANTS:
                times[f"train {paradigm} {variant}"] = load_json(paths.policy_info(paradigm, variant))["seconds"]
            if variant == RELEASED:
                times[f"get-policy {paradigm}"] = load_json(paths.policy_info(paradigm, variant))["seconds"]
            if variant == "adaptive" and "fidelity" in params["adagen"]:
                times[f"train {paradigm} fidelity"] = load_json(paths.policy_info(paradigm, "fidelity"))["seconds"]
                times[f"tradeoff {paradigm}"] = load_json(paths.tradeoff(paradigm))["seconds"]
            if variant == "adaptive" and "refinement" in params["adagen"]:
                times[f"refine {paradigm}"] = load_json(paths.refinement(paradigm))["seconds"]
            if variant == "tuned-static":
                times[f"tune-static {paradigm}"] = load_json(paths.tuned_static(paradigm))["seconds"]
            metrics = load_json(paths.metrics(paradigm, variant))
            times[f"sample {paradigm} {variant}"] = metrics["seconds"]
            times[f"evaluate {paradigm} {variant}"] = metrics["evaluate_seconds"]
    return times
