"""From the policy's unconstrained output to a generator's per-sample actions (METHOD.md 1.2).

For each action key, at decision k: z_k = u_k + residual[k] (the residual table makes u = 0 reproduce the
generator's baseline schedule exactly), a causal low-pass in pre-activation space a_k = s a_{k-1} + (1 - s) z_k
(a_0 = z_0), then the key's activation to its valid range. The residual is the inverse of that pipeline
applied to the baseline: residual = inverse_smooth(inverse_activation(baseline), s).
"""

from __future__ import annotations

import torch
from torch import Tensor

from adagen.generators.base import StepwiseGenerator


def smooth(sequence_T: Tensor, s: float) -> Tensor:
    """Causal EMA along dim 0: out_0 = x_0, out_k = s out_{k-1} + (1 - s) x_k."""
    out = [sequence_T[0]]
    for value in sequence_T[1:]:
        out.append(s * out[-1] + (1 - s) * value)
    return torch.stack(out)


def inverse_smooth(sequence_T: Tensor, s: float) -> Tensor:
    """The sequence whose EMA is `sequence_T`: out_0 = x_0, out_k = (x_k - s x_{k-1}) / (1 - s)."""
    if s == 0:
        return sequence_T.clone()
    return torch.cat([sequence_T[:1], (sequence_T[1:] - s * sequence_T[:-1]) / (1 - s)])


class ActionMap:
    """One generator's action keys, residual tables and smoothing; `num_actions` outputs of the policy.

    At each decision, `target(u, k)` adds step k's residual to the policy output u, and `apply(previous, z)`
    smooths that target with the previous pre-activation values (None at k = 0): it returns the next smoothing
    state (pre-activation values, detached) and the actions {name: (B,)}.
    """

    def __init__(self, generator: StepwiseGenerator, smoothing: float, schedule: dict[str, Tensor] | None = None):
        """`schedule` ({name: (T,)}) is what u = 0 reproduces: the generator's baseline schedule unless given (a
        policy trained around other sampling settings of the same generator, as its checkpoint records them)."""
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.specs = generator.action_specs
        self.names = [spec.name for spec in self.specs]
        self.num_steps = generator.num_steps
        self.smoothing = smoothing
        schedule = generator.baseline_schedule() if schedule is None else schedule
        if sorted(schedule) != sorted(self.names) or any(len(schedule[name]) != self.num_steps for name in self.names):
            raise ValueError(f"a schedule of {self.num_steps} steps of {sorted(self.names)} was expected, got "
                             f"{ {name: len(values) for name, values in schedule.items()} }")
        # Computed in float64 so that u = 0 gives the baseline to float32 precision even for s close to 1.
        self.residual = torch.stack([
            inverse_smooth(spec.inverse(schedule[spec.name].double()), smoothing) for spec in self.specs
        ], dim=1)  # (T, A)

    @property
    def num_actions(self) -> int:
        return len(self.specs)

    def target(self, u_BA: Tensor, k: int) -> Tensor:
        """Unsmoothed pre-activation values z_k = u_k + residual[k] (B, A), in float64."""
        return u_BA.double() + self.residual[k].to(u_BA.device)

    def activate(self, a_BA: Tensor) -> dict[str, Tensor]:
        return {spec.name: spec.activation(a_BA[:, i]).float() for i, spec in enumerate(self.specs)}

    def apply(self, previous_BA: Tensor | None, z_BA: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One step of the causal low-pass, a_k from a_{k-1} and z_k, and its actions."""
        a = z_BA if previous_BA is None else self.smoothing * previous_BA + (1 - self.smoothing) * z_BA
        return a.detach(), self.activate(a)
