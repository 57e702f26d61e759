"""Inference-time refinement on a finished run: does best-of-N (the trained discriminator's favourite of N
candidates) or value-guided lookahead (K candidate next states per step, the critic's favourite; MaskGIT, VAR)
lower FID below the plain adaptive policy, and at what compute?

For each setting, samples the evaluation's labels on its first seed with the adaptive policy, plain and refined
(candidate 0 is always the plain sample or step), and evaluates them against the pipeline's reference with the
pipeline's feature network. Prints FID, precision, recall and the compute per sample (generator NFE, network
forwards, discriminator and critic calls).

    python benchmarks/refinement.py --params params/default.yaml --best-of 4 --lookahead 4
"""

from __future__ import annotations

import argparse

from adagen.config import Paths, load_params
from adagen.data import load_dataset
from adagen.generate import generate
from adagen.generators import paradigm_of
from adagen.metrics import evaluate_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--paradigm", action="append", help="setting(s) to measure (default: all of the set)")
    parser.add_argument("--best-of", type=int, default=4)
    parser.add_argument("--lookahead", type=int, default=4, help="candidates per step (MaskGIT, VAR); 1: skip")
    args = parser.parse_args()

    params, paths = load_params(args.params), Paths.for_params_file(args.params)
    dataset = load_dataset(paths.dataset)
    section = params["sample"]
    print("| setting | sampling | FID | precision | recall | NFE | forwards | discriminator calls | critic calls |")
    print("|---|---|---|---|---|---|---|---|---|")
    for paradigm in args.paradigm or params["paradigms"]:
        refinements = [("adaptive", {}), (f"adaptive + best of {args.best_of}", {"best_of": args.best_of})]
        if args.lookahead > 1 and paradigm_of(paradigm).stochastic_steps:
            refinements.append((f"adaptive + lookahead {args.lookahead}", {"lookahead": args.lookahead}))
        for name, refinement in refinements:
            result = generate(args.params, paradigm, "adaptive", count=section["n_samples"], seed=section["seeds"][0],
                              batch_size=section["batch_size"], **refinement)
            scores = evaluate_images(result.images.numpy(), dataset.val_images, params["evaluator"], params["metrics"],
                                     paths.evaluator, paths.refstats_dir)
            print(f"| {paradigm} | {name} | {scores['fid']:.3f} | {scores['precision']:.3f} | {scores['recall']:.3f} | "
                  f"{result.nfe} | {result.forwards} | {result.discriminator_calls} | {result.critic_calls} |", flush=True)


if __name__ == "__main__":
    main()
