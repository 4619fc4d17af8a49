"""TokenFlow: dual semantic/pixel codebook with a shared index, multi-scale residual quantisation.

    semantic ViT -> Linear-tanh-Linear -> d_sem  \\
                                                  concat -> multi-scale residual VQ (dual codebook,
    pixel conv encoder -> 1x1 conv -> d_pix      /           shared index, VAR scales, scale drop)
                                                      -> f_hat -> 1x1 conv -> pixel decoder -> image
                                                      -> f_hat[:d_sem] -> semantic decoder -> teacher features

Losses: pixel L1/L2 + w_vq * VQ (codebook + 0.25 commitment per half) + w_semantic * (1 - cos) between
the semantic decoder's output and the frozen teacher's patch features; optionally lpips_weight * LPIPS
(VGG-16 weights from ``lpips_path``) and, once the trainer starts the adversarial phase, gan_weight * a
PatchGAN hinge term (TokenFlow: LPIPS 1, GAN 0.5 after 20k steps). The teacher (``teacher``: a
local folder of a released ``vit_teacher``, or a pretrained part such as ``{type: clip_vision_projection, path:
DIR, post_layernorm: true, project: true}``) is loaded when training needs it, frozen, and is never part of
the tokenizer's weights. ``semantic_encoder`` (a pretrained vision part: CLIP, SigLIP, a timm ViTamin) replaces the
in-project ViT as the semantic tower; TokenFlow fine-tunes it (``frozen: false``: saved with the tokenizer).
Its token grid must equal the pixel encoder's. ``semantic=False`` gives the ablation's pixel-only VQ with the same code
budget (codebook size and scales).

Codes: one s x s map per scale, flattened in scale order (``scales``: the generator's token layout).

Options for the official layout (``vistok.convert.tokenflow``): ``decoder_input="pixel"`` (the pixel decoder
reads only the pixel half, as in TokenFlow's code; the default feeds it both halves), ``decoder_ch`` /
``decoder_res_blocks`` (TokenFlow's "enhanced" wider decoder), ``attn_last_level`` / ``downsample_pad``
(LlamaGen's conv layout), ``decode_only`` (codebooks + decoder: a converted checkpoint whose semantic tower
is not in vistok). Scale drop truncates to a prefix of scales (TokenFlow's code removes one random scale
after the first instead); both teach the decoder partial sums.
"""
from __future__ import annotations

import typing

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.modeling import VistokModel, freeze
from vistok.parts.base import LazyPart, as_spec, build_part
from vistok.nn.conv import Decoder, Encoder
from vistok.nn.vit import TransformerStack, ViT
from vistok.quantizers.dual import DualCodebook
from vistok.quantizers.multiscale import MultiScaleResidualVQ
from vistok.quantizers.vq import VQ
from vistok.registry import register_model
from vistok.tokenizers.base import ImageTokenizer
from vistok.schema import NonNegFloat, NonNegInt, PartSpec, PosFloat, PosInt, PosInts, Prob, Range


@register_model("tokenflow")
class TokenFlow(ImageTokenizer):

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
        semantic: bool = True,
        sem_patch: PosInt = 16,
        sem_dim: PosInt = 768,
        sem_depth: PosInt = 12,
        sem_heads: PosInt = 12,
        sem_decoder_depth: NonNegInt = 3,
        semantic_encoder: PartSpec = None,
        teacher: str | PartSpec = "",
        teacher_dim: PosInt = 768,
        codebook_size: PosInt = 32768,
        dim_sem: PosInt = 32,
        dim_pix: NonNegInt = 8,
        w_sem: NonNegFloat = 1.0,
        w_pix: NonNegFloat = 1.0,
        commitment_weight: NonNegFloat = 0.25,
        dead_code_threshold: NonNegFloat = 0.0,
        scales: PosInts = (1, 2, 4, 6, 8, 10, 12, 14, 16),
        scale_drop: Prob = 0.1,
        pixel_loss: str = "l2",
        w_vq: NonNegFloat = 1.0,
        w_semantic: NonNegFloat = 1.0,
        lpips_weight: NonNegFloat = 0.0,
        lpips_path: str = "",
        gan_weight: NonNegFloat = 0.0,
        disc_ch: PosInt = 64,
        disc_layers: PosInt = 3,
        disc_start: typing.Annotated[int, Range(-1)] = -1,
        disc_lr: PosFloat = 1e-4,
        decoder_input: str = "both",
        decoder_ch: NonNegInt = 0,
        decoder_res_blocks: NonNegInt = 0,
        decode_only: bool = False,
    ):
        super().__init__()
        grid = image_size // 2 ** (len(ch_mult) - 1)
        if scales[-1] != grid:
            raise ValueError(f"tokenflow: the last scale ({scales[-1]}) must equal the encoder grid {grid} "
                             f"(image_size {image_size}, ch_mult {list(ch_mult)})")
        if semantic and not decode_only and not semantic_encoder and image_size // sem_patch != grid:
            raise ValueError(f"tokenflow: semantic grid {image_size // sem_patch} (sem_patch {sem_patch}) != pixel grid {grid}")
        if decoder_input not in ("both", "pixel"):
            raise ValueError(f"tokenflow: decoder_input='{decoder_input}'; expected 'both' or 'pixel'")
        if pixel_loss not in ("l1", "l2"):
            raise ValueError(f"tokenflow: pixel_loss='{pixel_loss}'; expected 'l1' or 'l2'")
        self.image_size, self.in_channels, self.grid = image_size, in_channels, grid
        self.codebook_size, self.scales = codebook_size, list(scales)
        self.semantic, self.dim_sem = semantic, dim_sem if semantic else 0
        self.pixel_loss, self.w_vq, self.w_semantic = pixel_loss, w_vq, w_semantic
        self.lpips_weight, self.lpips_path = lpips_weight, lpips_path
        self.gan_weight, self.disc_args = gan_weight, dict(in_channels=in_channels, ch=disc_ch, num_layers=disc_layers, start=disc_start,
                              lr=disc_lr)
        self.teacher_path, self.decoder_input, self.decode_only = teacher, decoder_input, decode_only
        arch = dict(ch_mult=tuple(ch_mult), z_channels=z_channels, attn_mid=attn_mid, attn_last_level=attn_last_level)
        if not decode_only:
            self.pixel_encoder = Encoder(in_channels=in_channels, ch=ch, num_res_blocks=num_res_blocks,
                                         downsample_pad=downsample_pad, **arch)
            self.pixel_proj = nn.Conv2d(z_channels, dim_pix, 1)
        if semantic and not decode_only:
            self.semantic_encoder = self._semantic_tower(semantic_encoder, image_size, sem_patch, in_channels, sem_dim,
                                                         sem_depth, sem_heads)
            sem_dim = getattr(self.semantic_encoder, "out_dim", sem_dim)
            self.semantic_proj = nn.Sequential(nn.Linear(sem_dim, sem_dim), nn.Tanh(), nn.Linear(sem_dim, dim_sem))
            self.semantic_decoder = nn.Sequential(nn.Linear(dim_sem, sem_dim),
                                                  TransformerStack(sem_dim, sem_decoder_depth, sem_heads, grid),
                                                  nn.Linear(sem_dim, teacher_dim))
        if semantic:
            quant = DualCodebook(codebook_size, dim_sem, dim_pix, w_sem, w_pix, commitment_weight, dead_code_threshold)
        else:
            quant = VQ(dim_pix, codebook_size, l2_norm=True, ema=False, commitment_weight=commitment_weight,
                       dead_code_threshold=dead_code_threshold)
        self.quantizer = MultiScaleResidualVQ(quant, scales, scale_drop)
        self.post_quant = nn.Conv2d((self.dim_sem if decoder_input == "both" else 0) + dim_pix, z_channels, 1)
        self.decoder = Decoder(out_channels=in_channels, ch=decoder_ch or ch,
                               num_res_blocks=decoder_res_blocks or num_res_blocks, **arch)
        object.__setattr__(self, "_teacher", None)  # not a submodule: never in state_dict
        if isinstance(as_spec(teacher), dict):
            LazyPart(self, teacher, "teacher")

    def _semantic_tower(self, spec, image_size, patch, in_channels, dim, depth, heads):
        if not spec:
            return ViT(image_size, patch, in_channels, dim, depth, heads)
        tower = build_part(spec, "semantic_encoder")
        if tower.grid != self.grid:
            raise ValueError(f"tokenflow: model.semantic_encoder ({spec['type']} at '{spec['path']}') gives a "
                             f"{tower.grid}x{tower.grid} token grid at its {tower.image_size}-px input; the pixel encoder's "
                             f"grid is {self.grid}x{self.grid} (set the part's image_size, or model.image_size/ch_mult)")
        return tower

    @property
    def num_tokens(self) -> int:
        return self.quantizer.num_tokens

    # ---- the tokenizer interface --------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.decode_only:
            raise RuntimeError("tokenflow: this model was built decode_only (e.g. converted from an official checkpoint "
                               "without its CLIP/ViTamin/SigLIP tower): it decodes codes but cannot encode images")
        pix = self.pixel_proj(self.pixel_encoder(images))
        if not self.semantic:
            return pix
        tower = self.semantic_encoder
        tok = self.semantic_proj(tower.tokens(images) if hasattr(tower, "tokens") else tower(images))  # B,N,d_sem
        sem = tok.transpose(1, 2).reshape(images.shape[0], self.dim_sem, self.grid, self.grid)
        return torch.cat([sem, pix], 1)

    def quantize(self, images: torch.Tensor):
        return self.quantizer(self.features(images))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images -> codes B,L (the scales' code maps flattened in scale order)."""
        return self.quantizer.flatten(self.quantize(images)[1])

    def decode(self, codes: torch.Tensor, generator: torch.Generator | None = None, **options) -> torch.Tensor:
        """codes B,L (all scales) or a list of per-scale maps (a prefix decodes coarsely) -> images."""
        maps = self.quantizer.unflatten(codes) if torch.is_tensor(codes) else codes
        return self.decode_features(self.quantizer.decode_codes(maps))

    def decode_features(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Quantised features B,(d_sem+d_pix),H,W -> images (the pixel half only with decoder_input='pixel')."""
        if self.decoder_input == "pixel":
            f_hat = f_hat[:, self.dim_sem:]
        return self.decoder(self.post_quant(f_hat))

    def reconstruct(self, images: torch.Tensor):
        f_hat, codes, _ = self.quantize(images)
        return self.decode_features(f_hat), self.quantizer.flatten(codes)

    # ---- training -----------------------------------------------------------------------------
    def teacher(self):
        if self._teacher is None:
            t = self._load_teacher()
            object.__setattr__(self, "_teacher", t.to(next(self.parameters()).device))
        return self._teacher

    def _load_teacher(self):
        if not self.teacher_path:
            raise ValueError("tokenflow: semantic training needs a teacher: set model.teacher to a released "
                             "vit_teacher folder or a pretrained part (or model.w_semantic=0)")
        if "teacher" in self.__dict__.get("_lazy_parts", {}):
            t = self._lazy_parts["teacher"].get()
            dim, grid = t.out_dim, t.grid
        else:
            if not os.path.isdir(self.teacher_path):
                raise FileNotFoundError(f"tokenflow: teacher folder '{self.teacher_path}' does not exist (model.teacher)")
            t = freeze(VistokModel.from_pretrained(self.teacher_path))
            dim, grid = t.dim, t.grid
        expected = self.semantic_decoder[-1].out_features
        if dim != expected or grid != self.grid:
            raise ValueError(f"tokenflow: model.teacher gives {grid}x{grid} tokens of {dim} dims; the semantic decoder "
                             f"predicts {self.grid}x{self.grid} of model.teacher_dim={expected}")
        return t

    def forward(self, batch: dict, step: int = 0, loss_module=None, **_) -> dict:
        x = batch["image"]
        f_hat, _codes, vq_loss = self.quantize(x)
        xr = self.decode_features(f_hat)
        rec = F.l1_loss(xr, x) if self.pixel_loss == "l1" else F.mse_loss(xr, x)
        out = {"rec": rec, "vq": vq_loss}
        loss = rec + self.w_vq * vq_loss
        if self.semantic and self.w_semantic > 0:
            with torch.no_grad():
                target = self.teacher().tokens(x).float()
            sem_in = f_hat[:, : self.dim_sem].flatten(2).transpose(1, 2)
            pred = self.semantic_decoder(sem_in).float()
            out["semantic"] = (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
            loss = loss + self.w_semantic * out["semantic"]
        return self.finish_losses(out, loss, x, xr, step, loss_module)

    @torch.no_grad()
    def code_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Quantised features pooled over the grid (B, d_sem + d_pix): what a linear probe reads."""
        return self.quantize(images)[0].mean((2, 3))
