#!/usr/bin/env python
"""Train any vistok model from a config.

    python train.py --config configs/vqgan/mnist.yaml [key.sub=value ...]
    accelerate launch train.py --config configs/vqgan/imagenet256.yaml train.batch_size=32
"""
import argparse
import json
import sys

from vistok.config import ConfigError, load_config
from vistok.training.trainer import train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (configs/...)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_steps=100")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = train(cfg)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
