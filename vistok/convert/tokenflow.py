"""TokenFlow (ByteFlow-AI/TokenFlow) tokenizer checkpoints -> a ``tokenflow`` that decodes their codes.

Official keys: ``encoder.*`` / ``decoder.*`` (LlamaGen's conv layout; the "enhanced" decoder is wider),
``quant_conv`` / ``post_quant_conv`` (pixel half only), ``quantize.embedding_vqkd`` / ``embedding_vqgan``
(the semantic and pixel codebooks that share one index), ``encode_task_layer`` / ``decode_task_layer``,
``encoder_vqkd.*`` (the CLIP ViT-B/16, ViTamin-XL or SigLIP-SO400M tower) and ``decoder_vqkd.*`` (a
BEiT-style ViT that reconstructs the teacher's features).

Converted exactly: the codebooks, the scales' residual sum (bicubic up to the last scale) and the pixel
decoder, i.e. everything a generator's codes go through. Not converted: the semantic tower and its
feature decoder, which vistok does not implement in their architectures; they are reported, and the
model is built ``decode_only`` (encoding raises a clear error instead of using random weights).
The scales are not in the weights: TokenFlow's code uses [1,2,4,6,8,10,12,14] for the CLIP teacher (224 px),
[1,2,4,6,8,10,12,14,16] for ViTamin (256 px), [1,2,3,4,5,6,7,8,9,10,12,14,17,22,27] for SigLIP (384 px).
"""
from __future__ import annotations

from vistok.convert import conv_stack
from vistok.convert.common import Taker, count_indexed, load_converted, read_checkpoint
from vistok.registry import register_converter

SCALES = {
    "clipb": [1, 2, 4, 6, 8, 10, 12, 14],
    "vitamin": [1, 2, 4, 6, 8, 10, 12, 14, 16],
    "siglip": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 17, 22, 27],
}
NOT_CONVERTED = ("encoder_vqkd", "decoder_vqkd", "decode_task_layer", "encoder", "quant_conv", "encode_task_layer")


def decoder_arch(state: dict, enc: dict) -> dict:
    levels = len(enc["ch_mult"])
    ch = state["decoder.conv_in.weight"].shape[0] // enc["ch_mult"][-1]
    return dict(enc, ch=ch, num_res_blocks=count_indexed(state, "decoder.conv_blocks.0.res") - 1,
                attn_last_level="decoder.conv_blocks.0.attn.0.q.weight" in state, ch_mult=enc["ch_mult"][:levels])


def convert_tokenflow(path: str, scales: list[int] | None = None, teacher: str | None = None):
    """-> (decode-only TokenFlow, {"not_converted": [key prefixes with counts]})."""
    from vistok.tokenizers.tokenflow import TokenFlow

    if scales is None:
        teacher = teacher or next((k for k in SCALES if k in path.lower()), None)
        if teacher is None:
            raise ValueError(f"{path}: the scales are not stored in the checkpoint and the file name names no teacher "
                             f"({'/'.join(SCALES)}); pass scales")
        scales = SCALES[teacher]
    state = read_checkpoint(path)
    for key in ("quantize.embedding_vqkd.weight", "quantize.embedding_vqgan.weight", "post_quant_conv.weight"):
        if key not in state:
            raise KeyError(f"{path}: missing key '{key}' (expected a TokenFlow tokenizer checkpoint)")
    enc = conv_stack.infer_arch(state, path)
    dec = decoder_arch(state, enc)
    codebook_size, dim_sem = state["quantize.embedding_vqkd.weight"].shape
    dim_pix = state["quantize.embedding_vqgan.weight"].shape[1]
    grid = scales[-1]
    model = TokenFlow(image_size=grid * 2 ** (len(enc["ch_mult"]) - 1), in_channels=enc["in_channels"], ch=enc["ch"],
                      ch_mult=enc["ch_mult"], num_res_blocks=enc["num_res_blocks"], z_channels=enc["z_channels"],
                      attn_mid=enc["attn_mid"], attn_last_level=enc["attn_last_level"], downsample_pad="asymmetric",
                      semantic=True, codebook_size=codebook_size, dim_sem=dim_sem, dim_pix=dim_pix, scales=scales,
                      decoder_input="pixel", decoder_ch=dec["ch"], decoder_res_blocks=dec["num_res_blocks"],
                      decode_only=True)
    t = Taker(state, path, ignore=NOT_CONVERTED + ("quantize.codebook_used",))
    conv_stack.decoder(t, dec)
    t.copy("post_quant_conv", "post_quant")
    t.out["quantizer.quantizer.embed_sem"] = t.get("quantize.embedding_vqkd.weight")
    t.out["quantizer.quantizer.embed_pix"] = t.get("quantize.embedding_vqgan.weight")
    skipped = {}
    for k in t.state:
        top = k.split(".")[0]
        skipped[top] = skipped.get(top, 0) + 1
    model = load_converted(model, t.finish(), path)
    return model, {"not_converted": skipped, "scales": scales}


@register_converter("tokenflow")
class TokenFlowConverter:
    help = "TokenFlow tokenizers -> tokenflow (decodes codes exactly; the CLIP tower is not converted)"

    @staticmethod
    def add_arguments(p) -> None:
        p.add_argument("--ckpt", required=True, help="TokenFlow tokenizer checkpoint")
        p.add_argument("--scales", type=int, nargs="+", help="the scales (default from the file name's teacher)")

    @staticmethod
    def convert(args) -> tuple[dict, dict, dict]:
        tokenizer, info = convert_tokenflow(args.ckpt, scales=args.scales)
        return {"tokenizer": tokenizer}, {"tokenizer": args.ckpt}, info
