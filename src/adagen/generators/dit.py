"""DiT: class-conditional diffusion transformer (adaLN-Zero), VP diffusion, epsilon prediction.

Everything DiT-specific lives here: the network (module and parameter names follow the official DiT
checkpoints, `x_embedder.proj`, `t_embedder.mlp`, `y_embedder.embedding_table`, `blocks.N.adaLN_modulation`,
`final_layer.linear`, so those load without key surgery), its training loss, and the step-wise sampler
driven by per-sample time points and CFG weights (METHOD.md 1.3-1.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Attention
from torch import Tensor

from adagen.generators import latent
from adagen.generators.base import SampleRNG, StepwiseGenerator, constant, sigmoid_spec, softplus_spec
from adagen.generators.solvers import VPLinearSchedule, first_order_update, second_order_update, uniform_time_grid


# ---------------------------------------------------------------------------------------------------------
# Network


def modulate(x_BNC: Tensor, shift_BC: Tensor, scale_BC: Tensor) -> Tensor:
    return x_BNC * (1 + scale_BC.unsqueeze(1)) + shift_BC.unsqueeze(1)


def timestep_embedding(t_B: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [cos, sin] of (possibly fractional) timesteps, as in DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_B.device) / half)
    angles = t_B.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1) if dim % 2 else embedding


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t_B: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t_B, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row, the null class (id = num_classes), for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels_B: Tensor) -> Tensor:
        return self.embedding_table(labels_B)


class DiTBlock(nn.Module):
    """Transformer block whose LayerNorms are modulated by the conditioning (adaLN-Zero gates)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x_BNC: Tensor, c_BC: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c_BC).chunk(6, dim=1)
        x_BNC = x_BNC + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x_BNC), shift_msa, scale_msa))
        return x_BNC + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x_BNC), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x_BNC: Tensor, c_BC: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c_BC).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x_BNC), shift, scale))


def sincos_position_embedding(hidden_size: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos positions (grid_size^2, hidden_size): half the channels for rows, half for columns."""

    def one_axis(dim: int, positions: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        angles = positions.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    coords = np.arange(grid_size, dtype=np.float64)
    grid_w, grid_h = np.meshgrid(coords, coords)  # w varies fastest, matching the patch order
    return np.concatenate([one_axis(hidden_size // 2, grid_h), one_axis(hidden_size // 2, grid_w)], axis=1)


@dataclass(frozen=True)
class DiTConfig:
    input_size: int  # image (or latent) side
    in_channels: int
    num_classes: int
    hidden_size: int
    depth: int
    num_heads: int
    patch_size: int
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    learn_sigma: bool = False


class DiT(nn.Module):
    """Diffusion transformer; forward(x, t, y) -> epsilon (and variance channels when learn_sigma)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = config.in_channels * (2 if config.learn_sigma else 1)
        self.patch_size = config.patch_size
        self.grid_size = config.input_size // config.patch_size
        self.x_embedder = PatchEmbed(config.input_size, config.patch_size, config.in_channels, config.hidden_size)
        self.t_embedder = TimestepEmbedder(config.hidden_size)
        self.y_embedder = LabelEmbedder(config.num_classes, config.hidden_size)
        # A parameter (not a buffer) only because the official checkpoints store it as one.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2, config.hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(config.hidden_size, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(config.hidden_size, config.patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def xavier(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(xavier)
        positions = sincos_position_embedding(self.config.hidden_size, self.grid_size)
        self.pos_embed.data.copy_(torch.from_numpy(positions).float().unsqueeze(0))
        weight = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every residual branch and the output start at zero, so the untrained net is the identity path.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x_BNP: Tensor) -> Tensor:
        p, g, c = self.patch_size, self.grid_size, self.out_channels
        x = x_BNP.reshape(-1, g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(-1, c, g * p, g * p)

    def forward_with_features(self, x_BCHW: Tensor, t_B: Tensor, labels_B: Tensor) -> tuple[Tensor, Tensor]:
        """Prediction (B, out_channels, H, W) and the last block's tokens (B, N, hidden), the policy's view."""
        tokens = self.x_embedder(x_BCHW) + self.pos_embed
        c_BC = self.t_embedder(t_B) + self.y_embedder(labels_B)
        for block in self.blocks:
            tokens = block(tokens, c_BC)
        return self.unpatchify(self.final_layer(tokens, c_BC)), tokens

    def forward(self, x_BCHW: Tensor, t_B: Tensor, labels_B: Tensor) -> Tensor:
        return self.forward_with_features(x_BCHW, t_B, labels_B)[0]


# The paper's setting: DiT-XL/2 on 32x32x4 SD-VAE latents of 256x256 ImageNet images, learned sigma.
DIT_XL_2 = DiTConfig(input_size=32, in_channels=4, num_classes=1000, hidden_size=1152, depth=28, num_heads=16,
                     patch_size=2, mlp_ratio=4.0, class_dropout_prob=0.1, learn_sigma=True)
FULL_SIZES = {"DiT-XL/2": lambda: DiT(DIT_XL_2), "SD-VAE KL-f8": lambda: latent.sd_vae()}


def build_network(network_params: dict, *, resolution: int, channels: int, num_classes: int) -> DiT:
    """The DiT of a params section (`generators.dit.network`) for data of the given shape."""
    return DiT(DiTConfig(input_size=resolution, in_channels=channels, num_classes=num_classes, **network_params))


# ---------------------------------------------------------------------------------------------------------
# Training (VP diffusion, epsilon prediction)

TIME_SCALE = 1000.0  # DiT's timestep input is continuous VP time x 1000 (its 1000 discrete training steps)
MIN_TRAIN_TIME = 1e-3


def drop_labels(network: DiT, labels_B: Tensor, generator: torch.Generator) -> Tensor:
    """Replace labels by the null class with probability class_dropout_prob: one network, cond and uncond."""
    drop = torch.rand(labels_B.shape[0], generator=generator) < network.config.class_dropout_prob
    return torch.where(drop, torch.full_like(labels_B, network.config.num_classes), labels_B)


def training_loss(
    network: DiT, images_BCHW: Tensor, labels_B: Tensor, generator: torch.Generator, *, min_snr_gamma: float = 0.0
) -> Tensor:
    """Denoising loss: predict the noise of x_t = alpha_t x0 + sigma_t eps at t ~ U(1e-3, 1).

    Images are in [0, 1] and mapped to [-1, 1]; labels are dropped to the null class with probability
    class_dropout_prob so that the same network is the unconditional model of CFG. With min_snr_gamma > 0
    each sample's loss is weighted by min(SNR, gamma) / SNR (Min-SNR weighting, Hang et al. 2023): the
    nearly clean, easy times stop dominating the gradient, and a small model learns sooner the coarse
    structure a few-step sampler depends on (embedded default, 1,500 steps, 8 NFE: FID 8.5 with gamma 5,
    27.8 without). 0 is DiT's plain epsilon loss.
    """
    schedule = VPLinearSchedule()
    batch = images_BCHW.shape[0]
    x0 = images_BCHW * 2.0 - 1.0
    t_B = MIN_TRAIN_TIME + (1.0 - MIN_TRAIN_TIME) * torch.rand(batch, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    alpha, sigma = schedule.alpha(t_B).view(-1, 1, 1, 1), schedule.sigma(t_B).view(-1, 1, 1, 1)
    prediction = network(alpha * x0 + sigma * noise, t_B * TIME_SCALE, drop_labels(network, labels_B, generator))
    loss_B = torch.mean((prediction[:, : network.in_channels] - noise) ** 2, dim=(1, 2, 3))
    if min_snr_gamma > 0:
        snr_B = torch.exp(2.0 * schedule.log_snr(t_B))
        loss_B = loss_B * torch.clamp(snr_B, max=min_snr_gamma) / snr_B
    return loss_B.mean()


# ---------------------------------------------------------------------------------------------------------
# Step-wise sampler


@dataclass(frozen=True)
class DiTState:
    """Where a batch is in the solver. Times are per sample; `k` counts policy decisions taken."""

    k: int
    labels: Tensor  # (B,)
    x: Tensor  # current sample at time t
    t: Tensor  # (B,)
    features: Tensor  # (B, N, C): last block tokens of the cond evaluation at (x, t); zeros before the first
    cond: Tensor | None  # cond and uncond predictions at (x, t), waiting for this step's CFG weight
    uncond: Tensor | None
    x_s: Tensor | None  # start of the current 2S step, its data prediction and time
    x0_s: Tensor | None
    s: Tensor | None
    nfe: int


class DiTGenerator(StepwiseGenerator):
    """DPM-Solver++ 2S with every time point and CFG weight chosen per sample, per step.

    Decision k = 0 picks the start time t_0 (it sees zero features); decision k >= 1 reads the features of
    the evaluation at t_{k-1}, picks the CFG weight applied to that evaluation and the next time t_k.
    Odd k moves first-order to the intermediate point, even k completes the second-order step; an odd
    number of evaluations ends with a first-order step. T = nfe + 1 decisions for nfe evaluations.

    SiT subclasses this with another noise schedule, time direction and network output (sit.py).
    """

    time_scale = TIME_SCALE  # network timestep input per unit of solver time
    time_runs_down = True  # VP time: 1 = noise -> 0 = data
    min_time_step = 0.01  # each new time point lies at least this far beyond the previous one
    time_bounds = (0.01, 1.0)  # and inside these bounds

    def __init__(
        self,
        network: DiT,
        *,
        nfe: int,
        cfg: float,
        t_start: float,
        t_end: float,
        guided_channels: int | None = None,
        decoder: nn.Module | None = None,
    ):
        self.network = network.eval().requires_grad_(False)
        self.decoder = decoder  # latent -> pixels in [-1, 1] (latent.LatentDecoder); None: pixel space
        self.schedule = self.make_schedule()
        self.guided_channels = guided_channels or network.in_channels  # DiT-XL/2 guides 3 of 4 latent channels
        self.num_steps = nfe + 1
        self.feature_dim = network.config.hidden_size
        self.feature_grid = (network.grid_size, network.grid_size)
        low, high = self.time_bounds
        self.action_specs = (
            sigmoid_spec("time", lambda T: uniform_time_grid(t_start, t_end, T), low=low, high=high),
            softplus_spec("cfg", constant(cfg)),
        )

    @classmethod
    def from_params(cls, network: DiT, sampling_params: dict, decoder: nn.Module | None = None) -> "DiTGenerator":
        return cls(network, **sampling_params, decoder=decoder)

    @staticmethod
    def make_schedule():
        return VPLinearSchedule()

    def noise_prediction(self, output: Tensor, x: Tensor, t_B: Tensor) -> Tensor:
        """The network's output as predicted noise; DiT predicts it directly."""
        return output

    def init(self, labels: Tensor, rng: SampleRNG) -> DiTState:
        network = self.network
        x = rng.randn(network.in_channels, network.config.input_size, network.config.input_size).to(self.device)
        batch = labels.shape[0]
        features = torch.zeros(batch, self.feature_grid[0] * self.feature_grid[1], self.feature_dim, device=self.device)
        t_B = torch.full((batch,), self.time_bounds[1] if self.time_runs_down else self.time_bounds[0])
        return DiTState(0, labels.to(self.device), x, t_B.to(self.device), features, None, None, None, None, None, 0)

    def observe(self, state: DiTState) -> Tensor:
        return state.features

    def _evaluate(self, state: DiTState, x: Tensor, t_B: Tensor) -> DiTState:
        """Cond and uncond predictions at (x, t) in one batched pass; the policy sees the cond features."""
        batch = x.shape[0]
        null = torch.full_like(state.labels, self.network.config.num_classes)
        output, tokens = self.network.forward_with_features(
            torch.cat([x, x]), torch.cat([t_B, t_B]) * self.time_scale, torch.cat([state.labels, null])
        )
        output = output[:, : self.network.in_channels]  # drop learned-variance channels
        eps = self.noise_prediction(output, torch.cat([x, x]), torch.cat([t_B, t_B]))
        return replace(state, x=x, t=t_B, features=tokens[:batch], cond=eps[:batch], uncond=eps[batch:],
                       nfe=state.nfe + 1)

    def _guided_data_prediction(self, state: DiTState, cfg_B: Tensor) -> Tensor:
        """x0 from eps = cond + w (cond - uncond), guidance on the first guided_channels channels only.

        Guidance is linear, so guiding the noise equals guiding a velocity and then converting (SiT).
        """
        w = cfg_B.view(-1, 1, 1, 1)
        guided = state.cond + w * (state.cond - state.uncond)
        c = self.guided_channels
        eps = torch.cat([guided[:, :c], state.cond[:, c:]], dim=1)
        alpha, sigma = self.schedule.alpha(state.t).view(-1, 1, 1, 1), self.schedule.sigma(state.t).view(-1, 1, 1, 1)
        return (state.x - sigma * eps) / alpha

    def _next_time(self, current_B: Tensor, requested_B: Tensor) -> Tensor:
        """Monotone time: at least min_time_step beyond the current point, never outside time_bounds."""
        low, high = self.time_bounds
        if self.time_runs_down:
            return torch.clamp(torch.minimum(requested_B, current_B - self.min_time_step), min=low)
        return torch.clamp(torch.maximum(requested_B, current_B + self.min_time_step), max=high)

    def step(self, state: DiTState, actions: dict[str, Tensor]) -> DiTState:
        actions = self.clamp_actions(actions)
        time_B = actions["time"].to(self.device)
        k, last = state.k, state.k == self.num_steps - 1
        if k == 0:
            # The start time; the initial noise is taken as x at t_0.
            state = replace(state, k=1)
            return self._evaluate(state, state.x, time_B)
        t_next = self._next_time(state.t, time_B)
        x0 = self._guided_data_prediction(state, actions["cfg"].to(self.device))
        if k % 2 == 1:
            x_next = first_order_update(self.schedule, state.x, x0, state.t, t_next)
            state = replace(state, x_s=state.x, x0_s=x0, s=state.t)
        else:
            x_next = second_order_update(self.schedule, state.x_s, state.x0_s, x0, state.s, state.t, t_next)
        state = replace(state, k=k + 1, x=x_next, t=t_next, cond=None, uncond=None)
        return state if last else self._evaluate(state, x_next, t_next)

    def decode(self, state: DiTState) -> Tensor:
        if state.k != self.num_steps:
            raise RuntimeError(f"decode after {state.k} of {self.num_steps} steps")
        pixels = state.x if self.decoder is None else self.decoder(state.x)
        return ((pixels + 1.0) / 2.0).clamp(0.0, 1.0)

    def nfe(self, state: DiTState) -> int:
        return state.nfe

    def forwards(self, state: DiTState) -> int:
        return 2 * state.nfe  # cond and uncond per evaluation


def load_network(checkpoint: dict) -> DiT:
    """A DiT from a checkpoint written by the pretrain stage ({"config": ..., "state_dict": ...})."""
    network = DiT(DiTConfig(**checkpoint["config"]))
    network.load_state_dict(checkpoint["state_dict"])
    return network.eval()
