"""Best-of-N refinement on a finished run: does keeping the trained discriminator's favourite of N candidates
lower FID below the plain adaptive policy, and at what compute?

For each setting, samples the evaluation's labels on its first seed with the adaptive policy, plain and best of N
(candidate 0 of each sample is the plain sample), and evaluates both against the pipeline's reference with the
pipeline's feature network. Prints FID, precision, recall and the compute per sample (generator NFE, network
forwards, discriminator calls).

    python benchmarks/refinement.py --params params/default.yaml --best-of 4
"""

from __future__ import annotations

import argparse

from adagen.config import Paths, load_params
from adagen.data import load_dataset
from adagen.generate import generate
from adagen.metrics import evaluate_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--paradigm", action="append", help="setting(s) to measure (default: all of the set)")
    parser.add_argument("--best-of", type=int, default=4)
    args = parser.parse_args()

    params, paths = load_params(args.params), Paths.for_params_file(args.params)
    dataset = load_dataset(paths.dataset)
    section = params["sample"]
    print(f"| setting | sampling | FID | precision | recall | NFE | forwards | discriminator calls |")
    print("|---|---|---|---|---|---|---|---|")
    for paradigm in args.paradigm or params["paradigms"]:
        for best_of in (1, args.best_of):
            result = generate(args.params, paradigm, "adaptive", count=section["n_samples"], seed=section["seeds"][0],
                              batch_size=section["batch_size"], best_of=best_of)
            scores = evaluate_images(result.images.numpy(), dataset.val_images, params["evaluator"], params["metrics"],
                                     paths.evaluator, paths.refstats_dir)
            name = "adaptive" if best_of == 1 else f"adaptive + best of {best_of}"
            print(f"| {paradigm} | {name} | {scores['fid']:.3f} | {scores['precision']:.3f} | {scores['recall']:.3f} | "
                  f"{result.nfe} | {result.forwards} | {result.discriminator_calls} |", flush=True)


if __name__ == "__main__":
    main()
