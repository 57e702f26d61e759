"""The step-wise generator contract (DESIGN.md section 5) and per-sample randomness.

A generator exposes its sampling loop one decision at a time: `init` -> (`observe`, `step`) x num_steps ->
`decode`. The caller owns the loop (`adagen.rl.rollout.rollout`), so a policy, a logger or a search can sit
between steps without living inside the generator. Every step takes per-sample actions, `(B,)` tensors.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def inverse_sigmoid(y: Tensor) -> Tensor:
    y = y.clamp(1e-6, 1 - 1e-6)
    return torch.log(y) - torch.log1p(-y)


def inverse_softplus(y: Tensor) -> Tensor:
    # log(exp(y) - 1), written to stay finite for small and large y.
    y = y.clamp_min(1e-6)
    return y + torch.log(-torch.expm1(-y))


def gumbel_noise(uniform: Tensor) -> Tensor:
    """Standard Gumbel noise from uniforms in [0, 1): argmax(logits + noise) is a categorical draw."""
    return -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))


@dataclass(frozen=True)
class ActionSpec:
    """One per-step generation parameter the policy may choose (METHOD.md 1.2).

    `activation` maps the policy's unconstrained output to the parameter's range and `inverse` maps back;
    `baseline(T)` is the hand-designed schedule for T decisions, shape (T,); values are clamped to [low, high].
    """

    name: str
    activation: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]
    baseline: Callable[[int], Tensor]
    low: float = -math.inf
    high: float = math.inf


def constant(value: float) -> Callable[[int], Tensor]:
    """A baseline schedule that keeps one value for all T decisions."""
    return lambda T: torch.full((T,), float(value))


def sigmoid_spec(name: str, baseline: Callable[[int], Tensor], low: float = 0.0, high: float = 1.0) -> ActionSpec:
    return ActionSpec(name, torch.sigmoid, inverse_sigmoid, baseline, low, high)


def softplus_spec(name: str, baseline: Callable[[int], Tensor], low: float = 0.0, high: float = math.inf) -> ActionSpec:
    return ActionSpec(name, F.softplus, inverse_softplus, baseline, low, high)


class SampleRNG:
    """One torch.Generator per sample, so a sample's noise does not depend on the batch it is drawn in.

    Sample i of a run with base seed s is seeded with s + index_i: the same image comes out whether it is
    generated alone or in a batch of 1,000.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seeds = [int(seed) for seed in seeds]
        self.generators = [torch.Generator(device=self.device).manual_seed(seed) for seed in self.seeds]

    def fork(self, *tags: int) -> "SampleRNG":
        """Other per-sample streams, fixed by each sample's own seed and `tags` (say step and candidate), so that
        a branch's noise does not depend on the batch either; the streams of this object do not move."""
        def mixed(seed: int) -> int:
            for tag in tags:
                seed = (seed * 1_000_003 + int(tag) + 1) % (1 << 63)
            return seed

        return SampleRNG([mixed(seed) for seed in self.seeds], self.device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, *shape: int) -> Tensor:
        """Standard normal noise of shape (B, *shape), drawn sample by sample."""
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])

    def rand(self, *shape: int) -> Tensor:
        """Uniform [0, 1) noise of shape (B, *shape)."""
        return torch.stack([torch.rand(shape, generator=g, device=self.device) for g in self.generators])


class StepwiseGenerator(abc.ABC):
    """Base of every paradigm's sampler; subclasses fill in the contract below.

    Attributes a subclass sets: `num_steps` (policy decisions T), `action_specs`, `feature_dim` and
    `feature_grid` (what `observe` returns: (B, H*W, C) tokens of an H x W grid).
    """

    network: torch.nn.Module  # the frozen generator network
    num_steps: int
    action_specs: tuple[ActionSpec, ...]
    feature_dim: int
    feature_grid: tuple[int, int]

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @abc.abstractmethod
    def init(self, labels: Tensor, rng: SampleRNG) -> Any:
        """Start state of a batch with class `labels` (B,)."""

    @abc.abstractmethod
    def observe(self, state: Any) -> Tensor:
        """Features the policy reads at the current step, (B, N, C); pure (no network call)."""

    @abc.abstractmethod
    def step(self, state: Any, actions: dict[str, Tensor]) -> Any:
        """Apply one step with per-sample actions {name: (B,)}; returns the next state."""

    @abc.abstractmethod
    def decode(self, state: Any) -> Tensor:
        """Final images (B, C, H, W) in [0, 1]."""

    @abc.abstractmethod
    def nfe(self, state: Any) -> int:
        """Guided network evaluations so far (one cond + uncond pair counts once)."""

    @abc.abstractmethod
    def forwards(self, state: Any) -> int:
        """Network forward passes per sample so far (cond and uncond each count)."""

    def baseline_schedule(self) -> dict[str, Tensor]:
        """The hand-designed schedule, {name: (T,)}."""
        return {spec.name: spec.baseline(self.num_steps) for spec in self.action_specs}

    def clamp_actions(self, actions: dict[str, Tensor]) -> dict[str, Tensor]:
        """Clamp each action to its spec's bounds; missing or extra keys are an error."""
        names = {spec.name for spec in self.action_specs}
        if set(actions) != names:
            raise KeyError(f"{type(self).__name__} expects actions {sorted(names)}, got {sorted(actions)}")
        return {spec.name: actions[spec.name].clamp(spec.low, spec.high) for spec in self.action_specs}


def pick_per_sample(candidates: Sequence[Any], choice_B: Tensor) -> Any:
    """One state made of candidate states, sample b taken from candidate choice_B[b] (value-guided lookahead).

    Works on any state dataclass: a tensor whose rows are samples, or CFG-doubled samples (cond rows then uncond
    rows: 2B), is picked row by row; lists and tuples (a KV cache) are picked element by element; anything else
    (step counters, the random streams) is taken from the first candidate.
    """
    first, batch = candidates[0], choice_B.shape[0]

    def pick(values: list) -> Any:
        head = values[0]
        if isinstance(head, Tensor) and head.dim() > 0 and head.shape[0] % batch == 0:
            rows = head.shape[0]
            which = choice_B.to(head.device).repeat(rows // batch)
            return torch.stack(values)[which, torch.arange(rows, device=head.device)]
        if isinstance(head, (list, tuple)):
            return type(head)(pick([value[i] for value in values]) for i in range(len(head)))
        return head

    return dataclasses.replace(first, **{field.name: pick([getattr(c, field.name) for c in candidates])
                                         for field in dataclasses.fields(first)})
