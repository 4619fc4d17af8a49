#!/usr/bin/env python
"""VAT's claim at toy scale: a Gaussian (KL-regularised) latent before the 1-D multi-scale residual VQ gives codes
that reconstruct as well and are easier for the coarse-to-fine AR model than a plain deterministic latent. Both
variants at equal bytes (same scales and codebook: 63 one-byte codes a shape), through the user CLIs:

    python benchmarks/vat_latent_ablation.py [--seeds 0 1] [--steps 400 150 400] [--data-size 1000]

Per variant (``model.variational`` true / false, nothing else differs: false drops the log-sigma head, the
sampling and the KL term) and seed: VAT stage 1 (configs/vat/shapes_stage1.yaml) and stage 2 (shapes_stage2.yaml),
``--steps`` [0] / [1] steps on ``--data-size`` training shapes; a tokenizer release; ``evaluate.py shape`` on the
first ``--num-shapes`` held-out shapes at every budget in ``--budgets`` (F-score@0.02, Chamfer-L1, IoU); the
class-conditional next-scale AR model of configs/vat/gen_shapes.yaml, ``--steps`` [2] steps, on each tokenizer's
own codes, and its held-out next-code loss (``code_ce``, nats per code, on the encoded test split). Code sets
differ in their own entropy, so ``codes_entropy`` (per-scale unigram entropy of the training codes, averaged over
the 63 positions) and ``code_gain`` = codes_entropy - code_ce (how far the model gets below guessing each scale's
marginal) are given too. Last line: per variant the mean and spread (min, max) over seeds of each figure, and every
run's figures. ``--summarise`` recomputes the last line from an earlier OUT/results.json without training.
"""
import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from demo import stage  # noqa: E402

import ablation_runs  # noqa: E402  (benchmarks/, this script's folder)

VARIANTS = ("variational", "deterministic")


def codes_entropy(gen_run: str, scales: list[int]) -> float:
    """Mean over code positions of the unigram entropy (nats) of each scale's codes in the training cache."""
    import torch
    from safetensors.torch import load_file

    (cache,) = glob.glob(os.path.join(gen_run, "token_cache", "train-*.safetensors"))
    codes = load_file(cache)["codes"].reshape(-1, sum(scales)).long()
    total, start = 0.0, 0
    for n in scales:
        counts = torch.bincount(codes[:, start:start + n].reshape(-1)).double()
        p = counts[counts > 0] / counts.sum()
        total += n * float(-(p * p.log()).sum())
        start += n
    return total / sum(scales)


def run(variant: str, seed: int, args, timings: dict) -> dict:
    flag = "true" if variant == "variational" else "false"
    root = os.path.join(args.out, f"{variant}-s{seed}")
    s1, s2, gen, rel = (os.path.join(root, n) for n in ("stage1", "stage2", "generator", "release-tokenizer"))
    steps1, steps2, steps_gen = args.steps
    both = [f"model.variational={flag}", f"train.seed={seed}", f"data.size={args.data_size}"]
    ablation_runs.train(f"{variant} s{seed} stage 1", timings, "configs/vat/shapes_stage1.yaml", s1, steps1, *both)
    ablation_runs.train(f"{variant} s{seed} stage 2", timings, "configs/vat/shapes_stage2.yaml", s2, steps2, *both,
                        f"train.init_from={s1}")
    stage(f"{variant} s{seed} release", timings, ["release.py", "--tokenizer", s2, "--out", rel])
    recon = stage(f"{variant} s{seed} shape eval", timings, ["evaluate.py", "shape", "--pipeline", rel, "--num-shapes",
                  str(args.num_shapes), "--num-scales", *map(str, args.budgets), "--out",
                  os.path.join(root, "eval_shape.json")])
    metrics = ablation_runs.train(f"{variant} s{seed} generator", timings, "configs/vat/gen_shapes.yaml", gen, steps_gen,
                                  f"data.tokenizer={rel}", f"train.seed={seed}", f"train.eval_batches={args.eval_batches}")
    ce = metrics.get("eval_ema/ce", metrics.get("eval/ce"))
    row = {"variant": variant, "seed": seed, "code_ce": ce, "code_accuracy": metrics.get(
        "eval_ema/token_accuracy", metrics.get("eval/token_accuracy")),
        "codes_entropy": codes_entropy(gen, json.load(open(os.path.join(rel, "tokenizer", "config.json")))["scales"])}
    for name, b in recon["budgets"].items():
        for m in ("fscore@0.02", "chamfer_l1", "iou"):
            row[f"{m}/{name}"] = b[m]
        row[f"bytes/{name}"] = b["bytes"]
    return row


def with_gain(row: dict) -> dict:
    return {**row, "code_gain": row["codes_entropy"] - row["code_ce"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ablation_runs.add_arguments(p, "runs/bench-vat-latent", [400, 150, 400])
    p.add_argument("--data-size", type=int, default=1000, help="training shapes (the held-out split is fixed)")
    p.add_argument("--num-shapes", type=int, default=16, help="held-out shapes for F-score / Chamfer / IoU")
    p.add_argument("--budgets", type=int, nargs="+", default=[3, 6], help="decode from the first K scales")
    p.add_argument("--eval-batches", type=int, default=8)
    args = p.parse_args()
    rows, timings = ablation_runs.run_all(args, VARIANTS, run)
    rows = [with_gain(r) for r in rows]
    keys = ["code_ce", "code_gain", "codes_entropy", "code_accuracy"]
    keys += sorted(k for k in rows[0] if "/" in k and not k.startswith("bytes/"))
    ablation_runs.write_summary(args, VARIANTS, rows, keys, timings,
                                bytes={k.split("/", 1)[1]: v for k, v in rows[0].items() if k.startswith("bytes/")})


if __name__ == "__main__":
    main()
