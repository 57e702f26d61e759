"""The policy and critic network of AdaGen/AdaNAT (METHOD.md 2.1), at any size.

Generator features (B, N, C_in) of an H x W token grid and the step index k -> (B, A). Tokens are projected to
the hidden width, modulated by the step (adaptive LayerNorm), seen as an H x W map through a strided depthwise
and a pointwise convolution, then an MLP whose layers are step-modulated too. The head starts at zero, so an
untrained policy outputs u = 0, which the action map turns into the baseline schedule. The critic is the same
network with one output. Module names follow AdaGen's released policies (`x_embedder`, `t_embedder.mlp`,
`adaLN1..3.adaLN_modulation.1`, `dw_conv`, `pw_conv`, `linear1..3`), which load without key surgery.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from adagen.generators.dit import TimestepEmbedder
from adagen.io import saved_state_dict


class AdaLN(nn.Module):
    """LayerNorm without affine, then scale and shift from the step embedding (zero-initialised)."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: Tensor, c_BC: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c_BC).chunk(2, dim=-1)
        if x.dim() == 3:  # tokens: the same modulation for every token
            shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
        return self.norm(x) * (1 + scale) + shift


@dataclass(frozen=True)
class PolicyConfig:
    feature_dim: int  # C_in, the generator's feature width
    grid: tuple[int, int]  # the generator's token grid (H, W)
    num_outputs: int  # actions (policy) or 1 (critic)
    hidden_size: int = 512
    conv_channels: int = 128
    mlp_sizes: tuple[int, int] = (1024, 512)


class PolicyNet(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        c, hidden = config, config.hidden_size
        self.x_embedder = nn.Linear(c.feature_dim, hidden) if c.feature_dim != hidden else nn.Identity()
        self.t_embedder = TimestepEmbedder(hidden)
        self.adaLN1 = AdaLN(hidden, hidden)
        self.dw_conv = nn.Conv2d(hidden, hidden, 3, stride=2, padding=1, groups=hidden)
        self.pw_conv = nn.Conv2d(hidden, c.conv_channels, 1)
        height, width = ((side + 1) // 2 for side in c.grid)  # after the stride-2 convolution
        first, second = c.mlp_sizes
        self.linear1, self.adaLN2 = nn.Linear(c.conv_channels * height * width, first), AdaLN(first, hidden)
        self.linear2, self.adaLN3 = nn.Linear(first, second), AdaLN(second, hidden)
        self.linear3 = nn.Linear(second, c.num_outputs)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
                nn.init.zeros_(module.bias)
        for layer in self.t_embedder.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, AdaLN):
                nn.init.zeros_(module.adaLN_modulation[-1].weight)
                nn.init.zeros_(module.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.linear3.weight)
        nn.init.zeros_(self.linear3.bias)

    def forward(self, features_BNC: Tensor, k_B: Tensor) -> Tensor:
        height, width = self.config.grid
        c = self.t_embedder(k_B.float())
        x = self.adaLN1(self.x_embedder(features_BNC), c)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, height, width)  # row-major tokens -> (B, hidden, H, W)
        x = F.gelu(self.pw_conv(F.gelu(self.dw_conv(x)))).flatten(1)
        x = F.gelu(self.adaLN2(self.linear1(x), c))
        x = F.gelu(self.adaLN3(self.linear2(x), c))
        return self.linear3(x)


def build_policy(policy_params: dict, *, feature_dim: int, grid: tuple[int, int], num_outputs: int) -> PolicyNet:
    return PolicyNet(PolicyConfig(feature_dim=feature_dim, grid=tuple(grid), num_outputs=num_outputs,
                                  **{k: tuple(v) if isinstance(v, list) else v for k, v in policy_params.items()}))


def load_policy(entry: dict) -> PolicyNet:
    """A network saved as {"config": asdict(PolicyConfig), "state_dict": ...} (or naming a fetched weights file,
    as a released policy does), in eval mode."""
    config = {key: tuple(value) if isinstance(value, list) else value for key, value in entry["config"].items()}
    network = PolicyNet(PolicyConfig(**config))
    network.load_state_dict(saved_state_dict(entry))
    return network.eval()
