"""Held-out metrics and image grids during training, both with the EMA weights when the run keeps them (and
the live ones too, for metrics), under a forked RNG so that they never change the training's random stream."""
from __future__ import annotations

import contextlib

import torch

from vistok.image_files import save_grid
from vistok.ops import to_unit
from vistok.training.ema import tracked


@contextlib.contextmanager
def swapped_to_ema(raw, ema):
    """The model in eval mode with its EMA parameters (when kept) inside the block; as it was afterwards."""
    was_training = raw.training
    raw.eval()
    if ema is not None:
        ema.store(tracked(raw))
        ema.copy_to(tracked(raw))
    try:
        with torch.random.fork_rng(devices=[]):
            yield raw
    finally:
        if ema is not None:
            ema.restore(tracked(raw))
        raw.train(was_training)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def evaluate_model(accelerator, raw, ema, eval_loader, max_batches: int) -> dict:
    """``raw.evaluate`` on the first ``max_batches`` held-out batches: ``eval/*`` (live) and ``eval_ema/*``."""
    def run(prefix):
        batches = (to_device(b, accelerator.device) for _, b in zip(range(max_batches), eval_loader))
        with accelerator.autocast():
            return {f"{prefix}/{k}": float(v) for k, v in raw.evaluate(batches).items()}

    with swapped_to_ema(raw, None):
        metrics = run("eval")
    if ema is not None:
        with swapped_to_ema(raw, ema):
            metrics.update(run("eval_ema"))
    return metrics


def save_images(accelerator, raw, ema, batch: dict, path: str, step: int, **extras) -> None:
    """``raw.visualize(batch)`` (EMA weights) -> a PNG grid at ``path`` and, with tensorboard, an image summary."""
    with swapped_to_ema(raw, ema), torch.no_grad():
        grid = raw.visualize(batch, **extras)
    if grid is None:  # the model cannot draw itself (e.g. a generator without a decoder)
        return
    grid = grid.float()
    save_grid(grid, path, nrow=len(grid) // 2)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            from torchvision.utils import make_grid

            tracker.writer.add_image("images", make_grid(to_unit(grid), nrow=len(grid) // 2), step)
