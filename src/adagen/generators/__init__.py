"""Step-wise generators, one file per paradigm, behind the contract of `base.StepwiseGenerator`.

`PARADIGMS` is the registry the CLI, the Snakefile and the tests iterate over; adding a paradigm means
adding its file and one entry here. Token paradigms (MaskGIT, VAR) also need a VQ tokenizer (tokenizer.py),
trained by the pipeline before the generator at the embedded size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from adagen.generators import dit, maskgit, sit, var
from adagen.generators.base import StepwiseGenerator


@dataclass(frozen=True)
class Paradigm:
    """What the pipeline needs from one paradigm's file."""

    name: str
    # (network_params, *, resolution, channels, num_classes, [tokenizer]) -> nn.Module
    build_network: Callable
    # (network, images in [0, 1], labels, torch.Generator, **objective, [tokenizer]) -> scalar loss
    training_loss: Callable
    load_network: Callable  # (checkpoint dict) -> nn.Module in eval mode
    # (network, sampling_params, [tokenizer]) -> step-wise sampler
    make_generator: Callable[..., StepwiseGenerator]
    full_sizes: dict[str, Callable]  # the paper's settings: name -> builder of the full-size network
    uses_tokenizer: bool = False  # the [tokenizer] arguments above: its VQ tokenizer
    stochastic_steps: bool = False  # its steps draw noise (token sampling), so a step can branch (lookahead)


PARADIGMS: dict[str, Paradigm] = {
    "maskgit": Paradigm("maskgit", maskgit.build_network, maskgit.training_loss, maskgit.load_network,
                        maskgit.MaskGITGenerator.from_params, maskgit.FULL_SIZES, uses_tokenizer=True,
                        stochastic_steps=True),
    "var": Paradigm("var", var.build_network, var.training_loss, var.load_network, var.VARGenerator.from_params,
                    var.FULL_SIZES, uses_tokenizer=True, stochastic_steps=True),
    "dit": Paradigm("dit", dit.build_network, dit.training_loss, dit.load_network, dit.DiTGenerator.from_params,
                    dit.FULL_SIZES),
    "sit": Paradigm("sit", sit.build_network, sit.training_loss, sit.load_network, sit.SiTGenerator.from_params,
                    sit.FULL_SIZES),
}


def paradigm_of(setting: str) -> Paradigm:
    """The paradigm of a setting: a params set names each generator it runs `<paradigm>` or `<paradigm>-<tag>`,
    so one set can hold two settings of a paradigm (the paper's VAR-d16 and VAR-d30 are `var-d16`, `var-d30`)."""
    name = setting.split("-", 1)[0]
    if name not in PARADIGMS:
        raise ValueError(f"setting {setting!r}: its name must start with a paradigm ({', '.join(PARADIGMS)})")
    return PARADIGMS[name]


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
