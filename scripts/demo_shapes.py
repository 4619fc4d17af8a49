#!/usr/bin/env python
"""`make demo-shapes`: text-to-image on ShapesWorld scored with GenEval, through the user CLIs.

    tokenizer: train (configs/vqgan/shapes.yaml) -> release.py -> evaluate.py recon
    generator: train (configs/ar/shapes.yaml: captions through a trainable text encoder) -> release.py
               -> sample.py --prompts (the ShapesWorld GenEval prompt set, 4 images each)
               -> evaluate.py geneval --ceiling -> runs/demo-shapes/metrics.json + report.md
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import save_metrics, stage  # noqa: E402

PROMPTS = "vistok/evaluation/prompts/shapes_geneval.jsonl"
QUICK_TOK = ["train.max_steps=20", "model.ch=8", "model.z_channels=16", "model.codebook_size=64", "data.size=256",
             "train.eval_every=10", "train.image_every=10", "train.checkpoint_every=10", "train.batch_size=32"]
QUICK_GEN = ["train.max_steps=20", "model.vocab_size=64", "model.dim=32", "model.depth=1", "model.heads=2",
             "model.text_depth=1", "train.eval_every=10", "train.image_every=10", "train.checkpoint_every=10",
             "train.batch_size=32"]
CFG_SCALE = 3.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo-shapes")
    p.add_argument("--release", default="checkpoints/demo-shapes")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--images-per-prompt", type=int, default=4)
    args = p.parse_args()
    out, rel = args.out, args.release
    rel_tok = rel.rstrip("/") + "-tokenizer"
    tok_dir, gen_dir = os.path.join(out, "tokenizer"), os.path.join(out, "generator")
    timings, t0 = {}, time.time()
    tok = stage("train tokenizer", timings, ["train.py", "--config", "configs/vqgan/shapes.yaml", f"train.output_dir={tok_dir}",
                                             "train.resume=latest", "train.progress=false"] + (QUICK_TOK if args.quick else []))
    stage("release tokenizer", timings, ["release.py", "--tokenizer", tok_dir, "--out", rel_tok])
    recon = stage("evaluate tokenizer", timings, ["evaluate.py", "recon", "--pipeline", rel_tok,
                                                  "--out", os.path.join(out, "eval_tokenizer.json")])
    gen = stage("train generator", timings, ["train.py", "--config", "configs/ar/shapes.yaml", f"data.tokenizer={rel_tok}",
                                             f"train.output_dir={gen_dir}", "train.resume=latest", "train.progress=false"]
                + (QUICK_GEN if args.quick else []))
    stage("release pipeline", timings, ["release.py", "--tokenizer", tok_dir, "--generator", gen_dir, "--out", rel])
    samples = os.path.join(out, "geneval")
    stage("sample prompts", timings, ["sample.py", "--pipeline", rel, "--out", samples, "--prompts", PROMPTS,
                                      "--images-per-prompt", str(args.images_per_prompt), "--cfg-scale", str(CFG_SCALE)])
    score = stage("geneval", timings, ["evaluate.py", "geneval", "--samples", samples, "--detector", "shapes", "--ceiling",
                                       "--out", os.path.join(out, "eval_geneval.json")])
    tasks = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    metrics = {
        "tokenizer": {k: recon[k] for k in ("psnr", "ssim", "codebook_usage", "perplexity")},
        "geneval": {k: score[k] for k in ("overall", *tasks, "detector_ceiling") if k in score},
        "sampling": {"cfg_scale": CFG_SCALE, "images_per_prompt": args.images_per_prompt, "temperature": 1.0,
                     "prompts": PROMPTS, "num_images": score["num_images"]},
        "train": {"tokenizer_seconds": tok.get("seconds"), "generator_seconds": gen.get("seconds"),
                  "generator_steps": gen.get("step")},
        "timings_seconds": timings,
    }
    save_metrics(out, metrics, None if args.quick else os.path.join("results", "demo_shapes_metrics.json"))
    g = metrics["geneval"]
    lines = ["# vistok ShapesWorld text-to-image demo", "",
             f"Tokenizer `vqgan` (held-out PSNR {recon['psnr']:.2f} dB, usage {recon['codebook_usage']:.1%}); "
             f"text-conditional AR ({gen.get('step')} steps), CFG {CFG_SCALE}, {args.images_per_prompt} images per prompt.", "",
             "| task | GenEval score |", "|---|---|"] + [f"| {t} | {g[t]:.3f} |" for t in tasks if t in g] + [
             f"| **overall** | **{g['overall']:.3f}** |", f"| detector ceiling (real scenes) | {g['detector_ceiling']:.3f} |", "",
             "First image of each prompt (prompt order of the prompt file):", "", "![samples](geneval/grid.png)", ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    print(f"\nstage times (s): {json.dumps(timings)}; total {round(time.time() - t0, 1)} s")
    print(f"samples: {samples}; metrics: {os.path.join(out, 'metrics.json')}; report: {os.path.join(out, 'report.md')}")
    print(json.dumps(metrics["geneval"]))


if __name__ == "__main__":
    main()
