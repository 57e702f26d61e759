"""A class-per-folder image directory: `root/<class_name>/<image files>`.

Class folders are taken in sorted name order and a class's label is its position in that order, so
labels do not depend on the order the file system lists folders in. Only the images directly inside a
class folder count; hidden entries (names starting with ".") and files with other extensions are
ignored, so `.DS_Store`, `README.txt` or a `.git` folder do not break a dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from adagen.data.dataset import DatasetError, LabelledImages
from adagen.data.imaging import read_image_file, to_square_array

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})


def read_folder(root: Path, resolution: int, channels: int, *, crop: str = "fit", per_class: int | None = None,
                seed: int = 0) -> LabelledImages:
    """Every image under `root`, labelled by its class folder, resized and converted for output.

    `per_class` keeps that many images of each class (a seeded choice, in file-name order), so a full-scale run
    can hold a class-balanced share of ImageNet in memory instead of all 1.28 million images.
    """
    class_folders = _class_folders(root)
    files_per_class = [_image_files(folder) for folder in class_folders]
    if per_class is not None:
        short = [folder.name for folder, files in zip(class_folders, files_per_class) if len(files) < per_class]
        if short:
            raise DatasetError(f"{root}: per_class {per_class}, but {len(short)} class folders have fewer images "
                               f"(first: {short[0]!r})")
        rng = np.random.default_rng(seed)
        files_per_class = [[files[i] for i in np.sort(rng.choice(len(files), per_class, replace=False))]
                           for files in files_per_class]
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, files in enumerate(tqdm(files_per_class, desc="read classes", mininterval=5.0,
                                       disable=len(files_per_class) < 100)):
        for path in files:
            images.append(_load_image(path, resolution, channels, crop))
            labels.append(label)
    return LabelledImages(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=[folder.name for folder in class_folders],
    )


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _class_folders(root: Path) -> list[Path]:
    """The sorted, visible sub-folders of `root`; at least two, or the dataset is rejected."""
    if not root.exists():
        raise DatasetError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"dataset path is not a folder: {root}")
    folders = sorted(entry for entry in root.iterdir() if entry.is_dir() and not _is_hidden(entry))
    if not folders:
        raise DatasetError(f"{root}: no class sub-folders found; expected {root}/<class_name>/<image files>")
    if len(folders) < 2:
        raise DatasetError(
            f"{root}: found only 1 class folder ({folders[0].name!r}); at least 2 classes are needed "
            f"(is the path one level too deep?)"
        )
    return folders


def _image_files(folder: Path) -> list[Path]:
    """The sorted, visible image files directly inside a class folder; at least one."""
    files = sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file() and not _is_hidden(entry) and entry.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise DatasetError(
            f"{folder}: class folder has no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files


def _load_image(path: Path, resolution: int, channels: int, crop: str) -> np.ndarray:
    """Decode and convert one file, naming it if that fails."""
    try:
        return to_square_array(read_image_file(path), resolution, channels, crop)
    except Exception as exc:  # noqa: BLE001 - image plugins raise many types (OSError, SyntaxError, ...)
        raise DatasetError(f"cannot read image file {path}: {type(exc).__name__}: {exc}") from exc
