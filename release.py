#!/usr/bin/env python
"""Release training runs as one pipeline folder (safetensors + JSON, EMA weights when kept).

    python release.py --tokenizer runs/vqgan-mnist --out checkpoints/vqgan-mnist
    python release.py --tokenizer RUN --generator RUN [--sr RUN] --out checkpoints/NAME
    python release.py --tokenizer checkpoints/demo --generator checkpoints/demo --sr runs/catanet-toy \
                      --out checkpoints/demo-sr    # a released pipeline + an SR cascade stage
    python release.py --sr runs/catanet-toy --out checkpoints/catanet-toy      # an SR model alone
    python release.py --model runs/teacher-mnist --out checkpoints/teacher-mnist   # one model (e.g. a teacher)
"""
import argparse
import json
import sys

from vistok.pipeline import release


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", help="run folder of the tokenizer (runs/<name>), or a release folder to reuse as is")
    p.add_argument("--model", help="release one model of any kind as a model folder (config.json + model.safetensors)")
    p.add_argument("--generator", help="run folder of the generator, or a release folder whose generator to reuse")
    p.add_argument("--sr", help="run folder of a super-resolution stage (or a release folder with one)")
    p.add_argument("--out", required=True, help="release folder, e.g. checkpoints/NAME")
    args = p.parse_args(argv)
    if args.model:
        from vistok.pipeline import model_from_run

        model, _, info = model_from_run(args.model)
        model.save_pretrained(args.out)
        print(json.dumps({"released": args.out, "model_type": model.model_type, "step": info["step"], "ema": info["ema"]}))
        return 0
    if not args.tokenizer and not args.sr:
        p.error("--tokenizer RUN is required (or --sr RUN alone, or --model RUN for a single model)")
    try:
        pipe = release(args.out, tokenizer=args.tokenizer, generator=args.generator, sr=args.sr)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"released": args.out, "stages": list(pipe.stages)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
