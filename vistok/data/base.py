"""Dataset construction from a config section, and the pixel-range convention."""
from __future__ import annotations

import torch

from vistok.config import build


def build_dataset(section, split: str):
    """Instantiate ``data.type`` with its config arguments for one split (``train`` or ``test``)."""
    dataset = build("dataset", section, split=split)
    if len(dataset) == 0:
        raise ValueError(f"dataset '{section['type']}' split '{split}' is empty ({dataset!r})")
    return dataset


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model range -> [0, 1] image range (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)


def from_unit(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1
