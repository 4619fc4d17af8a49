"""Multi-scale residual quantisation in 2-D (VAR / TokenFlow), over any single-scale quantizer.

For scales s_1 < ... < s_K = H: area-downsample the residual to s_k x s_k, quantise it, upsample the
quantised map to H x W (bicubic), add it to the reconstruction and subtract it, detached, from the
residual. The codes are one s_k x s_k map per scale (sum of s_k^2 tokens). In training, with
probability ``scale_drop`` only the first k < K scales are used (k uniform), so the decoder learns
to decode coarse prefixes. The quantizer returns (quantised, codes, loss) and has ``lookup(codes)``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def split_scales(flat: torch.Tensor, scales: list[int]) -> list[torch.Tensor]:
    """B,L codes in scale order -> [B,s,s per scale]."""
    out, i = [], 0
    for s in scales:
        out.append(flat[:, i:i + s * s].reshape(-1, s, s))
        i += s * s
    return out


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "area":
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


class MultiScaleResidualVQ(nn.Module):
    def __init__(self, quantizer: nn.Module, scales: list[int], scale_drop: float = 0.0):
        super().__init__()
        if list(scales) != sorted(set(scales)):
            raise ValueError(f"scales must increase strictly, got {list(scales)}")
        self.quantizer, self.scales, self.scale_drop = quantizer, list(scales), scale_drop

    @property
    def num_tokens(self) -> int:
        return sum(s * s for s in self.scales)

    def forward(self, f: torch.Tensor):
        """f: B,C,H,W (H = W = last scale) -> (f_hat with straight-through gradient, [codes per scale], loss)."""
        size = f.shape[-1]
        if size != self.scales[-1]:
            raise ValueError(f"feature map is {size}x{size}; the last scale must equal it, scales {self.scales}")
        used = len(self.scales)
        if self.training and self.scale_drop > 0 and torch.rand(()) < self.scale_drop:
            used = int(torch.randint(1, len(self.scales), ()))
        residual, f_hat, codes, loss = f, torch.zeros_like(f), [], f.new_zeros(())
        for s in self.scales[:used]:
            zq, c, l_k = self.quantizer(_resize(residual, s, "area"))
            up = _resize(zq, size, "bicubic")
            f_hat = f_hat + up
            residual = residual - up.detach()
            codes.append(c)
            loss = loss + l_k
        loss = loss / used
        return f_hat, codes, loss

    def decode_codes(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """[codes B,s_k,s_k for the first k scales] -> f_hat B,C,H,W (a prefix of scales decodes coarsely)."""
        size = self.scales[-1]
        f_hat = None
        for c in codes:
            up = _resize(self.quantizer.lookup(c), size, "bicubic")
            f_hat = up if f_hat is None else f_hat + up
        return f_hat

    @staticmethod
    def flatten(codes: list[torch.Tensor]) -> torch.Tensor:
        """[B,s,s per scale] -> B,L in scale order (row-major within a scale)."""
        return torch.cat([c.flatten(1) for c in codes], 1)

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return split_scales(flat, self.scales)
