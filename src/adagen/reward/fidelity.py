"""The fidelity-oriented reward (METHOD.md 6): the adversarial reward plus a weighted per-sample fidelity score.

The default score is the log-probability of the requested class under a frozen classifier that is neither the
metrics' feature network nor the discriminator's backbone (the `train-fidelity-classifier` stage trains one of
its own), so neither the metric nor the adversarial reward is gamed directly. Any `images, labels -> (B,)`
callable can take its place (ImageReward, a timm ImageNet classifier at full scale).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

RewardFn = Callable[[Tensor, Tensor], Tensor]


def class_log_probability(classifier: torch.nn.Module) -> RewardFn:
    """log p(label | image) under a frozen classifier returning (features, logits) of images in [0, 1]."""

    @torch.no_grad()
    def score(images_BCHW: Tensor, labels_B: Tensor) -> Tensor:
        _, logits = classifier.eval()(images_BCHW)
        return logits.log_softmax(dim=-1).gather(1, labels_B.view(-1, 1).to(logits.device)).squeeze(1)

    return score


def with_fidelity(adversarial: RewardFn, fidelity: RewardFn, weight: float) -> RewardFn:
    """reward = adversarial + weight * fidelity; `adversarial` is looked up at every call, so a discriminator
    trained jointly is always its current self."""

    def reward(images_BCHW: Tensor, labels_B: Tensor) -> Tensor:
        return adversarial(images_BCHW, labels_B) + weight * fidelity(images_BCHW, labels_B).to(images_BCHW.device)

    return reward
