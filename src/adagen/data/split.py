"""The fixed, stratified train/validation split."""

from __future__ import annotations

import math

import numpy as np

from adagen.data.dataset import DatasetError


def validation_count(class_size: int, val_fraction: float) -> int:
    """How many of a class's images go to validation: the rounded fraction, but at least 1 and leaving 1.

    Rounds halves up (2.5 -> 3) rather than Python's round-half-to-even, so the count is the one a
    reader computes by hand.
    """
    rounded = math.floor(class_size * val_fraction + 0.5)
    return min(max(rounded, 1), class_size - 1)


def stratified_split(
    labels: np.ndarray, class_names: list[str], val_fraction: float, seed: int, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation), each sorted ascending, holding out `val_fraction` of every class.

    One numpy Generator seeded with `seed` draws the classes in label order, so the split depends only
    on the labels, the fraction and the seed. `source` names the data in error messages.
    """
    rng = np.random.default_rng(seed)
    is_validation = np.zeros(len(labels), dtype=bool)
    for label, name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise DatasetError(
                f"{source}: class {name!r} has {len(members)} image(s); at least 2 are needed "
                f"(one for training, one for validation)"
            )
        chosen = rng.permutation(len(members))[: validation_count(len(members), val_fraction)]
        is_validation[members[chosen]] = True
    # flatnonzero yields ascending indices: both splits keep the source order.
    return np.flatnonzero(~is_validation), np.flatnonzero(is_validation)
