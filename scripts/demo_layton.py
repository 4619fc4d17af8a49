#!/usr/bin/env python
"""`make demo-layton`: Layton on ShapesWorld (or MNIST: --data mnist) through the user CLIs.

    KL:      train configs/kl/shapes.yaml -> release.py -> scripts/latent_scale.py --write (the measured scale)
    VQ:      train configs/vqgan/shapes_16tok.yaml (16 tokens per 32x32 image) -> release.py
    stage 1: train configs/layton/shapes_stage1.yaml (the VQ copied in and frozen: train.init_modules) -> release
    stage 2: train configs/layton/shapes_stage2.yaml (from stage 1: the 3-step consistency decoder) -> release
    decoders: benchmarks/layton_decoders.py (the vqgan decoder, stage 1 with DDIM and the walk, stage 2 with 1-3
             steps, on the same held-out codes: PSNR, SSIM, colour / brightness error, decode time, read-back or FD)
    LaytonGen (ShapesWorld): train configs/layton/gen_shapes.yaml on the release's codes -> release.py (the Layton
             release + the generator) -> sample.py the ShapesWorld GenEval prompts -> evaluate.py geneval --ceiling
    -> runs/demo-layton[-mnist]/metrics.json + report.md (+ results/demo_layton[_mnist]_metrics.json without --quick)
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import save_metrics, stage, train_stage  # noqa: E402

CONFIGS = {"shapes": {"kl": "configs/kl/shapes.yaml", "vq": "configs/vqgan/shapes_16tok.yaml",
                      "stage1": "configs/layton/shapes_stage1.yaml", "stage2": "configs/layton/shapes_stage2.yaml"},
           "mnist": {"kl": "configs/kl/mnist_small.yaml", "vq": "configs/vqgan/mnist_16tok.yaml",
                     "stage1": "configs/layton/mnist_stage1.yaml", "stage2": "configs/layton/mnist_stage2.yaml"}}
QUICK = ["train.max_steps=6", "train.eval_every=3", "train.image_every=3", "train.checkpoint_every=3",
         "train.batch_size=16", "train.eval_batches=1", "train.warmup_steps=1"]
QUICK_DATA = {"shapes": ["data.size=128"], "mnist": []}
QUICK_LAYTON = ["model.block_out_channels=[16,32]", "model.norm_num_groups=8", "model.cond_embedding_channels=[8,16]",
                "model.ddim_steps=4"]
QUICK_GEN = ["train.max_steps=6", "train.eval_every=3", "train.checkpoint_every=3", "train.batch_size=16",
             "model.dim=32", "model.depth=1", "model.heads=2", "train.gen_eval.every=0"]
PROMPTS = "vistok/evaluation/prompts/shapes_geneval.jsonl"
CFG_SCALE = 3.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="shapes", choices=sorted(CONFIGS))
    p.add_argument("--out", default="")
    p.add_argument("--release", default="")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--decode-images", type=int, default=200)
    p.add_argument("--images-per-prompt", type=int, default=4)
    args = p.parse_args()
    suffix = "" if args.data == "shapes" else "-" + args.data
    out, rel = args.out or f"runs/demo-layton{suffix}", args.release or f"checkpoints/demo-layton{suffix}"
    timings, t0 = {}, time.time()
    kl_rel, vq_rel = tokenizers(args, out, rel, timings)
    s1_rel, s2_run = layton(args, out, rel, kl_rel, vq_rel, timings)
    bench_out = os.path.join(out, "eval_decoders.json")
    decoders = stage("compare decoders", timings, [
        "benchmarks/layton_decoders.py", "--vqgan", vq_rel, "--stage1", s1_rel, "--stage2", rel,
        "--num-images", str(4 if args.quick else args.decode_images), "--out", bench_out,
        "--grid", os.path.join(out, "decoders.png"),
        *(["--ddim-steps", "4", "--batch-size", "4"] if args.quick else [])])
    metrics = {"decoders": decoders, "timings_seconds": timings}
    if args.data == "shapes":
        metrics["laytongen"] = laytongen(args, out, rel, timings)
    results = None if args.quick else os.path.join("results", f"demo_layton{suffix.replace('-', '_')}_metrics.json")
    save_metrics(out, metrics, results)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(report(args.data, metrics)))
    print(f"\nstage times (s): {json.dumps(timings)}; total {round(time.time() - t0, 1)} s")
    print(json.dumps({k: {m: v.get(m) for m in ("psnr", "ssim", "colour_error", "read_back", "fd_lenet") if m in v}
                      for k, v in decoders.items() if k.startswith(("vqgan", "stage"))}))


def train(name: str, config: str, run: str, timings: dict, args, *extra) -> dict:
    return train_stage(name, timings, config, run, *extra, *(QUICK + QUICK_DATA[args.data] if args.quick else []))


def tokenizers(args, out: str, rel: str, timings: dict) -> tuple[str, str]:
    """The frozen latent space (KL, its scale measured) and the VQ whose codes Layton decodes."""
    cfg = CONFIGS[args.data]
    kl_run, vq_run, kl_rel, vq_rel = os.path.join(out, "kl"), os.path.join(out, "vq"), rel + "-kl", rel + "-vq"
    small = ["model.block_out_channels=[8,16,16]", "model.norm_num_groups=4"] if args.quick else []
    train("train KL", cfg["kl"], kl_run, timings, args, *small)
    if not os.path.isfile(os.path.join(kl_rel, "pipeline.json")):  # keep a measured scale across re-runs
        stage("release KL", timings, ["release.py", "--tokenizer", kl_run, "--out", kl_rel])
        stage("measure latent scale", timings, ["scripts/latent_scale.py", "--tokenizer", kl_rel, "--write",
                                                *(["--images", "64"] if args.quick else [])])
    tiny_vq = ["model.ch=8"] if args.quick else []
    train("train VQ", cfg["vq"], vq_run, timings, args, *tiny_vq)
    stage("release VQ", timings, ["release.py", "--tokenizer", vq_run, "--out", vq_rel])
    return kl_rel, vq_rel


def layton(args, out: str, rel: str, kl_rel: str, vq_rel: str, timings: dict) -> tuple[str, str]:
    cfg = CONFIGS[args.data]
    s1, s2, s1_rel = os.path.join(out, "stage1"), os.path.join(out, "stage2"), rel + "-stage1"
    shared = [f"model.vae.path={kl_rel}", *(QUICK_LAYTON + ["model.vq.ch=8"] if args.quick else [])]
    train("train Layton stage 1", cfg["stage1"], s1, timings, args, *shared, f"train.init_modules.vq={vq_rel}")
    stage("release stage 1", timings, ["release.py", "--tokenizer", s1, "--out", s1_rel])
    train("train Layton stage 2", cfg["stage2"], s2, timings, args, *shared, f"train.init_from={s1}")
    stage("release Layton", timings, ["release.py", "--tokenizer", s2, "--out", rel])
    return s1_rel, s2


def laytongen(args, out: str, rel: str, timings: dict) -> dict:
    gen, gen_rel = os.path.join(out, "generator"), rel + "-gen"
    stage("train LaytonGen", timings, ["train.py", "--config", "configs/layton/gen_shapes.yaml", f"data.tokenizer={rel}",
                                       f"train.output_dir={gen}", "train.resume=latest", "train.progress=false",
                                       *(QUICK_GEN if args.quick else [])])
    stage("release LaytonGen", timings, ["release.py", "--tokenizer", rel, "--generator", gen, "--out", gen_rel])
    samples = os.path.join(out, "text_to_image")
    prompts = PROMPTS
    if args.quick:  # the first 4 prompts
        prompts = os.path.join(out, "prompts_quick.jsonl")
        with open(PROMPTS) as src, open(prompts, "w") as dst:
            dst.writelines(src.readlines()[:4])
    stage("sample text -> image", timings, ["sample.py", "--pipeline", gen_rel, "--out", samples, "--prompts", prompts,
                                            "--images-per-prompt", str(1 if args.quick else args.images_per_prompt),
                                            "--cfg-scale", str(CFG_SCALE)])
    return stage("GenEval", timings, ["evaluate.py", "geneval", "--samples", samples, "--ceiling",
                                      "--out", os.path.join(out, "eval_geneval.json")])


def report(data: str, metrics: dict) -> list[str]:
    d = metrics["decoders"]
    setup, extra = d["setup"], "read_back" if data == "shapes" else "fd_lenet"
    rows = [k for k in d if k.startswith(("vqgan", "stage"))]
    lines = [f"# vistok Layton demo ({data})", "",
             f"{setup['num_images']} held-out images, {setup['tokens_per_image']} tokens each "
             f"({setup['codebook_size']} codes); every decoder reads the same codes.", "",
             f"| decoder | PSNR | SSIM | colour error | brightness error | {extra} | s / image |", "|---|---|---|---|---|---|---|",
             *[f"| {k} | {d[k]['psnr']:.2f} | {d[k]['ssim']:.3f} | {d[k]['colour_error']:.2f} | "
               f"{d[k]['brightness_error']:.2f} | {d[k].get(extra, float('nan')):.3f} | {d[k]['seconds_per_image']:.4f} |"
               for k in rows]]
    if data == "shapes":
        lines += ["", f"Real scenes read back by the detector: {d['originals'].get('read_back', float('nan')):.3f}."]
    lines += ["", "Originals (top row), then one row per decoder in the table's order:", "", "![decoders](decoders.png)"]
    g = metrics.get("laytongen")
    if g:
        tasks = [k for k in ("single_object", "two_object", "counting", "colors", "position", "color_attr") if k in g]
        lines += ["", f"## LaytonGen: ShapesWorld GenEval (CFG {CFG_SCALE}; detector ceiling {g['detector_ceiling']:.3f})", "",
                  "| " + " | ".join(tasks) + " | overall |", "|" + "---|" * (len(tasks) + 1),
                  "| " + " | ".join(f"{g[k]:.3f}" for k in tasks) + f" | {g['overall']:.3f} |", "",
                  "![text to image](text_to_image/grid.png)", ""]
    return lines


if __name__ == "__main__":
    main()
