"""Which sampling setting trades precision for recall at all, and does the fidelity score follow it?

The fidelity-diversity knob can only move along directions in which precision rises while recall falls, and the
fidelity policy only finds them if its fidelity score rises along them too. This checks both without any policy:
for each paradigm it takes the tuned-static settings of a finished `snakemake all` run, multiplies one setting at a
time by each factor, samples every evaluation seed (the same labels and noise for every factor) and prints FID,
precision, recall and the mean fidelity score (log p(label | image) under the pipeline's fidelity classifier),
then the Spearman correlations of each with the factor.

    python benchmarks/static_tradeoff.py --params params/default.yaml --paradigm var --knob cfg
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import spearmanr

from adagen.config import Paths, load_params
from adagen.data import load_dataset
from adagen.metrics import evaluate_images, load_classifier
from adagen.reward.fidelity import class_log_probability
from adagen.sampling import class_balanced_labels, sample_images
from adagen.stages import generator_factory, sampling_settings

KNOBS = ("cfg", "sample_temp")  # the sampling settings scaled by default, where a paradigm has them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--paradigm", action="append", help="setting(s) to sweep (default: all of the set)")
    parser.add_argument("--knob", action="append", help=f"sampling setting(s) to scale (default: {', '.join(KNOBS)})")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    args = parser.parse_args()

    params, paths = load_params(args.params), Paths.for_params_file(args.params)
    dataset = load_dataset(paths.dataset)
    score = class_log_probability(load_classifier(paths.fidelity_classifier))
    section = params["sample"]
    labels = class_balanced_labels(section["n_samples"], dataset.num_classes)
    targets = torch.from_numpy(np.tile(labels, len(section["seeds"])))  # the labels of every seed's samples in turn
    print("| setting | knob | value | FID | precision | recall | mean log p |\n|---|---|---|---|---|---|---|")
    for paradigm in args.paradigm or params["paradigms"]:
        tuned = sampling_settings(params, paths, paradigm, "tuned-static")
        make_generator = generator_factory(paths, paradigm)
        for knob in args.knob or [name for name in KNOBS if name in tuned]:
            rows = []
            for factor in args.factors:
                generator = make_generator({**tuned, knob: tuned[knob] * factor})
                images = np.concatenate([sample_images(generator, labels, seed=seed, batch_size=section["batch_size"],
                                                       progress=False)["images"] for seed in section["seeds"]])
                metrics = evaluate_images(images, dataset.val_images, params["evaluator"], params["metrics"],
                                          paths.evaluator, paths.refstats_dir)
                metrics["log_p"] = score(torch.from_numpy(images).float() / 255.0, targets).mean().item()
                rows.append(metrics)
                print(f"| {paradigm} | {knob} | {tuned[knob] * factor:.3g} (x{factor:g}) | {metrics['fid']:.3f} | "
                      f"{metrics['precision']:.4f} | {metrics['recall']:.4f} | {metrics['log_p']:.4f} |", flush=True)
            trend = {key: spearmanr(args.factors, [row[key] for row in rows]).statistic
                     for key in ("precision", "recall", "log_p")}
            print(f"{paradigm} {knob}: Spearman with the factor, precision {trend['precision']:+.2f}, recall "
                  f"{trend['recall']:+.2f}, log p {trend['log_p']:+.2f} ({len(section['seeds'])} seeds x "
                  f"{section['n_samples']} samples per value)", flush=True)


if __name__ == "__main__":
    main()
