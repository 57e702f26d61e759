"""The fidelity-diversity sweep on every evaluation seed: is the knob's trend larger than the noise of one seed?

The pipeline's `tradeoff` stage blends the adaptive and fidelity policies at each of `adagen.fidelity.lambdas` on
the first evaluation seed only (300 samples at the embedded size). This repeats the sweep on all of
`sample.seeds` together (900 samples per lambda), on the same labels and noise for every lambda, and prints FID,
precision, recall and IS per lambda and the Spearman correlations of precision and recall with lambda.

    python benchmarks/tradeoff.py --params params/default.yaml --paradigm dit
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import spearmanr

from adagen.config import Paths, load_params
from adagen.data import load_dataset
from adagen.generate import generate
from adagen.metrics import evaluate_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--paradigm", action="append", help="setting(s) to sweep (default: all of the set)")
    args = parser.parse_args()

    params, paths = load_params(args.params), Paths.for_params_file(args.params)
    dataset = load_dataset(paths.dataset)
    section, lambdas = params["sample"], params["adagen"]["fidelity"]["lambdas"]
    print("| setting | lambda | FID | precision | recall | IS |\n|---|---|---|---|---|---|")
    for paradigm in args.paradigm or params["paradigms"]:
        rows = []
        for lam in lambdas:
            images = np.concatenate([
                generate(args.params, paradigm, "adaptive", count=section["n_samples"], seed=seed,
                         batch_size=section["batch_size"], lam=lam).images.numpy() for seed in section["seeds"]])
            rows.append(evaluate_images(images, dataset.val_images, params["evaluator"], params["metrics"],
                                        paths.evaluator, paths.refstats_dir))
            print(f"| {paradigm} | {lam:g} | {rows[-1]['fid']:.3f} | {rows[-1]['precision']:.4f} | "
                  f"{rows[-1]['recall']:.4f} | {rows[-1]['isc']:.3f} |", flush=True)
        trend = {key: spearmanr(lambdas, [row[key] for row in rows]).statistic for key in ("precision", "recall")}
        print(f"{paradigm}: Spearman with lambda, precision {trend['precision']:+.2f}, recall {trend['recall']:+.2f} "
              f"({len(section['seeds'])} seeds x {section['n_samples']} samples per lambda)", flush=True)


if __name__ == "__main__":
    main()
