"""Mamba's selective scan in pure PyTorch: fast on CPUs, exact, numerically stable, memory-light.

    h_t = exp(delta_t A) * h_{t-1} + delta_t u_t B_t        (per channel d and state n; h_{-1} = 0)
    y_t = <C_t, h_t> + D u_t,   then  y * silu(z)           (delta = softplus(delta + delta_bias) if asked)

Shapes follow mamba-ssm's ``selective_scan_fn``: u, delta, z (B, D, L); A (D, N); B, C (B, N, L) or
(B, G, N, L) with D divisible by G; D, delta_bias (D,). Computed in float32 (float64 if given).

How: an autograd Function with a hand-written backward. The sequence is cut into chunks of ``chunk`` steps;
inside a chunk the decays exp(delta A) and inputs delta u B are formed for the whole chunk at once and the
linear recurrence is solved by ``linear_scan`` (a doubling scan in log2(chunk) vectorised passes when the
per-step tensors are small, one fused multiply-add per step when they are large); it only multiplies decays in
[0, 1], so nothing overflows (no log-space cumsum, whose exp(-sum) blows up once delta |A| sums past ~88).
Only the state at each chunk boundary is kept for backward, which recomputes a chunk's states and solves the
adjoint recurrence g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} backwards in time with the same scan. Work and memory are linear in L (the
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


STEP_ELEMENTS = 4096  # per-step tensor size (batch x channels x states) from which stepping in cache beats the doubling scan


def linear_scan(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + x_t along dim 0 (time-major, T,...), h_{-1} = h0 -> all h_t (T,...).

    Small per-step tensors: a doubling (Hillis-Steele) scan, log2(T) vectorised passes; large ones: one fused
    multiply-add per step. Both only multiply decays in [0, 1], so nothing overflows."""
    T = a.shape[0]
    if a[0].numel() >= STEP_ELEMENTS or T == 1:
        out = torch.empty_like(x)
        h = h0
        for t in range(T):
            h = torch.addcmul(x[t], a[t], h)
            out[t] = h
        return out
    x = torch.cat([torch.addcmul(x[:1], a[:1], h0[None]), x[1:]])
    k = 1
    while k < T:
        x = torch.cat([x[:k], torch.addcmul(x[k:], a[k:], x[:-k])])
        if 2 * k < T:
            a = torch.cat([a[:k], a[k:] * a[:-k]])
        k *= 2
    return x


class _Scan(torch.autograd.Function):
    """Inputs as ``selective_scan`` after the softplus: u, delta (b, d, L), A (d, n), B, C (b, [G,] n, L)."""

    @staticmethod
    def _chunk(u, delta, A, Bx, Cx, s, e):
        dA = torch.exp(delta[:, :, s:e, None] * A[:, None]).permute(2, 0, 1, 3).contiguous()  # T b d n
        du = (delta[:, :, s:e] * u[:, :, s:e]).permute(2, 0, 1)  # T b d
        Bt, Ct = Bx[..., s:e].permute(3, 0, 1, 2), Cx[..., s:e].permute(3, 0, 1, 2)  # T b 1|d n
        return dA, du, Bt, Ct

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk):
        b, d, L = u.shape
        ctx.stepwise = b * d * A.shape[1] >= STEP_ELEMENTS
        ctx.chunk = chunk
        if ctx.stepwise:
            y, starts = _step_forward(u, delta, A, _expand_groups(B, d), _expand_groups(C, d), chunk)
            ctx.save_for_backward(u, delta, A, B, C, starts)
            return y
        Bx, Cx = _expand_groups(B, d), _expand_groups(C, d)  # (b, 1|d, n, L)
        h = u.new_zeros(b, d, A.shape[1])
        y = u.new_empty(b, d, L)
        starts = []
        for s in range(0, L, chunk):
            e = min(L, s + chunk)
            starts.append(h)
            dA, du, Bt, Ct = _Scan._chunk(u, delta, A, Bx, Cx, s, e)
            H = linear_scan(dA, du[..., None] * Bt, h)  # T b d n
            h = H[-1]
            y[:, :, s:e] = (H * Ct).sum(-1).permute(1, 2, 0)
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts))
        return y

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B, C, starts = ctx.saved_tensors
        chunk = ctx.chunk
        b, d, L = u.shape
        Bx, Cx = _expand_groups(B, d), _expand_groups(C, d)
        if ctx.stepwise:
            gu, gdelta, gA, gBx, gCx = _step_backward(gy, u, delta, A, Bx, Cx, starts, chunk)
            gB = gBx[:, 0] if B.dim() == 3 else gBx.unflatten(1, (B.shape[1], -1)).sum(2)
            gC = gCx[:, 0] if C.dim() == 3 else gCx.unflatten(1, (C.shape[1], -1)).sum(2)
            return gu, gdelta, gA, gB, gC, None
        gu, gdelta, gA = torch.zeros_like(u), torch.zeros_like(delta), torch.zeros_like(A)
        gBx = u.new_zeros(b, Bx.shape[1], Bx.shape[2], L)
        gCx = u.new_zeros(b, Cx.shape[1], Cx.shape[2], L)
        carry = u.new_zeros(b, d, A.shape[1])  # a_{e} * g_{e}: the gradient flowing in from the next chunk
        for c, s in reversed(list(enumerate(range(0, L, chunk)))):
            e = min(L, s + chunk)
            dA, du, Bt, Ct = _Scan._chunk(u, delta, A, Bx, Cx, s, e)
            H = linear_scan(dA, du[..., None] * Bt, starts[c])  # recomputed states h_s .. h_{e-1}
            H_prev = torch.cat([starts[c][None], H[:-1]])
            gyt = gy[:, :, s:e].permute(2, 0, 1)[..., None]  # T b d 1
            # adjoint: g_t = C_t gy_t + a_{t+1} g_{t+1}, run backwards in time
            a_rev = torch.cat([torch.ones_like(dA[:1]), dA.flip(0)[:-1]])
            G = linear_scan(a_rev, (gyt * Ct).flip(0), carry).flip(0)  # T b d n
            carry = dA[0] * G[0]
            g_log_a = G * H_prev * dA  # dL/d(delta A)
            gA += (g_log_a * delta[:, :, s:e].permute(2, 0, 1)[..., None]).sum((0, 1))
            gxB = (G * Bt).sum(-1)  # T b d: dL/d(delta u)
            dt = delta[:, :, s:e].permute(2, 0, 1)
            gdelta[:, :, s:e] = ((g_log_a * A).sum(-1) + gxB * u[:, :, s:e].permute(2, 0, 1)).permute(1, 2, 0)
            gu[:, :, s:e] = (gxB * dt).permute(1, 2, 0)
            gBt, gCt = G * du[..., None], H * gyt  # T b d n
            gBx[..., s:e] = (gBt.sum(2, keepdim=True) if Bx.shape[1] == 1 else gBt).permute(1, 2, 3, 0)
            gCx[..., s:e] = (gCt.sum(2, keepdim=True) if Cx.shape[1] == 1 else gCt).permute(1, 2, 3, 0)
        gB = gBx[:, 0] if B.dim() == 3 else gBx.unflatten(1, (B.shape[1], -1)).sum(2)
        gC = gCx[:, 0] if C.dim() == 3 else gCx.unflatten(1, (C.shape[1], -1)).sum(2)
        return gu, gdelta, gA, gB, gC, None


def _time_major(u, delta, Bx, Cx):
    return (u.permute(2, 0, 1).contiguous(), delta.permute(2, 0, 1).contiguous(),
            Bx.permute(3, 0, 1, 2).contiguous(), Cx.permute(3, 0, 1, 2).contiguous())  # L b d / L b 1|d n


def _step_forward(u, delta, A, Bx, Cx, chunk):
    """Large per-step tensors: one time step at a time on (b, d, n) slices that stay in cache; nothing of
    size (b, d, L, n) is ever formed. Keeps the state at every chunk start for backward."""
    b, d, L = u.shape
    ut, dt, Bt, Ct = _time_major(u, delta, Bx, Cx)
    h = u.new_zeros(b, d, A.shape[1])
    y = u.new_empty(L, b, d)
    starts = []
    for t in range(L):
        if t % chunk == 0:
            starts.append(h)
        h = torch.addcmul((dt[t] * ut[t])[..., None] * Bt[t], torch.exp(dt[t][..., None] * A), h)
        y[t] = (h * Ct[t]).sum(-1)
    return y.permute(1, 2, 0), torch.stack(starts)


def _step_backward(gy, u, delta, A, Bx, Cx, starts, chunk):
    b, d, L = u.shape
    ut, dt, Bt, Ct = _time_major(u, delta, Bx, Cx)
    gyt = gy.permute(2, 0, 1)
    gu, gdelta = u.new_empty(L, b, d), u.new_empty(L, b, d)
    gB, gC = u.new_empty(L, b, Bx.shape[1], A.shape[1]), u.new_empty(L, b, Cx.shape[1], A.shape[1])
    gA = torch.zeros_like(A)
    g_next = u.new_zeros(b, d, A.shape[1])  # a_{t+1} g_{t+1}
    shared_B, shared_C = Bx.shape[1] == 1, Cx.shape[1] == 1
    for c in reversed(range(len(starts))):
        s, e = c * chunk, min(L, (c + 1) * chunk)
        H = [starts[c]]  # recompute h_{s-1} .. h_{e-1}
        for t in range(s, e):
            H.append(torch.addcmul((dt[t] * ut[t])[..., None] * Bt[t], torch.exp(dt[t][..., None] * A), H[-1]))
        for t in reversed(range(s, e)):
            g = torch.addcmul(g_next, gyt[t][..., None], Ct[t])  # dL/dh_t
            a = torch.exp(dt[t][..., None] * A)
            glog = g * H[t - s] * a  # dL/d(delta_t A)
            gA += (glog * dt[t][..., None]).sum(0)
            gxB = (g * Bt[t]).sum(-1)  # dL/d(delta_t u_t)
            gdelta[t] = (glog * A).sum(-1) + gxB * ut[t]
            gu[t] = gxB * dt[t]
            gb = g * (dt[t] * ut[t])[..., None]
            gB[t] = gb.sum(1, keepdim=True) if shared_B else gb
            gc = H[t - s + 1] * gyt[t][..., None]
            gC[t] = gc.sum(1, keepdim=True) if shared_C else gc
            g_next = a * g
    return (gu.permute(1, 2, 0), gdelta.permute(1, 2, 0), gA, gB.permute(1, 2, 3, 0), gC.permute(1, 2, 3, 0))


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
