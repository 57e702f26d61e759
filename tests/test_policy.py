"""The policy network, the action map and the PPO pieces (METHOD.md 1.2, 2, 3)."""

from __future__ import annotations

import math

import pytest
import torch

from adagen.generators import PARADIGMS
from adagen.generators.base import SampleRNG
from adagen.policy.actions import ActionMap, inverse_smooth, smooth
from adagen.policy.agent import AdaptivePolicy, gaussian_log_prob
from adagen.policy.network import PolicyConfig, PolicyNet, build_policy
from adagen.rl.ppo import exploration_std, normalize_returns, ppo_losses
from adagen.rl.rollout import rollout
from test_generators import make_generator

SMOOTHING = {"maskgit": 0.8, "var": 0.0, "dit": 0.4, "sit": 0.8}  # METHOD.md 1.2, per paradigm
SMALL_POLICY = {"hidden_size": 32, "conv_channels": 8, "mlp_sizes": [32, 16]}


@pytest.mark.parametrize("feature_dim,actions,published", [
    (768, 4, 11.88e6), (768, 1, 11.87e6), (1152, 2, 12.07e6), (1024, 4, 12.01e6), (1920, 4, 12.47e6)])
def test_full_size_policy_matches_the_paper_size(feature_dim, actions, published):
    # METHOD.md 2.1: ~12M for every paradigm (MaskGIT-L, DiT/SiT-XL/2, VAR-d16, VAR-d30; critic with one output).
    with torch.device("meta"):
        network = PolicyNet(PolicyConfig(feature_dim, (16, 16), actions))
    assert abs(sum(p.numel() for p in network.parameters()) - published) / published < 0.001


def test_policy_has_the_released_checkpoint_layout():
    # AdaGen's maskgit_policy.pth: 22 tensors, no prefix (LeapLabTHU/AdaGen core/policy_backbone.py).
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in PolicyNet(PolicyConfig(768, (16, 16), 4)).state_dict().items()}
    assert len(shapes) == 22
    assert shapes["x_embedder.weight"] == (512, 768) and shapes["t_embedder.mlp.0.weight"] == (512, 256)
    assert shapes["adaLN1.adaLN_modulation.1.weight"] == (1024, 512) and shapes["dw_conv.weight"] == (512, 1, 3, 3)
    assert shapes["pw_conv.weight"] == (128, 512, 1, 1) and shapes["linear1.weight"] == (1024, 8192)
    assert shapes["adaLN2.adaLN_modulation.1.weight"] == (2048, 512) and shapes["linear3.weight"] == (4, 512)


def test_smoothing_inverts_exactly():
    sequence = torch.randn(9, dtype=torch.float64)
    for s in (0.0, 0.4, 0.8):
        torch.testing.assert_close(smooth(inverse_smooth(sequence, s), s), sequence)
    assert smooth(torch.tensor([1.0, 0.0, 0.0]), 0.5).tolist() == [1.0, 0.5, 0.25]


def small_policy(generator, num_outputs=None) -> PolicyNet:
    return build_policy(SMALL_POLICY, feature_dim=generator.feature_dim, grid=generator.feature_grid,
                        num_outputs=num_outputs or len(generator.action_specs))


@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_zero_policy_output_reproduces_the_baseline_schedule(paradigm):
    generator = make_generator(paradigm)
    policy = AdaptivePolicy(small_policy(generator), ActionMap(generator, SMOOTHING[paradigm]))
    labels, seeds = torch.tensor([0, 1, 2]), [3, 4, 5]
    adaptive = rollout(generator, labels, SampleRNG(seeds), policy)
    static = rollout(generator, labels, SampleRNG(seeds))
    for name, values in generator.baseline_schedule().items():
        torch.testing.assert_close(adaptive.actions[name], values.expand(3, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adaptive.images, static.images, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_policy_reads_the_generator_grid_and_moves_actions_per_sample(paradigm):
    generator = make_generator(paradigm)
    network = small_policy(generator)
    torch.nn.init.normal_(network.linear3.weight, std=0.5)  # a trained-looking head
    policy = AdaptivePolicy(network, ActionMap(generator, SMOOTHING[paradigm]))
    result = rollout(generator, torch.tensor([0, 1, 2, 3]), SampleRNG([0, 1, 2, 3]), policy)
    first = generator.action_specs[0].name
    assert result.actions[first].shape == (4, generator.num_steps)
    # Different features give different actions; the first decision of DiT/SiT sees zeros (same for all).
    assert (result.actions[first][:, -1] - result.actions[first][0, -1]).abs().max() > 1e-4


@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_blend_of_two_policies_around_their_own_schedules(paradigm):
    # The fidelity-diversity knob: each policy acts around its own schedule (the fidelity policy around the
    # precision-tuned one); lambda 1 is the other policy exactly, and in between (zero networks: the schedules
    # themselves) every action lies between the two schedules' values.
    generator = make_generator(paradigm)
    s = SMOOTHING[paradigm]
    own = generator.baseline_schedule()
    other = {spec.name: (values * 0.8).clamp(spec.low + 1e-3, spec.high)
             for spec, values in zip(generator.action_specs, own.values())}
    labels, seeds = torch.tensor([0, 1, 2]), [3, 4, 5]

    def actions(lam):
        policy = AdaptivePolicy(small_policy(generator), ActionMap(generator, s), blend=small_policy(generator),
                                blend_map=ActionMap(generator, s, schedule=other), lam=lam)
        return rollout(generator, labels, SampleRNG(seeds), policy)

    alone = rollout(generator, labels, SampleRNG(seeds),
                    AdaptivePolicy(small_policy(generator), ActionMap(generator, s, schedule=other)))
    at_one, half = actions(1.0), actions(0.5)
    assert all(torch.equal(at_one.actions[name], alone.actions[name]) for name in own)
    assert torch.equal(at_one.images, alone.images)
    for name, values in own.items():
        low = torch.minimum(values, alone.actions[name][0]) - 1e-5
        high = torch.maximum(values, alone.actions[name][0]) + 1e-5
        assert ((half.actions[name] >= low) & (half.actions[name] <= high)).all(), name
    moved = [name for name in own if not torch.allclose(own[name], other[name])]
    assert any(not torch.allclose(half.actions[name][0], own[name]) for name in moved)
    with pytest.raises(ValueError, match="acts deterministically"):
        explorer = AdaptivePolicy(small_policy(generator), ActionMap(generator, s), std=0.3,
                                  noise=torch.Generator().manual_seed(0), blend=small_policy(generator),
                                  blend_map=ActionMap(generator, s, schedule=other), lam=0.5)
        rollout(generator, labels, SampleRNG(seeds), explorer)
    with pytest.raises(ValueError, match="a schedule of"):
        ActionMap(generator, s, schedule={name: values[:-1] for name, values in own.items()})


def test_exploration_records_gaussian_log_probs_and_the_std_schedule():
    generator = make_generator("dit")
    policy = AdaptivePolicy(small_policy(generator), ActionMap(generator, 0.4), std=0.6,
                            noise=torch.Generator().manual_seed(0))
    rollout(generator, torch.tensor([0, 1]), SampleRNG([0, 1]), policy)
    assert len(policy.transitions) == generator.num_steps
    step = policy.transitions[2]
    expected = torch.distributions.Normal(torch.zeros_like(step.u), 0.6).log_prob(step.u).sum(-1)  # mean is 0
    torch.testing.assert_close(step.log_prob, expected)
    torch.testing.assert_close(gaussian_log_prob(step.u, torch.zeros_like(step.u), 0.6), expected)
    schedule = dict(initial=0.6, decay=0.3, decay_at=[500], floor=0.1)
    assert [exploration_std(i, **schedule) for i in (0, 499, 500, 2000)] == [0.6, 0.6, pytest.approx(0.3),
                                                                             pytest.approx(0.3)]
    assert exploration_std(10, initial=0.6, decay=0.3, decay_at=[1, 2, 3], floor=0.1) == 0.1


def test_ppo_losses_against_hand_computed_values():
    advantages = torch.tensor([1.0, -2.0, 0.5, 3.0])
    values, returns = torch.tensor([0.0, 1.0, 2.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    old = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    # At the start the new policy is the old one: ratio 1, loss = -mean(A) + c * MSE.
    start = ppo_losses(old.clone(), old, advantages, values, returns, clip=0.2, value_coef=0.5)
    assert start["policy_loss"].item() == pytest.approx(-advantages.mean().item())
    assert start["value_loss"].item() == pytest.approx((1 + 0 + 4 + 0) / 4)
    assert start["loss"].item() == pytest.approx(-0.625 + 0.5 * 1.25)
    assert start["clip_fraction"].item() == 0 and start["approx_kl"].item() == pytest.approx(0.0)
    # Ratios 1.5, 0.5, 1.1, 0.7 with eps 0.2, min(r A, clip(r) A) per transition:
    # min(1.5, 1.2) = 1.2; min(-1.0, -1.6) = -1.6; min(0.55, 0.55) = 0.55; min(2.1, 2.4) = 2.1. Three ratios clipped.
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.7])
    moved = ppo_losses(old + ratios.log(), old, advantages, values, returns, clip=0.2, value_coef=0.5)
    assert moved["policy_loss"].item() == pytest.approx(-(1.2 - 1.6 + 0.55 + 2.1) / 4)
    assert moved["clip_fraction"].item() == pytest.approx(3 / 4)
    assert moved["approx_kl"].item() == pytest.approx(((ratios - 1) - ratios.log()).mean().item())
    normalised = normalize_returns(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(normalised, torch.tensor([-1.0, 0.0, 1.0]))
    assert math.isfinite(normalize_returns(torch.ones(4)).sum().item())  # constant rewards: no division by zero
