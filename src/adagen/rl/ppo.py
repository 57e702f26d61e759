"""PPO pieces as AdaNAT implements them (METHOD.md section 3): fixed-std Gaussian policy, gamma = 1, terminal
reward as every step's return, returns normalised over the iteration's batch, clipped surrogate + value loss."""

from __future__ import annotations

import torch
from torch import Tensor


def exploration_std(iteration: int, *, initial: float, decay: float, decay_at: list[int], floor: float) -> float:
    """initial, minus `decay` at each iteration listed in decay_at that has been reached, never below floor."""
    return max(floor, initial - decay * sum(iteration >= step for step in decay_at))


def normalize_returns(returns: Tensor, eps: float = 1e-7, over: Tensor | None = None) -> Tensor:
    """(R - mean) / (std + eps), with the mean and std of `over` (the global batch across ranks) if given."""
    reference = returns if over is None else over
    return (returns - reference.mean()) / (reference.std() + eps)


def ppo_losses(new_log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, values: Tensor, returns: Tensor,
               *, clip: float, value_coef: float) -> dict[str, Tensor]:
    """Clipped surrogate -min(rho A, clip(rho, 1 - eps, 1 + eps) A) + value_coef MSE(V, R), per-transition means.

    Also returns the diagnostics PPO runs are judged by: the share of clipped ratios and the approximate KL
    (mean of log rho^-1 ... as (rho - 1) - log rho, Schulman's low-variance estimator).
    """
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    policy_loss = -surrogate.mean()
    value_loss = torch.mean((values - returns) ** 2)
    with torch.no_grad():
        clip_fraction = ((ratio - 1).abs() > clip).float().mean()
        approx_kl = ((ratio - 1) - log_ratio).mean()
    return {"loss": policy_loss + value_coef * value_loss, "policy_loss": policy_loss, "value_loss": value_loss,
            "clip_fraction": clip_fraction, "approx_kl": approx_kl}
