#!/usr/bin/env python
"""Layton's decoders on the same held-out images and the same codes, in one run: the plain ``vqgan`` decoder of the
VQ Layton froze (MSE-trained: PSNR-optimal), stage 1 with DDIM (multi-step) and with the few-step walk, stage 2 with
1, 2 and 3 consistency steps. Per decoder: PSNR, SSIM, colour and brightness error (8-bit levels), decode seconds
per image, and FD-LeNet against the originals (MNIST) or the exact detector's whole-scene read-back (ShapesWorld).

    python benchmarks/layton_decoders.py --vqgan checkpoints/demo-layton-vq --stage1 checkpoints/demo-layton-stage1 \
        --stage2 checkpoints/demo-layton [--num-images 200] [--ddim-steps 50] [--out FILE]

Every decoder sees the codes of the same encoder (checked: the VQ in the Layton releases must give the vqgan's
codes) and the same seed per batch. Last line: one JSON object {decoder: {metric: value}, ...}.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.metrics.image import ReconstructionMeter  # noqa: E402


def held_out(pipe, n: int):
    from vistok.data.base import build_dataset

    data = build_dataset(pipe.data, "test")
    n = min(n, len(data))
    return data, torch.stack([data[i]["image"] for i in range(n)])


def score(name: str, images: torch.Tensor, decoded: torch.Tensor, seconds: float, extra) -> dict:
    meter = ReconstructionMeter()
    meter.update(images, decoded)
    out = {k: round(v, 4) for k, v in meter.compute(sync=False).items() if k != "num_images"}
    out["seconds_per_image"] = round(seconds / len(images), 5)
    out.update(extra(decoded))
    print(f"{name}: {json.dumps(out)}", flush=True)
    return out


def readers(kind: str, data, images: torch.Tensor, lenet: str):
    """The data's own quality figure of a set of decoded images (and its value on the originals)."""
    if kind == "shapes":
        from vistok.evaluation.seed import scene_match
        from vistok.evaluation.shapes_detector import ShapesDetector

        det, scenes = ShapesDetector(), [data.scene(i) for i in range(len(images))]
        return (lambda x: {"read_back": round(scene_match(det, x, scenes), 4)}), {"read_back": scene_match(det, images, scenes)}
    if kind == "mnist" and os.path.isdir(lenet):
        from vistok.evaluation.lenet import fd_lenet, load_lenet

        net = load_lenet(lenet)
        return (lambda x: {"fd_lenet": round(fd_lenet(net, x, images), 3)}), {}
    return (lambda x: {}), {}


def decode_all(fn, codes: torch.Tensor, batch: int, seed: int) -> tuple[torch.Tensor, float]:
    outs, t0 = [], time.perf_counter()
    with torch.no_grad():
        for b, i in enumerate(range(0, len(codes), batch)):
            outs.append(fn(codes[i:i + batch], torch.Generator().manual_seed(seed + b)).clamp(-1, 1))
    return torch.cat(outs), time.perf_counter() - t0


def main():
    from vistok.pipelines.base import Pipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vqgan", required=True, help="the vqgan release whose encoder Layton froze")
    p.add_argument("--stage1", required=True, help="a Layton release after stage 1")
    p.add_argument("--stage2", required=True, help="a Layton release after stage 2")
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lenet", default="checkpoints/fd_lenet")
    p.add_argument("--out", default="")
    p.add_argument("--grid", default="", help="also save the first 8 originals over each decoder's 8 (PNG)")
    args = p.parse_args()
    vq, s1, s2 = (Pipeline.from_pretrained(path) for path in (args.vqgan, args.stage1, args.stage2))
    data, images = held_out(s2, args.num_images)
    with torch.no_grad():
        codes = torch.cat([vq.tokenizer.encode(images[i:i + args.batch_size])
                           for i in range(0, len(images), args.batch_size)])
        for name, pipe, path in (("stage1", s1, args.stage1), ("stage2", s2, args.stage2)):
            if not torch.equal(pipe.tokenizer.encode(images[:args.batch_size]), codes[:args.batch_size]):
                raise ValueError(f"--{name} {path}: its VQ does not give --vqgan's codes (not the same encoder)")
    extra, ceiling = readers(s2.data["type"], data, images, args.lenet)
    t1, t2 = s1.tokenizer.eval(), s2.tokenizer.eval()
    runs = {
        "vqgan_decoder": lambda c, g: vq.tokenizer.decode(c),
        f"stage1_ddim{args.ddim_steps}": lambda c, g: t1.decode(c, g, decode_sampler="ddim", decode_steps=args.ddim_steps),
        "stage1_walk3": lambda c, g: t1.decode(c, g, decode_sampler="consistency", decode_steps=3),
        **{f"stage2_walk{k}": (lambda k: lambda c, g: t2.decode(c, g, decode_sampler="consistency", decode_steps=k))(k)
           for k in (1, 2, 3)},
    }
    results, rows = {}, [images[:8]]
    for name, fn in runs.items():
        decoded, seconds = decode_all(fn, codes, args.batch_size, args.seed)
        results[name] = score(name, images, decoded, seconds, extra)
        rows.append(decoded[:8])
    if args.grid:
        from vistok.image_files import save_grid

        save_grid(torch.cat(rows), args.grid, nrow=min(8, len(images)))
        results["grid_rows"] = ["originals", *runs]
    results["originals"] = ceiling
    results["setup"] = {"num_images": len(images), "data": s2.data["type"], "tokens_per_image": int(codes[0].numel()),
                        "codebook_size": t2.codebook_size, "cond_scale": t2.cond_scale, "threads": torch.get_num_threads(),
                        "protocol": "held-out split; PSNR = mean per-image PSNR on [0, 1]; colour / brightness error = "
                                    "|mean RGB| / |mean luma| difference per image, 8-bit levels; seconds = decode "
                                    "only (codes given), batch " + str(args.batch_size)}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
