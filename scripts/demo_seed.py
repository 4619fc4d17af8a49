#!/usr/bin/env python
"""`make demo-seed`: the SEED tokenizer on ShapesWorld, both stages and the decoder, through the user CLIs.

    stage I:  train (configs/seed/shapes_stage1.yaml: causal Q-Former over the frozen ShapesWorld teacher,
              contrastive with captions) -> evaluate.py seed (retrieval R@1/R@5 with chance)
    stage II: train (configs/seed/shapes_stage2.yaml from stage I: codebook + heads) -> evaluate.py seed
              (codebook usage, perplexity, reconstruction cosine)
    decoder:  train (configs/seed/decoder_shapes.yaml: a small UNet on the teacher's embeddings, unCLIP style)
    release.py (tokenizer + decoder: a 'seed' pipeline) -> evaluate.py seed-decode (held-out codes -> images the
              exact detector reads as the source scene, against random codes and the real scenes)
    -> runs/demo-seed/metrics.json + report.md (+ results/demo_seed_metrics.json without --quick)
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import save_metrics, stage  # noqa: E402

QUICK = ["train.max_steps=20", "train.eval_every=10", "train.checkpoint_every=10", "train.batch_size=32",
         "data.size=256"]
QUICK_DECODER = QUICK


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo-seed")
    p.add_argument("--release", default="checkpoints/demo-seed")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--eval-items", type=int, default=1000)
    p.add_argument("--decode-items", type=int, default=200)
    args = p.parse_args()
    out, rel = args.out, args.release
    s1, s2, dec = (os.path.join(out, n) for n in ("stage1", "stage2", "decoder"))
    quick = QUICK if args.quick else []
    timings, t0 = {}, time.time()
    common = ["train.resume=latest", "train.progress=false"]
    stage("train stage I", timings, ["train.py", "--config", "configs/seed/shapes_stage1.yaml",
                                     f"train.output_dir={s1}", *common, *quick])
    retrieval = stage("evaluate stage I", timings, ["evaluate.py", "seed", "--tokenizer", s1, "--max-items",
                                                    str(args.eval_items), "--out", os.path.join(out, "eval_stage1.json")])
    stage("train stage II", timings, ["train.py", "--config", "configs/seed/shapes_stage2.yaml", f"train.init_from={s1}",
                                      f"train.output_dir={s2}", *common, *quick])
    codes = stage("evaluate stage II", timings, ["evaluate.py", "seed", "--tokenizer", s2, "--max-items",
                                                 str(args.eval_items), "--out", os.path.join(out, "eval_stage2.json")])
    stage("train decoder", timings, ["train.py", "--config", "configs/seed/decoder_shapes.yaml", f"train.output_dir={dec}",
                                     *common, *(QUICK_DECODER if args.quick else [])])
    stage("release", timings, ["release.py", "--stage", f"tokenizer={s2}", "--stage", f"decoder={dec}", "--out", rel])
    grid = os.path.join(out, "decoded.png")
    decoded = stage("decode held-out codes", timings, ["evaluate.py", "seed-decode", "--pipeline", rel, "--max-items",
                                                       str(args.decode_items), "--grid", grid,
                                                       "--out", os.path.join(out, "eval_decode.json")])
    metrics = {"stage1": retrieval, "stage2": codes, "decode": decoded, "timings_seconds": timings}
    save_metrics(out, metrics, None if args.quick else os.path.join("results", "demo_seed_metrics.json"))
    r = retrieval
    lines = ["# vistok SEED tokenizer demo (ShapesWorld)", "",
             f"Stage I, held-out retrieval over {r['num_pairs']} pairs (a hit: the retrieved caption equals the query's):", "",
             "| | R@1 | R@5 |", "|---|---|---|",
             f"| image -> text | {r['i2t_R@1']:.3f} | {r['i2t_R@5']:.3f} |",
             f"| text -> image | {r['t2i_R@1']:.3f} | {r['t2i_R@5']:.3f} |",
             f"| chance | {r['chance_R@1']:.4f} | {r['chance_R@5']:.4f} |", "",
             f"Stage II: codebook usage {codes['codebook_usage']:.1%}, perplexity {codes['perplexity']:.1f}, "
             f"reconstruction cosine of the causal embeddings {codes['recon_cosine']:.3f}, generation-embedding cosine "
             f"{codes['gen_cosine']:.3f}.", "",
             f"Decoded held-out codes read as their source scene by the exact detector: {decoded['decoded_match']:.1%} "
             f"(random codes {decoded['random_codes_floor']:.1%}, real scenes {decoded['real_scenes_ceiling']:.1%}, "
             f"{decoded['num_scenes']} scenes).", "",
             "Originals (top), decoded from their codes (middle), decoded from random codes (bottom):", "",
             "![decoded](decoded.png)", ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    print(f"\nstage times (s): {json.dumps(timings)}; total {round(time.time() - t0, 1)} s")
    print(json.dumps({"stage1": {k: r[k] for k in r if k.startswith(("i2t", "t2i", "chance"))},
                      "decode": {k: decoded[k] for k in ("decoded_match", "random_codes_floor", "real_scenes_ceiling")}}))


if __name__ == "__main__":
    main()
