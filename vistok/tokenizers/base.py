"""What every tokenizer shares: the trainer hooks built on ``reconstruct(images) -> (images, codes)``."""
from __future__ import annotations

import torch

from vistok.metrics.image import ReconstructionMeter
from vistok.modeling import VistokModel


class Tokenizer(VistokModel):
    kind = "tokenizer"
    drive_priority = 1  # alone in a release, a tokenizer makes a reconstruction pipeline

    @classmethod
    def default_pipeline(cls, config: dict) -> str:
        return "reconstruction"

    def compile_for_sampling(self, mode: str | None = None) -> None:
        decoder = getattr(self, "decoder", None)
        if decoder is not None:
            decoder.compile(mode=mode)
    codebook_size: int
    lpips_weight: float = 0.0
    lpips_path: str = ""

    gan_weight: float = 0.0
    disc_args: dict = {}

    def build_loss_module(self):
        """The PatchGAN critic with its hinge losses and start step (``disc_start``, ``disc_lr``), when gan_weight > 0;
        the trainer optimises it beside the model and never saves it into a release."""
        from vistok.nn.discriminator import AdversarialLoss

        return AdversarialLoss(**self.disc_args) if self.gan_weight > 0 else None

    def on_step_end(self, step: int) -> None:
        """After each optimiser step: codebooks that re-seed dead codes do it now (``apply_reseed``), so the new
        entries are not moved by the gradient computed for the old ones."""
        for m in self.modules():
            if m is not self and hasattr(m, "apply_reseed"):
                m.apply_reseed()

    def finish_losses(self, out: dict, loss: torch.Tensor, images: torch.Tensor, reconstruction: torch.Tensor,
                      step: int = 0, loss_module=None) -> dict:
        """Adds the optional LPIPS and adversarial terms shared by every tokenizer, the total, and the
        images the critic's own step reads (``_real``/``_fake``)."""
        if self.lpips_weight > 0:
            out["lpips"] = self.perceptual_loss(reconstruction, images)
            loss = loss + self.lpips_weight * out["lpips"]
        if loss_module is not None and self.gan_weight > 0 and loss_module.active(step):
            out["gan_g"] = loss_module.generator_loss(reconstruction)
            loss = loss + self.gan_weight * out["gan_g"]
        out["loss"] = loss
        out["_real"], out["_fake"] = images, reconstruction
        return out

    def perceptual_loss(self, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS, the network read once from ``lpips_path`` (local VGG-16 weights; never in state_dict)."""
        net = self.__dict__.get("_lpips")
        if net is None:
            if not self.lpips_path:
                raise ValueError(f"{self.model_type}: lpips_weight={self.lpips_weight} needs model.lpips_path: a folder "
                                 f"with vgg16.safetensors|vgg16.pth [and lin.pth] (see vistok/nn/lpips.py)")
            from vistok.nn.lpips import load_lpips

            net = load_lpips(self.lpips_path, next(self.parameters()).device)
            object.__setattr__(self, "_lpips", net)
        return net(reconstruction, images).mean()

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
