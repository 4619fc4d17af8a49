#!/usr/bin/env python
"""Evaluate releases, runs and sample folders: one sub-command per registered evaluation task. Each command
prints one JSON object as its last line and writes it to --out FILE when given.

    python evaluate.py recon    --pipeline checkpoints/NAME [--max-images N]
    python evaluate.py fid      --samples DIR --reference DIR|stats.npz --inception-weights PATH [--kid] [--save-stats F.npz]
    python evaluate.py classify --samples DIR [--labels-from DIR/sampling.json]
    python evaluate.py geneval  --samples DIR [--detector shapes] [--ceiling]
    python evaluate.py sr       --model checkpoints/NAME|runs/NAME [--data skimage|FOLDER] [--tile 128 --tile-overlap 16]
    python evaluate.py em       --model runs/NAME
    python evaluate.py package.module:MyTask ...     # a task outside vistok

Tasks marked distributed (recon, fid) also run under torchrun / accelerate launch: each rank takes a disjoint
shard (uneven when the count is not divisible), the statistics are summed over ranks, rank 0 prints the JSON.
"""
import argparse
import json
import os
import sys

from vistok.cli import add_debug, run as run_cli


def build_parser(extra: str | None = None):
    from vistok.registry import lookup, names

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in names("task") + ([extra] if extra and extra not in names("task") else []):
        task = lookup("task", name)
        sp = sub.add_parser(name, help=task.help)
        task.add_arguments(sp)
        sp.add_argument("--out", help="also write the JSON result here (a new file, or an earlier vistok result with --overwrite)")
        sp.add_argument("--overwrite", action="store_true", help="replace an earlier vistok result at --out")
        add_debug(sp)
    add_debug(p)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(first if first and ":" in first else None).parse_args(argv)
    from vistok.registry import lookup

    task = lookup("task", args.cmd)
    if args.out:
        from vistok.io import guard_result_file

        guard_result_file(args.out, args.overwrite)  # before the work, not after it
    if getattr(args, "samples", None):
        from vistok.image_files import check_complete

        check_complete(args.samples)
    state = None
    if "WORLD_SIZE" in os.environ and task.distributed:
        # torchrun / accelerate launch: one process group; each rank evaluates a disjoint shard, sums are reduced
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
    main_process = state is None or state.is_main_process
    try:
        result = task.run(args)
    finally:
        if state is not None:
            state.destroy_process_group()  # exiting with live gloo/nccl threads aborts the process
    if not main_process:
        return 0
    from vistok.version import __version__

    result = {**result, "task": args.cmd, "vistok_version": __version__}
    if args.out:
        from vistok.io import atomic_write_json

        atomic_write_json(args.out, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
