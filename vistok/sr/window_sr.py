"""A SwinIR-light-style window-attention SR baseline with CATANet's skeleton, for the CATANet ablation.

    LR in [0, 1] -> shallow 3x3 conv -> blocks -> + shallow -> pixel-shuffle upsampler -> 3x3 conv + bilinear LR

Each block (residual around it, closed by a 3x3 conv, as CATANet's): a window-attention layer and a
shifted-window layer (Swin: non-overlapping ``window`` x ``window`` windows, the second shifted by half a
window with the wrap-around masked; relative position bias per head), each followed by an MLP, pre-norm.
Only the token mixer differs from CATANet (content-aware groups + centres + overlapping patches vs fixed
windows), so ``benchmarks/catanet_vs_window.py`` compares the two at the same parameter count.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.sr.catanet import SRModel, _init, upsampler_convs
from vistok.registry import register_model
from vistok.schema import PosInt


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("bias_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x nW*B, w*w, C; mask nW, w*w, w*w (True = attend) or None."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1)[None]  # 1,H,n,n
        if mask is not None:
            nw = mask.shape[0]
            bias = bias[None].masked_fill(~mask[None, :, None], float("-inf"))  # 1,nW,H,n,n
            bias = bias.expand(b // nw, -1, -1, -1, -1).reshape(b, self.heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SwinLayer(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, mlp_dim: int, shift: int):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def _mask(self, hp: int, wp: int, device) -> torch.Tensor | None:
        if not self.shift:
            return None
        w, s = self.window, self.shift
        region = torch.zeros(hp, wp, device=device)
        cuts = (slice(0, -w), slice(-w, -s), slice(-s, None))
        for i, hs in enumerate(cuts):
            for j, ws in enumerate(cuts):
                region[hs, ws] = i * 3 + j
        r = region.view(hp // w, w, wp // w, w).transpose(1, 2).reshape(-1, w * w)
        return r[:, :, None] == r[:, None, :]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b, c, h, w = img.shape
        win = self.window
        ph, pw = -h % win, -w % win
        t = img.permute(0, 2, 3, 1)
        y = F.pad(self.norm1(t).permute(0, 3, 1, 2), (0, pw, 0, ph), mode="replicate").permute(0, 2, 3, 1)
        hp, wp = h + ph, w + pw
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = y.view(b, hp // win, win, wp // win, win, c).transpose(2, 3).reshape(-1, win * win, c)
        y = self.attn(y, self._mask(hp, wp, img.device))
        y = y.view(b, hp // win, wp // win, win, win, c).transpose(2, 3).reshape(b, hp, wp, c)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        t = t + y[:, :h, :w]
        t = t + self.mlp(self.norm2(t))
        return t.permute(0, 3, 1, 2)


class WindowBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList([SwinLayer(dim, heads, window, mlp_dim, 0), SwinLayer(dim, heads, window, mlp_dim, window // 2)])
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x):
        y = x
        for layer in self.layers:
            y = layer(y)
        return x + self.conv(y)


@register_model("window_sr")
class WindowSR(SRModel):
    def __init__(self, scale: PosInt = 2, in_channels: PosInt = 3, dim: PosInt = 40, heads: PosInt = 4, window: PosInt = 8,
                 mlp_dim: PosInt = 80, depth: PosInt = 8):
        super().__init__()
        self.scale = scale
        self.shallow = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.blocks = nn.ModuleList(WindowBlock(dim, heads, window, mlp_dim) for _ in range(depth))
        self.up = upsampler_convs(dim, scale)
        self.last = nn.Conv2d(dim, in_channels, 3, padding=1)
        self.apply(_init)
