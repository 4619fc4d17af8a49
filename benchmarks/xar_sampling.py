#!/usr/bin/env python
"""xAR sampling speed: next-cell vs next-token at the same model size and the same flow steps per entity,
and the KV cache vs recomputing the prefix at every step (next-cell), same model and seed, CFG on.

    python benchmarks/xar_sampling.py [--latent 16 16 16] [--cell 8] [--dim 256] [--depth 8] [--steps 10] [--batch 8]

Weights are random (sampling cost does not depend on them). The default latent grid is xAR's (16 x 16 x 16,
8x8 cells = 4 entities vs 256 tokens). Also checks that cached and recomputed samples agree.
Last line: {"cell_vs_token_speedup": x, "cache_speedup": x, ...}
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.generators.xar import XARGenerator  # noqa: E402


def build(entity, args, **kw):
    torch.manual_seed(0)
    c, h, w = args.latent
    m = XARGenerator(latent_shape=[c, h, w], num_classes=10, entity=entity, dim=args.dim, depth=args.depth,
                     heads=args.dim // 64, steps=args.steps, dropout=0.0, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m.eval()


def timed(model, labels, use_cache=True):
    t0 = time.perf_counter()
    out = model.sample(labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(0), use_cache=use_cache)
    return time.perf_counter() - t0, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent", type=int, nargs=3, default=[16, 16, 16])
    p.add_argument("--cell", type=int, default=8)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(2)
    labels = torch.arange(args.batch) % 10
    cell, token = build("cell", args, cell=args.cell), build("token", args)
    timed(cell, labels[:1])  # warm-up
    t_cell, a = timed(cell, labels)
    t_token, _ = timed(token, labels)
    t_recompute, b = timed(cell, labels, use_cache=False)
    print(json.dumps({"cell_vs_token_speedup": round(t_token / t_cell, 2), "cache_speedup": round(t_recompute / t_cell, 2),
                      "images_per_s_cell": round(args.batch / t_cell, 2), "images_per_s_token": round(args.batch / t_token, 2),
                      "images_per_s_cell_recompute": round(args.batch / t_recompute, 2),
                      "cached_equals_recomputed": bool(torch.allclose(a, b, atol=1e-3)),
                      "entities_cell": cell.num_entities, "entities_token": token.num_entities,
                      "model": f"{args.depth} x {args.dim}, latent {args.latent}, {args.steps} flow steps, CFG (batch x2), "
                               f"batch {args.batch}"}))


if __name__ == "__main__":
    main()
