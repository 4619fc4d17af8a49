#!/usr/bin/env python
"""SEED's claim at toy scale: codes from causal queries are easier for a left-to-right model than codes from
BLIP-2's bidirectional queries. Both variants at equal budget, through the user CLIs:

    python benchmarks/seed_causal_ablation.py --decoder runs/demo-seed/decoder [--seeds 0 1] [--steps 300 300 800]

Per variant (model.causal true / false, nothing else differs) and seed: SEED stage I (configs/seed/shapes_stage1.yaml)
and stage II (shapes_stage2.yaml), each ``--steps`` [0] / [1] steps; evaluate.py seed (codebook usage); release
with the shared decoder (it is conditioned on the teacher's embedding, so one decoder serves both code sets);
the SEED-LLaMA model (configs/seed_llama/shapes.yaml, ``--steps`` [2] steps) on those codes; its held-out
next-code loss (``code_ce``, EMA weights, over ``--eval-batches`` x 128 test scenes; the code set's own entropy
differs, so ``code_accuracy`` and the per-code perplexity are given too); text-to-image GenEval over the
ShapesWorld prompts (``--images-per-prompt``, CFG ``--cfg-scale``). Last line: per variant the mean and the
spread (min, max) over seeds of each figure, and every run's figures. ``code_gain`` = ln(codes_perplexity) -
code_ce: how far below the code set's own unigram entropy the model's next-code loss goes (a code set that
collapses onto fewer codes has a lower loss without being easier to predict). ``--summarise`` recomputes the
last line from an earlier run's results.json without training.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from demo import stage  # noqa: E402

import ablation_runs  # noqa: E402  (benchmarks/, this script's folder)

VARIANTS = ("causal", "bidirectional")


def run(variant: str, seed: int, args, timings: dict) -> dict:
    causal = "true" if variant == "causal" else "false"
    root = os.path.join(args.out, f"{variant}-s{seed}")
    s1, s2, gen = (os.path.join(root, n) for n in ("stage1", "stage2", "generator"))
    tok_rel, rel = os.path.join(root, "release-tokenizer"), os.path.join(root, "release")
    steps1, steps2, steps_gen = args.steps
    both = [f"model.causal={causal}", f"train.seed={seed}"]
    ablation_runs.train(f"{variant} s{seed} stage I", timings, "configs/seed/shapes_stage1.yaml", s1, steps1, *both)
    ablation_runs.train(f"{variant} s{seed} stage II", timings, "configs/seed/shapes_stage2.yaml", s2, steps2, *both,
                        f"train.init_from={s1}")
    codes = stage(f"{variant} s{seed} codes", timings, ["evaluate.py", "seed", "--tokenizer", s2, "--max-items", "1000",
                  "--out", os.path.join(root, "eval_codes.json")])
    stage(f"{variant} s{seed} release tokenizer", timings, ["release.py", "--stage", f"tokenizer={s2}", "--stage",
          f"decoder={args.decoder}", "--out", tok_rel])
    metrics = ablation_runs.train(f"{variant} s{seed} generator", timings, "configs/seed_llama/shapes.yaml", gen,
                                  steps_gen, f"data.tokenizer={tok_rel}", f"train.seed={seed}",
                                  f"train.eval_batches={args.eval_batches}")
    stage(f"{variant} s{seed} release", timings, ["release.py", "--stage", f"tokenizer={tok_rel}", "--stage",
          f"decoder={args.decoder}", "--stage", f"generator={gen}", "--out", rel])
    samples = os.path.join(root, "t2i")
    stage(f"{variant} s{seed} sample", timings, ["sample.py", "--pipeline", rel, "--out", samples, "--prompts",
          "vistok/evaluation/prompts/shapes_geneval.jsonl", "--images-per-prompt", str(args.images_per_prompt),
          "--cfg-scale", str(args.cfg_scale), "--seed", str(seed)])
    geneval = stage(f"{variant} s{seed} geneval", timings, ["evaluate.py", "geneval", "--samples", samples,
                    "--out", os.path.join(root, "eval_geneval.json")])
    ce = metrics["eval_ema/code_ce"]
    return {"variant": variant, "seed": seed, "code_ce": ce, "code_perplexity": math.exp(ce),
            "code_accuracy": metrics["eval_ema/code_accuracy"], "caption_ce": metrics["eval_ema/caption_ce"],
            "codebook_usage": codes["codebook_usage"], "codes_perplexity": codes["perplexity"],
            "recon_cosine": codes["recon_cosine"], "geneval_overall": geneval["overall"],
            "geneval_tasks": {k: v for k, v in geneval.items() if isinstance(v, float) and k != "overall"}}


def with_gain(row: dict) -> dict:
    return {**row, "code_gain": math.log(row["codes_perplexity"]) - row["code_ce"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", default="runs/demo-seed/decoder", help="a trained unclip_decoder run (make demo-seed's)")
    ablation_runs.add_arguments(p, "runs/bench-seed-causal", [300, 300, 800])
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--images-per-prompt", type=int, default=2)
    p.add_argument("--cfg-scale", type=float, default=3.0)
    args = p.parse_args()
    rows, timings = ablation_runs.run_all(args, VARIANTS, run)
    rows = [with_gain(r) for r in rows]
    keys = ["code_ce", "code_gain", "code_perplexity", "code_accuracy", "caption_ce", "codebook_usage",
            "codes_perplexity", "recon_cosine", "geneval_overall"]
    ablation_runs.write_summary(args, VARIANTS, rows, keys, timings)


if __name__ == "__main__":
    main()
