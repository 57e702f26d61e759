"""Tests of adagen.metrics on small synthetic images (no downloads, CPU only)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
import torch_fidelity.registry

from adagen import metrics
from adagen.io import load_checkpoint

NUM_CLASSES = 4
RESOLUTION = 16
EPOCHS = 4
EVALUATOR = {
    "kind": "classifier",
    "weights_path": None,
    "width": 16,
    "feature_dim": 32,
    "epochs": EPOCHS,
    "batch_size": 32,
    "lr": 3e-3,
    "seed": 0,
}
METRICS = {"batch_size": 64, "kid_subset_size": 1000, "prc_neighborhood": 3, "isc_splits": 10}


def synthetic_images(count: int, seed: int, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Four shape classes at random positions (horizontal bar, vertical bar, diagonal, square) plus noise.

    Classes differ by shape, not position, so the classifier's random-shift augmentation keeps them apart.
    RGB images get a random colour per image, so colour carries no class information.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=count)
    images = np.zeros((count, channels, RESOLUTION, RESOLUTION), dtype=np.float32)
    for i, label in enumerate(labels):
        offset = rng.integers(3, 11)
        canvas = images[i]
        if label == 0:
            canvas[:, offset : offset + 2, 2:14] = 1.0
        elif label == 1:
            canvas[:, 2:14, offset : offset + 2] = 1.0
        elif label == 2:
            steps = np.arange(12)
            canvas[:, 2 + steps, 2 + steps] = 1.0
        else:
            column = rng.integers(3, 9)
            canvas[:, offset : offset + 4, column : column + 4] = 1.0
        canvas *= rng.uniform(150, 255, size=(channels, 1, 1))
    images += rng.normal(0.0, 20.0, size=images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels


def uniform_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def train(train_set, val_set, **overrides):
    settings = {key: EVALUATOR[key] for key in ("width", "feature_dim", "epochs", "batch_size", "lr", "seed")}
    settings.update(overrides)
    return metrics.train_classifier(*train_set, *val_set, num_classes=NUM_CLASSES, **settings)


@pytest.fixture(scope="module")
def grey_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": synthetic_images(400, seed=1), "val": synthetic_images(200, seed=2)}


@pytest.fixture(scope="module")
def trained(grey_data, tmp_path_factory) -> dict:
    """One classifier for the whole module (training dominates the run time), saved to a checkpoint."""
    reports: list[tuple[dict, int]] = []
    model, info = train(
        grey_data["train"], grey_data["val"], report=lambda values, step: reports.append((values, step))
    )
    path = tmp_path_factory.mktemp("evaluator") / "evaluator.pt"
    metrics.save_classifier(path, model, info)
    return {"model": model, "info": info, "reports": reports, "path": path}


@pytest.fixture
def reference(grey_data, trained, tmp_path) -> dict:
    """A freshly computed reference cache of the grey val split."""
    cache_dir = tmp_path / "cache"
    summary = metrics.compute_reference(grey_data["val"][0], EVALUATOR, METRICS, trained["path"], cache_dir)
    return {"cache_dir": cache_dir, "summary": summary}


# ------------------------------------------------------------------------------------------ classifier


def test_classifier_learns_the_synthetic_classes(trained):
    info = trained["info"]
    assert info["val_accuracy"] >= 0.95
    assert info["epochs"] == EPOCHS
    assert math.isfinite(info["train_loss"])
    assert not trained["model"].training
    # One report per epoch, numbered 1..epochs, the last one matching the returned summary.
    reports = trained["reports"]
    assert [step for _, step in reports] == list(range(1, EPOCHS + 1))
    assert reports[-1][0] == {"train_loss": info["train_loss"], "val_accuracy": info["val_accuracy"]}
    assert reports[-1][0]["train_loss"] < reports[0][0]["train_loss"]


def test_training_is_deterministic_for_a_seed(grey_data):
    small_train = tuple(array[:96] for array in grey_data["train"])
    small_val = tuple(array[:32] for array in grey_data["val"])
    global_rng_before = torch.get_rng_state()
    first, _ = train(small_train, small_val, epochs=1, seed=3)
    second, _ = train(small_train, small_val, epochs=1, seed=3)
    other, _ = train(small_train, small_val, epochs=1, seed=4)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert not all(torch.equal(value, other.state_dict()[key]) for key, value in first.state_dict().items())
    # Seeding goes through private generators: the caller's global RNG stream is left alone.
    assert torch.equal(global_rng_before, torch.get_rng_state())


@pytest.mark.parametrize(("in_channels", "resolution"), [(1, 16), (3, 32)])
def test_classifier_output_shapes(in_channels, resolution):
    model = metrics.Classifier(in_channels, num_classes=10, resolution=resolution, width=8, feature_dim=24)
    features, logits = model(torch.rand(5, in_channels, resolution, resolution))
    assert features.shape == (5, 24)
    assert logits.shape == (5, 10)
    with pytest.raises(ValueError, match="built for"):
        model(torch.rand(5, in_channels, resolution // 2, resolution // 2))


def test_save_load_round_trip_gives_identical_outputs(trained, grey_data, tmp_path):
    loaded = metrics.load_classifier(trained["path"])
    assert not loaded.training
    assert loaded.config() == trained["model"].config()
    images = torch.from_numpy(grey_data["val"][0][:50]).float() / 255.0
    with torch.no_grad():
        for expected, actual in zip(trained["model"](images), loaded(images)):
            assert torch.equal(expected, actual)
    # The checkpoint is plain data: it loads with weights_only and carries the training summary.
    checkpoint = load_checkpoint(trained["path"])
    assert checkpoint["info"] == trained["info"]
    assert checkpoint["config"]["resolution"] == RESOLUTION


def test_uint8_images_yields_three_channel_uint8():
    grey = synthetic_images(6, seed=5)[0]
    item = metrics.UInt8Images(grey)[2]
    assert item.dtype == torch.uint8 and item.shape == (3, RESOLUTION, RESOLUTION)
    for channel in item:
        assert torch.equal(channel, torch.from_numpy(grey[2, 0]))
    rgb = synthetic_images(6, seed=5, channels=3)[0]
    dataset = metrics.UInt8Images(rgb)
    assert len(dataset) == 6
    assert torch.equal(dataset[4], torch.from_numpy(rgb[4]))
    with pytest.raises(ValueError):
        metrics.UInt8Images(rgb.astype(np.float32))


# ------------------------------------------------------------------------------- torch-fidelity plumbing


def test_registered_extractor_works_inside_calculate_metrics(trained, grey_data):
    val_images = grey_data["val"][0]
    settings = metrics.metric_settings(EVALUATOR, METRICS, trained["path"], len(val_images))
    # Registration is idempotent: a second call neither fails nor replaces the class.
    assert metrics.metric_settings(EVALUATOR, METRICS, trained["path"], len(val_images)) == settings
    registry = torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY
    assert registry[metrics.CLASSIFIER_EXTRACTOR_NAME] is metrics.ClassifierFeatureExtractor
    assert settings["feature_extractor"] == metrics.CLASSIFIER_EXTRACTOR_NAME
    assert settings["feature_extractor_weights_path"] == str(trained["path"])
    assert (settings["feature_layer_fid"], settings["feature_layer_isc"]) == ("features", "logits")

    result = torch_fidelity.calculate_metrics(input1=metrics.UInt8Images(val_images), isc=True, **settings)
    # A confident classifier on four balanced classes: IS close to (and at most) the class count.
    assert 3.0 < result[torch_fidelity.KEY_METRIC_ISC_MEAN] <= NUM_CLASSES


def test_identical_sets_give_zero_fid_and_full_precision_recall(reference, trained, grey_data):
    val_images = grey_data["val"][0]
    result = metrics.evaluate_images(
        val_images, val_images, EVALUATOR, METRICS, trained["path"], reference["cache_dir"]
    )
    assert set(result) == {"fid", "isc", "isc_std", "kid", "kid_std", "precision", "recall", "n_samples"}
    assert all(type(value) is float for key, value in result.items() if key != "n_samples")
    assert result["n_samples"] == len(val_images)
    assert abs(result["fid"]) < 1e-3
    assert result["precision"] == 1.0 and result["recall"] == 1.0
    assert result["isc"] > 3.0


def test_noise_is_far_from_the_reference(reference, trained, grey_data):
    val_images = grey_data["val"][0]
    common = (EVALUATOR, METRICS, trained["path"], reference["cache_dir"])
    same = metrics.evaluate_images(val_images, val_images, *common)
    noise = metrics.evaluate_images(uniform_noise(val_images.shape, seed=7), val_images, *common)
    assert noise["fid"] > 10.0
    assert noise["fid"] > 1e4 * max(abs(same["fid"]), 1e-6)
    assert noise["precision"] < 0.1
    assert noise["kid"] > same["kid"] + 1.0


def test_sanity_figures_bracket_the_scale(reference, trained, grey_data):
    common = (EVALUATOR, METRICS, trained["path"], reference["cache_dir"])
    figures = metrics.sanity_figures(grey_data["train"][0], grey_data["val"][0], *common, seed=0)
    assert set(figures) == {"fid_train_vs_val", "fid_noise_vs_val"}
    assert 0.0 <= figures["fid_train_vs_val"] < 0.1 * figures["fid_noise_vs_val"]
    # The noise images come from the seed: same seed, same figure.
    again = metrics.sanity_figures(grey_data["train"][0], grey_data["val"][0], *common, seed=0)
    assert again["fid_noise_vs_val"] == figures["fid_noise_vs_val"]


def test_reference_cache_is_written_once_and_reused(reference, trained, grey_data, monkeypatch):
    cache_dir: Path = reference["cache_dir"]
    summary = reference["summary"]
    val_images = grey_data["val"][0]
    prefix = f"{metrics.REFERENCE_CACHE_NAME}-{metrics.CLASSIFIER_EXTRACTOR_NAME}"
    assert summary["files"] == [
        f"{prefix}-features-features.pt",
        f"{prefix}-features-logits.pt",
        f"{prefix}-stat-fid-features.pt",
        f"{prefix}.json",
    ]
    assert summary["n_reference"] == len(val_images)
    assert summary["feature_dim"] == EVALUATOR["feature_dim"]
    assert summary["feature_extractor"] == metrics.CLASSIFIER_EXTRACTOR_NAME
    assert sorted(path.name for path in cache_dir.iterdir()) == sorted(summary["files"])
    before = {path.name: path.stat().st_mtime_ns for path in cache_dir.iterdir()}

    # Count what the extractor actually sees: with the reference cached, only the samples pass through it.
    seen_counts: list[int] = []
    original_forward = metrics.ClassifierFeatureExtractor.forward

    def counting_forward(self, images):
        seen_counts.append(len(images))
        return original_forward(self, images)

    monkeypatch.setattr(metrics.ClassifierFeatureExtractor, "forward", counting_forward)
    samples = uniform_noise((30, 1, RESOLUTION, RESOLUTION), seed=11)
    result = metrics.evaluate_images(samples, val_images, EVALUATOR, METRICS, trained["path"], cache_dir)
    assert sum(seen_counts) == len(samples)
    assert math.isfinite(result["fid"])
    # Nothing new was cached (input1 never is) and the reference files were not rewritten.
    assert {path.name: path.stat().st_mtime_ns for path in cache_dir.iterdir()} == before


def test_missing_or_stale_reference_is_rejected(trained, grey_data, tmp_path):
    val_images = grey_data["val"][0]
    cache_dir = tmp_path / "cache"
    common = (EVALUATOR, METRICS, trained["path"], cache_dir)
    with pytest.raises(FileNotFoundError, match="compute_reference"):
        metrics.evaluate_images(val_images, val_images, *common)
    metrics.compute_reference(val_images, *common)
    other_reference = val_images[:150]
    with pytest.raises(ValueError, match="rerun compute_reference"):
        metrics.evaluate_images(val_images, other_reference, *common)
    # Recomputing replaces the cache instead of reusing the old files under the same name.
    summary = metrics.compute_reference(other_reference, *common)
    assert summary["n_reference"] == len(other_reference)
    result = metrics.evaluate_images(other_reference, other_reference, *common)
    assert abs(result["fid"]) < 1e-3


def test_samples_at_another_resolution_are_rejected(reference, trained, grey_data):
    wrong_size = uniform_noise((20, 1, 2 * RESOLUTION, 2 * RESOLUTION), seed=3)
    with pytest.raises(ValueError, match="built for"):
        metrics.evaluate_images(
            wrong_size, grey_data["val"][0], EVALUATOR, METRICS, trained["path"], reference["cache_dir"]
        )


def test_small_inputs_clip_kid_subset_size_and_isc_splits(reference, trained, grey_data):
    small_metrics = {**METRICS, "kid_subset_size": 1000, "isc_splits": 50, "prc_neighborhood": 3}
    settings = metrics.metric_settings(EVALUATOR, small_metrics, trained["path"], n_samples=12)
    assert settings["kid_subset_size"] == 12
    assert settings["isc_splits"] == 12
    assert settings["prc_neighborhood"] == 3
    assert metrics.metric_settings(EVALUATOR, small_metrics, trained["path"], n_samples=3)["prc_neighborhood"] == 2
    untouched = metrics.metric_settings(EVALUATOR, METRICS, trained["path"], n_samples=5000)
    assert untouched["kid_subset_size"] == METRICS["kid_subset_size"]
    assert untouched["isc_splits"] == METRICS["isc_splits"]

    # 12 samples against 200 reference images with kid_subset_size 1000: runs, and KID is finite.
    samples = grey_data["train"][0][:12]
    result = metrics.evaluate_images(
        samples, grey_data["val"][0], EVALUATOR, small_metrics, trained["path"], reference["cache_dir"]
    )
    assert result["n_samples"] == 12
    assert all(math.isfinite(result[key]) for key in ("fid", "kid", "kid_std", "isc"))


def test_metric_settings_for_inception_names_the_local_weights():
    inception = {**EVALUATOR, "kind": "inception", "weights_path": "/models/pt_inception-2015-12-05.pth"}
    settings = metrics.metric_settings(inception, METRICS, evaluator_path=None, n_samples=500)
    assert settings["feature_extractor"] == "inception-v3-compat"
    assert settings["feature_extractor_weights_path"] == "/models/pt_inception-2015-12-05.pth"
    assert settings["feature_layer_fid"] == settings["feature_layer_kid"] == settings["feature_layer_prc"] == "2048"
    assert settings["feature_layer_isc"] == "logits_unbiased"
    assert settings["cuda"] == torch.cuda.is_available()
    assert settings["save_cpu_ram"] is True and settings["verbose"] is False
    assert settings["kid_subset_size"] == 500
    # Offline clusters: no weights path must not fall back to torch-fidelity's download.
    with pytest.raises(ValueError, match="weights_path"):
        metrics.metric_settings({**inception, "weights_path": None}, METRICS, None, n_samples=500)


def test_rgb_images_work_end_to_end(tmp_path):
    train_set = synthetic_images(240, seed=21, channels=3)
    val_set = synthetic_images(120, seed=22, channels=3)
    model, info = train(train_set, val_set)
    assert model.in_channels == 3
    assert info["val_accuracy"] >= 0.9
    path = tmp_path / "rgb_evaluator.pt"
    metrics.save_classifier(path, model, info)

    val_images = val_set[0]
    common = (EVALUATOR, METRICS, path, tmp_path / "cache")
    summary = metrics.compute_reference(val_images, *common)
    assert summary["n_reference"] == len(val_images)
    same = metrics.evaluate_images(val_images, val_images, *common)
    fresh = metrics.evaluate_images(synthetic_images(120, seed=24, channels=3)[0], val_images, *common)
    noise = metrics.evaluate_images(uniform_noise(val_images.shape, seed=23), val_images, *common)
    assert abs(same["fid"]) < 1e-3
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    # New images of the same distribution sit close to the reference, noise far from it.
    assert noise["fid"] > 10.0 * fresh["fid"] > 0.0
    assert noise["precision"] < 0.1 < fresh["precision"]
