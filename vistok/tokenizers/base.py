"""What every tokenizer shares, whatever it reads (``Tokenizer``), and what image tokenizers add
(``ImageTokenizer``: held-out PSNR/SSIM, pictures, LPIPS and the adversarial phase)."""
from __future__ import annotations

import torch

from vistok.metrics.image import ReconstructionMeter
from vistok.modeling import VistokModel


class Tokenizer(VistokModel):
    """Any input -> tokens -> the input again. Subclasses give ``encode(x) -> codes | latents``,
    ``decode(codes, generator=None, **options)`` and ``reconstruct(x) -> (x', codes)``; training batches hold the
    input under ``input_key`` (images, point clouds, text + image pairs ...). ``codebook_size`` is None for
    continuous latents. A tokenizer drives a release alone; its pipeline type is ``default_pipeline``."""

    kind = "tokenizer"
    drive_priority = 1  # alone in a release, a tokenizer makes a reconstruction pipeline
    input_key = "image"
    codebook_size: int | None = None

    @classmethod
    def default_pipeline(cls, config: dict) -> str:
        return "reconstruction"

    def compile_for_sampling(self, mode: str | None = None) -> None:
        decoder = getattr(self, "decoder", None)
        if decoder is not None:
            decoder.compile(mode=mode)

    def reconstruct(self, x):
        raise NotImplementedError

    def preview(self, codes) -> torch.Tensor:
        """Codes -> images B,C,H,W in [-1, 1] that show them (a generator's samples while it trains)."""
        return self.decode(codes).clamp(-1, 1)

    @property
    def layout(self):
        """The ``TokenLayout`` of its codes (``token_shape``, or the finest of ``scales``), None for continuous
        latents; a generator over these codes must have the same."""
        from vistok.nn.layout import TokenLayout

        scales = list(getattr(self, "scales", []) or [])
        shape = getattr(self, "token_shape", None)
        if shape is None and scales:
            shape = (scales[-1],) * 2  # multi-scale 2-D codes: the finest scale is the grid
        return TokenLayout(tuple(shape), scales=tuple(scales)) if shape is not None else None


class ImageTokenizer(Tokenizer):
    """Images B,C,H,W in [-1, 1] -> tokens -> images: the held-out metrics (PSNR, SSIM, codebook usage), input /
    reconstruction grids, and the optional LPIPS and PatchGAN terms every image tokenizer shares."""

    lpips_weight: float = 0.0
    lpips_path: str = ""

    gan_weight: float = 0.0
    disc_args: dict = {}

    def build_loss_module(self):
        """The PatchGAN critic with its hinge losses and start step (``disc_start``, ``disc_lr``), when gan_weight > 0;
        the trainer optimises it beside the model and never saves it into a release."""
        from vistok.nn.discriminator import AdversarialLoss

        return AdversarialLoss(**self.disc_args) if self.gan_weight > 0 else None

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
