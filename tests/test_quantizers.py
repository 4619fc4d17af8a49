"""Quantizers: nearest-code search equals brute force; straight-through gradients; lookup == forward."""
import pytest
import torch

from vistok.quantizers.vq import VQ


@pytest.mark.parametrize("l2_norm, ema", [(True, False), (True, True), (False, True), (False, False)])
def test_codes_are_the_nearest_and_lookup_matches(l2_norm, ema):
    torch.manual_seed(0)
    q = VQ(dim=8, codebook_size=32, l2_norm=l2_norm, ema=ema).eval()
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    zq, codes, loss = q(z)
    assert codes.shape == (2, 3, 3) and zq.shape == z.shape and torch.isfinite(loss)
    assert torch.allclose(q.lookup(codes), zq.detach(), atol=1e-5)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 8)
    cb = q.lookup(torch.arange(32).reshape(1, 1, 32)).reshape(8, 32).t()  # every code's output vector
    if l2_norm:
        flat = torch.nn.functional.normalize(flat, dim=-1)
    brute = torch.cdist(flat, cb).argmin(-1)
    assert torch.equal(brute, codes.flatten())
    zt, _, _ = q.train()(z)  # straight-through: the encoder side receives gradient
    zt.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_dual_codebook_shared_index_equals_brute_force():
    from vistok.quantizers.dual import DualCodebook

    torch.manual_seed(0)
    q = DualCodebook(64, dim_sem=6, dim_pix=3, w_sem=1.0, w_pix=2.5)
    z = torch.randn(2, 9, 4, 4, requires_grad=True)
    zq, codes, loss = q(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 9)
    zs, zp = torch.nn.functional.normalize(flat[:, :6], dim=-1), torch.nn.functional.normalize(flat[:, 6:], dim=-1)
    cs, cp = q.codebooks()
    d = 1.0 * torch.cdist(zs, cs) ** 2 + 2.5 * torch.cdist(zp, cp) ** 2
    assert torch.equal(d.argmin(-1), codes.flatten())
    assert torch.allclose(q.lookup(codes), zq.detach(), atol=1e-6)
    # the shared index differs from either half alone on some vectors: both halves matter
    assert not torch.equal(torch.cdist(zs, cs).argmin(-1), codes.flatten())
    (zq.sum() + loss).backward()
    assert z.grad.abs().sum() > 0 and q.embed_sem.grad.abs().sum() > 0 and q.embed_pix.grad.abs().sum() > 0


@pytest.mark.parametrize("inner", ["dual", "l2"])
def test_multiscale_encode_decode_round_trip(inner):
    from vistok.quantizers.dual import DualCodebook
    from vistok.quantizers.multiscale import MultiScaleResidualVQ

    torch.manual_seed(0)
    base = DualCodebook(128, 6, 2) if inner == "dual" else VQ(dim=8, codebook_size=128, l2_norm=True, ema=False)
    ms = MultiScaleResidualVQ(base, [1, 2, 4, 8], scale_drop=0.5).eval()
    f = torch.randn(3, 8, 8, 8)
    f_hat, codes, _ = ms(f)
    assert [c.shape[-1] for c in codes] == [1, 2, 4, 8] and ms.num_tokens == 85
    assert torch.allclose(ms.decode_codes(codes), f_hat, atol=1e-5)
    flat = ms.flatten(codes)
    assert flat.shape == (3, 85) and all(torch.equal(a, b) for a, b in zip(ms.unflatten(flat), codes))
    # each scale refines: the error of the first k scales does not grow with k (on average)
    errs = [float((ms.decode_codes(codes[:k]) - f).pow(2).mean()) for k in range(1, 5)]
    assert errs[-1] < errs[0]
    # scale drop (training only): a prefix of scales
    ms.train()
    torch.manual_seed(1)
    lengths = {len(ms(f)[1]) for _ in range(20)}
    assert 4 in lengths and min(lengths) < 4


def test_dual_codebook_reseeds_dead_codes_from_the_batch():
    from vistok.quantizers.dual import DualCodebook

    torch.manual_seed(0)
    # features in a narrow cone: with random codebooks only a few indices are ever nearest
    z = torch.randn(4, 12, 8, 8) * 0.05 + torch.cat([torch.ones(8), torch.ones(4)])[None, :, None, None]
    used = lambda q: q(z)[1].unique().numel()  # noqa: E731
    plain, reseeding = DualCodebook(64, 8, 4), DualCodebook(64, 8, 4, dead_code_threshold=1.0)
    reseeding.load_state_dict({**plain.state_dict(), "usage": reseeding.usage}, strict=True)
    before = used(plain.eval())
    reseeding.train()
    for _ in range(30):
        reseeding(z)
    assert used(reseeding.eval()) > 2 * before
    assert "usage" in reseeding.state_dict() and "usage" not in plain.state_dict()


def test_l2norm_vq_reseeds_dead_codes_too():
    from vistok.quantizers.vq import L2NormVQ

    torch.manual_seed(0)
    z = torch.randn(4, 6, 8, 8) * 0.05 + 1
    q = L2NormVQ(6, 64, dead_code_threshold=1.0)
    before = q.eval()(z)[1].unique().numel()
    q.train()
    for _ in range(30):
        q(z)
    assert q.eval()(z)[1].unique().numel() > 2 * before
