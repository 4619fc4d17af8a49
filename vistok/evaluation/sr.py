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

import math

import numpy as np
import torch

from vistok.evaluation.task import Task
from vistok.registry import register_task

Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """RGB B,3,H,W (or 3,H,W) in [0, 1] -> MATLAB rgb2ycbcr Y in [16, 235] (float, not rounded); one-channel
    images are luma already (scaled the same way)."""
    if img.shape[-3] == 1:
        return 16.0 + 219.0 * img[..., 0, :, :].double()
    w = torch.tensor(Y_WEIGHTS, dtype=torch.float64, device=img.device)
    return 16.0 + torch.einsum("...chw,c->...hw", img.double(), w)


def _cubic(x: torch.Tensor) -> torch.Tensor:
    a = x.abs()
    return ((1.5 * a ** 3 - 2.5 * a ** 2 + 1) * (a <= 1)
            + (-0.5 * a ** 3 + 2.5 * a ** 2 - 4 * a + 2) * ((a > 1) & (a <= 2)))


def resize_weights(in_len: int, out_len: int, scale: float, antialias: bool = True):
    """MATLAB imresize's contributions along one axis: (indices out_len,P into the input, weights out_len,P)."""
    width = 4.0
    if scale < 1 and antialias:
        kernel, width = (lambda t: scale * _cubic(scale * t)), width / scale
    else:
        kernel = _cubic
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = torch.floor(u - width / 2)
    p = int(math.ceil(width)) + 2
    idx = left[:, None] + torch.arange(p, dtype=torch.float64)
    w = kernel(u[:, None] - idx)
    w = w / w.sum(1, keepdim=True)
    keep = (w != 0).any(0)
    idx, w = idx[:, keep], w[:, keep]
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])  # symmetric boundary
    return mirror[((idx - 1).long() % (2 * in_len))], w


def imresize(img: torch.Tensor, scale: float | None = None, size: tuple[int, int] | None = None,
             antialias: bool = True) -> torch.Tensor:
    """MATLAB-compatible bicubic resize of B,C,H,W (or C,H,W) float images, by ``scale`` (output size
    ceil(scale * H)) or to ``size``; rows first when shrinking more along them, as MATLAB orders the passes."""
    squeeze = img.dim() == 3
    x = img[None] if squeeze else img
    h, w = x.shape[-2:]
    if size is None:
        size = (int(math.ceil(h * scale)), int(math.ceil(w * scale)))
    sh, sw = (size[0] / h, size[1] / w) if scale is None else (scale, scale)
    out = x.double()
    for axis in ((-2, -1) if sh <= sw else (-1, -2)):
        n_in, n_out, s = (h, size[0], sh) if axis == -2 else (w, size[1], sw)
        idx, wt = resize_weights(n_in, n_out, s, antialias)
        moved = out.movedim(axis, -1)  # ..., n_in
        out = (moved[..., idx.to(x.device)] * wt.to(x.device)).sum(-1).movedim(-1, axis)
    out = out.to(img.dtype)
    return out[0] if squeeze else out


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline: MATLAB imresize of the LR image by ``scale``."""
    return imresize(lr, scale)


def crop_border(img: torch.Tensor, border: int) -> torch.Tensor:
    return img[..., border:img.shape[-2] - border, border:img.shape[-1] - border] if border else img


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, border: int) -> float:
    """PSNR on Y (peak 255) of one image pair C,H,W in [0, 1], ``border`` pixels cropped first."""
    a, b = rgb_to_y(crop_border(sr, border)), rgb_to_y(crop_border(hr, border))
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, border: int) -> float:
    from skimage.metrics import structural_similarity

    a = rgb_to_y(crop_border(sr, border)).cpu().numpy()
    b = rgb_to_y(crop_border(hr, border)).cpu().numpy()
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=255.0))


class SRMeter:
    """Per-image Y-PSNR / Y-SSIM of SR outputs and of the bicubic baseline, summed over ranks."""

    def __init__(self, scale: int):
        self.scale, self.rows = scale, []

    def update(self, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor, names=None) -> None:
        base = bicubic_upscale(lr, self.scale).clamp(0, 1)
        for i in range(sr.shape[0]):
            self.rows.append({"name": names[i] if names else str(len(self.rows)),
                              "psnr_y": psnr_y(sr[i], hr[i], self.scale), "ssim_y": ssim_y(sr[i], hr[i], self.scale),
                              "bicubic_psnr_y": psnr_y(base[i], hr[i], self.scale),
                              "bicubic_ssim_y": ssim_y(base[i], hr[i], self.scale)})

    def compute(self, sync: bool = False) -> dict:
        keys = ("psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y")
        sums = [sum(r[k] for r in self.rows) for k in keys] + [float(len(self.rows))]
        if sync:
            from vistok.evaluation.distributed import all_sum

            sums = all_sum(sums)
        n = max(sums[-1], 1.0)
        return {k: s / n for k, s in zip(keys, sums)} | {"num_images": int(sums[-1])}


def to_numpy_image(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def tiled_upscale(model, lr: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Upscale a big LR image tile by tile: tiles of ``tile`` LR pixels overlapping by ``overlap`` on each
    side, each run through the model whole; every output pixel is the average of the tiles that cover it,
    so seams are blended (with overlap 0 the tiles simply abut)."""
    from vistok.generators.catanet import patch_starts

    s = model.scale
    b, c, h, w = lr.shape
    th, tw = min(tile, h), min(tile, w)
    step_h, step_w = max(1, th - 2 * overlap), max(1, tw - 2 * overlap)
    out = lr.new_zeros(b, c, h * s, w * s)
    weight = lr.new_zeros(1, 1, h * s, w * s)
    for top in sorted(set(patch_starts(h, th, step_h))):
        for left in sorted(set(patch_starts(w, tw, step_w))):
            piece = model.upscale(lr[:, :, top:top + th, left:left + tw])
            out[:, :, top * s:(top + th) * s, left * s:(left + tw) * s] += piece
            weight[:, :, top * s:(top + th) * s, left * s:(left + tw) * s] += 1
    return out / weight


@torch.no_grad()
def evaluate_sr(model_path: str, data: str = "skimage", split: str = "test", tile: int = 0, tile_overlap: int = 16) -> dict:
    """Whole-image (or tiled) inference on every held-out image; per-image and mean Y-PSNR / Y-SSIM with the
    bicubic baseline alongside."""
    import time

    from vistok.data.sr import SRPairs
    from vistok.pipeline import load_stage

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
