"""Official xAR checkpoints (OliverRensu/xAR ``xAR-{B,L,H}.pth``: a bare state dict, or MAR-style
``{"model": ..., "model_ema": ...}``) -> vistok's ``xar`` generator.

The released model is a MAR-style encoder/decoder of AdaLN blocks over 4 cells of 8 x 8 on the 16 x 16 x 16
KL-16 latents. It becomes an ``xar`` with ``entity=cell, cell=8``, ``encoder_depth`` = its encoder blocks, and
its conventions switched on: linear biases in attention and MLP (``bias``), a GELU-gated MLP (timm's SwiGLU with
``act_layer=nn.GELU``: ``mlp_act=gelu``), time embedded as int(1000 t) (``discrete_t``), and no final AdaLN
(``final_adaln=false``). Keys:

    z_proj, encoder_pos_embed_learned, z_proj_ln          -> in_proj, pos_emb, in_norm
    {encoder,decoder}_blocks.<i>                          -> blocks.<i> / blocks.<encoder_depth + i>
        attn.qkv, attn.proj                               -> attn.qkv, attn.proj
        mlp.fc1_g, mlp.fc1_x, mlp.fc2                     -> mlp.w12 = [fc1_g; fc1_x], mlp.w3
        ada_lin.1 (rows: gamma1 gamma2 scale1 scale2 shift1 shift2) -> ada (shift1 scale1 gamma1 shift2 scale2 gamma2)
        norm1, norm2 (no weight in the release)           -> weight 1
    encoder_norm, decoder_embed, decoder_pos_embed_learned -> mid_norm, mid_proj, pos_emb2
    decoder_norm, pred, class_emb, time_embed.mlp.{0,2}   -> norm, out, class_emb, t_mlp.{0,2}

Recomputed, not copied: the block-causal ``mask`` buffer and the rotary tables (``attn.rope.freqs_cos/sin``).
The release's rotary embedding is EVA's 2-D one (half of each head's interleaved pairs for the row, half for the
column, frequencies 10000^(-k/(head_dim/4))), which is what vistok's ``rope_angles`` computes; when the tables are
in the file they are checked against vistok's for every token, in cell order or in raster order, and a mismatch
is an error rather than a silently different model. Heads are not stored: 12 for 768 wide (B), 16 otherwise.
"""
from __future__ import annotations

import torch

from vistok.convert.common import Taker, count_indexed, load_converted, read_checkpoint
from vistok.registry import register_converter

HEADS = {768: 12, 1024: 16, 1280: 16}
ADA_ORDER = (4, 2, 0, 5, 3, 1)  # vistok's chunk k <- the release's chunk ADA_ORDER[k]


def _check_rope(state: dict, model, source: str) -> None:
    from vistok.nn.transformer import rope_angles

    cos = state.get("encoder_blocks.0.attn.rope.freqs_cos")
    if cos is None:
        return
    ang = rope_angles(model.positions, model.head_dim)  # N, head_dim / 2, in cell order
    ours = ang.cos().repeat_interleave(2, -1)
    h, w = model.layout.h, model.layout.w
    raster = torch.zeros_like(ours)
    raster[(model.positions[:, 0] * w + model.positions[:, 1]).long()] = ours
    if cos.shape != ours.shape or not (torch.allclose(cos.float(), ours, atol=1e-4) or torch.allclose(cos.float(), raster, atol=1e-4)):
        raise ValueError(f"{source}: its rotary table attn.rope.freqs_cos {tuple(cos.shape)} is not vistok's 2-D RoPE "
                         f"for a {h}x{w} grid with head_dim {model.head_dim}; the conversion would not be exact")


def _block(t: Taker, old: str, new: str, dim: int) -> None:
    t.copy(f"{old}.attn.qkv", f"{new}.attn.qkv")
    t.copy(f"{old}.attn.proj", f"{new}.attn.proj")
    for p in ("weight", "bias"):
        t.out[f"{new}.mlp.w12.{p}"] = torch.cat([t.get(f"{old}.mlp.fc1_g.{p}"), t.get(f"{old}.mlp.fc1_x.{p}")])
        t.out[f"{new}.mlp.w3.{p}"] = t.get(f"{old}.mlp.fc2.{p}")
        chunks = t.get(f"{old}.ada_lin.1.{p}").chunk(6)
        t.out[f"{new}.ada.{p}"] = torch.cat([chunks[i] for i in ADA_ORDER])
    for norm in ("norm1", "norm2"):
        t.out[f"{new}.{norm}.weight"] = t.get(f"{old}.{norm}.weight") if t.has(f"{old}.{norm}.weight") else torch.ones(dim)


def convert_xar(path: str, heads: int | None = None, steps: int = 40):
    from vistok.generators.xar import XARGenerator

    state = read_checkpoint(path)
    for key in ("z_proj.weight", "encoder_pos_embed_learned", "class_emb.weight", "pred.weight"):
        if key not in state:
            raise KeyError(f"{path}: missing key '{key}' (expected an official xAR checkpoint)")
    dim, channels = state["z_proj.weight"].shape[0], state["z_proj.weight"].shape[1]
    n = state["encoder_pos_embed_learned"].shape[1]
    enc, dec = count_indexed(state, "encoder_blocks"), count_indexed(state, "decoder_blocks")
    grid = int(round(n ** 0.5))
    clusters = state["mask"].shape[-1] // max(1, int((state["mask"][0, 0, 0] == 0).sum())) if "mask" in state else 4
    cell = grid // int(round(clusters ** 0.5))
    heads = heads or HEADS.get(int(dim))
    if heads is None:
        raise ValueError(f"{path}: width {dim} is not a released size {sorted(HEADS)}; pass heads=")
    num_classes = state["class_emb.weight"].shape[0] - 1  # the last row is the CFG null class (1000 in the release)
    model = XARGenerator(latent_shape=[int(channels), grid, grid], num_classes=int(num_classes), entity="cell", cell=cell,
                         dim=int(dim), depth=enc + dec, heads=heads, encoder_depth=enc, final_adaln=False, bias=True,
                         mlp_act="gelu", mlp_hidden=int(state["encoder_blocks.0.mlp.fc1_g.weight"].shape[0]),
                         discrete_t=True, steps=steps)
    _check_rope(state, model, path)
    t = Taker(state, path, ignore=("mask",) + tuple(f"{p}_blocks.{i}.attn.rope" for p, k in (("encoder", enc), ("decoder", dec))
                                                    for i in range(k)))
    t.copy("z_proj", "in_proj")
    t.out["pos_emb"] = t.get("encoder_pos_embed_learned")[0]
    t.out["in_norm.weight"] = t.get("z_proj_ln.weight")
    for i in range(enc):
        _block(t, f"encoder_blocks.{i}", f"blocks.{i}", dim)
    for i in range(dec):
        _block(t, f"decoder_blocks.{i}", f"blocks.{enc + i}", dim)
    t.out["mid_norm.weight"] = t.get("encoder_norm.weight")
    t.copy("decoder_embed", "mid_proj")
    t.out["pos_emb2"] = t.get("decoder_pos_embed_learned")[0]
    t.out["norm.weight"] = t.get("decoder_norm.weight")
    t.copy("pred", "out")
    t.out["class_emb.weight"] = t.get("class_emb.weight")
    t.copy("time_embed.mlp.0", "t_mlp.0")
    t.copy("time_embed.mlp.2", "t_mlp.2")
    return load_converted(model, t.finish(), path)


@register_converter("xar")
class XARConverter:
    help = "the official xAR generators (+ MAR's KL-16) -> kl + xar"

    @staticmethod
    def add_arguments(p) -> None:
        from vistok.convert.mar import KL16Converter

        KL16Converter.add_arguments(p)
        p.add_argument("--ckpt", required=True, help="xAR generator checkpoint (xAR-B.pth ...)")
        p.add_argument("--heads", type=int, help="attention heads (default from the width: B 12, L/H 16)")

    @staticmethod
    def convert(args) -> tuple[dict, dict, dict]:
        from vistok.convert.mar import KL16Converter

        comps, sources, info = KL16Converter.convert(args)
        comps["generator"], sources["generator"] = convert_xar(args.ckpt, heads=args.heads), args.ckpt
        return comps, sources, info
