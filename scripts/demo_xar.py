#!/usr/bin/env python
"""xAR on MNIST (`make demo-xar`): a continuous tokenizer, then class-conditional next-X flow matching.

    KL:  train configs/kl/mnist.yaml -> release.py -> scripts/latent_scale.py --write (measured scale) -> evaluate.py recon
    xAR: train configs/xar/mnist.yaml on the cached latents -> release.py (the KL release + the generator)
         -> sample.py (50 per class, CFG ramp) -> evaluate.py classify -> report

--entity and --no-noisy-context pick the xAR variant (the ablation's switches). Writes
runs/demo-xar/metrics.json and report.md (results/demo_xar_metrics.json unless --quick).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import save_metrics, stage  # noqa: E402

QUICK_TRAIN = ["train.eval_every=10", "train.image_every=10", "train.checkpoint_every=10", "train.batch_size=32"]
QUICK_KL = ["train.max_steps=20", "model.block_out_channels=[8,16,16]", "model.norm_num_groups=4"] + QUICK_TRAIN
QUICK_XAR = ["train.max_steps=20", "model.dim=32", "model.depth=1", "model.heads=2", "model.steps=3"] + QUICK_TRAIN
CFG_SCALE = 5.0  # ramped linearly over the entities: 1 on the first cell, 5 on the last


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo-xar")
    p.add_argument("--release", default="checkpoints/demo-xar")
    p.add_argument("--entity", default="cell", choices=["token", "cell", "subsample", "scale", "image"])
    p.add_argument("--no-noisy-context", action="store_true", help="teacher forcing (the ablation's baseline)")
    p.add_argument("--steps", type=int, default=0, help="xAR training steps (default: the config's)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    out, rel = args.out, args.release
    rel_kl, kl_dir, gen_dir = rel.rstrip("/") + "-kl", os.path.join(out, "kl"), os.path.join(out, "xar")
    timings, t0 = {}, time.time()
    kl = stage("train KL tokenizer", timings, ["train.py", "--config", "configs/kl/mnist.yaml", f"train.output_dir={kl_dir}",
                                               "train.resume=latest", "train.progress=false"] + (QUICK_KL if args.quick else []))
    if not os.path.isfile(os.path.join(rel_kl, "pipeline.json")):  # keep a measured scale across re-runs
        stage("release KL", timings, ["release.py", "--tokenizer", kl_dir, "--out", rel_kl])
        stage("measure latent scale", timings, ["scripts/latent_scale.py", "--tokenizer", rel_kl, "--write"])
    recon = stage("evaluate KL", timings, ["evaluate.py", "recon", "--pipeline", rel_kl, "--out", os.path.join(out, "eval_kl.json")])
    variant = [f"model.entity={args.entity}", f"model.noisy_context={'false' if args.no_noisy_context else 'true'}"]
    if args.entity == "scale":
        variant.append("model.scales=[1,2,4,8]")
    if args.steps:
        variant.append(f"train.max_steps={args.steps}")
    gen = stage("train xAR", timings, ["train.py", "--config", "configs/xar/mnist.yaml", f"data.tokenizer={rel_kl}",
                                       f"train.output_dir={gen_dir}", "train.resume=latest", "train.progress=false"]
                + variant + (QUICK_XAR if args.quick else []))
    stage("release pipeline", timings, ["release.py", "--tokenizer", rel_kl, "--generator", gen_dir, "--out", rel])
    samples = os.path.join(out, "samples")
    sampled = stage("sample", timings, ["sample.py", "--pipeline", rel, "--out", samples, "--per-class", "50",
                                        "--cfg-scale", str(CFG_SCALE), "--seed", "0"])
    cls = stage("classify", timings, ["evaluate.py", "classify", "--samples", samples, "--out", os.path.join(out, "eval_xar.json")])
    metrics = {
        "tokenizer": {k: recon[k] for k in ("psnr", "ssim", "num_images")},
        "generator": {"class_accuracy": cls["class_accuracy"], "fd_lenet": cls["fd_lenet"], "fd_lenet_floor": cls["fd_lenet_floor"],
                      "entity": args.entity, "noisy_context": not args.no_noisy_context, "cfg_scale": CFG_SCALE,
                      "cfg_schedule": "linear", "images_per_s": round(500 / sampled["seconds"], 2)},
        "train": {"kl_seconds": kl.get("seconds"), "xar_seconds": gen.get("seconds"), "xar_steps": gen.get("step")},
        "timings_seconds": timings,
    }
    save_metrics(out, metrics, None if args.quick else os.path.join("results", "demo_xar_metrics.json"))
    g = metrics["generator"]
    lines = ["# vistok xAR demo (MNIST)", "",
             f"KL tokenizer: held-out PSNR {recon['psnr']:.2f} dB. xAR next-{args.entity} "
             f"({'noisy context' if g['noisy_context'] else 'teacher forcing'}, {gen.get('step')} steps), CFG {CFG_SCALE} ramped.", "",
             "| figure | value |", "|---|---|", f"| LeNet reads the requested digit (500) | {g['class_accuracy']:.1%} |",
             f"| FD-LeNet vs held-out (floor) | {g['fd_lenet']:.1f} ({g['fd_lenet_floor']:.1f}) |", "",
             "![samples](samples/grid.png)", ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    print(f"\nstage times (s): {json.dumps(timings)}; total {round(time.time() - t0, 1)} s")
    print(json.dumps(metrics["generator"]))


if __name__ == "__main__":
    main()
