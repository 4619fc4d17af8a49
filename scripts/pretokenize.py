#!/usr/bin/env python
"""Encode a tokenizer release's training data once (the cache `data.type=tokens` reads), on many processes.

    torchrun --nproc_per_node 8 scripts/pretokenize.py --tokenizer checkpoints/NAME --cache-dir /data/cache/NAME
    python scripts/pretokenize.py --tokenizer checkpoints/NAME          # one process, $VISTOK_CACHE/tokens
    python train.py --config configs/ar/... data.tokenizer=checkpoints/NAME data.cache_dir=/data/cache/NAME

Ranks encode disjoint chunks (--chunk items each, saved atomically), rank 0 merges; a killed run resumes
from its finished chunks. Last line (rank 0): JSON with each split's cache file and size.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.cli import add_debug, run  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--splits", nargs="+", default=["train", "test"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--chunk", type=int, default=10000)
    p.add_argument("--cache-dir", default="", help="where the cache goes (default $VISTOK_CACHE/tokens); train with "
                                                   "data.cache_dir=<the same folder> to use it")
    add_debug(p)
    args = p.parse_args(argv)
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # joins torchrun's process group when there is one
    from vistok.caches.tokens import TokenDataset

    out = {}
    for split in args.splits:
        ds = TokenDataset(args.tokenizer, split, batch_size=args.batch_size, chunk=args.chunk, cache_dir=args.cache_dir)
        out[split] = {"cache": ds.cache, "items": len(ds)}
    if state.is_main_process:
        print(json.dumps(out))
    state.destroy_process_group()  # exiting with live gloo/nccl threads aborts the process
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
