#!/usr/bin/env python
"""Release training runs as one pipeline folder (safetensors + JSON, EMA weights when kept).

    python release.py --tokenizer runs/vqgan-mnist --out checkpoints/vqgan-mnist
    python release.py --tokenizer RUN --generator RUN [--sr RUN] --out checkpoints/NAME
    python release.py --tokenizer checkpoints/demo --generator checkpoints/demo --sr runs/catanet-toy \
                      --out checkpoints/demo-sr    # a released pipeline + an SR cascade stage
    python release.py --sr runs/catanet-toy --out checkpoints/catanet-toy      # an SR model alone
    python release.py --model runs/teacher-mnist --out checkpoints/teacher-mnist   # one model (e.g. a teacher)

--out must be a new or empty folder, or (with --overwrite) an earlier vistok release, which is replaced
atomically. A training run, the repository's checkpoints/ root or a folder holding anything else is refused.
"""
import argparse
import json
import sys

from vistok.cli import add_debug, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", help="run folder of the tokenizer (runs/<name>), or a release folder to reuse as is")
    p.add_argument("--model", help="release one model of any kind as a model folder (config.json + model.safetensors)")
    p.add_argument("--generator", help="run folder of the generator, or a release folder whose generator to reuse")
    p.add_argument("--sr", help="run folder of a super-resolution stage (or a release folder with one)")
    p.add_argument("--out", required=True, help="release folder, e.g. checkpoints/NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing vistok release at --out (atomically)")
    add_debug(p)
    args = p.parse_args(argv)
    from vistok.pipeline import release

    if args.model:
        from vistok.io import guard_output_dir, write_release_dir
        from vistok.pipeline import model_from_run

        guard_output_dir(args.out, "--out", args.overwrite)
        model, _, info = model_from_run(args.model)
        write_release_dir(args.out, model.save_pretrained, args.overwrite)
        print(json.dumps({"released": args.out, "model_type": model.model_type, "step": info["step"], "ema": info["ema"]}))
        return 0
    if not args.tokenizer and not args.sr:
        p.error("--tokenizer RUN is required (or --sr RUN alone, or --model RUN for a single model)")
    pipe = release(args.out, tokenizer=args.tokenizer, generator=args.generator, sr=args.sr, overwrite=args.overwrite)
    print(json.dumps({"released": args.out, "stages": list(pipe.stages)}))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
