"""Adapter over vector-quantize-pytorch's ``VectorQuantize`` for image feature maps.

Options map one to one: ``l2_norm`` -> ``use_cosine_sim`` (l2-normalised codes, LlamaGen/Layton),
``ema`` (codebook learnt by EMA, else by gradients), ``kmeans_init``, ``dead_code_threshold`` ->
``threshold_ema_dead_code`` (codes used fewer times than this in the EMA are re-seeded from the batch).
Quantisation always runs in fp32, also under bf16 autocast: nearest-code search in bf16 picks wrong codes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from vector_quantize_pytorch import VectorQuantize


class VQ(nn.Module):
    def __init__(self, dim: int, codebook_size: int, codebook_dim: int | None = None, l2_norm: bool = True,
                 ema: bool = True, decay: float = 0.99, kmeans_init: bool = False, dead_code_threshold: float = 0.0,
                 commitment_weight: float = 0.25):
        super().__init__()
        self.codebook_size = codebook_size
        self.vq = VectorQuantize(
            dim=dim, codebook_size=codebook_size, codebook_dim=codebook_dim if codebook_dim != dim else None,
            use_cosine_sim=l2_norm, decay=decay, kmeans_init=kmeans_init, threshold_ema_dead_code=dead_code_threshold,
            commitment_weight=commitment_weight, learnable_codebook=not ema, ema_update=ema,
            accept_image_fmap=True, channel_last=False,
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: B,C,H,W -> (quantised B,C,H,W with straight-through gradient, codes B,H,W, vq loss)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            zq, codes, loss = self.vq(z.float())
        return zq, codes, loss.sum()

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes B,H,W -> quantised feature map B,C,H,W."""
        with torch.autocast(device_type=codes.device.type, enabled=False):
            return self.vq.get_output_from_indices(codes)

    @property
    def initted(self) -> bool:
        return bool(getattr(self.vq._codebook, "initted", torch.tensor(True)))
