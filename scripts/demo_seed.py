#!/usr/bin/env python
"""`make demo-seed`: the SEED tokenizer on ShapesWorld, both stages and the decoder, through the user CLIs.

    stage I:  train (configs/seed/shapes_stage1.yaml: causal Q-Former over the frozen ShapesWorld teacher,
              contrastive with captions) -> evaluate.py seed (retrieval R@1/R@5 with chance)
    stage II: train (configs/seed/shapes_stage2.yaml from stage I: codebook + heads) -> evaluate.py seed
              (codebook usage, perplexity, reconstruction cosine)
    decoder:  train (configs/seed/decoder_shapes.yaml: a small UNet on the teacher's embeddings, unCLIP style)
    release.py (tokenizer + decoder: a 'seed' pipeline) -> evaluate.py seed-decode (held-out codes -> images the
              exact detector reads as the source scene, against random codes and the real scenes)
    SEED-LLaMA: train (configs/seed_llama/shapes.yaml: words + codes, caption -> image and image -> caption, on
              the release's cached codes) -> release.py (tokenizer + decoder + generator) -> sample.py the
              ShapesWorld GenEval prompts -> evaluate.py geneval --ceiling; sample.py --pipeline-type
              seed-image-to-text on held-out scenes -> evaluate.py captions (per word type, against the floor)
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
QUICK_LLAMA = ["train.max_steps=20", "train.eval_every=10", "train.checkpoint_every=10", "train.batch_size=32",
               "model.dim=32", "model.depth=1", "model.heads=2", "train.eval_batches=2"]
PROMPTS = "vistok/evaluation/prompts/shapes_geneval.jsonl"
CFG_SCALE = 3.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo-seed")
    p.add_argument("--release", default="checkpoints/demo-seed")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--eval-items", type=int, default=1000)
    p.add_argument("--decode-items", type=int, default=200)
    p.add_argument("--caption-items", type=int, default=1000)
    p.add_argument("--images-per-prompt", type=int, default=4)
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
    t2i, i2t = seed_llama(args, rel, timings)
    metrics = {"stage1": retrieval, "stage2": codes, "decode": decoded, "text_to_image": t2i, "image_to_text": i2t,
               "timings_seconds": timings}
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
             "![decoded](decoded.png)", "", *llama_report(t2i, i2t)]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    print(f"\nstage times (s): {json.dumps(timings)}; total {round(time.time() - t0, 1)} s")
    print(json.dumps({"stage1": {k: r[k] for k in r if k.startswith(("i2t", "t2i", "chance"))},
                      "decode": {k: decoded[k] for k in ("decoded_match", "random_codes_floor", "real_scenes_ceiling")},
                      "text_to_image": {k: t2i[k] for k in ("overall", "detector_ceiling")},
                      "image_to_text": {k: i2t[k] for k in ("shape", "colour", "count", "relation", "exact")}}))


def seed_llama(args, rel: str, timings: dict) -> tuple[dict, dict]:
    """The SEED-LLaMA model on the release's codes, released with them; both directions sampled and scored."""
    out = args.out
    gen, rel_llm = os.path.join(out, "generator"), args.release + "-llama"
    stage("train SEED-LLaMA", timings, ["train.py", "--config", "configs/seed_llama/shapes.yaml", f"data.tokenizer={rel}",
                                        f"train.output_dir={gen}", "train.resume=latest", "train.progress=false",
                                        *(QUICK_LLAMA if args.quick else [])])
    stage("release SEED-LLaMA", timings, ["release.py", "--stage", f"tokenizer={rel}", "--stage", f"decoder={rel}",
                                          "--stage", f"generator={gen}", "--out", rel_llm])
    t2i_dir, i2t_dir = os.path.join(out, "text_to_image"), os.path.join(out, "image_to_text")
    stage("sample text -> image", timings, ["sample.py", "--pipeline", rel_llm, "--out", t2i_dir, "--prompts", PROMPTS,
                                            "--images-per-prompt", str(args.images_per_prompt),
                                            "--cfg-scale", str(CFG_SCALE), *(["--steps", "2"] if args.quick else [])])
    t2i = stage("GenEval", timings, ["evaluate.py", "geneval", "--samples", t2i_dir, "--ceiling",
                                     "--out", os.path.join(out, "eval_geneval.json")])
    stage("sample image -> text", timings, ["sample.py", "--pipeline", rel_llm, "--pipeline-type", "seed-image-to-text",
                                            "--out", i2t_dir, "--num-images", str(args.caption_items),
                                            "--temperature", "0"])
    i2t = stage("captions", timings, ["evaluate.py", "captions", "--samples", i2t_dir,
                                      "--out", os.path.join(out, "eval_captions.json")])
    # greedy decoding takes the likeliest continuation after two objects, the "and" form; sampled captions (temperature
    # 1) state relations as often as the training captions do, which is what the relation word type can then score
    sampled_dir = i2t_dir + "_sampled"
    stage("sample image -> text (temperature 1)", timings, ["sample.py", "--pipeline", rel_llm, "--pipeline-type",
                                                           "seed-image-to-text", "--out", sampled_dir, "--num-images",
                                                           str(args.caption_items), "--temperature", "1"])
    i2t["sampled"] = stage("captions (temperature 1)", timings, ["evaluate.py", "captions", "--samples", sampled_dir,
                                                                 "--out", os.path.join(out, "eval_captions_sampled.json")])
    return t2i, i2t


def llama_report(t2i: dict, i2t: dict) -> list[str]:
    tasks = [k for k in ("single_object", "two_object", "counting", "colors", "position", "color_attr") if k in t2i]
    fl = i2t["floor"]
    return ["## SEED-LLaMA: one model, both directions", "",
            f"Text -> image, ShapesWorld GenEval (CFG {CFG_SCALE}; the exact detector on real scenes rendered for the "
            f"same prompts: {t2i['detector_ceiling']:.3f}):", "",
            "| " + " | ".join(tasks) + " | overall |", "|" + "---|" * (len(tasks) + 1),
            "| " + " | ".join(f"{t2i[k]:.3f}" for k in tasks) + f" | {t2i['overall']:.3f} |", "",
            "![text to image](text_to_image/grid.png)", "",
            f"Image -> text on {i2t['num_captions']} held-out scenes, the share of captions whose words match "
            f"the scene, against the most common training caption ('{fl['caption']}'; relation: "
            f"'{fl['relation_caption']}', and the most common relation word on the true objects):", "",
            "| | shape | colour | count | objects | relation | exact |", "|---|---|---|---|---|---|---|",
            *[f"| captions, {name} | {r['shape']:.3f} | {r['colour']:.3f} | {r['count']:.3f} | {r['objects']:.3f} | "
              f"{_f(r['relation'])} (stated {_f(r['relation_stated'])}) | {r['exact']:.3f} |"
              for name, r in (("greedy", i2t), ("temperature 1", i2t["sampled"]))],
            f"| floor | {fl['shape']:.3f} | {fl['colour']:.3f} | {fl['count']:.3f} | {fl['objects']:.3f} | "
            f"{_f(fl['relation'])} (prior {_f(i2t['relation_prior'])}) | {fl['exact']:.3f} |", ""]


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    main()
