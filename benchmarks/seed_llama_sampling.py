#!/usr/bin/env python
"""SEED-LLaMA sampling speed, both directions: the KV cache (prefill, then one id per step; text -> image with
CFG runs the caption-free stream beside the conditional one) vs a full forward pass per id, the same model,
prompts and seed, on the CPU backbone (the shared AR generator) at the demo's size or larger.

    python benchmarks/seed_llama_sampling.py [--dim 128] [--depth 6] [--num-queries 32] [--batch 32]

Random weights (speed does not depend on training); both paths must return the same codes and captions.
Last line: {"t2i_speedup": x, "i2t_speedup": x, "t2i_seconds": {...}, "i2t_seconds": {...}, ...}
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.data.text import shapes_vocabulary  # noqa: E402
from vistok.generators.seed_llama import SeedLlama  # noqa: E402


def timed(fn, **kw):
    t0 = time.perf_counter()
    out = fn(generator=torch.Generator().manual_seed(0), **kw)
    return time.perf_counter() - t0, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--num-queries", type=int, default=32)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    model = SeedLlama(codebook_size=args.codebook_size, num_queries=args.num_queries, text_vocab=shapes_vocabulary(),
                      text_len=16, dim=args.dim, depth=args.depth, heads=4).eval()
    prompts = ["a red circle left of a blue square"] * args.batch  # one token length: one batch
    codes = torch.randint(0, args.codebook_size, (args.batch, args.num_queries), generator=torch.Generator().manual_seed(1))
    out = {"batch": args.batch, "num_queries": args.num_queries, "dim": args.dim, "depth": args.depth,
           "threads": torch.get_num_threads()}
    for name, fn, kw in (("t2i", model.sample_codes, {"prompts": prompts, "cfg_scale": 3.0, "top_k": 50}),
                         ("i2t", model.sample_captions, {"codes": codes, "max_tokens": 17})):
        fn(**kw, generator=torch.Generator().manual_seed(0))  # warm-up
        cached, a = timed(fn, **kw)
        full, b = timed(fn, use_cache=False, **kw)
        same = torch.equal(a, b) if torch.is_tensor(a) else a == b
        if not same:
            raise SystemExit(f"{name}: cached and recomputed samples differ")
        out[f"{name}_seconds"] = {"cached": round(cached, 3), "recompute": round(full, 3)}
        out[f"{name}_speedup"] = round(full / cached, 2)
    out["captions_are_text"] = all(set(c.split()) <= set(shapes_vocabulary()) for c in b)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
