"""Sample-quality metrics (FID, IS, KID, precision/recall), all computed by `torch_fidelity.calculate_metrics`.

Two feature networks are supported:

* ``kind: classifier`` (the embedded default): a small CNN trained on the train split by its own pipeline
  stage (`train_classifier`), saved with `save_classifier` and registered with torch-fidelity as the feature
  extractor ``adagen-classifier``. Its ``features`` layer feeds FID, KID and precision/recall, its ``logits``
  layer the Inception Score. torch-fidelity builds the extractor itself and passes the checkpoint path through
  ``feature_extractor_weights_path``.
* ``kind: inception``: torch-fidelity's ``inception-v3-compat`` with weights from a local file (clusters are
  offline, so a missing path is an error rather than a download).
* ``kind: reward-backbone``: the discriminator's frozen ViT (``adagen-reward-backbone``), never for reported
  figures: AdaGen training selects its policy checkpoint by FID in this feature space, so that the selection
  signal is not the reported metric.

The reference (val split) features are extracted once by `compute_reference` into torch-fidelity's own file
cache, under a fixed ``input2`` cache name; later evaluations load them instead of recomputing. The generated
samples (``input1``) are never cached, since they change from run to run. Because torch-fidelity would
silently reuse whatever cache files carry that name, `compute_reference` also writes a small manifest with
content hashes of the reference images and the feature-network weights, and every evaluation checks it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
import torch_fidelity
import torch_fidelity.registry
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from tqdm import tqdm

from adagen.io import load_checkpoint, load_json, save_checkpoint, save_json, sha256_of_arrays, sha256_of_file
from adagen.reward.backbone import backbone_input, load_backbone

#: Name under which the trained classifier is registered with torch-fidelity.
CLASSIFIER_EXTRACTOR_NAME = "adagen-classifier"
#: Name under which the reward's backbone is registered with torch-fidelity.
REWARD_BACKBONE_EXTRACTOR_NAME = "adagen-reward-backbone"
#: torch-fidelity's name for the TF-compatible InceptionV3.
INCEPTION_EXTRACTOR_NAME = "inception-v3-compat"
#: Fixed ``input2_cache_name`` of the reference (val split) features in torch-fidelity's cache.
REFERENCE_CACHE_NAME = "adagen-reference"

# Feature layers per evaluator kind: (layer for FID/KID/PRC, layer for IS).
_FEATURE_LAYERS = {
    "classifier": ("features", "logits"),
    "inception": ("2048", "logits_unbiased"),
    "reward-backbone": ("features", "logits"),
}
# Pixels of random translation used as training augmentation of the classifier.
_MAX_SHIFT = 2

ReportFn = Callable[[dict[str, float], int], None]


# --------------------------------------------------------------------------------------------- classifier


def _conv_norm_act(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 conv, GroupNorm, SiLU. GroupNorm (not BatchNorm) so features do not depend on batch composition."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        # gcd keeps the group count a divisor of the channel count for any configured width.
        nn.GroupNorm(math.gcd(8, out_channels), out_channels),
        nn.SiLU(),
    )


class Classifier(nn.Module):
    """Small conv net whose penultimate layer serves as the feature space of the metrics.

    Three stages (widths ``width``, ``2 width``, ``4 width``), each a stride-1 and a stride-2 conv block, then
    global average pooling, a linear map to ``feature_dim`` (the *features*) and a linear head on their SiLU
    (the *logits*). Global pooling makes the same architecture work at 16 and 32 px.
    """

    def __init__(
        self, in_channels: int, num_classes: int, resolution: int, width: int = 32, feature_dim: int = 128
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.resolution = resolution
        self.width = width
        self.feature_dim = feature_dim

        stage_widths = (width, 2 * width, 4 * width)
        blocks: list[nn.Module] = []
        previous = in_channels
        for stage_width in stage_widths:
            blocks.append(_conv_norm_act(previous, stage_width, stride=1))
            blocks.append(_conv_norm_act(stage_width, stage_width, stride=2))
            previous = stage_width
        self.trunk = nn.Sequential(*blocks)
        self.to_features = nn.Linear(previous, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def config(self) -> dict[str, int]:
        """Constructor arguments, stored in checkpoints so `load_classifier` can rebuild the network."""
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "resolution": self.resolution,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }

    def forward(self, images_BCHW: Tensor) -> tuple[Tensor, Tensor]:
        """Float images in [0, 1] -> (features_BF, logits_BK)."""
        if images_BCHW.dim() != 4 or images_BCHW.shape[1] != self.in_channels:
            raise ValueError(f"expected B x {self.in_channels} x H x W images, got {tuple(images_BCHW.shape)}")
        if tuple(images_BCHW.shape[2:]) != (self.resolution, self.resolution):
            # Features at another resolution are not comparable with the reference: refuse rather than guess.
            raise ValueError(
                f"classifier was built for {self.resolution}x{self.resolution} images, "
                f"got {tuple(images_BCHW.shape[2:])}"
            )
        hidden_BCHW = self.trunk(images_BCHW * 2.0 - 1.0)
        pooled_BC = hidden_BCHW.mean(dim=(2, 3))
        features_BF = self.to_features(pooled_BC)
        logits_BK = self.head(F.silu(features_BF))
        return features_BF, logits_BK


def _check_images(name: str, images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{name} must be a uint8 (N, C, H, W) numpy array")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got shape {images.shape}")
    if len(images) == 0:
        raise ValueError(f"{name} is empty")


def _check_labels(name: str, labels: np.ndarray, count: int, num_classes: int) -> None:
    if labels.ndim != 1 or len(labels) != count:
        raise ValueError(f"{name} must be a 1-D array with one label per image ({count})")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes})")


def _random_shift(images_BCHW: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by its own random offset of up to `max_shift` pixels (edge pixels replicated)."""
    batch, _, height, width = images_BCHW.shape
    padded = F.pad(images_BCHW, (max_shift,) * 4, mode="replicate")
    offsets_B2 = torch.randint(0, 2 * max_shift + 1, (batch, 2), generator=generator)
    rows_BH = offsets_B2[:, :1] + torch.arange(height)
    cols_BW = offsets_B2[:, 1:] + torch.arange(width)
    batch_index = torch.arange(batch)[:, None, None]
    # Advanced indexing puts the indexed dims first: (B, H, W, C) -> back to (B, C, H, W).
    shifted_BHWC = padded.permute(0, 2, 3, 1)[batch_index, rows_BH[:, :, None], cols_BW[:, None, :]]
    return shifted_BHWC.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _accuracy(model: Classifier, images: Tensor, labels: Tensor, batch_size: int, device: torch.device) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device).float() / 255.0
        _, logits = model(batch)
        correct += int((logits.argmax(dim=1).cpu() == labels[start : start + batch_size]).sum())
    return correct / len(images)


def train_classifier(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    *,
    num_classes: int,
    width: int,
    feature_dim: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    report: ReportFn | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """Train the feature classifier on uint8 NCHW images; return it (CPU, eval mode) and a summary.

    AdamW with a cosine learning-rate decay, random shifts of up to two pixels as augmentation. Initialisation,
    shuffling and augmentation draw from `seed` only (the global RNG is left untouched), so a seed gives the
    same network on the same machine. `report(metrics, epoch)` receives ``train_loss`` and ``val_accuracy``
    after every epoch. The summary holds ``val_accuracy``, ``train_loss`` (last epoch) and ``epochs``.
    """
    _check_images("train_images", train_images)
    _check_images("val_images", val_images)
    _check_labels("train_labels", train_labels, len(train_images), num_classes)
    _check_labels("val_labels", val_labels, len(val_images), num_classes)
    if train_images.shape[1:] != val_images.shape[1:]:
        raise ValueError(f"train and val images differ in shape: {train_images.shape} vs {val_images.shape}")
    in_channels, height, image_width = train_images.shape[1:]
    if height != image_width:
        raise ValueError(f"square images expected, got {height}x{image_width}")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be positive")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(seed)
    # Seed the initialisation without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(in_channels, num_classes, height, width=width, feature_dim=feature_dim)
    model.to(device)

    train_x = torch.from_numpy(np.ascontiguousarray(train_images))
    train_y = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    val_x = torch.from_numpy(np.ascontiguousarray(val_images))
    val_y = torch.from_numpy(np.asarray(val_labels, dtype=np.int64))

    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    # Decaying to zero lets the last epochs settle, which makes the final network (the one kept) a good one.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)

    train_loss = float("nan")
    val_accuracy = float("nan")
    with tqdm(total=epochs * steps_per_epoch, desc="evaluator classifier", unit="step") as progress:
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(len(train_x), generator=generator)
            loss_sum = 0.0
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                images = _random_shift(train_x[index].float() / 255.0, _MAX_SHIFT, generator)
                _, logits = model(images.to(device))
                loss = F.cross_entropy(logits, train_y[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss.detach()) * len(index)
                progress.update(1)
            train_loss = loss_sum / len(train_x)
            val_accuracy = _accuracy(model, val_x, val_y, batch_size, device)
            progress.set_postfix(train_loss=f"{train_loss:.4f}", val_accuracy=f"{val_accuracy:.4f}")
            if report is not None:
                report({"train_loss": train_loss, "val_accuracy": val_accuracy}, epoch)

    model.cpu().eval()
    return model, {"val_accuracy": float(val_accuracy), "train_loss": float(train_loss), "epochs": int(epochs)}


def save_classifier(path: str | os.PathLike, model: Classifier, info: Mapping[str, Any]) -> None:
    """Write config, weights and training summary (plain values only, so it loads with weights_only)."""
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    save_checkpoint(path, {"config": model.config(), "state_dict": state_dict, "info": dict(info)})


def load_classifier(path: str | os.PathLike) -> Classifier:
    """Rebuild a `Classifier` from a `save_classifier` checkpoint; returned on CPU in eval mode."""
    checkpoint = load_checkpoint(path)
    model = Classifier(**checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    model.requires_grad_(False)
    return model.eval()


# ------------------------------------------------------------------------------ torch-fidelity plumbing


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity adapter of a saved `Classifier` (registered as ``adagen-classifier``).

    torch-fidelity constructs it with every keyword of `calculate_metrics`; only the checkpoint path
    (``feature_extractor_weights_path``) matters here, the rest is accepted and ignored.
    """

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{name} needs feature_extractor_weights_path (a save_classifier checkpoint)")
        self.classifier = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 3, 16, 16, dtype=torch.uint8)

    def forward(self, images_B3HW: Tensor) -> tuple[Tensor, ...]:
        """uint8 B x 3 x H x W (as torch-fidelity delivers) -> features in `features_list` order."""
        if images_B3HW.dtype != torch.uint8 or images_B3HW.dim() != 4 or images_B3HW.shape[1] != 3:
            raise ValueError(f"expected uint8 B x 3 x H x W images, got {images_B3HW.dtype} {images_B3HW.shape}")
        images = images_B3HW.float() / 255.0
        if self.classifier.in_channels == 1:
            # Grey images arrive replicated to RGB; the mean recovers the single channel exactly.
            images = images.mean(dim=1, keepdim=True)
        features_BF, logits_BK = self.classifier(images)
        outputs = {"features": features_BF, "logits": logits_BK}
        return tuple(outputs[name] for name in self.features_list)


class RewardBackboneFeatureExtractor(ClassifierFeatureExtractor):
    """torch-fidelity adapter of the reward's saved ViT backbone (registered as ``adagen-reward-backbone``):
    pre-logits features and logits, like the classifier's."""

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs: Any
    ) -> None:
        FeatureExtractorBase.__init__(self, name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{name} needs feature_extractor_weights_path (a train-reward-backbone checkpoint)")
        saved = load_checkpoint(feature_extractor_weights_path)
        self.backbone, self.input = load_backbone(saved), backbone_input(saved)

    def forward(self, images_B3HW: Tensor) -> tuple[Tensor, ...]:
        if images_B3HW.dtype != torch.uint8 or images_B3HW.dim() != 4 or images_B3HW.shape[1] != 3:
            raise ValueError(f"expected uint8 B x 3 x H x W images, got {images_B3HW.dtype} {images_B3HW.shape}")
        images = images_B3HW.float() / 255.0
        if self.backbone.patch_embed.proj.in_channels == 1:
            images = images.mean(dim=1, keepdim=True)  # grey images arrive replicated to RGB
        side, mean, std = self.input["resolution"], self.input["mean"], self.input["std"]
        if images.shape[-1] != side:
            images = F.interpolate(images, size=(side, side), mode="area")  # as the discriminator sees them
        normalised = (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        tokens = self.backbone.forward_features(normalised)
        features = self.backbone.forward_head(tokens, pre_logits=True)
        outputs = {"features": features, "logits": self.backbone.head(features)}
        return tuple(outputs[name] for name in self.features_list)


_OWN_EXTRACTORS = {CLASSIFIER_EXTRACTOR_NAME: ClassifierFeatureExtractor,
                   REWARD_BACKBONE_EXTRACTOR_NAME: RewardBackboneFeatureExtractor}


def _register_extractor(name: str) -> None:
    """Register one of this module's extractors once; torch-fidelity's registry is process-global and refuses
    duplicate names, so check first."""
    registered = torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY.get(name)
    if registered is None:
        torch_fidelity.register_feature_extractor(name, _OWN_EXTRACTORS[name])
    elif registered is not _OWN_EXTRACTORS[name]:
        # Same name, foreign class: metrics would silently come from another network.
        raise RuntimeError(f"feature extractor {name!r} is registered by {registered!r}")


class UInt8Images(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) numpy images as torch-fidelity input: uint8 3 x H x W tensors.

    Grey images are replicated to three channels, which torch-fidelity requires; the classifier extractor
    averages them back.
    """

    def __init__(self, images: np.ndarray) -> None:
        _check_images("images", images)
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        # np.array copies the one image, so read-only or memory-mapped sources are fine for torch.
        image = torch.from_numpy(np.array(self.images[index]))
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1).contiguous()
        return image


def _extractor_name(evaluator_params: Mapping[str, Any]) -> str:
    kind = evaluator_params["kind"]
    names = {"classifier": CLASSIFIER_EXTRACTOR_NAME, "inception": INCEPTION_EXTRACTOR_NAME,
             "reward-backbone": REWARD_BACKBONE_EXTRACTOR_NAME}
    if kind not in names:
        raise ValueError(f"unknown evaluator kind {kind!r}")
    return names[kind]


def _weights_path(evaluator_params: Mapping[str, Any], evaluator_path: str | os.PathLike | None) -> str:
    """File the feature network loads: a trained network's checkpoint, or the configured Inception weights."""
    if evaluator_params["kind"] != "inception":
        if evaluator_path is None:
            raise ValueError(f"kind {evaluator_params['kind']!r} needs evaluator_path "
                             "(the trained network's checkpoint)")
        return str(evaluator_path)
    if evaluator_params.get("weights_path") is None:
        # torch-fidelity would otherwise try to download the weights; the clusters are offline.
        raise ValueError("kind 'inception' needs evaluator.weights_path (local inception-v3-compat weights)")
    return str(evaluator_params["weights_path"])


def metric_settings(
    evaluator_params: Mapping[str, Any],
    metrics_params: Mapping[str, Any],
    evaluator_path: str | os.PathLike | None,
    n_samples: int,
) -> dict[str, Any]:
    """Keyword arguments of `torch_fidelity.calculate_metrics` shared by every call of this module.

    `n_samples` is the size of the smaller input; KID subset size, IS splits and the precision/recall
    neighbourhood are clipped to it. The caller adds the inputs, the metric flags and the cache settings
    (caching is off here, so a bare call never writes to torch-fidelity's default cache in the home folder).
    """
    if n_samples < 2:
        raise ValueError(f"metrics need at least 2 samples, got {n_samples}")
    extractor = _extractor_name(evaluator_params)
    if extractor in _OWN_EXTRACTORS:
        _register_extractor(extractor)
    feature_layer, logits_layer = _FEATURE_LAYERS[evaluator_params["kind"]]
    cuda = torch.cuda.is_available()
    return {
        "feature_extractor": extractor,
        "feature_layer_fid": feature_layer,
        "feature_layer_kid": feature_layer,
        "feature_layer_prc": feature_layer,
        "feature_layer_isc": logits_layer,
        "feature_extractor_weights_path": _weights_path(evaluator_params, evaluator_path),
        "cuda": cuda,
        # In-memory datasets gain nothing from loader workers, and chunked precision/recall bounds memory.
        "save_cpu_ram": True,
        "batch_size": int(metrics_params["batch_size"]),
        "kid_subset_size": min(int(metrics_params["kid_subset_size"]), n_samples),
        "isc_splits": min(int(metrics_params["isc_splits"]), n_samples),
        # The k-th neighbour excludes the sample itself, so k must stay below the sample count.
        "prc_neighborhood": min(int(metrics_params["prc_neighborhood"]), n_samples - 1),
        "cache": False,
        "verbose": False,
    }


# ------------------------------------------------------------------------------------ reference cache


def _reference_cache_files(extractor: str, evaluator_params: Mapping[str, Any]) -> list[str]:
    """Names torch-fidelity 0.4 gives the cached reference: per-layer features and the FID statistics."""
    feature_layer, logits_layer = _FEATURE_LAYERS[evaluator_params["kind"]]
    prefix = f"{REFERENCE_CACHE_NAME}-{extractor}"
    return [
        f"{prefix}-features-{feature_layer}.pt",
        f"{prefix}-features-{logits_layer}.pt",
        f"{prefix}-stat-fid-{feature_layer}.pt",
    ]


def _manifest_name(extractor: str) -> str:
    return f"{REFERENCE_CACHE_NAME}-{extractor}.json"


def _fingerprint(
    reference_images: np.ndarray, evaluator_params: Mapping[str, Any], evaluator_path: str | os.PathLike | None
) -> dict[str, Any]:
    """What the cached reference depends on: the images and the feature network's weights."""
    return {
        "n_reference": len(reference_images),
        "reference_sha256": sha256_of_arrays(reference_images),
        "evaluator_sha256": sha256_of_file(_weights_path(evaluator_params, evaluator_path)),
    }


def _cached_reference_settings(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """Cache input2 (the reference) under the fixed name; input1 has no cache name, so it is never cached."""
    return {"cache": True, "cache_root": str(cache_dir), "input2_cache_name": REFERENCE_CACHE_NAME}


def compute_reference(
    val_images: np.ndarray,
    evaluator_params: Mapping[str, Any],
    metrics_params: Mapping[str, Any],
    evaluator_path: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Extract the val split's features into torch-fidelity's cache in `cache_dir` and write a manifest.

    Stale cache files of this extractor are removed first (torch-fidelity would reuse them blindly). Returns
    the manifest: ``n_reference``, ``feature_extractor``, ``feature_dim``, ``cache_name``, ``files`` (names in
    `cache_dir`, manifest included) and the two content hashes the evaluations check.
    """
    _check_images("val_images", val_images)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    extractor = _extractor_name(evaluator_params)
    cache_files = _reference_cache_files(extractor, evaluator_params)
    manifest_name = _manifest_name(extractor)
    n_reference = len(val_images)
    # Settings first: they validate the evaluator before any existing cache is thrown away.
    settings = metric_settings(evaluator_params, metrics_params, evaluator_path, n_reference)
    for name in (*cache_files, manifest_name):
        (cache_dir / name).unlink(missing_ok=True)

    # The cache is filled by an ordinary calculate_metrics call, so file names and contents are exactly what
    # later calls look up. IS + FID make the extractor produce both layers (both get cached) and the FID
    # statistics; input1 is a small uncached slice whose metric values are discarded.
    probe = val_images[: max(2, min(n_reference, settings["batch_size"]))]
    settings.update(_cached_reference_settings(cache_dir))
    settings["isc_splits"] = 1
    torch_fidelity.calculate_metrics(
        input1=UInt8Images(probe), input2=UInt8Images(val_images), isc=True, fid=True, **settings
    )

    missing = [name for name in cache_files if not (cache_dir / name).is_file()]
    if missing:
        raise RuntimeError(f"torch-fidelity did not write the expected cache files {missing} in {cache_dir}")
    # Cached features are a plain tensor; weights_only keeps the load safe.
    features = torch.load(cache_dir / cache_files[0], map_location="cpu", weights_only=True)
    manifest = {
        "feature_extractor": extractor,
        "feature_dim": int(features.shape[1]),
        "cache_name": REFERENCE_CACHE_NAME,
        "files": [*cache_files, manifest_name],
        **_fingerprint(val_images, evaluator_params, evaluator_path),
    }
    save_json(cache_dir / manifest_name, manifest)
    return manifest


def _require_reference(
    reference_images: np.ndarray,
    evaluator_params: Mapping[str, Any],
    evaluator_path: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
) -> None:
    """Fail unless `compute_reference` cached these very reference images with this very feature network."""
    manifest_path = Path(cache_dir) / _manifest_name(_extractor_name(evaluator_params))
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no reference cache manifest {manifest_path}; run compute_reference first")
    manifest = load_json(manifest_path)
    expected = _fingerprint(reference_images, evaluator_params, evaluator_path)
    stale = [key for key, value in expected.items() if manifest.get(key) != value]
    if stale:
        raise ValueError(
            f"reference cache in {cache_dir} does not match ({', '.join(stale)} differ); rerun compute_reference"
        )


def evaluate_images(
    images: np.ndarray,
    reference_images: np.ndarray,
    evaluator_params: Mapping[str, Any],
    metrics_params: Mapping[str, Any],
    evaluator_path: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
) -> dict[str, float | int]:
    """FID, IS, KID and precision/recall of uint8 (N, C, H, W) `images` against the cached reference.

    Precision is the share of `images` inside the reference manifold, recall the share of the reference
    inside the samples' manifold. All values are plain floats except ``n_samples`` (an int).
    """
    _check_images("images", images)
    _check_images("reference_images", reference_images)
    _require_reference(reference_images, evaluator_params, evaluator_path, cache_dir)
    result = _against_reference(images, reference_images, evaluator_params, metrics_params, evaluator_path,
                                cache_dir, isc=True, fid=True, kid=True, prc=True)
    return {
        "fid": float(result[torch_fidelity.KEY_METRIC_FID]),
        "isc": float(result[torch_fidelity.KEY_METRIC_ISC_MEAN]),
        "isc_std": float(result[torch_fidelity.KEY_METRIC_ISC_STD]),
        "kid": float(result[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(result[torch_fidelity.KEY_METRIC_KID_STD]),
        "precision": float(result[torch_fidelity.KEY_METRIC_PRECISION]),
        "recall": float(result[torch_fidelity.KEY_METRIC_RECALL]),
        "n_samples": len(images),
    }


def _against_reference(
    images: np.ndarray,
    reference_images: np.ndarray,
    evaluator_params: Mapping[str, Any],
    metrics_params: Mapping[str, Any],
    evaluator_path: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
    **metrics: bool,
) -> dict[str, float]:
    """torch-fidelity's `metrics` of `images` against the reference, whose features come from the cache
    (or, with `cache_dir` None, are computed afresh)."""
    settings = metric_settings(
        evaluator_params, metrics_params, evaluator_path, min(len(images), len(reference_images))
    )
    if cache_dir is not None:
        settings.update(_cached_reference_settings(cache_dir))
    return torch_fidelity.calculate_metrics(
        input1=UInt8Images(images), input2=UInt8Images(reference_images), **metrics, **settings
    )


def held_out_scores(
    images: np.ndarray,
    reference_images: np.ndarray,
    evaluator_params: Mapping[str, Any],
    metrics_params: Mapping[str, Any],
    evaluator_path: str | os.PathLike | None,
    scratch_dir: str | os.PathLike | None = None,
    *,
    precision_recall: bool = False,
) -> dict[str, float]:
    """FID (and with `precision_recall`, precision and recall) against another reference: for choices such as the
    tuned-static schedule, which are judged on the train split so that the val split stays untouched for the
    reported figures.

    `scratch_dir` (a directory the caller owns for one reference set, e.g. a temporary one) keeps the
    reference features between calls, so a search that scores many candidates extracts them once.
    """
    _check_images("images", images)
    _check_images("reference_images", reference_images)
    result = _against_reference(images, reference_images, evaluator_params, metrics_params, evaluator_path,
                                scratch_dir, fid=True, prc=precision_recall)
    scores = {"fid": float(result[torch_fidelity.KEY_METRIC_FID])}
    if precision_recall:
        scores.update(precision=float(result[torch_fidelity.KEY_METRIC_PRECISION]),
                      recall=float(result[torch_fidelity.KEY_METRIC_RECALL]))
    return scores


def sanity_figures(
    train_images: np.ndarray,
    val_images: np.ndarray,
    evaluator_params: Mapping[str, Any],
    metrics_params: Mapping[str, Any],
    evaluator_path: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
    seed: int = 0,
) -> dict[str, float]:
    """Bounds that put generated-sample FIDs in context, both against the cached val reference.

    ``fid_train_vs_val`` (all of `train_images`; should be small) and ``fid_noise_vs_val`` (uniform uint8
    noise shaped like the val split, from a numpy Generator seeded with `seed`; should be large).
    """
    _check_images("train_images", train_images)
    _check_images("val_images", val_images)
    _require_reference(val_images, evaluator_params, evaluator_path, cache_dir)
    noise = np.random.default_rng(seed).integers(0, 256, size=val_images.shape, dtype=np.uint8)
    common = (val_images, evaluator_params, metrics_params, evaluator_path, cache_dir)
    return {
        "fid_train_vs_val": float(_against_reference(train_images, *common, fid=True)[torch_fidelity.KEY_METRIC_FID]),
        "fid_noise_vs_val": float(_against_reference(noise, *common, fid=True)[torch_fidelity.KEY_METRIC_FID]),
    }


# ------------------------------------------------------------------------- published reference statistics


def import_reference_statistics(mu: np.ndarray, sigma: np.ndarray, evaluator_params: Mapping[str, Any],
                                cache_dir: str | os.PathLike) -> None:
    """Replace the cached FID statistics of the reference with published ones (ADM's reference batch holds the
    statistics of the whole train set, its images only a 10 000 subset for KID and precision/recall).

    Written where torch-fidelity looks the statistics up, in the types it computes them in (float32 mean of float32
    features, float64 covariance), so that every later `calculate_metrics` call compares with them."""
    extractor = _extractor_name(evaluator_params)
    feature_layer, _ = _FEATURE_LAYERS[evaluator_params["kind"]]
    mu, sigma = np.asarray(mu, dtype=np.float32), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"reference statistics: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    save_checkpoint(Path(cache_dir) / f"{REFERENCE_CACHE_NAME}-{extractor}-stat-fid-{feature_layer}.pt",
                    {"mu": mu, "sigma": sigma})


# ----------------------------------------------------------------------------------- the AdaGen protocol


class AdaGenProtocolInception(FeatureExtractorInceptionV3):
    """torch-fidelity's FID Inception with the input path of the AdaGen release's evaluation (METHOD.md 8):
    float images in [0, 1] straight from the decoder (no uint8 rounding, no PNG), PyTorch's bilinear resize to
    299 (align_corners False) instead of the TF1-compatible one, then 2x - 1.

    The network and its layer order stay torch-fidelity's: the parent's forward runs on a placeholder, and a
    pre-hook on its first convolution swaps in the input prepared here. Features "2048" and "logits_unbiased".
    """

    SIDE = 299

    def __init__(self, weights_path: str | os.PathLike):
        super().__init__("adagen-protocol-inception", ["2048", "logits_unbiased"],
                         feature_extractor_weights_path=str(weights_path))
        self._prepared: Tensor | None = None
        self.Conv2d_1a_3x3.register_forward_pre_hook(lambda module, args: (self._prepared,))

    @torch.no_grad()
    def forward(self, images_BCHW: Tensor) -> tuple[Tensor, Tensor]:
        if not images_BCHW.is_floating_point():
            raise ValueError(f"the AdaGen protocol takes float images in [0, 1], got {images_BCHW.dtype}")
        x = images_BCHW.clamp(0, 1).to(self.feature_extractor_internal_dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.SIDE, self.SIDE), mode="bilinear", align_corners=False)
        self._prepared = 2 * x - 1
        try:
            placeholder = torch.zeros(x.shape[0], 3, self.SIDE, self.SIDE, dtype=torch.uint8, device=x.device)
            return super().forward(placeholder)
        finally:
            self._prepared = None

    def features(self, images_BCHW: Tensor) -> dict[str, np.ndarray]:
        """What the sample stage stores per image: pool features and unbiased logits."""
        pool, logits = self(images_BCHW)
        return {"adagen_features": pool.cpu().numpy(), "adagen_logits": logits.cpu().numpy()}


def adagen_protocol_statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    return fid_features_to_statistics(torch.from_numpy(np.asarray(features, dtype=np.float32)))


def adagen_protocol_scores(features: np.ndarray, logits: np.ndarray, reference: Mapping[str, np.ndarray],
                           isc_splits: int) -> dict[str, float]:
    """FID against the reference statistics and IS on shuffled logits (seed 2020), as the AdaGen release does."""
    statistics = adagen_protocol_statistics(features)
    reference = {"mu": np.asarray(reference["mu"], dtype=np.float32),
                 "sigma": np.asarray(reference["sigma"], dtype=np.float64)}
    fid = fid_statistics_to_metric(statistics, reference, verbose=False)[torch_fidelity.KEY_METRIC_FID]
    isc = isc_features_to_metric(torch.from_numpy(np.asarray(logits)), splits=min(isc_splits, len(logits)),
                                 shuffle=True, rng_seed=2020)
    return {"fid_adagen": float(fid), "isc_adagen": float(isc[torch_fidelity.KEY_METRIC_ISC_MEAN])}
