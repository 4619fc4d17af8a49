"""Mamba's selective scan in pure PyTorch: fast on CPUs, exact, numerically stable, memory-light.

    h_t = exp(delta_t A) * h_{t-1} + delta_t u_t B_t        (per channel d and state n; h_{-1} = 0)
    y_t = <C_t, h_t> + D u_t,   then  y * silu(z)           (delta = softplus(delta + delta_bias) if asked)

Shapes follow mamba-ssm's ``selective_scan_fn``: u, delta, z (B, D, L); A (D, N); B, C (B, N, L) or
(B, G, N, L) with D divisible by G; D, delta_bias (D,). Computed in float32 (float64 if given).

How: an autograd Function with a hand-written backward. The sequence is cut into chunks of ``chunk`` steps;
inside a chunk the decays exp(delta A) and inputs delta u B are formed for the whole chunk at once and the
recurrence runs step by step on (B, D, N) slices with one fused multiply-add per step (products of decays in
(0, 1] never overflow, so no log-space tricks and no exp(-sum) blow-up); only the state at each chunk boundary
is kept for backward, which recomputes a chunk's states and runs the adjoint recurrence
g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} backwards through it. Work and memory are linear in L (the
reference implementation ``selective_scan_ref`` of mamba-ssm slices full tensors per step, so its backward is
quadratic in L). ``benchmarks/selective_scan.py`` measures it against a plain loop and that reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 64


def _expand_groups(m: torch.Tensor, d: int) -> torch.Tensor:
    """B/C (B, N, L) -> (B, 1, N, L); (B, G, N, L) -> (B, D, N, L) by repeating each group D/G times."""
    if m.dim() == 3:
        return m[:, None]
    if m.dim() == 4:
        return m.repeat_interleave(d // m.shape[1], 1)
    raise ValueError(f"selective_scan: B/C must be (batch, N, L) or (batch, G, N, L), got {tuple(m.shape)}")


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk):
        b, d, L = u.shape
        Bx, Cx = _expand_groups(B, d), _expand_groups(C, d)  # (b, 1|d, n, L)
        h = u.new_zeros(b, d, A.shape[1])
        y = u.new_empty(b, d, L)
        starts = []
        for s in range(0, L, chunk):
            e = min(L, s + chunk)
            starts.append(h)
            dA = torch.exp(delta[:, :, s:e, None] * A[:, None])  # b d T n
            x = (delta[:, :, s:e] * u[:, :, s:e])[..., None] * Bx[:, :, :, s:e].transpose(-1, -2)  # b d T n
            hs = torch.empty_like(x)
            for t in range(e - s):
                h = torch.addcmul(x[:, :, t], dA[:, :, t], h)
                hs[:, :, t] = h
            y[:, :, s:e] = (hs * Cx[:, :, :, s:e].transpose(-1, -2)).sum(-1)
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts, 2))
        ctx.chunk = chunk
        return y

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B, C, starts = ctx.saved_tensors
        chunk = ctx.chunk
        b, d, L = u.shape
        Bx, Cx = _expand_groups(B, d), _expand_groups(C, d)
        gu, gdelta = torch.zeros_like(u), torch.zeros_like(delta)
        gA = torch.zeros_like(A)
        gBx = torch.zeros(b, Bx.shape[1], Bx.shape[2], L, dtype=u.dtype, device=u.device)
        gCx = torch.zeros(b, Cx.shape[1], Cx.shape[2], L, dtype=u.dtype, device=u.device)
        carry = u.new_zeros(b, d, A.shape[1])  # a_{s'} * g_{s'} from the chunk after this one
        for c, s in reversed(list(enumerate(range(0, L, chunk)))):
            e = min(L, s + chunk)
            T = e - s
            dA = torch.exp(delta[:, :, s:e, None] * A[:, None])
            Bt, Ct = Bx[:, :, :, s:e].transpose(-1, -2), Cx[:, :, :, s:e].transpose(-1, -2)  # b 1|d T n
            du = delta[:, :, s:e] * u[:, :, s:e]
            x = du[..., None] * Bt
            hs = torch.empty(b, d, T + 1, A.shape[1], dtype=u.dtype, device=u.device)  # h_{s-1} .. h_{e-1}
            hs[:, :, 0] = starts[:, :, c]
            for t in range(T):
                hs[:, :, t + 1] = torch.addcmul(x[:, :, t], dA[:, :, t], hs[:, :, t])
            gyC = gy[:, :, s:e, None] * Ct  # b d T n
            gh = torch.empty_like(x)
            g = carry
            for t in reversed(range(T)):
                g = gyC[:, :, t] + g
                gh[:, :, t] = g
                g = dA[:, :, t] * g  # flows to h_{t-1}
            carry = g
            h_cur, h_prev = hs[:, :, 1:], hs[:, :, :-1]
            gCt = gy[:, :, s:e, None] * h_cur  # b d T n
            gCx[:, :, :, s:e] = (gCt.sum(1, keepdim=True) if Cx.shape[1] == 1 else gCt).transpose(-1, -2)
            gx = gh  # dL/dx_t
            gdA_log = gh * h_prev * dA  # dL/d(delta A) per element
            gA += (gdA_log * delta[:, :, s:e, None]).sum((0, 2))
            gdelta[:, :, s:e] = (gdA_log * A[:, None]).sum(-1) + (gx * Bt).sum(-1) * u[:, :, s:e]
            gu[:, :, s:e] = (gx * Bt).sum(-1) * delta[:, :, s:e]
            gBt = gx * du[..., None]
            gBx[:, :, :, s:e] = (gBt.sum(1, keepdim=True) if Bx.shape[1] == 1 else gBt).transpose(-1, -2)
        gB = gBx[:, 0] if B.dim() == 3 else gBx.unflatten(1, (B.shape[1], -1)).sum(2)
        gC = gCx[:, 0] if C.dim() == 3 else gCx.unflatten(1, (C.shape[1], -1)).sum(2)
        return gu, gdelta, gA, gB, gC, None


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False,
                   chunk: int = CHUNK) -> torch.Tensor:
    """mamba-ssm's ``selective_scan_fn`` signature (no last-state return), pure PyTorch (see the module doc)."""
    dtype = u.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if u.dim() != 3 or delta.shape != u.shape or A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"selective_scan: expected u, delta (B, D, L) and A (D, N); got u {tuple(u.shape)}, "
                         f"delta {tuple(delta.shape)}, A {tuple(A.shape)}")
    delta = delta.to(work)
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    uw = u.to(work)
    y = _Scan.apply(uw, delta, A.to(work), B.to(work), C.to(work), int(chunk))
    if D is not None:
        y = y + uw * D.to(work)[:, None]
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype)


def selective_scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False):
    """The definition, one time step at a time through autograd: the reference the tests compare against."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, L = u.shape
    Bx, Cx = _expand_groups(B, d), _expand_groups(C, d)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(L):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bx[:, :, :, t]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y
