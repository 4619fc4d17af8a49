"""LlamaGen (FoundationVision/LlamaGen) checkpoints -> vistok models.

VQ tokenizers (``vq_ds16_c2i.pt``, ``vq_ds8_c2i.pt``; ``{"model": state_dict}``) become a ``vqgan`` with
``attn_last_level=True``, ``downsample_pad="asymmetric"`` and an l2-normalised codebook learnt by gradients:
the same computation, so codes and decodings match LlamaGen's.

Class-conditional GPTs (``c2i_{B,L,XL,XXL}_*.pt``) become an ``ar`` generator: ``tok_embeddings``,
``cls_embedding.embedding_table`` (the last row is the CFG null class, as in vistok), ``layers.<i>``
(``attention.wqkv``/``wo``, ``feed_forward.w1``/``w2``/``w3``, ``attention_norm``, ``ffn_norm``), ``norm``,
``output``. The MLP width is read from the weights; heads are ``dim // head_dim`` (64 for every released
size). LlamaGen's conventions are switched on in the converted model: ``cond_rope="zero"`` (its rotary
cache is zero for the class token, which zeroes that token's query and key) and ``norm_eps=1e-5``; its code
positions start at (0, 0) where vistok's start at (1, 1), which RoPE cannot see (only differences enter
attention between codes). The test checks the converted model's logits against LlamaGen's formulas.
"""
from __future__ import annotations

import math

import torch

from vistok.convert import conv_stack
from vistok.convert.common import Taker, count_indexed, load_converted, read_checkpoint
from vistok.registry import register_converter


def vq_arguments(state: dict, path: str, image_size: int) -> dict:
    """The ``vqgan`` / ``VQEncoder`` arguments of a LlamaGen VQ state dict (also LaCToK's): read from the shapes."""
    arch = conv_stack.infer_arch(state, path)
    if "quantize.embedding.weight" not in state:
        raise KeyError(f"{path}: missing key 'quantize.embedding.weight' (the LlamaGen codebook)")
    codebook_size, codebook_dim = state["quantize.embedding.weight"].shape
    return dict(image_size=image_size, downsample_pad="asymmetric", codebook_size=codebook_size,
                codebook_dim=codebook_dim, l2_norm=True, ema=False, **arch)


def take_encoder(t: Taker, vq: dict, ours: str = "") -> None:
    """The encoding half (encoder, quant_conv, codebook) into ``ours``-prefixed vistok names."""
    conv_stack.encoder(t, vq, ours=ours + "encoder")
    t.copy("quant_conv", ours + "quant_conv")
    t.out[ours + "quantizer.vq.embedding"] = t.get("quantize.embedding.weight")


def convert_vq(path: str, image_size: int = 256):
    from vistok.tokenizers.vqgan import VQGAN

    state = read_checkpoint(path)
    vq = vq_arguments(state, path, image_size)
    model = VQGAN(**vq)
    t = Taker(state, path, ignore=("quantize.codebook_used",))
    take_encoder(t, vq)
    conv_stack.decoder(t, vq)
    t.copy("post_quant_conv", "post_quant_conv")
    return load_converted(model, t.finish(), path)


def convert_gpt(path: str, head_dim: int = 64, grid: int | None = None):
    from vistok.generators.ar import ARGenerator

    state = read_checkpoint(path)
    for key in ("tok_embeddings.weight", "cls_embedding.embedding_table.weight", "output.weight"):
        if key not in state:
            raise KeyError(f"{path}: missing key '{key}' (expected a LlamaGen class-conditional GPT)")
    vocab, dim = state["tok_embeddings.weight"].shape
    depth = count_indexed(state, "layers")
    hidden = state["layers.0.feed_forward.w1.weight"].shape[0]
    qkv_rows = state["layers.0.attention.wqkv.weight"].shape[0]
    if qkv_rows != 3 * dim:
        raise ValueError(f"{path}: layers.0.attention.wqkv has {qkv_rows} rows, expected 3 x dim = {3 * dim} "
                         f"(grouped-query attention is not supported)")
    if grid is None:
        if "freqs_cis" not in state:
            raise ValueError(f"{path}: no 'freqs_cis' to read the token grid from; pass grid")
        cls_tokens = 1
        grid = math.isqrt(state["freqs_cis"].shape[0] - cls_tokens)
    model = ARGenerator(vocab_size=vocab, token_shape=[grid, grid],
                        num_classes=state["cls_embedding.embedding_table.weight"].shape[0] - 1,
                        dim=dim, depth=depth, heads=dim // head_dim, mlp_ratio=hidden / dim, rope="2d",
                        cond_rope="zero", norm_eps=1e-5)
    t = Taker(state, path, ignore=("freqs_cis",))
    t.out["tok_emb.weight"] = t.get("tok_embeddings.weight")
    t.out["class_emb.weight"] = t.get("cls_embedding.embedding_table.weight")
    for i in range(depth):
        o, v = f"layers.{i}", f"blocks.{i}"
        t.out[f"{v}.norm1.weight"] = t.get(f"{o}.attention_norm.weight")
        t.out[f"{v}.attn.qkv.weight"] = t.get(f"{o}.attention.wqkv.weight")
        t.out[f"{v}.attn.proj.weight"] = t.get(f"{o}.attention.wo.weight")
        t.out[f"{v}.norm2.weight"] = t.get(f"{o}.ffn_norm.weight")
        # SwiGLU: w2(silu(w1 x) * w3 x); vistok fuses [w1; w3] into w12 and calls the output projection w3
        t.out[f"{v}.mlp.w12.weight"] = torch.cat([t.get(f"{o}.feed_forward.w1.weight"),
                                                  t.get(f"{o}.feed_forward.w3.weight")], 0)
        t.out[f"{v}.mlp.w3.weight"] = t.get(f"{o}.feed_forward.w2.weight")
    t.out["norm.weight"] = t.get("norm.weight")
    t.out["head.weight"] = t.get("output.weight")
    return load_converted(model, t.finish(), path)


@register_converter("llamagen")
class LlamaGenConverter:
    help = "LlamaGen VQ-16/VQ-8 (+ a class-conditional GPT) -> vqgan (+ ar)"

    @staticmethod
    def add_arguments(p) -> None:
        p.add_argument("--vq", required=True, help="LlamaGen VQ checkpoint (.pt / .safetensors)")
        p.add_argument("--gpt", help="LlamaGen class-conditional GPT checkpoint")
        p.add_argument("--image-size", type=int, default=256, help="the VQ's training resolution")
        p.add_argument("--head-dim", type=int, default=64, help="GPT: dim per head (64 for B/L/XL/XXL/3B)")

    @staticmethod
    def convert(args) -> tuple[dict, dict, dict]:
        comps = {"tokenizer": convert_vq(args.vq, image_size=args.image_size)}
        if args.gpt:
            comps["generator"] = convert_gpt(args.gpt, head_dim=args.head_dim)
        return comps, {"tokenizer": args.vq, **({"generator": args.gpt} if args.gpt else {})}, {}
