"""The step-wise generator contract, one parametrized test per property over every registered paradigm.

No per-paradigm branches: each paradigm is built from its section of params/smoke.yaml through the
registry. The independent reference samplers at the end are plain loops written for the test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adagen.generators import PARADIGMS
from adagen.generators.base import SampleRNG, StepwiseGenerator
from adagen.generators.tokenizer import build_tokenizer
from adagen.rl.rollout import rollout
from adagen.sampling import class_balanced_labels, sample_images
from conftest import REPO, load_yaml

SMOKE = load_yaml(REPO / "params" / "smoke.yaml")
NUM_CLASSES, RESOLUTION, CHANNELS = 4, 16, 1


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised gates and heads (adaLN-Zero and friends) make an untrained net trivial: perturb all."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return module


def make_tokenizer(paradigm: str):
    """The smoke-size VQ tokenizer of a token paradigm, random weights; None for pixel paradigms."""
    if not PARADIGMS[paradigm].uses_tokenizer:
        return None
    torch.manual_seed(1)
    network = SMOKE["generators"][paradigm]["tokenizer"]["network"]
    return perturbed(build_tokenizer(network, resolution=RESOLUTION, channels=CHANNELS)).eval()


def make_generator(paradigm: str, nfe: int | None = None, **sampling) -> StepwiseGenerator:
    """The smoke-size generator of a paradigm with random (not zero-initialised) weights.

    `nfe` sets the number of decisions' worth of evaluations for the ODE paradigms; `sampling` overrides
    other keys of the params' sampling section.
    """
    spec, section = PARADIGMS[paradigm], SMOKE["generators"][paradigm]
    tokenizer = make_tokenizer(paradigm)
    token_args = {"tokenizer": tokenizer} if tokenizer is not None else {}
    torch.manual_seed(0)
    network = perturbed(spec.build_network(section["network"], resolution=RESOLUTION, channels=CHANNELS,
                                           num_classes=NUM_CLASSES, **token_args))
    sampling = dict(section["sampling"], **({"nfe": nfe} if nfe else {}), **sampling)
    return spec.make_generator(network, sampling, **token_args)


paradigms = pytest.mark.parametrize("paradigm", sorted(PARADIGMS))


@paradigms
def test_declared_contract(paradigm):
    generator = make_generator(paradigm)
    assert generator.num_steps >= 1
    schedule = generator.baseline_schedule()
    assert [spec.name for spec in generator.action_specs] == list(schedule)
    for spec in generator.action_specs:
        values = schedule[spec.name]
        assert values.shape == (generator.num_steps,)
        assert (values >= spec.low).all() and (values <= spec.high).all()
        # The activation's inverse really inverts it on the baseline (the policy's residual relies on it).
        torch.testing.assert_close(spec.activation(spec.inverse(values)), values, atol=1e-4, rtol=1e-4)


@paradigms
def test_shapes_ranges_and_nfe(paradigm):
    generator = make_generator(paradigm)
    labels = torch.tensor([0, 1, 3])
    state = generator.init(labels, SampleRNG([0, 1, 2]))
    schedule = generator.baseline_schedule()
    for k in range(generator.num_steps):
        features = generator.observe(state)
        assert features.shape == (3, math.prod(generator.feature_grid), generator.feature_dim)
        assert torch.isfinite(features).all()
        state = generator.step(state, {name: values[k].repeat(3) for name, values in schedule.items()})
    images = generator.decode(state)
    assert images.shape == (3, CHANNELS, RESOLUTION, RESOLUTION)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    assert generator.nfe(state) > 0 and generator.forwards(state) >= generator.nfe(state)


@paradigms
def test_a_seed_gives_the_same_image_at_any_batch_size(paradigm):
    generator = make_generator(paradigm)
    labels = class_balanced_labels(5, NUM_CLASSES)
    whole = sample_images(generator, labels, seed=7, batch_size=5, progress=False)["images"].astype(int)
    split = sample_images(generator, labels, seed=7, batch_size=2, progress=False)["images"].astype(int)
    alone = sample_images(generator, labels[4:], seed=11, batch_size=1, progress=False)["images"].astype(int)
    assert np.abs(whole - split).max() <= 1 and np.abs(whole[4:] - alone).max() <= 1
    other = sample_images(generator, labels, seed=8, batch_size=5, progress=False)["images"].astype(int)
    assert np.abs(whole - other).max() > 10


@paradigms
def test_per_sample_actions_act_on_their_sample_only(paradigm):
    generator = make_generator(paradigm)
    schedule = generator.baseline_schedule()
    first = generator.action_specs[0].name

    def policy(features, k):
        actions = {name: values[k].repeat(2) for name, values in schedule.items()}
        for spec in generator.action_specs:  # sample 1: every action moved a quarter of the way to a bound
            bound = spec.high if math.isfinite(spec.high) else schedule[spec.name][k] + 2.0
            actions[spec.name][1] = actions[spec.name][1] + 0.25 * (bound - actions[spec.name][1])
        return actions

    labels = torch.tensor([2, 2])
    base = rollout(generator, labels, SampleRNG([4, 5]))
    moved = rollout(generator, labels, SampleRNG([4, 5]), policy)
    torch.testing.assert_close(moved.images[0], base.images[0])
    assert (moved.images[1] - base.images[1]).abs().max() > 1e-3
    assert not torch.equal(moved.actions[first][1], moved.actions[first][0])


@paradigms
def test_rollout_records_the_baseline_actions(paradigm):
    generator = make_generator(paradigm)
    result = rollout(generator, torch.tensor([0, 1]), SampleRNG([0, 1]))
    for name, values in generator.baseline_schedule().items():
        torch.testing.assert_close(result.actions[name], values.expand(2, -1))


# ---------------------------------------------------------------------------------------------------------
# Reference samplers and closed-form models, written for the tests, independent of the package's solver.

def vp_alpha_sigma(t):
    log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    return torch.exp(log_alpha), torch.sqrt(1 - torch.exp(2 * log_alpha))


def interpolant_alpha_sigma(t):
    return t, 1 - t


# Per paradigm: the path x_t = alpha_t x0 + sigma_t eps, the network's time input, and its output as eps.
ODE_PARADIGMS = {
    "dit": dict(alpha_sigma=vp_alpha_sigma, time_input=lambda t: 1000 * t, to_eps=lambda out, x, t: out,
                from_eps_x0=lambda eps, x0: eps),
    "sit": dict(alpha_sigma=interpolant_alpha_sigma, time_input=lambda t: t, to_eps=lambda out, x, t: x - t * out,
                from_eps_x0=lambda eps, x0: x0 - eps),
}
ode_paradigms = pytest.mark.parametrize("paradigm", sorted(ODE_PARADIGMS))


def reference_dpm_solver(model_eps, alpha_sigma, times, x):
    """Plain DPM-Solver++(2S) over a given time list (intermediate points included), written from the paper."""
    def x0_of(x, t):
        alpha, sigma = alpha_sigma(t)
        return (x - sigma * model_eps(x, t)) / alpha

    def lam(t):
        alpha, sigma = alpha_sigma(t)
        return torch.log(alpha / sigma)

    def move(x, x0, s, t):
        (alpha_t, sigma_t), (_, sigma_s) = alpha_sigma(t), alpha_sigma(s)
        return sigma_t / sigma_s * x - alpha_t * (torch.exp(-(lam(t) - lam(s))) - 1) * x0

    i = 0
    while i + 1 < len(times):
        s, s1 = times[i], times[i + 1]
        x0_s = x0_of(x, s)
        if i + 2 == len(times):  # an odd number of evaluations ends with a first-order step
            return move(x, x0_s, s, s1)
        t = times[i + 2]
        x0_s1 = x0_of(move(x, x0_s, s, s1), s1)
        h, r = lam(t) - lam(s), max(lam(s1) - lam(s), torch.tensor(0.01))
        x = move(x, x0_s, s, t) - 0.5 * h / r * alpha_sigma(t)[0] * (torch.exp(-h) - 1) * (x0_s1 - x0_s)
        i += 2
    return x


@ode_paradigms
@pytest.mark.parametrize("nfe", [3, 4])
def test_baseline_actions_reproduce_the_reference_sampler(paradigm, nfe):
    generator = make_generator(paradigm, nfe=nfe)
    spec, network = ODE_PARADIGMS[paradigm], generator.network
    schedule = generator.baseline_schedule()
    labels, null = torch.tensor([1, 3]), torch.full((2,), NUM_CLASSES)
    w = schedule["cfg"][1]

    def model_eps(x, t):
        t_B = torch.full((2,), float(t))
        cond = spec["to_eps"](network(x, spec["time_input"](t_B), labels), x, t)
        uncond = spec["to_eps"](network(x, spec["time_input"](t_B), null), x, t)
        return cond + w * (cond - uncond)

    noise = SampleRNG([3, 4]).randn(CHANNELS, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        expected = reference_dpm_solver(model_eps, spec["alpha_sigma"], schedule["time"], noise)
    images = rollout(generator, labels, SampleRNG([3, 4])).images
    torch.testing.assert_close(images, ((expected + 1) / 2).clamp(0, 1), atol=1e-5, rtol=1e-5)


class GaussianDataModel(torch.nn.Module):
    """Exact denoiser of data ~ N(mu, s^2) per pixel, in the network interface the samplers call."""

    def __init__(self, generator_class, spec, mu=0.3, s=0.5):
        super().__init__()
        template = make_generator(generator_class).network
        self.config, self.grid_size, self.in_channels = template.config, template.grid_size, template.in_channels
        self.spec, self.mu, self.s = spec, mu, s
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the sampler a device to read

    def forward_with_features(self, x, time_input, labels):
        t = (time_input / self.spec["time_input"](torch.ones(()))).view(-1, 1, 1, 1)
        alpha, sigma = self.spec["alpha_sigma"](t)
        variance = alpha**2 * self.s**2 + sigma**2
        eps = sigma * (x - alpha * self.mu) / variance
        x0 = self.mu + alpha * self.s**2 * (x - alpha * self.mu) / variance
        features = torch.zeros(x.shape[0], self.grid_size**2, self.config.hidden_size)
        return self.spec["from_eps_x0"](eps, x0), features


@ode_paradigms
def test_solver_converges_to_the_closed_form_ode_solution(paradigm):
    # For Gaussian data the probability-flow ODE keeps z = (x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2)
    # constant, so the exact end point is known. Measured (float64, this grid): DPM-Solver++(2S) is still
    # pre-asymptotic at these NFE (error ~0.02 at 16, ~0.008 at 64 for VP; ~0.004 at 64 on the interpolant),
    # reaching its second order only past ~100 NFE, where the 0.01 minimum time step starts to bind.
    spec = ODE_PARADIGMS[paradigm]
    errors = []
    for nfe in (16, 64):
        base = make_generator(paradigm, nfe=nfe)
        model = GaussianDataModel(paradigm, spec)
        generator = type(base)(model, nfe=nfe, cfg=0.0, t_start=float(base.baseline_schedule()["time"][0]),
                               t_end=float(base.baseline_schedule()["time"][-1]))
        state = generator.init(torch.tensor([0, 1]), SampleRNG([0, 1]))
        x_start = state.x.clone()
        schedule = generator.baseline_schedule()
        for k in range(generator.num_steps):
            state = generator.step(state, {name: values[k].repeat(2) for name, values in schedule.items()})
        (alpha_0, sigma_0), (alpha_T, sigma_T) = (spec["alpha_sigma"](schedule["time"][i]) for i in (0, -1))
        z = (x_start - alpha_0 * model.mu) / torch.sqrt(alpha_0**2 * model.s**2 + sigma_0**2)
        exact = alpha_T * model.mu + torch.sqrt(alpha_T**2 * model.s**2 + sigma_T**2) * z
        errors.append((state.x - exact).abs().max().item())
    assert errors[1] < 0.01  # 1% of the data scale
    assert errors[0] / errors[1] > 2.5


# Published parameter counts of the paper's settings: DiT and SiT papers, 675M for the XL/2 models; the SD KL-f8
# VAE (sd-vae-ft-ema), 83,653,863; VAR's README, 310M for d16 and 2.0B for d30 (transformer only). No paper
# states a count for MaskGIT-L (AdaNAT's NAT-L) or the two VQ tokenizers: for those the figure is the sum over
# the tensor shapes of the official checkpoints (MaskGIT-L.pth: 314 tensors; MAGE's vqgan_jax_strongaug.ckpt:
# 168; vae_ch160v4096z32.pth: 108,948,355 parameters), read from their public model definitions.
PUBLISHED_PARAMETERS = {
    ("dit", "DiT-XL/2"): 675e6, ("dit", "SD-VAE KL-f8"): 83.65e6, ("sit", "SiT-XL/2"): 675e6,
    ("var", "VAR-d16"): 310e6, ("var", "VAR-d30"): 2.0e9, ("var", "VQVAE vae_ch160v4096z32"): 108_948_355,
    ("maskgit", "MaskGIT-L"): 193_655_297, ("maskgit", "VQGAN f16 (MAGE, JAX)"): 54_515_587,
}


def test_full_size_networks_match_the_published_parameter_counts():
    from click.testing import CliRunner

    from adagen.cli import main
    from adagen.generators import full_size_parameter_counts

    counts = full_size_parameter_counts()
    assert set(counts) == set(PUBLISHED_PARAMETERS)
    for key, published in PUBLISHED_PARAMETERS.items():
        assert abs(counts[key] - published) / published < 0.01, key
    printed = CliRunner().invoke(main, ["info"]).output
    assert "DiT-XL/2" in printed and "675.1M" in printed and "VAR-d30" in printed and "2,010,020,356" in printed


def full_size_state_shapes(paradigm: str, setting: str) -> dict[str, tuple]:
    with torch.device("meta"):
        network = PARADIGMS[paradigm].full_sizes[setting]()
    return {key: tuple(value.shape) for key, value in network.state_dict().items()}


def test_full_size_var_has_the_official_checkpoint_layout():
    # var_d16.pth (FoundationVision/VAR): 220 tensors, buffers included; C = 1024, L = 680 tokens of 10 scales.
    shapes = full_size_state_shapes("var", "VAR-d16")
    assert len(shapes) == 220
    assert shapes["class_emb.weight"] == (1001, 1024) and shapes["word_embed.weight"] == (1024, 32)
    assert shapes["pos_start"] == (1, 1, 1024) and shapes["pos_1LC"] == (1, 680, 1024)
    assert shapes["lvl_embed.weight"] == (10, 1024) and shapes["lvl_1L"] == (1, 680)
    assert shapes["attn_bias_for_masking"] == (1, 1, 680, 680)
    assert shapes["blocks.15.attn.mat_qkv.weight"] == (3072, 1024) and shapes["blocks.15.attn.q_bias"] == (1024,)
    assert shapes["blocks.15.attn.zero_k_bias"] == (1024,) and shapes["blocks.15.attn.scale_mul_1H11"] == (1, 16, 1, 1)
    assert shapes["blocks.15.ffn.fc1.weight"] == (4096, 1024) and shapes["blocks.15.ada_lin.1.weight"] == (6144, 1024)
    assert shapes["head_nm.ada_lin.1.weight"] == (2048, 1024) and shapes["head.weight"] == (4096, 1024)
    vae = full_size_state_shapes("var", "VQVAE vae_ch160v4096z32")
    assert len(vae) == 324
    assert vae["encoder.down.4.attn.1.qkv.weight"] == (1920, 640, 1, 1)
    assert vae["decoder.up.4.attn.2.proj_out.weight"] == (640, 640, 1, 1)
    assert vae["encoder.down.2.block.0.nin_shortcut.weight"] == (320, 160, 1, 1)
    assert vae["quant_conv.weight"] == (32, 32, 3, 3) and vae["quantize.embedding.weight"] == (4096, 32)
    assert vae["quantize.quant_resi.qresi_ls.3.weight"] == (32, 32, 3, 3)
    assert vae["quantize.ema_vocab_hit_SV"] == (10, 4096)


def test_full_size_maskgit_has_the_official_checkpoint_layout():
    # MaskGIT-L.pth (AdaNAT/AdaGen U-ViT): 314 tensors; MAGE's JAX VQGAN: 168, no attention, no quant convs.
    shapes = full_size_state_shapes("maskgit", "MaskGIT-L")
    assert len(shapes) == 314
    assert shapes["token_emb.word_embeddings.weight"] == (1025, 768)
    assert shapes["token_emb.position_embeddings.weight"] == (256, 768)
    assert shapes["context_embed.word_embeddings.weight"] == (1001, 768)
    assert shapes["in_blocks.11.attn.qkv.weight"] == (2304, 768) and "in_blocks.11.attn.qkv.bias" not in shapes
    assert shapes["out_blocks.11.skip_linear.weight"] == (768, 1536) and "mid_block.skip_linear.weight" not in shapes
    assert shapes["mlm_layer.bias"] == (1, 1, 1025) and shapes["mlm_layer.fc.weight"] == (768, 768)
    vqgan = full_size_state_shapes("maskgit", "VQGAN f16 (MAGE, JAX)")
    assert len(vqgan) == 168
    assert vqgan["encoder.conv_in.weight"] == (128, 3, 3, 3) and "encoder.conv_in.bias" not in vqgan
    assert vqgan["encoder.down.2.block.0.nin_shortcut.weight"] == (256, 256, 1, 1)
    assert vqgan["encoder.conv_out.weight"] == (256, 512, 1, 1)
    assert vqgan["decoder.up.1.block.0.nin_shortcut.weight"] == (128, 128, 1, 1)
    assert "decoder.up.0.block.2.conv1.weight" not in vqgan and "quant_conv.weight" not in vqgan
    assert vqgan["quantize.embedding.weight"] == (1024, 256)


def test_full_size_dit_has_the_official_checkpoint_layout():
    # Key names and shapes of facebookresearch/DiT's DiT-XL-2-256x256.pt (from its public model definition).
    from adagen.generators.dit import FULL_SIZES

    with torch.device("meta"):
        shapes = {key: tuple(value.shape) for key, value in FULL_SIZES["DiT-XL/2"]().state_dict().items()}
    assert shapes["pos_embed"] == (1, 256, 1152)
    assert shapes["x_embedder.proj.weight"] == (1152, 4, 2, 2)
    assert shapes["t_embedder.mlp.0.weight"] == (1152, 256)
    assert shapes["y_embedder.embedding_table.weight"] == (1001, 1152)
    assert shapes["blocks.27.attn.qkv.weight"] == (3456, 1152)
    assert shapes["blocks.27.mlp.fc1.weight"] == (4608, 1152)
    assert shapes["blocks.27.adaLN_modulation.1.weight"] == (6912, 1152)
    assert shapes["final_layer.linear.weight"] == (32, 1152)
    assert shapes["final_layer.adaLN_modulation.1.weight"] == (2304, 1152)
    # pos_embed, x_embedder (2), t_embedder (4), y_embedder, 28 blocks x 10, final_layer (4): nothing stray.
    assert len(shapes) == 1 + 2 + 4 + 1 + 28 * 10 + 4


@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_training_loss_with_the_params_objective_is_finite_and_differentiable(paradigm):
    spec, section = PARADIGMS[paradigm], SMOKE["generators"][paradigm]
    generator = make_generator(paradigm)
    network = generator.network.train()
    trainable = [p for name, p in network.named_parameters() if name != "pos_embed"]  # DiT's is fixed sin-cos
    for parameter in trainable:
        parameter.requires_grad_(True)
    token_args = {"tokenizer": generator.tokenizer} if spec.uses_tokenizer else {}
    loss = spec.training_loss(network, torch.rand(6, CHANNELS, RESOLUTION, RESOLUTION), torch.arange(6) % 4,
                              torch.Generator().manual_seed(0), **section["objective"], **token_args)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


@ode_paradigms
def test_latent_generators_decode_through_the_autoencoder(paradigm):
    """Full-size DiT/SiT sample 4-channel latents and decode them with diffusers' AutoencoderKL (tiny here)."""
    from adagen.generators.latent import LatentDecoder, sd_vae

    torch.manual_seed(0)
    vae = sd_vae(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4, sample_size=16)
    section = SMOKE["generators"][paradigm]
    network = PARADIGMS[paradigm].build_network(dict(section["network"], patch_size=2), resolution=8, channels=4,
                                                num_classes=NUM_CLASSES)
    generator = type(make_generator(paradigm))(network, **section["sampling"], guided_channels=3,
                                               decoder=LatentDecoder(vae))
    images = rollout(generator, torch.tensor([0, 1, 2]), SampleRNG([0, 1, 2])).images
    assert images.shape == (3, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    alone = rollout(generator, torch.tensor([1]), SampleRNG([1])).images
    torch.testing.assert_close(alone[0], images[1], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Token paradigms: plain reference samplers (one sample at a time, no batching, no KV cache), the same
# per-sample noise protocol (one uniform draw per step of shape (positions, V + 1) for MaskGIT, (positions, V)
# for VAR, Gumbel-max sampling), and the properties specific to each.

def gumbel_of(uniform):
    return -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))


def reference_maskgit(generator, label: int, seed: int):
    """MaskGIT decoding of METHOD.md 1.4 for one sample, with the baseline schedule."""
    network, schedule = generator.network, generator.baseline_schedule()
    rng = torch.Generator().manual_seed(seed)
    mask_id, length, vocab = network.mask_id, network.config.num_tokens, network.config.codebook_size
    ids = torch.full((1, length), mask_id)
    for k in range(generator.num_steps):
        cond = network(ids, torch.tensor([label]))[0]
        uncond = network(ids, torch.tensor([NUM_CLASSES]))[0]
        logits = cond + schedule["cfg"][k] * (cond - uncond)
        noise = torch.rand(length, vocab + 1, generator=rng)
        drawn = (logits / schedule["sample_temp"][k] + gumbel_of(noise[:, :vocab])).argmax(-1)
        confidence = torch.log_softmax(logits, -1)[torch.arange(length), drawn]
        sampled = ids[0].clone()
        for i in range(length):
            if ids[0, i] == mask_id:
                sampled[i] = drawn[i]
            else:
                confidence[i] = float("inf")
        n_masked = min(int(math.floor(length * float(schedule["mask_ratio"][k]))), length - 1)
        perturbed = confidence + schedule["gumbel_temp"][k] * gumbel_of(noise[:, vocab])
        threshold = sorted(perturbed.tolist())[n_masked]
        ids = torch.where(perturbed < threshold, mask_id, sampled).unsqueeze(0)
    return generator.tokenizer.decode_indices(sampled.unsqueeze(0))[0]


def reference_var(generator, label: int, seed: int):
    """Next-scale sampling for one sample through the teacher-forcing forward (full block-causal mask): the
    inputs of later scales are zeros, which the mask keeps from influencing the scales already sampled."""
    network, quantizer, schedule = generator.network, generator.tokenizer.quantize, generator.baseline_schedule()
    rng = torch.Generator().manual_seed(seed)
    patch_nums, vocab = network.patch_nums, network.config.codebook_size
    side, width = patch_nums[-1], quantizer.embedding.weight.shape[1]
    inputs = torch.zeros(1, network.L - network.first_l, width)
    f_hat = torch.zeros(1, width, side, side)
    for si, pn in enumerate(patch_nums):
        begin, end = network.begin_ends[si]
        cond = network(torch.tensor([label]), inputs)[0, begin:end]
        uncond = network(torch.tensor([NUM_CLASSES]), inputs)[0, begin:end]
        t = schedule["cfg"][si] * si / (len(patch_nums) - 1)
        logits = (1 + t) * cond - t * uncond
        k = int(schedule["top_k"][si])
        logits[logits < logits.topk(k, dim=-1).values[:, -1:]] = -math.inf
        for row in logits:  # nucleus: drop the least likely tokens holding at most 1 - p of the mass
            order = row.argsort()
            cumulative = row[order].softmax(-1).cumsum(-1)
            dropped = order[:-1][cumulative[:-1] <= 1 - schedule["top_p"][si]]
            row[dropped] = -math.inf
        noise = torch.rand(pn * pn, vocab, generator=rng)
        tokens = (logits / schedule["sample_temp"][si] + gumbel_of(noise)).argmax(-1)
        token_map = quantizer.embedding(tokens).T.reshape(1, width, pn, pn)
        upsampled = torch.nn.functional.interpolate(token_map, size=(side, side), mode="bicubic") if pn != side \
            else token_map
        f_hat = f_hat + quantizer.quant_resi.for_scale(si, len(patch_nums))(upsampled)
        if si + 1 < len(patch_nums):
            nxt = patch_nums[si + 1]
            following = torch.nn.functional.interpolate(f_hat, size=(nxt, nxt), mode="area")
            b, e = network.begin_ends[si + 1]
            inputs[0, b - network.first_l : e - network.first_l] = following.flatten(2)[0].T
    return generator.tokenizer.to_unit(generator.tokenizer.decode_latent(f_hat))[0]


REFERENCE_SAMPLERS = {"maskgit": reference_maskgit, "var": reference_var}


@pytest.mark.parametrize("paradigm", sorted(REFERENCE_SAMPLERS))
def test_baseline_actions_reproduce_the_reference_token_sampler(paradigm):
    generator = make_generator(paradigm)
    labels, seeds = [1, 3, 0], [5, 6, 7]
    with torch.no_grad():
        expected = torch.stack([REFERENCE_SAMPLERS[paradigm](generator, y, s) for y, s in zip(labels, seeds)])
    images = rollout(generator, torch.tensor(labels), SampleRNG(seeds)).images
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=1e-5)


def test_var_with_and_without_kv_cache_agree():
    cached, uncached = make_generator("var"), make_generator("var", kv_cache=False)
    labels, seeds = torch.tensor([0, 2, 3]), [0, 1, 2]
    with_cache = rollout(cached, labels, SampleRNG(seeds))
    without = rollout(uncached, labels, SampleRNG(seeds))
    torch.testing.assert_close(with_cache.images, without.images, atol=1e-5, rtol=1e-5)
    assert with_cache.nfe == without.nfe == len(cached.patch_nums)


def test_maskgit_never_changes_a_revealed_token():
    generator = make_generator("maskgit", steps=6)
    state = generator.init(torch.tensor([0, 1, 2, 3]), SampleRNG([0, 1, 2, 3]))
    mask_id = generator.network.mask_id
    generator_rng = torch.Generator().manual_seed(0)
    revealed_counts = []
    for k in range(generator.num_steps):
        # Random per-sample actions, including ratios that would re-mask more than is still masked.
        actions = {"mask_ratio": torch.rand(4, generator=generator_rng),
                   "gumbel_temp": 3 * torch.rand(4, generator=generator_rng),
                   "sample_temp": 0.2 + torch.rand(4, generator=generator_rng),
                   "cfg": 2 * torch.rand(4, generator=generator_rng)}
        before = state.ids.clone()
        state = generator.step(state, actions)
        kept = before != mask_id
        assert torch.equal(state.sampled[kept], before[kept])
        assert torch.equal(state.ids[kept], before[kept])  # never re-masked either
        revealed_counts.append((state.ids != mask_id).sum(1))
    assert (state.sampled != mask_id).all()  # the decoded tokens are all filled
    assert (torch.stack(revealed_counts).diff(dim=0) >= 0).all()


def test_multiscale_tokenizer_scales_add_up_to_its_latent():
    # Quantizing and re-embedding through next_input rebuilds exactly the f_hat the quantizer's forward builds.
    tokenizer = make_tokenizer("var")
    images = torch.rand(2, CHANNELS, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        latent = tokenizer.encode(tokenizer.from_unit(images))
        quantized, _ = tokenizer.quantize(latent)
        indices = tokenizer.quantize.indices(latent)
        f_hat = torch.zeros_like(latent)
        for si, idx in enumerate(indices):
            f_hat, _ = tokenizer.quantize.next_input(si, f_hat, idx)
    assert [idx.shape[1] for idx in indices] == [pn * pn for pn in tokenizer.config.patch_nums]
    torch.testing.assert_close(f_hat, quantized, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family, expected", [
    ("cosine", lambda r: np.cos(np.pi / 2 * r)), ("linear", lambda r: 1 - r), ("square", lambda r: 1 - r**2),
    ("cubic", lambda r: 1 - r**3), ("sqrt", lambda r: 1 - np.sqrt(r)),
])
def test_maskgit_mask_schedule_families(family, expected):
    generator = make_generator("maskgit", mask_schedule=family)
    r = (np.arange(generator.num_steps) + 1 - 1e-3) / generator.num_steps
    ratio = generator.baseline_schedule()["mask_ratio"].numpy()
    np.testing.assert_allclose(ratio, np.clip(expected(r), 0, 1), atol=1e-6)
    assert np.all(np.diff(ratio) < 0)  # fewer tokens masked after every step


def test_maskgit_unknown_mask_schedule_is_an_error():
    with pytest.raises(ValueError, match="mask_schedule 'zigzag': choose from cosine, linear"):
        make_generator("maskgit", mask_schedule="zigzag")


# ------------------------------------------------------------------------------ value-guided lookahead

stochastic = pytest.mark.parametrize("paradigm", sorted(name for name, p in PARADIGMS.items() if p.stochastic_steps))


def random_critic(generator: StepwiseGenerator):
    from adagen.policy.network import PolicyConfig, PolicyNet

    torch.manual_seed(5)
    return perturbed(PolicyNet(PolicyConfig(feature_dim=generator.feature_dim, grid=generator.feature_grid,
                                            num_outputs=1, hidden_size=16, conv_channels=4, mlp_sizes=(16, 8)))).eval()


@stochastic
def test_lookahead_of_one_candidate_is_plain_sampling(paradigm):
    from adagen.rl.rollout import Lookahead

    generator = make_generator(paradigm)
    labels = torch.tensor([0, 1, 2, 3])
    plain = rollout(generator, labels, SampleRNG(range(4)))
    one = rollout(generator, labels, SampleRNG(range(4)), lookahead=Lookahead(random_critic(generator), 1))
    assert torch.equal(plain.images, one.images) and one.critic_calls == 0 and one.nfe == plain.nfe


@stochastic
def test_lookahead_follows_the_critic_and_counts_its_compute(paradigm):
    from adagen.rl.rollout import Lookahead

    generator, candidates = make_generator(paradigm), 3
    critic = random_critic(generator)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    plain = rollout(generator, labels, SampleRNG(range(6)))
    guided = rollout(generator, labels, SampleRNG(range(6)), lookahead=Lookahead(critic, candidates))
    branching = generator.num_steps - 1  # the last step has no next state to value
    per_step_nfe = plain.nfe / generator.num_steps
    assert guided.critic_calls == candidates * branching
    assert guided.nfe - plain.nfe == pytest.approx((candidates - 1) * branching * per_step_nfe, abs=(candidates - 1) * branching)
    assert not torch.equal(plain.images, guided.images)
    # The branches draw from per-sample forks: the batch does not change a sample's result.
    halves = [rollout(generator, labels[i : i + 3], SampleRNG(range(i, i + 3)), lookahead=Lookahead(critic, candidates))
              for i in (0, 3)]
    assert torch.equal(torch.cat([half.images for half in halves]), guided.images)


def test_pick_per_sample_takes_each_samples_rows_from_its_candidate():
    from dataclasses import dataclass

    from adagen.generators.base import pick_per_sample

    @dataclass(frozen=True)
    class State:
        step: int
        rows: torch.Tensor  # (B, 2)
        doubled: torch.Tensor  # (2B,): cond rows then uncond rows
        cache: list  # [(keys (2B, 1), values (2B, 1))]

    def state(offset: float) -> State:
        return State(7, torch.arange(6.0).view(3, 2) + offset, torch.arange(6.0) + offset,
                     [(torch.arange(6.0).view(6, 1) + offset, -torch.arange(6.0).view(6, 1) - offset)])

    picked = pick_per_sample([state(0), state(100), state(200)], torch.tensor([2, 0, 1]))
    assert picked.step == 7
    assert picked.rows.tolist() == [[200, 201], [2, 3], [104, 105]]
    assert picked.doubled.tolist() == [200, 1, 102, 203, 4, 105]
    assert picked.cache[0][0].view(-1).tolist() == [200, 1, 102, 203, 4, 105]
