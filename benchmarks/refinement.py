"""Inference-time refinement on a finished run: does best-of-N (the trained discriminator's favourite of N
candidates) or value-guided lookahead (K candidate next states per step, the critic's favourite; MaskGIT, VAR)
lower FID below the plain adaptive policy, and at what compute?

For each setting, samples the evaluation's labels on its first seed (or on every evaluation seed, `--all-seeds`)
with the adaptive policy, plain and refined (candidate 0 is always the plain sample or step), and evaluates them
against the pipeline's reference with the pipeline's feature network. Prints FID, precision, recall and the
compute per sample (generator NFE, network forwards, discriminator and critic calls), and with several seeds the
paired FID difference refined - plain, mean +- standard deviation over the seeds (the pipeline's `refine` stage
measures the first seed only, which is within one seed's noise of FID at this size).

    python benchmarks/refinement.py --params params/default.yaml --best-of 4 --lookahead 4 --all-seeds
"""

from __future__ import annotations

import argparse

import numpy as np

from adagen.config import Paths, load_params
from adagen.data import load_dataset
from adagen.generate import SELECTIONS, generate
from adagen.generators import paradigm_of
from adagen.metrics import evaluate_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--paradigm", action="append", help="setting(s) to measure (default: all of the set)")
    parser.add_argument("--best-of", type=int, default=4)
    parser.add_argument("--selection", choices=SELECTIONS, default="resample",
                        help="best-of-N: resample by the discriminator's density ratio, or keep its favourite")
    parser.add_argument("--lookahead", type=int, default=4, help="candidates per step (MaskGIT, VAR); 1: skip")
    parser.add_argument("--all-seeds", action="store_true", help="every evaluation seed, not only the first")
    args = parser.parse_args()

    params, paths = load_params(args.params), Paths.for_params_file(args.params)
    dataset = load_dataset(paths.dataset)
    section = params["sample"]
    seeds = section["seeds"] if args.all_seeds else section["seeds"][:1]
    print("| setting | sampling | seed | FID | precision | recall | NFE | forwards | discriminator calls | critic calls |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    differences = {}
    for paradigm in args.paradigm or params["paradigms"]:
        refinements = [("adaptive", {}), (f"adaptive + best of {args.best_of} ({args.selection})",
                                          {"best_of": args.best_of, "selection": args.selection})]
        if args.lookahead > 1 and paradigm_of(paradigm).stochastic_steps:
            refinements.append((f"adaptive + lookahead {args.lookahead}", {"lookahead": args.lookahead}))
        for seed in seeds:
            plain_fid = None
            for name, refinement in refinements:
                result = generate(args.params, paradigm, "adaptive", count=section["n_samples"], seed=seed,
                                  batch_size=section["batch_size"], **refinement)
                scores = evaluate_images(result.images.numpy(), dataset.val_images, params["evaluator"],
                                         params["metrics"], paths.evaluator, paths.refstats_dir)
                print(f"| {paradigm} | {name} | {seed} | {scores['fid']:.3f} | {scores['precision']:.3f} | "
                      f"{scores['recall']:.3f} | {result.nfe} | {result.forwards} | {result.discriminator_calls} | "
                      f"{result.critic_calls} |", flush=True)
                if plain_fid is None:
                    plain_fid = scores["fid"]
                else:
                    differences.setdefault((paradigm, name), []).append(scores["fid"] - plain_fid)
    if len(seeds) > 1:
        print("\n| setting | sampling | FID refined - plain, mean +- std over seeds |\n|---|---|---|")
        for (paradigm, name), values in differences.items():
            print(f"| {paradigm} | {name} | {np.mean(values):+.3f} +- {np.std(values, ddof=1):.3f} |")


if __name__ == "__main__":
    main()
