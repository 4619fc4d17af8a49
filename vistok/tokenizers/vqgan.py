"""Plain pixel VQ tokenizer: conv encoder -> 1x1 projection -> VQ -> 1x1 projection -> conv decoder.

Losses: L1 or L2 reconstruction + VQ (commitment, and codebook when it is learnt by gradients) and,
in the adversarial phase the trainer switches on, a PatchGAN hinge generator term.
Defaults are LlamaGen's VQ-16 (ch 128, ch_mult 1,1,2,2,4, 16384 l2-normalised codes of dim 8).
"""
from __future__ import annotations

import typing

import torch
import torch.nn.functional as F

from vistok.nn.conv import Decoder, Encoder
from vistok.quantizers.vq import VQ
from vistok.registry import register_model
from vistok.tokenizers.base import ImageTokenizer
from vistok.schema import Decay, NonNegFloat, PosFloat, PosInt, PosInts, Prob, Range


def encoder_modules(in_channels: int, downsample_pad: str, arch: dict, codebook_size: int, codebook_dim: int,
                    vq: dict) -> tuple:
    """The encoding half of a VQGAN: (conv encoder, 1x1 projection to the code dimension, quantiser)."""
    encoder = Encoder(in_channels=in_channels, downsample_pad=downsample_pad, **arch)
    return encoder, torch.nn.Conv2d(arch["z_channels"], codebook_dim, 1), VQ(codebook_dim, codebook_size, **vq)


class VQEncoder(torch.nn.Module):
    """A VQGAN without its decoder (Layton's tokenizer decodes its codes otherwise): the same module names
    (``encoder``, ``quant_conv``, ``quantizer``) and arguments, so a ``vqgan`` release's weights fill it
    (``train.init_modules``). ``token_shape`` is the code grid of an ``image_size`` input."""

    def __init__(self, image_size: PosInt = 256, in_channels: PosInt = 3, ch: PosInt = 128,
                 ch_mult: PosInts = (1, 1, 2, 2, 4), num_res_blocks: PosInt = 2, z_channels: PosInt = 256,
                 attn_mid: bool = True, attn_last_level: bool = False, downsample_pad: str = "symmetric",
                 dropout: Prob = 0.0, codebook_size: PosInt = 16384, codebook_dim: PosInt = 8, l2_norm: bool = True,
                 ema: bool = True, decay: Decay = 0.99, kmeans_init: bool = False,
                 dead_code_threshold: NonNegFloat = 0.0, commitment_weight: NonNegFloat = 0.25):
        super().__init__()
        factor = 2 ** (len(ch_mult) - 1)
        if image_size % factor:
            raise ValueError(f"vq: image_size {image_size} is not divisible by the downsampling factor {factor} "
                             f"(ch_mult {list(ch_mult)})")
        self.image_size, self.in_channels, self.codebook_size = image_size, in_channels, codebook_size
        self.codebook_dim, self.token_shape = codebook_dim, (image_size // factor, image_size // factor)
        arch = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, z_channels=z_channels,
                    attn_mid=attn_mid, dropout=dropout, attn_last_level=attn_last_level)
        self.encoder, self.quant_conv, self.quantizer = encoder_modules(
            in_channels, downsample_pad, arch, codebook_size, codebook_dim,
            dict(l2_norm=l2_norm, ema=ema, decay=decay, kmeans_init=kmeans_init,
                 dead_code_threshold=dead_code_threshold, commitment_weight=commitment_weight))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images B,C,H,W in [-1, 1] -> codes B,h,w (int64)."""
        return self.quantizer(self.quant_conv(self.encoder(images)))[1]

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes B,h,w -> their (l2-normalised, when the codebook is) code vectors B,codebook_dim,h,w."""
        return self.quantizer.lookup(codes)


@register_model("vqgan")
class VQGAN(ImageTokenizer):

    def __init__(
        self,
        image_size: PosInt = 256,
        in_channels: PosInt = 3,
        ch: PosInt = 128,
        ch_mult: PosInts = (1, 1, 2, 2, 4),
        num_res_blocks: PosInt = 2,
        z_channels: PosInt = 256,
        attn_mid: bool = True,
        attn_last_level: bool = False,
        downsample_pad: str = "symmetric",
        dropout: Prob = 0.0,
        codebook_size: PosInt = 16384,
        codebook_dim: PosInt = 8,
        l2_norm: bool = True,
        ema: bool = True,
        decay: Decay = 0.99,
        kmeans_init: bool = False,
        dead_code_threshold: NonNegFloat = 0.0,
        commitment_weight: NonNegFloat = 0.25,
        recon_loss: str = "l2",
        gan_weight: NonNegFloat = 0.0,
        lpips_weight: NonNegFloat = 0.0,
        lpips_path: str = "",
        disc_ch: PosInt = 64,
        disc_layers: PosInt = 3,
        disc_start: typing.Annotated[int, Range(-1)] = -1,
        disc_lr: PosFloat = 1e-4,
    ):
        super().__init__()
        if recon_loss not in ("l1", "l2"):
            raise ValueError(f"vqgan: recon_loss='{recon_loss}'; expected 'l1' or 'l2'")
        factor = 2 ** (len(ch_mult) - 1)
        if image_size % factor:
            raise ValueError(f"vqgan: image_size {image_size} is not divisible by the downsampling factor {factor} (ch_mult {list(ch_mult)})")
        self.image_size, self.in_channels, self.codebook_size = image_size, in_channels, codebook_size
        self.token_shape = (image_size // factor, image_size // factor)
        self.recon_loss, self.gan_weight = recon_loss, gan_weight
        self.lpips_weight, self.lpips_path = lpips_weight, lpips_path
        self.disc_args = dict(in_channels=in_channels, ch=disc_ch, num_layers=disc_layers, start=disc_start,
                              lr=disc_lr)
        arch = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, z_channels=z_channels,
                    attn_mid=attn_mid, dropout=dropout, attn_last_level=attn_last_level)
        self.encoder, self.quant_conv, self.quantizer = encoder_modules(
            in_channels, downsample_pad, arch, codebook_size, codebook_dim,
            dict(l2_norm=l2_norm, ema=ema, decay=decay, kmeans_init=kmeans_init,
                 dead_code_threshold=dead_code_threshold, commitment_weight=commitment_weight))
        self.decoder = Decoder(out_channels=in_channels, **arch)
        self.post_quant_conv = torch.nn.Conv2d(codebook_dim, z_channels, 1)

    # ---- the tokenizer interface ------------------------------------------------------------
    def quantize(self, images: torch.Tensor):
        return self.quantizer(self.quant_conv(self.encoder(images)))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images B,C,H,W in [-1, 1] -> codes B,h,w (int64)."""
        return self.quantize(images)[1]

    def decode(self, codes: torch.Tensor, generator: torch.Generator | None = None, **options) -> torch.Tensor:
        """codes B,h,w -> images B,C,H,W (model range, about [-1, 1])."""
        return self.decoder(self.post_quant_conv(self.quantizer.lookup(codes)))

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zq, codes, _ = self.quantize(images)
        return self.decoder(self.post_quant_conv(zq)), codes

    # ---- training -----------------------------------------------------------------------------
    def forward(self, batch: dict, step: int = 0, loss_module=None, **_) -> dict:
        x = batch["image"]
        zq, codes, vq_loss = self.quantize(x)
        xr = self.decoder(self.post_quant_conv(zq))
        rec = F.l1_loss(xr, x) if self.recon_loss == "l1" else F.mse_loss(xr, x)
        out = {"rec": rec, "vq": vq_loss}
        loss = rec + vq_loss
        return self.finish_losses(out, loss, x, xr, step, loss_module)

