#!/usr/bin/env python
"""`make demo`: the embedded pipeline end to end on the CPU, through the same CLIs a user runs.

    train (configs/vqgan/mnist.yaml) -> release.py -> sample.py -> evaluate.py recon -> report

Writes runs/demo/metrics.json ({"tokenizer": {...}}), runs/demo/report.md (with pictures) and a copy
of the metrics in results/demo_metrics.json. Re-running resumes an interrupted training run
(train.resume=latest) and redoes the cheap stages. --quick trains a tiny model for a smoke test.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["train.max_steps=30", "model.ch=8", "model.z_channels=16", "model.codebook_size=64", "train.eval_every=15",
         "train.image_every=15", "train.checkpoint_every=15", "train.batch_size=32"]


def stage(name, timings, args):
    print(f"\n=== {name}: {' '.join(args)}", flush=True)
    t0 = time.time()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout[-2000:])
    if proc.returncode != 0:
        raise SystemExit(f"demo stage '{name}' failed (exit {proc.returncode})")
    timings[name] = round(time.time() - t0, 1)
    print(f"--- {name} took {timings[name]} s", flush=True)
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--release", default="checkpoints/demo")
    p.add_argument("--quick", action="store_true", help="tiny model, 30 steps: a smoke test of the whole chain")
    p.add_argument("--results", default=None, help="also copy metrics.json here (default results/demo_metrics.json; "
                                                   "not written with --quick)")
    args = p.parse_args()
    out, rel = args.out, args.release
    run_dir = os.path.join(out, "tokenizer")
    timings: dict = {}
    t_all = time.time()
    if not os.path.isdir(os.path.join(ROOT, "checkpoints", "fd_lenet")):
        stage("fd_lenet", timings, ["scripts/train_lenet.py"])
    train_args = ["train.py", "--config", "configs/vqgan/mnist.yaml", f"train.output_dir={run_dir}",
                  "train.resume=latest", "train.progress=false"] + (QUICK if args.quick else [])
    summary = stage("train tokenizer", timings, train_args)
    stage("release", timings, ["release.py", "--tokenizer", run_dir, "--out", rel])
    stage("sample", timings, ["sample.py", "--pipeline", rel, "--out", os.path.join(out, "samples"), "--num-images", "64"])
    recon = stage("evaluate", timings, ["evaluate.py", "recon", "--pipeline", rel,
                                        "--out", os.path.join(out, "eval_tokenizer.json")])
    keys = ("psnr", "ssim", "codebook_usage", "perplexity", "fd_lenet", "num_images")
    metrics = {"tokenizer": {k: recon[k] for k in keys if k in recon}}
    metrics["tokenizer"]["protocol"] = recon["protocol"]
    metrics["timings_seconds"] = timings
    metrics["train"] = {"steps": summary.get("step"), "steps_per_second": summary.get("steps_per_second"),
                        "seconds": summary.get("seconds")}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    results = args.results or (None if args.quick else os.path.join("results", "demo_metrics.json"))
    if results:
        os.makedirs(os.path.dirname(results), exist_ok=True)
        shutil.copyfile(os.path.join(out, "metrics.json"), results)
    write_report(out, run_dir, rel, metrics)
    total = round(time.time() - t_all, 1)
    print(f"\nstage times (s): {json.dumps(timings)}; total {total} s")
    print(f"reconstruction grid: {os.path.join(out, 'samples', 'grid.png')}")
    print(f"metrics: {os.path.join(out, 'metrics.json')}; report: {os.path.join(out, 'report.md')}")
    print(json.dumps(metrics["tokenizer"]))


def write_report(out, run_dir, rel, metrics):
    t = metrics["tokenizer"]
    grids = sorted(os.listdir(os.path.join(run_dir, "samples"))) if os.path.isdir(os.path.join(run_dir, "samples")) else []
    lines = ["# vistok demo report", "",
             f"Tokenizer `vqgan` trained on the MNIST training split ({metrics['train']['steps']} steps, "
             f"{metrics['train']['seconds']} s at {metrics['train']['steps_per_second']} steps/s), released to `{rel}`.", "",
             "## Held-out metrics (500 digits)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {t[k]:.4g} |" for k in ("psnr", "ssim", "codebook_usage", "perplexity", "fd_lenet") if k in t]
    lines += ["", f"Protocol: {t['protocol']}.", "",
              "## Reconstructions (odd rows: held-out inputs; even rows: reconstructions)", "",
              "![reconstructions](samples/grid.png)", "", "## During training (EMA weights; inputs above reconstructions)", ""]
    lines += [f"![{g}](tokenizer/samples/{g})" for g in grids]
    lines += ["", "## Stage times (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in metrics["timings_seconds"].items()]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
