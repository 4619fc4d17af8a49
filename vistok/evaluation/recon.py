"""`evaluate.py recon`: a tokenizer's metrics on the whole held-out split of the data it was trained on.
Under torchrun / accelerate launch each rank reconstructs a disjoint shard; the sums are reduced."""
from __future__ import annotations

import time

import torch

from vistok.data.base import build_dataset
from vistok.evaluation.distributed import all_gather, shard
from vistok.evaluation.image_metrics import ReconstructionMeter
from vistok.evaluation.lenet import fd_lenet, load_lenet


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
