"""A dataset given as arrays in an .npz file: `images`, `labels` and, optionally, `class_names`.

images: (N, H, W) greyscale, (N, H, W, C) or (N, C, H, W) with C in {1, 3}; uint8 in 0..255 (other
integer dtypes are accepted when their values fit) or floating point in [0, 1].
labels: 1-D integers of length N with values 0..K-1, every class present at least once.
class_names: optional 1-D string array of length K; defaults to "0".."K-1".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from adagen.data.dataset import DatasetError, LabelledImages, read_npz_archive
from adagen.data.imaging import to_square_array

IMAGES_KEY = "images"
LABELS_KEY = "labels"
CLASS_NAMES_KEY = "class_names"
# A channel axis of this size on axis 1, with larger axes after it, means channels-first layout.
CHANNEL_SIZES = (1, 3)
MIN_SPATIAL_SIZE_FOR_CHANNELS_FIRST = 5


def read_npz_source(path: Path, resolution: int, channels: int) -> LabelledImages:
    """Every image of the archive, labelled, resized and converted for output."""
    arrays = read_npz_archive(path)
    images = _channels_last(_required(arrays, IMAGES_KEY, path), path)
    pixels = _to_uint8(images, path)
    labels = _checked_labels(_required(arrays, LABELS_KEY, path), len(pixels), path)
    num_classes = int(labels.max()) + 1
    class_names = _class_names(arrays.get(CLASS_NAMES_KEY), num_classes, path)
    fitted = np.stack([to_square_array(_as_pil(image), resolution, channels) for image in pixels])
    return LabelledImages(images=fitted, labels=labels, class_names=class_names)


def _required(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        raise DatasetError(f"{path}: missing key '{key}'; found keys {sorted(arrays)}")
    return arrays[key]


def _channels_last(images: np.ndarray, path: Path) -> np.ndarray:
    """Bring images into (N, H, W, C) layout, detecting where the channel axis is."""
    if images.ndim == 3:
        images = images[..., np.newaxis]
    elif images.ndim == 4:
        _, second, third, fourth = images.shape
        spatial_after_second = min(third, fourth) >= MIN_SPATIAL_SIZE_FOR_CHANNELS_FIRST
        if second in CHANNEL_SIZES and spatial_after_second:
            images = images.transpose(0, 2, 3, 1)
        elif fourth not in CHANNEL_SIZES:
            raise DatasetError(
                f"{path}: key '{IMAGES_KEY}' has shape {images.shape}; found no channel axis of size 1 or 3 "
                f"(expected (N, H, W), (N, H, W, C) or (N, C, H, W))"
            )
    else:
        raise DatasetError(
            f"{path}: key '{IMAGES_KEY}' must have 3 or 4 dimensions ((N, H, W), (N, H, W, C) or "
            f"(N, C, H, W)), got shape {images.shape}"
        )
    if images.size == 0:
        raise DatasetError(f"{path}: key '{IMAGES_KEY}' is empty (shape {images.shape})")
    return images


def _to_uint8(images: np.ndarray, path: Path) -> np.ndarray:
    """Pixels as uint8 0..255; floats must lie in [0, 1], other integers in 0..255."""
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            raise DatasetError(f"{path}: key '{IMAGES_KEY}' holds NaN or infinite values; all must be finite")
        if images.min() < 0.0 or images.max() > 1.0:
            raise DatasetError(
                f"{path}: key '{IMAGES_KEY}' is floating point, so its values must lie in [0, 1]; "
                f"found range [{images.min()}, {images.max()}]"
            )
        # float64, so that x / 255 stored as float32 still rounds back to x.
        return np.rint(images.astype(np.float64) * 255.0).astype(np.uint8)
    if np.issubdtype(images.dtype, np.integer):
        if images.min() < 0 or images.max() > 255:
            raise DatasetError(
                f"{path}: key '{IMAGES_KEY}' has integer values outside 0..255 "
                f"(range [{images.min()}, {images.max()}])"
            )
        return images.astype(np.uint8)
    raise DatasetError(f"{path}: key '{IMAGES_KEY}' has unsupported dtype {images.dtype}; use uint8 or float")


def _checked_labels(labels: np.ndarray, num_images: int, path: Path) -> np.ndarray:
    """Labels as int64, after checking shape, dtype, length, sign and that no class index is unused."""
    if labels.ndim != 1:
        raise DatasetError(f"{path}: key '{LABELS_KEY}' must be 1-D, got shape {labels.shape}")
    if labels.size == 0:
        raise DatasetError(f"{path}: key '{LABELS_KEY}' is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: key '{LABELS_KEY}' must hold integers, got dtype {labels.dtype}")
    if len(labels) != num_images:
        raise DatasetError(
            f"{path}: key '{LABELS_KEY}' has {len(labels)} entries "
            f"but key '{IMAGES_KEY}' has {num_images} images"
        )
    if labels.min() < 0:
        raise DatasetError(f"{path}: key '{LABELS_KEY}' holds negative values (min {labels.min()})")
    largest = int(labels.max())
    # Checked before bincount, so a stray huge label cannot make it allocate a huge array.
    if largest >= len(labels):
        raise DatasetError(
            f"{path}: key '{LABELS_KEY}' goes up to {largest} but there are only {len(labels)} images, "
            f"so some class indices in 0..{largest} have no images"
        )
    counts = np.bincount(labels.astype(np.int64), minlength=largest + 1)
    unused = np.flatnonzero(counts == 0)
    if unused.size:
        raise DatasetError(
            f"{path}: key '{LABELS_KEY}': class indices {unused.tolist()} in 0..{largest} have no images"
        )
    return labels.astype(np.int64)


def _class_names(raw: np.ndarray | None, num_classes: int, path: Path) -> list[str]:
    """Names from the optional key, or "0".."K-1"; one unique string per class."""
    if raw is None:
        return [str(index) for index in range(num_classes)]
    if raw.ndim != 1 or raw.dtype.kind not in "US":
        raise DatasetError(
            f"{path}: key '{CLASS_NAMES_KEY}' must be a 1-D string array, "
            f"got dtype {raw.dtype} and shape {raw.shape}"
        )
    if len(raw) != num_classes:
        raise DatasetError(
            f"{path}: key '{CLASS_NAMES_KEY}' has {len(raw)} names "
            f"but the labels define {num_classes} classes"
        )
    try:
        names = [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in raw.tolist()]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: key '{CLASS_NAMES_KEY}' is not valid UTF-8: {exc}") from exc
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: key '{CLASS_NAMES_KEY}' holds duplicate names: {names}")
    return names


def _as_pil(image: np.ndarray) -> Image.Image:
    """An (H, W, C) uint8 array as a Pillow image, "L" for one channel and "RGB" for three."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
