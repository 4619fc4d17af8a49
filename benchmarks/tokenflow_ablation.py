#!/usr/bin/env python
"""TokenFlow's claim at toy scale: with the semantic branch, a linear probe on the codes' embeddings
classifies digits better than with a pixel-only VQ of the same code budget, at similar PSNR.

    python benchmarks/tokenflow_ablation.py --teacher checkpoints/teacher-mnist [--steps 800] [--seeds 0 1 2]

Both variants: configs/tokenflow/mnist.yaml, same codebook size, same scales (85 tokens) and the same
embedding width (pixel-only: d_pix = d_sem + d_pix of the dual one); the teacher never saw labels.
Probe: logistic regression on the flattened quantised feature map (finest grid), trained on 2,000
training digits, accuracy on the 500 held-out digits. PSNR: mean per-image PSNR on the held-out set.
Last line: {"probe_acc_dual", "probe_acc_pixel", "psnr_dual", "psnr_pixel", ...} (means over seeds).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.config import load_config  # noqa: E402
from vistok.data.mnist import MNIST  # noqa: E402
from vistok.metrics.image import ReconstructionMeter  # noqa: E402
from vistok.loading import model_from_run  # noqa: E402
from vistok.training.trainer import train  # noqa: E402


@torch.no_grad()
def features(model, images, batch=250):
    return torch.cat([model.quantize(images[i:i + batch])[0].flatten(1) for i in range(0, len(images), batch)])


def linear_probe(train_x, train_y, test_x, test_y, epochs=300, seed=0) -> float:
    torch.manual_seed(seed)
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
    w = torch.zeros(train_x.shape[1], 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        loss = F.cross_entropy(train_x @ w + b, train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(((test_x @ w + b).argmax(1) == test_y).double().mean())


def run(variant, seed, steps, teacher, tmp):
    overrides = [f"train.max_steps={steps}", f"train.seed={seed}", f"model.teacher={teacher}", "train.progress=false",
                 "train.image_every=0", "train.eval_every=0", "train.log_with=none", f"train.checkpoint_every={steps}",
                 f"train.output_dir={tmp}/{variant}-{seed}"]
    if variant == "pixel":
        overrides += ["model.semantic=false", "model.dim_pix=20"]
    train(load_config("configs/tokenflow/mnist.yaml", overrides))
    model, _, _ = model_from_run(f"{tmp}/{variant}-{seed}")
    tr, te = MNIST("train", limit=2000), MNIST("test")
    meter = ReconstructionMeter(model.codebook_size)
    with torch.no_grad():
        for i in range(0, len(te), 250):
            x = te.images[i:i + 250]
            xr, codes = model.reconstruct(x)
            meter.update(x, xr.clamp(-1, 1), codes)
    m = meter.compute()
    acc = linear_probe(features(model, tr.images), tr.labels, features(model, te.images), te.labels, seed=seed)
    return {"probe_acc": acc, "psnr": m["psnr"], "codebook_usage": m["codebook_usage"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="checkpoints/teacher-mnist")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    if not os.path.isdir(args.teacher):
        raise SystemExit(f"teacher '{args.teacher}' not found: train configs/teacher/mnist.yaml and "
                         f"`python release.py --model RUN --out {args.teacher}` first")
    rows = {"dual": [], "pixel": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for variant in ("dual", "pixel"):
                rows[variant].append(run(variant, seed, args.steps, args.teacher, tmp))
                print(f"seed {seed} {variant}: {rows[variant][-1]}", file=sys.stderr)
    out = {}
    for v in ("dual", "pixel"):
        for k in ("probe_acc", "psnr", "codebook_usage"):
            vals = [r[k] for r in rows[v]]
            out[f"{k}_{v}"] = round(statistics.mean(vals), 4)
            out[f"{k}_{v}_spread"] = round(max(vals) - min(vals), 4)
    out.update(steps=args.steps, seeds=args.seeds, per_seed=rows)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
