"""Logging set-up and image grids."""
from __future__ import annotations

import logging
import os

import torch


def setup_logging(is_main: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if is_main else logging.WARNING)
    # accelerate's per-file INFO lines (and its "sampler state saved" even when none is written) drown ours
    logging.getLogger("accelerate").setLevel(logging.WARNING)


def save_grid(images: torch.Tensor, path: str, nrow: int = 8) -> None:
    """images in model range [-1, 1] -> one PNG (written atomically)."""
    from torchvision.utils import save_image

    from vistok.data.base import to_unit

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    save_image(to_unit(images.float().cpu()), tmp, nrow=max(1, nrow), padding=1)
    os.replace(tmp, path)
