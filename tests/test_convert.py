"""Official-checkpoint converters on synthetic state dicts that carry the official key names and shapes
(LlamaGen VQ / GPT, TokenFlow) at a tiny size: every key lands, the fused tensors are in the right order
(checked against the official formulas), a converted pipeline samples, bad files get named errors."""
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import run_cli
from vistok.convert.common import read_checkpoint
from vistok.convert.llamagen import convert_gpt, convert_vq
from vistok.convert.tokenflow import convert_tokenflow

g = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=g) * 0.1


def _norm(d, key, c):
    d[f"{key}.weight"], d[f"{key}.bias"] = 1 + rnd(c), rnd(c)


def _conv(d, key, cout, cin, k):
    d[f"{key}.weight"], d[f"{key}.bias"] = rnd(cout, cin, k, k), rnd(cout)


def _res(d, key, cin, cout):
    _norm(d, f"{key}.norm1", cin), _conv(d, f"{key}.conv1", cout, cin, 3)
    _norm(d, f"{key}.norm2", cout), _conv(d, f"{key}.conv2", cout, cout, 3)
    if cin != cout:
        _conv(d, f"{key}.nin_shortcut", cout, cin, 1)


def _attn(d, key, c):
    _norm(d, f"{key}.norm", c)
    for n in ("q", "k", "v", "proj_out"):
        _conv(d, f"{key}.{n}", c, c, 1)


def official_conv_stack(d, ch=32, ch_mult=(1, 2), nres=1, z=16, in_ch=3, dec_ch=None, dec_nres=None):
    """LlamaGen's VQGAN encoder/decoder keys (attention in the last level and in the middle)."""
    levels = len(ch_mult)
    _conv(d, "encoder.conv_in", ch, in_ch, 3)
    cin = ch
    for lv, m in enumerate(ch_mult):
        for j in range(nres):
            _res(d, f"encoder.conv_blocks.{lv}.res.{j}", cin, ch * m)
            cin = ch * m
            if lv == levels - 1:
                _attn(d, f"encoder.conv_blocks.{lv}.attn.{j}", cin)
        if lv < levels - 1:
            _conv(d, f"encoder.conv_blocks.{lv}.downsample.conv", cin, cin, 3)
    _res(d, "encoder.mid.0", cin, cin), _attn(d, "encoder.mid.1", cin), _res(d, "encoder.mid.2", cin, cin)
    _norm(d, "encoder.norm_out", cin), _conv(d, "encoder.conv_out", z, cin, 3)
    dch, dnres = dec_ch or ch, dec_nres or nres
    cin = dch * ch_mult[-1]
    _conv(d, "decoder.conv_in", cin, z, 3)
    _res(d, "decoder.mid.0", cin, cin), _attn(d, "decoder.mid.1", cin), _res(d, "decoder.mid.2", cin, cin)
    for i, lv in enumerate(reversed(range(levels))):
        for j in range(dnres + 1):
            _res(d, f"decoder.conv_blocks.{i}.res.{j}", cin, dch * ch_mult[lv])
            cin = dch * ch_mult[lv]
            if i == 0:
                _attn(d, f"decoder.conv_blocks.{i}.attn.{j}", cin)
        if i < levels - 1:
            _conv(d, f"decoder.conv_blocks.{i}.upsample.conv", cin, cin, 3)
    _norm(d, "decoder.norm_out", cin), _conv(d, "decoder.conv_out", in_ch, cin, 3)
    return d


def official_vq(K=64, cdim=4, z=16):
    d = official_conv_stack({}, z=z)
    _conv(d, "quant_conv", cdim, z, 1), _conv(d, "post_quant_conv", z, cdim, 1)
    d["quantize.embedding.weight"] = rnd(K, cdim)
    d["quantize.codebook_used"] = torch.zeros(131072)
    return d


def official_gpt(vocab=64, dim=64, depth=2, classes=10, grid=4, hidden=176):
    d = {"tok_embeddings.weight": rnd(vocab, dim), "cls_embedding.embedding_table.weight": rnd(classes + 1, dim),
         "norm.weight": 1 + rnd(dim), "output.weight": rnd(vocab, dim), "freqs_cis": rnd(1 + grid * grid, 16, 2)}
    for i in range(depth):
        o = f"layers.{i}"
        d[f"{o}.attention.wqkv.weight"], d[f"{o}.attention.wo.weight"] = rnd(3 * dim, dim), rnd(dim, dim)
        d[f"{o}.feed_forward.w1.weight"], d[f"{o}.feed_forward.w3.weight"] = rnd(hidden, dim), rnd(hidden, dim)
        d[f"{o}.feed_forward.w2.weight"] = rnd(dim, hidden)
        d[f"{o}.attention_norm.weight"], d[f"{o}.ffn_norm.weight"] = 1 + rnd(dim), 1 + rnd(dim)
    return d


def save(tmp_path, name, state, wrap="model"):
    path = tmp_path / name
    torch.save({wrap: state, "steps": 5} if wrap else state, path)
    return str(path)


def test_llamagen_vq_keys_and_fused_attention_match_the_official_formulas(tmp_path):
    state = official_vq()
    vq = convert_vq(save(tmp_path, "vq.pt", state), image_size=16)
    sd = vq.state_dict()
    assert torch.equal(sd["quantizer.vq.embedding"], state["quantize.embedding.weight"])
    assert torch.equal(sd["encoder.down.1.conv.weight"], state["encoder.conv_blocks.0.downsample.conv.weight"])
    # the official attention block: softmax(q^T k / sqrt(c)) v over positions, then proj_out, residual
    blk, key = vq.encoder.down[3], "encoder.conv_blocks.1.attn.0"
    x = torch.randn(2, 64, 4, 4)
    h = F.group_norm(x, blk.norm.num_groups, state[f"{key}.norm.weight"], state[f"{key}.norm.bias"], 1e-6)
    q, k, v = (F.conv2d(h, state[f"{key}.{n}.weight"], state[f"{key}.{n}.bias"]).flatten(2) for n in "qkv")
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(64), -1)
    ref = x + F.conv2d((v @ w.transpose(1, 2)).reshape(2, 64, 4, 4), state[f"{key}.proj_out.weight"], state[f"{key}.proj_out.bias"])
    torch.testing.assert_close(blk(x), ref, atol=1e-5, rtol=1e-5)
    # LlamaGen's downsample pads right/bottom only
    x = torch.randn(1, 32, 8, 8)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), state["encoder.conv_blocks.0.downsample.conv.weight"],
                   state["encoder.conv_blocks.0.downsample.conv.bias"], stride=2)
    torch.testing.assert_close(vq.encoder.down[1](x), ref)
    # codes: nearest l2-normalised entry to the l2-normalised quant_conv output, as in LlamaGen
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = F.normalize(vq.quant_conv(vq.encoder(img)).permute(0, 2, 3, 1), dim=-1)
        ref = (z @ F.normalize(state["quantize.embedding.weight"], dim=-1).t()).argmax(-1)
        assert torch.equal(vq.encode(img), ref)


def test_llamagen_gpt_swiglu_order_and_null_class(tmp_path):
    state = official_gpt()
    gpt = convert_gpt(save(tmp_path, "gpt.pt", state))
    assert gpt.token_shape == (4, 4) and gpt.num_classes == 10 and gpt.heads == 1
    torch.testing.assert_close(gpt.class_emb.weight[10], state["cls_embedding.embedding_table.weight"][10])
    x = torch.randn(3, 64)
    w1, w2, w3 = (state[f"layers.1.feed_forward.{n}.weight"] for n in ("w1", "w2", "w3"))
    torch.testing.assert_close(gpt.blocks[1].mlp(x), (F.silu(x @ w1.t()) * (x @ w3.t())) @ w2.t(), atol=1e-5, rtol=1e-5)
    codes = gpt.sample(torch.tensor([1, 2]), cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 4, 4) and int(codes.max()) < 64


@pytest.mark.slow
def test_converted_llamagen_pipeline_samples_from_the_cli(tmp_path):
    vq, gpt = save(tmp_path, "vq.pt", official_vq(), wrap="ema"), save(tmp_path, "gpt.safetensors", {}, wrap=None)
    from safetensors.torch import save_file

    save_file(official_gpt(), gpt)
    out = tmp_path / "rel"
    proc = run_cli(["convert.py", "llamagen", "--vq", vq, "--gpt", gpt, "--out", str(out), "--image-size", "8"])
    assert '"components": ["tokenizer", "generator"]' in proc.stdout
    args = ["sample.py", "--pipeline", str(out), "--class-labels", "0", "3", "--cfg-scale", "1.5", "--seed", "1", "--npz"]
    run_cli(args + ["--out", str(tmp_path / "eager")])
    run_cli(args + ["--out", str(tmp_path / "compiled"), "--compile"])  # torch.compile'd blocks and decoder
    eager, compiled = (np.load(tmp_path / d / "samples.npz")["arr_0"].astype(int) for d in ("eager", "compiled"))
    assert eager.shape == (2, 8, 8, 3) and np.abs(eager - compiled).max() <= 1


def test_tokenflow_decodes_codes_like_the_official_decode_code(tmp_path):
    state = official_conv_stack({}, z=16, dec_ch=64, dec_nres=2)  # "enhanced": a wider, deeper decoder
    _conv(state, "quant_conv", 4, 16, 1), _conv(state, "post_quant_conv", 16, 4, 1)
    state["quantize.embedding_vqkd.weight"], state["quantize.embedding_vqgan.weight"] = rnd(64, 8), rnd(64, 4)
    state["encoder_vqkd.transformer.resblocks.0.attn.in_proj_weight"] = rnd(24, 8)  # the CLIP tower: not converted
    state["decoder_vqkd.blocks.0.mlp.fc1.weight"], state["decode_task_layer.0.weight"] = rnd(8, 8), rnd(8, 8)
    tf, info = convert_tokenflow(save(tmp_path, "tokenflow_clipb.pt", state), scales=[1, 2, 4])
    assert info["not_converted"]["encoder_vqkd"] == 1 and info["not_converted"]["encoder"] > 10
    codes = [torch.randint(0, 64, (2, s, s), generator=g) for s in (1, 2, 4)]
    f_hat = sum(F.interpolate(F.normalize(state["quantize.embedding_vqgan.weight"], dim=-1)[c].permute(0, 3, 1, 2),
                              size=(4, 4), mode="bicubic") for c in codes)  # the pixel half of the residual sum
    with torch.no_grad():
        ref = tf.decoder(F.conv2d(f_hat, state["post_quant_conv.weight"], state["post_quant_conv.bias"]))
        torch.testing.assert_close(tf.decode(codes), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="decode_only"):
        tf.encode(torch.zeros(1, 3, 8, 8))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vistok_convert_pwned",))


def test_bad_checkpoints_get_named_errors(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": _Exploit()}, f)
    with pytest.raises(ValueError, match="weights-only"):
        read_checkpoint(str(evil))
    assert not os.path.exists("/tmp/vistok_convert_pwned")
    state = official_vq()
    del state["encoder.conv_blocks.0.res.0.conv2.bias"]
    with pytest.raises(KeyError, match="encoder.conv_blocks.0.res.0.conv2.bias"):
        convert_vq(save(tmp_path, "a.pt", state))
    state = official_vq()
    state["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="encoder.extra.weight"):
        convert_vq(save(tmp_path, "b.pt", state))
    with pytest.raises(ValueError, match="no teacher"):
        convert_tokenflow(save(tmp_path, "mystery.pt", state))


def llamagen_logits(sd, labels, codes, heads, grid, eps=1e-5):
    """LlamaGen's class-conditional GPT written out from its formulas (teacher forcing): the class token then
    codes[:-1]; 2-D rotary cache with zeros for the class token; pre-norm blocks; logits for every code."""
    dim = sd["tok_embeddings.weight"].shape[1]
    hd, half = dim // heads, dim // heads // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    f = torch.outer(torch.arange(grid).float(), freqs)
    f = torch.cat([f[:, None, :].expand(-1, grid, -1), f[None, :, :].expand(grid, -1, -1)], -1)
    cache = torch.cat([torch.zeros(1, half, 2), torch.stack([f.cos(), f.sin()], -1).flatten(0, 1)])

    def rope(x):  # B,L,H,hd
        xs, c = x.reshape(*x.shape[:-1], -1, 2), cache[: x.shape[1]][None, :, None]
        return torch.stack([xs[..., 0] * c[..., 0] - xs[..., 1] * c[..., 1],
                            xs[..., 1] * c[..., 0] + xs[..., 0] * c[..., 1]], -1).flatten(3)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    h = torch.cat([sd["cls_embedding.embedding_table.weight"][labels][:, None], sd["tok_embeddings.weight"][codes[:, :-1]]], 1)
    b, n = h.shape[:2]
    for i in range(sum(k.endswith("attention.wo.weight") for k in sd)):
        p = f"layers.{i}."
        q, k, v = (rms(h, sd[p + "attention_norm.weight"]) @ sd[p + "attention.wqkv.weight"].t()).split(dim, -1)
        q, k, v = rope(q.view(b, n, heads, hd)), rope(k.view(b, n, heads, hd)), v.view(b, n, heads, hd)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        h = h + att.transpose(1, 2).reshape(b, n, dim) @ sd[p + "attention.wo.weight"].t()
        x = rms(h, sd[p + "ffn_norm.weight"])
        h = h + (F.silu(x @ sd[p + "feed_forward.w1.weight"].t()) * (x @ sd[p + "feed_forward.w3.weight"].t())) @ sd[p + "feed_forward.w2.weight"].t()
    return rms(h, sd["norm.weight"]) @ sd["output.weight"].t()


def test_converted_llamagen_gpt_computes_llamagens_logits(tmp_path):
    state = official_gpt()
    gpt = convert_gpt(save(tmp_path, "gpt.pt", state), head_dim=16)  # 4 heads
    labels, codes = torch.tensor([3, 7]), torch.randint(0, 64, (2, 16), generator=g)
    with torch.no_grad():
        ours = gpt.teacher_forced_logits(labels, codes)
    torch.testing.assert_close(ours, llamagen_logits(state, labels, codes, heads=4, grid=4), atol=2e-5, rtol=1e-4)
    gpt.cond_rope = "identity"  # vistok's own convention gives other logits: the switch is what makes them equal
    with torch.no_grad():
        assert not torch.allclose(gpt.teacher_forced_logits(labels, codes), ours, atol=1e-3)
