#!/usr/bin/env python
"""`make demo-vat`: VAT on procedural 3-D shapes through the user CLIs.

    stage 1:   train configs/vat/shapes_stage1.yaml (the continuous variational autoencoder)
    stage 2:   train configs/vat/shapes_stage2.yaml (from stage 1, with the 1-D multi-scale residual VQ) -> release
    budgets:   evaluate.py shape: F-score / Chamfer-L1 / IoU of held-out shapes decoded from the first k scales,
               bytes per shape and compression ratio with each; sample.py writes reconstructed meshes + grid.png
    generator: train configs/vat/gen_shapes.yaml (class-conditional next-scale AR over the codes) -> release.py
               (tokenizer + generator: a class-to-shape pipeline) -> sample.py (meshes of every class + grid.png)
               -> evaluate.py shape --generate (MMD / coverage vs held-out shapes, connected components, the
               share the geometric classifier recognises as the requested type)
    -> OUT/metrics.json + report.md (+ results/demo_vat_metrics.json without --quick)

``--quick`` runs the same chain with a tiny model, a few steps and coarse meshes (the tests' check of the wiring).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import save_metrics, stage, train_stage  # noqa: E402

QUICK = ["train.max_steps=6", "train.eval_every=3", "train.checkpoint_every=3", "train.batch_size=8",
         "train.eval_batches=1", "train.warmup_steps=1"]
QUICK_DATA = ["data.size=24", "data.num_points=128", "data.pool=512", "data.num_uniform=256", "data.num_near=256",
              "data.mesh_resolution=24", "data.reference_resolution=32"]
QUICK_VAT = ["model.dim=32", "model.heads=2", "model.enc_depth=1", "model.dec_depth=1", "model.latent_dim=4",
             "model.triplane_res=4", "model.triplane_up=2", "model.triplane_channels=8", "model.mlp_hidden=16",
             "model.mesh_resolution=16"]
QUICK_GEN = ["model.dim=32", "model.depth=1", "model.heads=2"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo-vat")
    p.add_argument("--release", default="checkpoints/demo-vat")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--num-shapes", type=int, default=16, help="held-out shapes for the code-budget table")
    p.add_argument("--per-class", type=int, default=8, help="generated shapes of each type for MMD / coverage")
    p.add_argument("--steps", type=int, nargs=2, default=[1200, 400], metavar=("STAGE1", "STAGE2"),
                   help="VAT training steps (the generator trains its config's train.max_steps)")
    p.add_argument("--vat", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for both VAT stages, e.g. model.triplane_upsample=shuffle")
    p.add_argument("--results", default="results/demo_vat_metrics.json", help="copy of metrics.json (not with --quick)")
    args = p.parse_args()
    out, rel, timings, t0 = args.out, args.release, {}, time.time()
    tok_rel, gen_rel = rel + "-tokenizer", rel
    s1, s2, gen = (os.path.join(out, n) for n in ("stage1", "stage2", "generator"))
    quick = QUICK + QUICK_DATA if args.quick else []
    vat = [*args.vat, *(quick + QUICK_VAT if args.quick else [])]
    train_stage("train VAT stage 1", timings, "configs/vat/shapes_stage1.yaml", s1, f"train.max_steps={args.steps[0]}",
                *vat)
    train_stage("train VAT stage 2", timings, "configs/vat/shapes_stage2.yaml", s2, f"train.init_from={s1}",
                f"train.max_steps={args.steps[1]}", *vat)
    stage("release tokenizer", timings, ["release.py", "--tokenizer", s2, "--out", tok_rel])
    n = 2 if args.quick else args.num_shapes
    coarse = ["--resolution", "16", "--surface-samples", "500", "--iou-points", "500"] if args.quick else []
    budgets = stage("code budgets", timings, ["evaluate.py", "shape", "--pipeline", tok_rel, "--num-shapes", str(n),
                                              *coarse, "--out", os.path.join(out, "eval_budgets.json")])
    stage("sample reconstructions", timings, ["sample.py", "--pipeline", tok_rel, "--out", os.path.join(out, "reconstructed"),
                                              "--num-shapes", "8", *coarse[:2]])
    generator = train_stage("train generator", timings, "configs/vat/gen_shapes.yaml", gen, f"data.tokenizer={tok_rel}",
                            *(QUICK + QUICK_GEN if args.quick else []))["metrics"]
    stage("release generator", timings, ["release.py", "--tokenizer", s2, "--generator", gen, "--out", gen_rel])
    per_class = 1 if args.quick else args.per_class
    stage("sample shapes", timings, ["sample.py", "--pipeline", gen_rel, "--out", os.path.join(out, "generated"),
                                     "--per-class", str(min(per_class, 4)), *coarse[:2]])
    generated = stage("evaluate generated shapes", timings, ["evaluate.py", "shape", "--pipeline", gen_rel, "--generate",
                                                             "--per-class", str(per_class),
                                                             "--out", os.path.join(out, "eval_generated.json")])
    metrics = {"budgets": budgets, "generated": generated, "timings_seconds": timings,
               "generator_eval": {k: v for k, v in generator.items() if k.startswith("eval")}}
    save_metrics(out, metrics, None if args.quick else args.results)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(report(metrics)))
    print(f"\nstage times (s): {json.dumps(timings)}; total {round(time.time() - t0, 1)} s")
    full = budgets["budgets"][max(budgets["budgets"], key=lambda k: int(k.split("_")[1]))]
    print(json.dumps({"fscore@0.02": full["fscore@0.02"], "chamfer_l1": full["chamfer_l1"], "iou": full["iou"],
                      "bytes": full["bytes"], **{k: generated.get(k) for k in
                                                 ("mmd_chamfer_l1", "coverage", "components_mean", "recognised_as_requested")}}))


def report(metrics: dict) -> list[str]:
    b, g = metrics["budgets"], metrics["generated"]
    lines = ["# vistok VAT demo (procedural 3-D shapes)", "",
             f"{b['num_shapes']} held-out shapes; reference meshes {b['source_ply_bytes'] / 1024:.0f} KB as binary PLY.", "",
             "| scales used | tokens | bytes | ratio vs PLY | F-score@0.01 | F-score@0.02 | Chamfer-L1 | IoU |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(b["budgets"].items(), key=lambda kv: int(kv[0].split("_")[1])):
        lines.append(f"| {name.split('_')[1]} | {r['tokens']} | {r['bytes']} | {r['compression_ratio']:.0f}x | "
                     f"{r['fscore@0.01']:.3f} | {r['fscore@0.02']:.3f} | {r['chamfer_l1']:.4f} | {r['iou']:.3f} |")
    lines += ["", "Reconstructed held-out shapes (all scales):", "", "![reconstructed](reconstructed/grid.png)", "",
              "## Class-conditional generation", "", g["protocol"], "",
              "| MMD (Chamfer-L1) | coverage | components per mesh | single component | empty | recognised as requested |",
              "|---|---|---|---|---|---|",
              f"| {g['mmd_chamfer_l1']:.4f} | {g['coverage']:.3f} | {g['components_mean']:.2f} | {g['single_component']:.3f} | "
              f"{g['empty']:.3f} | {g.get('recognised_as_requested', float('nan')):.3f} |", "",
              "One row per shape type (box, sphere, cylinder, cone, capsule, torus):", "",
              "![generated](generated/grid.png)", ""]
    return lines


if __name__ == "__main__":
    main()
