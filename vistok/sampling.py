"""Writing sampled / reconstructed images: one PNG per image plus a grid."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image

from vistok.data.base import to_unit
from vistok.training.checkpoint import atomic_write_json
from vistok.training.logging import save_grid


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """B,C,H,W in [-1, 1] -> B,H,W,C uint8."""
    return (to_unit(images.float()) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def class_grid(images: torch.Tensor, labels: list[int], per_class: int = 8, max_classes: int = 16) -> torch.Tensor:
    """Up to ``per_class`` images of each class, one row per class, classes in increasing order."""
    rows = []
    for c in sorted(set(labels))[:max_classes]:
        idx = [i for i, lab in enumerate(labels) if lab == c][:per_class]
        rows.append(images[idx])
    return torch.cat(rows)


def save_images(images: torch.Tensor, out: str, start: int = 0, grid_pairs: torch.Tensor | None = None,
                grid_max: int = 64, grid: torch.Tensor | None = None, grid_ncol: int = 8) -> list[str]:
    """Write ``out/<index>.png`` and ``out/grid.png`` (with ``grid_pairs``: rows of inputs above outputs;
    with ``grid``: exactly those images)."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images)):
        path = os.path.join(out, f"{start + i:05d}.png")
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
        paths.append(path)
    if grid is not None:
        save_grid(grid, os.path.join(out, "grid.png"), nrow=grid_ncol)
        return paths
    if grid_max == 0:
        return paths
    g = images[:grid_max]
    ncol = min(8, len(g))
    if grid_pairs is not None:
        x = grid_pairs[:grid_max]
        rows = [t for i in range(0, len(g), ncol) for t in (x[i:i + ncol], g[i:i + ncol])]
        g = torch.cat(rows)
    save_grid(g, os.path.join(out, "grid.png"), nrow=ncol)
    return paths


def read_images(out: str, n: int) -> torch.Tensor:
    """out/00000.png .. out/<n-1>.png -> B,C,H,W in [-1, 1] (grey stays one channel)."""
    arrs = [np.asarray(Image.open(os.path.join(out, f"{i:05d}.png"))) for i in range(n)]
    x = torch.from_numpy(np.stack(arrs)).float() / 127.5 - 1
    return x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)


def write_json(path: str, obj) -> None:
    atomic_write_json(path, json.loads(json.dumps(obj, default=str)))
