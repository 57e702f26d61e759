"""The SD KL-f8 autoencoder that full-size DiT and SiT sample in, taken from diffusers (`AutoencoderKL`).

DiT-XL/2 and SiT-XL/2 generate 32x32x4 latents of 256x256 images; their samplers decode with Stable
Diffusion's KL-f8 VAE, latents scaled by 0.18215. The embedded default runs in pixel space and needs none.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# diffusers' configuration of the SD KL-f8 VAE (the layout of stabilityai/sd-vae-ft-ema's weights).
SD_VAE_KL_F8 = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=256,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
)


def sd_vae(**overrides) -> nn.Module:
    """An `AutoencoderKL` with the SD KL-f8 configuration (random weights; load a checkpoint into it)."""
    from diffusers import AutoencoderKL  # imported on use: diffusers takes seconds to import

    return AutoencoderKL(**{**SD_VAE_KL_F8, **overrides})


class LatentDecoder(nn.Module):
    """Latents as the generator samples them -> images in [-1, 1], through the VAE's decoder."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, latents_BCHW: Tensor) -> Tensor:
        return self.vae.decode(latents_BCHW / self.vae.config.scaling_factor).sample
