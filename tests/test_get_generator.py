"""The get-generator stage: a `source: download` setting fetches official-layout weights through the asset registry
(here from a mirror folder the test fills with small files of the official key names and shapes), loads them
strictly, and the later stages sample from what it wrote."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from adagen.cli import main
from adagen.config import ParamsError, Paths, load_params
from adagen.generators.latent import sd_vae
from adagen.generators.tokenizer import build_tokenizer
from adagen.io import load_checkpoint, load_npz, sha256_of_file
from conftest import REPO, load_yaml
from test_official_weights import official_dit_state_dict, official_var_state_dict

SMALL_VAE = dict(checkpoint="sd-vae-ft-ema", block_out_channels=[32, 32], layers_per_block=1, latent_channels=4,
                 scaling_factor=0.18215)
VAR_TOKENIZER = dict(ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=8, codebook_size=64,
                     codebook_dim=8, norm_groups=4, mid_attention=True, quant_conv_kernel=3, style="taming",
                     fused_qkv=True, patch_nums=[1, 2, 4, 8], quant_resi=0.5, share_quant_resi=4)


def downloaded_params(tmp_path) -> dict:
    """The smoke set with two downloaded settings, a DiT in a KL latent and a VAR, at 16 px RGB."""
    params = load_yaml(REPO / "params" / "smoke.yaml")
    params["data"]["channels"] = 3
    params["paradigms"] = ["dit-official", "var-d2"]
    params["assets"] = {"folder": str(tmp_path / "assets"), "mirror": str(tmp_path / "mirror")}
    params["generators"] = {
        "dit-official": {
            "source": "download", "checkpoint": "dit-xl-2-256", "num_classes": 10, "vae": SMALL_VAE,
            "network": dict(hidden_size=32, depth=2, num_heads=2, patch_size=2, mlp_ratio=4.0, class_dropout_prob=0.1,
                            learn_sigma=True),
            "sampling": dict(nfe=3, cfg=1.5, t_start=0.9, t_end=0.01, guided_channels=3),
        },
        "var-d2": {
            "source": "download", "checkpoint": "var-d16", "num_classes": 10,
            "tokenizer": {"checkpoint": "var-vqvae", "network": VAR_TOKENIZER},
            "network": dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=4.0, cond_drop_rate=0.1, attn_l2_norm=True),
            "sampling": dict(cfg=1.5, top_k=16, top_p=0.96, sample_temp=1.0),
        },
    }
    params["adagen"]["smoothing"] = {"dit-official": 0.4, "var-d2": 0.0}
    params["adagen"]["tuning"]["grids"] = {"dit-official": {"cfg": [1.0, 2.0]}}
    return params


def fill_mirror(folder) -> None:
    """Files named as the registry names them, in the official layouts at reduced widths."""
    folder.mkdir()
    torch.save({"model": {}, "ema": official_dit_state_dict(input_size=8, in_channels=4, hidden=32, depth=2, patch=2,
                                                           num_classes=10, learn_sigma=True)},
               folder / "DiT-XL-2-256x256.pt")
    torch.manual_seed(0)
    vae_settings = {key: value for key, value in SMALL_VAE.items() if key != "checkpoint"}
    vae = sd_vae(**vae_settings, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    save_file(vae.state_dict(), folder / "sd-vae-ft-ema.safetensors")
    torch.save(official_var_state_dict(depth=2, width=32, heads=2, num_classes=10, codebook_size=64, codebook_dim=8,
                                       patch_nums=(1, 2, 4, 8)), folder / "var_d16.pth")
    torch.save(build_tokenizer(VAR_TOKENIZER, resolution=16, channels=3).state_dict(), folder / "vae_ch160v4096z32.pth")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "dl.yaml").write_text(yaml.safe_dump(downloaded_params(tmp_path)))
    fill_mirror(tmp_path / "mirror")
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_downloaded_generators_are_fetched_verified_and_sample(workdir):
    params_file = "params/dl.yaml"
    assert run("prepare-data", "--params", params_file).exit_code == 0
    paths = Paths.for_params_file(params_file)
    for setting in ("dit-official", "var-d2"):
        result = run("get-generator", "--params", params_file, "--paradigm", setting)
        assert result.exit_code == 0, result.output
    # The generator file names the fetched file and the hash fetch verified, instead of copying the weights.
    saved = load_checkpoint(paths.generator("dit-official"))
    fetched = workdir / "assets" / "DiT-XL-2-256x256.pt"
    assert saved["weights"] == str(fetched) and saved["sha256"] == sha256_of_file(fetched)
    assert saved["license"] == "CC-BY-NC-4.0" and "state_dict" not in saved
    assert saved["vae"]["sha256"] == sha256_of_file(workdir / "assets" / "sd-vae-ft-ema.safetensors")
    record = json.loads((workdir / "assets" / "DiT-XL-2-256x256.pt.source.json").read_text())
    assert record["source"] == str(workdir / "mirror" / "DiT-XL-2-256x256.pt")
    assert load_checkpoint(paths.tokenizer("var-d2"))["asset"] == "var-vqvae"
    info = json.loads(paths.generator_info("var-d2").read_text())
    assert set(info["files"]) == {"generator", "tokenizer"} and info["parameters"] > 0

    # The sampling stage reads them like a pretrained generator: RGB pixels decoded from the latents by the VAE.
    for setting in ("dit-official", "var-d2"):
        result = run("sample", "--params", params_file, "--paradigm", setting, "--variant", "static")
        assert result.exit_code == 0, result.output
        samples = load_npz(paths.samples(setting, "static"))
        assert samples["images"].shape == (80, 3, 16, 16) and samples["images"].dtype == np.uint8
    assert int(load_npz(paths.samples("dit-official", "static"))["nfe"]) == 3


def test_a_swapped_weights_file_is_caught(workdir):
    params_file = "params/dl.yaml"
    assert run("prepare-data", "--params", params_file).exit_code == 0
    assert run("get-generator", "--params", params_file, "--paradigm", "dit-official").exit_code == 0
    with open(workdir / "assets" / "DiT-XL-2-256x256.pt", "ab") as handle:
        handle.write(b"tampered")
    result = CliRunner().invoke(main, ["sample", "--params", params_file, "--paradigm", "dit-official",
                                       "--variant", "static", "--count", "2", "--grid", "grid.png"])
    assert result.exit_code != 0 and "DiT-XL-2-256x256.pt has" in result.output and "when fetched" in result.output


def test_wrong_layout_and_unknown_assets_give_clear_errors(workdir):
    params_file = "params/dl.yaml"
    torch.save({"unrelated.weight": torch.zeros(2)}, workdir / "mirror" / "var_d16.pth")
    result = run("get-generator", "--params", params_file, "--paradigm", "var-d2")
    assert result.exit_code != 0 and "var_d16.pth does not fit VAR" in result.output
    result = run("get-generator", "--params", params_file, "--paradigm", "var")
    assert result.exit_code != 0 and "not in paradigms" in result.output

    params = downloaded_params(workdir)
    params["generators"]["var-d2"]["checkpoint"] = "var-d99"
    with pytest.raises(ParamsError, match=r"generators\.var-d2\.checkpoint: unknown asset 'var-d99'"):
        from adagen.config import validate_params

        validate_params(params)
    params = downloaded_params(workdir)
    params["generators"]["var-d2"]["pretrain"] = params["generators"]["var-d2"]["sampling"]
    with pytest.raises(ParamsError, match=r"generators\.var-d2\.pretrain: not used here"):
        from adagen.config import validate_params

        validate_params(params)
    assert load_params(workdir / "params" / "dl.yaml")["paradigms"] == ["dit-official", "var-d2"]


def official_policy_state_dict(*, feature_dim: int, hidden: int, conv: int, mlp: tuple[int, int], grid: int,
                               actions: int, seed: int = 0) -> dict:
    """Key names and shapes of the AdaGen release's PolicyBackbone (METHOD.md 2.1), written out independently of
    our class: the x embedder, the step MLP, three adaptive LayerNorms, the two convolutions, the three linears."""
    half = (grid + 1) // 2
    shapes = {
        "x_embedder.weight": (hidden, feature_dim), "x_embedder.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
        "dw_conv.weight": (hidden, 1, 3, 3), "dw_conv.bias": (hidden,),
        "pw_conv.weight": (conv, hidden, 1, 1), "pw_conv.bias": (conv,),
        "linear1.weight": (mlp[0], conv * half * half), "linear1.bias": (mlp[0],),
        "linear2.weight": (mlp[1], mlp[0]), "linear2.bias": (mlp[1],),
        "linear3.weight": (actions, mlp[1]), "linear3.bias": (actions,),
    }
    for index, width in ((1, hidden), (2, mlp[0]), (3, mlp[1])):
        shapes |= {f"adaLN{index}.adaLN_modulation.1.weight": (2 * width, hidden),
                   f"adaLN{index}.adaLN_modulation.1.bias": (2 * width,)}
    generator = torch.Generator().manual_seed(seed)
    return {key: 0.3 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def test_released_policy_is_fetched_and_samples(workdir):
    """The `released` variant: an AdaGen policy file (actor only, the release's module names) drives sampling."""
    params = downloaded_params(workdir)
    params["paradigms"] = ["dit-official"]
    params["variants"] = ["static", "released"]
    params["generators"]["dit-official"]["released_policy"] = "adagen-policy-dit"
    (workdir / "params" / "dl.yaml").write_text(yaml.safe_dump(params))
    policy = params["adagen"]["policy"]
    torch.save(official_policy_state_dict(feature_dim=32, hidden=policy["hidden_size"], conv=policy["conv_channels"],
                                          mlp=tuple(policy["mlp_sizes"]), grid=4, actions=2),
               workdir / "mirror" / "dit_policy.pth")
    params_file, paths = "params/dl.yaml", Paths.for_params_file("params/dl.yaml")
    for stage in (["prepare-data"], ["get-generator", "--paradigm", "dit-official"],
                  ["get-policy", "--paradigm", "dit-official"],
                  ["sample", "--paradigm", "dit-official", "--variant", "static"],
                  ["sample", "--paradigm", "dit-official", "--variant", "released"]):
        result = run(stage[0], "--params", params_file, *stage[1:])
        assert result.exit_code == 0, result.output
    assert load_checkpoint(paths.policy("dit-official", "released"))["policy"]["asset"] == "adagen-policy-dit"
    static, released = (load_npz(paths.samples("dit-official", v)) for v in ("static", "released"))
    # Same noise, other schedule: the released policy moves the actions away from the baseline per sample.
    assert not np.allclose(static["action_cfg"], released["action_cfg"])
    assert released["action_cfg"][:, 1:].std(axis=0).max() > 0  # per-sample choices
    assert int(released["nfe"]) == int(static["nfe"]) == 3


def test_the_paper_policy_sizes():
    """Our policy network at the paper's size has the parameter counts of the released policies (METHOD.md 2.1)."""
    from adagen.policy.network import PolicyConfig, PolicyNet

    counts = {}
    for name, feature_dim, actions in (("maskgit", 768, 4), ("dit", 1152, 2), ("var-d16", 1024, 4), ("var-d30", 1920, 4)):
        with torch.device("meta"):
            network = PolicyNet(PolicyConfig(feature_dim=feature_dim, grid=(16, 16), num_outputs=actions))
        counts[name] = round(sum(p.numel() for p in network.parameters()) / 1e6, 2)
        state = official_policy_state_dict(feature_dim=8, hidden=16, conv=4, mlp=(16, 8), grid=16, actions=actions)
        small = PolicyNet(PolicyConfig(feature_dim=8, grid=(16, 16), num_outputs=actions, hidden_size=16,
                                       conv_channels=4, mlp_sizes=(16, 8)))
        small.load_state_dict(state, strict=True)  # the release's names and shapes, no key surgery
    assert counts == {"maskgit": 11.88, "dit": 12.07, "var-d16": 12.01, "var-d30": 12.47}
