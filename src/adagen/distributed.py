"""torch.distributed in the few places training needs it; every helper is the identity on a single process.

Training shards its rollouts and discriminator batches across ranks (each rank draws the global random numbers
and keeps its slice, so a run on N processes follows the same streams as one process with the same global
batch), averages gradients as DDP does, and normalises returns over the global batch.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch
import torch.distributed as dist


def rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor concatenated in rank order (equal shapes)."""
    size = rank_and_size()[1]
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def total(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a NaN anywhere reaches every rank, so all stop together)."""
    if rank_and_size()[1] == 1:
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor)
    return tensor


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """What DistributedDataParallel does after backward, done by hand: the discriminator is called twice per
    step (reals, fakes), which DDP's once-per-backward hooks do not allow."""
    size = rank_and_size()[1]
    if size == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= size


def broadcast_parameters(modules: Iterable[torch.nn.Module]) -> None:
    """Rank 0's weights everywhere, so every rank starts from the same network."""
    if rank_and_size()[1] == 1:
        return
    for module in modules:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank (probe scores: only rank 0 probes)."""
    if rank_and_size()[1] == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def init_from_environment() -> bool:
    """Start the process group from the launcher's environment (submitit's TorchDistributedEnvironment exports
    MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE); NCCL on GPUs, gloo on CPUs. False when there is one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True
