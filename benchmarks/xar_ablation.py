#!/usr/bin/env python
"""xAR's noisy context learning vs teacher forcing on MNIST, at the same model, steps and data.

    python benchmarks/xar_ablation.py --tokenizer checkpoints/demo-xar-kl [--steps 600] [--seeds 0 1 2]

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

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.config import load_config  # noqa: E402
from vistok.data.mnist import MNIST  # noqa: E402
from vistok.evaluation.lenet import class_accuracy, fd_lenet, load_lenet  # noqa: E402
from vistok.pipeline import Pipeline, model_from_run  # noqa: E402
from vistok.training.trainer import train  # noqa: E402


def run(noisy: bool, seed: int, args, tmp: str) -> dict:
    out = os.path.join(tmp, f"{'noisy' if noisy else 'teacher'}-{seed}")
    train(load_config("configs/xar/mnist.yaml", [
        f"data.tokenizer={args.tokenizer}", f"model.noisy_context={str(noisy).lower()}", "model.dim=96", "model.depth=4",
        f"train.max_steps={args.steps}", f"train.seed={seed}", "train.progress=false", "train.image_every=0",
        "train.eval_every=0", "train.log_with=none", f"train.checkpoint_every={args.steps}", f"train.output_dir={out}"]))
    gen, _, _ = model_from_run(out)
    tok = Pipeline.from_pretrained(args.tokenizer).tokenizer
    labels = torch.arange(10).repeat_interleave(50)
    with torch.no_grad():
        images = torch.cat([tok.decode(gen.sample(labels[i:i + 100], cfg_scale=5.0, steps=10,
                                                  generator=torch.Generator().manual_seed(i))).clamp(-1, 1)
                            for i in range(0, 500, 100)])
    lenet = load_lenet("checkpoints/fd_lenet")
    return {"acc": class_accuracy(lenet, images, labels), "fd_lenet": fd_lenet(lenet, images, MNIST("test").images)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="checkpoints/demo-xar-kl")
    p.add_argument("--steps", type=int, default=600)
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
