#!/usr/bin/env python
"""Sample from a released pipeline.

    python sample.py --pipeline checkpoints/NAME --out DIR [--num-images N] [--seed S]

A tokenizer-only pipeline reconstructs the first N held-out images of the data it was trained on and
writes DIR/<index>.png (reconstructions), DIR/grid.png (inputs above reconstructions) and
DIR/sampling.json (every setting, so the run can be reproduced).
"""
import argparse
import json
import os
import sys

import torch

from vistok.data.base import build_dataset
from vistok.pipeline import Pipeline
from vistok.sampling import save_images, write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    pipe = Pipeline.from_pretrained(args.pipeline)
    if pipe.generator is not None:
        print("error: generator sampling arrives with the AR generator", file=sys.stderr)
        return 2
    data = build_dataset(pipe.data, "test")
    n = min(args.num_images, len(data))
    inputs, recons = [], []
    with torch.no_grad():
        for i in range(0, n, args.batch_size):
            x = torch.stack([data[j]["image"] for j in range(i, min(n, i + args.batch_size))])
            inputs.append(x)
            recons.append(pipe.reconstruct(x))
    x, xr = torch.cat(inputs), torch.cat(recons)
    save_images(xr, args.out, grid_pairs=x)
    settings = {"pipeline": os.path.abspath(args.pipeline), "mode": "reconstruct", "num_images": n,
                "split": "test", "data": pipe.data, "seed": args.seed}
    write_json(os.path.join(args.out, "sampling.json"), settings)
    print(json.dumps({"out": args.out, "num_images": n, "grid": os.path.join(args.out, "grid.png")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
