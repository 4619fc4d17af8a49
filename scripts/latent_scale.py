#!/usr/bin/env python
"""Measure a KL tokenizer release's latent scale on its training data (1 / std and mean of the posterior
means), and with --write store them as the release's scale_factor / shift_factor.

    python scripts/latent_scale.py --tokenizer checkpoints/NAME [--images 2000] [--write]

Last line: JSON with mean, std, scale_factor, shift_factor and how many latent elements were read.
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
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--write", action="store_true", help="store scale_factor / shift_factor in the release's config")
    add_debug(p)
    args = p.parse_args(argv)
    import torch

    from vistok.data.base import build_dataset
    from vistok.pipelines.base import Pipeline
    from vistok.io import atomic_write_json

    pipe = Pipeline.from_pretrained(args.tokenizer)
    tok = pipe.tokenizer
    if not hasattr(tok, "latent_statistics"):
        print(f"error: '{args.tokenizer}' holds a '{tok.model_type}' tokenizer; latent scales are for continuous "
              f"(kl) tokenizers", file=sys.stderr)
        return 2
    data = build_dataset(pipe.data, "train")
    n = min(args.images, len(data))
    batches = ({"image": torch.stack([data[j]["image"] for j in range(i, min(n, i + args.batch_size))])}
               for i in range(0, n, args.batch_size))
    stats = tok.latent_statistics(batches)
    if args.write:
        path = os.path.join(args.tokenizer, "tokenizer", "config.json")
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        cfg["scale_factor"], cfg["shift_factor"] = stats["scale_factor"], stats["shift_factor"]
        atomic_write_json(path, cfg)
        stats["written"] = path
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
