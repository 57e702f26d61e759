"""VQ tokenizers of the token paradigms: MaskGIT's single-scale VQGAN and VAR's multi-scale residual VQVAE.

Both are a convolutional encoder, a quantizer and a decoder in the taming-transformers layout (`encoder.
conv_in`, `encoder.down.N.block.M.norm1`, `decoder.up.N.upsample.conv`, `quant_conv`, `quantize.embedding`,
...), the layout of the official MaskGIT-L/VAR tokenizer checkpoints, at any size: the embedded default trains
a small one on the digits (the `train-tokenizer` stage), full size builds the paper's.

- `VectorQuantizer` (MaskGIT): one token per cell of the latent grid.
- `MultiScaleQuantizer` (VAR, Tian et al. 2024): the latent is the sum of K token maps of growing side
  (patch_nums); map k quantizes what the coarser maps left of the latent, area-downsampled to its side, and is
  upsampled back through a small residual conv ("phi"). VAR predicts these maps one scale after another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


# ---------------------------------------------------------------------------------------------------------
# Encoder / decoder (taming layout)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """taming's residual block. In the JAX style (MAGE's converted VQGAN) the convs have no bias and, where
    the width changes, the 1x1 `nin_shortcut` (out -> out) maps the block's own output: out = nin(h) + h."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float, jax_style: bool):
        super().__init__()
        self.jax_style = jax_style
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not jax_style)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=not jax_style)
        if in_channels == out_channels:
            self.nin_shortcut = None
        elif jax_style:
            self.nin_shortcut = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        else:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.nin_shortcut is None:
            return x + h
        return self.nin_shortcut(h) + h if self.jax_style else self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels; `fused_qkv` is VAR's one-conv q/k/v, else taming's three."""

    def __init__(self, channels: int, groups: int, fused_qkv: bool):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.fused_qkv = fused_qkv
        if fused_qkv:
            self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        else:
            self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = self.qkv(h).chunk(3, dim=1) if self.fused_qkv else (self.q(h), self.k(h), self.v(h))
        q, k, v = (t.reshape(B, 1, C, H * W).transpose(2, 3) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Strided conv after taming's asymmetric padding; 2x2 average pooling (no parameters) in the JAX style."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.conv is None else self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: res blocks, each followed by its attention block where the
    level has them, then the down- or upsampling (attribute names as in the checkpoints)."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.block, self.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
        self.resample_name = "downsample" if isinstance(resample, Downsample) else "upsample"
        if resample is not None:
            self.add_module(self.resample_name, resample)

    def forward(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        resample = getattr(self, self.resample_name, None)
        return h if resample is None else resample(h)


def _middle(channels: int, c: "TokenizerConfig") -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, c.norm_groups, c.dropout, c.jax_style)
    mid.attn_1 = AttnBlock(channels, c.norm_groups, c.fused_qkv) if c.mid_attention else nn.Identity()
    mid.block_2 = ResnetBlock(channels, channels, c.norm_groups, c.dropout, c.jax_style)
    return mid


@dataclass(frozen=True)
class TokenizerConfig:
    resolution: int
    in_channels: int
    ch: int  # base width
    ch_mult: tuple[int, ...]  # width multiplier per level; len - 1 halvings of the side
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]  # sides at which an attention block follows each res block
    z_channels: int  # encoder output / decoder input width
    codebook_size: int
    codebook_dim: int  # width of a code (VAR: Cvae)
    norm_groups: int = 32
    dropout: float = 0.0
    mid_attention: bool = True
    fused_qkv: bool = False
    quant_conv_kernel: int = 1  # VAR: 3; 0: no quant_conv / post_quant_conv (JAX style)
    style: str = "taming"  # or "jax": MAGE's JAX-converted VQGAN of MaskGIT-L (see ResnetBlock, Downsample)
    beta: float = 0.25  # commitment weight
    patch_nums: tuple[int, ...] | None = None  # multi-scale (VAR) when set; its last entry is the latent side
    quant_resi: float = 0.5  # phi(x) = (1 - r) x + r conv(x)
    share_quant_resi: int = 4  # phi convs shared between scales

    @property
    def latent_side(self) -> int:
        return self.resolution // 2 ** (len(self.ch_mult) - 1)

    @property
    def jax_style(self) -> bool:
        if self.style not in ("taming", "jax"):
            raise ValueError(f"tokenizer style: expected 'taming' or 'jax', got {self.style!r}")
        return self.style == "jax"


class Encoder(nn.Module):
    def __init__(self, c: TokenizerConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1, bias=not c.jax_style)
        levels, side, width = [], c.resolution, c.ch
        for i, mult in enumerate(c.ch_mult):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(width, c.ch * mult, c.norm_groups, c.dropout, c.jax_style))
                width = c.ch * mult
                if side in c.attn_resolutions:
                    attns.append(AttnBlock(width, c.norm_groups, c.fused_qkv))
            last = i == len(c.ch_mult) - 1
            levels.append(Level(blocks, attns, None if last else Downsample(width, with_conv=not c.jax_style)))
            side = side if last else side // 2
        self.down = nn.ModuleList(levels)
        self.mid = _middle(width, c)
        self.norm_out = _norm(width, c.norm_groups)
        kernel = 1 if c.jax_style else 3
        self.conv_out = nn.Conv2d(width, c.z_channels, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: TokenizerConfig):
        super().__init__()
        width, side = c.ch * c.ch_mult[-1], c.latent_side
        self.conv_in = nn.Conv2d(c.z_channels, width, 3, padding=1)
        self.mid = _middle(width, c)
        levels = []
        for i in reversed(range(len(c.ch_mult))):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + (0 if c.jax_style else 1)):
                blocks.append(ResnetBlock(width, c.ch * c.ch_mult[i], c.norm_groups, c.dropout, c.jax_style))
                width = c.ch * c.ch_mult[i]
                if side in c.attn_resolutions:
                    attns.append(AttnBlock(width, c.norm_groups, c.fused_qkv))
            levels.insert(0, Level(blocks, attns, Upsample(width) if i else None))
            side = side * 2 if i else side
        self.up = nn.ModuleList(levels)  # up[0] is the finest level, as in the checkpoints
        self.norm_out = _norm(width, c.norm_groups)
        self.conv_out = nn.Conv2d(width, c.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------------------
# Quantizers


def token_map(embedding: nn.Embedding, indices_BN: Tensor) -> Tensor:
    """Row-major indices of a square map (B, side*side) -> their codes as a (B, C, side, side) map."""
    B, N = indices_BN.shape
    side = math.isqrt(N)
    return embedding(indices_BN).view(B, side, side, -1).permute(0, 3, 1, 2)


def _nearest_code(z_NC: Tensor, codebook_VC: Tensor) -> Tensor:
    distances = z_NC.pow(2).sum(1, keepdim=True) - 2 * z_NC @ codebook_VC.T + codebook_VC.pow(2).sum(1)[None]
    return distances.argmin(dim=1)


class VectorQuantizer(nn.Module):
    """One code per latent cell (VQ-VAE), straight-through gradients, commitment loss."""

    def __init__(self, c: TokenizerConfig):
        super().__init__()
        self.beta = c.beta
        self.embedding = nn.Embedding(c.codebook_size, c.codebook_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / c.codebook_size, 1.0 / c.codebook_size)

    def indices(self, z_BChw: Tensor) -> Tensor:
        """(B, h*w) code indices, row-major."""
        B, C, h, w = z_BChw.shape
        flat = z_BChw.permute(0, 2, 3, 1).reshape(-1, C)
        return _nearest_code(flat, self.embedding.weight).view(B, h * w)

    def embed(self, indices_BN: Tensor) -> Tensor:
        return token_map(self.embedding, indices_BN)

    def forward(self, z_BChw: Tensor) -> tuple[Tensor, Tensor]:
        quantized = self.embed(self.indices(z_BChw))
        loss = F.mse_loss(quantized, z_BChw.detach()) + self.beta * F.mse_loss(z_BChw, quantized.detach())
        return z_BChw + (quantized - z_BChw).detach(), loss


class Phi(nn.Conv2d):
    """VAR's residual refinement of an upsampled token map: (1 - r) x + r conv3x3(x)."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = ratio

    def forward(self, x: Tensor) -> Tensor:
        return x * (1 - self.ratio) + super().forward(x) * self.ratio


class SharedPhis(nn.Module):
    """K phi convs shared by all scales: scale si of S uses the conv whose tick is nearest si / (S - 1)."""

    def __init__(self, channels: int, ratio: float, count: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(channels, ratio) for _ in range(count))
        margin = 1 / (3 * count) if count == 4 else 1 / (2 * count)  # VAR's ticks (its 4-conv release: 1/12)
        self.ticks = np.linspace(margin, 1 - margin, count)

    def for_scale(self, si: int, num_scales: int) -> Phi:
        # numpy float64 as in VAR: for 10 scales, scale 2 is an exact tie that rounding sends to conv 1
        return self.qresi_ls[int(np.argmin(np.abs(self.ticks - si / max(1, num_scales - 1))))]


class MultiScaleQuantizer(nn.Module):
    """VAR's residual quantizer over the scales patch_nums (the last one is the latent side)."""

    def __init__(self, c: TokenizerConfig):
        super().__init__()
        self.beta = c.beta
        self.patch_nums = tuple(c.patch_nums)
        self.embedding = nn.Embedding(c.codebook_size, c.codebook_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / c.codebook_size, 1.0 / c.codebook_size)
        self.quant_resi = SharedPhis(c.codebook_dim, c.quant_resi, c.share_quant_resi)
        # Code usage per scale; in the official checkpoints (distributed training statistics), unused here.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), c.codebook_size))

    @property
    def side(self) -> int:
        return self.patch_nums[-1]

    def upsampled(self, si: int, token_map_BCpp: Tensor) -> Tensor:
        """Scale si's token map (embedded), brought to the latent side and through its phi."""
        if token_map_BCpp.shape[-1] != self.side:
            token_map_BCpp = F.interpolate(token_map_BCpp, size=(self.side, self.side), mode="bicubic")
        return self.quant_resi.for_scale(si, len(self.patch_nums))(token_map_BCpp)

    def _quantize(self, z_BChw: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """VAR's residual loop: per scale, quantize what the coarser scales left (area-downsampled), add its
        upsampled, phi-refined codes to f_hat. Returns the indices, f_hat and the codebook + commitment loss."""
        f_hat, residual = torch.zeros_like(z_BChw), z_BChw.detach()
        indices, loss = [], z_BChw.new_zeros(())
        for si, pn in enumerate(self.patch_nums):
            down = F.interpolate(residual, size=(pn, pn), mode="area") if pn != self.side else residual
            B, C = down.shape[:2]
            idx = _nearest_code(down.permute(0, 2, 3, 1).reshape(-1, C), self.embedding.weight).view(B, pn * pn)
            contribution = self.upsampled(si, self.embed(idx))
            f_hat = f_hat + contribution
            residual = residual - contribution.detach()
            indices.append(idx)
            loss = loss + F.mse_loss(f_hat, z_BChw.detach()) + self.beta * F.mse_loss(z_BChw, f_hat.detach())
        return indices, f_hat, loss / len(self.patch_nums)

    def indices(self, z_BChw: Tensor) -> list[Tensor]:
        """Per scale, (B, pn*pn) indices."""
        return self._quantize(z_BChw)[0]

    def embed(self, indices_BN: Tensor) -> Tensor:
        return token_map(self.embedding, indices_BN)

    def next_input(self, si: int, f_hat: Tensor, indices_BN: Tensor) -> tuple[Tensor, Tensor | None]:
        """Add scale si's tokens to the partial latent f_hat; return it and, before the last scale, the next
        scale's input: f_hat area-downsampled to the next side (VAR's teacher-forcing and sampling input)."""
        f_hat = f_hat + self.upsampled(si, self.embed(indices_BN))
        if si + 1 == len(self.patch_nums):
            return f_hat, None
        pn = self.patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")

    def teacher_forcing_inputs(self, indices: list[Tensor]) -> Tensor:
        """(B, L - pn_0^2, C): the inputs of scales 1..K-1 built from the true tokens of the coarser scales."""
        B, C = indices[0].shape[0], self.embedding.weight.shape[1]
        f_hat = self.embedding.weight.new_zeros(B, C, self.side, self.side)
        inputs = []
        for si in range(len(self.patch_nums) - 1):
            f_hat, nxt = self.next_input(si, f_hat, indices[si])
            inputs.append(nxt.flatten(2).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    def forward(self, z_BChw: Tensor) -> tuple[Tensor, Tensor]:
        _, f_hat, loss = self._quantize(z_BChw)
        return z_BChw + (f_hat - z_BChw).detach(), loss


# ---------------------------------------------------------------------------------------------------------
# The tokenizer


class VQTokenizer(nn.Module):
    """Images <-> token indices. Single scale: (B, h*w) indices; multi-scale: a list of (B, pn*pn), one per scale.

    `from_unit` / `to_unit` convert between images in [0, 1] and the tokenizer's own pixel range: [-1, 1] in
    the taming style (VAR), [0, 1] in the JAX style (MaskGIT-L's VQGAN was trained on unnormalised pixels).
    """

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        kernel = config.quant_conv_kernel
        if kernel:
            self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_dim, kernel, padding=kernel // 2)
        elif config.z_channels != config.codebook_dim:
            raise ValueError("without quant_conv, z_channels must equal codebook_dim")
        self.quantize = MultiScaleQuantizer(config) if config.patch_nums else VectorQuantizer(config)
        if kernel:
            self.post_quant_conv = nn.Conv2d(config.codebook_dim, config.z_channels, kernel, padding=kernel // 2)
        self.decoder = Decoder(config)
        if config.patch_nums and config.patch_nums[-1] != config.latent_side:
            raise ValueError(f"patch_nums end at {config.patch_nums[-1]}, the latent side is {config.latent_side}")

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def latent_side(self) -> int:
        return self.config.latent_side

    def from_unit(self, images_BCHW: Tensor) -> Tensor:
        return images_BCHW if self.config.jax_style else images_BCHW * 2.0 - 1.0

    def to_unit(self, pixels_BCHW: Tensor) -> Tensor:
        pixels = pixels_BCHW if self.config.jax_style else (pixels_BCHW + 1.0) / 2.0
        return pixels.clamp(0.0, 1.0)

    def encode(self, pixels_BCHW: Tensor) -> Tensor:
        h = self.encoder(pixels_BCHW)
        return self.quant_conv(h) if self.config.quant_conv_kernel else h

    def decode_latent(self, latent_BChw: Tensor) -> Tensor:
        h = self.post_quant_conv(latent_BChw) if self.config.quant_conv_kernel else latent_BChw
        return self.decoder(h)

    @torch.no_grad()
    def indices(self, images_BCHW: Tensor):
        """Token indices of images in [0, 1]."""
        return self.quantize.indices(self.encode(self.from_unit(images_BCHW)))

    @torch.no_grad()
    def decode_indices(self, indices_BN: Tensor) -> Tensor:
        """Single-scale indices (B, h*w) -> images in [0, 1]."""
        return self.to_unit(self.decode_latent(self.quantize.embed(indices_BN)))

    def forward(self, pixels_BCHW: Tensor) -> tuple[Tensor, Tensor]:
        """Reconstruction (tokenizer range) and quantizer loss, for training."""
        quantized, vq_loss = self.quantize(self.encode(pixels_BCHW))
        return self.decode_latent(quantized), vq_loss


def build_tokenizer(tokenizer_params: dict, *, resolution: int, channels: int, patch_nums=None) -> VQTokenizer:
    """The tokenizer of a params section (`generators.<paradigm>.tokenizer.network`) for data of this shape."""
    params = {key: tuple(value) if isinstance(value, list) else value for key, value in tokenizer_params.items()}
    if patch_nums is not None:
        params["patch_nums"] = tuple(patch_nums)
    return VQTokenizer(TokenizerConfig(resolution=resolution, in_channels=channels, **params))


def tokenizer_loss(tokenizer: VQTokenizer, images_BCHW: Tensor, labels_B: Tensor, generator: torch.Generator) -> Tensor:
    """Reconstruction (MSE in the tokenizer's range) plus the quantizer's codebook and commitment terms."""
    target = tokenizer.from_unit(images_BCHW)
    reconstruction, vq_loss = tokenizer(target)
    return F.mse_loss(reconstruction, target) + vq_loss


def load_tokenizer(checkpoint: dict) -> VQTokenizer:
    params = {key: tuple(value) if isinstance(value, list) else value for key, value in checkpoint["config"].items()}
    tokenizer = VQTokenizer(TokenizerConfig(**params))
    tokenizer.load_state_dict(checkpoint["state_dict"])
    return tokenizer.eval().requires_grad_(False)


@torch.no_grad()
def tokenizer_quality(tokenizer: VQTokenizer, images_uint8: np.ndarray, batch_size: int = 500) -> dict:
    """Reconstruction PSNR (dB, [0, 1] pixels) and the share of the codebook in use, on held-out images."""
    tokenizer = tokenizer.eval()
    squared_error, used = 0.0, torch.zeros(tokenizer.codebook_size, dtype=torch.bool)
    for start in range(0, len(images_uint8), batch_size):
        images = torch.from_numpy(images_uint8[start : start + batch_size]).float() / 255.0
        reconstruction = tokenizer.to_unit(tokenizer(tokenizer.from_unit(images))[0])
        squared_error += F.mse_loss(reconstruction, images, reduction="sum").item()
        indices = tokenizer.indices(images)
        used[torch.cat(indices, dim=1) if isinstance(indices, list) else indices] = True
    mse = squared_error / images_uint8.size
    return {"val_psnr": float(10 * math.log10(1.0 / max(mse, 1e-12))), "codebook_usage": float(used.float().mean())}
