"""Step-wise generators, one file per paradigm, behind the contract of `base.StepwiseGenerator`.

`PARADIGMS` is the registry the CLI, the Snakefile and the tests iterate over; adding a paradigm means
adding its file and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from adagen.generators import dit
from adagen.generators.base import StepwiseGenerator


@dataclass(frozen=True)
class Paradigm:
    """What the pipeline needs from one paradigm's file."""

    name: str
    build_network: Callable  # (network_params, *, resolution, channels, num_classes) -> nn.Module
    training_loss: Callable  # (network, images in [0, 1], labels, torch.Generator) -> scalar loss
    load_network: Callable  # (checkpoint dict) -> nn.Module in eval mode
    make_generator: Callable[..., StepwiseGenerator]  # (network, sampling_params) -> step-wise sampler


PARADIGMS: dict[str, Paradigm] = {
    "dit": Paradigm("dit", dit.build_network, dit.training_loss, dit.load_network, dit.DiTGenerator.from_params),
}
