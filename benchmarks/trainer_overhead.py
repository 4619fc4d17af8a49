#!/usr/bin/env python
"""Trainer overhead: vistok's trainer (EMA, tensorboard logging, periodic checkpoints, as a user runs
it) vs a bare PyTorch loop over the same model, data, batch, optimizer, schedule and precision.

    python benchmarks/trainer_overhead.py [--steps 150] [--repeats 3]

Runs alternate (bare, trainer, bare, trainer, ...); ``overhead`` is the median over repeats of the
paired ratio (trainer time / bare time - 1), which drift of the machine between pairs does not bias;
the ratio of the medians is printed too. Only the training loop is timed in both (set-up excluded).
Last line: {"overhead": fraction, ...}
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.config import build, load_config  # noqa: E402
from vistok.data.base import build_dataset  # noqa: E402
from vistok.training.schedules import build_schedule  # noqa: E402
from vistok.training.trainer import make_loader, train  # noqa: E402

OVERRIDES = ["model.ch=16", "train.eval_every=0", "train.image_every=0", "train.progress=false", "train.log_every=10"]


def bare_loop(cfg) -> float:
    torch.manual_seed(cfg.train.seed)
    t = cfg.train
    model = build("model", cfg.model).train()
    loader = make_loader(build_dataset(cfg.data, "train"), t.batch_size, t.seed, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    sched = build_schedule(opt, t, 1)
    step, epoch = 0, 0
    t0 = time.time()
    while step < t.max_steps:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.mixed_precision == "bf16"):
                loss = model(batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step >= t.max_steps:
                break
        epoch += 1
    return time.time() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/vqgan/mnist.yaml")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    bare, ours = [], []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(args.config, OVERRIDES + [f"train.max_steps={args.steps}",
                                                        f"train.checkpoint_every={args.steps // 2}",
                                                        f"train.output_dir={tmp}/run"])
            bare.append(bare_loop(cfg))
            ours.append(train(cfg)["seconds"])
        print(f"repeat {r}: bare {bare[-1]:.2f} s, trainer {ours[-1]:.2f} s", file=sys.stderr)
    b, o = statistics.median(bare), statistics.median(ours)
    paired = [y / x - 1 for x, y in zip(bare, ours)]  # each pair runs back to back: robust to machine drift
    print(json.dumps({"overhead": round(statistics.median(paired), 4), "ratio_of_medians": round(o / b - 1, 4),
                      "bare_steps_per_s": round(args.steps / b, 3),
                      "trainer_steps_per_s": round(args.steps / o, 3), "steps": args.steps, "repeats": args.repeats,
                      "per_repeat_overhead": [round(r, 4) for r in paired],
                      "features": "EMA, tensorboard every 10 steps, 2 checkpoints, bf16, grad clip",
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
