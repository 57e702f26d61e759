"""ODE solver steps as small functions of per-sample times (METHOD.md 1.4).

DPM-Solver++ (data prediction), singlestep, order 2, written so that every time point, the intermediate
one included, is a (B,) tensor chosen from outside: by the baseline schedule or by a policy. The noise
schedules give alpha_t, sigma_t and lambda_t = log(alpha_t / sigma_t) for the two paradigms that use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _per_sample(t_B: Tensor, like: Tensor) -> Tensor:
    """Reshape (B,) times to broadcast against a (B, ...) tensor."""
    return t_B.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class VPLinearSchedule:
    """Continuous VP schedule with linear beta (DDPM's 1e-4..0.02 over 1000 steps as t in [0, 1]).

    log alpha_t = -t^2 (beta_1 - beta_0) / 4 - t beta_0 / 2; sigma_t = sqrt(1 - alpha_t^2). t = 1 is noise.
    """

    beta_0: float = 0.1
    beta_1: float = 20.0

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda_t = log alpha_t - log sigma_t."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))


def first_order_update(schedule, x_s: Tensor, x0_s: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """DPM-Solver++ 1 (DDIM in data prediction): move x from time s to time t using x0 predicted at s.

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s,  h = lambda_t - lambda_s.
    """
    h = _per_sample(schedule.log_snr(t) - schedule.log_snr(s), x_s)
    ratio = _per_sample(schedule.sigma(t) / schedule.sigma(s), x_s)
    alpha_t = _per_sample(schedule.alpha(t), x_s)
    return ratio * x_s - alpha_t * torch.expm1(-h) * x0_s


def second_order_update(
    schedule, x_s: Tensor, x0_s: Tensor, x0_s1: Tensor, s: Tensor, s1: Tensor, t: Tensor, min_step: float = 0.01
) -> Tensor:
    """DPM-Solver++ 2S: from s to t with a second data prediction at the intermediate time s1.

    x_t = first_order(x_s) - [h / (2 max(lambda_s1 - lambda_s, min_step))] alpha_t (e^{-h} - 1) (x0_s1 - x0_s).
    The intermediate point is free (policy-chosen), so r1 = (lambda_s1 - lambda_s) / h is not fixed at 1/2;
    the denominator is floored at `min_step` so a collapsed interval cannot blow the correction up.
    """
    lambda_s = schedule.log_snr(s)
    h = schedule.log_snr(t) - lambda_s
    coefficient = 0.5 * h / torch.clamp(schedule.log_snr(s1) - lambda_s, min=min_step)
    alpha_t = _per_sample(schedule.alpha(t), x_s)
    correction = _per_sample(coefficient, x_s) * alpha_t * torch.expm1(-_per_sample(h, x_s)) * (x0_s1 - x0_s)
    return first_order_update(schedule, x_s, x0_s, s, t) - correction


def uniform_time_grid(t_start: float, t_end: float, num_points: int) -> Tensor:
    """The baseline grid: num_points times evenly spaced from t_start to t_end (float64 -> float32)."""
    if num_points == 1:
        return torch.tensor([t_start], dtype=torch.float32)
    return torch.linspace(t_start, t_end, num_points, dtype=torch.float64).float()



@dataclass(frozen=True)
class LinearInterpolant:
    """SiT's linear path x_t = t x_data + (1 - t) eps: alpha_t = t, sigma_t = 1 - t, t = 0 is noise."""

    def alpha(self, t: Tensor) -> Tensor:
        return t

    def sigma(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda_t = log(t / (1 - t)), increasing towards the data end."""
        return torch.log(t) - torch.log1p(-t)
