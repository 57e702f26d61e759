"""THE sampling loop: every caller (sampling, evaluation, later PPO collection and the discriminator's
fakes) drives a generator through this one function, so they cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from adagen.generators.base import SampleRNG, StepwiseGenerator

# A policy maps (features (B, N, C), step index k) to per-sample actions {name: (B,)}.
Policy = Callable[[Tensor, int], dict[str, Tensor]]


@dataclass
class Rollout:
    images: Tensor  # (B, C, H, W) in [0, 1]
    actions: dict[str, Tensor]  # {name: (B, T)} actions as applied (after clamping)
    nfe: int  # guided evaluations per sample
    forwards: int  # network passes per sample


def static_policy(generator: StepwiseGenerator) -> Policy:
    """The generator's hand-designed baseline schedule, the same for every sample."""
    schedule = generator.baseline_schedule()

    def act(features: Tensor, k: int) -> dict[str, Tensor]:
        batch = features.shape[0]
        return {name: values[k].expand(batch).to(features.device) for name, values in schedule.items()}

    return act


@torch.no_grad()
def rollout(generator: StepwiseGenerator, labels: Tensor, rng: SampleRNG, policy: Policy | None = None) -> Rollout:
    """Generate one batch: init, then observe -> act -> step for each of the generator's decisions, decode.

    `policy=None` runs the baseline schedule.
    """
    if len(rng) != labels.shape[0]:
        raise ValueError(f"{len(rng)} random streams for {labels.shape[0]} labels")
    act = policy or static_policy(generator)
    state: Any = generator.init(labels, rng)
    taken: dict[str, list[Tensor]] = {}
    for k in range(generator.num_steps):
        actions = generator.clamp_actions(act(generator.observe(state), k))
        for name, value in actions.items():
            taken.setdefault(name, []).append(value)
        state = generator.step(state, actions)
    return Rollout(
        images=generator.decode(state),
        actions={name: torch.stack(values, dim=1) for name, values in taken.items()},
        nfe=generator.nfe(state),
        forwards=generator.forwards(state),
    )
