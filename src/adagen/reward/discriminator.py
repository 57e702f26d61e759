"""Projected discriminator on a frozen timm ViT (StyleGAN-T, as AdaNAT uses it; METHOD.md 4.1-4.2).

The backbone's token features are read after the patch embedding and after chosen blocks; each feature map
(CLS token added to every patch token) gets its own small head of 1-D convolutions with spectral norm and
a class-conditional projection, giving one logit per token. The discriminator is trained with the logistic
loss; the policy's reward is sigmoid(mean logit) of its final image.

Full size: DINO ViT-S/16 (timm `vit_small_patch16_224.dino`), features after blocks 2, 5, 8, 11. Embedded
default: a tiny ViT trained as a classifier on the train split by the `train-reward-backbone` stage, never the
evaluation feature network (the reward must not be the metric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor
from torch.nn.utils.parametrizations import spectral_norm


class BatchNormLocal(nn.Module):
    """Batch norm over virtual batches of `group` samples (and all tokens), affine per channel."""

    def __init__(self, channels: int, group: int = 8, eps: float = 1e-5):
        super().__init__()
        self.group, self.eps = group, eps
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

    def forward(self, x_BCL: Tensor) -> Tensor:
        B, C, L = x_BCL.shape
        groups = math.ceil(B / self.group)
        pad = groups * self.group - B
        x = torch.cat([x_BCL, x_BCL[:pad]]) if pad else x_BCL  # fill the last group with repeats
        x = x.view(groups, -1, C, L)
        mean = x.mean(dim=(1, 3), keepdim=True)
        var = x.var(dim=(1, 3), keepdim=True, unbiased=False)
        x = ((x - mean) / torch.sqrt(var + self.eps)).view(-1, C, L)[:B]
        return x * self.weight.view(1, -1, 1) + self.bias.view(1, -1, 1)


def _conv_block(channels: int, kernel: int, group: int) -> nn.Sequential:
    return nn.Sequential(
        spectral_norm(nn.Conv1d(channels, channels, kernel, padding=kernel // 2, padding_mode="circular")),
        BatchNormLocal(channels, group), nn.LeakyReLU(0.2),
    )


class ResidualBlock(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return (self.block(x) + x) / math.sqrt(2)


class DiscriminatorHead(nn.Module):
    """One feature map (B, C, L) and the class embedding -> a logit per token (B, L)."""

    def __init__(self, channels: int, cond_dim: int, projection_dim: int, group: int):
        super().__init__()
        self.main = nn.Sequential(_conv_block(channels, 1, group), ResidualBlock(_conv_block(channels, 9, group)))
        self.out = spectral_norm(nn.Conv1d(channels, projection_dim, 1))
        self.cmap = nn.Linear(cond_dim, projection_dim)
        self.projection_dim = projection_dim

    def forward(self, x_BCL: Tensor, c_BD: Tensor) -> Tensor:
        h = self.out(self.main(x_BCL))
        return (h * self.cmap(c_BD).unsqueeze(-1)).sum(dim=1) / math.sqrt(self.projection_dim)


@dataclass(frozen=True)
class DiscriminatorConfig:
    num_classes: int
    block_indices: tuple[int, ...]  # backbone blocks whose outputs are read
    read_patch_embedding: bool = True  # a head on the patch embedding too (pixel-level statistics)
    cond_dim: int = 512
    mapping_layers: int = 2  # MLP on the class embedding (StyleGAN2's mapping network: 8 at full size)
    projection_dim: int = 64
    virtual_batch: int = 8
    image_size: int = 224  # the backbone's input side (images are resized to it)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # the backbone's input normalisation
    std: tuple[float, ...] = (0.229, 0.224, 0.225)


class ProjectedDiscriminator(nn.Module):
    """D(images in [0, 1], labels) -> logits (B, tokens x feature maps); the backbone stays frozen."""

    def __init__(self, backbone: VisionTransformer, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        self.backbone = backbone.eval().requires_grad_(False)
        dim = backbone.embed_dim
        self.class_embed = nn.Embedding(config.num_classes, config.cond_dim)
        layers = []
        for _ in range(config.mapping_layers):
            layers += [nn.Linear(config.cond_dim, config.cond_dim), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        self.heads = nn.ModuleList(
            DiscriminatorHead(dim, config.cond_dim, config.projection_dim, config.virtual_batch)
            for _ in range(len(config.block_indices) + config.read_patch_embedding)
        )

    def train(self, mode: bool = True) -> "ProjectedDiscriminator":
        super().train(mode)
        self.backbone.eval()  # frozen: dropout off, whatever the heads do
        return self

    def backbone_features(self, images_BCHW: Tensor) -> list[Tensor]:
        """Token maps (B, C, L): after the patch embedding and after each chosen block, CLS added to patches."""
        c, backbone = self.config, self.backbone
        x = images_BCHW
        if x.shape[1] != backbone.patch_embed.proj.in_channels:
            x = x.expand(-1, backbone.patch_embed.proj.in_channels, -1, -1)  # grey images, RGB backbone
        if x.shape[-1] != c.image_size:
            x = F.interpolate(x, size=(c.image_size, c.image_size), mode="area")
        mean = torch.tensor(c.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(c.std, device=x.device).view(1, -1, 1, 1)
        x = backbone.pos_drop(backbone._pos_embed(backbone.patch_embed((x - mean) / std)))
        maps = [x] if c.read_patch_embedding else []
        for i, block in enumerate(backbone.blocks[: max(c.block_indices) + 1]):
            x = block(x)
            if i in c.block_indices:
                maps.append(x)
        prefix = backbone.num_prefix_tokens
        return [(m[:, prefix:] + m[:, :1]).transpose(1, 2) for m in maps]  # "AddReadout" of the CLS token

    def forward(self, images_BCHW: Tensor, labels_B: Tensor) -> Tensor:
        with torch.no_grad():
            maps = self.backbone_features(images_BCHW)
        c_BD = self.mapping(F.normalize(self.class_embed(labels_B), dim=-1) * math.sqrt(self.config.cond_dim))
        return torch.cat([head(m, c_BD) for head, m in zip(self.heads, maps)], dim=1)

    @torch.no_grad()
    def reward(self, images_BCHW: Tensor, labels_B: Tensor) -> Tensor:
        """sigmoid(mean logit) per image, in (0, 1)."""
        was_training = self.training
        self.eval()
        reward = torch.sigmoid(self(images_BCHW, labels_B).mean(dim=1))
        self.train(was_training)
        return reward

    @torch.no_grad()
    def candidate_rewards(self, candidates_NCHW: Tensor, label: Tensor) -> Tensor:
        """Rewards (N,) of N candidates for one sample (label: a 0-d or 1-element tensor), the N normalised as one
        virtual batch. Scored one image at a time, the normalisation would subtract each image's own token
        statistics and leave the candidates almost indistinguishable; scored within a batch of other samples, a
        candidate's reward would depend on its batch companions. Here it depends on its rivals only."""
        norms = [module for module in self.modules() if isinstance(module, BatchNormLocal)]
        groups = [module.group for module in norms]
        try:
            for module in norms:
                module.group = len(candidates_NCHW)
            return self.reward(candidates_NCHW, label.reshape(1).expand(len(candidates_NCHW)))
        finally:
            for module, group in zip(norms, groups):
                module.group = group


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> dict[str, Tensor]:
    """Non-saturating logistic loss over every token logit: softplus(-D(real)) + softplus(D(fake))."""
    real, fake = F.softplus(-real_logits).mean(), F.softplus(fake_logits).mean()
    return {"loss": real + fake, "loss_real": real, "loss_fake": fake}


def discriminator_config(section: dict, *, num_classes: int, resolution: int, mean: tuple[float, ...],
                         std: tuple[float, ...]) -> DiscriminatorConfig:
    """The config of a params section (`adagen.discriminator`) for a backbone that sees `resolution` pixels."""
    return DiscriminatorConfig(num_classes=num_classes, block_indices=tuple(section["block_indices"]),
                               read_patch_embedding=section["read_patch_embedding"],
                               cond_dim=section["cond_dim"], mapping_layers=section["mapping_layers"],
                               projection_dim=section["projection_dim"], virtual_batch=section["virtual_batch"],
                               image_size=resolution, mean=tuple(mean), std=tuple(std))
