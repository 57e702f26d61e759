"""The exported dataset: its error type, its in-memory form, and reading an exported file back.

An exported dataset is one `.npz` archive holding the fixed train/validation split as uint8 image tensors
in (N, C, H, W) layout, integer labels, and the class names as a unicode array (so it loads with
`allow_pickle=False`).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adagen.io import load_npz

# Keys of the exported archive; tuples, so nobody can change them at run time.
IMAGE_LABEL_KEYS = ("train_images", "train_labels", "val_images", "val_labels")
CLASS_NAMES_KEY = "class_names"
SUPPORTED_CHANNELS = (1, 3)


class DatasetError(ValueError):
    """A dataset source, its parameters or an exported dataset file cannot be used.

    The message always names the offending file, folder or key, so a failing pipeline stage says what
    to fix without a traceback.
    """


@dataclass(frozen=True)
class LabelledImages:
    """Every image of a source, already at the output size and channel count, before the split.

    images: (N, C, R, R) uint8; labels: (N,) int64 with values in 0..len(class_names)-1.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]


@dataclass(frozen=True)
class ImageDataset:
    """A fixed train/validation split of a labelled image dataset.

    Images are uint8 arrays of shape (N, C, H, W) with C in {1, 3} and H == W; labels are int64 arrays
    of shape (N,) indexing `class_names`. The invariants are checked on construction, so any
    ImageDataset that exists is usable.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        _check_class_names(self.class_names)
        for images_key, labels_key in (("train_images", "train_labels"), ("val_images", "val_labels")):
            images, labels = getattr(self, images_key), getattr(self, labels_key)
            _check_images(images, images_key)
            _check_labels(labels, labels_key, len(images), len(self.class_names))
        if self.train_images.shape[1:] != self.val_images.shape[1:]:
            raise DatasetError(
                f"'train_images' has per-image shape {self.train_images.shape[1:]} but 'val_images' has "
                f"{self.val_images.shape[1:]}; both splits must share channels and resolution"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.train_images.shape[2])


def _check_class_names(class_names: list[str]) -> None:
    if not isinstance(class_names, list) or not all(isinstance(name, str) for name in class_names):
        raise DatasetError(f"'{CLASS_NAMES_KEY}' must be a list of str")
    if not class_names:
        raise DatasetError(f"'{CLASS_NAMES_KEY}' is empty; a dataset needs at least one class")
    if len(set(class_names)) != len(class_names):
        raise DatasetError(f"'{CLASS_NAMES_KEY}' holds duplicate names: {class_names}")


def _check_images(images: np.ndarray, key: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        found = getattr(images, "dtype", type(images).__name__)
        raise DatasetError(f"'{key}' must be a uint8 numpy array, got {found}")
    if images.ndim != 4 or images.shape[1] not in SUPPORTED_CHANNELS or images.shape[2] != images.shape[3]:
        raise DatasetError(
            f"'{key}' must have shape (N, C, R, R) with C in {SUPPORTED_CHANNELS}, got {images.shape}"
        )
    if images.shape[2] == 0:
        raise DatasetError(f"'{key}' has zero-sized images: {images.shape}")


def _check_labels(labels: np.ndarray, key: str, expected_length: int, num_classes: int) -> None:
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
        raise DatasetError(
            f"'{key}' must be a 1-D int64 numpy array, got {getattr(labels, 'dtype', type(labels))} "
            f"with shape {getattr(labels, 'shape', None)}"
        )
    if len(labels) != expected_length:
        raise DatasetError(f"'{key}' has {len(labels)} labels for {expected_length} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"'{key}' holds labels outside 0..{num_classes - 1}")


def read_npz_archive(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an .npz file, turning each way it can fail into a DatasetError naming it."""
    if not path.exists():
        raise DatasetError(f"file not found: {path}")
    if not path.is_file():
        raise DatasetError(f"not a file: {path}")
    # np.load also accepts .npy and pickle files and then fails in confusing ways; an .npz is a zip.
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"not a valid .npz archive (not a zip file): {path}")
    try:
        return load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"not a valid .npz archive: {path} ({exc})") from exc


def load_dataset(npz_path: str | Path) -> ImageDataset:
    """Load a dataset written by `export_dataset`, checking that it is complete and consistent."""
    path = Path(npz_path)
    arrays = read_npz_archive(path)
    missing = [key for key in (*IMAGE_LABEL_KEYS, CLASS_NAMES_KEY) if key not in arrays]
    if missing:
        raise DatasetError(f"{path}: missing key(s) {missing}; found {sorted(arrays)}")
    names = arrays[CLASS_NAMES_KEY]
    if names.ndim != 1 or names.dtype.kind != "U":
        raise DatasetError(
            f"{path}: key '{CLASS_NAMES_KEY}' must be a 1-D unicode array, got {names.dtype} {names.shape}"
        )
    try:
        return ImageDataset(
            train_images=arrays["train_images"],
            train_labels=arrays["train_labels"],
            val_images=arrays["val_images"],
            val_labels=arrays["val_labels"],
            class_names=[str(name) for name in names.tolist()],
        )
    except DatasetError as exc:
        # Same message, now saying which file it is about.
        raise DatasetError(f"{path}: {exc}") from exc
