"""The two FID protocols and published reference statistics, at a size a CPU runs: torch-fidelity's Inception with
random weights written by the test, a downloaded-layout DiT, and a reference file in ADM's reference-batch format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from adagen.cli import main
from adagen.config import ParamsError, Paths, validate_params
from adagen.io import load_npz
from adagen.metrics import AdaGenProtocolInception
from test_get_generator import downloaded_params, fill_mirror


class _RandomInception(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception with its own random initialisation instead of loaded weights."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


def random_inception_weights(path) -> None:
    torch.manual_seed(0)
    placeholder = path.with_suffix(".empty")
    torch.save({}, placeholder)
    network = _RandomInception("random-inception", ["2048"], feature_extractor_weights_path=str(placeholder))
    torch.save(network.state_dict(), path)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    random_inception_weights(path)
    return path


def test_adagen_protocol_is_torch_fidelity_inception_on_unrounded_images(inception_weights):
    adagen = AdaGenProtocolInception(inception_weights)
    standard = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                           feature_extractor_weights_path=str(inception_weights))
    # At 299 px both resizes are the identity, and k / 256 maps to (k - 128) / 128 under 2x - 1: the AdaGen path
    # must then give exactly what torch-fidelity's own standard path gives for the uint8 value k.
    levels = torch.randint(0, 256, (2, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for ours, theirs in zip(adagen(levels.float() / 256), standard(levels)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # Float images are not rounded: a change below one uint8 step changes the features.
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    nudged = (images + 0.2 / 255).clamp(0, 1)
    assert not torch.equal(adagen(images)[0], adagen(nudged)[0])
    with pytest.raises(ValueError, match="float images"):
        adagen(levels)


def write_reference_batch(path, images_nhwc: np.ndarray, seed: int = 0) -> dict:
    """A file in the layout of ADM's VIRTUAL_imagenet256_labeled.npz: arr_0 images, mu and sigma."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=2048).astype(np.float64)
    root = rng.normal(size=(2048, 64)) / 8
    published = {"arr_0": images_nhwc, "mu": mu, "sigma": root @ root.T + 0.01 * np.eye(2048)}
    np.savez(path, **published)
    return published


def test_reference_file_and_both_protocols_end_to_end(tmp_path, monkeypatch, inception_weights):
    monkeypatch.chdir(tmp_path)
    params = downloaded_params(tmp_path)
    params["paradigms"] = ["dit-official"]
    params["generators"].pop("var-d2")
    params["adagen"]["smoothing"].pop("var-d2")
    rng = np.random.default_rng(0)
    params["data"] |= {"source": "npz", "path": str(tmp_path / "digits.npz")}
    np.savez(tmp_path / "digits.npz", images=rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8),
             labels=np.arange(40) % 10)
    params["evaluator"] |= {"kind": "inception", "weights_path": str(inception_weights)}
    params["metrics"] |= {"reference": {"source": "file", "path": str(tmp_path / "reference.npz")},
                          "protocols": ["standard", "adagen"], "kid_subset_size": 4, "isc_splits": 2}
    params["sample"] |= {"n_samples": 10, "batch_size": 5, "seeds": [0, 1000]}
    published = write_reference_batch(tmp_path / "reference.npz", rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "proto.yaml").write_text(yaml.safe_dump(params))
    fill_mirror(tmp_path / "mirror")

    runner, params_file = CliRunner(), "params/proto.yaml"
    for stage in (["prepare-data"], ["train-evaluator"], ["refstats"], ["get-generator", "--paradigm", "dit-official"],
                  ["sample", "--paradigm", "dit-official", "--variant", "static"],
                  ["evaluate", "--paradigm", "dit-official", "--variant", "static"]):
        result = runner.invoke(main, [stage[0], "--params", params_file, *stage[1:]], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    paths = Paths.for_params_file(params_file)
    samples = load_npz(paths.samples("dit-official", "static"))
    metrics = json.loads(paths.metrics("dit-official", "static").read_text())
    reference = {"mu": published["mu"].astype(np.float32), "sigma": published["sigma"]}
    standard = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(inception_weights))
    for per_seed, seed in zip(metrics["per_seed"], (0, 1000)):
        chosen = samples["seeds"] == seed
        # The standard FID compares the saved uint8 samples with the file's statistics, not with its 12 images.
        features = standard(torch.from_numpy(samples["images"][chosen]))[0]
        expected = fid_statistics_to_metric(fid_features_to_statistics(features), reference, verbose=False)
        assert per_seed["fid"] == pytest.approx(expected["frechet_inception_distance"], rel=1e-4)
        # The AdaGen protocol: the features taken from the float images at sampling time, same statistics.
        adagen_stats = fid_features_to_statistics(torch.from_numpy(samples["adagen_features"][chosen]))
        expected = fid_statistics_to_metric(adagen_stats, reference, verbose=False)
        assert per_seed["fid_adagen"] == pytest.approx(expected["frechet_inception_distance"], rel=1e-4)
        assert per_seed["isc_adagen"] > 0
    assert metrics["fid_adagen"] == pytest.approx(np.mean([s["fid_adagen"] for s in metrics["per_seed"]]))
    refstats = json.loads(paths.refstats_info.read_text())
    assert refstats["published"]["n_images"] == 12 and refstats["n_reference"] == 12


def test_protocol_and_reference_rules(tmp_path):
    params = downloaded_params(tmp_path)
    params["metrics"]["protocols"] = ["adagen"]
    with pytest.raises(ParamsError, match="adagen protocol is defined on Inception features"):
        validate_params(params)
    params = downloaded_params(tmp_path)
    params["metrics"]["reference"] = {"source": "file"}
    with pytest.raises(ParamsError, match="source file needs one of checkpoint"):
        validate_params(params)
