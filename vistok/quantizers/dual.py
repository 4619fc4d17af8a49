"""TokenFlow's dual codebook with a shared index.

Two codebooks of K entries, a semantic one (dim d_sem) and a pixel one (dim d_pix), both
l2-normalised. For a feature split into (z_sem, z_pix), both normalised, the index is

    i* = argmin_i  w_sem * ||z_sem - e_sem_i||^2 + w_pix * ||z_pix - e_pix_i||^2

and both halves are replaced by their entries of that one index (straight-through). Loss per half:
codebook ||sg(z) - e||^2 + beta * commitment ||z - sg(e)||^2 (TokenFlow's code uses w = 1).

``dead_code_threshold`` > 0 re-seeds, in training, every index whose use (an EMA of counts per step,
``usage_decay``) fell below it with a feature pair of the current batch, both halves at once
(``vistok.quantizers.dead_codes``). TokenFlow's code has no such step (its codebooks are large and its runs
long); at toy scale it lifts perplexity and PSNR.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.quantizers.dead_codes import reseed_dead_codes


class DualCodebook(nn.Module):
    def __init__(self, codebook_size: int, dim_sem: int, dim_pix: int, w_sem: float = 1.0, w_pix: float = 1.0,
                 commitment_weight: float = 0.25, dead_code_threshold: float = 0.0, usage_decay: float = 0.99):
        super().__init__()
        self.codebook_size, self.dim_sem, self.dim_pix = codebook_size, dim_sem, dim_pix
        self.w_sem, self.w_pix, self.beta = w_sem, w_pix, commitment_weight
        self.dead_code_threshold, self.usage_decay = dead_code_threshold, usage_decay
        self.embed_sem = nn.Parameter(torch.randn(codebook_size, dim_sem))
        self.embed_pix = nn.Parameter(torch.randn(codebook_size, dim_pix))
        if dead_code_threshold > 0:  # saved with the weights so that a resumed run continues exactly
            self.register_buffer("usage", torch.full((codebook_size,), float(dead_code_threshold)))

    @property
    def dim(self) -> int:
        return self.dim_sem + self.dim_pix

    def codebooks(self) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.embed_sem, dim=-1), F.normalize(self.embed_pix, dim=-1)

    def distances(self, z_sem: torch.Tensor, z_pix: torch.Tensor) -> torch.Tensor:
        """z_*: N,d (normalised) -> N,K weighted squared distances (unit vectors: ||a-b||^2 = 2 - 2 a.b)."""
        cs, cp = self.codebooks()
        return self.w_sem * (2 - 2 * z_sem @ cs.t()) + self.w_pix * (2 - 2 * z_pix @ cp.t())

    def forward(self, z: torch.Tensor):
        """z: B,(d_sem+d_pix),H,W -> (quantised B,C,H,W straight-through, codes B,H,W, loss)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            b, c, h, w = z.shape
            flat = z.float().permute(0, 2, 3, 1).reshape(-1, c)
            zs = F.normalize(flat[:, : self.dim_sem], dim=-1)
            zp = F.normalize(flat[:, self.dim_sem:], dim=-1)
            codes = self.distances(zs, zp).argmin(-1)
            if self.training and self.dead_code_threshold > 0:
                reseed_dead_codes(self.usage, codes, self.dead_code_threshold, self.usage_decay,
                                  [(self.embed_sem, zs), (self.embed_pix, zp)])
            cs, cp = self.codebooks()
            qs, qp = cs[codes], cp[codes]
            loss = (F.mse_loss(qs, zs.detach()) + self.beta * F.mse_loss(qs.detach(), zs)
                    + F.mse_loss(qp, zp.detach()) + self.beta * F.mse_loss(qp.detach(), zp))
            zn = torch.cat([zs, zp], -1)
            zq = zn + (torch.cat([qs, qp], -1) - zn).detach()
            return zq.reshape(b, h, w, c).permute(0, 3, 1, 2), codes.reshape(b, h, w), loss

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes B,H,W -> B,(d_sem+d_pix),H,W."""
        cs, cp = self.codebooks()
        return torch.cat([cs[codes], cp[codes]], -1).permute(0, 3, 1, 2)
