"""xAR's official checkpoints and MAR's KL-16 VAE -> vistok, on synthetic state dicts with the official key
names and shapes at a tiny size; each converted model is checked against the official computation written out
from its formulas over the same state dict (not through vistok's modules)."""
import math

import pytest
import torch
import torch.nn.functional as F

from tests.test_convert import _attn, _conv, _norm, _res, rnd, save
from vistok.convert.mar import convert_kl16
from vistok.convert.xar import convert_xar


# ---- MAR KL-16 (LDM's KL autoencoder) ---------------------------------------------------------------
def official_kl(ch=32, ch_mult=(1, 2), nres=1, z=4, in_ch=3):
    """LDM KL-VAE keys: attention after each resnet of the last encoder level and in both middles."""
    d, levels = {}, len(ch_mult)
    _conv(d, "encoder.conv_in", ch, in_ch, 3)
    cin = ch
    for i, m in enumerate(ch_mult):
        for j in range(nres):
            _res(d, f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
            if i == levels - 1:
                _attn(d, f"encoder.down.{i}.attn.{j}", cin)
        if i < levels - 1:
            _conv(d, f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    for part in ("encoder", "decoder"):
        c = ch * ch_mult[-1]
        if part == "decoder":
            _conv(d, "decoder.conv_in", c, z, 3)
        _res(d, f"{part}.mid.block_1", c, c), _attn(d, f"{part}.mid.attn_1", c), _res(d, f"{part}.mid.block_2", c, c)
        if part == "encoder":
            _norm(d, "encoder.norm_out", c), _conv(d, "encoder.conv_out", 2 * z, c, 3)
    _conv(d, "quant_conv", 2 * z, 2 * z, 1), _conv(d, "post_quant_conv", z, z, 1)
    cin = ch * ch_mult[-1]
    for i in reversed(range(levels)):
        for j in range(nres + 1):
            _res(d, f"decoder.up.{i}.block.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
        if i > 0:
            _conv(d, f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    _norm(d, "decoder.norm_out", cin), _conv(d, "decoder.conv_out", in_ch, cin, 3)
    return d


def ldm_forward(d, x, part):
    """LDM's Encoder (-> quant_conv moments) or Decoder (post_quant_conv first), from the state dict."""
    gn = lambda h, k: F.group_norm(h, 32, d[f"{k}.weight"], d[f"{k}.bias"], 1e-6)  # noqa: E731
    conv = lambda h, k, **kw: F.conv2d(h, d[f"{k}.weight"], d[f"{k}.bias"], **kw)  # noqa: E731

    def res(h, k):
        r = conv(F.silu(gn(conv(F.silu(gn(h, f"{k}.norm1")), f"{k}.conv1", padding=1), f"{k}.norm2")), f"{k}.conv2", padding=1)
        return (conv(h, f"{k}.nin_shortcut") if f"{k}.nin_shortcut.weight" in d else h) + r

    def attn(h, k):
        b, c, hh, ww = h.shape
        n = gn(h, f"{k}.norm")
        q, kk, v = (conv(n, f"{k}.{s}").flatten(2) for s in "qkv")
        w = torch.softmax(q.transpose(1, 2) @ kk * c ** -0.5, -1)
        return h + conv((v @ w.transpose(1, 2)).reshape(b, c, hh, ww), f"{k}.proj_out")

    def mid(h, p):
        return res(attn(res(h, f"{p}.mid.block_1"), f"{p}.mid.attn_1"), f"{p}.mid.block_2")

    levels = 1 + max(int(k.split(".")[2]) for k in d if k.startswith("encoder.down."))
    if part == "encoder":
        h = conv(x, "encoder.conv_in", padding=1)
        for i in range(levels):
            j = 0
            while f"encoder.down.{i}.block.{j}.conv1.weight" in d:
                h = res(h, f"encoder.down.{i}.block.{j}")
                if f"encoder.down.{i}.attn.{j}.q.weight" in d:
                    h = attn(h, f"encoder.down.{i}.attn.{j}")
                j += 1
            if i < levels - 1:
                h = conv(F.pad(h, (0, 1, 0, 1)), f"encoder.down.{i}.downsample.conv", stride=2)
        h = conv(F.silu(gn(mid(h, "encoder"), "encoder.norm_out")), "encoder.conv_out", padding=1)
        return conv(h, "quant_conv")
    h = mid(conv(conv(x, "post_quant_conv"), "decoder.conv_in", padding=1), "decoder")
    for i in reversed(range(levels)):
        j = 0
        while f"decoder.up.{i}.block.{j}.conv1.weight" in d:
            h = res(h, f"decoder.up.{i}.block.{j}")
            j += 1
        if i > 0:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{i}.upsample.conv", padding=1)
    return conv(F.silu(gn(h, "decoder.norm_out")), "decoder.conv_out", padding=1)


def test_mar_kl16_converts_to_the_same_encoder_and_decoder(tmp_path):
    state = official_kl()
    kl = convert_kl16(save(tmp_path, "kl16.ckpt", state), image_size=16)  # MAR wraps it as {"model": ...}
    assert kl.scale_factor == 0.2325 and kl.latent_shape == (4, 8, 8)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        moments = ldm_forward(state, img, "encoder")
        mean = moments.chunk(2, 1)[0]
        torch.testing.assert_close(kl.encode(img), mean * 0.2325, atol=1e-5, rtol=1e-4)  # MAR: posterior * 0.2325
        torch.testing.assert_close(kl.decode(mean * 0.2325), ldm_forward(state, mean, "decoder"), atol=1e-5, rtol=1e-4)


def test_mar_kl16_refuses_an_unknown_key(tmp_path):
    state = official_kl()
    state["decoder.up.1.attn.0.q.weight"] = rnd(64, 64, 1, 1)
    with pytest.raises(ValueError, match="decoder.up.1.attn.0.q.weight"):
        convert_kl16(save(tmp_path, "kl16.ckpt", state), image_size=16)


# ---- xAR ------------------------------------------------------------------------------------------------
def eva_rope_tables(head_dim, grid):
    """EVA's VisionRotaryEmbeddingFast tables (raster order) as the release registers them."""
    half = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    f = (torch.arange(grid).float()[:, None] * freqs).repeat_interleave(2, -1)
    table = torch.cat([f[:, None, :].expand(grid, grid, -1), f[None, :, :].expand(grid, grid, -1)], -1)
    return table.cos().reshape(grid * grid, head_dim), table.sin().reshape(grid * grid, head_dim)


def official_xar(dim=64, enc=2, dec=2, grid=4, clusters=4, c=4, classes=10, heads=4):
    n, hidden = grid * grid, int(dim * 4 * 2 / 3)
    cos, sin = eva_rope_tables(dim // heads, grid)
    d = {"class_emb.weight": rnd(classes + 1, dim), "time_embed.mlp.0.weight": rnd(dim, 256), "time_embed.mlp.0.bias": rnd(dim),
         "time_embed.mlp.2.weight": rnd(dim, dim), "time_embed.mlp.2.bias": rnd(dim), "z_proj.weight": rnd(dim, c),
         "z_proj.bias": rnd(dim), "z_proj_ln.weight": 1 + rnd(dim), "encoder_pos_embed_learned": rnd(1, n, dim),
         "encoder_norm.weight": 1 + rnd(dim), "decoder_embed.weight": rnd(dim, dim), "decoder_embed.bias": rnd(dim),
         "decoder_pos_embed_learned": rnd(1, n, dim), "decoder_norm.weight": 1 + rnd(dim), "pred.weight": rnd(c, dim),
         "pred.bias": rnd(c)}
    allowed = torch.tril(torch.ones(clusters, clusters)).repeat_interleave(n // clusters, 0).repeat_interleave(n // clusters, 1)
    d["mask"] = torch.where(allowed == 1, 0.0, -math.inf)[None, None]
    for part, k in (("encoder", enc), ("decoder", dec)):
        for i in range(k):
            o = f"{part}_blocks.{i}"
            d.update({f"{o}.attn.qkv.weight": rnd(3 * dim, dim), f"{o}.attn.qkv.bias": rnd(3 * dim),
                      f"{o}.attn.proj.weight": rnd(dim, dim), f"{o}.attn.proj.bias": rnd(dim),
                      f"{o}.attn.rope.freqs_cos": cos, f"{o}.attn.rope.freqs_sin": sin,
                      f"{o}.mlp.fc1_g.weight": rnd(hidden, dim), f"{o}.mlp.fc1_g.bias": rnd(hidden),
                      f"{o}.mlp.fc1_x.weight": rnd(hidden, dim), f"{o}.mlp.fc1_x.bias": rnd(hidden),
                      f"{o}.mlp.fc2.weight": rnd(dim, hidden), f"{o}.mlp.fc2.bias": rnd(dim),
                      f"{o}.ada_lin.1.weight": rnd(6 * dim, dim), f"{o}.ada_lin.1.bias": rnd(6 * dim)})
    return d


def xar_official_velocity(d, x, labels, t, heads, raster_of):
    """The release's forward from its formulas: tokens x B,N,C in cell order, one t per token."""
    lin = lambda h, k: F.linear(h, d[f"{k}.weight"], d.get(f"{k}.bias"))  # noqa: E731
    rms = lambda h, w=None: h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 if w is None else w)  # noqa: E731
    b, n, _ = x.shape
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half).float() / half)
    args = (t * 1000).long().float()[..., None] * freqs
    cond = d["class_emb.weight"][labels][:, None] + lin(F.silu(lin(torch.cat([args.cos(), args.sin()], -1), "time_embed.mlp.0")), "time_embed.mlp.2")
    cos, sin = d["encoder_blocks.0.attn.rope.freqs_cos"][raster_of], d["encoder_blocks.0.attn.rope.freqs_sin"][raster_of]

    def rope(q):
        pairs = q.unflatten(-1, (-1, 2))
        rot = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)
        return q * cos + rot * sin

    def block(h, o):
        g1, g2, s1, s2, sh1, sh2 = lin(F.silu(cond), f"{o}.ada_lin.1").view(b, n, 6, -1).unbind(2)
        a = rms(h) * (1 + s1) + sh1
        q, k, v = lin(a, f"{o}.attn.qkv").view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(rope(q), rope(k), v, attn_mask=d["mask"])
        h = h + lin(att.transpose(1, 2).reshape(b, n, -1), f"{o}.attn.proj") * g1
        m = rms(h) * (1 + s2) + sh2
        return h + lin(F.gelu(lin(m, f"{o}.mlp.fc1_g")) * lin(m, f"{o}.mlp.fc1_x"), f"{o}.mlp.fc2") * g2

    h = rms(lin(x, "z_proj") + d["encoder_pos_embed_learned"], d["z_proj_ln.weight"])
    i = 0
    while f"encoder_blocks.{i}.ada_lin.1.weight" in d:
        h, i = block(h, f"encoder_blocks.{i}"), i + 1
    h = lin(rms(h, d["encoder_norm.weight"]), "decoder_embed") + d["decoder_pos_embed_learned"]
    i = 0
    while f"decoder_blocks.{i}.ada_lin.1.weight" in d:
        h, i = block(h, f"decoder_blocks.{i}"), i + 1
    return lin(rms(h, d["decoder_norm.weight"]), "pred")


def test_xar_release_converts_to_the_same_velocity(tmp_path):
    state = official_xar()
    gen = convert_xar(save(tmp_path, "xAR-T.pth", state, wrap=None), heads=4)  # the release: a bare state dict
    assert gen.encoder_depth == 2 and gen.depth == 4 and gen.layout.kind == "cell" and gen.num_entities == 4
    x, labels = torch.randn(3, 16, 4), torch.tensor([1, 7, 10])  # 10: the null class
    t = torch.rand(3, 4)[:, gen.entity]  # one t per cell
    raster_of = (gen.positions[:, 0] * 4 + gen.positions[:, 1]).long()
    with torch.no_grad():
        ours = gen.velocity(x, labels, t, torch.arange(16), gen.block_mask)
    torch.testing.assert_close(ours, xar_official_velocity(state, x, labels, t, 4, raster_of), atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # and it samples, entity by entity with the cache
        lat = gen.sample(torch.tensor([1, 2]), cfg_scale=2.0, steps=3, generator=torch.Generator().manual_seed(0))
    assert lat.shape == (2, 4, 4, 4) and torch.isfinite(lat).all()


def test_xar_conversion_refuses_a_different_rotary_table(tmp_path):
    state = official_xar()
    for k in [k for k in state if k.endswith("rope.freqs_cos")]:
        state[k] = state[k].flip(0).contiguous()
    with pytest.raises(ValueError, match="rotary table"):
        convert_xar(save(tmp_path, "xAR-T.pth", state, wrap=None), heads=4)


@pytest.mark.slow
def test_convert_cli_builds_an_xar_pipeline_that_samples(tmp_path):
    from tests.conftest import run_cli

    vae = save(tmp_path, "kl16.ckpt", official_kl(z=4))
    gen = save(tmp_path, "xAR-T.pth", official_xar(grid=2, clusters=4, dim=64, heads=4), wrap=None)
    out = run_cli(["convert.py", "xar", "--vae", vae, "--ckpt", gen, "--heads", "4", "--image-size", "4",
                   "--out", str(tmp_path / "xar")]).stdout
    assert '"components": ["tokenizer", "generator"]' in out.strip().splitlines()[-1]
    run_cli(["sample.py", "--pipeline", str(tmp_path / "xar"), "--class-labels", "1", "2", "--steps", "2",
             "--out", str(tmp_path / "s")])
    assert (tmp_path / "s" / "00001.png").is_file()
