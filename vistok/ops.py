"""Tensor operations every layer may use: the pixel-range convention, MATLAB-compatible bicubic resizing
(the SR literature's ``imresize``) and tiling."""
from __future__ import annotations

import math

import torch



def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model range -> [0, 1] image range (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)


def from_unit(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1


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


def tiled_upscale(model, lr: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Upscale a big LR image tile by tile: tiles of ``tile`` LR pixels overlapping by ``overlap`` on each
    side, each run through the model whole; every output pixel is the average of the tiles that cover it,
    so seams are blended (with overlap 0 the tiles simply abut)."""
    from vistok.ops import patch_starts

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


# ---- patches with overlap ---------------------------------------------------------------------------
def patch_starts(size: int, ps: int, step: int) -> list[int]:
    """Top-left offsets of patches of ``ps`` every ``step`` pixels, the last one moved inside the image."""
    if size == ps:
        return [0]
    return [min(i, size - ps) for i in range(0, size + step - ps, step)]
