"""Multi-scale residual quantisation (VAR / TokenFlow in 2-D; 1-D over token sequences), over any single-scale
quantizer.

2-D (``ndim=2``, f: B,C,H,W): for scales s_1 < ... < s_K = H, area-downsample the residual to s_k x s_k,
quantise it, upsample the quantised map to H x W (bicubic), add it to the reconstruction and subtract it,
detached, from the residual. The codes are one s_k x s_k map per scale (sum of s_k^2 tokens).

1-D (``ndim=1``, f: B,N,D): the same along the token axis: scales n_1 < ... < n_K = N are token counts, the
residual is area-downsampled to n_k tokens and the quantised tokens upsampled back to N (linear). The codes
are B,n_k per scale (sum of n_k tokens); the quantizer sees B,n_k,D.

In training, with probability ``scale_drop`` only the first k < K scales are used (k uniform), so the decoder
learns to decode coarse prefixes. The quantizer returns (quantised, codes, loss) and has ``lookup(codes)``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def split_scales(flat: torch.Tensor, scales: list[int], ndim: int = 2) -> list[torch.Tensor]:
    """B,L codes in scale order -> [B,s,s per scale] (``ndim=1``: [B,s per scale])."""
    out, i = [], 0
    for s in scales:
        out.append(flat[:, i:i + s ** ndim].reshape(-1, *(s,) * ndim))
        i += s ** ndim
    return out


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "area":
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


def _resize_tokens(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """B,N,D -> B,size,D along the token axis (``area`` down, ``linear`` up)."""
    if x.shape[1] == size:
        return x
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x.transpose(1, 2), size=size, mode=mode, **kw).transpose(1, 2)


class MultiScaleResidualVQ(nn.Module):
    def __init__(self, quantizer: nn.Module, scales: list[int], scale_drop: float = 0.0, ndim: int = 2):
        super().__init__()
        if list(scales) != sorted(set(scales)):
            raise ValueError(f"scales must increase strictly, got {list(scales)}")
        if ndim not in (1, 2):
            raise ValueError(f"ndim {ndim}: expected 1 (B,N,D token sequences) or 2 (B,C,H,W maps)")
        self.quantizer, self.scales, self.scale_drop, self.ndim = quantizer, list(scales), scale_drop, ndim

    @property
    def num_tokens(self) -> int:
        return sum(s ** self.ndim for s in self.scales)

    def _down(self, x: torch.Tensor, s: int) -> torch.Tensor:
        return _resize(x, s, "area") if self.ndim == 2 else _resize_tokens(x, s, "area")

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        size = self.scales[-1]
        return _resize(x, size, "bicubic") if self.ndim == 2 else _resize_tokens(x, size, "linear")

    def _check(self, f: torch.Tensor) -> None:
        last = self.scales[-1]
        if self.ndim == 2 and not (f.dim() == 4 and f.shape[-2] == f.shape[-1] == last):
            raise ValueError(f"input {tuple(f.shape)}: expected B,C,H,W with H = W = the last scale, "
                             f"scales {self.scales}")
        if self.ndim == 1 and not (f.dim() == 3 and f.shape[1] == last):
            raise ValueError(f"input {tuple(f.shape)}: expected B,N,D with N = the last scale, scales {self.scales}")

    def forward(self, f: torch.Tensor):
        """f: B,C,H,W (1-D: B,N,D) -> (f_hat with straight-through gradient, [codes per scale], loss)."""
        self._check(f)
        used = len(self.scales)
        if self.training and self.scale_drop > 0 and torch.rand(()) < self.scale_drop:
            used = int(torch.randint(1, len(self.scales), ()))
        residual, f_hat, codes, loss = f, torch.zeros_like(f), [], f.new_zeros(())
        for s in self.scales[:used]:
            zq, c, l_k = self.quantizer(self._down(residual, s))
            up = self._up(zq)
            f_hat = f_hat + up
            residual = residual - up.detach()
            codes.append(c)
            loss = loss + l_k
        loss = loss / used
        return f_hat, codes, loss

    def decode_codes(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """[codes B,s_k,s_k (1-D: B,n_k) for the first k scales] -> f_hat B,C,H,W (1-D: B,N,D); a prefix of
        scales decodes coarsely."""
        f_hat = None
        for c in codes:
            up = self._up(self.quantizer.lookup(c))
            f_hat = up if f_hat is None else f_hat + up
        return f_hat

    @staticmethod
    def flatten(codes: list[torch.Tensor]) -> torch.Tensor:
        """[B,s,s (1-D: B,n) per scale] -> B,L in scale order (row-major within a scale)."""
        return torch.cat([c.flatten(1) for c in codes], 1)

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return split_scales(flat, self.scales, self.ndim)
