"""TokenFlow (ByteFlow-AI/TokenFlow) tokenizer checkpoints -> a ``tokenflow`` that decodes their codes and, given
the semantic tower's architecture folder, encodes images as well.

Official keys: ``encoder.*`` / ``decoder.*`` (LlamaGen's conv layout; the "enhanced" decoder is wider),
``quant_conv`` / ``post_quant_conv`` (pixel half only), ``quantize.embedding_vqkd`` / ``embedding_vqgan``
(the semantic and pixel codebooks that share one index), ``encode_task_layer`` / ``decode_task_layer``,
``encoder_vqkd.*`` (the CLIP ViT-B/16, ViTamin-XL or SigLIP-SO400M tower) and ``decoder_vqkd.*`` (a
BEiT-style ViT that reconstructs the teacher's features).

Always converted exactly: the codebooks, the scales' residual sum (bicubic up to the last scale) and the pixel
decoder, i.e. everything a generator's codes go through. Without ``semantic_encoder`` that is all, and the model
is built ``decode_only`` (encoding raises a clear error instead of using random weights).

With ``semantic_encoder`` (a local folder of the tower's architecture: a copy of openai/clip-vit-base-patch16,
a timm ``vitamin_xlarge_256`` folder, google/siglip-so400m-patch14-384) the encoder side is converted too and
the tower becomes a fine-tuned (``frozen: false``) pretrained part, saved with the release:

    encoder.* -> pixel_encoder.* (conv_stack.encoder)     quant_conv -> pixel_proj (z_channels -> dim_pix)
    encode_task_layer.{0,2} -> semantic_proj.{0,2}        encoder_vqkd.* -> semantic_encoder.model.*
    clipb (OpenAI JIT ``visual`` without ``proj``) -> transformers CLIPVisionModel: conv1 -> patch_embedding,
      class_embedding, positional_embedding -> position_embedding, ln_pre -> pre_layrnorm, resblocks.i.attn.
      in_proj (q;k;v) -> self_attn.{q,k,v}_proj, out_proj, ln_1/ln_2 -> layer_norm1/2, mlp.c_fc/c_proj ->
      mlp.fc1/fc2, ln_post -> post_layernorm. Feature: ln_post on every token, CLS dropped, on the raw
      [-1, 1] image (mean = std = 0.5 in vistok's [0, 1] terms); run at grid * patch px when that is not the
      folder's size (256 px for the t2i checkpoint: position embeddings interpolated).
    vitamin (timm, head and fc_norm deleted) -> the timm model 1:1; feature ``forward_features`` on CLIP
      mean/std input. ``fc_norm`` (used only by timm's pooled head, never by TokenFlow) keeps the folder's values.
    siglip (transformers SiglipVisionModel) -> 1:1 (a ``vision_model.`` level is matched to whichever the
      installed transformers uses); feature ``hidden_states[-2]``, mean = std = 0.5.
The part spec pins TokenFlow's normalisation (its code hard-codes it) instead of trusting the folder's processor.

Never converted: ``decoder_vqkd`` / ``decode_task_layer`` (the training-only feature decoder, a BEiT ViT + a
Linear-Tanh-Linear that vistok's ``semantic_decoder`` does not share the architecture of): reported; vistok's
``semantic_decoder`` keeps its fresh initialisation (reported too; only the semantic loss in training reads it).
The scales are not in the weights: TokenFlow's code uses [1,2,4,6,8,10,12,14] for the CLIP teacher (224 px),
[1,2,4,6,8,10,12,14,16] for ViTamin (256 px), [1,2,3,4,5,6,7,8,9,10,12,14,17,22,27] for SigLIP (384 px).

Not bit-exact with the official code: CLIP at 256 px (transformers interpolates the position embeddings to a
size, TokenFlow's CLIP by a scale factor with DINO's +0.1); SigLIP, whose pixel encoder runs at 27 * 16 = 432 px:
vistok's input is the 432-px image (the SigLIP part resizes it to 384) where TokenFlow's is the 384-px one (its
pixel encoder upsamples to 432), and vistok decodes to 432 px where TokenFlow resizes the decoding to 384.
"""
from __future__ import annotations

import json
import os

import torch

from vistok.convert import conv_stack
from vistok.convert.common import Taker, count_indexed, load_converted, read_checkpoint
from vistok.registry import register_converter

SCALES = {
    "clipb": [1, 2, 4, 6, 8, 10, 12, 14],
    "vitamin": [1, 2, 4, 6, 8, 10, 12, 14, 16],
    "siglip": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 17, 22, 27],
}
NOT_CONVERTED = ("encoder_vqkd", "decoder_vqkd", "decode_task_layer", "encoder", "quant_conv", "encode_task_layer")
SEMANTIC_TYPES = {"clipb": "clip_vision", "vitamin": "timm", "siglip": "siglip_vision"}
TRAINING_ONLY = ("decoder_vqkd", "decode_task_layer")  # the official feature decoder: never converted
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
# tower keys the official checkpoint lacks that the tower's forward in TokenFlow never reads: kept from the folder
KEPT_FROM_FOLDER = {"timm": ("fc_norm.",)}
TOWER = "encoder_vqkd."
OURS = "semantic_encoder.model."


def decoder_arch(state: dict, enc: dict) -> dict:
    levels = len(enc["ch_mult"])
    ch = state["decoder.conv_in.weight"].shape[0] // enc["ch_mult"][-1]
    return dict(enc, ch=ch, num_res_blocks=count_indexed(state, "decoder.conv_blocks.0.res") - 1,
                attn_last_level="decoder.conv_blocks.0.attn.0.q.weight" in state, ch_mult=enc["ch_mult"][:levels])


def teacher_of(path: str) -> str | None:
    """The teacher the file name names (clipb / vitamin / siglip), if any."""
    return next((k for k in SCALES if k in os.path.basename(path).lower()), None) or \
        next((k for k in SCALES if k in path.lower()), None)


def tower_layout(state: dict) -> str:
    """How the checkpoint's ``encoder_vqkd.*`` keys are laid out: 'openai_clip', 'hf' (transformers) or 'timm'."""
    keys = [k[len(TOWER):] for k in state if k.startswith(TOWER)]
    if not keys:
        return "none"
    if "conv1.weight" in keys and any(k.startswith("transformer.resblocks.") for k in keys):
        return "openai_clip"
    if any(k.startswith(("vision_model.embeddings.", "embeddings.patch_embedding.")) for k in keys):
        return "hf"
    if any(k.startswith(("blocks.", "patch_embed.")) for k in keys):
        return "timm"
    return "unknown"


LAYOUTS = {"clip_vision": ("openai_clip", "hf"), "siglip_vision": ("hf",), "timm": ("timm",)}


def _openai_clip_to_hf(t: Taker, ours: str) -> None:
    """OpenAI CLIP's ``visual`` (the JIT ViT, ``proj`` deleted) -> transformers CLIPVisionModel names under ``ours``."""
    o = TOWER
    t.out[f"{ours}embeddings.patch_embedding.weight"] = t.get(f"{o}conv1.weight")
    t.out[f"{ours}embeddings.class_embedding"] = t.get(f"{o}class_embedding")
    t.out[f"{ours}embeddings.position_embedding.weight"] = t.get(f"{o}positional_embedding")
    t.copy(f"{o}ln_pre", f"{ours}pre_layrnorm")
    for i in range(count_indexed(t.state, f"{o}transformer.resblocks")):
        src, dst = f"{o}transformer.resblocks.{i}", f"{ours}encoder.layers.{i}"
        for p in ("weight", "bias"):  # nn.MultiheadAttention's in_proj is [q; k; v]
            for name, part in zip("qkv", t.get(f"{src}.attn.in_proj_{p}").chunk(3, 0)):
                t.out[f"{dst}.self_attn.{name}_proj.{p}"] = part.contiguous()
        t.copy(f"{src}.attn.out_proj", f"{dst}.self_attn.out_proj")
        t.copy(f"{src}.ln_1", f"{dst}.layer_norm1")
        t.copy(f"{src}.ln_2", f"{dst}.layer_norm2")
        t.copy(f"{src}.mlp.c_fc", f"{dst}.mlp.fc1")
        t.copy(f"{src}.mlp.c_proj", f"{dst}.mlp.fc2")
    t.copy(f"{o}ln_post", f"{ours}post_layernorm")


def _one_to_one(t: Taker, ours: str, own: dict, strip: str = "") -> None:
    """Every ``encoder_vqkd.<k>`` -> ``ours<k>`` (``strip`` removed from the front of ``k``: transformers 5 has no
    ``vision_model.`` level in SiglipVisionModel, older versions do); a ``position_ids`` buffer (a constant arange that
    newer transformers do not save) is dropped when the model has none."""
    for k in [k for k in t.state if k.startswith(TOWER)]:
        rel = k[len(TOWER):]
        rel = rel[len(strip):] if strip and rel.startswith(strip) else rel
        v = t.get(k)
        if rel.endswith("position_ids") and ours + rel not in own:
            if not torch.equal(v.flatten().long(), torch.arange(v.numel())):
                raise ValueError(f"{t.source}: '{k}' is not the arange position_ids buffer the model recomputes")
            continue
        t.out[ours + rel] = v


def semantic_spec(kind: str, folder: str, grid: int) -> dict:
    """The part spec that reproduces TokenFlow's semantic feature (see the module docstring)."""
    if kind == "timm":
        return {"type": "timm", "path": folder, "frozen": False, "feature": "forward_features",
                "mean": CLIP_MEAN, "std": CLIP_STD}
    spec = {"type": kind, "path": folder, "frozen": False, "mean": [0.5] * 3, "std": [0.5] * 3}
    if kind == "clip_vision":
        spec.update(feature="last_hidden_state", post_layernorm=True)
    else:
        spec.update(feature="hidden_states[-2]")
    import transformers

    from vistok.registry import lookup

    cls = getattr(transformers, lookup("part", kind).model_class)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"--semantic-encoder '{folder}': no config.json (expected a local "
                                f"{cls.__name__} folder, e.g. a copy of the Hub model TokenFlow started from)")
    cfg = cls.config_class.from_pretrained(folder, local_files_only=True)
    if cfg.image_size // cfg.patch_size != grid:  # e.g. TokenFlow's CLIP at 256 px (grid 16)
        spec["image_size"] = grid * cfg.patch_size
    return spec


def convert_tokenflow(path: str, scales: list[int] | None = None, teacher: str | None = None,
                      semantic_encoder: str | None = None, semantic_type: str | None = None):
    """-> (TokenFlow, info). Decode-only unless ``semantic_encoder`` (the tower's architecture folder) is given;
    ``semantic_type`` (clip_vision | timm | siglip_vision) defaults from the teacher the file name names, else from
    the layout of the checkpoint's tower keys. info: {"not_converted": {prefix: count}, "scales", ...}."""
    from vistok.tokenizers.tokenflow import TokenFlow

    teacher = teacher or teacher_of(path)
    if scales is None:
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
    arch = dict(image_size=grid * 2 ** (len(enc["ch_mult"]) - 1), in_channels=enc["in_channels"], ch=enc["ch"],
                ch_mult=enc["ch_mult"], num_res_blocks=enc["num_res_blocks"], z_channels=enc["z_channels"],
                attn_mid=enc["attn_mid"], attn_last_level=enc["attn_last_level"], downsample_pad="asymmetric",
                semantic=True, codebook_size=codebook_size, dim_sem=dim_sem, dim_pix=dim_pix, scales=scales,
                decoder_input="pixel", decoder_ch=dec["ch"], decoder_res_blocks=dec["num_res_blocks"])
    if semantic_encoder:
        return _convert_with_encoder(path, state, arch, enc, dec, teacher, semantic_encoder, semantic_type)
    if semantic_type:
        raise ValueError("--semantic-type needs --semantic-encoder (the folder of the tower's architecture)")
    model = TokenFlow(**arch, decode_only=True)
    t = Taker(state, path, ignore=NOT_CONVERTED + ("quantize.codebook_used",))
    _decoder_side(t, dec)
    skipped = {}
    for k in t.state:
        top = k.split(".")[0]
        skipped[top] = skipped.get(top, 0) + 1
    model = load_converted(model, t.finish(), path)
    return model, {"not_converted": skipped, "scales": scales}


def _decoder_side(t: Taker, dec: dict) -> None:
    conv_stack.decoder(t, dec)
    t.copy("post_quant_conv", "post_quant")
    t.out["quantizer.quantizer.embed_sem"] = t.get("quantize.embedding_vqkd.weight")
    t.out["quantizer.quantizer.embed_pix"] = t.get("quantize.embedding_vqgan.weight")


def _shape(state: dict, key: str, path: str, want: tuple, what: str) -> None:
    if key not in state:
        raise KeyError(f"{path}: missing key '{key}' ({what})")
    got = tuple(state[key].shape)
    if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
        raise ValueError(f"{path}: '{key}' has shape {got}, expected {tuple('*' if w is None else w for w in want)} "
                         f"({what})")


def _semantic_widths(state: dict, path: str, arch: dict, enc: dict) -> tuple[int, int]:
    """(the tower's width E, the feature decoder's output width), with the shapes the vistok side is built from
    checked against each other before anything is built."""
    z, dim_pix, dim_sem = enc["z_channels"], arch["dim_pix"], arch["dim_sem"]
    _shape(state, "quant_conv.weight", path, (dim_pix, z, 1, 1),
           "the pixel half: z_channels -> the pixel codebook's dim")
    _shape(state, "encode_task_layer.0.weight", path, (None, None), "Linear(E, E) after the semantic tower")
    width = state["encode_task_layer.0.weight"].shape[1]
    _shape(state, "encode_task_layer.0.weight", path, (width, width), "Linear(E, E) after the semantic tower")
    _shape(state, "encode_task_layer.2.weight", path, (dim_sem, width),
           "Linear(E, dim_sem): the semantic codebook's dim")
    out = state.get("decode_task_layer.2.weight")
    return width, (out.shape[0] if out is not None and out.dim() == 2 else width)


def _convert_with_encoder(path, state, arch, enc, dec, teacher, folder, kind):
    from vistok.tokenizers.tokenflow import TokenFlow

    layout = tower_layout(state)
    if kind is None:
        kind = SEMANTIC_TYPES.get(teacher) or {"openai_clip": "clip_vision", "timm": "timm"}.get(layout)
        if kind is None:
            raise ValueError(f"{path}: cannot tell the semantic tower's type (file name names no teacher "
                             f"{'/'.join(SCALES)}; tower keys in the '{layout}' layout); pass --semantic-type "
                             f"({'|'.join(LAYOUTS)})")
    if kind not in LAYOUTS:
        raise ValueError(f"--semantic-type '{kind}': expected one of {list(LAYOUTS)}")
    if layout not in LAYOUTS[kind]:
        raise ValueError(f"{path}: the checkpoint's '{TOWER}*' keys are in the '{layout}' layout, which is not a "
                         f"{kind} tower (expected {'/'.join(LAYOUTS[kind])}; no '{TOWER}' keys means the tower is "
                         f"not in this checkpoint)")
    width, teacher_dim = _semantic_widths(state, path, arch, enc)
    heads = next(h for h in range(12, 0, -1) if width % h == 0)  # TokenFlow's feature decoder: 12 heads
    spec = semantic_spec(kind, folder, arch["scales"][-1])
    model = TokenFlow(**arch, semantic_encoder=spec, sem_dim=width, sem_heads=heads, teacher_dim=teacher_dim)
    tower_dim = model.semantic_encoder.out_dim
    if tower_dim != width:
        raise ValueError(f"{path}: encode_task_layer reads {width}-dim features but the {kind} tower in '{folder}' "
                         f"gives {tower_dim} (a folder of another size than the checkpoint's tower)")
    own = model.state_dict()
    t = Taker(state, path, ignore=TRAINING_ONLY + (("encoder_vqkd.proj",) if layout == "openai_clip" else ()))
    _decoder_side(t, dec)
    conv_stack.encoder(t, enc, "encoder", "pixel_encoder")
    t.copy("quant_conv", "pixel_proj")
    t.copy("encode_task_layer.0", "semantic_proj.0")
    t.copy("encode_task_layer.2", "semantic_proj.2")
    ours = OURS + ("vision_model." if any(k.startswith(OURS + "vision_model.") for k in own) else "")
    if layout == "openai_clip":
        _openai_clip_to_hf(t, ours)
    else:
        _one_to_one(t, ours, own, strip="vision_model." if kind != "timm" else "")
    t.state.pop("quantize.codebook_used", None)  # a training statistic (recent code usage)
    not_converted = {}
    for k in t.state:
        top = k.split(".")[0]
        not_converted[top] = not_converted.get(top, 0) + 1
    weights = t.finish()
    kept = sorted(k for k in own if k.startswith(OURS) and k not in weights
                  and k[len(OURS):].startswith(KEPT_FROM_FOLDER.get(kind, ())))
    fresh = sorted(k for k in own if k.startswith("semantic_decoder.") and k not in weights)
    weights.update({k: own[k] for k in kept + fresh})
    model = load_converted(model, weights, path)
    info = {"not_converted": not_converted, "scales": arch["scales"], "semantic_encoder": {
        "type": kind, "path": folder, "layout": layout, "spec": {k: v for k, v in spec.items() if k != "path"},
        "kept_from_folder": kept}, "initialised_not_converted": {"semantic_decoder": len(fresh)}}
    json.dumps(info)  # the CLI prints it
    return model, info


@register_converter("tokenflow")
class TokenFlowConverter:
    help = ("TokenFlow tokenizers -> tokenflow (decodes codes exactly; with --semantic-encoder the CLIP/ViTamin/"
            "SigLIP tower and the pixel encoder are converted too, so the release encodes)")

    @staticmethod
    def add_arguments(p) -> None:
        p.add_argument("--ckpt", required=True, help="TokenFlow tokenizer checkpoint")
        p.add_argument("--scales", type=int, nargs="+", help="the scales (default from the file name's teacher)")
        p.add_argument("--semantic-encoder", metavar="DIR",
                       help="a local folder of the semantic tower's architecture (openai/clip-vit-base-patch16, a timm "
                            "vitamin_xlarge_256 folder, google/siglip-so400m-patch14-384): convert the encoder side "
                            "too (its weights come from --ckpt); without it the release only decodes")
        p.add_argument("--semantic-type", choices=sorted(LAYOUTS),
                       help="the tower's part type (default from the file name's teacher: clipb -> clip_vision, "
                            "vitamin -> timm, siglip -> siglip_vision)")

    @staticmethod
    def convert(args) -> tuple[dict, dict, dict]:
        tokenizer, info = convert_tokenflow(args.ckpt, scales=args.scales, semantic_encoder=args.semantic_encoder,
                                            semantic_type=args.semantic_type)
        return {"tokenizer": tokenizer}, {"tokenizer": args.ckpt}, info
