#!/usr/bin/env python
"""Convert official checkpoints into vistok release folders (read weights-only: nothing is unpickled).

    python convert.py llamagen --vq vq_ds16_c2i.pt [--gpt c2i_B_256.pt] --out checkpoints/llamagen-b
    python convert.py tokenflow --ckpt tokenflow_clipb_32k_enhanced.pt --out checkpoints/tokenflow-clipb
                      [--scales 1 2 4 6 8 10 12 14]

A tokenizer alone becomes a one-stage pipeline (``sample.py --pipeline`` reconstructs with it); with --gpt
the pipeline also holds the generator. What each converter maps, and what it cannot, is in
vistok/convert/. The last line printed is JSON: the folder, the stages and any keys left unconverted.
"""
import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=["llamagen", "tokenflow"])
    p.add_argument("--vq", help="LlamaGen VQ checkpoint (.pt / .safetensors)")
    p.add_argument("--gpt", help="LlamaGen class-conditional GPT checkpoint")
    p.add_argument("--ckpt", help="TokenFlow tokenizer checkpoint")
    p.add_argument("--image-size", type=int, default=256, help="LlamaGen VQ: the training resolution")
    p.add_argument("--head-dim", type=int, default=64, help="LlamaGen GPT: dim per head (64 for B/L/XL/XXL/3B)")
    p.add_argument("--scales", type=int, nargs="+", help="TokenFlow: the scales (default from the file name's teacher)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from vistok.pipeline import Pipeline

    info = {}
    if args.source == "llamagen":
        from vistok.convert.llamagen import convert_gpt, convert_vq

        if not args.vq:
            p.error("llamagen needs --vq (and optionally --gpt)")
        tokenizer = convert_vq(args.vq, image_size=args.image_size)
        generator = convert_gpt(args.gpt, head_dim=args.head_dim) if args.gpt else None
        pipe = Pipeline(tokenizer, generator)
        sources = {"tokenizer": args.vq, **({"generator": args.gpt} if args.gpt else {})}
    else:
        from vistok.convert.tokenflow import convert_tokenflow

        if not args.ckpt:
            p.error("tokenflow needs --ckpt")
        tokenizer, info = convert_tokenflow(args.ckpt, scales=args.scales)
        pipe = Pipeline(tokenizer)
        sources = {"tokenizer": args.ckpt}
    pipe.save_pretrained(args.out, card=f"Converted by `convert.py {args.source}` from {json.dumps(sources)}.",
                         sources={k: {"converted_from": v} for k, v in sources.items()})
    print(json.dumps({"converted": args.out, "stages": list(pipe.stages), **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
