"""THE sampling loop: every caller (sampling, evaluation, later PPO collection and the discriminator's
fakes) drives a generator through this one function, so they cannot drift apart."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from adagen.generators.base import SampleRNG, StepwiseGenerator, pick_per_sample

# A policy maps (features (B, N, C), step index k) to per-sample actions {name: (B,)}.
Policy = Callable[[Tensor, int], dict[str, Tensor]]


@dataclass
class Rollout:
    images: Tensor  # (B, C, H, W) in [0, 1]
    actions: dict[str, Tensor]  # {name: (B, T)} actions as applied (after clamping)
    nfe: int  # guided evaluations per sample, lookahead branches included
    forwards: int  # network passes per sample, lookahead branches included
    critic_calls: int = 0  # critic evaluations per sample (lookahead)


@dataclass
class Lookahead:
    """Value-guided lookahead (METHOD.md 5) for paradigms whose steps draw noise (MaskGIT, VAR): at every step but
    the last, `candidates` next states, the plain one and others on forked noise, and each sample continues from
    the one the critic values most. One candidate is plain sampling."""

    critic: Callable[[Tensor, Tensor], Tensor]  # (features (B, N, C), step (B,)) -> values (B, 1)
    candidates: int


def static_policy(generator: StepwiseGenerator) -> Policy:
    """The generator's hand-designed baseline schedule, the same for every sample."""
    schedule = generator.baseline_schedule()

    def act(features: Tensor, k: int) -> dict[str, Tensor]:
        batch = features.shape[0]
        return {name: values[k].expand(batch).to(features.device) for name, values in schedule.items()}

    return act


@torch.no_grad()
def rollout(generator: StepwiseGenerator, labels: Tensor, rng: SampleRNG, policy: Policy | None = None,
            lookahead: Lookahead | None = None) -> Rollout:
    """Generate one batch: init, then observe -> act -> step for each of the generator's decisions, decode.

    `policy=None` runs the baseline schedule. With `lookahead`, each step branches (see `Lookahead`); the extra
    generator evaluations and the critic calls are counted.
    """
    if len(rng) != labels.shape[0]:
        raise ValueError(f"{len(rng)} random streams for {labels.shape[0]} labels")
    act = policy or static_policy(generator)
    state: Any = generator.init(labels, rng)
    taken: dict[str, list[Tensor]] = {}
    extra_nfe = extra_forwards = critic_calls = 0
    for k in range(generator.num_steps):
        actions = generator.clamp_actions(act(generator.observe(state), k))
        for name, value in actions.items():
            taken.setdefault(name, []).append(value)
        if lookahead is None or lookahead.candidates == 1 or k == generator.num_steps - 1:
            state = generator.step(state, actions)
            continue
        # Candidate 0 draws from the samples' own streams, so it is the plain step; the others from forks.
        candidates = [generator.step(state, actions)]
        for j in range(1, lookahead.candidates):
            branch = generator.step(dataclasses.replace(state, rng=state.rng.fork(k, j)), actions)
            extra_nfe += generator.nfe(branch) - generator.nfe(state)
            extra_forwards += generator.forwards(branch) - generator.forwards(state)
            candidates.append(branch)
        k_B = torch.full((labels.shape[0],), k + 1, device=generator.device)
        values = torch.stack([lookahead.critic(generator.observe(c), k_B).reshape(-1) for c in candidates])
        critic_calls += lookahead.candidates
        state = dataclasses.replace(pick_per_sample(candidates, values.argmax(dim=0)), rng=state.rng)
    return Rollout(
        images=generator.decode(state),
        actions={name: torch.stack(values, dim=1) for name, values in taken.items()},
        nfe=generator.nfe(state) + extra_nfe,
        forwards=generator.forwards(state) + extra_forwards,
        critic_calls=critic_calls,
    )
