"""The in-project semantic teacher for TokenFlow on CPU: a small ViT trained self-supervised, without
labels (SimCLR: NT-Xent between two random affine views of each image), then frozen.

On GPUs the teacher is a CLIP/SigLIP vision tower from a local path; both expose
``tokens(images) -> B,N,D`` patch features on the tokenizer's grid.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.modeling import VistokModel
from vistok.nn.vit import ViT
from vistok.registry import register_model
from vistok.schema import PosFloat, PosInt


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
                 heads: PosInt = 4, proj_dim: PosInt = 64, temperature: PosFloat = 0.2):
        super().__init__()
        self.vit = ViT(image_size, patch, in_channels, dim, depth, heads)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, proj_dim))
        self.dim, self.grid, self.temperature = dim, self.vit.grid, temperature

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features B,N,dim: what TokenFlow's semantic decoder learns to predict."""
        return self.vit(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images).mean(1)

    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        x = batch["image"]
        a, b = self.proj(self.embed(random_affine(x))), self.proj(self.embed(random_affine(x)))
        loss = nt_xent(a, b, self.temperature)
        return {"loss": loss, "nt_xent": loss.detach()}

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """Label-free: how often a view's nearest neighbour in the batch is its own other view."""
        hits, n = 0, 0
        for batch in batches:
            x = batch["image"]
            a = F.normalize(self.embed(random_affine(x)), dim=-1)
            b = F.normalize(self.embed(random_affine(x)), dim=-1)
            hits += int(((a @ b.t()).argmax(-1) == torch.arange(len(x), device=x.device)).sum())
            n += len(x)
        return {"view_retrieval_top1": hits / max(n, 1)}
