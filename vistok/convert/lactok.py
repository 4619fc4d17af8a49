"""LaCToK's released Layton tokenizer (``LaCTok-T.pth``: one ``{'model': state_dict}``) -> a ``layton`` release.

Their state dict holds the whole model: the LlamaGen VQ-16 encoder (``encoder.*``, ``quant_conv``, the codebook
``quantize.embedding.weight`` 16384 x 8; ``post_quant_conv`` and ``quantize.codebook_used`` are unused at
inference), the ControlNet (``decoder.controlnet.*``, diffusers names, with the stride-1 conditioning embedding
``controlnet_cond_embedding.{conv_in, blocks.0-5, conv_out}``), the peft-wrapped SDXL UNet
(``decoder.unet.base_model.model.<key>``: targeted layers as ``<layer>.base_layer`` + ``<layer>.lora_A.default`` /
``lora_B.default``) and the SDXL VAE (``vae.*``). vistok keeps the base UNet and the VAE in the user's SDXL folder
(``--sdxl``: ``unet/`` and ``vae/`` subfolders), so the converter checks that the checkpoint's copies equal the
folder's (LaCToK trains only the adapters over a frozen base) and refuses one that differs; the adapters, the
ControlNet and the VQ encoder go into the release. LoRA: the rank is read from the adapters; alpha is peft's default
8 (LaCToK sets none). Decoding defaults are LaCToK's: stage 2, 3 steps at t = 999, 499, 124, ``cond_scale`` 0.8.
"""
from __future__ import annotations

import torch

from vistok.convert.common import Taker, load_converted, read_checkpoint
from vistok.convert.llamagen import take_encoder, vq_arguments
from vistok.registry import register_converter

UNET, CONTROLNET = "decoder.unet.base_model.model.", "decoder.controlnet."


def cond_channels(state: dict, source: str) -> list[int]:
    """The stride-1 conditioning embedding's widths (8, 32, 96, 256) from its conv shapes."""
    pre = CONTROLNET + "controlnet_cond_embedding."
    if pre + "conv_in.weight" not in state:
        raise KeyError(f"{source}: missing key '{pre}conv_in.weight' (expected a LaCToK ControlNet)")
    widths = [state[pre + "conv_in.weight"].shape[0]]
    i = 1
    while pre + f"blocks.{i}.weight" in state:
        widths.append(state[pre + f"blocks.{i}.weight"].shape[0])
        i += 2
    return widths


def lora_rank(state: dict, source: str) -> int:
    ranks = {v.shape[0] for k, v in state.items() if k.startswith(UNET) and ".lora_A." in k}
    if len(ranks) != 1:
        raise ValueError(f"{source}: expected LoRA adapters of one rank under '{UNET}', found ranks {sorted(ranks)}")
    return ranks.pop()


def check_frozen_copy(t: Taker, prefix: str, own: dict, what: str, atol: float) -> int:
    """Take ``prefix + key`` for every tensor in ``own`` (the folder's) and check they are equal; returns the count."""
    for key, ref in own.items():
        got = t.get(prefix + key)
        if got.shape != ref.shape or not torch.allclose(got.float(), ref.float(), atol=atol, rtol=0):
            diff = (got.float() - ref.float()).abs().max() if got.shape == ref.shape else "shape"
            raise ValueError(f"{t.source}: '{prefix}{key}' differs from the {what} in --sdxl (max |diff| {diff}); "
                             f"vistok keeps the base {what} in its folder, so it must be the one LaCToK trained over")
    return len(own)


def convert_lactok(path: str, sdxl: str, image_size: int = 1024, vq_image_size: int = 256, lora_alpha: float = 8.0,
                   atol: float = 1e-6):
    from vistok.tokenizers.layton import Layton

    state = read_checkpoint(path)
    vq = vq_arguments(state, path, vq_image_size)
    model = Layton(image_size=image_size, in_channels=vq["in_channels"], stage=2, vq=vq,
                   vae={"type": "autoencoder_kl", "path": sdxl, "subfolder": "vae"},
                   unet={"type": "unet2d_condition", "path": sdxl, "subfolder": "unet",
                         "lora": {"r": lora_rank(state, path), "alpha": lora_alpha}},
                   cond_embedding_channels=cond_channels(state, path), decode_steps=3, cond_scale=0.8)
    t = Taker(state, path, ignore=("quantize.codebook_used", "post_quant_conv"))
    take_encoder(t, vq, ours="vq.")
    for key in [k for k in t.state if k.startswith(CONTROLNET)]:
        t.out["controlnet." + key[len(CONTROLNET):]] = t.get(key)
    for key in [k for k in t.state if k.startswith(UNET) and ".lora_" in k]:
        t.out["unet.model." + key[len(UNET):]] = t.get(key)
    base = {k: v for k, v in model.unet.model.state_dict().items() if ".lora_" not in k}
    counts = {"unet_base": check_frozen_copy(t, UNET, base, "UNet", atol),
              "vae": check_frozen_copy(t, "vae.", model.vae.model.state_dict(), "VAE", atol)}
    return load_converted(model, t.finish(), path), counts


@register_converter("lactok")
class LaCToKConverter:
    help = "LaCToK's Layton tokenizer (LaCTok-T.pth) over a local SDXL folder -> a layton release"

    @staticmethod
    def add_arguments(p) -> None:
        p.add_argument("--ckpt", required=True, help="LaCTok-T.pth ({'model': state_dict}, read weights-only)")
        p.add_argument("--sdxl", required=True, help="a local copy of stabilityai/stable-diffusion-xl-base-1.0 "
                                                     "(unet/ and vae/ subfolders)")
        p.add_argument("--image-size", type=int, default=1024, help="the decoded images' size")
        p.add_argument("--vq-image-size", type=int, default=256, help="the VQ encoder's input size (16 x 16 codes)")
        p.add_argument("--lora-alpha", type=float, default=8.0, help="peft's default, which LaCToK uses")

    @staticmethod
    def convert(args) -> tuple[dict, dict, dict]:
        model, counts = convert_lactok(args.ckpt, args.sdxl, args.image_size, args.vq_image_size, args.lora_alpha)
        return {"tokenizer": model}, {"tokenizer": args.ckpt}, {"checked_against_sdxl": counts}
