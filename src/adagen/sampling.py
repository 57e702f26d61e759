"""Sampling to uint8 arrays and image grids, batch by batch, with one random stream per sample."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import make_grid
from PIL import Image
from tqdm import tqdm

from adagen.generators.base import SampleRNG, StepwiseGenerator
from adagen.io import atomic_path
from adagen.rl.rollout import Lookahead, Policy, rollout


def class_balanced_labels(n_samples: int, num_classes: int) -> np.ndarray:
    """0, 1, ..., K-1, 0, 1, ...: every class equally often (up to one), as in the paper's evaluation."""
    return np.arange(n_samples, dtype=np.int64) % num_classes


def to_uint8(images_BCHW: Tensor) -> np.ndarray:
    """[0, 1] floats to uint8 the way image files store them (round to nearest)."""
    return (images_BCHW.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def sample_images(
    generator: StepwiseGenerator,
    labels: np.ndarray,
    *,
    seed: int,
    batch_size: int,
    policy: Policy | None = None,
    progress: bool = True,
    features: Callable[[Tensor], dict[str, np.ndarray]] | None = None,
    lookahead: Lookahead | None = None,
) -> dict:
    """Generate one image per label; sample i uses seed + i, so batch size does not change the images.

    Returns {"images": uint8 (N, C, H, W), "labels", "actions": {name: float32 (N, T) as applied}, "nfe",
    "forwards", "seconds"}, and "features" when `features` is given: what it returns for each batch of float
    images before they are rounded to uint8 (the AdaGen FID protocol measures those), concatenated.
    """
    chunks, actions, extracted, nfe, forwards, critic_calls = [], [], [], 0, 0, 0
    started = time.perf_counter()
    starts = range(0, len(labels), batch_size)
    for start in tqdm(starts, desc="sample", disable=not progress, mininterval=2.0):
        batch_labels = torch.from_numpy(labels[start : start + batch_size])
        rng = SampleRNG(range(seed + start, seed + start + len(batch_labels)))
        result = rollout(generator, batch_labels, rng, policy, lookahead)
        chunks.append(to_uint8(result.images))
        if features is not None:
            extracted.append(features(result.images))
        actions.append({name: values.float().cpu().numpy() for name, values in result.actions.items()})
        nfe, forwards, critic_calls = result.nfe, result.forwards, result.critic_calls
    return {
        **({"features": {key: np.concatenate([batch[key] for batch in extracted]) for key in extracted[0]}}
           if features is not None else {}),
        "images": np.concatenate(chunks),
        "labels": labels.astype(np.int64),
        "actions": {name: np.concatenate([batch[name] for batch in actions]) for name in actions[0]},
        "nfe": nfe,
        "forwards": forwards,
        "critic_calls": critic_calls,
        "seconds": time.perf_counter() - started,
    }


def save_grid(path: str | Path, images: np.ndarray, labels: np.ndarray, per_class: int = 10) -> None:
    """PNG grid: one column per class (up to 10 classes), `per_class` rows, written atomically."""
    columns = sorted(set(labels.tolist()))[:10]
    picked = []
    for row in range(per_class):
        for label in columns:
            indices = np.flatnonzero(labels == label)
            if row < len(indices):
                picked.append(images[indices[row]])
    tensor = torch.from_numpy(np.stack(picked)).float() / 255.0
    grid = make_grid(tensor, nrow=len(columns), padding=2, pad_value=1.0)
    scale = max(1, 64 // images.shape[-1])  # small digits are enlarged so the grid is readable
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(array if array.shape[2] == 3 else array[:, :, 0])
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
