#!/usr/bin/env python
"""Convert official checkpoints into vistok release folders (read weights-only: nothing is unpickled).
One sub-command per registered converter (``vistok/convert/``):

    python convert.py llamagen --vq vq_ds16_c2i.pt [--gpt c2i_B_256.pt] --out checkpoints/llamagen-b
    python convert.py tokenflow --ckpt tokenflow_clipb_32k_enhanced.pt --out checkpoints/tokenflow-clipb \
        [--semantic-encoder checkpoints/hf/clip-vit-base-patch16]
                      [--scales 1 2 4 6 8 10 12 14]
    python convert.py mar-kl16 --vae kl16.ckpt --out checkpoints/kl16-imagenet
    python convert.py xar --vae kl16.ckpt --ckpt xAR-B.pth --out checkpoints/xar-b
    python convert.py catanet --ckpt CATANet-x2.pth --out checkpoints/catanet-x2     # an SR pipeline

The components make the pipeline type their driver names (a tokenizer alone: reconstruction; with a
generator: class-to-image; an SR model: super-resolution). What each converter maps, and what it cannot, is in
vistok/convert/. The last line printed is JSON: the folder, the components and any keys left unconverted.
"""
import argparse
import json
import sys

from vistok.cli import add_debug, run


def main(argv=None) -> int:
    from vistok.registry import lookup, names

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="source", required=True)
    for name in names("converter"):
        conv = lookup("converter", name)
        sp = sub.add_parser(name, help=conv.help)
        conv.add_arguments(sp)
        sp.add_argument("--out", required=True, help="a new or empty folder (or, with --overwrite, an earlier vistok release)")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing vistok release at --out (atomically)")
        add_debug(sp)
    add_debug(p)
    args = p.parse_args(argv)
    from vistok.io import guard_output_dir
    from vistok.pipelines.base import Pipeline

    guard_output_dir(args.out, "--out", args.overwrite)  # before reading anything
    components, sources, info = lookup("converter", args.source).convert(args)
    pipe = Pipeline.for_components(components)
    pipe.save_pretrained(args.out, card=f"Converted by `convert.py {args.source}` from {json.dumps(sources)}.",
                         sources={k: {"converted_from": v} for k, v in sources.items()}, overwrite=args.overwrite)
    print(json.dumps({"converted": args.out, "pipeline_type": pipe.pipeline_type, "components": list(pipe.components), **info}))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
