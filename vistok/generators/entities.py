"""xAR's prediction entities over a latent grid (C x H x W): which tokens form entity 1, 2, ... and in what order.

    token      every position its own entity (raster): next-token, H*W AR steps
    cell       k x k blocks in raster order, raster inside a block: next-cell, (H/k)(W/k) steps
    subsample  non-local strided groups: group (i, j) = positions (r, c) with r % s == i, c % s == j; s*s steps
    scale      coarse to fine: entity k is the whole latent area-downsampled to s_k x s_k (s_K = H): len(scales) steps
    image      one entity, the whole grid (no autoregression: plain flow matching)

A layout turns a latent B,C,H,W into tokens B,N,C in entity order (``to_tokens``) and back (``to_latent``),
and gives every token its entity id and its (row, col) centre on the H x W grid (rotary positions; scale
tokens sit at their cell centres on the finest grid, as in the AR generator's next-scale layout).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("token", "cell", "subsample", "scale", "image")


class EntityLayout:
    def __init__(self, kind: str, height: int, width: int, cell: int = 2, stride: int = 2, scales=()):
        # index bookkeeping lives on the CPU (also when a model is built under torch.device("meta"))
        if kind not in KINDS:
            raise ValueError(f"xar: entity '{kind}'; expected one of {KINDS}")
        self.kind, self.h, self.w = kind, height, width
        rows, cols = torch.meshgrid(torch.arange(height, device="cpu"), torch.arange(width, device="cpu"), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        if kind == "scale":
            scales = [int(s) for s in scales]
            if not scales or scales[-1] != height or height != width or scales != sorted(set(scales)):
                raise ValueError(f"xar: entity 'scale' needs increasing scales ending at the grid size {height} "
                                 f"(square grid), got {scales} for {height}x{width}")
            self.scales = scales
            pos, ids = [], []
            for k, s in enumerate(scales):
                r, c = torch.meshgrid(torch.arange(s, device="cpu"), torch.arange(s, device="cpu"), indexing="ij")
                pos.append(torch.stack([(r.flatten() + 0.5) * height / s - 0.5, (c.flatten() + 0.5) * width / s - 0.5], -1))
                ids.append(torch.full((s * s,), k, device="cpu"))
            self.positions, self.entity = torch.cat(pos).float(), torch.cat(ids)
            self.perm = None
        else:
            if kind == "token":
                key = rows * width + cols
            elif kind == "image":
                key = torch.zeros_like(rows)
            elif kind == "cell":
                if height % cell or width % cell:
                    raise ValueError(f"xar: cell {cell} does not divide the {height}x{width} latent grid")
                key = (rows // cell) * (width // cell) + cols // cell
            else:  # subsample
                if height % stride or width % stride:
                    raise ValueError(f"xar: stride {stride} does not divide the {height}x{width} latent grid")
                key = (rows % stride) * stride + cols % stride
            order = sorted(range(height * width), key=lambda i: (int(key[i]), i))
            self.perm = torch.tensor(order, device="cpu")
            _, self.entity = torch.unique(key[self.perm], return_inverse=True)
            self.positions = torch.stack([rows[self.perm], cols[self.perm]], -1).float()
        self.num_entities = int(self.entity.max()) + 1
        self.starts = [int((self.entity < e).sum()) for e in range(self.num_entities + 1)]  # token span of entity e

    @property
    def num_tokens(self) -> int:
        return len(self.entity)

    def to_tokens(self, latent: torch.Tensor) -> torch.Tensor:
        """B,C,H,W -> B,N,C in entity order (scale: the pyramid of area-downsampled latents)."""
        if self.kind == "scale":
            return torch.cat([F.interpolate(latent, size=(s, s), mode="area").flatten(2).transpose(1, 2)
                              for s in self.scales], 1)
        return latent.flatten(2).transpose(1, 2)[:, self.perm]

    def to_latent(self, tokens: torch.Tensor) -> torch.Tensor:
        """B,N,C -> B,C,H,W (scale: the finest entity)."""
        b, _, c = tokens.shape
        if self.kind == "scale":
            return tokens[:, self.starts[-2]:].transpose(1, 2).reshape(b, c, self.h, self.w)
        out = torch.empty_like(tokens)
        out[:, self.perm] = tokens
        return out.transpose(1, 2).reshape(b, c, self.h, self.w)

    def mask(self) -> torch.Tensor:
        """N,N boolean (True = attend): every token sees its own entity and the entities before it."""
        return self.entity[None, :] <= self.entity[:, None]
