"""In-context attention: queries and a context attend to each other in one sequence, and only the queries'
outputs are kept (3DShape2VecSet / VAT's encoder over [latent tokens; point tokens], and their decoders over
[latent tokens; output-grid tokens]).

Unlike cross-attention, the context is updated layer by layer too. Nothing here knows where a token sits: give
the queries and the context their own position embeddings where order matters (latent tokens, triplane cells)
and none where it must not (a point cloud: the outputs are then invariant to the order of its points).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from vistok.nn.transformer import Block, RMSNorm


class InContextTransformer(nn.Module):
    """``depth`` pre-norm self-attention blocks (``vistok.nn.transformer.Block``) over [queries; context]."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = RMSNorm(dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """queries B,Q,D and context B,C,D -> the queries' outputs B,Q,D."""
        x = torch.cat([queries, context], 1)
        head_dim = x.shape[-1] // self.heads
        angles = x.new_zeros(x.shape[0], x.shape[1], head_dim // 2)  # rotation by 0: no positions
        for blk in self.blocks:
            x = blk(x, angles)
        return self.norm(x[:, : queries.shape[1]])


def fourier_features(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """x ...,C -> ...,C (1 + 2 num_freqs): x, then sin and cos of 2^k pi x for k < num_freqs (NeRF's encoding)."""
    freqs = (2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)) * torch.pi
    angles = (x[..., None] * freqs).flatten(-2)
    return torch.cat([x, angles.sin(), angles.cos()], -1)
