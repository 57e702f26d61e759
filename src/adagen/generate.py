"""Sampling with the artifacts of a finished pipeline: the Python function behind `adagen sample --out`.

    from adagen.generate import generate
    result = generate("params/default.yaml", "dit", "adaptive", count=20, seed=0)
    result.images  # uint8 tensor (20, C, H, W), exactly as image files store them

Sample i uses noise seed `seed + i` whatever the batch size, so the same call gives the same images on any
machine that has the same artifacts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from adagen import stages
from adagen.config import Paths, load_params
from adagen.generators import paradigm_of
from adagen.io import atomic_path, load_checkpoint, load_json
from adagen.reward.backbone import backbone_input, load_backbone
from adagen.reward.discriminator import ProjectedDiscriminator, discriminator_config
from adagen.policy.network import load_policy
from adagen.rl.rollout import Lookahead
from adagen.sampling import class_balanced_labels, sample_images

# Best-of-N: candidate j of sample i uses noise seed seed + i + j * stride, so candidate 0 is the plain sample.
CANDIDATE_SEED_STRIDE = 1_000_000_007
SELECTIONS = ("resample", "max")  # best-of-N: how a sample's candidate is chosen (select_candidates)
SELECTION_STREAM = 7  # the key, beside the sample's seed, of the stream that resampling draws from

# The sampling setting that sets the number of generator evaluations, per paradigm (VAR's is its scale count).
STEPS_SETTING = {"maskgit": "steps", "dit": "nfe", "sit": "nfe"}


@dataclass
class Generated:
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)
    actions: dict[str, Tensor]  # per-step values applied, {name: (N, T)}
    nfe: int  # generator evaluations per returned sample, every candidate counted
    forwards: int  # network forwards per returned sample (CFG doubles them), every candidate counted
    settings: dict  # the baseline schedule the generator was built with
    candidates: int = 1  # best-of-N: candidates generated per returned sample
    discriminator_calls: int = 0  # per returned sample (scoring the candidates)
    rewards: Tensor | None = None  # best-of-N: (candidates, N) reward of every candidate
    critic_calls: int = 0  # per returned sample (lookahead: candidates x branching steps)


def load_discriminator(params: dict, paths: Paths, paradigm: str, variant: str) -> ProjectedDiscriminator:
    """The discriminator trained jointly with a policy variant (its heads are kept in the policy file)."""
    saved = load_checkpoint(stages.require(paths.policy(paradigm, variant),
                                           f"train --paradigm {paradigm} --variant {variant}"))
    saved_backbone = load_checkpoint(stages.require(paths.reward_backbone, "train-reward-backbone"))
    info = load_json(stages.require(paths.dataset_info, "prepare-data"))
    discriminator = ProjectedDiscriminator(load_backbone(saved_backbone), discriminator_config(
        params["adagen"]["discriminator"], num_classes=info["num_classes"], **backbone_input(saved_backbone)))
    discriminator.load_state_dict({**discriminator.state_dict(), **saved["discriminator"]})
    return discriminator.eval()


def select_candidates(rewards: Tensor, selection: str, seed: int) -> np.ndarray:
    """Which of the candidates (rewards (candidates, N)) each sample keeps.

    `max`: the highest reward. `resample`: candidate j with probability proportional to r_j / (1 - r_j), the
    exponential of the discriminator's mean logit, which is the density ratio real / generated that an optimal
    discriminator's logit estimates: resampling by it moves the kept samples toward the data distribution
    (discriminator rejection sampling, Azadi et al. 2019), where the maximum collapses onto what the
    discriminator likes most. Sample i draws from a stream seeded by seed + i, like its noise, so the choice does
    not depend on the batch either.
    """
    if selection == "max":
        return rewards.argmax(dim=0).numpy()
    logits = torch.logit(rewards.double().clamp(1e-12, 1 - 1e-12))
    weights = torch.softmax(logits, dim=0).numpy()  # softmax of the logits = normalised density ratios
    draws = np.array([np.random.default_rng([seed + i, SELECTION_STREAM]).random() for i in range(weights.shape[1])])
    return np.minimum((weights.cumsum(axis=0) < draws).sum(axis=0), len(weights) - 1)


def generate(params_file: str | os.PathLike, paradigm: str, variant: str = "adaptive", *, count: int | None = None,
             labels: Sequence[int] | None = None, seed: int = 0, batch_size: int = 64, steps: int | None = None,
             best_of: int = 1, selection: str = "resample", lookahead: int = 1, lam: float = 0.0,
             progress: bool = False) -> Generated:
    """Images of one paradigm and variant: `count` class-balanced labels, or the given `labels`.

    `steps` changes the number of generator evaluations of a static variant (a trained policy keeps the
    number it was trained for). `best_of` > 1 is the inference-time refinement: that many candidates per
    sample, scored by the trained discriminator (the variant's own for a policy variant, the adaptive policy's
    otherwise), one kept by `selection` (see `select_candidates`); its compute is counted in `nfe`, `forwards`
    and `discriminator_calls`. `lookahead` > 1 is the value-guided lookahead of the stochastic paradigms (MaskGIT,
    VAR): that many candidate next states per step, continued from the one the policy's critic values most; its
    extra evaluations are in `nfe` and `forwards`, its critic calls in `critic_calls`. `lam` in [0, 1] blends
    the adaptive policy with the fidelity policy (0: the adaptive policy exactly). Missing artifacts raise
    `stages.MissingInput` naming the stage that makes them.
    """
    return generate_from(load_params(params_file), Paths.for_params_file(params_file), paradigm, variant,
                         count=count, labels=labels, seed=seed, batch_size=batch_size, steps=steps, best_of=best_of,
                         selection=selection, lookahead=lookahead, lam=lam, progress=progress)


def generate_from(params: dict, paths: Paths, paradigm: str, variant: str = "adaptive", *, count: int | None = None,
                  labels: Sequence[int] | None = None, seed: int = 0, batch_size: int = 64, steps: int | None = None,
                  best_of: int = 1, selection: str = "resample", lookahead: int = 1, lam: float = 0.0,
                  progress: bool = False) -> Generated:
    """`generate` with the params already loaded and validated (the pipeline's refine stage calls this)."""
    if paradigm not in params["paradigms"]:
        raise ValueError(f"params set {paths.set_name}: paradigm {paradigm!r} is not in paradigms {params['paradigms']}")
    if variant not in stages.VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (known: {', '.join(stages.VARIANTS)})")
    if (count is None) == (labels is None):
        raise ValueError("give either count (class-balanced labels) or labels, not both")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    num_classes = load_json(stages.require(paths.dataset_info, "prepare-data"))["num_classes"]
    if labels is None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        label_array = class_balanced_labels(count, num_classes)
    else:
        label_array = np.asarray(list(labels), dtype=np.int64)
        if label_array.size == 0 or label_array.min() < 0 or label_array.max() >= num_classes:
            raise ValueError(f"labels must be class indices in [0, {num_classes}), got {list(labels)}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if best_of < 1:
        raise ValueError(f"best_of must be at least 1, got {best_of}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    if lookahead < 1:
        raise ValueError(f"lookahead must be at least 1, got {lookahead}")
    if lookahead > 1 and not paradigm_of(paradigm).stochastic_steps:
        raise ValueError(f"{paradigm}: lookahead branches on the noise of token sampling (maskgit, var); "
                         "an ODE step draws none")
    if lookahead > 1 and variant not in stages.POLICY_VARIANTS:
        raise ValueError(f"lookahead needs the critic of a trained policy; variant {variant!r} has none")

    settings = dict(stages.sampling_settings(params, paths, paradigm, variant))
    if steps is not None:
        steps_key = STEPS_SETTING.get(paradigm_of(paradigm).name)
        if steps_key is None:
            raise ValueError(f"{paradigm}: the number of steps is fixed by the tokenizer's scales")
        if variant in (*stages.POLICY_VARIANTS, stages.RELEASED) and steps != settings[steps_key]:
            raise ValueError(f"the {variant} policy was trained for {settings[steps_key]} steps, "
                             f"not {steps}: sample a static variant at other step counts")
        settings[steps_key] = steps
    generator = stages.load_generator(params, paths, paradigm, settings)
    policy = stages.load_sampling_policy(paths, paradigm, variant, generator, lam=lam)
    guide = None
    if lookahead > 1:
        saved = load_checkpoint(stages.require(paths.policy(paradigm, variant), f"train --paradigm {paradigm}"))
        guide = Lookahead(load_policy(saved["critic"]), lookahead)
    runs = [sample_images(generator, label_array, seed=seed + candidate * CANDIDATE_SEED_STRIDE,
                          batch_size=batch_size, policy=policy, progress=progress, lookahead=guide)
            for candidate in range(best_of)]
    images = np.stack([run["images"] for run in runs])  # (candidates, N, C, H, W)
    actions = {name: np.stack([run["actions"][name] for run in runs]) for name in runs[0]["actions"]}
    rewards, chosen = None, np.zeros(len(label_array), dtype=np.int64)
    if best_of > 1:
        discriminator = load_discriminator(params, paths, paradigm,
                                           variant if variant in stages.POLICY_VARIANTS else "adaptive")
        # A sample's candidates are scored together (see candidate_rewards): the choice does not depend on the
        # other samples or the batch size.
        targets = torch.from_numpy(label_array)
        rewards = torch.stack([discriminator.candidate_rewards(torch.from_numpy(images[:, i]).float() / 255.0,
                                                               targets[i]) for i in range(len(label_array))], dim=1)
        chosen = select_candidates(rewards, selection, seed)
    pick = np.arange(len(label_array))
    return Generated(images=torch.from_numpy(images[chosen, pick]), labels=torch.from_numpy(label_array),
                     actions={name: torch.from_numpy(values[chosen, pick]) for name, values in actions.items()},
                     nfe=best_of * runs[0]["nfe"], forwards=best_of * runs[0]["forwards"], settings=settings,
                     candidates=best_of, discriminator_calls=best_of if best_of > 1 else 0, rewards=rewards,
                     critic_calls=best_of * runs[0]["critic_calls"])


def save_png_folder(folder: str | os.PathLike, images: Tensor, labels: Tensor) -> list[Path]:
    """One PNG per image, `<index>_class<label>.png`, each written atomically."""
    folder = Path(folder)
    written = []
    for index, (image, label) in enumerate(zip(images.numpy(), labels.tolist())):
        array = image.transpose(1, 2, 0)
        picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        path = folder / f"{index:06d}_class{label}.png"
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        written.append(path)
    return written
