"""params/imagenet.yaml: the DAG of the five paper settings plans, its networks are the paper's full sizes, and the
pieces only a full-scale run uses (ADM's centre crop, class-balanced ImageNet subsets, the downloaded DINO backbone)
work at a size a CPU runs."""

from __future__ import annotations

import subprocess
from dataclasses import asdict

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from adagen.config import Paths, load_params
from adagen.data.dataset import DatasetError
from adagen.data.folder import read_folder
from adagen.data.imaging import to_square_array
from adagen.generators import paradigm_of
from adagen.generators.tokenizer import build_tokenizer
from adagen.io import load_checkpoint
from adagen.reward.backbone import IMAGENET_MEAN, backbone_input, load_backbone
from adagen.reward.discriminator import ProjectedDiscriminator, discriminator_config
from conftest import REPO, load_yaml
from test_workflow import snakemake_jobs

SETTINGS = ["maskgit", "var-d16", "var-d30", "dit", "sit"]


def test_the_imagenet_dag_plans_every_stage_of_the_five_settings():
    params = load_params(REPO / "params" / "imagenet.yaml")
    assert params["paradigms"] == SETTINGS
    jobs = snakemake_jobs(REPO, "all", "--configfile", "params/imagenet.yaml")  # the option takes several values: last
    stages = {}
    for command in jobs:
        words = command.split()
        setting = words[words.index("--paradigm") + 1] if "--paradigm" in words else None
        stages.setdefault(words[1], set()).add(setting)
    per_setting = {"get-generator", "get-policy", "tune-static", "train", "sample", "evaluate"}
    assert set(stages) == per_setting | {"prepare-data", "train-evaluator", "refstats", "train-reward-backbone", "report"}
    for stage in per_setting:
        assert stages[stage] == set(SETTINGS), stage
    assert "pretrain" not in stages and "train-tokenizer" not in stages  # official weights, nothing trained but policies
    variants = {(words[words.index("--paradigm") + 1], words[words.index("--variant") + 1])
                for words in map(str.split, jobs) if words[1] == "evaluate"}
    assert variants == {(s, v) for s in SETTINGS for v in params["variants"]}
    # The token settings' tokenizers come with their generators.
    outputs = {path for command, paths in jobs.items() if command.split()[1] == "get-generator" for path in paths}
    assert "results/imagenet/var-d30/tokenizer/tokenizer.pt" in outputs


def test_the_imagenet_networks_are_the_paper_sizes():
    """Each setting's params build exactly the full-size network of its paradigm (checked on the meta device)."""
    params = load_params(REPO / "params" / "imagenet.yaml")
    full_sizes = {"maskgit": "MaskGIT-L", "var-d16": "VAR-d16", "var-d30": "VAR-d30", "dit": "DiT-XL/2", "sit": "SiT-XL/2"}
    tokenizers = {"maskgit": "VQGAN f16 (MAGE, JAX)", "var-d16": "VQVAE vae_ch160v4096z32",
                  "var-d30": "VQVAE vae_ch160v4096z32"}
    for setting, size in full_sizes.items():
        section, spec = params["generators"][setting], paradigm_of(setting)
        with torch.device("meta"):
            extra = {}
            if setting in tokenizers:
                extra["tokenizer"] = build_tokenizer(section["tokenizer"]["network"], resolution=256, channels=3)
                assert asdict(extra["tokenizer"].config) == asdict(spec.full_sizes[tokenizers[setting]]().config)
            side, channels = (32, 4) if "vae" in section else (256, 3)
            ours = spec.build_network(section["network"], resolution=side, channels=channels,
                                      num_classes=section["num_classes"], **extra)
            paper = spec.full_sizes[size]()
        assert asdict(ours.config) == asdict(paper.config), setting


def test_adm_centre_crop():
    """guided-diffusion's center_crop_arr: box halvings while the short side is >= 2x, bicubic, centred crop."""
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (400, 600, 3), dtype=np.uint8))
    cropped = to_square_array(picture, 64, 3, crop="adm")
    expected = picture.resize((300, 200), Image.Resampling.BOX).resize((150, 100), Image.Resampling.BOX)
    expected = expected.resize((96, 64), Image.Resampling.BICUBIC).crop((16, 0, 80, 64))
    assert np.array_equal(cropped, np.asarray(expected).transpose(2, 0, 1))
    assert not np.array_equal(cropped, to_square_array(picture, 64, 3, crop="fit"))


def write_classes(root, counts) -> None:
    rng = np.random.default_rng(1)
    for index, count in enumerate(counts):
        (root / f"n{index:08d}").mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / f"n{index:08d}" / f"{i}.png")


def test_class_balanced_subset_of_a_folder(tmp_path):
    write_classes(tmp_path / "train", [5, 7, 6])
    subset = read_folder(tmp_path / "train", 16, 3, crop="adm", per_class=4, seed=0)
    assert np.bincount(subset.labels).tolist() == [4, 4, 4]
    again = read_folder(tmp_path / "train", 16, 3, crop="adm", per_class=4, seed=0)
    assert np.array_equal(subset.images, again.images)
    other = read_folder(tmp_path / "train", 16, 3, crop="adm", per_class=4, seed=1)
    assert not np.array_equal(subset.images, other.images)
    with pytest.raises(DatasetError, match="per_class 7, but 2 class folders have fewer images"):
        read_folder(tmp_path / "train", 16, 3, per_class=7)


def test_downloaded_dino_backbone_feeds_the_discriminator(tmp_path, monkeypatch):
    """`reward_backbone.source: download`: DINO's timm layout (no head) at a reduced width, fetched from a mirror."""
    monkeypatch.chdir(tmp_path)
    network = dict(patch_size=8, embed_dim=24, depth=2, num_heads=2, mlp_ratio=4.0)
    (tmp_path / "mirror").mkdir()
    torch.manual_seed(0)
    save_file(VisionTransformer(img_size=32, in_chans=3, num_classes=0, **network).state_dict(),
              tmp_path / "mirror" / "vit_small_patch16_224.dino.safetensors")
    params = load_yaml(REPO / "params" / "smoke.yaml")
    params["assets"] = {"folder": str(tmp_path / "assets"), "mirror": str(tmp_path / "mirror")}
    params["adagen"]["reward_backbone"] = {"source": "download", "checkpoint": "dino-vits16", "image_size": 32,
                                           "network": network}
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "dino.yaml").write_text(yaml.safe_dump(params))
    from adagen.cli import main

    result = CliRunner().invoke(main, ["train-reward-backbone", "--params", "params/dino.yaml"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = load_checkpoint(Paths.for_params_file("params/dino.yaml").reward_backbone)
    assert backbone_input(saved) == {"resolution": 32, "mean": IMAGENET_MEAN, "std": (0.229, 0.224, 0.225)}
    discriminator = ProjectedDiscriminator(load_backbone(saved), discriminator_config(
        params["adagen"]["discriminator"], num_classes=10, **backbone_input(saved)))
    logits = discriminator(torch.rand(2, 1, 16, 16), torch.tensor([0, 3]))  # grey 16 px images, resized for DINO
    assert logits.shape[0] == 2 and torch.isfinite(logits).all()
