#!/usr/bin/env python
"""Release training runs as one pipeline folder (safetensors + JSON, EMA weights when kept).

    python release.py --stage tokenizer=runs/vqgan-mnist --out checkpoints/vqgan-mnist
    python release.py --stage tokenizer=RUN --stage generator=RUN [--stage sr=RUN] --out checkpoints/NAME
    python release.py --stage NAME=RUN ... --pipeline-type TYPE --out ...   # any components, any registered type
    python release.py --tokenizer RUN --generator RUN --out ...     # --tokenizer/--generator/--sr: --stage aliases
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
    p.add_argument("--stage", action="append", default=[], metavar="NAME=RUN",
                   help="a component: a training run, or a release holding a component NAME to reuse (repeat)")
    p.add_argument("--pipeline-type", help="the pipeline type (default: the one its components call for)")
    p.add_argument("--tokenizer", help="= --stage tokenizer=RUN")
    p.add_argument("--model", help="release one model of any kind as a model folder (config.json + model.safetensors)")
    p.add_argument("--generator", help="= --stage generator=RUN")
    p.add_argument("--sr", help="= --stage sr=RUN (a super-resolution cascade stage, or alone)")
    p.add_argument("--out", required=True, help="release folder, e.g. checkpoints/NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing vistok release at --out (atomically)")
    add_debug(p)
    args = p.parse_args(argv)
    from vistok.pipelines.release import release

    if args.model:
        from vistok.io import guard_output_dir, write_release_dir
        from vistok.loading import model_from_run

        guard_output_dir(args.out, "--out", args.overwrite)
        model, _, info = model_from_run(args.model)
        write_release_dir(args.out, model.save_pretrained, args.overwrite)
        print(json.dumps({"released": args.out, "model_type": model.model_type, "step": info["step"], "ema": info["ema"]}))
        return 0
    stages = {k: v for k, v in (("tokenizer", args.tokenizer), ("generator", args.generator), ("sr", args.sr)) if v}
    for item in args.stage:
        name, sep, run_dir = item.partition("=")
        if not sep or not name or not run_dir:
            p.error(f"--stage {item!r}: expected NAME=RUN, e.g. --stage tokenizer=runs/my-vq")
        if name in stages:
            p.error(f"--stage {name}: given twice")
        stages[name] = run_dir
    if not stages:
        p.error("give the components: --stage NAME=RUN (repeat), or --model RUN for a single model")
    pipe = release(args.out, stages, overwrite=args.overwrite, pipeline_type=args.pipeline_type)
    print(json.dumps({"released": args.out, "pipeline_type": pipe.pipeline_type, "components": list(pipe.components)}))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
