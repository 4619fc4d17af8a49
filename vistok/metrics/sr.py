"""Super-resolution scores with the conventions of the SR literature (BasicSR's, which CATANet reports): MATLAB
``rgb2ycbcr`` luma Y (BT.601, 16-235, not rounded), ``scale`` pixels cropped from every border, PSNR with peak
255, SSIM with an 11 x 11 Gaussian window (sigma 1.5, L = 255, population variance, valid region)."""
from __future__ import annotations

import math

import torch

from vistok.ops import bicubic_upscale



Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """RGB B,3,H,W (or 3,H,W) in [0, 1] -> MATLAB rgb2ycbcr Y in [16, 235] (float, not rounded); one-channel
    images are luma already (scaled the same way)."""
    if img.shape[-3] == 1:
        return 16.0 + 219.0 * img[..., 0, :, :].double()
    w = torch.tensor(Y_WEIGHTS, dtype=torch.float64, device=img.device)
    return 16.0 + torch.einsum("...chw,c->...hw", img.double(), w)


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
            from vistok.dist import all_sum

            sums = all_sum(sums)
        n = max(sums[-1], 1.0)
        return {k: s / n for k, s in zip(keys, sums)} | {"num_images": int(sums[-1])}
