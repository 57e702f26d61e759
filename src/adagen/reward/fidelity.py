"""The fidelity-oriented reward (METHOD.md 6): the adversarial reward plus a weighted per-sample fidelity score.

The default score is the log-probability of the requested class under a frozen classifier that is neither the
metrics' feature network nor the discriminator's backbone (the `train-fidelity-classifier` stage trains one of
its own), so neither the metric nor the adversarial reward is gamed directly. `realism` is the other built-in
score: how deep inside the train split's feature manifold a sample lies, under the same classifier. Any
`images, labels -> (B,)` callable can take their place (ImageReward, a timm ImageNet classifier at full scale).
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


def realism(classifier: torch.nn.Module, reference_images_BCHW: Tensor, neighbourhood: int,
            batch_size: int = 500) -> RewardFn:
    """log realism score (Kynkaanniemi et al. 2019, the per-sample form of k-NN precision) in the classifier's
    features: log max_i r_i / |f(image) - f_i| over reference images i, r_i the distance from f_i to its
    `neighbourhood`-th nearest reference. Positive inside the reference manifold; it rises as a sample moves to
    where reference images are dense, which is what trading recall for precision asks. The reported precision
    uses other features (the metrics' network) and other images (the val split; pass the train split here)."""
    classifier = classifier.eval()
    with torch.no_grad():
        reference = torch.cat([classifier(reference_images_BCHW[i : i + batch_size])[0]
                               for i in range(0, len(reference_images_BCHW), batch_size)])
        distances = torch.cdist(reference, reference)
        radii = distances.kthvalue(neighbourhood + 1, dim=1).values  # + 1: the zero distance to itself
    del distances

    @torch.no_grad()
    def score(images_BCHW: Tensor, labels_B: Tensor) -> Tensor:
        features = classifier(images_BCHW.to(reference.device))[0]
        ratios = radii.unsqueeze(0) / torch.cdist(features, reference).clamp_min(1e-8)
        return ratios.max(dim=1).values.log().to(images_BCHW.device)

    return score


def with_fidelity(adversarial: RewardFn, fidelity: RewardFn, weight: float) -> RewardFn:
    """reward = adversarial + weight * fidelity; `adversarial` is looked up at every call, so a discriminator
    trained jointly is always its current self."""

    def reward(images_BCHW: Tensor, labels_B: Tensor) -> Tensor:
        return adversarial(images_BCHW, labels_B) + weight * fidelity(images_BCHW, labels_B).to(images_BCHW.device)

    return reward
