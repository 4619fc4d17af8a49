#!/usr/bin/env python
"""xAR's five prediction entities on MNIST: quality and sampling speed at the same model, steps and data.

    python benchmarks/xar_entities.py --tokenizer checkpoints/demo-xar-kl [--steps 1500] [--seed 0]

The KL tokenizer's latents are 4 x 8 x 8. Entities: token (64 AR steps), cell (2x2 cells: 16), subsample
(stride 2: 4 groups of 16 non-local positions), scale (1, 2, 4, 8: 4 steps, 85 tokens), image (1 step, no
autoregression). Each trains a 4 x 96 xAR with noisy context for --steps (batch 64), then samples 50 digits per
class (CFG 5 ramped over the entities, 10 Euler-Maruyama steps per entity, batches of 100) scored by the
committed LeNet. images_per_s: the generator's sampling throughput on this machine (decoding excluded).
Last line: {"token": {"acc", "fd_lenet", "images_per_s", ...}, "cell": {...}, ...}
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.xar_mnist import train_and_score  # noqa: E402

ENTITIES = {
    "token": ["model.entity=token"],
    "cell": ["model.entity=cell", "model.cell=2"],
    "subsample": ["model.entity=subsample", "model.stride=2"],
    "scale": ["model.entity=scale", "model.scales=[1,2,4,8]"],
    "image": ["model.entity=image"],
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="checkpoints/demo-xar-kl")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--entities", nargs="+", default=list(ENTITIES), choices=list(ENTITIES))
    args = p.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.entities:
            r = train_and_score(name, ENTITIES[name] + ["model.dim=96", "model.depth=4"], args.tokenizer,
                                args.steps, args.seed, tmp)
            out[name] = r
            print(f"{name}: {r}", flush=True)
    out["settings"] = {"steps": args.steps, "seed": args.seed,
                       "model": "4 x 96, noisy context, CFG 5 ramped, 10 EM steps per entity"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
