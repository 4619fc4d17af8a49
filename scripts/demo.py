#!/usr/bin/env python
"""`make demo`: the embedded pipeline end to end on the CPU, through the same CLIs a user runs.

    teacher:   the committed checkpoints/teacher-mnist (a small ViT trained self-supervised, without labels, by
               configs/teacher/mnist.yaml; retrained and released here only when it is missing)
    tokenizer: train TokenFlow (configs/tokenflow/mnist.yaml) -> release.py -> sample.py (reconstructions)
               -> evaluate.py recon
    generator: train (configs/ar/mnist_tokenflow.yaml: next-scale, on the cached codes) -> release.py
               (tokenizer + generator) -> sample.py (50 per class, with and without CFG) -> evaluate.py classify
               -> report

--tokenizer vqgan runs the spine's plain VQ tokenizer with a next-token generator instead (no teacher).

Writes runs/demo/metrics.json ({"tokenizer": {...}, "generator": {...}}), runs/demo/report.md (with
pictures) and a copy of the metrics in results/demo_metrics.json. Re-running resumes an interrupted training run
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
QUICK_TRAIN = ["train.eval_every=15", "train.image_every=15", "train.checkpoint_every=15", "train.batch_size=32"]
QUICK = ["train.max_steps=30", "model.ch=8", "model.z_channels=16", "model.codebook_size=64"] + QUICK_TRAIN
QUICK_TEACHER = ["train.max_steps=10", "model.dim=16", "model.depth=1", "model.heads=2", "model.proj_dim=16"] + QUICK_TRAIN
QUICK_TOKENFLOW = QUICK + ["model.sem_dim=16", "model.sem_depth=1", "model.sem_heads=2", "model.teacher_dim=16"]
TEACHER = "checkpoints/teacher-mnist"  # committed; stands in for the CLIP that TokenFlow loads, not trains
TOKENIZERS = {  # name -> (tokenizer config, generator config, needs the semantic teacher)
    "tokenflow": ("configs/tokenflow/mnist.yaml", "configs/ar/mnist_tokenflow.yaml", True),
    "vqgan": ("configs/vqgan/mnist.yaml", "configs/ar/mnist.yaml", False),
}
QUICK_GEN = ["train.max_steps=20", "model.vocab_size=64", "model.dim=32", "model.depth=1", "model.heads=2",
             "train.eval_every=10", "train.image_every=10", "train.checkpoint_every=10", "train.batch_size=32"]
CFG_SCALE = 2.0


REWRITES_OWN_OUTPUT = ("release.py", "sample.py", "evaluate.py")  # a demo re-run replaces what the last one wrote


def stage(name, timings, args):
    if args[0] in REWRITES_OWN_OUTPUT and "--out" in args:
        args = [*args, "--overwrite"]  # only ever replaces vistok's own releases, samples and results
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


def train_stage(name: str, timings: dict, config: str, run: str, *overrides: str) -> dict:
    """``train.py --config CONFIG`` into ``run`` (resumable: a finished run is not trained again) -> its summary."""
    return stage(name, timings, ["train.py", "--config", config, f"train.output_dir={run}", "train.resume=latest",
                                 "train.progress=false", *overrides])


def save_metrics(out: str, metrics: dict, results: str | None) -> None:
    """runs/<demo>/metrics.json, and a copy under results/ (the README's figures) unless None (--quick)."""
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    if results:
        os.makedirs(os.path.dirname(results) or ".", exist_ok=True)
        shutil.copyfile(os.path.join(out, "metrics.json"), results)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--release", default="checkpoints/demo", help="the full pipeline; the tokenizer alone goes to <release>-tokenizer")
    p.add_argument("--tokenizer", choices=sorted(TOKENIZERS), default="tokenflow")
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
    tok_config, gen_config, needs_teacher = TOKENIZERS[args.tokenizer]
    tok_overrides = []
    if needs_teacher:  # the committed teacher (checkpoints/teacher-mnist) unless it is missing, or --quick
        rel_teacher = rel.rstrip("/") + "-teacher" if args.quick else TEACHER
        if args.quick or not os.path.isdir(os.path.join(ROOT, rel_teacher)):
            teacher_dir = os.path.join(out, "teacher")
            stage("train teacher", timings, ["train.py", "--config", "configs/teacher/mnist.yaml", f"train.output_dir={teacher_dir}",
                                             "train.resume=latest", "train.progress=false"] + (QUICK_TEACHER if args.quick else []))
            stage("release teacher", timings, ["release.py", "--model", teacher_dir, "--out", rel_teacher])
        tok_overrides = [f"model.teacher={rel_teacher}"]
    quick_tok = (QUICK_TOKENFLOW if needs_teacher else QUICK) if args.quick else []
    train_args = ["train.py", "--config", tok_config, f"train.output_dir={run_dir}",
                  "train.resume=latest", "train.progress=false"] + tok_overrides + quick_tok
    summary = stage("train tokenizer", timings, train_args)
    rel_tok = rel.rstrip("/") + "-tokenizer"
    stage("release tokenizer", timings, ["release.py", "--tokenizer", run_dir, "--out", rel_tok])
    stage("reconstruct", timings, ["sample.py", "--pipeline", rel_tok, "--out", os.path.join(out, "samples"),
                                   "--num-images", "64"])
    recon = stage("evaluate tokenizer", timings, ["evaluate.py", "recon", "--pipeline", rel_tok,
                                                  "--out", os.path.join(out, "eval_tokenizer.json")])
    gen_dir = os.path.join(out, "generator")
    gen_summary = stage("train generator", timings, [
        "train.py", "--config", gen_config, f"data.tokenizer={rel_tok}", f"train.output_dir={gen_dir}",
        "train.resume=latest", "train.progress=false"] + (QUICK_GEN if args.quick else []))
    stage("release pipeline", timings, ["release.py", "--tokenizer", run_dir, "--generator", gen_dir, "--out", rel])
    gen = {}
    for name, scale in (("cfg", CFG_SCALE), ("no_cfg", 1.0)):
        folder = os.path.join(out, f"samples_{name}")
        stage(f"sample {name}", timings, ["sample.py", "--pipeline", rel, "--out", folder, "--per-class", "50",
                                          "--cfg-scale", str(scale), "--seed", "0"])
        gen[name] = stage(f"classify {name}", timings, ["evaluate.py", "classify", "--samples", folder,
                                                       "--out", os.path.join(out, f"eval_generator_{name}.json")])
    keys = ("psnr", "ssim", "codebook_usage", "perplexity", "fd_lenet", "num_images")
    metrics = {"tokenizer": {k: recon[k] for k in keys if k in recon}}
    metrics["tokenizer"]["protocol"] = recon["protocol"]
    metrics["tokenizer"]["type"] = args.tokenizer
    metrics["generator_type"] = "next-scale" if needs_teacher else "next-token"
    c, u = gen["cfg"], gen["no_cfg"]
    metrics["generator"] = {"class_accuracy": c["class_accuracy"], "fd_lenet": c["fd_lenet"],
                            "fd_lenet_floor": c["fd_lenet_floor"], "cfg_scale": CFG_SCALE,
                            "class_accuracy_no_cfg": u["class_accuracy"], "fd_lenet_no_cfg": u["fd_lenet"],
                            "num_samples": c["num_samples"], "protocol": c["protocol"] + "; 50 samples per class, "
                            "temperature 1, no top-k/top-p, seed 0"}
    metrics["timings_seconds"] = timings
    metrics["train"] = {"steps": summary.get("step"), "steps_per_second": summary.get("steps_per_second"),
                        "seconds": summary.get("seconds")}
    metrics["train_generator"] = {"steps": gen_summary.get("step"), "steps_per_second": gen_summary.get("steps_per_second"),
                                  "seconds": gen_summary.get("seconds")}
    save_metrics(out, metrics, args.results or (None if args.quick else os.path.join("results", "demo_metrics.json")))
    write_report(out, run_dir, rel, metrics, args.tokenizer)
    total = round(time.time() - t_all, 1)
    print(f"\nstage times (s): {json.dumps(timings)}; total {total} s")
    print(f"reconstruction grid: {os.path.join(out, 'samples', 'grid.png')}; "
          f"samples: {os.path.join(out, 'samples_cfg', 'grid.png')}")
    print(f"metrics: {os.path.join(out, 'metrics.json')}; report: {os.path.join(out, 'report.md')}")
    print(json.dumps({k: metrics[k] for k in ("tokenizer", "generator")}))


def write_report(out, run_dir, rel, metrics, tokenizer):
    t = metrics["tokenizer"]
    grids = sorted(os.listdir(os.path.join(run_dir, "samples"))) if os.path.isdir(os.path.join(run_dir, "samples")) else []
    lines = ["# vistok demo report", "",
             f"Tokenizer `{tokenizer}` trained on the MNIST training split ({metrics['train']['steps']} steps, "
             f"{metrics['train']['seconds']} s at {metrics['train']['steps_per_second']} steps/s), released to `{rel}`.", "",
             "## Held-out metrics (500 digits)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {t[k]:.4g} |" for k in ("psnr", "ssim", "codebook_usage", "perplexity", "fd_lenet") if k in t]
    lines += ["", f"Protocol: {t['protocol']}.", "",
              "## Reconstructions (odd rows: held-out inputs; even rows: reconstructions)", "",
              "![reconstructions](samples/grid.png)", "", "## During training (EMA weights; inputs above reconstructions)", ""]
    lines += [f"![{g}](tokenizer/samples/{g})" for g in grids]
    g = metrics["generator"]
    lines += ["", "## Class-conditional generator (500 samples, 50 per class)", "",
              f"AR GPT ({metrics['generator_type']}) over the tokenizer's codes ({metrics['train_generator']['steps']} steps, "
              f"{metrics['train_generator']['seconds']} s).", "",
              "| figure | CFG " + str(g["cfg_scale"]) + " | no CFG |", "|---|---|---|",
              f"| LeNet reads the requested digit | {g['class_accuracy']:.1%} | {g['class_accuracy_no_cfg']:.1%} |",
              f"| FD-LeNet vs held-out digits | {g['fd_lenet']:.1f} | {g['fd_lenet_no_cfg']:.1f} |",
              f"| FD-LeNet floor (500 real training digits) | {g['fd_lenet_floor']:.1f} | {g['fd_lenet_floor']:.1f} |", "",
              "Samples with CFG (row k: the first 8 samples of digit k):", "",
              "![samples](samples_cfg/grid.png)"]
    lines += ["", "## Stage times (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in metrics["timings_seconds"].items()]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
