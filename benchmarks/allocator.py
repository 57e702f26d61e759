"""What keeping freed memory (adagen.allocator) saves in sampling, and that it changes no image.

For each paradigm of a finished `snakemake all` run it samples the same images in fresh processes, one with
glibc's default allocator settings and one with `keep_freed_memory()`, alternating them `--repeats` times; it
prints each kind's mean wall, sampling, user and system seconds and whether every process gave the same images to
the bit.

    OMP_NUM_THREADS=1 python benchmarks/allocator.py --params params/default.yaml --best-of 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

# One process's work: sample with the pipeline's own `generate`; print its seconds and the images' digest.
CHILD = """
import hashlib, json, sys, time
from adagen.allocator import keep_freed_memory
settings = json.loads(sys.argv[1])
if settings.pop("keep"):
    assert keep_freed_memory(), "not glibc: nothing to compare"
from adagen.generate import generate
started = time.perf_counter()
result = generate(settings.pop("params"), settings.pop("paradigm"), **settings)
print(json.dumps({"seconds": time.perf_counter() - started,
                  "sha256": hashlib.sha256(result.images.numpy().tobytes()).hexdigest()}))
"""


def run_child(settings: dict) -> dict:
    """The child's own figures, with its user and system CPU seconds (imports included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    output = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], check=True, capture_output=True,
                            text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {**json.loads(output.strip().splitlines()[-1]), "wall": time.perf_counter() - started,
            "user": after.ru_utime - before.ru_utime, "system": after.ru_stime - before.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--paradigm", action="append", help="setting(s) to sample (default: maskgit, var, dit, sit)")
    parser.add_argument("--variant", default="adaptive")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--best-of", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    print("| paradigm | allocator | wall s | sampling s | user s | system s | same images |")
    print("|---|---|---|---|---|---|---|")
    for paradigm in args.paradigm or ["maskgit", "var", "dit", "sit"]:
        runs = {False: [], True: []}
        for _ in range(args.repeats):
            for keep in runs:
                runs[keep].append(run_child({"keep": keep, "params": args.params, "paradigm": paradigm,
                                             "variant": args.variant, "count": args.count,
                                             "batch_size": args.batch_size, "best_of": args.best_of}))
        same = len({run["sha256"] for kind in runs.values() for run in kind}) == 1
        for keep, label in ((False, "glibc default"), (True, "keep freed memory")):
            mean = {key: np.mean([run[key] for run in runs[keep]]) for key in ("wall", "seconds", "user", "system")}
            print(f"| {paradigm} | {label} | {mean['wall']:.1f} | {mean['seconds']:.1f} | {mean['user']:.1f} "
                  f"| {mean['system']:.1f} | {'yes' if same else 'NO'} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
