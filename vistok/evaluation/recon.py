"""`evaluate.py recon`: a tokenizer's metrics on the whole held-out split of the data it was trained on.
Under torchrun / accelerate launch each rank reconstructs a disjoint shard; the sums are reduced."""
from __future__ import annotations

import time

import torch

from vistok.data.base import build_dataset
from vistok.dist import all_gather, shard
from vistok.metrics.image import ReconstructionMeter
from vistok.evaluation.lenet import fd_lenet, load_lenet
from vistok.evaluation.task import Task
from vistok.registry import register_task


@torch.no_grad()
def evaluate_reconstruction(pipe, batch_size: int = 100, max_images: int = 0, lenet_path: str | None = None) -> dict:
    if not pipe.data:
        raise ValueError("the pipeline records no data config (pipeline.json 'data'); cannot find its held-out split")
    dataset = build_dataset(pipe.data, "test")
    n = min(len(dataset), max_images) if max_images else len(dataset)
    tok = pipe.tokenizer
    meter = ReconstructionMeter(tok.codebook_size)
    originals, recons = [], []
    t0 = time.time()
    mine = list(shard(n))  # this rank's images (all of them in one process)
    for i in range(0, len(mine), batch_size):
        x = torch.stack([dataset[j]["image"] for j in mine[i:i + batch_size]])
        xr, codes = tok.reconstruct(x)
        xr = xr.clamp(-1, 1)
        meter.update(x, xr, codes)
        originals.append(x)
        recons.append(xr)
    result = meter.compute()  # summed over ranks
    result["protocol"] = ("held-out split of " + pipe.data["type"] + "; PSNR = mean per-image PSNR on [0,1]; SSIM 11x11 "
                          "Gaussian sigma 1.5; usage = fraction of the codebook used on these images")
    if lenet_path and pipe.data["type"] == "mnist":
        recons, originals = all_gather(torch.cat(recons) if recons else None), all_gather(torch.cat(originals) if originals else None)
        result["fd_lenet"] = fd_lenet(load_lenet(lenet_path), torch.cat([r for r in recons if r is not None]),
                                      torch.cat([o for o in originals if o is not None]))
        result["protocol"] += "; fd_lenet = FD-LeNet of reconstructions vs the originals"
    result["seconds"] = round(time.time() - t0, 2)
    return result


@register_task("recon")
class ReconTask(Task):
    help = "tokenizer metrics on the held-out split: PSNR, SSIM, codebook usage, perplexity, FD-LeNet"
    distributed = True

    @classmethod
    def add_arguments(cls, p) -> None:
        from vistok.cli import ranged
        from vistok.config import EvalConfig

        p.add_argument("--pipeline", required=True)
        p.add_argument("--batch-size", type=ranged(int, 1), default=EvalConfig.batch_size)
        p.add_argument("--max-images", type=ranged(int, 0), default=EvalConfig.max_images, help="0: the whole held-out split")
        p.add_argument("--lenet", default=EvalConfig.lenet, help="FD-LeNet classifier folder")

    @classmethod
    def run(cls, args) -> dict:
        from vistok.pipelines.base import Pipeline

        return evaluate_reconstruction(Pipeline.from_pretrained(args.pipeline), args.batch_size, args.max_images, args.lenet)
