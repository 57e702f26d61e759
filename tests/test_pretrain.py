"""Generator pre-training: a killed run resumes from its checkpoint and ends where an unbroken run ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adagen.generators.dit import build_network, training_loss
from adagen.io import load_checkpoint
from adagen.pretrain import TrainingDiverged, train_generator

NETWORK = dict(hidden_size=16, depth=1, num_heads=2, patch_size=4, mlp_ratio=2.0, class_dropout_prob=0.1,
               learn_sigma=False)
SETTINGS = dict(steps=8, batch_size=8, lr=1e-3, weight_decay=0.0, warmup_steps=2, ema_decay=0.9, seed=3,
                checkpoint_every=3, log_every=2)


def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8), rng.integers(0, 4, 40)


def fresh_network():
    torch.manual_seed(123)
    return build_network(NETWORK, resolution=8, channels=1, num_classes=4)


class Killed(Exception):
    pass


def test_killed_training_resumes_and_matches_an_unbroken_run(tmp_path):
    images, labels = data()
    unbroken, _ = train_generator(fresh_network(), training_loss, images, labels, **SETTINGS,
                                  checkpoint_path=tmp_path / "a.pt", fingerprint="f")
    calls = {"n": 0}

    def dies_at_step_five(network, x, y, generator):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Killed
        return training_loss(network, x, y, generator)

    with pytest.raises(Killed):
        train_generator(fresh_network(), dies_at_step_five, images, labels, **SETTINGS,
                        checkpoint_path=tmp_path / "b.pt", fingerprint="f")
    assert load_checkpoint(tmp_path / "b.pt")["step"] == 3
    resumed, summary = train_generator(fresh_network(), training_loss, images, labels, **SETTINGS,
                                       checkpoint_path=tmp_path / "b.pt", fingerprint="f")
    assert summary["resumed_from_step"] == 3
    for (name, a), b in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    images, labels = data()
    train_generator(fresh_network(), training_loss, images, labels, **dict(SETTINGS, steps=4),
                    checkpoint_path=tmp_path / "c.pt", fingerprint="old")
    _, summary = train_generator(fresh_network(), training_loss, images, labels, **SETTINGS,
                                 checkpoint_path=tmp_path / "c.pt", fingerprint="new")
    assert summary["resumed_from_step"] is None


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    images, labels = data()
    calls = {"n": 0}

    def explodes_at_step_five(network, x, y, generator):
        calls["n"] += 1
        loss = training_loss(network, x, y, generator)
        return loss * float("nan") if calls["n"] == 5 else loss

    with pytest.raises(TrainingDiverged, match="loss is nan at step 4"):
        train_generator(fresh_network(), explodes_at_step_five, images, labels, **SETTINGS,
                        checkpoint_path=tmp_path / "d.pt", fingerprint="f")
    assert load_checkpoint(tmp_path / "d.pt")["step"] == 3
