"""Each part's own image preprocessing, on tensors: vistok images (B,C,H,W in [-1, 1], 1 or 3 channels) ->
what the pretrained model was trained on (resize, centre crop, mean/std), read from the folder's
``preprocessor_config.json`` (transformers) or ``pretrained_cfg`` (timm), and overridable per part."""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", "bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


class ImagePreprocess(torch.nn.Module):
    """Resize the shorter side to ``resize`` (or to exactly ``size`` when ``resize`` is 0), centre-crop to
    ``size`` (H, W), then (x - mean) / std on [0, 1] values. Grey images are repeated to 3 channels."""

    def __init__(self, size: tuple[int, int], mean, std, resize: int = 0, mode: str = "bicubic"):
        super().__init__()
        self.size, self.resize, self.mode = tuple(size), resize, mode
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1) / 2
        if x.shape[1] == 1 and self.mean.shape[1] == 3:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        if self.resize:
            s = self.resize / min(h, w)
            target = (max(self.size[0], round(h * s)), max(self.size[1], round(w * s)))
        else:
            target = self.size
        if (h, w) != target:
            x = F.interpolate(x, size=target, mode=self.mode, antialias=self.mode != "nearest",
                              align_corners=False if self.mode != "nearest" else None)
        top, left = (x.shape[-2] - self.size[0]) // 2, (x.shape[-1] - self.size[1]) // 2
        x = x[..., top:top + self.size[0], left:left + self.size[1]]
        return (x - self.mean) / self.std


def from_hf_processor(folder: str, image_size: int = 0, mean=(), std=(), default_size: int = 224) -> ImagePreprocess:
    """A transformers image processor's steps (``preprocessor_config.json``); ``image_size`` > 0 replaces its
    size (a tower run at another resolution interpolates its position embeddings), ``mean``/``std`` its values."""
    path = os.path.join(folder, "preprocessor_config.json")
    cfg = json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else {}
    size, crop = cfg.get("size") or {}, cfg.get("crop_size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if cfg.get("do_center_crop", bool(crop)) and crop:
        out, resize = (crop["height"], crop["width"]), size.get("shortest_edge", 0)
    elif "height" in size:
        out, resize = (size["height"], size["width"]), 0
    else:
        out, resize = (size.get("shortest_edge", default_size),) * 2, 0
    if image_size:
        out, resize = (image_size, image_size), 0
    return ImagePreprocess(out, list(mean) or cfg.get("image_mean", [0.5] * 3), list(std) or cfg.get("image_std", [0.5] * 3),
                           resize=resize, mode=RESAMPLE.get(cfg.get("resample", 3), "bicubic"))
