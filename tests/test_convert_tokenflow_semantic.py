"""TokenFlow conversion with the semantic tower (``--semantic-encoder``): synthetic official checkpoints whose
``encoder_vqkd.*`` are a ground-truth tower's weights in the official layout (OpenAI CLIP's JIT ViT, transformers
SigLIP, timm), converted against a folder of the same architecture with other weights. Checked: the converted
tower is the ground truth (the mapping, not the folder, is loaded), the semantic features and codes equal
TokenFlow's formulas on the official tensors, the pixel half equals LlamaGen's encoder, the release is
self-contained, and bad checkpoints / folders get errors naming the key."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from tests import tiny_hf
from tests.conftest import call_cli, last_json
from tests.test_convert import _conv, official_conv_stack, rnd, save
from vistok.convert.llamagen import convert_vq
from vistok.convert.tokenflow import CLIP_MEAN, CLIP_STD, convert_tokenflow

K, DIM_SEM, DIM_PIX, Z, WIDTH = 64, 8, 4, 16, 32
CH_MULT = (1, 1, 1, 2)  # downsampling 8: 32-px images, a 4x4 grid like the 32-px / patch-8 towers
SCALES = [1, 2, 4]


def pixel_side(tower_width=WIDTH, grid_scales=SCALES):
    """Everything but the tower: LlamaGen conv encoder/decoder, quant convs, codebooks, task layers, the
    training-only feature decoder."""
    d = official_conv_stack({}, ch=32, ch_mult=CH_MULT, z=Z)
    _conv(d, "quant_conv", DIM_PIX, Z, 1), _conv(d, "post_quant_conv", Z, DIM_PIX, 1)
    d["quantize.embedding_vqkd.weight"], d["quantize.embedding_vqgan.weight"] = rnd(K, DIM_SEM), rnd(K, DIM_PIX)
    d["quantize.codebook_used"] = torch.zeros(131072)
    d["encode_task_layer.0.weight"], d["encode_task_layer.0.bias"] = rnd(tower_width, tower_width) * 5, rnd(tower_width)
    d["encode_task_layer.2.weight"], d["encode_task_layer.2.bias"] = rnd(DIM_SEM, tower_width) * 5, rnd(DIM_SEM)
    d["decoder_vqkd.blocks.0.mlp.fc1.weight"], d["decoder_vqkd.pos_embed"] = rnd(16, 8), rnd(1, 17, 8)
    d["decode_task_layer.0.weight"], d["decode_task_layer.2.weight"] = rnd(8, 8), rnd(24, 8)
    return d


def openai_clip_keys(hf_vision) -> dict:
    """A transformers CLIP vision tower's weights in OpenAI's JIT ``visual`` layout (no ``proj``), under
    encoder_vqkd."""
    sd = {k.removeprefix("vision_model."): v for k, v in hf_vision.state_dict().items()}
    o = {"conv1.weight": sd["embeddings.patch_embedding.weight"], "class_embedding": sd["embeddings.class_embedding"],
         "positional_embedding": sd["embeddings.position_embedding.weight"]}
    for p in ("weight", "bias"):
        o[f"ln_pre.{p}"], o[f"ln_post.{p}"] = sd[f"pre_layrnorm.{p}"], sd[f"post_layernorm.{p}"]
    for i in range(hf_vision.config.num_hidden_layers):
        h, r = f"encoder.layers.{i}", f"transformer.resblocks.{i}"
        for p in ("weight", "bias"):
            o[f"{r}.attn.in_proj_{p}"] = torch.cat([sd[f"{h}.self_attn.{n}_proj.{p}"] for n in "qkv"], 0)
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                o[f"{r}.{ours}.{p}"] = sd[f"{h}.{theirs}.{p}"]
    return {f"encoder_vqkd.{k}": v.clone() for k, v in o.items()}


def openai_clip_patch_tokens(sd: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """TokenFlow's CLIP ``VisionTransformer.forward(x, return_patch_tokens=True)`` on the official keys (raw x)."""
    sd = {k.removeprefix("encoder_vqkd."): v for k, v in sd.items() if k.startswith("encoder_vqkd.")}
    w = sd["conv1.weight"]
    width = w.shape[0]
    t = F.conv2d(x, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    t = torch.cat([sd["class_embedding"].expand(x.shape[0], 1, -1), t], 1) + sd["positional_embedding"]

    def ln(h, k):
        return F.layer_norm(h, (width,), sd[f"{k}.weight"], sd[f"{k}.bias"], 1e-5)

    t = ln(t, "ln_pre").transpose(0, 1)  # LND, as nn.MultiheadAttention reads it
    for i in range(sum(k.endswith("attn.in_proj_weight") for k in sd)):
        r = f"transformer.resblocks.{i}"
        h = ln(t, f"{r}.ln_1")
        t = t + F.multi_head_attention_forward(
            h, h, h, width, heads, sd[f"{r}.attn.in_proj_weight"], sd[f"{r}.attn.in_proj_bias"], None, None, False,
            0.0, sd[f"{r}.attn.out_proj.weight"], sd[f"{r}.attn.out_proj.bias"], need_weights=False)[0]
        h = F.linear(ln(t, f"{r}.ln_2"), sd[f"{r}.mlp.c_fc.weight"], sd[f"{r}.mlp.c_fc.bias"])
        t = t + F.linear(h * torch.sigmoid(1.702 * h), sd[f"{r}.mlp.c_proj.weight"], sd[f"{r}.mlp.c_proj.bias"])
    return ln(t.transpose(0, 1), "ln_post")[:, 1:]


def task_layer(sd, tokens):
    h = torch.tanh(F.linear(tokens, sd["encode_task_layer.0.weight"], sd["encode_task_layer.0.bias"]))
    return F.linear(h, sd["encode_task_layer.2.weight"], sd["encode_task_layer.2.bias"])


def official_codes(sd, sem_tokens, pix, scales):
    """TokenFlow.encode's residual loop with VectorQuantizer's shared-index argmin (l2-normalised halves)."""
    b, grid = pix.shape[0], scales[-1]
    sem = sem_tokens.transpose(1, 2).reshape(b, DIM_SEM, grid, grid)
    residual, codes = torch.cat([sem, pix], 1), []
    es = F.normalize(sd["quantize.embedding_vqkd.weight"], dim=-1)
    ep = F.normalize(sd["quantize.embedding_vqgan.weight"], dim=-1)
    for s in scales:
        z = F.interpolate(residual, size=(s, s), mode="area").permute(0, 2, 3, 1).reshape(-1, DIM_SEM + DIM_PIX)
        zs, zp = F.normalize(z[:, :DIM_SEM], dim=-1), F.normalize(z[:, DIM_SEM:], dim=-1)
        d = torch.cdist(zs, es) ** 2 + torch.cdist(zp, ep) ** 2
        idx = d.argmin(1)
        q = torch.cat([es[idx], ep[idx]], -1).reshape(b, s, s, -1).permute(0, 3, 1, 2)
        residual = residual - F.interpolate(q, size=(grid, grid), mode="bicubic")
        codes.append(idx.reshape(b, s * s))
    return torch.cat(codes, 1)


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """(official state, its path, ground-truth CLIP vision tower, an architecture folder with other weights)."""
    root = tmp_path_factory.mktemp("clip")
    gt = tiny_hf.clip_vision(str(root / "truth"), seed=1).vision_model
    tiny_hf.clip_vision(str(root / "arch"), seed=2)
    state = {**pixel_side(), **openai_clip_keys(gt)}
    return state, save(root, "tokenflow_clipb.pt", state), gt, str(root / "arch")


def test_clip_tower_encodes_like_tokenflow_and_the_release_is_self_contained(clip, tmp_path):
    state, path, gt, arch = clip
    tf, info = convert_tokenflow(path, scales=SCALES, semantic_encoder=arch)
    assert not tf.decode_only and info["semantic_encoder"]["layout"] == "openai_clip"
    spec = {"type": "clip_vision", "frozen": False, "mean": [0.5] * 3, "std": [0.5] * 3, "feature": "last_hidden_state",
            "post_layernorm": True}
    assert info["semantic_encoder"]["spec"] == spec
    assert info["not_converted"] == {"decoder_vqkd": 2, "decode_task_layer": 2}
    assert info["initialised_not_converted"]["semantic_decoder"] > 0
    x = images()
    with torch.no_grad():
        # the converted tower is the ground truth's, not the architecture folder's
        tower = tf.semantic_encoder
        ours, want = tower.model(pixel_values=x).last_hidden_state, gt(pixel_values=x).last_hidden_state
        torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)
        folder = tiny_hf.clip_vision(str(tmp_path / "again"), seed=2).vision_model
        assert (folder(pixel_values=x).last_hidden_state - want).abs().max() > 1e-2
        # semantic half = task layer (ln_post on the raw [-1, 1] image, CLS dropped), by TokenFlow's formulas
        sem_tokens = task_layer(state, openai_clip_patch_tokens(state, x, heads=gt.config.num_attention_heads))
        feats = tf.features(x)
        torch.testing.assert_close(feats[:, :DIM_SEM].flatten(2).transpose(1, 2), sem_tokens, atol=1e-5, rtol=1e-5)
        # pixel half = LlamaGen's encoder (converted by convert_vq from the same keys) + quant_conv
        vq_state = {k: v for k, v in state.items()
                    if k.startswith(("encoder.", "decoder.", "quant_conv", "post_quant"))}
        vq_state["quantize.embedding.weight"] = state["quantize.embedding_vqgan.weight"]
        vq = convert_vq(save(tmp_path, "vq.pt", vq_state), image_size=32)
        pix = F.conv2d(vq.encoder(x), state["quant_conv.weight"], state["quant_conv.bias"])
        torch.testing.assert_close(feats[:, DIM_SEM:], pix, atol=1e-5, rtol=1e-5)
        codes = tf.encode(x)
        assert torch.equal(codes, official_codes(state, sem_tokens, pix, SCALES))
        rec = tf.decode(codes)
        assert rec.shape == x.shape and torch.isfinite(rec).all()
    # a release carries the fine-tuned tower: it loads and encodes with the architecture folder gone
    from vistok.modeling import VistokModel

    tf.save_pretrained(str(tmp_path / "rel"))
    moved = shutil.move(arch, str(tmp_path / "moved"))
    try:
        back = VistokModel.from_pretrained(str(tmp_path / "rel"))
        with torch.no_grad():
            assert torch.equal(back.encode(x), codes)
    finally:
        shutil.move(moved, arch)


def test_clip_runs_at_the_grid_of_the_scales(clip):
    """TokenFlow's 256-px CLIP checkpoint (scales up to 16, a 224-px tower): the part runs at grid * patch px."""
    state, path, gt, arch = clip
    tf, info = convert_tokenflow(path, scales=[1, 2, 3, 6], semantic_encoder=arch)
    assert info["semantic_encoder"]["spec"]["image_size"] == 48 and tf.semantic_encoder.grid == 6
    x = images(size=48)
    with torch.no_grad():
        want = task_layer(state, gt.post_layernorm(gt(pixel_values=x, interpolate_pos_encoding=True)
                                                   .last_hidden_state[:, 1:]))
        torch.testing.assert_close(tf.features(x)[:, :DIM_SEM].flatten(2).transpose(1, 2), want, atol=1e-5, rtol=1e-5)
        assert tf.decode(tf.encode(x)).shape == x.shape


def test_decode_only_without_semantic_encoder_decodes_the_same(clip):
    state, path, _, arch = clip
    full, _ = convert_tokenflow(path, scales=SCALES, semantic_encoder=arch)
    dec, info = convert_tokenflow(path, scales=SCALES)
    assert dec.decode_only
    assert info["not_converted"]["encoder_vqkd"] == sum(k.startswith("encoder_vqkd.") for k in state)
    codes = [torch.randint(0, K, (2, s, s), generator=torch.Generator().manual_seed(s)) for s in SCALES]
    with torch.no_grad():
        torch.testing.assert_close(dec.decode(codes), full.decode(codes))
    with pytest.raises(RuntimeError, match="decode_only"):
        dec.encode(images())
    with pytest.raises(ValueError, match="--semantic-type needs --semantic-encoder"):
        convert_tokenflow(path, scales=SCALES, semantic_type="clip_vision")


def test_bad_checkpoints_and_folders_get_errors_naming_the_key(clip, tmp_path):
    state, _, _, arch = clip

    def convert(d, name="tokenflow_clipb.pt", **kw):
        return convert_tokenflow(save(tmp_path, name, d), scales=SCALES, semantic_encoder=kw.pop("folder", arch), **kw)

    d = dict(state)
    del d["encoder_vqkd.transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(KeyError, match=r"encoder_vqkd\.transformer\.resblocks\.1\.mlp\.c_fc\.bias"):
        convert(d)
    d = dict(state, **{"encoder_vqkd.transformer.resblocks.0.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"encoder_vqkd\.transformer\.resblocks\.0\.extra\.weight"):
        convert(d)
    d = {k: v for k, v in state.items() if not k.startswith("encoder_vqkd.transformer.resblocks.1.")}
    with pytest.raises(ValueError, match=r"missing \['semantic_encoder\.model\.encoder\.layers\.1\."):
        convert(d)  # a tower one layer shorter than the folder's
    d = dict(state)
    del d["encode_task_layer.2.bias"]
    with pytest.raises(KeyError, match=r"encode_task_layer\.2\.bias"):
        convert(d)
    d = dict(state, **{"quant_conv.weight": rnd(DIM_PIX + 1, Z, 1, 1)})
    with pytest.raises(ValueError, match=r"'quant_conv\.weight' has shape \(5, 16, 1, 1\), expected \(4, 16, 1, 1\)"):
        convert(d)
    with pytest.raises(ValueError, match="'openai_clip' layout, which is not a siglip_vision tower"):
        convert(state, semantic_type="siglip_vision")
    with pytest.raises(ValueError, match="pass --semantic-type"):
        convert({k: v for k, v in state.items() if not k.startswith("encoder_vqkd.")}, name="tokenflow.pt")
    wide = tiny_hf.clip_vision(str(tmp_path / "wide"), hidden=48)
    assert wide.config.hidden_size == 48
    with pytest.raises(ValueError, match="encode_task_layer reads 32-dim features but the clip_vision .* gives 48"):
        convert(state, folder=str(tmp_path / "wide"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert(state, folder=str(tmp_path))


def test_cli_converts_a_release_that_encodes(clip, tmp_path):
    _, path, _, arch = clip
    out = tmp_path / "rel"
    proc = call_cli(["convert.py", "tokenflow", "--ckpt", path, "--scales", *map(str, SCALES),
                     "--semantic-encoder", arch, "--out", str(out)])
    info = last_json(proc)
    assert info["semantic_encoder"]["type"] == "clip_vision" and info["not_converted"]["decoder_vqkd"] == 2
    cfg = json.loads((out / "tokenizer" / "config.json").read_text())
    assert cfg["semantic_encoder"]["type"] == "clip_vision" and cfg["semantic_encoder"]["frozen"] is False
    assert (out / "tokenizer" / "parts" / "semantic_encoder" / "config.json").is_file()
    from vistok.modeling import VistokModel

    tok = VistokModel.from_pretrained(str(out / "tokenizer"))
    with torch.no_grad():
        assert tok.encode(images()).shape == (2, sum(s * s for s in SCALES))


# ---- SigLIP ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip")
    gt = tiny_hf.siglip_vision(str(root / "truth"), seed=1)
    tiny_hf.siglip_vision(str(root / "arch"), seed=2)
    # TokenFlow saved SigLIP with a `vision_model.` level (older transformers) and its position_ids buffer
    tower = {f"encoder_vqkd.vision_model.{k.removeprefix('vision_model.')}": v.clone()
             for k, v in gt.state_dict().items()}
    n = gt.config.image_size // gt.config.patch_size
    tower["encoder_vqkd.vision_model.embeddings.position_ids"] = torch.arange(n * n)[None]
    state = {**pixel_side(), **tower}
    return state, save(root, "tokenflow_siglip.pt", state), gt, str(root / "arch")


def test_siglip_tower_maps_one_to_one_and_reads_the_second_last_layer(siglip):
    state, path, gt, arch = siglip
    tf, info = convert_tokenflow(path, scales=SCALES, semantic_encoder=arch)  # the type from the file name
    assert info["semantic_encoder"]["type"] == "siglip_vision" and info["semantic_encoder"]["layout"] == "hf"
    assert info["semantic_encoder"]["spec"]["feature"] == "hidden_states[-2]"
    x = images()
    with torch.no_grad():
        out = gt(pixel_values=x, output_hidden_states=True)  # ScalingLayerForSigLip on [-1, 1] is the identity
        ours = tf.semantic_encoder.model(pixel_values=x, output_hidden_states=True)
        torch.testing.assert_close(ours.pooler_output, out.pooler_output, atol=1e-5, rtol=1e-5)  # the head too
        sem_tokens = task_layer(state, out.hidden_states[-2])
        feats = tf.features(x)
        torch.testing.assert_close(feats[:, :DIM_SEM].flatten(2).transpose(1, 2), sem_tokens, atol=1e-5, rtol=1e-5)
        pix = F.conv2d(tf.pixel_encoder(x), state["quant_conv.weight"], state["quant_conv.bias"])
        assert torch.equal(tf.encode(x), official_codes(state, sem_tokens, pix, SCALES))
        assert tf.decode(tf.encode(x)).shape == x.shape


def test_siglip_errors_name_the_keys(siglip, tmp_path):
    state, _, _, arch = siglip
    d = dict(state)
    del d["encoder_vqkd.vision_model.encoder.layers.0.mlp.fc1.weight"]
    with pytest.raises(ValueError, match=r"missing \['semantic_encoder\.model\.(vision_model\.)?encoder\.layers\.0\."
                                         r"mlp\.fc1\.weight'\]"):
        convert_tokenflow(save(tmp_path, "a_siglip.pt", d), scales=SCALES, semantic_encoder=arch)
    d = dict(state, **{"encoder_vqkd.vision_model.head.extra": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected \['semantic_encoder\.model\.(vision_model\.)?head\.extra'\]"):
        convert_tokenflow(save(tmp_path, "b_siglip.pt", d), scales=SCALES, semantic_encoder=arch)
    d = dict(state, **{"encoder_vqkd.vision_model.embeddings.position_ids": torch.arange(16)[None].flip(1)})
    with pytest.raises(ValueError, match="position_ids"):
        convert_tokenflow(save(tmp_path, "c_siglip.pt", d), scales=SCALES, semantic_encoder=arch)


# ---- timm -----------------------------------------------------------------------------------------------------
def timm_folder(folder, seed, vitamin_like=False):
    """A timm ViT folder; ``vitamin_like``: no class token, average pooling (norm is an identity, fc_norm a
    LayerNorm), as in ViTamin."""
    if not vitamin_like:
        return tiny_hf.timm_vit(folder, seed=seed)
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, depth=2, embed_dim=WIDTH, num_heads=2, num_classes=5, class_token=False,
                global_pool="avg")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()
    save_for_hf(model, folder, model_args=args, safe_serialization=True)
    return model


@pytest.mark.parametrize("vitamin_like", [False, True])
def test_timm_tower_maps_one_to_one_on_clip_normalised_input(tmp_path, vitamin_like):
    gt = timm_folder(str(tmp_path / "truth"), 1, vitamin_like)
    timm_folder(str(tmp_path / "arch"), 2, vitamin_like)
    drop = ("head.", "fc_norm.")  # TokenFlow deleted ViTamin's head and fc_norm
    tower = {f"encoder_vqkd.{k}": v.clone() for k, v in gt.state_dict().items() if not k.startswith(drop)}
    state = {**pixel_side(), **tower}
    path = save(tmp_path, "tokenflow_vitamin.pt", state)
    tf, info = convert_tokenflow(path, scales=SCALES, semantic_encoder=str(tmp_path / "arch"))
    assert info["semantic_encoder"]["type"] == "timm" and info["semantic_encoder"]["layout"] == "timm"
    has_fc_norm = any(k.startswith("fc_norm.") for k in gt.state_dict())
    assert has_fc_norm == vitamin_like
    kept = ["semantic_encoder.model.fc_norm.bias", "semantic_encoder.model.fc_norm.weight"] if has_fc_norm else []
    assert info["semantic_encoder"]["kept_from_folder"] == kept
    x = images()
    with torch.no_grad():
        clip_x = ((x + 1) / 2 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        tokens = gt.forward_features(clip_x)[:, gt.num_prefix_tokens:]  # ScalingLayerForClip, forward_features
        sem_tokens = task_layer(state, tokens)
        feats = tf.features(x)
        torch.testing.assert_close(feats[:, :DIM_SEM].flatten(2).transpose(1, 2), sem_tokens, atol=1e-5, rtol=1e-5)
        assert tf.decode(tf.encode(x)).shape == x.shape
    d = dict(state)
    del d["encoder_vqkd.blocks.1.attn.qkv.weight"]
    with pytest.raises(ValueError, match=r"missing \['semantic_encoder\.model\.blocks\.1\.attn\.qkv\.weight'\]"):
        convert_tokenflow(save(tmp_path, "bad_vitamin.pt", d), scales=SCALES, semantic_encoder=str(tmp_path / "arch"))
    d = dict(state, **{"encoder_vqkd.head.weight": rnd(5, WIDTH)})  # a head TokenFlow would have deleted
    with pytest.raises(ValueError, match=r"unexpected \['semantic_encoder\.model\.head\.weight'\]"):
        convert_tokenflow(save(tmp_path, "head_vitamin.pt", d), scales=SCALES, semantic_encoder=str(tmp_path / "arch"))
