#!/usr/bin/env python
"""AR sampling speed: static KV cache (prefill, then one token per step) vs a full forward pass per
token, same model and seed, at 64 (8x8) and 256 (16x16) tokens, with CFG (doubled batch).

    python benchmarks/ar_sampling.py [--dim 256] [--depth 8] [--batch 8]

Also checks that both paths return the same tokens. Last line: {"speedup_64": x, "speedup_256": x, ...}
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.generators.ar import ARGenerator  # noqa: E402


def timed(model, labels, use_cache: bool) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    codes = model.sample(labels, cfg_scale=2.0, top_k=100, generator=torch.Generator().manual_seed(0), use_cache=use_cache)
    return time.perf_counter() - t0, codes


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    result = {}
    for side in (8, 16):
        torch.manual_seed(0)
        model = ARGenerator(vocab_size=1024, token_shape=(side, side), num_classes=10, dim=args.dim,
                            depth=args.depth, heads=args.heads).eval()
        labels = torch.arange(args.batch) % 10
        timed(model, labels[:1], True)  # warm-up
        t_cache, a = timed(model, labels, True)
        t_full, b = timed(model, labels, False)
        n = side * side
        result[f"speedup_{n}"] = round(t_full / t_cache, 2)
        result[f"tokens_per_s_cached_{n}"] = round(args.batch * n / t_cache, 1)
        result[f"tokens_per_s_full_{n}"] = round(args.batch * n / t_full, 1)
        result[f"same_tokens_{n}"] = bool(torch.equal(a, b))
    result.update(model=f"{args.depth} x {args.dim}, {args.heads} heads", batch=args.batch, cfg="2.0 (doubled batch)",
                  torch_threads=torch.get_num_threads())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
