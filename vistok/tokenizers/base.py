"""What every tokenizer shares: the trainer hooks built on ``reconstruct(images) -> (images, codes)``."""
from __future__ import annotations

import torch

from vistok.evaluation.image_metrics import ReconstructionMeter
from vistok.modeling import VistokModel


class Tokenizer(VistokModel):
    kind = "tokenizer"
    codebook_size: int

    def reconstruct(self, images: torch.Tensor):
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """PSNR, SSIM, codebook usage and perplexity over the given held-out batches."""
        meter = ReconstructionMeter(self.codebook_size)
        for batch in batches:
            xr, codes = self.reconstruct(batch["image"])
            meter.update(batch["image"], xr, codes)
        return meter.compute()

    @torch.no_grad()
    def visualize(self, batch: dict, n: int = 8, **_) -> torch.Tensor:
        """Inputs (top row) over reconstructions (bottom row), model range."""
        x = batch["image"][:n]
        return torch.cat([x, self.reconstruct(x)[0].clamp(-1, 1)])
