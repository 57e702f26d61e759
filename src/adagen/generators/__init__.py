"""Step-wise generators, one file per paradigm, behind the contract of `base.StepwiseGenerator`.

`PARADIGMS` is the registry the CLI, the Snakefile and the tests iterate over; adding a paradigm means
adding its file and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from adagen.generators import dit, sit
from adagen.generators.base import StepwiseGenerator


@dataclass(frozen=True)
class Paradigm:
    """What the pipeline needs from one paradigm's file."""

    name: str
    build_network: Callable  # (network_params, *, resolution, channels, num_classes) -> nn.Module
    training_loss: Callable  # (network, images in [0, 1], labels, torch.Generator) -> scalar loss
    load_network: Callable  # (checkpoint dict) -> nn.Module in eval mode
    make_generator: Callable[..., StepwiseGenerator]  # (network, sampling_params) -> step-wise sampler
    full_sizes: dict[str, Callable]  # the paper's settings: name -> builder of the full-size network


PARADIGMS: dict[str, Paradigm] = {
    "dit": Paradigm("dit", dit.build_network, dit.training_loss, dit.load_network, dit.DiTGenerator.from_params,
                    dit.FULL_SIZES),
    "sit": Paradigm("sit", sit.build_network, sit.training_loss, sit.load_network, sit.SiTGenerator.from_params,
                    sit.FULL_SIZES),
}


def full_size_parameter_counts() -> dict[tuple[str, str], int]:
    """{(paradigm, setting): parameters} of every full-size network, built on the meta device (no memory)."""
    import torch

    counts = {}
    for name, paradigm in PARADIGMS.items():
        for setting, build in paradigm.full_sizes.items():
            with torch.device("meta"):
                network = build()
            counts[(name, setting)] = sum(parameter.numel() for parameter in network.parameters())
    return counts
