"""A small ViT on the shared transformer blocks (bidirectional, 2-D RoPE over the patch grid).

Used as TokenFlow's semantic encoder, its semantic decoder (a stack over given tokens) and the
in-project semantic teacher.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from vistok.nn.transformer import Block, RMSNorm, rope_angles


class TransformerStack(nn.Module):
    """Bidirectional blocks over a grid x grid token map (B, grid*grid, dim)."""

    def __init__(self, dim: int, depth: int, heads: int, grid: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.head_dim = dim // heads
        pos = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).reshape(-1, 2)
        self.register_buffer("positions", pos, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        angles = rope_angles(self.positions, self.head_dim)[None].expand(tokens.shape[0], -1, -1)
        for blk in self.blocks:
            tokens = blk(tokens, angles)
        return self.norm(tokens)


class ViT(nn.Module):
    def __init__(self, image_size: int, patch: int, in_channels: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"ViT: image_size {image_size} is not divisible by patch {patch}")
        self.grid = image_size // patch
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.stack = TransformerStack(dim, depth, heads, self.grid, mlp_ratio, dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B,C,H,W -> patch tokens B,(H/p)*(W/p),dim (row-major)."""
        return self.stack(self.patch_embed(images).flatten(2).transpose(1, 2))
