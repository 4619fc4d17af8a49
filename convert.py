#!/usr/bin/env python
"""Convert official checkpoints into vistok release folders (read weights-only: nothing is unpickled).

    python convert.py llamagen --vq vq_ds16_c2i.pt [--gpt c2i_B_256.pt] --out checkpoints/llamagen-b
    python convert.py tokenflow --ckpt tokenflow_clipb_32k_enhanced.pt --out checkpoints/tokenflow-clipb
                      [--scales 1 2 4 6 8 10 12 14]
    python convert.py mar-kl16 --vae kl16.ckpt --out checkpoints/kl16-imagenet
    python convert.py xar --vae kl16.ckpt --ckpt xAR-B.pth --out checkpoints/xar-b
    python convert.py catanet --ckpt CATANet-x2.pth --out checkpoints/catanet-x2     # an SR stage alone

A tokenizer alone becomes a one-stage pipeline (``sample.py --pipeline`` reconstructs with it); with --gpt
the pipeline also holds the generator. What each converter maps, and what it cannot, is in
vistok/convert/. The last line printed is JSON: the folder, the stages and any keys left unconverted.
"""
import argparse
import json
import sys

from vistok.cli import add_debug, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=["llamagen", "tokenflow", "mar-kl16", "xar", "catanet"])
    p.add_argument("--vq", help="LlamaGen VQ checkpoint (.pt / .safetensors)")
    p.add_argument("--gpt", help="LlamaGen class-conditional GPT checkpoint")
    p.add_argument("--ckpt", help="TokenFlow tokenizer / xAR generator / CATANet checkpoint")
    p.add_argument("--vae", help="MAR's KL-16 VAE checkpoint (kl16.ckpt)")
    p.add_argument("--vae-scale", type=float, default=0.2325, help="KL-16 latent scale (MAR: 0.2325)")
    p.add_argument("--heads", type=int, help="xAR: attention heads (default from the width: B 12, L/H 16)")
    p.add_argument("--image-size", type=int, default=256, help="LlamaGen VQ / KL-16: the training resolution")
    p.add_argument("--head-dim", type=int, default=64, help="LlamaGen GPT: dim per head (64 for B/L/XL/XXL/3B)")
    p.add_argument("--scales", type=int, nargs="+", help="TokenFlow: the scales (default from the file name's teacher)")
    p.add_argument("--out", required=True, help="a new or empty folder (or, with --overwrite, an earlier vistok release)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing vistok release at --out (atomically)")
    add_debug(p)
    args = p.parse_args(argv)
    from vistok.io import guard_output_dir
    from vistok.pipeline import Pipeline

    guard_output_dir(args.out, "--out", args.overwrite)  # before reading anything

    info = {}
    if args.source == "llamagen":
        from vistok.convert.llamagen import convert_gpt, convert_vq

        if not args.vq:
            p.error("llamagen needs --vq (and optionally --gpt)")
        tokenizer = convert_vq(args.vq, image_size=args.image_size)
        generator = convert_gpt(args.gpt, head_dim=args.head_dim) if args.gpt else None
        pipe = Pipeline(tokenizer, generator)
        sources = {"tokenizer": args.vq, **({"generator": args.gpt} if args.gpt else {})}
    elif args.source == "catanet":
        from vistok.convert.catanet import convert_catanet

        if not args.ckpt:
            p.error("catanet needs --ckpt")
        pipe, sources = Pipeline(sr=convert_catanet(args.ckpt)), {"sr": args.ckpt}
    elif args.source in ("mar-kl16", "xar"):
        from vistok.convert.mar import convert_kl16

        if not args.vae or (args.source == "xar" and not args.ckpt):
            p.error(f"{args.source} needs --vae" + (" and --ckpt" if args.source == "xar" else ""))
        tokenizer = convert_kl16(args.vae, image_size=args.image_size, scale_factor=args.vae_scale)
        generator, sources = None, {"tokenizer": args.vae}
        if args.source == "xar":
            from vistok.convert.xar import convert_xar

            generator, sources["generator"] = convert_xar(args.ckpt, heads=args.heads), args.ckpt
        pipe = Pipeline(tokenizer, generator)
    else:
        from vistok.convert.tokenflow import convert_tokenflow

        if not args.ckpt:
            p.error("tokenflow needs --ckpt")
        tokenizer, info = convert_tokenflow(args.ckpt, scales=args.scales)
        pipe = Pipeline(tokenizer)
        sources = {"tokenizer": args.ckpt}
    pipe.save_pretrained(args.out, card=f"Converted by `convert.py {args.source}` from {json.dumps(sources)}.",
                         sources={k: {"converted_from": v} for k, v in sources.items()}, overwrite=args.overwrite)
    print(json.dumps({"converted": args.out, "stages": list(pipe.stages), **info}))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
