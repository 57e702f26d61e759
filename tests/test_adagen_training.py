"""Joint PPO + discriminator training at smoke size: it runs, resumes exactly, and stops cleanly on NaN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from adagen.policy.actions import ActionMap
from adagen.policy.network import build_policy
from adagen.pretrain import TrainingDiverged
from adagen.reward.discriminator import DiscriminatorConfig, ProjectedDiscriminator, discriminator_loss
from adagen.generators.base import SampleRNG
from adagen.reward.backbone import classifier_confidence
from adagen.rl.rollout import rollout
from adagen.policy.agent import AdaptivePolicy
from adagen.rl.train import PPOSettings, train_adagen, warm_up_discriminator
from test_generators import NUM_CLASSES, make_generator

SETTINGS = PPOSettings(iterations=4, trajectories=6, rollout_batch=3, ppo_epochs=2, lr=1e-3, clip=0.2,
                       value_coef=0.5, std_initial=0.6, std_decay=0.3, std_decay_at=(2,), std_floor=0.1, d_steps=1,
                       d_batch=4, d_lr=1e-3, seed=0, checkpoint_every=2, d_warmup_steps=2, d_warmup_fakes=4)
POLICY = {"hidden_size": 16, "conv_channels": 4, "mlp_sizes": [16, 8]}


def tiny_discriminator() -> ProjectedDiscriminator:
    torch.manual_seed(0)
    backbone = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=NUM_CLASSES, embed_dim=16,
                                 depth=2, num_heads=2, mlp_ratio=2.0)
    config = DiscriminatorConfig(num_classes=NUM_CLASSES, block_indices=(1,), cond_dim=16, projection_dim=8,
                                 virtual_batch=2, image_size=16, mean=(0.5,), std=(0.5,))
    return ProjectedDiscriminator(backbone, config)


def setup(paradigm: str = "dit"):
    generator = make_generator(paradigm)
    torch.manual_seed(1)
    policy = build_policy(POLICY, feature_dim=generator.feature_dim, grid=generator.feature_grid,
                          num_outputs=len(generator.action_specs))
    critic = build_policy(POLICY, feature_dim=generator.feature_dim, grid=generator.feature_grid, num_outputs=1)
    reals = np.random.default_rng(0).integers(0, 256, (20, 1, 16, 16), dtype=np.uint8)
    return generator, ActionMap(generator, 0.4), policy, critic, tiny_discriminator(), reals, np.arange(20) % 4


def state_of(*modules) -> list[torch.Tensor]:
    return [value.clone() for module in modules for value in module.state_dict().values()]


def test_discriminator_logits_loss_and_reward_shapes():
    discriminator = tiny_discriminator()
    images, labels = torch.rand(5, 1, 16, 16), torch.tensor([0, 1, 2, 3, 0])
    logits = discriminator(images, labels)
    assert logits.shape == (5, 2 * 16)  # two feature maps (patch embedding, block 1) of 4x4 tokens
    reward = discriminator.reward(images, labels)
    assert reward.shape == (5,) and ((reward > 0) & (reward < 1)).all()
    losses = discriminator_loss(logits, logits)
    assert losses["loss"].item() == pytest.approx(losses["loss_real"].item() + losses["loss_fake"].item())
    losses["loss"].backward()
    assert all(p.grad is None for p in discriminator.backbone.parameters())  # the backbone stays frozen


def test_candidates_are_scored_against_each_other_only():
    discriminator = tiny_discriminator().eval()  # virtual batches of 2
    images, label = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor(2)
    two = discriminator.candidate_rewards(images[:2], label)
    torch.testing.assert_close(two, discriminator.reward(images[:2], torch.tensor([2, 2])))  # one virtual batch
    three = discriminator.candidate_rewards(images, label)
    assert three.shape == (3,) and not torch.allclose(three[:2], two)  # normalised over all three rivals
    torch.testing.assert_close(discriminator.candidate_rewards(images[[2, 0, 1]], label), three[[2, 0, 1]])
    assert discriminator.heads[0].main[0][1].group == 2  # the training virtual batch is restored
    # One image alone is normalised by its own token statistics: what is left barely tells images apart.
    alone = torch.stack([discriminator.reward(image[None], label[None]) for image in images]).squeeze(1)
    assert alone.std() < three.std()


def test_the_warm_up_teaches_the_discriminator_to_tell_the_starting_policys_samples(tmp_path):
    generator, action_map, policy, critic, discriminator, reals, labels = setup("maskgit")
    settings = dataclasses.replace(SETTINGS, d_warmup_steps=100, d_warmup_fakes=12)
    fakes = rollout(generator, torch.arange(8) % NUM_CLASSES, SampleRNG(range(10**6, 10**6 + 8)),
                    AdaptivePolicy(policy, action_map)).images  # samples the pool does not hold

    def held_out_loss() -> float:
        with torch.no_grad():
            real = torch.from_numpy(reals[:8]).float() / 255.0
            return discriminator_loss(discriminator(real, torch.from_numpy(labels[:8])),
                                      discriminator(fakes, torch.arange(8) % NUM_CLASSES))["loss"].item()

    before = held_out_loss()
    optimizer = torch.optim.Adam([p for p in discriminator.parameters() if p.requires_grad], lr=1e-2)
    warm_up_discriminator(generator, AdaptivePolicy(policy, action_map, std=0.6, noise=torch.Generator()),
                          discriminator, optimizer, torch.from_numpy(reals).float() / 255.0,
                          torch.from_numpy(labels), settings)
    after = held_out_loss()
    assert after < before - 0.1, (before, after)


@pytest.mark.parametrize("paradigm", ["maskgit", "var", "dit", "sit"])
def test_training_moves_the_policy_and_the_discriminator(paradigm, tmp_path):
    generator, action_map, policy, critic, discriminator, reals, labels = setup(paradigm)
    action_map = ActionMap(generator, 0.0)
    before = state_of(policy, discriminator)
    summary = train_adagen(generator, action_map, policy, critic, discriminator, reals, labels, SETTINGS,
                           checkpoint_path=tmp_path / "state.pt", fingerprint="x")
    assert len(summary["history"]) == SETTINGS.iterations
    assert all(0 < entry["reward"] < 1 for entry in summary["history"])
    after = state_of(policy, discriminator)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert policy.linear3.weight.abs().sum() > 0  # the zero-initialised head has learned something


def image_mean_probe(generator):
    """A real probe: the mean pixel of the deterministic policy's samples on fixed seeds (lower is 'better')."""

    def probe(agent) -> dict[str, float]:
        images = rollout(generator, torch.arange(4) % NUM_CLASSES, SampleRNG(range(100, 104)), agent).images
        return {"score": images.mean().item()}

    return probe


def test_the_best_probed_policy_is_the_one_returned(tmp_path):
    generator, action_map, policy, critic, discriminator, reals, labels = setup()
    scores, seen = iter([3.0, 1.0, 2.0, 5.0]), []

    def probe(agent) -> dict[str, float]:
        seen.append({key: value.clone() for key, value in agent.network.state_dict().items()})
        return {"score": next(scores), "extra": 7.0}

    reports = []
    summary = train_adagen(generator, action_map, policy, critic, discriminator, reals, labels, SETTINGS,
                           checkpoint_path=tmp_path / "state.pt", fingerprint="x", probe=probe, probe_every=2,
                           report=lambda metrics, step: reports.append((step, metrics)))
    # Probes before training and after iterations 2 and 4 (the last); the second scored best.
    assert [row["iteration"] for row in summary["probes"]] == [0, 2, 4]
    assert summary["selected_iteration"] == 2
    for key, value in policy.state_dict().items():
        torch.testing.assert_close(value, seen[1][key])
    assert not all(torch.equal(seen[1][key], seen[2][key]) for key in seen[1])  # training went on after it
    assert (2, {"probe/score": 1.0, "probe/extra": 7.0}) in reports


def test_a_killed_run_resumes_to_the_same_result(tmp_path):
    generator, action_map, policy, critic, discriminator, reals, labels = setup()
    summary = train_adagen(generator, action_map, policy, critic, discriminator, reals, labels, SETTINGS,
                           checkpoint_path=tmp_path / "whole.pt", fingerprint="x",
                           probe=image_mean_probe(generator), probe_every=1)
    uninterrupted, probes = state_of(policy, critic, discriminator), summary["probes"]

    generator, action_map, policy, critic, discriminator, reals, labels = setup()
    calls = []

    def killed_in_iteration_3(images, labels):  # 2 reward calls per iteration; the 5th is in iteration 3
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return discriminator.reward(images, labels)

    with pytest.raises(KeyboardInterrupt):
        train_adagen(generator, action_map, policy, critic, discriminator, reals, labels, SETTINGS,
                     checkpoint_path=tmp_path / "killed.pt", fingerprint="x", reward_fn=killed_in_iteration_3,
                     probe=image_mean_probe(generator), probe_every=1)
    generator, action_map, policy, critic, discriminator, reals, labels = setup()  # a fresh process
    summary = train_adagen(generator, action_map, policy, critic, discriminator, reals, labels, SETTINGS,
                           checkpoint_path=tmp_path / "killed.pt", fingerprint="x",
                           probe=image_mean_probe(generator), probe_every=1)
    assert summary["resumed_from_iteration"] == 2
    assert summary["probes"] == probes  # the probes before the kill came back with the checkpoint
    for a, b in zip(uninterrupted, state_of(policy, critic, discriminator)):
        torch.testing.assert_close(a, b)


def test_a_nan_reward_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    generator, action_map, policy, critic, discriminator, reals, labels = setup()
    calls = []

    def reward(images, labels):
        calls.append(1)
        value = torch.full((images.shape[0],), 0.5)
        return value if len(calls) <= 4 else value * float("nan")  # 2 rounds per iteration: NaN in iteration 3

    checkpoint = tmp_path / "state.pt"
    with pytest.raises(TrainingDiverged, match="reward is not finite at iteration 2"):
        train_adagen(generator, action_map, policy, critic, discriminator, reals, labels, SETTINGS,
                     checkpoint_path=checkpoint, fingerprint="x", reward_fn=reward)
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 2


def test_the_fixed_reward_is_the_backbone_classifier_confidence():
    backbone = tiny_discriminator().backbone
    images, labels = torch.rand(6, 1, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    reward = classifier_confidence(backbone)(images, labels)
    probabilities = backbone((images - 0.5) / 0.5).softmax(dim=-1)
    torch.testing.assert_close(reward, probabilities[torch.arange(6), labels])
    assert torch.allclose(sum(classifier_confidence(backbone)(images, torch.full((6,), k)) for k in range(4)),
                          torch.ones(6))
