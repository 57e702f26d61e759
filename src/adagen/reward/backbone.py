"""The frozen feature network of the discriminator.

Full size: DINO ViT-S/16 (timm `vit_small_patch16_224.dino`) from a local weights file. Embedded default: a
tiny timm ViT with the same structure, trained here as a classifier on the train split (the
`train-reward-backbone` stage, through the generators' training loop). It is a different network from the
evaluation classifier, so the reward is never the metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from adagen.io import saved_state_dict

UNIT_MEAN, UNIT_STD = 0.5, 0.5  # the embedded backbone sees (x - 0.5) / 0.5 of images in [0, 1]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINO's input normalisation


def backbone_config(network_params: dict, *, resolution: int, channels: int, num_classes: int) -> dict:
    """timm VisionTransformer arguments of the embedded backbone (`adagen.reward_backbone.network`)."""
    return dict(network_params, img_size=resolution, in_chans=channels, num_classes=num_classes)


def classification_loss(backbone: VisionTransformer, images_BCHW: Tensor, labels_B: Tensor,
                        generator: torch.Generator, *, label_smoothing: float = 0.1, max_shift: int = 1) -> Tensor:
    """Cross-entropy on randomly shifted images (a little augmentation keeps the features general)."""
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    shifted = torch.roll(images_BCHW, shifts=(dy, dx), dims=(2, 3))
    logits = backbone((shifted - UNIT_MEAN) / UNIT_STD)
    return F.cross_entropy(logits, labels_B, label_smoothing=label_smoothing)


@torch.no_grad()
def accuracy(backbone: VisionTransformer, images_uint8, labels, batch_size: int = 500) -> float:
    backbone = backbone.eval()
    correct = 0
    for start in range(0, len(images_uint8), batch_size):
        images = torch.from_numpy(images_uint8[start : start + batch_size]).float() / 255.0
        predictions = backbone((images - UNIT_MEAN) / UNIT_STD).argmax(dim=1)
        correct += (predictions == torch.from_numpy(labels[start : start + batch_size])).sum().item()
    return correct / len(images_uint8)


def load_backbone(checkpoint: dict) -> VisionTransformer:
    """The backbone saved by the train-reward-backbone stage ({"config": timm arguments, "state_dict"}, or the
    downloaded weights file it names), frozen."""
    backbone = VisionTransformer(**checkpoint["config"])
    backbone.load_state_dict(saved_state_dict(checkpoint))
    return backbone.eval().requires_grad_(False)


def backbone_input(checkpoint: dict) -> dict:
    """What a saved backbone expects: its input side (`resolution`) and normalisation (`mean`, `std`)."""
    return {"resolution": checkpoint["config"]["img_size"], "mean": tuple(checkpoint.get("mean", (UNIT_MEAN,))),
            "std": tuple(checkpoint.get("std", (UNIT_STD,)))}


def classifier_confidence(backbone: VisionTransformer):
    """The fixed-reward ablation's reward: p(label | image) under the frozen backbone classifier. A static
    per-sample scorer, which a policy can exploit (the reason AdaGen trains its discriminator jointly)."""

    @torch.no_grad()
    def reward(images_BCHW: Tensor, labels_B: Tensor) -> Tensor:
        logits = backbone.eval()((images_BCHW - UNIT_MEAN) / UNIT_STD)
        return logits.softmax(dim=-1).gather(1, labels_B.view(-1, 1).to(logits.device)).squeeze(1)

    return reward
