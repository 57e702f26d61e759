"""Does the adversarial reward rank schedules as FID does? The check to pass before training a policy.

For one paradigm, takes the tuned-static cells of a finished `snakemake all` run (every cell's FID against
the train split is in `results/<set>/<paradigm>/policy/tuned-static.json`), samples every cell again, trains a
fresh discriminator on the reward backbone against all cells' samples mixed (as the policy's discriminator sees a
spread of schedules), then scores fresh samples of each cell by mean reward. Prints the table and the Spearman
rank correlation between mean reward and -FID (1: the reward orders the schedules exactly as FID does), and
the same against FID in the reward backbone's own features.

    python benchmarks/reward_agreement.py --params params/default.yaml --paradigm dit
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from adagen.config import Paths, load_params
from adagen.data import load_dataset
from adagen.io import load_checkpoint, load_json
from adagen.metrics import held_out_fid
from adagen.reward.backbone import UNIT_MEAN, UNIT_STD, load_backbone
from adagen.reward.discriminator import ProjectedDiscriminator, discriminator_config, discriminator_loss
from adagen.sampling import class_balanced_labels, sample_images
from adagen.stages import generator_factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--paradigm", required=True)
    parser.add_argument("--samples", type=int, default=300, help="samples per grid cell (training and scoring each)")
    parser.add_argument("--steps", type=int, default=300, help="discriminator steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4, help="discriminator learning rate (Adam, betas 0.5, 0.999)")
    parser.add_argument("--seed", type=int, default=2_000_000)
    args = parser.parse_args()

    params, paths = load_params(args.params), Paths.for_params_file(args.params)
    dataset = load_dataset(paths.dataset)
    grid = load_json(paths.tuned_static(args.paradigm))["grid"]  # each cell: its knobs, then its scores
    knobs = list(params["adagen"]["tuning"]["grids"][args.paradigm])
    base = params["generators"][args.paradigm]["sampling"]
    labels = class_balanced_labels(args.samples, dataset.num_classes)
    make_generator, fakes = generator_factory(paths, args.paradigm), {"train": [], "score": []}
    for index, cell in enumerate(tqdm(grid, desc="sampling the grid")):
        settings = {**base, **{knob: cell[knob] for knob in knobs}}
        generator = make_generator(settings)
        for part, offset in (("train", 0), ("score", 1)):
            seed = args.seed + (2 * index + offset) * args.samples
            fakes[part].append(sample_images(generator, labels, seed=seed, batch_size=250, progress=False)["images"])

    torch.manual_seed(0)
    backbone = load_backbone(load_checkpoint(paths.reward_backbone))
    discriminator = ProjectedDiscriminator(backbone, discriminator_config(
        params["adagen"]["discriminator"], num_classes=dataset.num_classes, resolution=dataset.resolution,
        mean=(UNIT_MEAN,), std=(UNIT_STD,)))
    optimizer = torch.optim.Adam([p for p in discriminator.parameters() if p.requires_grad], lr=args.lr,
                                 betas=(0.5, 0.999))
    fake_images = torch.from_numpy(np.concatenate(fakes["train"])).float() / 255.0
    fake_labels = torch.from_numpy(np.tile(labels, len(grid)))
    reals = torch.from_numpy(dataset.train_images).float() / 255.0
    real_labels = torch.from_numpy(dataset.train_labels).long()
    stream = torch.Generator().manual_seed(0)
    discriminator.train()
    for _ in tqdm(range(args.steps), desc="discriminator"):
        fake_index = torch.randint(0, len(fake_images), (args.batch,), generator=stream)
        real_index = torch.randint(0, len(reals), (args.batch,), generator=stream)
        loss = discriminator_loss(discriminator(reals[real_index], real_labels[real_index]),
                                  discriminator(fake_images[fake_index], fake_labels[fake_index]))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rewards, backbone_fids = [], []
    for images in fakes["score"]:
        batch = torch.from_numpy(images).float() / 255.0
        rewards.append(discriminator.reward(batch, torch.from_numpy(labels)).mean().item())
        # The same samples' FID in the reward backbone's own features: does the reward follow its feature space?
        backbone_fids.append(held_out_fid(images, dataset.train_images, {"kind": "reward-backbone"},
                                          params["metrics"], paths.reward_backbone))
    print(f"{'cell':<56} {'FID evaluator':>14} {'FID backbone':>13} {'mean reward':>12}")
    for cell, reward, backbone_fid in zip(grid, rewards, backbone_fids):
        name = ", ".join(f"{knob}={cell[knob]}" for knob in knobs)
        print(f"{name:<56} {cell['fid_train']:>14.3f} {backbone_fid:>13.3f} {reward:>12.4f}")
    evaluator_fids = [cell["fid_train"] for cell in grid]
    print(f"over {len(grid)} cells (FID against the train split; evaluator FID from the tune-static search):")
    print(f"  Spearman(mean reward, -FID evaluator) = {spearmanr(rewards, [-f for f in evaluator_fids]).statistic:.3f}"
          "   <- the check (>= 0.8 wanted)")
    print(f"  Spearman(mean reward, -FID backbone)  = {spearmanr(rewards, [-f for f in backbone_fids]).statistic:.3f}")
    print(f"  Spearman(FID backbone, FID evaluator) = {spearmanr(backbone_fids, evaluator_fids).statistic:.3f}")


if __name__ == "__main__":
    main()
