"""The in-project semantic teacher on CPU: a small ViT trained self-supervised, without labels (SimCLR:
NT-Xent between two random views of each image), then frozen.

Two kinds of views (``views``):

- ``"affine"`` (the default; MNIST, TokenFlow's teacher): random rotation, scale and shift
  (:func:`random_affine`), background -1.
- ``"crop_flip"`` (ShapesWorld, SEED's teacher): colour-preserving views only, a random square crop resized
  back to the full image (bilinear, the crop always inside the image, so no padding) and a horizontal flip
  with probability ``flip_prob`` (:func:`random_crop_flip`). Colour jitter or rotations would teach the
  teacher to ignore the colours and positions the captions talk about. The flip is the one trade-off: it
  swaps "left of" and "right of", so a flip-invariant embedding cannot tell those captions apart
  (``flip_prob=0`` keeps the relation; 0.5, the default, as SimCLR and the SEED issue allow). A crop can
  also cut an object off the image (fewer objects than the caption says); ``crop_scale`` bounds how much
  area a crop keeps.

On GPUs the teacher is a CLIP/SigLIP (or EVA) vision tower from a local path; both expose
``tokens(images) -> B,N,D`` patch features on the tokenizer's grid and ``embed(images) -> B,D``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.modeling import VistokModel
from vistok.nn.vit import ViT
from vistok.registry import register_model
from vistok.schema import OneOf, Pair, PosFloat, PosInt, Prob

VIEWS = ("affine", "crop_flip")


def random_affine(x: torch.Tensor, max_rotate: float = 15.0, scale=(0.8, 1.1), max_shift: float = 0.15) -> torch.Tensor:
    """Per-image random rotation/scale/shift; images in [-1, 1], background -1."""
    b = x.shape[0]
    ang = (torch.rand(b, device=x.device) * 2 - 1) * math.radians(max_rotate)
    s = torch.empty(b, device=x.device).uniform_(*scale)
    t = (torch.rand(b, 2, device=x.device) * 2 - 1) * max_shift
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], -1), torch.stack([sin, cos, t[:, 1]], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def random_crop_flip(x: torch.Tensor, crop_scale=(0.5, 1.0), flip_prob: float = 0.5) -> torch.Tensor:
    """Per-image random square crop (area fraction uniform in ``crop_scale``, anywhere inside the image)
    resized back to the full size (bilinear), then a horizontal flip with probability ``flip_prob``.

    Colours are kept (bilinear resampling only mixes neighbouring pixels, at object edges); no pixel
    outside the image is ever read, so no padding value enters the view whatever the background.
    """
    b = x.shape[0]
    side = torch.empty(b, device=x.device).uniform_(*crop_scale).sqrt()  # crop side / image side
    centre = (torch.rand(b, 2, device=x.device) * 2 - 1) * (1 - side)[:, None]  # crop inside [-1, 1]
    flip = torch.where(torch.rand(b, device=x.device) < flip_prob, -1.0, 1.0)
    zero = torch.zeros_like(side)
    theta = torch.stack([torch.stack([side * flip, zero, centre[:, 0]], -1),
                         torch.stack([zero, side, centre[:, 1]], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # "border" only matters within half a pixel of the image edge (bilinear weights there reach past the outer pixel
    # centres): it repeats the edge pixel instead of mixing in a padding value.
    return F.grid_sample(x, grid, mode="bilinear", align_corners=False, padding_mode="border")


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([a, b]), dim=-1).float()
    sim = z @ z.t() / temperature
    n = a.shape[0]
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(a.device)
    return F.cross_entropy(sim, targets)


@register_model("vit_teacher")
class ContrastiveViT(VistokModel):
    kind = "teacher"

    def __init__(self, image_size: PosInt = 32, in_channels: PosInt = 1, patch: PosInt = 4, dim: PosInt = 128, depth: PosInt = 4,
                 heads: PosInt = 4, proj_dim: PosInt = 64, temperature: PosFloat = 0.2,
                 views: OneOf(*VIEWS) = "affine", crop_scale: Pair(Prob) = (0.5, 1.0), flip_prob: Prob = 0.5):
        """``views``: "affine" (rotation/scale/shift, the default: MNIST) or "crop_flip" (colour-preserving crops
        + horizontal flips: ShapesWorld); ``crop_scale`` (area fraction kept, 0 < lo <= hi <= 1) and ``flip_prob``
        apply to "crop_flip" only (see the module docstring for the flip's trade-off)."""
        super().__init__()
        if views not in VIEWS:
            raise ValueError(f"vit_teacher: views={views!r}; expected one of {VIEWS}")
        lo, hi = (float(v) for v in crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"vit_teacher: crop_scale={list(crop_scale)}; expected 0 < lo <= hi <= 1")
        if not 0 <= flip_prob <= 1:
            raise ValueError(f"vit_teacher: flip_prob={flip_prob}; expected 0..1")
        self.views, self.crop_scale, self.flip_prob = views, (lo, hi), float(flip_prob)
        self.vit = ViT(image_size, patch, in_channels, dim, depth, heads)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, proj_dim))
        self.dim, self.grid, self.temperature = dim, self.vit.grid, temperature
        self.image_size, self.in_channels = image_size, in_channels

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features B,N,dim: what TokenFlow's semantic decoder learns to predict."""
        return self.vit(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images).mean(1)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """One random view of each image (the kind ``views`` names)."""
        if self.views == "crop_flip":
            return random_crop_flip(x, self.crop_scale, self.flip_prob)
        return random_affine(x)

    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        x = batch["image"]
        a, b = self.proj(self.embed(self.view(x))), self.proj(self.embed(self.view(x)))
        loss = nt_xent(a, b, self.temperature)
        return {"loss": loss, "nt_xent": loss.detach()}

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """Label-free: how often a view's nearest neighbour in the batch is its own other view."""
        hits, n = 0, 0
        for batch in batches:
            x = batch["image"]
            a = F.normalize(self.embed(self.view(x)), dim=-1)
            b = F.normalize(self.embed(self.view(x)), dim=-1)
            hits += int(((a @ b.t()).argmax(-1) == torch.arange(len(x), device=x.device)).sum())
            n += len(x)
        return {"view_retrieval_top1": hits / max(n, 1)}
