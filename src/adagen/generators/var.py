"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al. 2024) over a multi-scale VQ tokenizer.

The transformer predicts the token map of scale k from the partial latent of scales < k (block-causal
attention over scales, full attention inside a scale), conditioned on the class through adaptive LayerNorm.
Module and parameter names follow the official checkpoints (`word_embed`, `class_emb`, `pos_start`,
`pos_1LC`, `lvl_embed`, `blocks.N.attn.mat_qkv`, `q_bias`, `v_bias`, `scale_mul_1H11`, `blocks.N.ffn.fc1`,
`blocks.N.ada_lin.1`, `head_nm.ada_lin.1`, `head`, buffers `lvl_1L`, `attn_bias_for_masking`, `zero_k_bias`),
so `var_d16.pth` and `var_d30.pth` load without key surgery.

The sampler takes one decision per scale (METHOD.md 1.3-1.4): the CFG weight (ramped by scale), top-k, top-p
and the sampling temperature, all per sample. Cond and uncond run as one 2B batch with a KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor

from adagen.generators.base import (
    ActionSpec, SampleRNG, StepwiseGenerator, constant, gumbel_noise, inverse_sigmoid, sigmoid_spec, softplus_spec,
)
from adagen.generators.tokenizer import TokenizerConfig, VQTokenizer

# ---------------------------------------------------------------------------------------------------------
# Network

KVCache = list[tuple[Tensor, Tensor]]  # per block: keys and values of every token so far, (2B, H, l, head_dim)


class SelfAttention(nn.Module):
    """Multi-head attention with VAR's q/v-only bias and, with l2 norm, cosine attention with a learned scale."""

    def __init__(self, dim: int, num_heads: int, l2_norm: bool):
        super().__init__()
        self.num_heads, self.head_dim, self.l2_norm = num_heads, dim // num_heads, l2_norm
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLC: Tensor, attn_bias: Tensor | None, cache: tuple[Tensor, Tensor] | None):
        B, L, C = x_BLC.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        q, k, v = F.linear(x_BLC, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp(max=math.log(100.0)).exp()
            k, scale = F.normalize(k, dim=-1), 1.0
        else:
            scale = 0.25 / math.sqrt(self.head_dim)
        if cache is not None:  # this scale's queries see every cached token and all of their own scale
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=scale)
        return self.proj(out.transpose(1, 2).reshape(B, L, C)), (k, v)


class AdaLNSelfAttn(nn.Module):
    """Pre-norm block whose LayerNorms are scaled, shifted and gated by the class condition."""

    def __init__(self, dim: int, cond_dim: int, num_heads: int, mlp_ratio: float, norm_eps: float, l2_norm: bool):
        super().__init__()
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(dim, num_heads, l2_norm)
        self.ffn = Mlp(dim, round(dim * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))

    def forward(self, x_BLC: Tensor, cond_BD: Tensor, attn_bias: Tensor | None, cache=None):
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond_BD).view(-1, 1, 6, x_BLC.shape[-1]).unbind(2)
        attended, cache = self.attn(self.ln_wo_grad(x_BLC) * (1 + scale1) + shift1, attn_bias, cache)
        x_BLC = x_BLC + attended * gamma1
        x_BLC = x_BLC + self.ffn(self.ln_wo_grad(x_BLC) * (1 + scale2) + shift2) * gamma2
        return x_BLC, cache


class AdaLNBeforeHead(nn.Module):
    def __init__(self, dim: int, cond_dim: int, norm_eps: float):
        super().__init__()
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x_BLC: Tensor, cond_BD: Tensor) -> Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, x_BLC.shape[-1]).unbind(2)
        return self.ln_wo_grad(x_BLC) * (1 + scale) + shift


@dataclass(frozen=True)
class VARConfig:
    num_classes: int
    depth: int
    embed_dim: int  # VAR: 64 x depth
    num_heads: int  # VAR: depth
    codebook_size: int
    codebook_dim: int  # Cvae
    patch_nums: tuple[int, ...]
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = True
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-3
    init_head: float = 0.02


class VAR(nn.Module):
    def __init__(self, config: VARConfig):
        super().__init__()
        self.config = config
        C, c = config.embed_dim, config
        self.patch_nums = tuple(c.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.begin_ends = []
        cursor = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cursor, cursor + pn * pn))
            cursor += pn * pn
        self.L = cursor
        self.word_embed = nn.Linear(c.codebook_dim, C)
        self.class_emb = nn.Embedding(c.num_classes + 1, C)  # row num_classes: the null class of CFG
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        self.blocks = nn.ModuleList(
            AdaLNSelfAttn(C, C, c.num_heads, c.mlp_ratio, c.norm_eps, c.attn_l2_norm) for _ in range(c.depth)
        )
        self.head_nm = AdaLNBeforeHead(C, C, c.norm_eps)
        self.head = nn.Linear(C, c.codebook_size)
        levels = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).view(1, self.L)
        self.register_buffer("lvl_1L", levels)
        visible = levels.view(self.L, 1) >= levels.view(1, self.L)  # block-causal over scales
        self.register_buffer("attn_bias_for_masking", torch.where(visible, 0.0, -math.inf).view(1, 1, self.L, self.L))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        c, C = self.config, self.config.embed_dim
        std = math.sqrt(1 / (3 * C))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=std)
        for parameter in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(parameter, std=std)
        with torch.no_grad():
            self.head.weight.mul_(c.init_head)
            self.head_nm.ada_lin[-1].weight.mul_(c.init_adaln)
            for block in self.blocks:
                block.attn.proj.weight.div_(math.sqrt(2 * c.depth))
                block.ffn.fc2.weight.div_(math.sqrt(2 * c.depth))
                block.ada_lin[-1].weight[2 * C:].mul_(c.init_adaln)  # scales and shifts
                block.ada_lin[-1].weight[: 2 * C].mul_(c.init_adaln_gamma)  # the residual gates start near 0

    def level_positions(self, begin: int, end: int) -> Tensor:
        return self.lvl_embed(self.lvl_1L[:, begin:end]) + self.pos_1LC[:, begin:end]

    def first_scale_input(self, cond_BD: Tensor) -> Tensor:
        return cond_BD.unsqueeze(1).expand(-1, self.first_l, -1) + self.pos_start + self.level_positions(0, self.first_l)

    def scale_input(self, si: int, latent_BlCv: Tensor) -> Tensor:
        """Embedded input tokens of scale si >= 1 from the area-downsampled partial latent."""
        begin, end = self.begin_ends[si]
        return self.word_embed(latent_BlCv) + self.level_positions(begin, end)

    def blocks_forward(self, x_BLC: Tensor, cond_BD: Tensor, attn_bias: Tensor | None, cache: KVCache | None):
        new_cache = []
        for i, block in enumerate(self.blocks):
            x_BLC, kv = block(x_BLC, cond_BD, attn_bias, None if cache is None else cache[i])
            new_cache.append(kv)
        return x_BLC, new_cache

    def logits(self, x_BLC: Tensor, cond_BD: Tensor) -> Tensor:
        return self.head(self.head_nm(x_BLC, cond_BD)).float()

    def forward(self, labels_B: Tensor, inputs_BlCv: Tensor) -> Tensor:
        """Teacher forcing: logits (B, L, V) for all scales from the inputs of scales 1.. (B, L - first_l, Cvae)."""
        cond_BD = self.class_emb(labels_B)
        x = torch.cat([self.first_scale_input(cond_BD),
                       self.word_embed(inputs_BlCv) + self.level_positions(self.first_l, self.L)], dim=1)
        x, _ = self.blocks_forward(x, cond_BD, self.attn_bias_for_masking, None)
        return self.logits(x, cond_BD)


# The paper's settings (FoundationVision/VAR build_vae_var): width 64 x depth, heads = depth, on the
# multi-scale VQVAE vae_ch160v4096z32 (4096 codes of 32 channels, 16x16 latents of 256x256 images).
VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def var_of_depth(depth: int) -> VAR:
    return VAR(VARConfig(num_classes=1000, depth=depth, embed_dim=64 * depth, num_heads=depth, codebook_size=4096,
                         codebook_dim=32, patch_nums=VAR_PATCH_NUMS))


VAE_CH160V4096Z32 = TokenizerConfig(
    resolution=256, in_channels=3, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
    z_channels=32, codebook_size=4096, codebook_dim=32, fused_qkv=True, quant_conv_kernel=3,
    patch_nums=VAR_PATCH_NUMS, quant_resi=0.5, share_quant_resi=4,
)
FULL_SIZES = {
    "VAR-d16": lambda: var_of_depth(16),
    "VAR-d30": lambda: var_of_depth(30),
    "VQVAE vae_ch160v4096z32": lambda: VQTokenizer(VAE_CH160V4096Z32),
}


def build_network(network_params: dict, *, resolution: int, channels: int, num_classes: int,
                  tokenizer: VQTokenizer) -> VAR:
    """The VAR of a params section (`generators.var.network`) over the given multi-scale tokenizer."""
    t = tokenizer.config
    return VAR(VARConfig(num_classes=num_classes, codebook_size=t.codebook_size, codebook_dim=t.codebook_dim,
                         patch_nums=t.patch_nums, **network_params))


def load_network(checkpoint: dict) -> VAR:
    config = dict(checkpoint["config"], patch_nums=tuple(checkpoint["config"]["patch_nums"]))
    network = VAR(VARConfig(**config))
    network.load_state_dict(checkpoint["state_dict"])
    return network.eval()


# ---------------------------------------------------------------------------------------------------------
# Training: cross-entropy on every token of every scale, teacher-forced from the tokenizer's own indices


def training_loss(network: VAR, images_BCHW: Tensor, labels_B: Tensor, generator: torch.Generator, *,
                  tokenizer: VQTokenizer, label_smoothing: float = 0.0) -> Tensor:
    indices = tokenizer.indices(images_BCHW * 2.0 - 1.0)
    with torch.no_grad():
        inputs = tokenizer.quantize.teacher_forcing_inputs(indices)
    drop = torch.rand(labels_B.shape[0], generator=generator) < network.config.cond_drop_rate
    labels_B = torch.where(drop, torch.full_like(labels_B, network.config.num_classes), labels_B)
    logits = network(labels_B, inputs)
    return F.cross_entropy(logits.flatten(0, 1), torch.cat(indices, dim=1).flatten(), label_smoothing=label_smoothing)


# ---------------------------------------------------------------------------------------------------------
# Step-wise sampler


def filter_top_k_top_p(logits_BlV: Tensor, top_k_B: Tensor, top_p_B: Tensor) -> Tensor:
    """Per-sample top-k (k = int(top_k), ties kept), then top-p: drop the tokens whose ascending cumulative
    probability is <= 1 - p, always keeping the most likely one. Removed logits become -inf."""
    V = logits_BlV.shape[-1]
    k_B = top_k_B.long().clamp(1, V).view(-1, 1, 1)
    kth = logits_BlV.sort(dim=-1, descending=True).values.gather(-1, (k_B - 1).expand(*logits_BlV.shape[:2], 1))
    logits_BlV = logits_BlV.masked_fill(logits_BlV < kth, -math.inf)
    ascending, order = logits_BlV.sort(dim=-1)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p_B).view(-1, 1, 1)
    remove[..., -1] = False
    return logits_BlV.masked_fill(remove.scatter(-1, order, remove), -math.inf)


@dataclass(frozen=True)
class VARState:
    si: int  # scale whose tokens the next step samples
    labels: Tensor
    cond_BD: Tensor  # (2B, C): cond then uncond class embeddings
    logits: Tensor  # (2B, pn^2, V) of scale si
    features: Tensor  # (B, G*G, C)
    f_hat: Tensor  # (B, Cvae, G, G) partial latent
    cache: KVCache | None
    inputs: Tensor | None  # without a KV cache: every scale's embedded input so far, (2B, l, C)
    rng: SampleRNG  # the batch's per-sample random streams
    forwards: int


class VARGenerator(StepwiseGenerator):
    """One decision per scale: CFG weight (ramped by scale), top-k, top-p and sampling temperature, per sample."""

    def __init__(self, network: VAR, tokenizer: VQTokenizer, *, cfg: float, top_k: int, top_p: float,
                 sample_temp: float = 1.0, kv_cache: bool = True):
        self.network = network.eval().requires_grad_(False)
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.kv_cache = kv_cache
        self.patch_nums = network.patch_nums
        self.num_steps = len(self.patch_nums)
        self.feature_dim = network.config.embed_dim
        self.feature_grid = (self.patch_nums[-1], self.patch_nums[-1])
        V = network.config.codebook_size
        self.action_specs = (
            softplus_spec("cfg", constant(cfg)),
            ActionSpec("top_k", lambda u: torch.sigmoid(u) * V, lambda k: inverse_sigmoid(k / V),
                       constant(top_k), low=1.0, high=float(V)),
            sigmoid_spec("top_p", constant(top_p)),
            softplus_spec("sample_temp", constant(sample_temp), low=1e-3),
        )

    @classmethod
    def from_params(cls, network: VAR, sampling_params: dict, tokenizer: VQTokenizer) -> "VARGenerator":
        return cls(network, tokenizer, **sampling_params)

    def _forward(self, state: VARState, si: int, x_new: Tensor) -> VARState:
        """Run scale si's embedded input (2B, pn^2, C); logits and features of that scale."""
        network = self.network
        if self.kv_cache:
            hidden, cache = network.blocks_forward(x_new, state.cond_BD, None, state.cache)
            inputs = None
        else:  # the whole prefix again under the block-causal mask; same result, for checking the cache
            inputs = x_new if state.inputs is None else torch.cat([state.inputs, x_new], dim=1)
            length = inputs.shape[1]
            hidden, _ = network.blocks_forward(inputs, state.cond_BD,
                                               network.attn_bias_for_masking[:, :, :length, :length], None)
            hidden, cache = hidden[:, -x_new.shape[1]:], None
        batch, pn, side = state.labels.shape[0], self.patch_nums[si], self.feature_grid[0]
        grid = hidden[:batch].transpose(1, 2).reshape(batch, -1, pn, pn)
        if pn != side:
            grid = F.interpolate(grid, size=(side, side), mode="bicubic")
        features = grid.flatten(2).transpose(1, 2)
        return replace(state, si=si, logits=network.logits(hidden, state.cond_BD), features=features, cache=cache,
                       inputs=inputs, forwards=state.forwards + 2)

    def init(self, labels: Tensor, rng: SampleRNG) -> VARState:
        labels = labels.to(self.device)
        null = torch.full_like(labels, self.network.config.num_classes)
        cond_BD = self.network.class_emb(torch.cat([labels, null]))
        side, width = self.feature_grid[0], self.tokenizer.config.codebook_dim
        f_hat = torch.zeros(labels.shape[0], width, side, side, device=self.device)
        empty = VARState(0, labels, cond_BD, None, None, f_hat, None, None, rng, 0)
        return self._forward(empty, 0, self.network.first_scale_input(cond_BD))

    def observe(self, state: VARState) -> Tensor:
        return state.features

    def step(self, state: VARState, actions: dict[str, Tensor]) -> VARState:
        actions = {name: value.to(self.device) for name, value in self.clamp_actions(actions).items()}
        batch, si = state.labels.shape[0], state.si
        t = (actions["cfg"] * si / max(1, self.num_steps - 1)).view(-1, 1, 1)
        logits = (1 + t) * state.logits[:batch] - t * state.logits[batch:]
        logits = filter_top_k_top_p(logits, actions["top_k"], actions["top_p"])
        logits = logits / actions["sample_temp"].view(-1, 1, 1)
        tokens = (logits + gumbel_noise(state.rng.rand(*logits.shape[1:]).to(self.device))).argmax(dim=-1)
        f_hat, next_latent = self.tokenizer.quantize.next_input(si, state.f_hat, tokens)
        state = replace(state, si=si + 1, logits=None, f_hat=f_hat)
        if next_latent is None:
            return state
        x_new = self.network.scale_input(si + 1, next_latent.flatten(2).transpose(1, 2))
        return self._forward(state, si + 1, torch.cat([x_new, x_new]))

    def decode(self, state: VARState) -> Tensor:
        if state.si != self.num_steps:
            raise RuntimeError(f"decode after {state.si} of {self.num_steps} scales")
        return self.tokenizer.to_unit(self.tokenizer.decode_latent(state.f_hat))

    def nfe(self, state: VARState) -> int:
        return state.forwards // 2

    def forwards(self, state: VARState) -> int:
        return state.forwards

