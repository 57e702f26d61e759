"""Official checkpoints load into our full-size classes without key surgery: small files written here with the
official key names and shapes (reduced widths) load strictly and sample; bad files fail clearly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from adagen.generators.dit import DIT_XL_2, DiT, DiTGenerator
from adagen.generators.sit import SiTGenerator
from adagen.io import CheckpointMismatch, load_weights
from adagen.sampling import sample_images


def official_dit_state_dict(*, input_size: int, in_channels: int, hidden: int, depth: int, patch: int,
                            num_classes: int, learn_sigma: bool, mlp_ratio: float = 4.0) -> dict:
    """Key names and shapes of facebookresearch/DiT `models.py` (class DiT), written out independently of our
    class; SiT's official checkpoints use the same layout. Random values."""
    tokens, mlp, out = (input_size // patch) ** 2, int(hidden * mlp_ratio), in_channels * (2 if learn_sigma else 1)
    shapes = {
        "pos_embed": (1, tokens, hidden),
        "x_embedder.proj.weight": (hidden, in_channels, patch, patch), "x_embedder.proj.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
        "y_embedder.embedding_table.weight": (num_classes + 1, hidden),  # + the null class of CFG
        "final_layer.linear.weight": (patch * patch * out, hidden), "final_layer.linear.bias": (patch * patch * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
        "final_layer.adaLN_modulation.1.bias": (2 * hidden,),
    }
    for block in range(depth):
        shapes |= {
            f"blocks.{block}.attn.qkv.weight": (3 * hidden, hidden), f"blocks.{block}.attn.qkv.bias": (3 * hidden,),
            f"blocks.{block}.attn.proj.weight": (hidden, hidden), f"blocks.{block}.attn.proj.bias": (hidden,),
            f"blocks.{block}.mlp.fc1.weight": (mlp, hidden), f"blocks.{block}.mlp.fc1.bias": (mlp,),
            f"blocks.{block}.mlp.fc2.weight": (hidden, mlp), f"blocks.{block}.mlp.fc2.bias": (hidden,),
            f"blocks.{block}.adaLN_modulation.1.weight": (6 * hidden, hidden),
            f"blocks.{block}.adaLN_modulation.1.bias": (6 * hidden,),
        }
    generator = torch.Generator().manual_seed(0)
    return {key: 0.02 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}


# DiT-XL/2's layout (learned sigma, 4 latent channels, 1000 classes + null) at a width a CPU test can sample.
SMALL = dataclasses.replace(DIT_XL_2, input_size=8, hidden_size=32, depth=2, num_heads=2)
SMALL_SHAPE = dict(input_size=8, in_channels=4, hidden=32, depth=2, patch=2, num_classes=1000, learn_sigma=True)


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain state dict", "training checkpoint (ema)"])
@pytest.mark.parametrize("generator_class", [DiTGenerator, SiTGenerator], ids=["dit", "sit"])
def test_official_dit_layout_loads_and_samples(tmp_path, wrapped, generator_class):
    state = official_dit_state_dict(**SMALL_SHAPE)
    path = tmp_path / "DiT-XL-2-256x256.pt"
    torch.save({"model": {}, "ema": state, "opt": {}} if wrapped else state, path)
    network = load_weights(path, DiT(SMALL))
    assert torch.equal(network.state_dict()["blocks.1.adaLN_modulation.1.weight"],
                       state["blocks.1.adaLN_modulation.1.weight"])
    times = dict(t_start=0.9, t_end=0.01) if generator_class is DiTGenerator else dict(t_start=0.01, t_end=0.99)
    generator = generator_class(network, nfe=2, cfg=1.0, guided_channels=3, **times)
    result = sample_images(generator, np.array([3, 999]), seed=0, batch_size=2, progress=False)
    assert result["images"].shape == (2, 4, 8, 8) and result["images"].dtype == np.uint8
    assert result["nfe"] == 2


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    state = official_dit_state_dict(**SMALL_SHAPE)
    del state["pos_embed"]
    state["extra.weight"] = torch.zeros(1)
    state["final_layer.linear.weight"] = torch.zeros(3, 32)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatch, match=r"broken\.pt does not fit DiT: missing \(1\): \['pos_embed'\]; "
                                                 r"unexpected \(1\): \['extra\.weight'\]; wrong shape \(1\): "
                                                 r"\['final_layer\.linear\.weight \(3, 32\) != \(32, 32\)'\]"):
        load_weights(path, DiT(SMALL))


class NotWeights:
    """Anything but tensors and plain containers is refused by weights_only loading."""


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": NotWeights()}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_weights(path, DiT(SMALL))


def official_var_state_dict(*, depth: int, width: int, heads: int, num_classes: int, codebook_size: int,
                            codebook_dim: int, patch_nums: tuple[int, ...], mlp_ratio: float = 4.0) -> dict:
    """Key names and shapes of FoundationVision/VAR `models/var.py` (class VAR, attn_l2_norm, shared_aln False),
    written out independently of our class; the buffers it saves included. Random values."""
    length, mlp = sum(n * n for n in patch_nums), int(width * mlp_ratio)
    shapes = {
        "pos_start": (1, patch_nums[0] ** 2, width), "pos_1LC": (1, length, width),
        "word_embed.weight": (width, codebook_dim), "word_embed.bias": (width,),
        "class_emb.weight": (num_classes + 1, width), "lvl_embed.weight": (len(patch_nums), width),
        "head_nm.ada_lin.1.weight": (2 * width, width), "head_nm.ada_lin.1.bias": (2 * width,),
        "head.weight": (codebook_size, width), "head.bias": (codebook_size,),
    }
    for block in range(depth):
        prefix = f"blocks.{block}."
        shapes |= {
            prefix + "attn.mat_qkv.weight": (3 * width, width), prefix + "attn.q_bias": (width,),
            prefix + "attn.v_bias": (width,), prefix + "attn.scale_mul_1H11": (1, heads, 1, 1),
            prefix + "attn.proj.weight": (width, width), prefix + "attn.proj.bias": (width,),
            prefix + "ffn.fc1.weight": (mlp, width), prefix + "ffn.fc1.bias": (mlp,),
            prefix + "ffn.fc2.weight": (width, mlp), prefix + "ffn.fc2.bias": (width,),
            prefix + "ada_lin.1.weight": (6 * width, width), prefix + "ada_lin.1.bias": (6 * width,),
        }
    generator = torch.Generator().manual_seed(0)
    state = {key: 0.02 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    # Saved buffers: level of every token, the block-causal mask, the zero key bias.
    levels = torch.cat([torch.full((n * n,), index) for index, n in enumerate(patch_nums)]).view(1, length)
    state["lvl_1L"] = levels
    state["attn_bias_for_masking"] = torch.where(levels.view(length, 1) >= levels.view(1, length), 0.0,
                                                 -torch.inf).view(1, 1, length, length)
    for block in range(depth):
        state[f"blocks.{block}.attn.zero_k_bias"] = torch.zeros(width)
    return state


def test_official_var_layout_loads_and_samples(tmp_path):
    from adagen.generators.tokenizer import TokenizerConfig, VQTokenizer
    from adagen.generators.var import VAR, VARConfig, VARGenerator

    patch_nums = (1, 2, 4)
    path = tmp_path / "var_d16.pth"
    torch.save(official_var_state_dict(depth=2, width=32, heads=2, num_classes=1000, codebook_size=64,
                                       codebook_dim=8, patch_nums=patch_nums), path)
    network = load_weights(path, VAR(VARConfig(num_classes=1000, depth=2, embed_dim=32, num_heads=2,
                                               codebook_size=64, codebook_dim=8, patch_nums=patch_nums)))
    tokenizer = VQTokenizer(TokenizerConfig(resolution=8, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                            attn_resolutions=(), z_channels=8, codebook_size=64, codebook_dim=8,
                                            norm_groups=4, fused_qkv=True, quant_conv_kernel=3,
                                            patch_nums=patch_nums))
    generator = VARGenerator(network, tokenizer, cfg=1.5, top_k=16, top_p=0.96)
    result = sample_images(generator, np.array([0, 999]), seed=0, batch_size=2, progress=False)
    assert result["images"].shape == (2, 3, 8, 8) and result["nfe"] == len(patch_nums)
