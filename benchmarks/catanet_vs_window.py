#!/usr/bin/env python
"""CATANet vs a window-attention baseline (SwinIR-light style, same skeleton, same parameter count) on the
embedded photos, at the same training budget; and inference time of the paper-size x4 models on 256 x 256.

    python benchmarks/catanet_vs_window.py [--steps 1500] [--x4-size 256] [--repeats 3]

1. Trains configs/catanet/toy_x2.yaml (28,307 parameters) and configs/catanet/window_toy_x2.yaml (28,403) for
   --steps each (same data, batch, schedule, seed), then `evaluate.py sr`'s protocol on the held-out photos
   (whole images, Y-PSNR / Y-SSIM, border 2): PSNR and inference time of each.
2. Paper-size x4 models (CATANet 535,195 parameters, trained-like unit centres; the window model 534,651),
   one 256 x 256 LR image, eval mode, no gradients: median seconds over --repeats after a warm-up.
Last line: {"psnr_catanet", "psnr_window", "time_ratio_window_over_catanet", ...} (ratio > 1: CATANet faster).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.config import load_config  # noqa: E402
from vistok.evaluation.sr import evaluate_sr  # noqa: E402
from vistok.sr.catanet import CATANet  # noqa: E402
from vistok.sr.window_sr import WindowSR  # noqa: E402
from vistok.training.trainer import train  # noqa: E402


def train_and_eval(config: str, steps: int, out: str) -> dict:
    t0 = time.perf_counter()
    train(load_config(config, [f"train.max_steps={steps}", f"train.output_dir={out}", "train.progress=false",
                               "train.log_with=none", "train.image_every=0", "train.eval_every=0",
                               f"train.checkpoint_every={steps}"]))
    res = evaluate_sr(out)
    return {"psnr_y": res["psnr_y"], "ssim_y": res["ssim_y"], "bicubic_psnr_y": res["bicubic_psnr_y"], "bicubic_ssim_y": res["bicubic_ssim_y"],
            "eval_seconds": res["seconds"], "train_seconds": round(time.perf_counter() - t0 - res["seconds"], 1),
            "per_image": {r["name"]: round(r["psnr_y"], 3) for r in res["per_image"]}}


@torch.no_grad()
def time_x4(model, size: int, repeats: int) -> float:
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    model.eval().upscale(x)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.upscale(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--x4-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cat = train_and_eval("configs/catanet/toy_x2.yaml", args.steps, os.path.join(tmp, "catanet"))
        print("catanet", cat, flush=True)
        win = train_and_eval("configs/catanet/window_toy_x2.yaml", args.steps, os.path.join(tmp, "window"))
        print("window", win, flush=True)
    torch.manual_seed(0)
    cat4, win4 = CATANet(scale=4), WindowSR(scale=4, dim=40, heads=4, window=8, mlp_dim=138, depth=8)
    for blk in cat4.blocks:  # trained-like centres: unit vectors, marked ready (as after training)
        blk.tab.centers.copy_(F.normalize(blk.tab.centers, dim=-1)), blk.tab.centers_ready.fill_(True)
    t_cat, t_win = time_x4(cat4, args.x4_size, args.repeats), time_x4(win4, args.x4_size, args.repeats)
    count = lambda m: sum(q.numel() for q in m.parameters())  # noqa: E731
    print(json.dumps({
        "psnr_catanet": round(cat["psnr_y"], 3), "psnr_window": round(win["psnr_y"], 3),
        "psnr_bicubic": round(cat["bicubic_psnr_y"], 3), "ssim_catanet": round(cat["ssim_y"], 4),
        "ssim_window": round(win["ssim_y"], 4), "time_ratio_window_over_catanet": round(t_win / t_cat, 3),
        "x4_seconds_catanet": round(t_cat, 3), "x4_seconds_window": round(t_win, 3),
        "x4_params": {"catanet": count(cat4), "window": count(win4)}, "x2_toy": {"catanet": cat, "window": win},
        "steps": args.steps, "x4_input": args.x4_size, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
