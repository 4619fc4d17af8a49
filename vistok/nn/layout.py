"""Where a model's tokens sit: a 1-D or 2-D grid (square or not), the order of the tokens in the sequence,
which tokens form one autoregressive step, and each token's centre for position embeddings.

``group`` says what one step predicts:

    token      every token alone, in raster order
    cell       k x k blocks (1-D: runs of k) in raster order, raster inside a block
    subsample  strided groups: group i holds the tokens whose coordinates are i modulo ``stride``
    scale      next-scale: the sequence is one grid per scale, coarse to fine (``scales``, the last = ``shape``)
    image      all tokens in one step

Centres are in units of the finest grid. ``origin="index"``: the finest token at index i sits at i;
``origin="edge"``: at i + 0.5 (coordinates from the grid's edge). A coarse token covering finest cells
[a, b) sits at the middle of that span in either convention.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

GROUPS = ("token", "cell", "subsample", "scale", "image")


def _grid(shape: tuple[int, ...]) -> torch.Tensor:
    """Raster coordinates N, ndim (long) of a grid."""
    axes = torch.meshgrid(*[torch.arange(n, device="cpu") for n in shape], indexing="ij")
    return torch.stack(axes, -1).reshape(-1, len(shape))


def _ravel(coords: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Raster index of coordinates N, ndim on a grid of ``shape``."""
    index = torch.zeros(coords.shape[0], dtype=torch.long, device="cpu")
    for a, n in enumerate(shape):
        index = index * n + coords[:, a]
    return index


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """``shape``: the finest grid, (n,) or (h, w). ``scales``: next-scale grids, coarse to fine, as tuples or
    ints (an int s is (s,) in 1-D, (s, s) in 2-D). ``group`` (default: 'scale' with scales, else 'token')."""
    shape: tuple[int, ...]
    scales: tuple[tuple[int, ...], ...] = ()
    group: str = ""
    cell: int = 2
    stride: int = 2

    def __post_init__(self):
        shape = tuple(int(n) for n in self.shape)
        scales = tuple(tuple(int(v) for v in s) if hasattr(s, "__len__") else (int(s),) * len(shape)
                       for s in self.scales)
        group = self.group or ("scale" if scales else "token")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "group", group)
        self._check()

    def _check(self) -> None:
        if len(self.shape) not in (1, 2) or min(self.shape) < 1:
            raise ValueError(f"token layout: shape {self.shape}; expected (n,) or (h, w) of positive sizes")
        if self.group not in GROUPS:
            raise ValueError(f"token layout: group '{self.group}'; expected one of {GROUPS}")
        if (self.group == "scale") != bool(self.scales):
            raise ValueError(f"token layout: scales {list(self.scales)} go with group 'scale' (got '{self.group}')")
        if self.scales:
            grows = all(p != q and all(a <= b for a, b in zip(p, q)) for p, q in zip(self.scales, self.scales[1:]))
            if not grows or self.scales[-1] != self.shape or any(len(s) != len(self.shape) for s in self.scales):
                raise ValueError(f"token layout: scales {list(self.scales)} must grow from scale to scale (no axis "
                                 f"shrinking) and end at the grid {self.shape}")
        size = {"cell": self.cell, "subsample": self.stride}.get(self.group)
        if size is not None and (size < 1 or any(n % size for n in self.shape)):
            raise ValueError(f"token layout: {self.group} {size} does not divide the grid {self.shape}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def scale_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The grids the sequence is made of: the scales, or the one grid."""
        return self.scales or (self.shape,)

    @property
    def num_tokens(self) -> int:
        return sum(math.prod(s) for s in self.scale_shapes)

    def _key(self) -> torch.Tensor:
        """Group key of every raster position (not next-scale)."""
        coords = _grid(self.shape)
        if self.group == "token":
            return torch.arange(len(coords), device="cpu")
        if self.group == "image":
            return torch.zeros(len(coords), dtype=torch.long, device="cpu")
        if self.group == "cell":
            return _ravel(coords // self.cell, tuple(n // self.cell for n in self.shape))
        return _ravel(coords % self.stride, (self.stride,) * self.ndim)  # subsample

    def order(self) -> torch.Tensor | None:
        """Sequence position -> raster index on the grid (None for next-scale layouts): by group, raster inside."""
        if self.group == "scale":
            return None
        return torch.sort(self._key(), stable=True).indices

    def groups(self) -> torch.Tensor:
        """The autoregressive step (0, 1, ...) of every token, in sequence order."""
        if self.group == "scale":
            return torch.cat([torch.full((math.prod(s),), k, device="cpu") for k, s in enumerate(self.scales)])
        return torch.unique(self._key()[self.order()], return_inverse=True)[1]

    @functools.cached_property
    def num_groups(self) -> int:
        return int(self.groups().max()) + 1

    @functools.cached_property
    def starts(self) -> list[int]:
        """Token span [starts[g], starts[g + 1]) of every group g (sequence order keeps groups contiguous)."""
        g = self.groups()
        return [int((g < k).sum()) for k in range(self.num_groups + 1)]

    def positions(self, origin: str = "index") -> torch.Tensor:
        """Centres N, ndim (float) of the tokens in sequence order, on the finest grid (see the module doc)."""
        if origin not in ("index", "edge"):
            raise ValueError(f"token layout: origin '{origin}'; expected 'index' or 'edge'")
        offset = 0.5 if origin == "index" else 0.0
        order = self.order()
        pos = []
        for size in self.scale_shapes:
            coords = _grid(size) if order is None else _grid(size)[order]
            pos.append(torch.stack([(coords[:, a] + 0.5) * self.shape[a] / size[a] - offset
                                    for a in range(self.ndim)], -1))
        return torch.cat(pos).float()

    def mask(self) -> torch.Tensor:
        """N,N boolean (True = attend), block-causal: a token sees its own group and the groups before it."""
        g = self.groups()
        return g[None, :] <= g[:, None]

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """B,N,... in sequence order -> one tensor per scale grid, B,*grid,... (next-scale or raster layouts)."""
        if self.group not in ("scale", "token"):
            raise ValueError(f"token layout: split is for 'scale' or 'token' layouts, not '{self.group}'")
        out, i = [], 0
        for size in self.scale_shapes:
            n = math.prod(size)
            out.append(flat[:, i:i + n].reshape(flat.shape[0], *size, *flat.shape[2:]))
            i += n
        return out
