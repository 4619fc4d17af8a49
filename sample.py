#!/usr/bin/env python
"""Sample from a released pipeline.

    # generator pipelines: class-conditional samples
    python sample.py --pipeline checkpoints/NAME --out DIR --per-class 50 --cfg-scale 2 [--cfg-schedule linear]
        [--temperature 1] [--top-k 0] [--top-p 1] [--seed 0] [--npz] [--no-cache]
    python sample.py --pipeline checkpoints/NAME --out DIR --class-labels 3 3 7
    # text-conditional generators: GenEval metadata jsonl in, the official GenEval folder layout out
    python sample.py --pipeline checkpoints/NAME --out DIR --prompts vistok/evaluation/prompts/shapes_geneval.jsonl \
        [--images-per-prompt 4] --cfg-scale 3
    # tokenizer-only pipelines: reconstructions of the first N held-out images
    python sample.py --pipeline checkpoints/NAME --out DIR --num-images 64
    # SR-only pipelines (e.g. convert.py catanet): upscale every image of a folder [tiled for big images]
    python sample.py --pipeline checkpoints/catanet-x2 --images DIR_IN --out DIR [--tile 256 --tile-overlap 16]
    # a pipeline with an sr stage also writes DIR/sr/<index>.png: the samples upscaled (the cascade)

Writes DIR/<index>.png, DIR/grid.png and DIR/sampling.json (every setting and, for class-conditional
samples, the label of each image, so a number can be reproduced). Same seed, same images: image i
always comes from batch i // batch-size, whose generator is seeded with seed + that batch index.
Under `accelerate launch` / `torchrun`, batches go round-robin to the ranks (disjoint files, the same
images as one process).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

from accelerate import PartialState

from vistok.cli import add_debug, ranged, run
from vistok.data.base import build_dataset
from vistok.pipeline import Pipeline
from vistok.sampling import (class_grid, clear_samples, guard_samples_dir, read_images, save_images, start_samples,
                             to_uint8, write_json)
from vistok.training.logging import save_grid


def main(argv=None) -> int:
    try:
        return _main(argv)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # exiting with live gloo/nccl threads aborts the process


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="--out holds earlier samples: delete those (only files "
                                                             "sample.py writes) and sample again")
    p.add_argument("--num-images", type=ranged(int, 1), default=64, help="images (class labels cycle 0..K-1 for generators)")
    p.add_argument("--per-class", type=ranged(int, 1), help="generators: this many images of every class")
    p.add_argument("--class-labels", type=ranged(int, 0), nargs="+", help="generators: exactly these labels")
    p.add_argument("--prompts", help="text-conditional generators: GenEval metadata jsonl (one prompt per line)")
    p.add_argument("--images-per-prompt", type=ranged(int, 1), default=4, help="with --prompts (GenEval uses 4)")
    p.add_argument("--cfg-scale", type=ranged(float, 0), default=1.0, help="1: no guidance")
    p.add_argument("--cfg-schedule", choices=("constant", "linear"), default=None,
                   help="default: constant (discrete AR), linear across entities (xAR)")
    p.add_argument("--temperature", type=ranged(float, 0, lo_open=True), default=1.0)
    p.add_argument("--top-k", type=ranged(int, 0), default=0, help="0: off")
    p.add_argument("--top-p", type=ranged(float, 0, 1, lo_open=True), default=1.0, help="1: off")
    p.add_argument("--steps", type=ranged(int, 0), default=0, help="xAR: flow-matching steps per entity (0: the model's)")
    p.add_argument("--solver", choices=("euler", "euler-maruyama"), default="euler-maruyama", help="xAR")
    p.add_argument("--noise", type=ranged(float, 0), default=1.0, help="xAR, euler-maruyama: SDE noise (0 = the ODE)")
    p.add_argument("--batch-size", type=ranged(int, 1), default=100)
    p.add_argument("--seed", type=ranged(int, 0), default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute every token (reference; slow)")
    p.add_argument("--compile", action="store_true", help="torch.compile the generator's blocks and the decoder "
                                                          "(pays off on GPUs for large runs)")
    p.add_argument("--images", help="SR-only pipelines: a folder of images to upscale")
    p.add_argument("--tile", type=ranged(int, 0), default=0, help="SR-only: LR tile size (0: whole images)")
    p.add_argument("--tile-overlap", type=ranged(int, 0), default=16, help="SR-only: LR pixels neighbouring tiles share per side")
    p.add_argument("--npz", action="store_true", help="also write samples.npz (uint8 arr_0, ADM FID suite layout)")
    add_debug(p)
    args = p.parse_args(argv)
    guard_samples_dir(args.out, args.overwrite, inputs=[args.images, args.pipeline])  # every rank, before any work
    pipe = Pipeline.from_pretrained(args.pipeline)
    if args.compile:
        pipe.compile()
    state = PartialState(cpu=not torch.cuda.is_available())
    from vistok import __version__

    if state.is_main_process:
        clear_samples(args.out)  # only what an earlier sample.py wrote (guard_samples_dir checked there is nothing else)
        start_samples(args.out, __version__)
    state.wait_for_everyone()
    t0 = time.time()
    if pipe.tokenizer is None:
        settings = upscale_folder(pipe, args)
    elif pipe.generator is None:
        settings = reconstruct(pipe, args)
    elif args.prompts:
        settings = generate_prompts(pipe, args)
    else:
        settings = generate(pipe, args)
    settings.update(pipeline=os.path.abspath(args.pipeline), seed=args.seed, compile=args.compile, seconds=round(time.time() - t0, 2))
    if not state.is_main_process:
        return 0
    write_json(os.path.join(args.out, "sampling.json"), {**settings, "complete": True, "vistok_version": __version__})
    grid = os.path.join(args.out, "grid.png")
    print(json.dumps({"out": args.out, "num_images": settings["num_images"], "grid": grid if os.path.isfile(grid) else None,
                      "seconds": settings["seconds"]}))
    return 0


def sampling_settings(pipe, args) -> dict:
    """Discrete generators: temperature / top-k / top-p; continuous ones (xAR): flow steps, solver, SDE noise."""
    common = dict(cfg_scale=args.cfg_scale, cfg_schedule=args.cfg_schedule or
                  ("linear" if getattr(pipe.generator, "continuous", False) else "constant"), use_cache=not args.no_cache)
    if getattr(pipe.generator, "continuous", False):
        return dict(common, steps=args.steps or pipe.generator.steps, solver=args.solver, noise=args.noise)
    return dict(common, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def generate(pipe, args) -> dict:
    k = pipe.generator.num_classes
    if args.class_labels:
        labels = args.class_labels
    elif args.per_class:
        labels = [c for c in range(k) for _ in range(args.per_class)]
    else:
        labels = [i % k for i in range(args.num_images)]
    bad = [c for c in labels if not 0 <= c < k]
    if bad:
        raise ValueError(f"--class-labels {bad[:5]} out of range: this generator has classes 0..{k - 1}")
    sampling = sampling_settings(pipe, args)
    state = PartialState(cpu=not torch.cuda.is_available())
    pipe.to(state.device)
    # batch b (seeded with seed + b) goes to rank b % world: the same images for any number of processes
    for bi, i in enumerate(range(0, len(labels), args.batch_size)):
        if bi % state.num_processes == state.process_index:
            images = pipe(labels[i:i + args.batch_size], seed=args.seed + bi, **sampling)
            save_images(images, args.out, start=i, grid_max=0)
            if pipe.sr is not None:  # the cascade: the upscaled images go to OUT/sr/ under the same names
                save_images(pipe.upscale(images), os.path.join(args.out, "sr"), start=i, grid_max=0)
    state.wait_for_everyone()
    if state.is_main_process:
        images = read_images(args.out, len(labels))
        per_class = min(8, max(labels.count(c) for c in set(labels)))
        save_grid(class_grid(images, labels, per_class), os.path.join(args.out, "grid.png"), nrow=per_class)
        if pipe.sr is not None:
            save_grid(class_grid(read_images(os.path.join(args.out, "sr"), len(labels)), labels, per_class),
                      os.path.join(args.out, "sr", "grid.png"), nrow=per_class)
        if args.npz:
            arr = to_uint8(images)
            np.savez(os.path.join(args.out, "samples.npz"), arr_0=arr if arr.shape[-1] == 3 else np.repeat(arr, 3, -1))
    return {"mode": "generate", "num_images": len(labels), "labels": labels, "batch_size": args.batch_size,
            **({"sr": {"dir": os.path.join(args.out, "sr"), "scale": pipe.sr.scale}} if pipe.sr is not None else {}),
            "num_processes": state.num_processes, **sampling}


def generate_prompts(pipe, args) -> dict:
    """GenEval layout: DIR/<index:05d>/metadata.jsonl + samples/<n>.png; prompt i uses seed + i."""
    from vistok.evaluation.geneval import read_prompts, write_prompt_folder

    prompts = read_prompts(args.prompts)
    sampling = sampling_settings(pipe, args)
    state = PartialState(cpu=not torch.cuda.is_available())
    pipe.to(state.device)
    for i, meta in enumerate(prompts):  # prompt i (seed + i) on rank i % world
        if i % state.num_processes == state.process_index:
            images = pipe(prompts=[meta["prompt"]] * args.images_per_prompt, seed=args.seed + i, **sampling)
            write_prompt_folder(args.out, i, meta, to_uint8(images).squeeze(-1) if images.shape[1] == 1 else to_uint8(images))
    state.wait_for_everyone()
    if state.is_main_process:
        firsts = [np.asarray(Image.open(os.path.join(args.out, f"{i:05d}", "samples", "0000.png"))) for i in range(min(64, len(prompts)))]
        grid = torch.from_numpy(np.stack(firsts)).float() / 127.5 - 1
        save_grid(grid[:, None] if grid.dim() == 3 else grid.permute(0, 3, 1, 2), os.path.join(args.out, "grid.png"), nrow=8)
    return {"mode": "prompts", "prompts": os.path.abspath(args.prompts), "num_prompts": len(prompts),
            "images_per_prompt": args.images_per_prompt, "num_images": len(prompts) * args.images_per_prompt, **sampling}


def upscale_folder(pipe, args) -> dict:
    """SR-only pipelines: every image of --images upscaled, written under the same name (PNG)."""
    from vistok.data.images import IMAGE_EXTENSIONS
    from vistok.data.sr import read_image
    from vistok.evaluation.sr import tiled_upscale

    if not args.images or not os.path.isdir(args.images):
        raise ValueError(f"this pipeline is an SR stage alone: give --images DIR (a folder of images), got {args.images!r}")
    names = sorted(f for f in os.listdir(args.images) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"--images {args.images}: no images (expected files ending in {IMAGE_EXTENSIONS})")
    os.makedirs(args.out, exist_ok=True)
    model = pipe.sr.eval()
    with torch.no_grad():
        for name in names:
            lr = read_image(os.path.join(args.images, name))[None]
            sr = tiled_upscale(model, lr, args.tile, args.tile_overlap) if args.tile else model.upscale(lr)
            arr = (sr[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr).save(os.path.join(args.out, os.path.splitext(name)[0] + ".png"))
    return {"mode": "upscale", "num_images": len(names), "images": os.path.abspath(args.images), "scale": model.scale,
            "files": [os.path.splitext(n)[0] + ".png" for n in names],
            "inference": f"tiled {args.tile} px, overlap {args.tile_overlap}" if args.tile else "whole image"}


def reconstruct(pipe, args) -> dict:
    data = build_dataset(pipe.data, "test")
    n = min(args.num_images, len(data))
    if not PartialState(cpu=not torch.cuda.is_available()).is_main_process:  # small job: the main rank alone
        return {"mode": "reconstruct", "num_images": n}
    inputs, recons = [], []
    with torch.no_grad():
        for i in range(0, n, args.batch_size):
            x = torch.stack([data[j]["image"] for j in range(i, min(n, i + args.batch_size))])
            inputs.append(x)
            recons.append(pipe.reconstruct(x))
    save_images(torch.cat(recons), args.out, grid_pairs=torch.cat(inputs))
    return {"mode": "reconstruct", "num_images": n, "split": "test", "data": pipe.data}


if __name__ == "__main__":
    sys.exit(run(main))
