"""Joint training of the policy (PPO) and the discriminator that gives its reward (METHOD.md sections 3-4).

One iteration: collect `trajectories` rollouts with the exploring policy and score their final images with the
current discriminator (reward = sigmoid of its mean logit); normalise the rewards over the batch (every step of
a trajectory has its terminal reward as return, gamma = 1); advantages against the critic's values before the
update; `ppo_epochs` full-batch steps of clipped surrogate + value loss on policy and critic; then `d_steps`
discriminator steps on fresh fakes of the updated exploring policy against real train images. Before the first
iteration, `d_warmup_steps` discriminator steps on a pool of the starting policy's samples (`warm_up_discriminator`).

Every random draw comes from streams held in the checkpoint, so a killed run resumes and ends exactly where an
uninterrupted one does. A non-finite reward or loss stops with TrainingDiverged and keeps the last checkpoint.

Under an initialised torch.distributed process group the work is sharded: every rank draws the global batch's
labels, noise and real-image indices from the same streams and keeps its slice, rewards are normalised over
the global batch, gradients are averaged over ranks; rank 0 probes, reports and writes checkpoints. So N
processes follow one process with the same global batch (within float rounding), given that the rollout batch
and the discriminator batch divide by N (and the discriminator's share per rank by its virtual batch).

Checkpoint selection: adversarial training swings (nearby iterates can differ a lot in quality), so every
`probe_every` iterations, and before the first, a `probe` scores the deterministic policy on fixed seeds (lower
is better; the stage uses FID in the reward backbone's feature space against the train split, never the
reported metric), and the best-scoring policy is the one returned. Iteration 0 is the starting schedule itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from adagen import distributed
from adagen.generators.base import SampleRNG, StepwiseGenerator
from adagen.io import load_checkpoint, save_checkpoint
from adagen.policy.actions import ActionMap
from adagen.policy.agent import AdaptivePolicy, gaussian_log_prob
from adagen.policy.network import PolicyNet
from adagen.pretrain import TrainingDiverged
from adagen.reward.discriminator import ProjectedDiscriminator, discriminator_loss
from adagen.rl.ppo import exploration_std, normalize_returns, ppo_losses
from adagen.rl.rollout import rollout

Report = Callable[[dict, int], None]
RewardFn = Callable[[Tensor, Tensor], Tensor]  # (images in [0, 1], labels) -> (B,)
Probe = Callable[[AdaptivePolicy], dict[str, float]]  # deterministic policy -> {"score": lower is better, ...}


@dataclass(frozen=True)
class PPOSettings:
    iterations: int
    trajectories: int  # per iteration
    rollout_batch: int
    ppo_epochs: int
    lr: float  # policy and critic (Adam)
    clip: float
    value_coef: float
    std_initial: float
    std_decay: float
    std_decay_at: tuple[int, ...]
    std_floor: float
    d_steps: int  # discriminator steps per iteration
    d_batch: int  # fakes (and as many reals) per discriminator step
    d_lr: float
    seed: int
    checkpoint_every: int
    d_warmup_steps: int = 0  # discriminator steps before the first iteration (0: none, as AdaNAT)
    d_warmup_fakes: int = 0  # the starting policy's samples those steps draw their fakes from


@dataclass
class Batch:
    features: Tensor  # (n, N, C) one row per transition
    k: Tensor  # (n,)
    u: Tensor  # (n, A)
    log_prob: Tensor  # (n,)
    returns: Tensor  # (n,) the normalised terminal reward of the transition's trajectory
    rewards: Tensor  # (trajectories,) raw, of the global batch (every rank's)
    actions: dict[str, Tensor]  # {name: (trajectories, T)} as applied


def _labels(count: int, num_classes: int, stream: torch.Generator) -> Tensor:
    return torch.randint(0, num_classes, (count,), generator=stream)


def _shard(size: int) -> slice:
    """This rank's rows of a global batch of `size`."""
    rank, world = distributed.rank_and_size()
    return slice(rank * size // world, (rank + 1) * size // world)


def collect(generator: StepwiseGenerator, agent: AdaptivePolicy, reward_fn: RewardFn, *, count: int, batch: int,
            num_classes: int, labels_stream: torch.Generator, first_seed: int) -> Batch:
    """`count` exploring rollouts in batches of `batch` (global sizes; this rank runs its slice of each), with
    their rewards; sample i of the global batch uses noise seed first_seed + i."""
    rows: dict[str, list[Tensor]] = {"features": [], "k": [], "u": [], "log_prob": [], "trajectory": []}
    rewards, actions, done = [], [], 0
    for start in range(0, count, batch):
        size = min(batch, count - start)
        rows_here = _shard(size)
        labels = _labels(size, num_classes, labels_stream)[rows_here]
        first = first_seed + start + rows_here.start
        result = rollout(generator, labels, SampleRNG(range(first, first + len(labels))), agent)
        rewards.append(reward_fn(result.images, labels))
        actions.append(result.actions)
        for transition in agent.transitions:
            rows["features"].append(transition.features)
            rows["k"].append(torch.full((len(labels),), transition.k))
            rows["u"].append(transition.u)
            rows["log_prob"].append(transition.log_prob)
            rows["trajectory"].append(torch.arange(done, done + len(labels)))
        done += len(labels)
    rewards_here, rewards_all = torch.cat(rewards), distributed.gather(torch.cat(rewards))
    returns = normalize_returns(rewards_here, over=rewards_all)[torch.cat(rows["trajectory"])]  # each step: its end
    return Batch(torch.cat(rows["features"]), torch.cat(rows["k"]), torch.cat(rows["u"]), torch.cat(rows["log_prob"]),
                 returns, rewards_all, {name: torch.cat([a[name] for a in actions]) for name in actions[0]})


def _check_finite(name: str, value: Tensor, iteration: int, checkpoint: Path) -> None:
    if not torch.isfinite(value).all():
        raise TrainingDiverged(f"{name} is not finite at iteration {iteration}; "
                               f"last good checkpoint kept at {checkpoint}")


def _descend(optimizer: torch.optim.Optimizer, loss: Tensor, parameters: list[torch.nn.Parameter]) -> None:
    """One optimizer step on `loss`, gradients averaged over ranks."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(parameters)
    optimizer.step()


def _first_seed(s: PPOSettings, iteration: int) -> int:
    """The noise seed of iteration's first rollout: each iteration owns the seeds of its trajectories and
    discriminator fakes (twice their count, room to spare); iteration `s.iterations` is the warm-up pool's."""
    return s.seed * 1_000_003 + iteration * 2 * (s.trajectories + s.d_steps * s.d_batch)


def warm_up_discriminator(generator: StepwiseGenerator, agent: AdaptivePolicy, discriminator: ProjectedDiscriminator,
                          d_optimizer: torch.optim.Optimizer, reals: Tensor, real_targets: Tensor,
                          s: PPOSettings) -> None:
    """Train the fresh discriminator against a pool of the starting policy's samples before PPO begins.

    At the embedded size a few discriminator steps per iteration leave it near chance (loss 2 ln 2) for the
    whole run, and a reward at chance is noise for PPO, for best-of-N and for the critic. The pool is sampled
    once (each rank its slice of each batch, then gathered: every rank holds the same pool) and minibatches are
    drawn from it.
    Its streams are its own (seeded seed + 2, seeds after the last iteration's), so `d_warmup_steps: 0` is the
    training without warm-up exactly.
    """
    stream = torch.Generator().manual_seed(s.seed + 2)
    num_classes = discriminator.config.num_classes
    pool_labels = _labels(s.d_warmup_fakes, num_classes, stream)
    first = _first_seed(s, s.iterations)
    parts = []
    for start in range(0, s.d_warmup_fakes, s.rollout_batch):  # global batches, this rank its slice (as collect)
        rows_here = _shard(min(s.rollout_batch, s.d_warmup_fakes - start))
        first_here = start + rows_here.start
        labels = pool_labels[first_here : start + rows_here.stop]
        images = rollout(generator, labels, SampleRNG(range(first + first_here, first + first_here + len(labels))),
                         agent).images
        parts.append(distributed.gather(images))
    pool = torch.cat(parts)
    discriminator.train()
    d_params = [p for p in discriminator.parameters() if p.requires_grad]
    rows_here = _shard(s.d_batch)
    for _ in tqdm(range(s.d_warmup_steps), desc="discriminator warm-up", mininterval=2.0):
        fake_index = torch.randint(0, len(pool), (s.d_batch,), generator=stream)[rows_here]
        real_index = torch.randint(0, len(reals), (s.d_batch,), generator=stream)[rows_here]
        losses = discriminator_loss(discriminator(reals[real_index], real_targets[real_index]),
                                    discriminator(pool[fake_index], pool_labels[fake_index]))
        _descend(d_optimizer, losses["loss"], d_params)


def train_adagen(
    generator: StepwiseGenerator,
    action_map: ActionMap,
    policy: PolicyNet,
    critic: PolicyNet,
    discriminator: ProjectedDiscriminator,
    real_images: np.ndarray,
    real_labels: np.ndarray,
    settings: PPOSettings,
    *,
    checkpoint_path: str | Path,
    fingerprint: str,
    zero_state: bool = False,
    reward_fn: RewardFn | None = None,
    probe: Probe | None = None,
    probe_every: int = 0,
    report: Report | None = None,
) -> dict:
    """Train policy, critic and discriminator in place; returns a summary with the reward curve.

    `zero_state` is the learned-static ablation (the policy sees zeros); `reward_fn` replaces the
    discriminator's reward (fixed-reward ablation; the discriminator then trains but is not used). With a
    `probe`, the policy ends as the best-probed one (the critic and discriminator stay at their last state).
    """
    s = settings
    rank, world = distributed.rank_and_size()
    if world > 1 and (s.trajectories % s.rollout_batch or s.rollout_batch % world or s.d_batch % world
                      or s.d_warmup_fakes % world):
        raise ValueError(f"on {world} processes the rollout batch ({s.rollout_batch}) must divide the trajectories "
                         f"({s.trajectories}), and {world} must divide it, the discriminator batch ({s.d_batch}) "
                         f"and the warm-up fakes ({s.d_warmup_fakes})")
    if s.d_warmup_steps and s.d_warmup_fakes < s.d_batch:
        raise ValueError(f"d_warmup_fakes ({s.d_warmup_fakes}) must hold at least one discriminator batch "
                         f"({s.d_batch})")
    distributed.broadcast_parameters([policy, critic, discriminator])
    num_classes = discriminator.config.num_classes
    reals = torch.from_numpy(real_images).float() / 255.0
    real_targets = torch.from_numpy(real_labels).long()
    optimizer = torch.optim.Adam(list(policy.parameters()) + list(critic.parameters()), lr=s.lr)
    d_params = [p for p in discriminator.parameters() if p.requires_grad]
    d_optimizer = torch.optim.Adam(d_params, lr=s.d_lr, betas=(0.5, 0.999))
    noise, labels_stream = torch.Generator().manual_seed(s.seed), torch.Generator().manual_seed(s.seed + 1)
    start, history, probes, best = 0, [], [], None
    checkpoint_path = Path(checkpoint_path)
    if checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        if state.get("fingerprint") == fingerprint:
            for module, key in ((policy, "policy"), (critic, "critic"), (discriminator, "discriminator")):
                module.load_state_dict(state[key])
            optimizer.load_state_dict(state["optimizer"])
            d_optimizer.load_state_dict(state["d_optimizer"])
            noise.set_state(state["noise"])
            labels_stream.set_state(state["labels_stream"])
            start, history, probes, best = state["iteration"], state["history"], state["probes"], state["best"]
    reward_fn = reward_fn or discriminator.reward
    started = time.perf_counter()

    def probe_policy(iteration: int) -> None:
        nonlocal best
        if probe is None or probe_every <= 0 or (iteration % probe_every and iteration != s.iterations):
            return
        scores = probe(AdaptivePolicy(policy.eval(), action_map, zero_state=zero_state)) if rank == 0 else None
        scores = distributed.broadcast_object(scores)
        probes.append({"iteration": iteration, **scores})
        if report is not None and rank == 0:
            report({f"probe/{key}": value for key, value in scores.items()}, iteration)
        if best is None or scores["score"] < best["score"]:
            best = {"iteration": iteration, "score": scores["score"],
                    "policy": {key: value.clone() for key, value in policy.state_dict().items()}}

    def std_at(iteration: int) -> float:
        return exploration_std(iteration, initial=s.std_initial, decay=s.std_decay, decay_at=list(s.std_decay_at),
                               floor=s.std_floor)

    if start == 0:
        probe_policy(0)
        if s.d_warmup_steps:
            warm_up_discriminator(generator, AdaptivePolicy(policy.eval(), action_map, std=std_at(0),
                                                            noise=torch.Generator().manual_seed(s.seed + 2),
                                                            zero_state=zero_state, shard=(rank, world)),
                                  discriminator, d_optimizer, reals, real_targets, s)
    for iteration in tqdm(range(start, s.iterations), initial=start, total=s.iterations, desc="adagen"):
        std = std_at(iteration)
        agent = AdaptivePolicy(policy.eval(), action_map, std=std, noise=noise, zero_state=zero_state,
                               shard=(rank, world))
        seed_base = _first_seed(s, iteration)
        batch = collect(generator, agent, reward_fn, count=s.trajectories, batch=s.rollout_batch,
                        num_classes=num_classes, labels_stream=labels_stream, first_seed=seed_base)
        _check_finite("reward", batch.rewards, iteration, checkpoint_path)

        # PPO: full-batch steps on every transition of the iteration.
        policy.train(), critic.train()
        inputs = torch.zeros_like(batch.features) if zero_state else batch.features
        with torch.no_grad():
            advantages = batch.returns - critic(batch.features, batch.k).squeeze(-1)
        for _ in range(s.ppo_epochs):
            new_log_prob = gaussian_log_prob(batch.u, policy(inputs, batch.k), std)
            losses = ppo_losses(new_log_prob, batch.log_prob, advantages, critic(batch.features, batch.k).squeeze(-1),
                                batch.returns, clip=s.clip, value_coef=s.value_coef)
            _check_finite("PPO loss", distributed.total(losses["loss"]), iteration, checkpoint_path)
            _descend(optimizer, losses["loss"], list(policy.parameters()) + list(critic.parameters()))

        # Discriminator: fresh fakes of the updated exploring policy against real images.
        agent = AdaptivePolicy(policy.eval(), action_map, std=std, noise=noise, zero_state=zero_state,
                               shard=(rank, world))
        discriminator.train()
        d_metrics, rows_here = [], _shard(s.d_batch)
        for step in range(s.d_steps):
            fake_labels = _labels(s.d_batch, num_classes, labels_stream)[rows_here]
            first = seed_base + s.trajectories + step * s.d_batch + rows_here.start
            fakes = rollout(generator, fake_labels, SampleRNG(range(first, first + len(fake_labels))), agent).images
            index = torch.randint(0, len(reals), (s.d_batch,), generator=labels_stream)[rows_here]
            d_losses = discriminator_loss(discriminator(reals[index], real_targets[index]),
                                          discriminator(fakes, fake_labels))
            _check_finite("discriminator loss", distributed.total(d_losses["loss"]), iteration, checkpoint_path)
            _descend(d_optimizer, d_losses["loss"], d_params)
            d_metrics.append({key: value.item() for key, value in d_losses.items()})

        metrics = {
            "reward": batch.rewards.mean().item(), "reward_std": batch.rewards.std().item(), "std": std,
            **{f"ppo/{key}": value.item() for key, value in losses.items()},
            **{f"d/{key}": float(np.mean([m[key] for m in d_metrics])) for key in d_metrics[0]},
        }
        for name, values in batch.actions.items():  # the learned schedule: per-step mean and per-sample spread
            for k in range(values.shape[1]):
                metrics[f"actions/{name}/mean_{k}"] = values[:, k].mean().item()
                metrics[f"actions/{name}/spread_{k}"] = values[:, k].std().item()
        history.append({key: metrics[key] for key in ("reward", "d/loss", "ppo/clip_fraction", "ppo/approx_kl")})
        if report is not None and rank == 0:
            report(metrics, iteration + 1)
        probe_policy(iteration + 1)
        if (iteration + 1) % s.checkpoint_every == 0 and iteration + 1 < s.iterations and rank == 0:
            save_checkpoint(checkpoint_path, {
                "fingerprint": fingerprint, "iteration": iteration + 1, "history": history,
                "probes": probes, "best": best,
                "policy": policy.state_dict(), "critic": critic.state_dict(),
                "discriminator": discriminator.state_dict(), "optimizer": optimizer.state_dict(),
                "d_optimizer": d_optimizer.state_dict(), "noise": noise.get_state(),
                "labels_stream": labels_stream.get_state(),
            })
    if best is not None:
        policy.load_state_dict(best["policy"])
    policy.eval(), critic.eval(), discriminator.eval()
    return {"iterations": s.iterations, "resumed_from_iteration": start or None, "history": history,
            "probes": probes, "selected_iteration": None if best is None else best["iteration"],
            "train_seconds_this_run": time.perf_counter() - started}
