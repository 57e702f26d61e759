"""MaskGIT: a bidirectional transformer that unmasks VQ tokens in parallel, a few per step.

The network is the U-ViT of AdaNAT/AdaGen's "MaskGIT-L" (transformer blocks with long skip connections
between the first and the last half, a class token from its own embedding table, an MLM head tied to the
token embedding). Module and parameter names follow that checkpoint (`token_emb.word_embeddings`,
`context_embed`, `in_blocks.N`, `mid_block`, `out_blocks.N.skip_linear`, `norm`, `mlm_layer`), so
`MaskGIT-L.pth` loads without key surgery; its tokenizer is MAGE's JAX-converted VQGAN (tokenizer.py, style
"jax").

The sampler takes one decision per step (METHOD.md 1.3-1.4): the share of tokens left masked after it, the
Gumbel temperature of the confidence used to choose them, the sampling temperature and the CFG weight, all
per sample. Tokens once revealed are never changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import Tensor

from adagen.generators.base import (
    SampleRNG, StepwiseGenerator, constant, gumbel_noise, sigmoid_spec, softplus_spec,
)
from adagen.generators.tokenizer import TokenizerConfig, VQTokenizer

# ---------------------------------------------------------------------------------------------------------
# Network


class BertEmbeddings(nn.Module):
    """Word + learned position embedding, LayerNorm (eps 1e-6), dropout: BERT's input layer."""

    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int, dropout: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids_BN: Tensor) -> Tensor:
        positions = torch.arange(ids_BN.shape[1], device=ids_BN.device)
        return self.dropout(self.LayerNorm(self.word_embeddings(ids_BN) + self.position_embeddings(positions)))


class Block(nn.Module):
    """Pre-norm transformer block; blocks of the second half first merge a long skip: linear([x, skip])."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, skip: bool):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MlmLayer(nn.Module):
    """fc -> GELU -> LayerNorm, then logits against the (detached) token embedding, plus a bias."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.ln = nn.LayerNorm(dim)
        self.bias = nn.Parameter(torch.zeros(1, 1, vocab_size))

    def forward(self, x_BNC: Tensor, word_embeddings_VC: Tensor) -> Tensor:
        return self.ln(F.gelu(self.fc(x_BNC))) @ word_embeddings_VC.detach().T + self.bias


@dataclass(frozen=True)
class MaskGITConfig:
    codebook_size: int  # the mask token is id codebook_size
    num_tokens: int  # side^2 of the token grid
    num_classes: int  # the null class of CFG is id num_classes
    embed_dim: int
    depth: int  # depth // 2 blocks in, one in the middle, depth // 2 out
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    embed_dropout: float = 0.1
    class_dropout_prob: float = 0.15  # label dropout of training, for CFG


class UViT(nn.Module):
    """forward_with_features(ids, labels) -> logits over the codebook (B, N, V) and the final-norm tokens."""

    def __init__(self, config: MaskGITConfig):
        super().__init__()
        self.config = config
        c = config
        self.mask_id = c.codebook_size
        self.grid_size = math.isqrt(c.num_tokens)
        self.token_emb = BertEmbeddings(c.codebook_size + 1, c.embed_dim, c.num_tokens, c.embed_dropout)
        self.context_embed = BertEmbeddings(c.num_classes + 1, c.embed_dim, 1, 0.0)
        block = lambda skip: Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, skip)  # noqa: E731
        self.in_blocks = nn.ModuleList(block(False) for _ in range(c.depth // 2))
        self.mid_block = block(False)
        self.out_blocks = nn.ModuleList(block(True) for _ in range(c.depth // 2))
        self.norm = nn.LayerNorm(c.embed_dim)
        self.mlm_layer = MlmLayer(c.embed_dim, c.codebook_size + 1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def forward_with_features(self, ids_BN: Tensor, labels_B: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([self.context_embed(labels_B.view(-1, 1)), self.token_emb(ids_BN)], dim=1)
        skips = []
        for block in self.in_blocks:
            x = block(x)
            skips.append(x)
        x = self.mid_block(x)
        for block in self.out_blocks:
            x = block(x, skips.pop())
        features = self.norm(x)[:, 1:]
        logits = self.mlm_layer(features, self.token_emb.word_embeddings.weight)
        return logits[..., : self.config.codebook_size], features

    def forward(self, ids_BN: Tensor, labels_B: Tensor) -> Tensor:
        return self.forward_with_features(ids_BN, labels_B)[0]


# The paper's setting: MaskGIT-L (AdaNAT's NAT-L) on MAGE's VQGAN, 16x16 tokens of 256x256 ImageNet images.
MASKGIT_L = MaskGITConfig(codebook_size=1024, num_tokens=256, num_classes=1000, embed_dim=768, depth=24, num_heads=8)
VQGAN_F16_JAX = TokenizerConfig(
    resolution=256, in_channels=3, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(),
    z_channels=256, codebook_size=1024, codebook_dim=256, mid_attention=False, quant_conv_kernel=0, style="jax",
)
FULL_SIZES = {"MaskGIT-L": lambda: UViT(MASKGIT_L), "VQGAN f16 (MAGE, JAX)": lambda: VQTokenizer(VQGAN_F16_JAX)}


def build_network(network_params: dict, *, resolution: int, channels: int, num_classes: int,
                  tokenizer: VQTokenizer) -> UViT:
    """The U-ViT of a params section (`generators.maskgit.network`) over the given tokenizer's codes."""
    return UViT(MaskGITConfig(codebook_size=tokenizer.codebook_size, num_tokens=tokenizer.latent_side**2,
                              num_classes=num_classes, **network_params))


def load_network(checkpoint: dict) -> UViT:
    network = UViT(MaskGITConfig(**checkpoint["config"]))
    network.load_state_dict(checkpoint["state_dict"])
    return network.eval()


# ---------------------------------------------------------------------------------------------------------
# Training: masked-token prediction at a cosine-distributed mask ratio (MaskGIT / MUSE)


def training_loss(network: UViT, images_BCHW: Tensor, labels_B: Tensor, generator: torch.Generator, *,
                  tokenizer: VQTokenizer, label_smoothing: float = 0.1) -> Tensor:
    """Mask round(N cos(pi/2 u)) tokens (u ~ U(0, 1), at least one) at random positions; cross-entropy on
    the masked ones only, with label smoothing; labels drop to the null class for CFG."""
    config = network.config
    tokens = tokenizer.indices(images_BCHW)
    batch, length = tokens.shape
    ratio = torch.cos(math.pi / 2 * torch.rand(batch, generator=generator))
    n_masked = torch.round(length * ratio).clamp(min=1).long()
    ranks = torch.rand(batch, length, generator=generator).argsort(dim=1).argsort(dim=1)
    masked = ranks < n_masked[:, None]
    drop = torch.rand(batch, generator=generator) < config.class_dropout_prob
    labels_B = torch.where(drop, torch.full_like(labels_B, config.num_classes), labels_B)
    logits = network(torch.where(masked, torch.full_like(tokens, network.mask_id), tokens), labels_B)
    return F.cross_entropy(logits[masked], tokens[masked], label_smoothing=label_smoothing)


# ---------------------------------------------------------------------------------------------------------
# Step-wise sampler


def step_fraction(T: int) -> Tensor:
    """r_k = (k + 1 - 1e-3) / T: how far through the T steps the end of step k is."""
    return (torch.arange(T, dtype=torch.float32) + 1 - 1e-3) / T


# The mask schedule families of the MaskGIT paper: the share of tokens still masked after fraction r of the steps.
# Cosine is MaskGIT's (and AdaNAT's baseline); the others are what a tuned static schedule may pick instead.
MASK_SCHEDULES = {
    "cosine": lambda r: torch.cos(math.pi / 2 * r),
    "linear": lambda r: 1 - r,
    "square": lambda r: 1 - r**2,
    "cubic": lambda r: 1 - r**3,
    "sqrt": lambda r: 1 - r.sqrt(),
}


@dataclass(frozen=True)
class MaskGITState:
    k: int
    labels: Tensor
    ids: Tensor  # (B, N): token ids, mask_id where still masked
    sampled: Tensor | None  # (B, N): every position filled by the last step (what is decoded)
    cond: Tensor  # (B, N, V) logits at ids, waiting for this step's CFG weight
    uncond: Tensor
    features: Tensor  # (B, N, C)
    rng: SampleRNG  # the batch's per-sample random streams
    nfe: int


class MaskGITGenerator(StepwiseGenerator):
    """Decision k picks the mask ratio left after step k, its Gumbel temperature, the sampling temperature
    and the CFG weight; each step ends with the next cond + uncond evaluation (none after the last)."""

    def __init__(self, network: UViT, tokenizer: VQTokenizer, *, steps: int, cfg: float, gumbel_temp: float,
                 sample_temp: float = 1.0, mask_schedule: str = "cosine"):
        if mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"mask_schedule {mask_schedule!r}: choose from {', '.join(MASK_SCHEDULES)}")
        mask_ratio = MASK_SCHEDULES[mask_schedule]
        self.network = network.eval().requires_grad_(False)
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.num_steps = steps
        self.feature_dim = network.config.embed_dim
        self.feature_grid = (network.grid_size, network.grid_size)
        self.action_specs = (
            sigmoid_spec("mask_ratio", lambda T: mask_ratio(step_fraction(T))),
            softplus_spec("gumbel_temp", lambda T: (1 - step_fraction(T)) * gumbel_temp),
            softplus_spec("sample_temp", constant(sample_temp), low=1e-3),
            softplus_spec("cfg", lambda T: (torch.arange(T, dtype=torch.float32) + 1e-3) / T * cfg),
        )

    @classmethod
    def from_params(cls, network: UViT, sampling_params: dict, tokenizer: VQTokenizer) -> "MaskGITGenerator":
        return cls(network, tokenizer, **sampling_params)

    def _evaluate(self, state: MaskGITState) -> MaskGITState:
        batch = state.ids.shape[0]
        null = torch.full_like(state.labels, self.network.config.num_classes)
        logits, features = self.network.forward_with_features(torch.cat([state.ids, state.ids]),
                                                              torch.cat([state.labels, null]))
        return replace(state, cond=logits[:batch], uncond=logits[batch:], features=features[:batch], nfe=state.nfe + 1)

    def init(self, labels: Tensor, rng: SampleRNG) -> MaskGITState:
        labels = labels.to(self.device)
        ids = torch.full((labels.shape[0], self.network.config.num_tokens), self.network.mask_id, device=self.device)
        return self._evaluate(MaskGITState(0, labels, ids, None, None, None, None, rng, 0))

    def observe(self, state: MaskGITState) -> Tensor:
        return state.features

    def step(self, state: MaskGITState, actions: dict[str, Tensor]) -> MaskGITState:
        actions = {name: value.to(self.device) for name, value in self.clamp_actions(actions).items()}
        length, vocab = state.cond.shape[1:]
        w = actions["cfg"].view(-1, 1, 1)
        logits = state.cond + w * (state.cond - state.uncond)
        noise = state.rng.rand(length, vocab + 1).to(self.device)  # per sample: token draw and re-mask noise
        drawn = (logits / actions["sample_temp"].view(-1, 1, 1) + gumbel_noise(noise[..., :vocab])).argmax(dim=-1)
        confidence = logits.log_softmax(dim=-1).gather(-1, drawn.unsqueeze(-1)).squeeze(-1)
        revealed = state.ids != self.network.mask_id
        sampled = torch.where(revealed, state.ids, drawn)
        confidence = torch.where(revealed, math.inf, confidence)
        # Re-mask the n least confident (Gumbel-perturbed) positions; revealed ones (+inf) never qualify.
        n_masked = torch.floor(length * actions["mask_ratio"]).long().clamp(max=length - 1)
        perturbed = confidence + actions["gumbel_temp"].view(-1, 1) * gumbel_noise(noise[..., vocab])
        threshold = perturbed.sort(dim=-1).values.gather(-1, n_masked.view(-1, 1))
        ids = torch.where(perturbed < threshold, self.network.mask_id, sampled)
        state = replace(state, k=state.k + 1, ids=ids, sampled=sampled, cond=None, uncond=None)
        return state if state.k == self.num_steps else self._evaluate(state)

    def decode(self, state: MaskGITState) -> Tensor:
        if state.k != self.num_steps:
            raise RuntimeError(f"decode after {state.k} of {self.num_steps} steps")
        return self.tokenizer.decode_indices(state.sampled)

    def nfe(self, state: MaskGITState) -> int:
        return state.nfe

    def forwards(self, state: MaskGITState) -> int:
        return 2 * state.nfe
