"""LLaMA-style decoder parts: RMSNorm, rotary embeddings (1-D, or 2-D over a token grid), SwiGLU,
attention through SDPA with a static KV cache (prefill, then a few tokens per step).

The cache is an object the caller owns (``KVCache``), never module state, so one model can serve
several sampling runs at once and ``state_dict`` stays weights only.
"""
from __future__ import annotations

from contextlib import nullcontext as _nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):  # LlamaGen uses 1e-5: ARGenerator(norm_eps=...)
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_angles(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """positions: (..., P) integer or float positions along P axes (P = 1 or 2) -> angles (..., dim // 2).

    With 2 axes (rows, columns), half of the rotary pairs encode the row and half the column."""
    axes = positions.shape[-1]
    per_axis = dim // 2 // axes
    freqs = base ** (-torch.arange(per_axis, device=positions.device, dtype=torch.float32) / per_axis)
    angles = [positions[..., a:a + 1].float() * freqs for a in range(axes)]
    return torch.cat(angles, -1)


def apply_rope(x: torch.Tensor, angles) -> torch.Tensor:
    """x: B,H,T,D; angles: B,T,r with r <= D/2 (pairs beyond r are left unrotated), or a (cos, sin) pair of
    such tensors (which may scale as well as rotate, e.g. LlamaGen's zeroed class-token entries)."""
    cos, sin = angles if isinstance(angles, tuple) else (angles.cos(), angles.sin())
    r = cos.shape[-1]
    x_rot, x_pass = x[..., : 2 * r], x[..., 2 * r:]
    x1, x2 = x_rot.float().unflatten(-1, (r, 2)).unbind(-1)
    cos, sin = cos[:, None], sin[:, None]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2).type_as(x)
    return torch.cat([out, x_pass], -1)


class KVCache:
    """Static per-layer key/value buffers of shape B,H,max_len,D."""

    def __init__(self, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int, device=None, dtype=None):
        shape = (batch, heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.length = 0  # tokens written so far

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int):
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x, angles, mask=None, cache: KVCache | None = None, layer: int = 0, start: int = 0):
        """mask: None (bidirectional), "causal", or a boolean tensor (True = attend)."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, angles), apply_rope(k, angles)
        if cache is not None:
            k, v = cache.update(layer, k, v, start)
        causal = isinstance(mask, str) and mask == "causal"  # full causal pass: let SDPA use its fused kernel
        dtype, fp32 = q.dtype, q.device.type == "cpu" and q.dtype == torch.bfloat16
        # On CPU the bf16 SDPA backward is ~8x slower than fp32 (25 ms vs 3.7 ms per call at 64 tokens, dim 64),
        # so attention runs in fp32 there, outside autocast (which would cast it back to bf16).
        with torch.autocast(device_type="cpu", enabled=False) if fp32 else _nullcontext():
            if fp32:
                q, k, v = q.float(), k.float(), v.float()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.to(dtype).transpose(1, 2).reshape(b, t, -1))


GATE_ACTS = {"silu": F.silu, "gelu": F.gelu}  # gelu: exact erf form (timm's SwiGLU with act_layer=nn.GELU)


class SwiGLU(nn.Module):
    """w3(act(a) * b) with [a, b] = w12(x); ``act`` silu (SwiGLU) or gelu (GeGLU, as xAR's released blocks)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, act: str = "silu"):
        super().__init__()
        if act not in GATE_ACTS:
            raise ValueError(f"mlp act '{act}': expected one of {sorted(GATE_ACTS)}")
        self.act = GATE_ACTS[act]
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, -1)
        return self.w3(self.act(a) * b)


class Block(nn.Module):
    """Pre-norm block. ``dropout`` acts on the two residual branches' outputs (LlamaGen's resid/ffn dropout,
    not on the wider MLP hidden layer); attention-probability
    dropout (``attn_dropout``) is off by default, as in LlamaGen (and on CPU it would cost more than the
    rest of a small block: SDPA falls back to its unfused path to draw the mask)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 8 / 3, dropout: float = 0.0, attn_dropout: float = 0.0,
                 norm_eps: float = 1e-6):
        super().__init__()
        hidden = int(dim * mlp_ratio + 7) // 8 * 8
        self.norm1, self.attn = RMSNorm(dim, norm_eps), Attention(dim, heads, attn_dropout)
        self.norm2, self.mlp = RMSNorm(dim, norm_eps), SwiGLU(dim, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, angles, mask=None, cache=None, layer=0, start=0):
        x = x + self.drop(self.attn(self.norm1(x), angles, mask, cache, layer, start))
        return x + self.drop(self.mlp(self.norm2(x)))


def causal_mask(q_len: int, k_len: int, start: int, device=None) -> torch.Tensor:
    """Boolean mask (True = attend) for queries at positions start..start+q_len-1 over keys 0..k_len-1."""
    q = torch.arange(start, start + q_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= q
