#!/usr/bin/env python
"""Evaluate releases and sample folders. Each command prints one JSON object as its last line and
writes it to --out FILE when given.

    python evaluate.py recon    --pipeline checkpoints/NAME [--max-images N]
    python evaluate.py fid      --samples DIR --reference DIR|stats.npz --inception-weights PATH [--kid] [--save-stats F.npz]
    python evaluate.py classify --samples DIR [--labels-from DIR/sampling.json]
    python evaluate.py geneval  --samples DIR [--detector shapes] [--ceiling]
    python evaluate.py sr       --model checkpoints/NAME|runs/NAME [--data skimage|FOLDER] [--tile 128 --tile-overlap 16]

recon and fid also run under torchrun / accelerate launch: each rank takes a disjoint shard (uneven when
the count is not divisible), the statistics are summed over ranks, rank 0 prints the same JSON.
"""
import argparse
import json
import os
import sys

from vistok.cli import add_debug, ranged, run as run_cli
from vistok.config import EvalConfig

DEFAULTS = EvalConfig()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recon", help="tokenizer metrics on the held-out split: PSNR, SSIM, codebook usage, perplexity, FD-LeNet")
    r.add_argument("--pipeline", required=True)
    r.add_argument("--batch-size", type=ranged(int, 1), default=DEFAULTS.batch_size)
    r.add_argument("--max-images", type=ranged(int, 0), default=DEFAULTS.max_images, help="0: the whole held-out split")
    r.add_argument("--lenet", default=DEFAULTS.lenet, help="FD-LeNet classifier folder")
    f = sub.add_parser("fid", help="FID/IS (and KID) with torch-fidelity's inception-v3-compat, local weights")
    f.add_argument("--samples", required=True, help="folder of PNG/JPEG samples")
    f.add_argument("--reference", help="folder of reference images, or an .npz with mu/sigma (and features for KID)")
    f.add_argument("--inception-weights", default=os.environ.get("VISTOK_INCEPTION_WEIGHTS", DEFAULTS.inception_weights),
                   help="local path of the inception-v3-compat weights (.pth or .safetensors)")
    f.add_argument("--kid", action="store_true", help="also KID (needs reference features)")
    f.add_argument("--batch-size", type=ranged(int, 1), default=50)
    f.add_argument("--save-stats", help="write the samples' statistics to this .npz (features too with --kid)")
    c = sub.add_parser("classify", help="FD-LeNet vs held-out digits, the real-vs-real floor, class accuracy")
    c.add_argument("--samples", required=True)
    c.add_argument("--labels-from", help="sampling.json with a 'labels' list (default: SAMPLES/sampling.json when present)")
    c.add_argument("--lenet", default=DEFAULTS.lenet)
    g = sub.add_parser("geneval", help="GenEval score of a folder in the official layout (<00000>/metadata.jsonl + samples/)")
    g.add_argument("--samples", required=True)
    g.add_argument("--detector", default="shapes", help="'shapes': the exact ShapesWorld detector")
    g.add_argument("--ceiling", action="store_true", help="also score real scenes rendered for the same prompts")
    s = sub.add_parser("sr", help="super-resolution: Y-PSNR / Y-SSIM (border = scale) per image and mean, bicubic alongside")
    s.add_argument("--model", required=True, help="a pipeline folder with an sr stage, or a training run folder")
    s.add_argument("--data", default="skimage", help="'skimage' (its held-out photos), an image folder, or a benchmark "
                                                      "folder in BasicSR's layout (Set5/HR, Set5/LR_bicubic/X2)")
    s.add_argument("--split", default="test")
    s.add_argument("--tile", type=ranged(int, 0), default=0, help="LR tile size for big images (0: whole-image inference)")
    s.add_argument("--tile-overlap", type=ranged(int, 0), default=16, help="LR pixels shared by neighbouring tiles on each side")
    for sp in (r, f, c, g, s):
        sp.add_argument("--out", help="also write the JSON result here (a new file, or an earlier vistok result with --overwrite)")
        sp.add_argument("--overwrite", action="store_true", help="replace an earlier vistok result at --out")
        add_debug(sp)
    add_debug(p)
    args = p.parse_args(argv)
    if args.out:
        from vistok.io import guard_result_file

        guard_result_file(args.out, args.overwrite)  # before the work, not after it
    state = None
    if "WORLD_SIZE" in os.environ and args.cmd in ("recon", "fid"):
        # torchrun / accelerate launch: one process group; each rank evaluates a disjoint shard, sums are reduced
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
    main_process = state is None or state.is_main_process
    try:
        result = run(args)
    finally:
        if state is not None:
            state.destroy_process_group()  # exiting with live gloo/nccl threads aborts the process
    if not main_process:
        return 0
    from vistok import __version__

    result = {**result, "task": args.cmd, "vistok_version": __version__}
    if args.out:
        from vistok.io import atomic_write_json

        atomic_write_json(args.out, result)
    print(json.dumps(result))
    return 0


def run(args) -> dict:
    samples = getattr(args, "samples", None)
    if samples:
        from vistok.sampling import check_complete

        check_complete(samples)
    if args.cmd == "recon":
        from vistok.evaluation.recon import evaluate_reconstruction
        from vistok.pipeline import Pipeline

        return evaluate_reconstruction(Pipeline.from_pretrained(args.pipeline), args.batch_size, args.max_images, args.lenet)
    if args.cmd == "fid":
        from vistok.evaluation.fid import compute_fid, inception_extractor, inception_stats

        if args.save_stats and not args.reference:
            stats, _ = inception_stats(inception_extractor(args.inception_weights), args.samples, args.batch_size, args.kid)
            stats.save(args.save_stats)
            return {"saved": args.save_stats, "num_images": stats.n}
        if not args.reference:
            raise ValueError("fid: --reference DIR|stats.npz is required (or --save-stats to only write statistics)")
        return compute_fid(args.samples, args.reference, args.inception_weights, kid=args.kid,
                           batch_size=args.batch_size, save_stats=args.save_stats)
    if args.cmd == "classify":
        from vistok.evaluation.lenet import evaluate_digit_samples

        labels_file = args.labels_from or os.path.join(args.samples, "sampling.json")
        labels = None
        if os.path.isfile(labels_file):
            with open(labels_file, encoding="utf-8") as fh:
                labels = json.load(fh).get("labels")
        return evaluate_digit_samples(args.samples, args.lenet, labels)
    if args.cmd == "geneval":
        from vistok.evaluation.geneval import build_detector, evaluate_folder

        detector = build_detector(args.detector)
        result, rows = evaluate_folder(args.samples, detector)
        if args.ceiling:
            from vistok.evaluation.geneval import read_folder
            from vistok.evaluation.shapes_prompts import detector_ceiling

            result["detector_ceiling"] = detector_ceiling(detector, [m for m, _ in read_folder(args.samples)])["overall"]
        result["protocol"] = (f"GenEval rules (thresholds 0.3 / 0.9 counting, max 16 per class, position shrink 0.1), "
                              f"detector '{args.detector}'")
        return result
    if args.cmd == "sr":
        from vistok.evaluation.sr import evaluate_sr

        return evaluate_sr(args.model, args.data, args.split, args.tile, args.tile_overlap)
    raise ValueError(args.cmd)


if __name__ == "__main__":
    sys.exit(run_cli(main))
