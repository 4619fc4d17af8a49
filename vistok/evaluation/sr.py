"""Super-resolution metrics with the conventions of the SR literature (BasicSR's, which CATANet reports):

- LR images come from MATLAB's ``imresize`` (bicubic, a = -0.5, antialiased when shrinking: the kernel is
  widened by 1/scale; symmetric boundary), in float, unclamped: ``imresize``.
- Y is MATLAB's ``rgb2ycbcr`` luma: BT.601 in the 16-235 range, Y = 16 + (65.481 R + 128.553 G + 24.966 B)
  for RGB in [0, 1], not rounded; PSNR uses peak 255 all the same.
- ``scale`` pixels are cropped from every border before the Y conversion.
- SSIM: 11 x 11 Gaussian window, sigma 1.5, L = 255, population variance, valid region only (scikit-image's
  ``structural_similarity`` with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=255``).
- The model's float output is clamped to [0, 1], not rounded (CATANet's path; the uint8 path differs by up to
  0.004 dB).
"""
from __future__ import annotations

import numpy as np
import torch

from vistok.metrics.sr import SRMeter
from vistok.ops import tiled_upscale

from vistok.evaluation.task import Task
from vistok.registry import register_task


def to_numpy_image(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def evaluate_sr(model_path: str, data: str = "skimage", split: str = "test", tile: int = 0, tile_overlap: int = 16) -> dict:
    """Whole-image (or tiled) inference on every held-out image; per-image and mean Y-PSNR / Y-SSIM with the
    bicubic baseline alongside."""
    import time

    from vistok.data.sr import SRPairs
    from vistok.loading import load_stage

    model = load_stage(model_path, "sr").eval()
    ds = SRPairs(root=data, split=split, scale=model.scale)
    meter, t0 = SRMeter(model.scale), time.perf_counter()
    for i in range(len(ds)):
        item = ds[i]
        lr = item["lr"][None]
        sr = tiled_upscale(model, lr, tile, tile_overlap) if tile else model.upscale(lr)
        meter.update(sr.clamp(0, 1), item["hr"][None], lr, [item["name"]])
    out = meter.compute()
    return {**out, "scale": model.scale, "per_image": meter.rows, "seconds": round(time.perf_counter() - t0, 2),
            "data": data, "split": split, "inference": f"tiled {tile} px, overlap {tile_overlap}" if tile else "whole image",
            "protocol": "Y = MATLAB rgb2ycbcr (16-235, peak 255), border crop = scale, SSIM 11x11 Gaussian sigma 1.5, "
                        "LR by MATLAB bicubic imresize, float output clamped to [0, 1]"}


@register_task("sr")
class SRTask(Task):
    help = "super-resolution: Y-PSNR / Y-SSIM (border = scale) per image and mean, bicubic alongside"

    @classmethod
    def add_arguments(cls, p) -> None:
        from vistok.cli import ranged

        p.add_argument("--model", required=True, help="a pipeline folder with an sr component, or a training run folder")
        p.add_argument("--data", default="skimage", help="'skimage' (its held-out photos), an image folder, or a benchmark "
                                                          "folder in BasicSR's layout (Set5/HR, Set5/LR_bicubic/X2)")
        p.add_argument("--split", default="test")
        p.add_argument("--tile", type=ranged(int, 0), default=0, help="LR tile size for big images (0: whole-image inference)")
        p.add_argument("--tile-overlap", type=ranged(int, 0), default=16, help="LR pixels shared by neighbouring tiles on each side")

    @classmethod
    def run(cls, args) -> dict:
        return evaluate_sr(args.model, args.data, args.split, args.tile, args.tile_overlap)
