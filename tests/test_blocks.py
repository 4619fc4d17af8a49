"""Shared blocks: classifier-free guidance (blend, schedules, doubling, condition dropout), the token layout
(orders, groups, centres on non-square and 1-D grids), 1-D multi-scale residual quantisation."""
import math

import pytest
import torch
import torch.nn.functional as F

from vistok.nn.guidance import Guidance, blend, drop_condition, guidance_scale
from vistok.nn.layout import TokenLayout
from vistok.quantizers.multiscale import MultiScaleResidualVQ
from vistok.quantizers.vq import VQ


def test_guidance_blend_schedules_and_doubling():
    c, u = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 1.0])
    assert blend(c, u, 3.0).tolist() == [4.0, 10.0]  # 1 + 3 * (2 - 1), 1 + 3 * (4 - 1)
    assert [Guidance(3.0, "linear", 5).scale_at(i) for i in range(5)] == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert [guidance_scale(2.0, "constant", i, 3) for i in range(3)] == [2.0, 2.0, 2.0]
    assert guidance_scale(4.0, "linear", 0, 1) == 4.0  # one step: the ramp's end
    cfg = Guidance(3.0, "linear", 3)
    labels, null = torch.tensor([0, 2]), torch.tensor([9, 9])
    assert cfg.double(labels, null).tolist() == [0, 2, 9, 9] and cfg.double(labels).tolist() == [0, 2, 0, 2]
    out = torch.tensor([[2.0], [4.0], [1.0], [1.0]])  # [cond; uncond] of the doubled batch
    assert cfg(out, 1).tolist() == [[3.0], [7.0]] and cfg(out, 0).tolist() == [[2.0], [4.0]]  # scale 2, scale 1
    off = Guidance(1.0, "linear", 3)
    assert not off.active and off.double(labels, null) is labels and off(out, 2) is out
    with pytest.raises(ValueError, match="cfg_schedule 'cosine'"):
        Guidance(2.0, "cosine", 4)


def test_condition_dropout_rate_and_whole_rows():
    torch.manual_seed(0)
    labels = torch.arange(20000) % 7
    dropped = drop_condition(labels, torch.full_like(labels, 7), 0.25)
    assert abs(float((dropped == 7).float().mean()) - 0.25) < 0.015
    assert torch.equal(dropped[dropped != 7], labels[dropped != 7])
    captions = torch.randint(1, 50, (4000, 6))  # B,L word ids; the null caption is all padding (0)
    out = drop_condition(captions, torch.zeros_like(captions), 0.5)
    gone = (out == 0).all(1)
    assert torch.equal(out[~gone], captions[~gone]) and abs(float(gone.float().mean()) - 0.5) < 0.03
    state = torch.get_rng_state()
    assert drop_condition(labels, torch.full_like(labels, 7), 0.0) is labels
    assert torch.equal(state, torch.get_rng_state())  # rate 0 draws nothing


def test_generators_guide_through_the_shared_module(monkeypatch):
    import vistok.nn.guidance as guidance
    from vistok.generators.ar import ARGenerator
    from vistok.generators.xar import XARGenerator

    calls = []
    real_blend = guidance.blend
    monkeypatch.setattr(guidance, "blend", lambda *a: calls.append("blend") or real_blend(*a))
    torch.manual_seed(0)
    ar = ARGenerator(vocab_size=16, token_shape=(2, 2), num_classes=3, dim=32, depth=1, heads=2).eval()
    xar = XARGenerator(latent_shape=[2, 2, 2], num_classes=3, entity="token", dim=32, depth=1, heads=2, steps=2).eval()
    ar.sample(torch.tensor([1]), cfg_scale=2.0)
    assert calls.count("blend") == 4  # one per token
    xar.sample(torch.tensor([1]), cfg_scale=2.0)
    assert calls.count("blend") == 4 + 4 * 2  # one per entity and flow step


def test_token_layout_non_square_2d_and_scales():
    lay = TokenLayout((2, 3))
    assert lay.positions("index").tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert torch.equal(lay.positions("edge"), lay.positions("index") + 0.5)
    ms = TokenLayout((2, 3), scales=[(1, 1), (1, 2), (2, 3)])
    assert ms.group == "scale" and ms.num_tokens == 9 and ms.starts == [0, 1, 3, 9]
    assert ms.groups().tolist() == [0, 1, 1, 2, 2, 2, 2, 2, 2]
    pos = ms.positions("edge")  # a coarse token sits at the middle of the finest cells it covers
    assert pos[0].tolist() == [1.0, 1.5] and pos[1:3].tolist() == [[1.0, 0.75], [1.0, 2.25]]
    assert torch.equal(ms.positions("index"), pos - 0.5) and pos[3:].tolist() == lay.positions("edge").tolist()
    parts = ms.split(torch.arange(9)[None].repeat(2, 1))
    assert [tuple(p.shape) for p in parts] == [(2, 1, 1), (2, 1, 2), (2, 2, 3)] and parts[2][0, 1].tolist() == [6, 7, 8]
    m = ms.mask()
    assert m[2, :3].tolist() == [True, True, True] and not m[2, 3:].any() and m[8].all()
    with pytest.raises(ValueError, match="end at the grid"):
        TokenLayout((2, 3), scales=[(1, 1), (2, 2)])


def test_token_layout_cells_subsamples_and_1d():
    cell = TokenLayout((4, 6), group="cell", cell=2)
    assert cell.order()[:8].tolist() == [0, 1, 6, 7, 2, 3, 8, 9] and cell.num_groups == 6
    assert cell.positions("index")[4:8].tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]
    sub = TokenLayout((2, 4), group="subsample", stride=2)
    assert sub.order().tolist() == [0, 2, 1, 3, 4, 6, 5, 7] and sub.groups().tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert TokenLayout((3, 3), group="image").groups().tolist() == [0] * 9
    one = TokenLayout((8,), scales=(1, 2, 4, 8))
    assert one.scales == ((1,), (2,), (4,), (8,)) and one.num_tokens == 15 and one.starts == [0, 1, 3, 7, 15]
    assert one.positions("index")[:3, 0].tolist() == [3.5, 1.5, 5.5] and one.positions("edge")[0].tolist() == [4.0]
    runs = TokenLayout((6,), group="cell", cell=3)
    assert runs.groups().tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="cell 4 does not divide"):
        TokenLayout((6,), group="cell", cell=4)


def test_generators_take_their_positions_from_the_layout():
    from vistok.generators.ar import ARGenerator
    from vistok.generators.xar import XARGenerator

    ar = ARGenerator(vocab_size=16, scales=[1, 2, 4], num_classes=3, dim=32, depth=1, heads=2)
    assert torch.equal(ar.positions[1:], TokenLayout((4, 4), scales=(1, 2, 4)).positions("edge"))
    xar = XARGenerator(latent_shape=[2, 4, 4], num_classes=3, entity="scale", scales=[1, 2, 4], dim=32, depth=1,
                       heads=2)
    assert torch.equal(xar.positions, TokenLayout((4, 4), scales=(1, 2, 4)).positions("index"))


def smooth(b: int, n: int, d: int, seed: int) -> torch.Tensor:
    """B,N,D sums of a few low-frequency sines."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, n)[None, :, None]
    waves = [torch.randn(b, 1, d, generator=g) / k * torch.sin(2 * math.pi * k * t + 6.28 * torch.rand(b, 1, d, generator=g))
             for k in range(1, 4)]
    return sum(waves)


def grid_vq(dim: int = 2, side: int = 32) -> VQ:
    """A euclidean VQ whose codebook is a fine grid over [-2, 2]^2: quantisation error is small and known."""
    q = VQ(dim, side ** dim, l2_norm=False, ema=True).eval()
    axis = torch.linspace(-2, 2, side)
    with torch.no_grad():
        q.vq.codebook = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, dim)
    return q


def test_rvq_1d_codes_per_scale_and_error_falls_with_scales():
    q = grid_vq()
    f = smooth(8, 16, 2, seed=0)
    zq, codes, _ = q(f)  # the VQ's B,N,D path == its B,C,H,W path on the same vectors
    zm, cm, _ = q(f.transpose(1, 2)[..., None])
    assert codes.shape == (8, 16) and torch.equal(codes, cm[..., 0]) and torch.equal(zq, zm[..., 0].transpose(1, 2))
    assert torch.allclose(q.lookup(codes), zq)
    ms = MultiScaleResidualVQ(q, [1, 2, 4, 8, 16], ndim=1).eval()
    f_hat, codes, _ = ms(f)
    assert [tuple(c.shape) for c in codes] == [(8, 1), (8, 2), (8, 4), (8, 8), (8, 16)] and ms.num_tokens == 31
    flat = ms.flatten(codes)
    assert flat.shape == (8, 31) and all(torch.equal(a, b) for a, b in zip(ms.unflatten(flat), codes))
    assert torch.allclose(ms.decode_codes(codes), f_hat, atol=1e-6)
    errors = [float((ms.decode_codes(codes[:k]) - f).pow(2).mean()) for k in range(1, 6)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.01 * float(f.pow(2).mean()), errors
    with pytest.raises(ValueError, match="B,N,D with N = the last scale"):
        ms(torch.randn(2, 8, 2))


class RoundST(torch.nn.Module):
    """Round to a 0.5 grid with a straight-through gradient."""

    def forward(self, z):
        q = (z * 2).round() / 2
        return z + (q - z).detach(), (q * 2).long()[..., 0], z.new_zeros(())


def test_rvq_1d_gradients_are_straight_through():
    """Quantisation and the detached residuals are invisible to backward: d f_hat / d f is the pyramid's
    sum over scales of upsample(downsample(.))."""
    scales, f, w = [1, 2, 4, 8], torch.randn(3, 8, 2, requires_grad=True), torch.randn(3, 8, 2)
    f_hat, _, _ = MultiScaleResidualVQ(RoundST(), scales, ndim=1)(f)
    (f_hat * w).sum().backward()
    x = f.detach().clone().requires_grad_()
    xt = x.transpose(1, 2)
    pyramid = sum(F.interpolate(F.interpolate(xt, size=n, mode="area"), size=8, mode="linear", align_corners=False)
                  for n in scales)
    (pyramid.transpose(1, 2) * w).sum().backward()
    assert f.grad.abs().sum() > 0
    torch.testing.assert_close(f.grad, x.grad)


def test_rvq_1d_autoencoder_learns():
    torch.manual_seed(0)
    x = smooth(32, 16, 3, seed=1)
    enc, dec = torch.nn.Linear(3, 4), torch.nn.Linear(4, 3)
    rvq = MultiScaleResidualVQ(VQ(4, 64, l2_norm=False, ema=True), [1, 2, 4, 8, 16], ndim=1)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], 1e-2)
    losses = []
    for _ in range(40):
        f_hat, _, vq_loss = rvq(enc(x))
        loss = F.mse_loss(dec(f_hat), x) + vq_loss
        opt.zero_grad()
        loss.backward()
        assert enc.weight.grad.abs().sum() > 0  # the encoder learns through the quantiser
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        rec = F.mse_loss(dec(rvq.eval()(enc(x))[0]), x)
    assert rec < 0.5 * x.var(), (float(rec), float(x.var()))  # far better than predicting the mean
