"""Continuous tokenizer: a KL autoencoder (diffusers ``AutoencoderKL``) whose latents a continuous
generator (xAR) models.

    images B,C,H,W in [-1, 1] --encode--> latents B,latent_channels,H/f,W/f (normalised) --decode--> images

``encode`` returns the posterior mean (or a sample) mapped to unit scale: (z - shift_factor) * scale_factor,
``decode`` inverts that map. ``scale_factor`` / ``shift_factor`` are measured on the training data after
training (``scripts/latent_scale.py --tokenizer RELEASE --write``: 1 / std and the mean of the latents), not
hard-coded; MAR's KL-16 uses 0.2325, SD's VAE 0.18215, both measured the same way.

Training loss: L1 or L2 reconstruction + kl_weight * KL(posterior || N(0, I)) (mean over latent elements),
optionally + lpips_weight * LPIPS and, in the trainer's adversarial phase, gan_weight * PatchGAN hinge.
The f = 2 ** (len(block_out_channels) - 1) downsampling is diffusers' (stride-2 conv per block but the last).
A diffusers-format VAE folder (config.json + diffusion_pytorch_model.safetensors) loads with
``KLAutoencoder.from_diffusers(path)``.
"""
from __future__ import annotations

import typing

import json
import os

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from vistok.registry import register_model
from vistok.tokenizers.base import ImageTokenizer
from vistok.schema import NonNegFloat, NonNegInts, PosFloat, PosInt, PosInts, Range


@register_model("kl")
class KLAutoencoder(ImageTokenizer):
    codebook_size = None  # continuous: no codes to count

    def __init__(
        self,
        image_size: PosInt = 256,
        in_channels: PosInt = 3,
        block_out_channels: PosInts = (128, 256, 512, 512, 512),
        layers_per_block: PosInt = 2,
        latent_channels: PosInt = 16,
        norm_num_groups: PosInt = 32,
        mid_attention: bool = True,
        attn_down_levels: NonNegInts = (),
        scale_factor: PosFloat = 1.0,
        shift_factor: float = 0.0,
        kl_weight: NonNegFloat = 1e-6,
        recon_loss: str = "l1",
        sample_posterior: bool = True,
        lpips_weight: NonNegFloat = 0.0,
        lpips_path: str = "",
        gan_weight: NonNegFloat = 0.0,
        disc_ch: PosInt = 64,
        disc_layers: PosInt = 3,
        disc_start: typing.Annotated[int, Range(-1)] = -1,
        disc_lr: PosFloat = 1e-4,
    ):
        super().__init__()
        if recon_loss not in ("l1", "l2"):
            raise ValueError(f"kl: recon_loss='{recon_loss}'; expected 'l1' or 'l2'")
        factor = 2 ** (len(block_out_channels) - 1)
        if image_size % factor:
            raise ValueError(f"kl: image_size {image_size} is not divisible by the downsampling factor {factor} "
                             f"(block_out_channels {list(block_out_channels)})")
        n = len(block_out_channels)
        bad = [lv for lv in attn_down_levels if not 0 <= int(lv) < n]
        if bad:
            raise ValueError(f"kl: attn_down_levels {list(attn_down_levels)} has levels {bad} outside 0..{n - 1}")
        # LDM / MAR KL-16 encoders attend after each resnet of their lowest-resolution level: attn_down_levels [n-1]
        down = tuple("AttnDownEncoderBlock2D" if i in {int(lv) for lv in attn_down_levels} else "DownEncoderBlock2D"
                     for i in range(n))
        self.vae = AutoencoderKL(in_channels=in_channels, out_channels=in_channels,
                                 down_block_types=down, up_block_types=("UpDecoderBlock2D",) * n,
                                 block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                                 latent_channels=latent_channels, norm_num_groups=norm_num_groups, sample_size=image_size,
                                 mid_block_add_attention=mid_attention)
        self.image_size, self.in_channels, self.latent_channels = image_size, in_channels, latent_channels
        self.latent_shape = (latent_channels, image_size // factor, image_size // factor)
        self.scale_factor, self.shift_factor = scale_factor, shift_factor
        self.kl_weight, self.recon_loss, self.sample_posterior = kl_weight, recon_loss, sample_posterior
        self.lpips_weight, self.lpips_path = lpips_weight, lpips_path
        self.gan_weight, self.disc_args = gan_weight, dict(in_channels=in_channels, ch=disc_ch, num_layers=disc_layers, start=disc_start,
                              lr=disc_lr)

    # ---- the tokenizer interface --------------------------------------------------------------
    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """images -> normalised latents (posterior mean, or a sample)."""
        post = self.vae.encode(images).latent_dist
        z = post.sample(generator) if sample else post.mean
        return (z - self.shift_factor) * self.scale_factor

    def decode(self, latents: torch.Tensor, generator: torch.Generator | None = None, **options) -> torch.Tensor:
        return self.vae.decode(latents / self.scale_factor + self.shift_factor).sample

    def reconstruct(self, images: torch.Tensor):
        return self.decode(self.encode(images)), None

    # ---- training -----------------------------------------------------------------------------
    def forward(self, batch: dict, step: int = 0, loss_module=None, **_) -> dict:
        x = batch["image"]
        post = self.vae.encode(x).latent_dist
        z = post.sample() if self.sample_posterior else post.mean
        xr = self.vae.decode(z).sample
        rec = F.l1_loss(xr, x) if self.recon_loss == "l1" else F.mse_loss(xr, x)
        kl = 0.5 * (post.mean.float().pow(2) + post.var.float() - 1.0 - post.logvar.float()).mean()
        out = {"rec": rec, "kl": kl}
        loss = rec + self.kl_weight * kl
        return self.finish_losses(out, loss, x, xr, step, loss_module)


    @torch.no_grad()
    def latent_statistics(self, batches) -> dict:
        """Mean and std of the raw posterior means over ``batches`` -> the scale/shift that normalise them."""
        total, sq, n = 0.0, 0.0, 0
        for batch in batches:
            z = self.vae.encode(batch["image"]).latent_dist.mean.double()
            total, sq, n = total + float(z.sum()), sq + float(z.pow(2).sum()), n + z.numel()
        mean = total / n
        std = max((sq / n - mean * mean) ** 0.5, 1e-8)
        return {"mean": mean, "std": std, "scale_factor": 1.0 / std, "shift_factor": mean, "elements": n}

    # ---- a diffusers VAE from a local folder --------------------------------------------------
    @classmethod
    def from_diffusers(cls, path: str, image_size: int = 256, **kwargs) -> "KLAutoencoder":
        """A diffusers-format AutoencoderKL folder (safetensors weights only) -> KLAutoencoder; its
        ``scaling_factor`` / ``shift_factor`` are kept unless given."""
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"kl: '{cfg_path}' does not exist (expected a diffusers AutoencoderKL folder)")
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        vae = AutoencoderKL.from_pretrained(path, use_safetensors=True, local_files_only=True)
        model = cls(image_size=image_size, in_channels=cfg.get("in_channels", 3),
                    block_out_channels=list(cfg["block_out_channels"]), layers_per_block=cfg.get("layers_per_block", 1),
                    latent_channels=cfg.get("latent_channels", 4), norm_num_groups=cfg.get("norm_num_groups", 32),
                    mid_attention=cfg.get("mid_block_add_attention", True),
                    attn_down_levels=[i for i, t in enumerate(cfg.get("down_block_types", ())) if t.startswith("Attn")],
                    scale_factor=kwargs.pop("scale_factor", cfg.get("scaling_factor") or 1.0),
                    shift_factor=kwargs.pop("shift_factor", cfg.get("shift_factor") or 0.0), **kwargs)
        model.vae.load_state_dict(vae.state_dict(), strict=True)
        return model.eval()
