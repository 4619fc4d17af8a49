#!/usr/bin/env python
"""Sample from a released pipeline; its type decides the inputs, its components the sampling options.

    python sample.py --pipeline checkpoints/NAME --help          # this pipeline's inputs and options
    # class-to-image: class-conditional samples
    python sample.py --pipeline checkpoints/NAME --out DIR --per-class 50 --cfg-scale 2 [--cfg-schedule linear]
        [--temperature 1] [--top-k 0] [--top-p 1] [--seed 0] [--npz] [--no-cache]
    python sample.py --pipeline checkpoints/NAME --out DIR --class-labels 3 3 7
    # text-to-image: GenEval metadata jsonl in, the official GenEval folder layout out
    python sample.py --pipeline checkpoints/NAME --out DIR --prompts vistok/evaluation/prompts/shapes_geneval.jsonl \
        [--images-per-prompt 4] --cfg-scale 3
    # reconstruction: the first N held-out images
    python sample.py --pipeline checkpoints/NAME --out DIR --num-images 64
    # super-resolution (e.g. convert.py catanet): upscale every image of a folder [tiled for big images]
    python sample.py --pipeline checkpoints/catanet-x2 --images DIR_IN --out DIR [--tile 256 --tile-overlap 16]
    # a pipeline with an sr component also writes DIR/sr/<index>.png: the samples upscaled (the cascade)
    # SEED-LLaMA (tokenizer + decoder + seed_llama generator): prompts -> images, and the same release images -> text
    python sample.py --pipeline checkpoints/demo-seed-llama --out DIR --prompts PROMPTS.jsonl --cfg-scale 3
    python sample.py --pipeline checkpoints/demo-seed-llama --pipeline-type seed-image-to-text --out DIR \
        [--num-images 64 | --images DIR_IN] --temperature 0     # DIR/captions.jsonl

Writes what the pipeline's writers write (DIR/<index>.png, DIR/grid.png; --writer npz adds samples.npz) and
DIR/sampling.json (every setting and, for class-conditional samples, the label of each image, so a number can
be reproduced). Same seed, same images: item b uses seed + b. Under `accelerate launch` / `torchrun`, items go
round-robin to the ranks (disjoint files, the same images as one process). --out must be new or empty, or
hold only an earlier sample.py output (replaced with --overwrite).
"""
import argparse
import json
import os
import sys
import time

import torch
from accelerate import PartialState

from vistok.cli import add_debug, ranged, run
from vistok.image_files import clear_samples, guard_samples_dir, start_samples, write_json


def build_parser(pipeline: str | None, pipeline_type: str | None = None):
    """The common flags, then those of the pipeline's type and of its components' sampling options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="a release folder (checkpoints/NAME)")
    p.add_argument("--out", required=True, help="a new or empty folder (or earlier samples, with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="--out holds earlier samples: delete those (only files "
                                                             "sample.py writes) and sample again")
    p.add_argument("--batch-size", type=ranged(int, 1), default=100)
    p.add_argument("--seed", type=ranged(int, 0), default=0)
    p.add_argument("--writer", action="append", default=[], help="an output writer to add (png, npz, geneval, "
                                                                  "captions, or package.module:Class)")
    p.add_argument("--npz", action="store_true", help="also write samples.npz (uint8 arr_0, ADM FID suite layout)")
    p.add_argument("--compile", action="store_true", help="torch.compile what sampling spends its time in "
                                                          "(pays off on GPUs for large runs)")
    p.add_argument("--part", action="append", default=[], metavar="NAME=DIR",
                   help="point a pretrained part of the release at another folder (a release moved to another "
                        "machine), e.g. --part text_encoder=/models/flan-t5-xl or generator.text_encoder=DIR")
    p.add_argument("--pipeline-type", help="sample the release as another pipeline type its components fit (e.g. "
                                            "seed-image-to-text for a seed-text-to-image release)")
    add_debug(p)
    cls, meta = None, None
    if pipeline and os.path.isfile(os.path.join(pipeline, "pipeline.json")):
        from vistok.pipelines.base import pipeline_class
        from vistok.release_format import read_meta

        meta = read_meta(pipeline)
        cls = pipeline_class(pipeline_type or meta["pipeline_type"])
        meta = {**meta, "components": {k: v for k, v in meta["components"].items() if k in cls.roles()}}
        group = p.add_argument_group(f"inputs of a '{cls.registered_name}' pipeline")
        cls.add_arguments(group)
        from vistok.pipelines.options import add_option_flags

        add_option_flags(p, cls.option_classes(meta["components"]))
    return p, cls, meta


def part_paths(entries: list[str]) -> dict:
    """--part NAME=DIR ... -> {NAME: DIR}; a malformed entry is named."""
    out = {}
    for e in entries:
        name, sep, path = e.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--part '{e}': expected NAME=DIR (e.g. text_encoder=/models/flan-t5-xl)")
        out[name] = path
    return out


def main(argv=None) -> int:
    try:
        return _main(argv)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # exiting with live gloo/nccl threads aborts the process


def _main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--pipeline")
    pre.add_argument("--pipeline-type")
    known, _ = pre.parse_known_args(argv)
    if known.pipeline and not os.path.isfile(os.path.join(known.pipeline, "pipeline.json")):
        from vistok.release_format import not_a_release

        if not {"-h", "--help"} & set(argv or sys.argv[1:]):
            raise FileNotFoundError(not_a_release(known.pipeline))
    parser, cls, meta = build_parser(known.pipeline, known.pipeline_type)
    args = parser.parse_args(argv)
    guard_samples_dir(args.out, args.overwrite, inputs=[getattr(args, "images", None), args.pipeline])  # before any work
    from vistok.version import __version__
    from vistok.pipelines.base import Pipeline
    from vistok.pipelines.options import collect
    from vistok.pipelines.writers import build_writers

    pipe = Pipeline.from_pretrained(args.pipeline, parts=part_paths(args.part), pipeline_type=args.pipeline_type)
    if args.compile:
        pipe.compile()
    state = PartialState(cpu=not torch.cuda.is_available())
    pipe.to(state.device)
    options = collect(args, cls.option_classes(meta["components"]))
    args.writers = build_writers(list(dict.fromkeys([*cls.writers, *args.writer, *(["npz"] if args.npz else [])])), args.out)
    if state.is_main_process:
        clear_samples(args.out)  # only what an earlier sample.py wrote (guard_samples_dir checked there is nothing else)
        start_samples(args.out, __version__)
    state.wait_for_everyone()
    t0 = time.time()
    with torch.no_grad():
        settings = pipe.sample(args, options, args.out, state)
    settings.update(pipeline=os.path.abspath(args.pipeline), pipeline_type=pipe.pipeline_type, seed=args.seed,
                    compile=args.compile, writers=[w.registered_name for w in args.writers],
                    seconds=round(time.time() - t0, 2))
    if not state.is_main_process:
        return 0
    write_json(os.path.join(args.out, "sampling.json"), {**settings, "complete": True, "vistok_version": __version__})
    grid = os.path.join(args.out, "grid.png")
    print(json.dumps({"out": args.out, **{k: settings[k] for k in ("num_images", "num_shapes") if k in settings}, "grid": grid if os.path.isfile(grid) else None,
                      "seconds": settings["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
