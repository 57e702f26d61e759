"""AdaGen training on 2 processes (gloo, CPU) equals 1 process on the same global batch, within float rounding."""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adagen.rl.train import train_adagen
from test_adagen_training import SETTINGS, setup, state_of

# Global batches that split evenly over 2 ranks: 8 trajectories in rollouts of 4, 4 discriminator samples
# (2 per rank: one virtual batch of the tiny discriminator each), a warm-up pool of 8 gathered from both.
DISTRIBUTED = dataclasses.replace(SETTINGS, iterations=3, trajectories=8, rollout_batch=4, d_batch=4,
                                  d_warmup_fakes=8)


def train(tmp_path, name: str) -> list[torch.Tensor]:
    generator, action_map, policy, critic, discriminator, reals, labels = setup()
    summary = train_adagen(generator, action_map, policy, critic, discriminator, reals, labels, DISTRIBUTED,
                           checkpoint_path=tmp_path / f"{name}.pt", fingerprint="ddp",
                           probe=lambda agent: {"score": float(sum(p.detach().sum() for p in agent.network.parameters()))},
                           probe_every=1)
    # The discriminator by what it computes: its conv biases sit before a normalisation that cancels them, so
    # their gradients are rounding noise, which Adam scales up to full steps; its logits do not depend on them.
    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    logits = discriminator.eval()(images, torch.arange(8) % 4)
    return [*state_of(policy, critic), logits.detach(), torch.tensor([entry["reward"] for entry in summary["history"]]),
            torch.tensor([float(summary["selected_iteration"])])]


def worker(rank: int, world: int, init_file: str, tmp_path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = train(tmp_path, f"rank{rank}")
        torch.save(result, tmp_path / f"result-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: the same float arithmetic
    try:
        single = train(tmp_path, "single")
    finally:
        torch.set_num_threads(threads)
    mp.spawn(worker, args=(2, str(tmp_path / "init"), tmp_path), nprocs=2, join=True)
    for rank in range(2):
        sharded = torch.load(tmp_path / f"result-{rank}.pt", weights_only=True)
        assert len(sharded) == len(single)
        for a, b in zip(single, sharded):
            assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4), (a - b).abs().max()
    # Rank 0 alone writes checkpoints (iteration 2 here).
    assert (tmp_path / "rank0.pt").is_file() and not (tmp_path / "rank1.pt").exists()


def test_uneven_batches_are_refused_with_a_clear_message(tmp_path):
    mp.spawn(refuse_worker, args=(str(tmp_path / "init"), tmp_path), nprocs=2, join=True)
    assert (tmp_path / "refused-0").read_text().startswith("on 2 processes the rollout batch (3)")


def refuse_worker(rank: int, init_file: str, tmp_path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        generator, action_map, policy, critic, discriminator, reals, labels = setup()
        try:
            train_adagen(generator, action_map, policy, critic, discriminator, reals, labels, SETTINGS,
                         checkpoint_path=tmp_path / "x.pt", fingerprint="x")
        except ValueError as error:
            (tmp_path / f"refused-{rank}").write_text(str(error))
    finally:
        dist.destroy_process_group()
