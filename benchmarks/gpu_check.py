"""GPU check: DiT-XL/2 (random weights) with the SD KL-f8 VAE, static vs adaptive sampling at a given NFE.

Prints images/s for the static schedule and for the paper-size AdaGen policy, and the policy's share of the
adaptive run's time (policy forwards, timed with CUDA events around each call). Random weights give the same
arithmetic as the real ones, so throughput needs no download. On a CUDA machine:

    python benchmarks/gpu_check.py                       # DiT-XL/2, bf16, batch 64, 16 NFE
    python benchmarks/gpu_check.py --size small --device cpu --batch 4 --nfe 4   # the same code, tiny, on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time

import torch

from adagen.generators.base import SampleRNG
from adagen.generators.dit import DIT_XL_2, DiT, DiTGenerator
from adagen.generators.latent import LatentDecoder, sd_vae
from adagen.policy.actions import ActionMap
from adagen.policy.agent import AdaptivePolicy
from adagen.policy.network import PolicyConfig, PolicyNet
from adagen.rl.rollout import rollout

SMALL_DIT = dataclasses.replace(DIT_XL_2, input_size=8, hidden_size=64, depth=2, num_heads=2)
SMALL_VAE = dict(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=8)


class TimedPolicy:
    """Wraps a policy and accumulates the seconds spent in it (synchronised, so GPU work is counted)."""

    def __init__(self, policy: AdaptivePolicy, device: torch.device):
        self.policy, self.device, self.seconds = policy, device, 0.0

    def __call__(self, features, k):
        synchronize(self.device)
        started = time.perf_counter()
        actions = self.policy(features, k)
        synchronize(self.device)
        self.seconds += time.perf_counter() - started
        return actions


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["full", "small"], default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nfe", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per variant, after one warm-up")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    network = DiT(DIT_XL_2 if args.size == "full" else SMALL_DIT).to(device)
    vae = sd_vae() if args.size == "full" else sd_vae(**SMALL_VAE)
    generator = DiTGenerator(network, nfe=args.nfe, cfg=0.5, t_start=0.99, t_end=0.01, guided_channels=3,
                             decoder=LatentDecoder(vae).to(device))
    policy_network = PolicyNet(PolicyConfig(feature_dim=generator.feature_dim, grid=generator.feature_grid,
                                            num_outputs=len(generator.action_specs))).to(device).eval()
    timed = TimedPolicy(AdaptivePolicy(policy_network, ActionMap(generator, smoothing=0.4)), device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16"
                else contextlib.nullcontext())
    labels = torch.arange(args.batch) % network.config.num_classes
    print(f"DiT {args.size} ({sum(p.numel() for p in network.parameters()) / 1e6:.1f}M), policy "
          f"{sum(p.numel() for p in policy_network.parameters()) / 1e6:.1f}M, {args.dtype}, batch {args.batch}, "
          f"{args.nfe} NFE, on {device}")
    for variant, policy in (("static", None), ("adaptive", timed)):
        seconds = []
        for repeat in range(args.repeats + 1):
            rng = SampleRNG(range(repeat * args.batch, (repeat + 1) * args.batch))
            timed.seconds = 0.0
            synchronize(device)
            started = time.perf_counter()
            with torch.no_grad(), autocast:
                images = rollout(generator, labels, rng, policy).images
            synchronize(device)
            if repeat:  # the first batch warms up kernels and allocators
                seconds.append(time.perf_counter() - started)
        mean = sum(seconds) / len(seconds)
        line = f"{variant:<9} {args.batch / mean:9.2f} images/s  ({mean:.3f} s per batch of {tuple(images.shape)})"
        if policy is not None:
            line += f"  policy share {100 * timed.seconds / seconds[-1]:.1f}% of the last batch"
        print(line)


if __name__ == "__main__":
    main()
