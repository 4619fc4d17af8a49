"""Adapter over vector-quantize-pytorch's ``VectorQuantize`` for image feature maps B,C,H,W and token
sequences B,N,D (quantised as a B,D,N,1 map: the same codebook, search and losses).

Options map one to one: ``l2_norm`` -> ``use_cosine_sim`` (l2-normalised codes, LlamaGen/Layton),
``ema`` (codebook learnt by EMA, else by gradients), ``kmeans_init``, ``dead_code_threshold`` ->
``threshold_ema_dead_code`` (codes used fewer times than this in the EMA are re-seeded from the batch).
Quantisation always runs in fp32, also under bf16 autocast: nearest-code search in bf16 picks wrong codes.

vector-quantize-pytorch has no l2-normalised codebook learnt by gradients (LlamaGen's VQ-16, which
Layton reuses): ``l2_norm=True, ema=False`` uses ``L2NormVQ`` below, LlamaGen's formulation
(codebook loss + beta * commitment, both on l2-normalised vectors, straight-through). Nor does it weigh the
codebook term apart from the commitment term: ``EuclideanVQ`` (SEED's plain VQ, taming's ``legacy`` beta
placement by default) does.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from vector_quantize_pytorch import VectorQuantize

from vistok.quantizers.dead_codes import reseed_dead_codes


class VQ(nn.Module):
    def __init__(self, dim: int, codebook_size: int, codebook_dim: int | None = None, l2_norm: bool = True,
                 ema: bool = True, decay: float = 0.99, kmeans_init: bool = False, dead_code_threshold: float = 0.0,
                 commitment_weight: float = 0.25):
        super().__init__()
        self.codebook_size = codebook_size
        if l2_norm and not ema:
            self.vq = L2NormVQ(dim, codebook_size, commitment_weight, dead_code_threshold)
            return
        self.vq = VectorQuantize(
            dim=dim, codebook_size=codebook_size, codebook_dim=codebook_dim if codebook_dim != dim else None,
            use_cosine_sim=l2_norm, decay=decay, kmeans_init=kmeans_init, threshold_ema_dead_code=dead_code_threshold,
            commitment_weight=commitment_weight, learnable_codebook=not ema, ema_update=ema,
            accept_image_fmap=True, channel_last=False,
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: B,C,H,W -> (quantised B,C,H,W with straight-through gradient, codes B,H,W, vq loss);
        z: B,N,D -> (quantised B,N,D, codes B,N, vq loss)."""
        if z.dim() == 3:
            zq, codes, loss = self(z.transpose(1, 2).unsqueeze(-1))
            return zq.squeeze(-1).transpose(1, 2), codes.squeeze(-1), loss
        if z.dim() != 4:
            raise ValueError(f"VQ input {tuple(z.shape)}: expected B,C,H,W or B,N,D")
        with torch.autocast(device_type=z.device.type, enabled=False):
            zq, codes, loss = self.vq(z.float())
        return zq, codes, loss.sum()

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes B,H,W -> quantised feature map B,C,H,W; codes B,N -> tokens B,N,D."""
        if codes.dim() == 2:
            return self.lookup(codes.unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        with torch.autocast(device_type=codes.device.type, enabled=False):
            return self.vq.get_output_from_indices(codes)



class L2NormVQ(nn.Module):
    """Nearest l2-normalised code to the l2-normalised input; codebook learnt by gradients."""

    def __init__(self, dim: int, codebook_size: int, commitment_weight: float = 0.25, dead_code_threshold: float = 0.0,
                 usage_decay: float = 0.99):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(codebook_size, dim).uniform_(-1 / codebook_size, 1 / codebook_size))
        self.beta = commitment_weight
        self.dead_code_threshold, self.usage_decay = dead_code_threshold, usage_decay
        if dead_code_threshold > 0:  # see vistok.quantizers.dead_codes
            self.register_buffer("usage", torch.full((codebook_size,), float(dead_code_threshold)))

    def codebook(self) -> torch.Tensor:
        return F.normalize(self.embedding, dim=-1)

    def forward(self, z: torch.Tensor):
        b, c, h, w = z.shape
        flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, c), dim=-1)
        cb = self.codebook()
        codes = (flat @ cb.t()).argmax(-1)  # max cosine == min euclidean distance between unit vectors
        if self.training and self.dead_code_threshold > 0:
            reseed_dead_codes(self.usage, codes, self.dead_code_threshold, self.usage_decay, [(self.embedding, flat)])
        zq = cb[codes]
        loss = F.mse_loss(zq, flat.detach()) + self.beta * F.mse_loss(zq.detach(), flat)
        zq = flat + (zq - flat).detach()
        return zq.reshape(b, h, w, c).permute(0, 3, 1, 2), codes.reshape(b, h, w), loss

    def get_output_from_indices(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook()[codes].permute(0, 3, 1, 2)


class EuclideanVQ(nn.Module):
    """Nearest code by Euclidean distance (no normalisation, no EMA), codebook learnt by gradients, over tokens
    B,N,D. ``beta_on="codebook"`` is SEED's (taming's legacy) placement: ||sg(zq) - z||^2 + beta ||zq - sg(z)||^2,
    i.e. the commitment term at weight 1 and the codebook term at beta; ``"commitment"`` the usual one
    (||zq - sg(z)||^2 + beta ||sg(zq) - z||^2). Straight-through gradient to z."""

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, beta_on: str = "codebook"):
        super().__init__()
        if beta_on not in ("codebook", "commitment"):
            raise ValueError(f"beta_on='{beta_on}'; expected 'codebook' (SEED's placement) or 'commitment'")
        self.embedding = nn.Parameter(torch.empty(codebook_size, dim).uniform_(-1 / codebook_size, 1 / codebook_size))
        self.codebook_size, self.beta, self.beta_on = codebook_size, beta, beta_on

    def forward(self, z: torch.Tensor):
        """z B,N,D -> (quantised B,N,D straight-through, codes B,N, loss)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.float().reshape(-1, z.shape[-1])
            cb = self.embedding.float()
            dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)[None]
            codes = dist.argmin(-1)
            zq = cb[codes]
            commit, book = F.mse_loss(flat, zq.detach()), F.mse_loss(zq, flat.detach())
            loss = commit + self.beta * book if self.beta_on == "codebook" else book + self.beta * commit
            zq = flat + (zq - flat).detach()
        return zq.reshape(z.shape).to(z.dtype), codes.reshape(z.shape[:-1]), loss

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embedding[codes]
