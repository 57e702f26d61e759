"""Export a dataset described by the `data` parameters to one deterministic .npz file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from adagen.data.dataset import (
    CLASS_NAMES_KEY,
    SUPPORTED_CHANNELS,
    DatasetError,
    ImageDataset,
    LabelledImages,
)
from adagen.data.folder import read_folder
from adagen.data.imaging import CROPS
from adagen.data.mnist import read_mnist5k
from adagen.data.npz_source import read_npz_source
from adagen.data.split import stratified_split
from adagen.io import save_npz, sha256_of_arrays

SOURCES = ("mnist5k", "folder", "npz")
PARAM_KEYS = ("source", "path", "resolution", "channels", "val_fraction", "split_seed")
OPTIONAL_KEYS = {"crop": "fit", "per_class": None}  # folder sources only


@dataclass(frozen=True)
class DataParams:
    """The checked `data` parameters."""

    source: str
    path: str | None  # None for mnist5k, which ignores any path given
    resolution: int
    channels: int
    val_fraction: float
    split_seed: int
    crop: str = "fit"  # "adm": ADM's centre crop (ImageNet); "fit": one resize of the centred square
    per_class: int | None = None  # a class-balanced subset of a folder source


def export_dataset(data_params: dict, out_npz: str | Path) -> dict:
    """Build the dataset described by data_params, write it atomically to out_npz, return metadata.

    The file holds train_images / val_images (N, C, R, R) uint8, train_labels / val_labels int64 and
    class_names (unicode). Nothing is written when any input is bad; the same parameters always give
    identical arrays (and the same `sha256`).
    """
    params = check_params(data_params)
    everything = _read_source(params)
    dataset = _split(everything, params)
    save_npz(
        out_npz,
        train_images=dataset.train_images,
        train_labels=dataset.train_labels,
        val_images=dataset.val_images,
        val_labels=dataset.val_labels,
        **{CLASS_NAMES_KEY: np.array(dataset.class_names, dtype=np.str_)},
    )
    return _metadata(params, dataset)


def check_params(data_params: Mapping[str, Any]) -> DataParams:
    """Check the parameters once more, so a direct call with bad values fails with a DatasetError too."""
    if not isinstance(data_params, Mapping):
        raise DatasetError(f"data params must be a mapping, got {type(data_params).__name__}")
    missing = [key for key in PARAM_KEYS if key not in data_params]
    unknown = sorted(set(data_params) - set(PARAM_KEYS) - set(OPTIONAL_KEYS))
    if missing or unknown:
        raise DatasetError(
            f"data params: missing keys {missing}, unknown keys {unknown}; expected {list(PARAM_KEYS)}"
        )
    source = data_params["source"]
    if source not in SOURCES:
        raise DatasetError(f"data params: key 'source' must be one of {list(SOURCES)}, got {source!r}")
    return DataParams(
        source=source,
        path=_checked_path(source, data_params["path"]),
        resolution=_checked_int(data_params, "resolution", minimum=1),
        channels=_checked_channels(data_params),
        val_fraction=_checked_fraction(data_params),
        split_seed=_checked_int(data_params, "split_seed", minimum=0),
        **_checked_folder_options(source, data_params),
    )


def _checked_folder_options(source: str, data_params: Mapping[str, Any]) -> dict:
    options = {key: data_params.get(key, default) for key, default in OPTIONAL_KEYS.items()}
    if options["crop"] not in CROPS:
        raise DatasetError(f"data params: key 'crop' must be one of {list(CROPS)}, got {options['crop']!r}")
    if options["per_class"] is not None:
        options["per_class"] = _checked_int(options, "per_class", minimum=1)
    if options != OPTIONAL_KEYS and source != "folder":
        raise DatasetError(f"data params: 'crop' and 'per_class' apply to source 'folder', not {source!r}")
    return options


def _checked_path(source: str, path: Any) -> str | None:
    if source == "mnist5k":
        return None  # the data is embedded; a path would not change it
    if path is None:
        raise DatasetError(f"data params: source {source!r} needs key 'path', got None")
    if not isinstance(path, (str, Path)):
        raise DatasetError(f"data params: key 'path' must be a string, got {type(path).__name__}")
    return str(path)


def _checked_int(data_params: Mapping[str, Any], key: str, minimum: int) -> int:
    value = data_params[key]
    # bool is an int subclass, but `resolution: true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(f"data params: key '{key}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _checked_channels(data_params: Mapping[str, Any]) -> int:
    channels = _checked_int(data_params, "channels", minimum=1)
    if channels not in SUPPORTED_CHANNELS:
        raise DatasetError(
            f"data params: key 'channels' must be one of {list(SUPPORTED_CHANNELS)}, got {channels}"
        )
    return channels


def _checked_fraction(data_params: Mapping[str, Any]) -> float:
    value = data_params["val_fraction"]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 < value < 1.0:
        raise DatasetError(f"data params: key 'val_fraction' must be a number in (0, 1), got {value!r}")
    return float(value)


def _read_source(params: DataParams) -> LabelledImages:
    """All images of the configured source at the configured resolution and channel count."""
    if params.source == "mnist5k":
        return read_mnist5k(params.resolution, params.channels)
    path = Path(params.path)  # checked non-None for folder and npz sources
    if params.source == "folder":
        return read_folder(path, params.resolution, params.channels, crop=params.crop, per_class=params.per_class,
                           seed=params.split_seed)
    return read_npz_source(path, params.resolution, params.channels)


def _split(everything: LabelledImages, params: DataParams) -> ImageDataset:
    """The fixed stratified split; constructing ImageDataset re-checks every invariant before saving."""
    source_name = params.path or params.source
    train, val = stratified_split(
        everything.labels, everything.class_names, params.val_fraction, params.split_seed, source_name
    )
    return ImageDataset(
        train_images=np.ascontiguousarray(everything.images[train]),
        train_labels=everything.labels[train],
        val_images=np.ascontiguousarray(everything.images[val]),
        val_labels=everything.labels[val],
        class_names=list(everything.class_names),
    )


def _metadata(params: DataParams, dataset: ImageDataset) -> dict:
    """A JSON-serialisable summary of the export, in plain Python types."""
    num_classes = dataset.num_classes
    return {
        "source": params.source,
        "path": params.path,
        "resolution": dataset.resolution,
        "channels": dataset.channels,
        "num_classes": num_classes,
        "class_names": list(dataset.class_names),
        "n_train": int(len(dataset.train_labels)),
        "n_val": int(len(dataset.val_labels)),
        "train_per_class": np.bincount(dataset.train_labels, minlength=num_classes).tolist(),
        "val_per_class": np.bincount(dataset.val_labels, minlength=num_classes).tolist(),
        "sha256": sha256_of_arrays(
            dataset.train_images, dataset.train_labels, dataset.val_images, dataset.val_labels
        ),
        "val_fraction": params.val_fraction,
        "split_seed": params.split_seed,
    }
