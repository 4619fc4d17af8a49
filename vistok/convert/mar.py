"""MAR's KL-16 VAE (LTH14/mar ``kl16.ckpt``, ``{"model": state_dict}``; LDM's KL autoencoder layout) -> ``kl``.

LDM names -> diffusers ``AutoencoderKL`` names inside vistok's ``KLAutoencoder.vae``:

    encoder.down.<i>.block.<j>.{norm1,conv1,norm2,conv2,nin_shortcut}  -> encoder.down_blocks.<i>.resnets.<j>.{..., conv_shortcut}
    encoder.down.<i>.attn.<j>.{norm,q,k,v,proj_out}   (1x1 convs)       -> encoder.down_blocks.<i>.attentions.<j>.{group_norm,to_q,to_k,to_v,to_out.0} (linears)
    encoder.down.<i>.downsample.conv                                    -> encoder.down_blocks.<i>.downsamplers.0.conv
    {encoder,decoder}.mid.{block_1,attn_1,block_2}                      -> mid_block.{resnets.0,attentions.0,resnets.1}
    decoder.up.<i>.block.<j> / .upsample.conv                           -> decoder.up_blocks.<L-1-i>.resnets.<j> / .upsamplers.0.conv
    {encoder,decoder}.norm_out, quant_conv, post_quant_conv             -> conv_norm_out, quant_conv, post_quant_conv

The architecture (channels, levels, resnets per level, which encoder levels attend, latent channels) is read
from the weights; MAR's KL-16 is ch 128, ch_mult (1, 1, 2, 2, 4), 2 resnets, attention at the 16 x 16 level,
16 latent channels. Both compute the same function: diffusers' Downsample2D pads (0, 1, 0, 1) as LDM does, its
single-head attention scales by C^-1/2 as LDM's, the posterior's log-variance is clamped to [-30, 20] in both.
``scale_factor`` is MAR's 0.2325 (latents = posterior * 0.2325) unless given; re-measure it on your data with
``scripts/latent_scale.py`` if it differs.
"""
from __future__ import annotations

from vistok.convert.common import Taker, count_indexed, load_converted, read_checkpoint
from vistok.registry import register_converter

MAR_SCALE = 0.2325


def infer_arch(state: dict, source: str) -> dict:
    for key in ("encoder.conv_in.weight", "decoder.conv_in.weight", "post_quant_conv.weight", "quant_conv.weight"):
        if key not in state:
            raise KeyError(f"{source}: missing key '{key}' (expected an LDM / MAR KL autoencoder state dict)")
    levels = count_indexed(state, "encoder.down")
    return {
        "block_out_channels": [int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in range(levels)],
        "layers_per_block": count_indexed(state, "encoder.down.0.block"),
        "latent_channels": int(state["post_quant_conv.weight"].shape[0]),
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "attn_down_levels": [i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state],
        "mid_attention": "encoder.mid.attn_1.q.weight" in state,
        "norm_num_groups": 32,
    }


def _resnet(t: Taker, old: str, new: str) -> None:
    for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2")):
        t.copy(f"{old}.{a}", f"{new}.{b}")
    if t.has(f"{old}.nin_shortcut.weight"):
        t.copy(f"{old}.nin_shortcut", f"{new}.conv_shortcut")


def _attn(t: Taker, old: str, new: str) -> None:
    t.copy(f"{old}.norm", f"{new}.group_norm")
    for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        t.out[f"{new}.{b}.weight"] = t.get(f"{old}.{a}.weight").flatten(1)  # 1x1 conv -> linear
        t.out[f"{new}.{b}.bias"] = t.get(f"{old}.{a}.bias")


def _mid(t: Taker, part: str, attention: bool) -> None:
    _resnet(t, f"{part}.mid.block_1", f"vae.{part}.mid_block.resnets.0")
    _resnet(t, f"{part}.mid.block_2", f"vae.{part}.mid_block.resnets.1")
    if attention:
        _attn(t, f"{part}.mid.attn_1", f"vae.{part}.mid_block.attentions.0")


def convert_kl16(path: str, image_size: int = 256, scale_factor: float = MAR_SCALE, shift_factor: float = 0.0):
    from vistok.tokenizers.kl import KLAutoencoder

    state = read_checkpoint(path)
    arch = infer_arch(state, path)
    n, per = len(arch["block_out_channels"]), arch["layers_per_block"]
    t = Taker(state, path, ignore=("loss",))  # LDM training checkpoints may carry the LPIPS/discriminator loss
    t.copy("encoder.conv_in", "vae.encoder.conv_in")
    for i in range(n):
        for j in range(per):
            _resnet(t, f"encoder.down.{i}.block.{j}", f"vae.encoder.down_blocks.{i}.resnets.{j}")
            if i in arch["attn_down_levels"]:
                _attn(t, f"encoder.down.{i}.attn.{j}", f"vae.encoder.down_blocks.{i}.attentions.{j}")
        if i < n - 1:
            t.copy(f"encoder.down.{i}.downsample.conv", f"vae.encoder.down_blocks.{i}.downsamplers.0.conv")
    _mid(t, "encoder", arch["mid_attention"])
    t.copy("encoder.norm_out", "vae.encoder.conv_norm_out")
    t.copy("encoder.conv_out", "vae.encoder.conv_out")
    t.copy("quant_conv", "vae.quant_conv")
    t.copy("post_quant_conv", "vae.post_quant_conv")
    t.copy("decoder.conv_in", "vae.decoder.conv_in")
    _mid(t, "decoder", arch["mid_attention"])
    for i in range(n):  # LDM's up[i] runs at level i; diffusers' up_blocks run from the lowest resolution
        for j in range(per + 1):
            _resnet(t, f"decoder.up.{i}.block.{j}", f"vae.decoder.up_blocks.{n - 1 - i}.resnets.{j}")
        if i > 0:
            t.copy(f"decoder.up.{i}.upsample.conv", f"vae.decoder.up_blocks.{n - 1 - i}.upsamplers.0.conv")
    t.copy("decoder.norm_out", "vae.decoder.conv_norm_out")
    t.copy("decoder.conv_out", "vae.decoder.conv_out")
    model = KLAutoencoder(image_size=image_size, scale_factor=scale_factor, shift_factor=shift_factor, **arch)
    return load_converted(model, t.finish(), path)


@register_converter("mar-kl16")
class KL16Converter:
    help = "MAR's KL-16 VAE -> kl"

    @staticmethod
    def add_arguments(p) -> None:
        p.add_argument("--vae", required=True, help="MAR's KL-16 VAE checkpoint (kl16.ckpt)")
        p.add_argument("--vae-scale", type=float, default=MAR_SCALE, help="KL-16 latent scale (MAR: 0.2325)")
        p.add_argument("--image-size", type=int, default=256, help="the training resolution")

    @staticmethod
    def convert(args) -> tuple[dict, dict, dict]:
        return ({"tokenizer": convert_kl16(args.vae, image_size=args.image_size, scale_factor=args.vae_scale)},
                {"tokenizer": args.vae}, {})
