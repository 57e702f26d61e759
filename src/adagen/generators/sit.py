"""SiT: the DiT backbone trained as a flow on the linear interpolant, predicting velocity.

x_t = t x_data + (1 - t) eps with t = 0 noise and t = 1 data (SiT's convention), velocity v = x_data - eps.
The network and its checkpoint layout are DiT's (SiT's official checkpoints use the same module names);
the sampler is DiT's policy-timed DPM-Solver++ 2S with the interpolant as its noise schedule
(alpha_t = t, sigma_t = 1 - t) and time running up (METHOD.md 1.4).
"""

from __future__ import annotations

import torch
from torch import Tensor

from adagen.generators.dit import DIT_XL_2, DiT, DiTGenerator, build_network, drop_labels, load_network
from adagen.generators.solvers import LinearInterpolant

__all__ = ["FULL_SIZES", "SiTGenerator", "build_network", "load_network", "training_loss"]

MIN_TRAIN_TIME = 1e-3
# SiT-XL/2 is DiT-XL/2's architecture (its checkpoints keep the learned-sigma channels).
FULL_SIZES = {"SiT-XL/2": lambda: DiT(DIT_XL_2)}


def training_loss(
    network: DiT, images_BCHW: Tensor, labels_B: Tensor, generator: torch.Generator, *,
    time_distribution: str = "uniform",
) -> Tensor:
    """Velocity matching: || v_theta(x_t, t, y) - (x_data - eps) ||^2.

    t ~ U(0, 1) as in SiT, or `logit_normal` (t = sigmoid(n), n ~ N(0, 1), the rectified-flow recipe of
    Esser et al. 2024), which spends more of the training on the middle times. The network's timestep input
    is t itself, as in SiT; labels drop to the null class for CFG.
    """
    batch = images_BCHW.shape[0]
    data = images_BCHW * 2.0 - 1.0
    if time_distribution == "logit_normal":
        unit_B = torch.sigmoid(torch.randn(batch, generator=generator))
    elif time_distribution == "uniform":
        unit_B = torch.rand(batch, generator=generator)
    else:
        raise ValueError(f"time_distribution: expected 'uniform' or 'logit_normal', got {time_distribution!r}")
    t_B = MIN_TRAIN_TIME + (1.0 - 2 * MIN_TRAIN_TIME) * unit_B
    noise = torch.randn(data.shape, generator=generator)
    t = t_B.view(-1, 1, 1, 1)
    prediction = network(t * data + (1 - t) * noise, t_B, drop_labels(network, labels_B, generator))
    return torch.mean((prediction[:, : network.in_channels] - (data - noise)) ** 2)


class SiTGenerator(DiTGenerator):
    """DiT's sampler on the linear interpolant: times from t_start (near noise, 0) up to t_end (near data, 1)."""

    time_scale = 1.0  # SiT embeds t in [0, 1] directly
    time_runs_down = False
    time_bounds = (0.01, 0.99)

    @staticmethod
    def make_schedule():
        return LinearInterpolant()

    def noise_prediction(self, output: Tensor, x: Tensor, t_B: Tensor) -> Tensor:
        """eps = x - t v: from x_t = t d + (1 - t) eps and v = d - eps."""
        return x - t_B.view(-1, 1, 1, 1) * output
