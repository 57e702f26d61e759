"""Training of the embedded-size generators on the train split: AdamW, warm-up, EMA, resumable.

One loop for every paradigm: a paradigm supplies its network and its `training_loss(network, images,
labels, generator)`. A checkpoint with the model, EMA, optimiser and RNG state is written atomically every
`checkpoint_every` steps; a killed run started again with the same params continues from the last one and
ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from tqdm import tqdm

from adagen.io import load_checkpoint, save_checkpoint

LossFn = Callable[[nn.Module, Tensor, Tensor, torch.Generator], Tensor]
Report = Callable[[dict, int], None]


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint is kept."""


def _learning_rate(step: int, peak: float, warmup_steps: int) -> float:
    return peak * min(1.0, (step + 1) / max(1, warmup_steps))


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param, 1.0 - decay)


def train_generator(
    network: nn.Module,
    loss_fn: LossFn,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    ema_decay: float,
    seed: int,
    checkpoint_every: int,
    checkpoint_path: str | Path,
    fingerprint: str,
    report: Report | None = None,
    log_every: int | None = None,
) -> tuple[nn.Module, dict]:
    """Train `network` on uint8 (N, C, H, W) `images`; return its EMA copy (eval mode) and a summary.

    `fingerprint` identifies the run's settings: a checkpoint with another fingerprint is ignored (and
    overwritten), so a changed params set never resumes from a stale state.
    """
    log_every = log_every or max(1, min(50, steps // 20))  # a curve of about 20+ points even for short runs
    torch.manual_seed(seed)
    data = torch.from_numpy(images).float() / 255.0
    targets = torch.from_numpy(labels).long()
    ema = copy.deepcopy(network).requires_grad_(False)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)  # batches, noise, times and label dropout
    start_step, losses, resumed_from = 0, [], None

    checkpoint_path = Path(checkpoint_path)
    if checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        if state.get("fingerprint") == fingerprint:
            network.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            start_step, losses, resumed_from = state["step"], state["losses"].tolist(), state["step"]

    network.train()
    started = time.perf_counter()
    progress = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="pretrain", mininterval=2.0)
    for step in progress:
        index = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, lr, warmup_steps)
        loss = loss_fn(network, data[index], targets[index], generator)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss.item()} at step {step}; last good checkpoint kept at {checkpoint_path}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _update_ema(ema, network, ema_decay)
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = float(np.mean(losses[-log_every:]))
            progress.set_postfix(loss=f"{recent:.4f}")
            if report is not None:
                report({"train/loss": recent, "train/lr": optimizer.param_groups[0]["lr"]}, step + 1)
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(checkpoint_path, {
                "fingerprint": fingerprint, "step": step + 1, "model": network.state_dict(),
                "ema": ema.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "losses": torch.tensor(losses),
            })
    summary = {
        "steps": steps,
        "final_loss": float(np.mean(losses[-log_every:])) if losses else None,
        "resumed_from_step": resumed_from,
        "train_seconds_this_run": time.perf_counter() - started,
    }
    return ema.eval(), summary
