"""A policy network and a generator's action map as a rollout policy, deterministic or exploring.

Deterministic (evaluation): u = policy(features, k), or a blend of two policies (the fidelity-diversity knob).
Exploring (PPO collection): u ~ N(policy(features, k), std^2 I) in the network's output space (METHOD.md 1.2),
with u and its log-probability recorded per decision.
The smoothing state is reset at k = 0, so one object serves every rollout in turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from adagen.policy.actions import ActionMap
from adagen.policy.network import PolicyNet


def gaussian_log_prob(u_BA: Tensor, mean_BA: Tensor, std: float) -> Tensor:
    """log N(u; mean, std^2 I), summed over the action dimensions: (B,)."""
    variance = std**2
    return (-((u_BA - mean_BA) ** 2) / (2 * variance) - 0.5 * math.log(2 * math.pi * variance)).sum(-1)


@dataclass
class Transition:
    """What PPO needs of one decision of a batch."""

    features: Tensor  # (B, N, C)
    k: int
    u: Tensor  # (B, A) the sampled network-space action
    log_prob: Tensor  # (B,)


@dataclass
class AdaptivePolicy:
    network: PolicyNet
    action_map: ActionMap
    std: float | None = None  # None: deterministic mean actions
    noise: torch.Generator | None = None  # exploration noise stream (CPU)
    zero_state: bool = False  # learned-static ablation: the network sees zeros instead of features
    shard: tuple[int, int] = (0, 1)  # (rank, world size): draw the global batch's noise, keep this rank's rows
    # The fidelity-diversity knob (METHOD.md 6): z = (1 - lam) (u_network + residual) + lam (u_blend +
    # blend_residual), in pre-activation space before smoothing and activation, each policy around its own schedule
    # (blend_map's). lam = 0 skips the blend, so it is the plain policy exactly; lam = 1 is the blend policy exactly.
    blend: PolicyNet | None = None
    blend_map: ActionMap | None = None
    lam: float = 0.0
    transitions: list[Transition] = field(default_factory=list)
    _previous: Tensor | None = None

    @torch.no_grad()
    def __call__(self, features: Tensor, k: int) -> dict[str, Tensor]:
        if k == 0:
            self._previous, self.transitions = None, []
        if self.zero_state:
            features = torch.zeros_like(features)
        k_B = torch.full((features.shape[0],), k, device=features.device)
        mean = self.network(features, k_B)
        if self.blend is not None and self.lam > 0:
            if self.std is not None or self.blend_map is None:
                raise ValueError("a blend of two policies acts deterministically, each with its action map")
            z = (1 - self.lam) * self.action_map.target(mean, k) + self.lam * self.blend_map.target(
                self.blend(features, k_B), k)
        else:
            u = mean
            if self.std is not None:
                rank, world = self.shard
                rows = mean.shape[0]
                noise = torch.randn((rows * world, *mean.shape[1:]), generator=self.noise)
                noise = noise[rank * rows : (rank + 1) * rows]  # this rank's rows of the global batch's noise
                u = mean + self.std * noise.to(mean.device)
                self.transitions.append(Transition(features, k, u, gaussian_log_prob(u, mean, self.std)))
            z = self.action_map.target(u, k)
        self._previous, actions = self.action_map.apply(self._previous, z)  # the one smoothing both share
        return actions
