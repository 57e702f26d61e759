"""The DiT sampler: solver sanity, baseline schedule, NFE accounting, batch-size invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adagen.generators import PARADIGMS
from adagen.generators.base import SampleRNG
from adagen.generators.dit import DiTGenerator, build_network, training_loss
from adagen.generators.solvers import VPLinearSchedule, first_order_update, second_order_update
from adagen.rl.rollout import rollout
from adagen.sampling import class_balanced_labels, sample_images

NETWORK = dict(hidden_size=32, depth=2, num_heads=2, patch_size=4, mlp_ratio=2.0, class_dropout_prob=0.1,
               learn_sigma=False)


def tiny_dit(seed: int = 0, learn_sigma: bool = False):
    torch.manual_seed(seed)
    network = build_network(dict(NETWORK, learn_sigma=learn_sigma), resolution=16, channels=1, num_classes=4)
    # adaLN-Zero starts as the zero function; perturb every weight so the tests see a non-trivial network.
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return network


def test_vp_schedule_matches_its_definition():
    schedule = VPLinearSchedule()
    t = torch.tensor([0.01, 0.5, 0.9, 1.0])
    log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    torch.testing.assert_close(schedule.alpha(t), torch.exp(log_alpha))
    torch.testing.assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones(4))
    torch.testing.assert_close(schedule.log_snr(t), log_alpha - torch.log(schedule.sigma(t)))


def test_solver_is_exact_for_a_perfect_data_prediction():
    # If x_s = alpha_s x0 + sigma_s eps and the model predicts x0 exactly, both updates land on the same
    # noise path at t: x_t = alpha_t x0 + sigma_t eps (DPM-Solver++ is exact for a constant x0).
    schedule = VPLinearSchedule()
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    s, s1, t = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.6, 0.5, 0.4]), torch.tensor([0.3, 0.2, 0.05])

    def on_path(time):
        return schedule.alpha(time).view(-1, 1, 1, 1) * x0 + schedule.sigma(time).view(-1, 1, 1, 1) * eps

    torch.testing.assert_close(first_order_update(schedule, on_path(s), x0, s, t), on_path(t))
    torch.testing.assert_close(second_order_update(schedule, on_path(s), x0, x0, s, s1, t), on_path(t))


@pytest.mark.parametrize("nfe", [1, 2, 5, 8])
def test_baseline_schedule_and_nfe_accounting(nfe):
    generator = DiTGenerator(tiny_dit(), nfe=nfe, cfg=1.5, t_start=0.9, t_end=0.01)
    assert generator.num_steps == nfe + 1
    schedule = generator.baseline_schedule()
    expected_times = torch.linspace(0.9, 0.01, nfe + 1)
    torch.testing.assert_close(schedule["time"], expected_times)
    torch.testing.assert_close(schedule["cfg"], torch.full((nfe + 1,), 1.5))
    result = rollout(generator, torch.tensor([0, 1, 2]), SampleRNG([0, 1, 2]))
    assert result.nfe == nfe and result.forwards == 2 * nfe
    assert result.images.shape == (3, 1, 16, 16)
    assert 0.0 <= result.images.min() and result.images.max() <= 1.0
    torch.testing.assert_close(result.actions["time"], expected_times.expand(3, -1))


def test_features_have_the_declared_shape():
    generator = DiTGenerator(tiny_dit(), nfe=4, cfg=1.0, t_start=0.9, t_end=0.01)
    state = generator.init(torch.tensor([0, 3]), SampleRNG([5, 6]))
    assert generator.observe(state).shape == (2, 16, 32) and not generator.observe(state).any()
    state = generator.step(state, {"time": torch.full((2,), 0.9), "cfg": torch.ones(2)})
    features = generator.observe(state)
    assert features.shape == (2, generator.feature_grid[0] * generator.feature_grid[1], generator.feature_dim)
    assert features.abs().sum() > 0


def test_same_seed_same_image_at_any_batch_size():
    generator = DiTGenerator(tiny_dit(), nfe=4, cfg=1.0, t_start=0.9, t_end=0.01)
    labels = class_balanced_labels(6, 4)
    whole = sample_images(generator, labels, seed=11, batch_size=6, progress=False)["images"]
    pieces = sample_images(generator, labels, seed=11, batch_size=4, progress=False)["images"]
    alone = sample_images(generator, labels[3:4], seed=14, batch_size=1, progress=False)["images"]
    assert np.abs(whole.astype(int) - pieces.astype(int)).max() <= 1  # rounding at the uint8 boundary only
    assert np.abs(whole[3:4].astype(int) - alone.astype(int)).max() <= 1
    other_seed = sample_images(generator, labels, seed=12, batch_size=6, progress=False)["images"]
    assert np.abs(whole.astype(int) - other_seed.astype(int)).max() > 10


def test_per_sample_actions_change_only_their_sample():
    generator = DiTGenerator(tiny_dit(), nfe=4, cfg=1.0, t_start=0.9, t_end=0.01)
    schedule = generator.baseline_schedule()

    def policy(features, k):
        cfg = schedule["cfg"][k].repeat(2)
        cfg[1] = 3.0  # sample 1 gets much stronger guidance
        return {"time": schedule["time"][k].repeat(2), "cfg": cfg}

    labels = torch.tensor([1, 2])
    base = rollout(generator, labels, SampleRNG([0, 1])).images
    changed = rollout(generator, labels, SampleRNG([0, 1]), policy).images
    torch.testing.assert_close(changed[0], base[0])
    assert (changed[1] - base[1]).abs().max() > 1e-3


def test_times_stay_monotone_whatever_the_actions():
    generator = DiTGenerator(tiny_dit(), nfe=4, cfg=1.0, t_start=0.9, t_end=0.01)
    state = generator.init(torch.tensor([0, 1]), SampleRNG([0, 1]))
    times = []
    for k in range(generator.num_steps):
        # An adversarial policy asks to go back up in time: the sampler keeps time decreasing.
        state = generator.step(state, {"time": torch.full((2,), 0.95), "cfg": torch.ones(2)})
        times.append(state.t.clone())
    times = torch.stack(times)
    assert (times[1:] <= times[:-1] - 0.01 + 1e-6).all()
    torch.testing.assert_close(times[:, 0], torch.tensor([0.95, 0.94, 0.93, 0.92, 0.91]))
    # Asking for a time below the floor is clamped to it.
    state = generator.init(torch.tensor([0]), SampleRNG([0]))
    for k in range(generator.num_steps):
        state = generator.step(state, {"time": torch.full((1,), 0.5 if k == 0 else 0.0), "cfg": torch.ones(1)})
    assert state.t.item() == pytest.approx(0.01)


def test_learned_sigma_channels_are_ignored_by_the_sampler():
    generator = DiTGenerator(tiny_dit(learn_sigma=True), nfe=2, cfg=1.0, t_start=0.9, t_end=0.01)
    assert generator.network.out_channels == 2
    assert rollout(generator, torch.tensor([0]), SampleRNG([0])).images.shape == (1, 1, 16, 16)


def test_training_loss_is_finite_and_decreases():
    torch.manual_seed(0)
    network = build_network(NETWORK, resolution=16, channels=1, num_classes=4)
    images = torch.zeros(32, 1, 16, 16)
    images[:, :, 4:12, 6:10] = 1.0  # one simple shape: learnable in a few steps
    labels = torch.arange(32) % 4
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        loss = training_loss(network, images, labels, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_registry_round_trip_through_a_checkpoint(tmp_path):
    from dataclasses import asdict

    from adagen.io import load_checkpoint, save_checkpoint

    network = tiny_dit()
    save_checkpoint(tmp_path / "model.pt", {"config": asdict(network.config), "state_dict": network.state_dict()})
    loaded = PARADIGMS["dit"].load_network(load_checkpoint(tmp_path / "model.pt"))
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([500.0, 20.0]), torch.tensor([0, 4])
    torch.testing.assert_close(loaded(x, t, y), network.eval()(x, t, y))


def test_min_snr_weighting_only_lowers_the_weight_of_high_snr_times():
    network = tiny_dit()
    images, labels = torch.rand(16, 1, 16, 16), torch.arange(16) % 4

    def loss(gamma):
        return training_loss(network, images, labels, torch.Generator().manual_seed(5), min_snr_gamma=gamma)

    torch.testing.assert_close(loss(1e12), loss(0.0))  # gamma above every SNR: the plain epsilon loss
    assert loss(1.0) < loss(0.0)


def test_sit_time_distributions():
    from adagen.generators import sit

    network = tiny_dit()
    images, labels = torch.rand(8, 1, 16, 16), torch.arange(8) % 4
    losses = {name: sit.training_loss(network, images, labels, torch.Generator().manual_seed(1),
                                      time_distribution=name) for name in ("uniform", "logit_normal")}
    assert all(torch.isfinite(loss) for loss in losses.values())
    assert losses["uniform"] != losses["logit_normal"]
    with pytest.raises(ValueError, match="time_distribution"):
        sit.training_loss(network, images, labels, torch.Generator(), time_distribution="beta")
