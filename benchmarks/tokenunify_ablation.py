#!/usr/bin/env python
"""Does autoregressive mixture pretraining help neuron segmentation? Scratch vs random-token-only vs the
TokenUnify mixture, the same fine-tuning budget, held-out procedural EM volumes.

    python benchmarks/tokenunify_ablation.py [--pretrain-steps 600] [--finetune-steps 300] [--seeds 0]

1. Pretrain configs/tokenunify/toy_pretrain.yaml twice for --pretrain-steps: random-token only (weights
   random 1, next 0, next_all 0) and the mixture (random / next + next_all alternating).
2. Fine-tune configs/tokenunify/toy_seg.yaml for --finetune-steps three times: from scratch, from (1a), from
   (1b) (encoder loaded; stem, decoder and pretraining heads fresh). Same data, seed, schedule.
3. Held-out test volumes (never seen in pretraining or fine-tuning): affinities -> section-wise watershed ->
   VOI (bits, lower is better) and ARAND.
Last line: {"voi_scratch", "voi_random_token", "voi_tokenunify", "arand_scratch", "arand_random_token",
"arand_tokenunify", ...} (means over --seeds).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.config import load_config  # noqa: E402
from vistok.training.trainer import train  # noqa: E402

QUIET = ["train.log_with=none", "train.progress=false", "train.image_every=0"]
SKIP = "train.init_skip=[head.,next_head.,stem.,decoder.]"


def pretrain(name: str, weights: str, steps: int, seed: int, tmp: str) -> str:
    out = os.path.join(tmp, f"pre-{name}-{seed}")
    train(load_config("configs/tokenunify/toy_pretrain.yaml", QUIET + [
        f"model.weights={weights}", f"train.max_steps={steps}", f"train.seed={seed}", f"train.eval_every={steps}",
        f"train.checkpoint_every={steps}", f"train.output_dir={out}"]))
    return out


def finetune(name: str, init: str | None, steps: int, seed: int, tmp: str) -> dict:
    extra = [f"train.init_from={init}", SKIP] if init else []
    summary = train(load_config("configs/tokenunify/toy_seg.yaml", QUIET + extra + [
        f"train.max_steps={steps}", f"train.seed={seed}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
        f"train.output_dir={os.path.join(tmp, f'seg-{name}-{seed}')}"]))
    m = summary["metrics"]
    return {"voi": m["eval/voi"], "arand": m["eval/arand"], "voi_ema": m.get("eval_ema/voi"), "arand_ema": m.get("eval_ema/arand")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    rows = {"scratch": [], "random_token": [], "tokenunify": []}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            random_only = pretrain("random", "{random: 1.0, next: 0.0, next_all: 0.0}", args.pretrain_steps, seed, tmp)
            mixture = pretrain("mixture", "{random: 1.0, next: 1.0, next_all: 1.0}", args.pretrain_steps, seed, tmp)
            for name, init in (("scratch", None), ("random_token", random_only), ("tokenunify", mixture)):
                r = finetune(name, init, args.finetune_steps, seed, tmp)
                rows[name].append(r)
                print(f"seed {seed} {name}: {r}", flush=True)
    out = {}
    for metric in ("voi", "arand"):
        for name in rows:
            out[f"{metric}_{name}"] = round(statistics.fmean(r[metric] for r in rows[name]), 4)
    out.update(per_seed=rows, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps, seeds=args.seeds,
               seconds=round(time.perf_counter() - t0, 1),
               setup="procedural EM 8x32x32 crops, (2,8,8) patches, 2 tri-directional Mamba blocks x 32; metrics of the "
                     "final (non-EMA) weights on the held-out volumes")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
