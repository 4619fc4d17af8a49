#!/usr/bin/env python
"""Train any vistok model from a config.

    python train.py --config configs/vqgan/mnist.yaml [key.sub=value ...]
    accelerate launch train.py --config configs/vqgan/imagenet256.yaml train.batch_size=32

A run folder (train.output_dir) belongs to one training: an existing run is continued only with
train.resume=latest (or a checkpoint path), never overwritten.
"""
import argparse
import json
import sys

from vistok.cli import add_debug, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (configs/...)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_steps=100")
    add_debug(p)
    args = p.parse_args(argv)
    from vistok.config import load_config
    from vistok.evaluation.during_training import callbacks_for
    from vistok.training.trainer import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, callbacks=callbacks_for(cfg))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
