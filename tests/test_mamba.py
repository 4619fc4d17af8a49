"""The pure-PyTorch selective scan against the plain per-step loop (float64, forward and gradients), its
stability, and the Mamba mixer's directions (reverse = flip-scan-flip, slice interleaving), and the logged
fallback when mamba-ssm's kernels are absent."""
import logging

import pytest
import torch

from vistok.nn import mamba as mamba_mod
from vistok.nn.mamba import Mamba, deinterleave, interleave
from vistok.nn.selective_scan import selective_scan, selective_scan_loop


def inputs(b=2, d=6, L=37, n=4, groups=0, seed=0, decay=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    bc = (b, groups, n, L) if groups else (b, n, L)
    return dict(u=r(b, d, L), delta=r(b, d, L) * decay, A=-torch.rand(d, n, generator=g, dtype=torch.float64) * 4,
                B=r(*bc), C=r(*bc), D=r(d), z=r(b, d, L), delta_bias=r(d) * 0.1)


@pytest.mark.parametrize("groups,chunk", [(0, 8), (0, 64), (3, 5)])
def test_scan_matches_the_sequential_loop_forward_and_backward(groups, chunk):
    a = {k: v.clone().requires_grad_() for k, v in inputs(groups=groups).items()}
    b = {k: v.detach().clone().requires_grad_() for k, v in a.items()}
    y = selective_scan(**a, delta_softplus=True, chunk=chunk)
    ref = selective_scan_loop(**b, delta_softplus=True)
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-9)
    w = torch.randn_like(y)
    (y * w).sum().backward(), (ref * w).sum().backward()
    for k in a:
        torch.testing.assert_close(a[k].grad, b[k].grad, atol=1e-6, rtol=1e-6, msg=k)


def test_scan_is_stable_under_huge_decays_and_float32():
    x = inputs(decay=200.0)  # delta * |A| up to ~ thousands per step: exp(-sum) tricks overflow here
    y32 = selective_scan(**{k: v.float() for k, v in x.items()}, delta_softplus=True, chunk=16)
    ref = selective_scan_loop(**x, delta_softplus=True)
    assert torch.isfinite(y32).all()
    torch.testing.assert_close(y32.double(), ref, atol=1e-3, rtol=1e-4)


def test_slice_interleaving_is_invertible_and_interleaves():
    x = torch.arange(6.0)[None]
    assert interleave(x, 2).tolist() == [[0, 3, 1, 4, 2, 5]]
    y = torch.randn(2, 3, 40)
    assert torch.equal(deinterleave(interleave(y, 5), 5), y)
    with pytest.raises(ValueError, match="divisible"):
        interleave(torch.randn(1, 7), 2)


def test_reverse_direction_is_flip_scan_flip():
    torch.manual_seed(0)
    rev = Mamba(8, d_state=4, directions=("reverse",)).double()
    fwd = Mamba(8, d_state=4, directions=("forward",)).double()
    with torch.no_grad():
        for name, p in fwd.named_parameters():
            src = name.replace("conv1d", "conv1d_b").replace("x_proj", "x_proj_b").replace("dt_proj", "dt_proj_b")
            src = {"A_log": "A_b_log", "D": "D_b"}.get(src, src)
            p.copy_(dict(rev.named_parameters())[src])
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    torch.testing.assert_close(rev(x), fwd(x.flip(1)).flip(1))
    tri = Mamba(8, d_state=4, directions=("forward", "reverse", "slice"), nslices=3)
    names = {n for n, _ in tri.named_parameters()}
    assert {"A_log", "A_b_log", "A_s_log", "D_s", "conv1d_s.weight", "x_proj_b.weight", "dt_proj_s.bias"} <= names
    assert tri(torch.randn(1, 12, 8)).shape == (1, 12, 8)


def test_mamba_is_causal_in_its_forward_direction():
    torch.manual_seed(0)
    m = Mamba(8, d_state=4).double()
    x = torch.randn(1, 10, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    torch.testing.assert_close(m(x)[:, :6], m(x2)[:, :6])


def test_without_mamba_ssm_the_fallback_is_used_and_logged(caplog, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mamba(name, *a, **k):
        if name.startswith("mamba_ssm"):
            raise ImportError("No module named 'mamba_ssm' (test)")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mamba)
    monkeypatch.setattr(mamba_mod, "_KERNEL", {"checked": False, "fn": None})
    with caplog.at_level(logging.INFO, logger="vistok.mamba"):
        assert mamba_mod.cuda_selective_scan() is None
    assert "pure-PyTorch selective scan" in caplog.text


def test_the_stepwise_path_for_large_states_matches_the_loop_too(monkeypatch):
    import vistok.nn.selective_scan as ss

    monkeypatch.setattr(ss, "STEP_ELEMENTS", 1)  # force the per-step path at a tiny size
    for groups in (0, 2):
        a = {k: v.clone().requires_grad_() for k, v in inputs(groups=groups, d=4).items()}
        b = {k: v.detach().clone().requires_grad_() for k, v in a.items()}
        y, ref = ss.selective_scan(**a, delta_softplus=True, chunk=7), selective_scan_loop(**b, delta_softplus=True)
        torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-9)
        w = torch.randn_like(y)
        (y * w).sum().backward(), (ref * w).sum().backward()
        for k in a:
            torch.testing.assert_close(a[k].grad, b[k].grad, atol=1e-6, rtol=1e-6, msg=k)
