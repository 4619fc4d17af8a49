"""xAR's prediction entities over a latent grid (C x H x W): which tokens form entity 1, 2, ... and in what order.

    token      every position its own entity (raster): next-token, H*W AR steps
    cell       k x k blocks in raster order, raster inside a block: next-cell, (H/k)(W/k) steps
    subsample  non-local strided groups: group (i, j) = positions (r, c) with r % s == i, c % s == j; s*s steps
    scale      coarse to fine: entity k is the whole latent area-downsampled to s_k x s_k (s_K = H): len(scales) steps
    image      one entity, the whole grid (no autoregression: plain flow matching)

The bookkeeping is a ``vistok.nn.layout.TokenLayout`` (its groups are the entities). This class turns a latent
B,C,H,W into tokens B,N,C in entity order (``to_tokens``) and back (``to_latent``). Rotary positions are the
token centres on the H x W grid with ``origin="index"`` (a finest token at (row, col); coarse scale tokens at
their cell centres, e.g. (0.5, 0.5) for 1 x 1 on 2 x 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vistok.nn.layout import TokenLayout

KINDS = ("token", "cell", "subsample", "scale", "image")


class EntityLayout:
    def __init__(self, kind: str, height: int, width: int, cell: int = 2, stride: int = 2, scales=()):
        if kind not in KINDS:
            raise ValueError(f"xar: entity '{kind}'; expected one of {KINDS}")
        self.kind, self.h, self.w = kind, height, width
        if kind == "scale":
            scales = [int(s) for s in scales]
            if not scales or scales[-1] != height or height != width or scales != sorted(set(scales)):
                raise ValueError(f"xar: entity 'scale' needs increasing scales ending at the grid size {height} "
                                 f"(square grid), got {scales} for {height}x{width}")
            self.scales = scales
        name, size = {"cell": ("cell", cell), "subsample": ("stride", stride)}.get(kind, ("", 0))
        if size and (height % size or width % size):
            raise ValueError(f"xar: {name} {size} does not divide the {height}x{width} latent grid")
        self.tokens = TokenLayout((height, width), scales=tuple(scales) if kind == "scale" else (), group=kind,
                                  cell=cell, stride=stride)
        self.positions, self.entity = self.tokens.positions("index"), self.tokens.groups()
        self.perm = self.tokens.order()
        self.num_entities, self.starts = self.tokens.num_groups, self.tokens.starts  # starts: token span of entity e

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
        return self.tokens.mask()
