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
