#!/usr/bin/env python
"""Throughput of 2 CPU processes (torchrun, gloo, 1 thread each) relative to 1 process (2 threads), same
model, same global batch, same steps: the machine's 2 cores used by data parallelism vs by intra-op threads.

    python benchmarks/multiprocess.py [--steps 60] [--batch 64]

Each run is the real CLI (`train.py`, `configs/vqgan/mnist.yaml` with a small model, fp32, no evaluation);
the figure is the ratio of the trainers' own steps/s (set-up and process start excluded), which is also
the ratio of images/s since the global batch is equal. Last line: {"throughput_ratio_2_over_1": x, ...}
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["model.ch=16", "model.codebook_size=128", "model.kmeans_init=false", "train.mixed_precision=no",
          "train.eval_every=0", "train.image_every=0", "train.progress=false", "train.log_with=none",
          "train.ema_decay=0", "data.limit=2048"]


def run(processes: int, batch: int, steps: int, out: str) -> dict:
    args = ["train.py", "--config", "configs/vqgan/mnist.yaml", *COMMON, f"train.max_steps={steps}",
            f"train.checkpoint_every={steps}", f"train.batch_size={batch // processes}", f"train.output_dir={out}"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(2 // processes))
    cmd = [sys.executable, *args] if processes == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                          "--nproc_per_node", str(processes), *args]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    with open(os.path.join(out, "train_summary.json")) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=64, help="global batch (split over the processes)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    ratios, one_sps, two_sps = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            a = run(1, args.batch, args.steps, os.path.join(tmp, f"one-{r}"))["steps_per_second"]
            b = run(2, args.batch, args.steps, os.path.join(tmp, f"two-{r}"))["steps_per_second"]
            one_sps.append(a)
            two_sps.append(b)
            ratios.append(b / a)
            print(f"repeat {r}: 1 process {a:.2f} steps/s, 2 processes {b:.2f} steps/s, ratio {b / a:.3f}", flush=True)
    print(json.dumps({"throughput_ratio_2_over_1": round(statistics.median(ratios), 3), "per_repeat": [round(x, 3) for x in ratios],
                      "steps_per_s_1": one_sps, "steps_per_s_2": two_sps, "global_batch": args.batch, "steps": args.steps,
                      "threads": "1 process x 2 threads vs 2 processes x 1 thread"}))


if __name__ == "__main__":
    main()
