#!/usr/bin/env python
"""xAR's noisy context learning vs teacher forcing on MNIST, at the same model, steps and data.

    python benchmarks/xar_ablation.py --tokenizer checkpoints/demo-xar-kl [--steps 1500] [--seeds 0 1 2]

The tokenizer is a KL release with a measured latent scale (`make demo-xar` writes checkpoints/demo-xar-kl).
Each run trains configs/xar/mnist.yaml (next-cell) with a smaller model (4 x 96) for --steps, then samples
50 digits per class (CFG 5 ramped over the cells, 10 Euler-Maruyama steps per cell, seed 0) and scores them
with the committed LeNet: class accuracy and FD-LeNet vs the 500 held-out digits. Teacher forcing feeds a
clean copy of the sequence as context, so its passes cost about twice the tokens: "same compute" here means
the same optimiser steps and batch. Last line: {"fd_noisy", "fd_teacher", "acc_noisy", "acc_teacher", ...}
(means over seeds).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.xar_mnist import train_and_score  # noqa: E402


def run(noisy: bool, seed: int, args, tmp: str) -> dict:
    return train_and_score("noisy" if noisy else "teacher", [f"model.noisy_context={str(noisy).lower()}", "model.dim=96",
                                                             "model.depth=4"], args.tokenizer, args.steps, seed, tmp)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="checkpoints/demo-xar-kl")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    res = {"noisy": [], "teacher": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for noisy in (True, False):
                r = run(noisy, seed, args, tmp)
                res["noisy" if noisy else "teacher"].append(r)
                print(f"seed {seed} {'noisy context' if noisy else 'teacher forcing'}: {r}", flush=True)
    mean = lambda xs: round(statistics.fmean(xs), 4)  # noqa: E731
    spread = lambda xs: round(max(xs) - min(xs), 4)  # noqa: E731
    out = {}
    for k, short in (("noisy", "noisy"), ("teacher", "teacher")):
        out[f"fd_{short}"] = mean([r["fd_lenet"] for r in res[k]])
        out[f"acc_{short}"] = mean([r["acc"] for r in res[k]])
        out[f"fd_{short}_spread"] = spread([r["fd_lenet"] for r in res[k]])
        out[f"acc_{short}_spread"] = spread([r["acc"] for r in res[k]])
    out.update(steps=args.steps, seeds=args.seeds, per_seed=res, model="next-cell, 4 x 96, CFG 5 ramped, 10 EM steps")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
