"""VQGAN-style convolutional encoder/decoder (taming-transformers / LlamaGen layout).

``ch_mult`` has one entry per resolution level; each level after the first halves the resolution,
so the downsampling factor is 2 ** (len(ch_mult) - 1). LlamaGen VQ-16: ch 128, ch_mult (1,1,2,2,4),
``attn_last_level=True`` (an attention block after every residual block of the lowest resolution) and
``downsample_pad="asymmetric"`` (pad right/bottom by one, then a stride-2 conv without padding), which
is what ``vistok.convert`` needs to load its weights exactly.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch // 4) if ch >= 8 else 1, ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over spatial positions (used at the lowest resolution)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm, self.qkv, self.proj = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv; ``pad`` "symmetric" (padding 1) or "asymmetric" (right/bottom only, taming/LlamaGen)."""

    def __init__(self, ch: int, pad: str = "symmetric"):
        super().__init__()
        if pad not in ("symmetric", "asymmetric"):
            raise ValueError(f"downsample_pad='{pad}'; expected 'symmetric' or 'asymmetric'")
        self.asymmetric = pad == "asymmetric"
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0 if self.asymmetric else 1)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.asymmetric else x)


class Encoder(nn.Module):
    def __init__(self, in_channels=3, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256,
                 attn_mid=True, dropout=0.0, attn_last_level=False, downsample_pad="symmetric"):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        blocks, cin = [], ch
        for level, mult in enumerate(ch_mult):
            cout = ch * mult
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(cin, cout, dropout))
                cin = cout
                if attn_last_level and level == len(ch_mult) - 1:
                    blocks.append(AttnBlock(cin))
            if level < len(ch_mult) - 1:
                blocks.append(Downsample(cin, downsample_pad))
        self.down = nn.Sequential(*blocks)
        mid = [ResBlock(cin, cin, dropout)] + ([AttnBlock(cin)] if attn_mid else []) + [ResBlock(cin, cin, dropout)]
        self.mid = nn.Sequential(*mid)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, z_channels, 3, padding=1)

    def forward(self, x):
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, out_channels=3, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256,
                 attn_mid=True, dropout=0.0, attn_last_level=False):
        super().__init__()
        cin = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        mid = [ResBlock(cin, cin, dropout)] + ([AttnBlock(cin)] if attn_mid else []) + [ResBlock(cin, cin, dropout)]
        self.mid = nn.Sequential(*mid)
        blocks = []
        for level, mult in reversed(list(enumerate(ch_mult))):
            cout = ch * mult
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(cin, cout, dropout))
                cin = cout
                if attn_last_level and level == len(ch_mult) - 1:
                    blocks.append(AttnBlock(cin))
            if level > 0:
                blocks.append(Upsample(cin))
        self.up = nn.Sequential(*blocks)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, out_channels, 3, padding=1)

    def forward(self, z):
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))
