"""CATANet: the paper's parameter counts, the token-aggregation and patch machinery against naive references,
the centres' train/eval behaviour, training on the embedded photos, releases and the SR cascade."""
import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import call_cli
from vistok.sr.catanet import CATANet, TokenAggregationBlock, patch_divide, patch_reverse, sort_tokens, unsort_tokens

TINY = dict(dim=16, qk_dim=16, mlp_dim=32, heads=2, num_centers=[4, 8], group_sizes=[16, 32], patch_sizes=[8, 12],
            kmeans_iters=[3, 3])


@pytest.mark.parametrize("scale,count", [(2, 477_435), (3, 549_635), (4, 535_195)])
def test_paper_configs_have_the_papers_parameter_counts(scale, count):
    with torch.device("meta"):
        m = CATANet(scale=scale)
    assert sum(p.numel() for p in m.parameters()) == count


@pytest.mark.parametrize("h,w,ps", [(20, 23, 8), (16, 16, 16), (16, 30, 16), (31, 17, 12)])
def test_patch_divide_then_reverse_is_the_identity(h, w, ps):
    x = torch.randn(2, 3, h, w)
    patches, index = patch_divide(x, ps, overlap=2)
    assert patches.shape[-2:] == (ps, ps)
    torch.testing.assert_close(patch_reverse(patches, index, (h, w)), x)
    # neighbouring patches share exactly 2 pixels (unless the last one was moved inside the image)
    rows = index[0][:, 0].tolist()
    assert all(b - a == ps - 2 for a, b in zip(rows[:-2], rows[1:-1])) and rows[-1] == h - ps


def test_sort_then_unsort_is_the_identity():
    x = torch.randn(3, 37, 5)
    order = torch.stack([torch.randperm(37) for _ in range(3)])
    s = sort_tokens(x, order)
    assert torch.equal(s[1, 4], x[1, order[1, 4]])
    assert torch.equal(unsort_tokens(s, order), x)


def naive_grouped_attention(tab, x, order, k_c, v_c):
    """IASA + IRCA written per batch item, per group, per head; the tail padded with the flipped last tokens
    (as the official code; where that is too short, the reflection continues: 0..n-1, n-1..0, 0..)."""
    b, n, _ = x.shape
    gs = min(n, tab.group_size)
    ng = math.ceil(n / gs)
    out = torch.zeros(b, n, x.shape[-1])
    for i in range(b):
        q, k, v = (f(x[i])[order[i]] for f in (tab.q, tab.k, tab.v))
        pad = lambda t, m: t[[j % n if (j // n) % 2 == 0 else n - 1 - j % n for j in range(m)]]  # noqa: E731
        q, k, v = pad(q, ng * gs), pad(k, (ng + 1) * gs), pad(v, (ng + 1) * gs)
        rows = []
        for g in range(ng):
            qg, kg, vg = q[g * gs:(g + 1) * gs], k[g * gs:(g + 2) * gs], v[g * gs:(g + 2) * gs]
            heads = []
            for h in range(tab.heads):
                dq, dv = qg.shape[1] // tab.heads, vg.shape[1] // tab.heads
                qh = qg[:, h * dq:(h + 1) * dq]
                local = torch.softmax(qh @ kg[:, h * dq:(h + 1) * dq].t() / math.sqrt(dq), -1) @ vg[:, h * dv:(h + 1) * dv]
                glob = torch.softmax(qh @ k_c[h].t() / math.sqrt(dq), -1) @ v_c[h]
                heads.append(local + glob)
            rows.append(torch.cat(heads, 1))
        sorted_out = torch.cat(rows)[:n]
        out[i, order[i]] = sorted_out
    return tab.proj(out)


@pytest.mark.parametrize("n,gs", [(64, 16), (37, 16), (20, 16), (16, 32)])  # exact, padded, ng = 2 short, one group
def test_grouped_attention_matches_a_naive_per_group_reference(n, gs):
    torch.manual_seed(0)
    tab = TokenAggregationBlock(16, 12, 32, heads=2, num_centers=4, group_size=gs).eval()
    x, order = torch.randn(2, n, 16), torch.stack([torch.randperm(n) for _ in range(2)])
    k_c, v_c = torch.randn(2, 4, 6), torch.randn(2, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(tab.grouped_attention(x, order, k_c, v_c),
                                   naive_grouped_attention(tab, x, order, k_c, v_c), atol=1e-5, rtol=1e-4)


def test_centres_change_only_in_train_mode_and_eval_ignores_the_batch():
    torch.manual_seed(0)
    m = CATANet(scale=2, **TINY)
    x = torch.rand(4, 3, 24, 24)
    tab = m.blocks[0].tab
    assert not bool(tab.centers_ready)
    m.train()
    m.upscale(x)
    assert not bool(tab.centers_ready)  # the update waits for the end of the optimiser step
    m.on_step_end(0)
    first = tab.centers.clone()
    assert bool(tab.centers_ready) and torch.allclose(first.norm(dim=-1), torch.ones(4), atol=1e-5)  # spherical
    m.upscale(x.flip(-1))
    m.on_step_end(1)
    second = tab.centers.clone()
    assert not torch.equal(first, second)  # EMA step
    assert float((second - first).norm(dim=-1).max()) <= 0.001 * 2 + 1e-6  # EMA 0.999 of unit vectors
    m.eval()
    with torch.no_grad():
        alone = m.upscale(x[:1])
        mixed = m.upscale(torch.cat([x[:1], torch.rand(3, 3, 24, 24)]))[:1]
    assert torch.equal(tab.centers, second)
    torch.testing.assert_close(alone, mixed, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_training_on_the_embedded_photos_lowers_the_l1_loss():
    from vistok.data.sr import SRPairs

    torch.manual_seed(0)
    data = SRPairs(root="skimage", split="train", scale=2, patch=24, repeat=8, images=["astronaut", "coffee"])
    batch = {k: torch.stack([data[i][k] for i in range(8)]) for k in ("lr", "hr")}
    assert batch["lr"].shape == (8, 3, 24, 24) and batch["hr"].shape == (8, 3, 48, 48)
    m = CATANet(scale=2, **TINY)
    opt = torch.optim.Adam(m.parameters(), 2e-3)
    m.eval()
    with torch.no_grad():
        before = float(F.l1_loss(m.upscale(batch["lr"]), batch["hr"]))
    m.train()
    for _ in range(40):
        loss = m(batch)["loss"]
        opt.zero_grad(), loss.backward(), opt.step()
    m.eval()
    with torch.no_grad():
        after = float(F.l1_loss(m.upscale(batch["lr"]), batch["hr"]))
    assert after < 0.8 * before, (before, after)


def test_release_round_trip_keeps_weights_and_centres(tmp_path):
    m = CATANet(scale=3, **TINY)
    m.train()
    m.upscale(torch.rand(2, 3, 20, 20))
    m.save_pretrained(str(tmp_path / "sr"))
    back = CATANet.from_pretrained(str(tmp_path / "sr"))
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(back.eval().upscale(x), m.eval().upscale(x))


def test_x4_initialises_from_x2_except_the_upsampler(tmp_path):
    from vistok.loading import init_from

    CATANet(scale=2, **TINY).save_pretrained(str(tmp_path / "x2"))
    x4 = CATANet(scale=4, **TINY)
    skipped = init_from(x4, str(tmp_path / "x2"), ["up."])
    assert skipped == ["up.0.bias", "up.0.weight", "up.1.bias", "up.1.weight"]
    assert torch.equal(x4.shallow.weight, CATANet.from_pretrained(str(tmp_path / "x2")).shallow.weight)
    with pytest.raises(ValueError, match="up.1.weight"):
        init_from(CATANet(scale=4, **TINY), str(tmp_path / "x2"))


def test_cascade_pipeline_samples_and_upscales(tmp_path):
    from vistok.generators.ar import ARGenerator
    from vistok.pipelines.base import Pipeline
    from vistok.tokenizers.vqgan import VQGAN

    torch.manual_seed(0)
    tok = VQGAN(image_size=16, in_channels=1, ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=8, codebook_size=16)
    gen = ARGenerator(vocab_size=16, token_shape=(8, 8), num_classes=10, dim=32, depth=1, heads=2)
    Pipeline(tokenizer=tok, generator=gen, sr=CATANet(scale=2, **TINY)).save_pretrained(str(tmp_path / "cascade"))
    call_cli(["sample.py", "--pipeline", tmp_path / "cascade", "--out", tmp_path / "s", "--class-labels", "1", "2", "3"])
    from PIL import Image

    small, big = Image.open(tmp_path / "s" / "00001.png"), Image.open(tmp_path / "s" / "sr" / "00001.png")
    assert big.size == (2 * small.size[0], 2 * small.size[1]) and (tmp_path / "s" / "sr" / "grid.png").is_file()


def official_catanet(scale=2, dim=8, qk=8, mlp=16, centers=(4,) * 8):
    """The official key names and shapes (BasicSR's catanet_arch) at a tiny width."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    d = {"first_conv.weight": r(dim, 3, 3, 3), "first_conv.bias": r(dim), "last_conv.weight": r(3, dim, 3, 3),
         "last_conv.bias": r(3)}
    ups = {"upconv1": 4 * dim, "upconv2": 4 * dim} if scale == 4 else {"upconv": scale * scale * dim}
    for name, out in ups.items():
        d[f"{name}.weight"], d[f"{name}.bias"] = r(out, dim, 3, 3), r(out)

    def ffn(p):
        d.update({f"{p}.fc1.weight": r(mlp, dim), f"{p}.fc1.bias": r(mlp), f"{p}.fc2.weight": r(dim, mlp),
                  f"{p}.fc2.bias": r(dim), f"{p}.dwconv.depthwise_conv.0.weight": r(mlp, 1, 5, 5),
                  f"{p}.dwconv.depthwise_conv.0.bias": r(mlp)})

    for i, k in enumerate(centers):
        b = f"blocks.{i}"
        for n in (f"{b}.0.norm", f"{b}.0.mlp.norm", f"{b}.1.layer.0.norm", f"{b}.1.layer.1.norm"):
            d[f"{n}.weight"], d[f"{n}.bias"] = 1 + r(dim), r(dim)
        ffn(f"{b}.0.mlp.fn"), ffn(f"{b}.1.layer.1.fn")
        for p in (f"{b}.0.iasa_attn", f"{b}.1.layer.0.fn"):
            d.update({f"{p}.to_q.weight": r(qk, dim), f"{p}.to_k.weight": r(qk, dim), f"{p}.to_v.weight": r(dim, dim),
                      f"{p}.proj.weight": r(dim, dim)})
        d.update({f"{b}.0.irca_attn.to_k.weight": r(qk, dim), f"{b}.0.irca_attn.to_v.weight": r(dim, dim),
                  f"{b}.0.conv1x1.weight": r(dim, dim, 1, 1), f"{b}.0.means": r(k, dim), f"{b}.0.initted": torch.tensor(True),
                  f"mid_convs.{i}.weight": r(dim, dim, 3, 3), f"mid_convs.{i}.bias": r(dim)})
    return d


@pytest.mark.parametrize("scale", [2, 4])
def test_official_checkpoint_converts_key_by_key(tmp_path, scale):
    from vistok.convert.catanet import convert_catanet

    state = official_catanet(scale)
    path = tmp_path / "CATANet.pth"
    torch.save({"params": state}, path)
    m = convert_catanet(str(path))
    ours = m.state_dict()
    pairs = {"first_conv.weight": "shallow.weight", "last_conv.bias": "last.bias", "mid_convs.3.weight": "blocks.3.conv.weight",
             "blocks.2.0.irca_attn.to_k.weight": "blocks.2.tab.center_k.weight",
             "blocks.2.0.iasa_attn.to_k.weight": "blocks.2.tab.k.weight",
             "blocks.2.1.layer.0.fn.to_k.weight": "blocks.2.lrsa.attn.k.weight",
             "blocks.5.0.mlp.norm.bias": "blocks.5.tab.ffn_norm.bias", "blocks.5.0.norm.weight": "blocks.5.tab.norm.weight",
             "blocks.5.1.layer.1.fn.dwconv.depthwise_conv.0.weight": "blocks.5.lrsa.ffn.dw.weight",
             "blocks.7.0.means": "blocks.7.tab.centers", "blocks.6.0.conv1x1.weight": "blocks.6.tab.conv.weight"}
    pairs.update({"upconv1.weight": "up.0.weight", "upconv2.weight": "up.1.weight"} if scale == 4 else {"upconv.weight": "up.0.weight"})
    for theirs, mine in pairs.items():
        assert torch.equal(ours[mine], state[theirs]), (theirs, mine)
    assert m.scale == scale and bool(m.blocks[0].tab.centers_ready)
    with torch.no_grad():
        assert m.upscale(torch.rand(1, 3, 20, 20)).shape == (1, 3, 20 * scale, 20 * scale)
    del state["blocks.1.0.means"]
    torch.save({"params": state}, path)
    with pytest.raises(KeyError, match="blocks.1.0.means"):
        convert_catanet(str(path))


def test_window_baseline_attends_inside_windows_and_masks_the_shift_wrap():
    from vistok.config import build, load_config
    from vistok.sr.window_sr import SwinLayer

    torch.manual_seed(0)
    x = torch.randn(1, 8, 8, 8)
    plain, shifted = SwinLayer(8, 2, 4, 16, shift=0).eval(), SwinLayer(8, 2, 4, 16, shift=2).eval()
    bumped = x.clone()
    bumped[0, :, 0, 0] += torch.randn(8)  # not a constant: LayerNorm would remove it
    with torch.no_grad():
        d_plain = (plain(bumped) - plain(x)).abs().sum(1)[0]
        d_shift = (shifted(bumped) - shifted(x)).abs().sum(1)[0]
    assert d_plain[:4, :4].min() > 0 and d_plain[4:].max() == 0 and d_plain[:, 4:].max() == 0  # its 4x4 window only
    # shifted by 2: (0, 0) shares a rolled window with (7, 7) across the wrap, which the mask must cut, and with (1, 1)
    assert d_shift[7, 7] == 0 and d_shift[1, 1] > 0
    counts = [sum(p.numel() for p in build("model", load_config(f"configs/catanet/{c}.yaml").model).parameters())
              for c in ("toy_x2", "window_toy_x2")]
    assert abs(counts[0] - counts[1]) / counts[0] < 0.01, counts


def test_an_sr_only_release_upscales_a_folder(tmp_path):
    import numpy as np
    from PIL import Image

    from vistok.pipelines.base import Pipeline

    Pipeline(sr=CATANet(scale=3, **TINY)).save_pretrained(str(tmp_path / "sr"))
    (tmp_path / "in").mkdir()
    Image.fromarray((np.random.default_rng(0).random((20, 26, 3)) * 255).astype(np.uint8)).save(tmp_path / "in" / "a.jpg")
    call_cli(["sample.py", "--pipeline", tmp_path / "sr", "--images", tmp_path / "in", "--out", tmp_path / "o",
              "--tile", "12", "--tile-overlap", "2"])
    assert Image.open(tmp_path / "o" / "a.png").size == (78, 60)
    bad = call_cli(["sample.py", "--pipeline", tmp_path / "sr", "--out", tmp_path / "o2"], check=False)
    assert bad.returncode == 2 and "--images" in bad.stderr
