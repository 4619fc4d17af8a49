"""CATANet: content-aware token aggregation for lightweight image super-resolution (CVPR 2025).

    LR B,3,h,w in [0, 1] -> shallow 3x3 conv -> blocks -> + shallow -> pixel-shuffle upsampler -> 3x3 conv
                         -> + bilinear-upsampled LR = SR B,3,sh,sw

Each block (residual around it, closed by a 3x3 conv):
  TAB  token-aggregation block. Tokens (pixels, LayerNorm-ed) are assigned to shared content centres by cosine
       similarity. In training the centres are refined by spherical k-means over the whole batch
       (``kmeans_iters`` - 1 rounds without gradient, one with) and kept as an EMA buffer (``ema_decay`` 0.999,
       saved with the weights; the first training batch initialises them from raster chunks of its tokens);
       in eval the stored centres are used as they are, so an image's output does not depend on its batch.
       Tokens are sorted by centre (stable), cut into groups of ``group_size`` (the tail padded by reflection),
       and each group attends to itself and the next group (intra-group attention, IASA) plus, in a separate
       softmax, to the centres' keys and values (inter-region cross attention, IRCA); the two outputs are
       summed, scattered back to pixel order, projected, 1x1 conv, residual; then a ConvFFN (pre-norm).
  LRSA local-region self-attention over square patches of ``patch_size`` overlapping by ``overlap`` pixels
       (the last patch of a row/column is moved inside the image; overlapping pixels are averaged), residual;
       then a ConvFFN (pre-norm) on the whole map.
ConvFFN: fc1 -> GELU -> h + GELU(depthwise 5x5 conv(h)) -> fc2.

The paper's x2/x3/x4 models (dim 40, qk 36, mlp 96, 4 heads, 8 blocks with centres [16, 32, 64, 128] x 2,
groups [256, 128, 64, 32] x 2, patches [16, 20, 24, 28] x 2) have exactly 477,435 / 549,635 / 535,195
parameters, as the official code. Images are in [0, 1] (BasicSR's convention); ``Pipeline.upscale`` maps
vistok's [-1, 1]. Training batches are {"lr", "hr"} pairs (``data.type: sr_pairs``); the loss is L1.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.modeling import VistokModel
from vistok.ops import patch_starts
from vistok.registry import register_model
from vistok.schema import Decay, NonNegInt, PosInt, PosInts


def _patch_index(h: int, w: int, ps: int, overlap: int, device):
    step = ps if (h == ps and w == ps) else ps - overlap
    rows = torch.tensor(patch_starts(h, ps, step), device=device)[:, None] + torch.arange(ps, device=device)
    cols = torch.tensor(patch_starts(w, ps, step), device=device)[:, None] + torch.arange(ps, device=device)
    return rows, cols


def patch_divide(x: torch.Tensor, ps: int, overlap: int = 2) -> tuple[torch.Tensor, tuple]:
    """B,C,H,W -> patches B,nh,nw,C,ps,ps (and the index needed to put them back)."""
    rows, cols = _patch_index(x.shape[2], x.shape[3], ps, overlap, x.device)
    patches = x[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # B,C,nh,nw,ps,ps
    return patches.permute(0, 2, 3, 1, 4, 5), (rows, cols)


def patch_reverse(patches: torch.Tensor, index: tuple, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``patch_divide``: overlapping pixels are averaged over the patches that cover them."""
    rows, cols = index
    b, nh, nw, c = patches.shape[:4]
    r = rows[:, None, :, None].expand(nh, nw, rows.shape[1], cols.shape[1])
    q = cols[None, :, None, :].expand_as(r)
    flat = (r * size[1] + q).reshape(-1)
    out = patches.new_zeros(b, c, size[0] * size[1])
    out.index_add_(2, flat, patches.permute(0, 3, 1, 2, 4, 5).reshape(b, c, -1))
    count = patches.new_zeros(size[0] * size[1]).index_add_(0, flat, patches.new_ones(flat.shape))
    return (out / count).view(b, c, *size)


# ---- building blocks ----------------------------------------------------------------------------------
class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int, kernel: int = 5):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dw = nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        img = h.transpose(1, 2).reshape(h.shape[0], -1, *hw)
        return self.fc2(h + F.gelu(self.dw(img)).flatten(2).transpose(1, 2))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)  # ...,N,(H d) -> ...,H,N,d


def kmeans_step(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """One spherical k-means step over all tokens of the batch: x B,N,d and centers K,d (both unit norm) ->
    the normalised member sums; a centre without members keeps its value."""
    assign = (x @ centers.t()).argmax(-1).flatten()
    sums = x.new_zeros(centers.shape).index_add(0, assign, x.flatten(0, 1))
    counts = torch.bincount(assign, minlength=centers.shape[0])
    return torch.where((counts == 0)[:, None], centers, F.normalize(sums, dim=-1))


class TokenAggregationBlock(nn.Module):
    def __init__(self, dim: int, qk_dim: int, mlp_dim: int, heads: int, num_centers: int, group_size: int,
                 kmeans_iters: int = 5, ema_decay: float = 0.999):
        super().__init__()
        self.heads, self.group_size, self.kmeans_iters, self.ema_decay = heads, group_size, kmeans_iters, ema_decay
        self.norm = nn.LayerNorm(dim)
        self.center_k, self.center_v = nn.Linear(dim, qk_dim, bias=False), nn.Linear(dim, dim, bias=False)  # IRCA
        self.q, self.k = nn.Linear(dim, qk_dim, bias=False), nn.Linear(dim, qk_dim, bias=False)  # IASA
        self.v, self.proj = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.conv = nn.Conv2d(dim, dim, 1, bias=False)
        self.ffn_norm, self.ffn = nn.LayerNorm(dim), ConvFFN(dim, mlp_dim)
        self.register_buffer("centers", torch.randn(num_centers, dim))
        self.register_buffer("centers_ready", torch.tensor(False))

    def initial_centers(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of each of K raster chunks of the tokens, over the batch (the tail padded by reflection)."""
        k, n = self.centers.shape[0], x.shape[1]
        idx = _reflect_index(n, -(-n // k) * k, x.device)
        return x[:, idx].unflatten(1, (k, -1)).mean((0, 2))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b, c, h, w = img.shape
        res = img.flatten(2).transpose(1, 2)
        x = self.norm(res)
        xn = F.normalize(x.float(), dim=-1)
        centers = self.centers if bool(self.centers_ready) else self.initial_centers(x.detach().float())
        if self.training:
            with torch.no_grad():
                for _ in range(self.kmeans_iters - 1):
                    centers = kmeans_step(xn, F.normalize(centers, dim=-1))
            centers = kmeans_step(xn, F.normalize(centers, dim=-1))  # the last round carries gradient to x
        k_c, v_c = _heads(self.center_k(centers.to(x.dtype)), self.heads), _heads(self.center_v(centers.to(x.dtype)), self.heads)
        with torch.no_grad():
            order = (xn @ F.normalize(centers.detach(), dim=-1).t()).argmax(-1).argsort(dim=-1, stable=True)
        y = self.grouped_attention(x, order, k_c, v_c)
        out = res + self.conv(y.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        out = out + self.ffn(self.ffn_norm(out), (h, w))
        if self.training:  # the EMA moves once per optimiser step (apply_pending), by the mean over micro-batches
            new = centers.detach().to(self.centers.dtype)
            total, count = self.__dict__.get("_pending", (0, 0))
            self.__dict__["_pending"] = (total + new, count + 1)
        return out.transpose(1, 2).reshape(b, c, h, w)

    @torch.no_grad()
    def apply_pending(self) -> None:
        """Move the centre EMA by the k-means centres of this step's micro-batches (mean, and mean over ranks: every
        replica keeps the same centres); the first step initialises them."""
        total, count = self.__dict__.pop("_pending", (0, 0))
        if not count:
            return
        new = total / count
        from vistok.dist import all_mean

        new = all_mean(new)
        if bool(self.centers_ready):
            self.centers.mul_(self.ema_decay).add_(new, alpha=1 - self.ema_decay)
        else:
            self.centers.copy_(new), self.centers_ready.fill_(True)

    def grouped_attention(self, x: torch.Tensor, order: torch.Tensor, k_c: torch.Tensor, v_c: torch.Tensor) -> torch.Tensor:
        """Tokens sorted by ``order`` (B,N), cut into groups; group g attends to groups g and g + 1 and, in a
        separate softmax, to the centres; outputs summed and put back in pixel order."""
        b, n, _ = x.shape
        gs = min(n, self.group_size)
        ng = -(-n // gs)
        q, k, v = (sort_tokens(f(x), order) for f in (self.q, self.k, self.v))
        qi, ki = _reflect_index(n, ng * gs, x.device), _reflect_index(n, (ng + 1) * gs, x.device)
        q = _heads(q[:, qi].unflatten(1, (ng, gs)), self.heads)  # B,ng,H,gs,d
        k, v = k[:, ki], v[:, ki]
        k = torch.cat([k[:, :ng * gs].unflatten(1, (ng, gs)), k[:, gs:].unflatten(1, (ng, gs))], 2)  # B,ng,2gs,d
        v = torch.cat([v[:, :ng * gs].unflatten(1, (ng, gs)), v[:, gs:].unflatten(1, (ng, gs))], 2)
        out = F.scaled_dot_product_attention(q, _heads(k, self.heads), _heads(v, self.heads))
        out = out + F.scaled_dot_product_attention(q, k_c.expand(b, ng, -1, -1, -1), v_c.expand(b, ng, -1, -1, -1))
        out = out.transpose(-3, -2).flatten(-2).flatten(1, 2)[:, :n]  # B,N,dim (sorted)
        return self.proj(unsort_tokens(out, order))


def sort_tokens(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x B,N,C -> x[b, order[b]] (tokens grouped by centre)."""
    return torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[-1]))


def unsort_tokens(y: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The inverse of ``sort_tokens``: y[b, i] goes back to position order[b, i]."""
    return torch.empty_like(y).scatter_(1, order[..., None].expand_as(y), y)


def _reflect_index(n: int, length: int, device) -> torch.Tensor:
    """0..n-1 then n-1, n-2, ... (symmetric reflection, repeated as needed), cut to ``length``."""
    period = torch.cat([torch.arange(n, device=device), torch.arange(n - 1, -1, -1, device=device)])
    return period.repeat(-(-length // (2 * n)))[:length]


class PatchAttention(nn.Module):
    def __init__(self, dim: int, qk_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k = nn.Linear(dim, qk_dim, bias=False), nn.Linear(dim, qk_dim, bias=False)
        self.v, self.proj = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        out = F.scaled_dot_product_attention(*(_heads(f(x), self.heads) for f in (self.q, self.k, self.v)))
        return self.proj(out.transpose(-3, -2).flatten(-2))


class LocalRegionBlock(nn.Module):
    """LRSA: self-attention inside overlapping square patches, then a ConvFFN on the whole map."""

    def __init__(self, dim: int, qk_dim: int, mlp_dim: int, heads: int, patch_size: int, overlap: int = 2):
        super().__init__()
        self.patch_size, self.overlap = patch_size, overlap
        self.attn_norm, self.attn = nn.LayerNorm(dim), PatchAttention(dim, qk_dim, heads)
        self.ffn_norm, self.ffn = nn.LayerNorm(dim), ConvFFN(dim, mlp_dim)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b, c, h, w = img.shape
        ps = min(self.patch_size, h, w)  # a map smaller than a patch is one patch
        patches, index = patch_divide(img, ps, self.overlap)
        nh, nw = patches.shape[1:3]
        t = patches.flatten(-2).transpose(-1, -2).reshape(b * nh * nw, ps * ps, c)
        t = t + self.attn(self.attn_norm(t))
        img = patch_reverse(t.transpose(1, 2).reshape(b, nh, nw, c, ps, ps), index, (h, w))
        t = img.flatten(2).transpose(1, 2)
        t = t + self.ffn(self.ffn_norm(t), (h, w))
        return t.transpose(1, 2).reshape(b, c, h, w)


class CATABlock(nn.Module):
    def __init__(self, dim, qk_dim, mlp_dim, heads, num_centers, group_size, patch_size, kmeans_iters, ema_decay, overlap):
        super().__init__()
        self.tab = TokenAggregationBlock(dim, qk_dim, mlp_dim, heads, num_centers, group_size, kmeans_iters, ema_decay)
        self.lrsa = LocalRegionBlock(dim, qk_dim, mlp_dim, heads, patch_size, overlap)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x):
        return x + self.conv(self.lrsa(self.tab(x)))


def upsampler_convs(dim: int, scale: int) -> nn.ModuleList:
    """Pixel-shuffle upsampler convs: x4 = two x2 stages, x2/x3 one stage (each conv -> shuffle -> LeakyReLU 0.1)."""
    if scale == 4:
        return nn.ModuleList([nn.Conv2d(dim, 4 * dim, 3, padding=1), nn.Conv2d(dim, 4 * dim, 3, padding=1)])
    if scale in (2, 3):
        return nn.ModuleList([nn.Conv2d(dim, scale * scale * dim, 3, padding=1)])
    raise ValueError(f"sr: scale {scale}; expected 2, 3 or 4")


def upsample(x: torch.Tensor, convs: nn.ModuleList) -> torch.Tensor:
    for conv in convs:
        x = F.leaky_relu(F.pixel_shuffle(conv(x), int(round((conv.out_channels // conv.in_channels) ** 0.5))), 0.1)
    return x


@dataclasses.dataclass
class SRSamplingOptions:
    """Inference of an SR stage (``sample.py`` builds its flags from this)."""
    tile: NonNegInt = dataclasses.field(default=0, metadata={"help": "LR tile size for big images (0: whole images)"})
    tile_overlap: NonNegInt = dataclasses.field(default=16, metadata={"help": "LR pixels neighbouring tiles share per side"})


class SRModel(VistokModel):
    """What the SR stages share: the skeleton (``shallow`` conv -> ``blocks`` -> + shallow -> ``up`` pixel
    shuffle -> ``last`` conv -> + bilinear LR), the L1 objective on {"lr", "hr"} pairs in [0, 1], held-out
    PSNR-Y, pictures. Subclasses build those four parts; the blocks are what differs."""

    kind = "sr"
    drive_priority = 0  # alone: a super-resolution pipeline; after a generator: its cascade stage
    SamplingOptions = SRSamplingOptions

    @classmethod
    def default_pipeline(cls, config: dict) -> str:
        return "super-resolution"

    @property
    def in_channels(self) -> int:
        return self.shallow.in_channels

    def check_fits(self, components: dict) -> None:
        """As a cascade stage: the images it gets have its channels (grey goes through an RGB model as 3 equal ones)."""
        tok = components.get("tokenizer")
        c = getattr(tok, "in_channels", None) if tok is not None else None
        if c is not None and c != self.in_channels and not (c == 1 and self.in_channels == 3):
            raise ValueError(f"sr stage takes {self.in_channels}-channel images; the tokenizer makes {c}-channel ones")

    def upscale_image(self, lr: torch.Tensor, tile: int = 0, tile_overlap: int = 16) -> torch.Tensor:
        """``upscale``, tiled when ``tile`` > 0 (tiles overlapping by ``tile_overlap`` LR pixels, averaged)."""
        if not tile:
            return self.upscale(lr)
        from vistok.ops import tiled_upscale

        return tiled_upscale(self, lr, tile, tile_overlap)

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        """LR B,C,h,w in [0, 1] -> SR B,C,scale*h,scale*w (not clamped)."""
        base = F.interpolate(lr, scale_factor=self.scale, mode="bilinear", align_corners=False)
        f = self.shallow(lr)
        x = f
        for blk in self.blocks:
            x = blk(x)
        return self.last(upsample(x + f, self.up)) + base

    def on_step_end(self, step: int) -> None:
        """After each optimiser step: blocks with a pending state update (CATANet's centres) apply it."""
        for m in self.modules():
            if m is not self and hasattr(m, "apply_pending"):
                m.apply_pending()

    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        loss = F.l1_loss(self.upscale(batch["lr"]).float(), batch["hr"].float())
        return {"loss": loss, "l1": loss.detach()}

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        from vistok.metrics.sr import SRMeter

        meter = SRMeter(self.scale)
        for batch in batches:
            meter.update(self.upscale(batch["lr"]).clamp(0, 1), batch["hr"], batch["lr"])
        return meter.compute(sync=True)

    @torch.no_grad()
    def visualize(self, batch: dict, n: int = 8, **_):
        from vistok.ops import bicubic_upscale

        lr, hr = batch["lr"][:n], batch["hr"][:n]
        rows = [bicubic_upscale(lr, self.scale).clamp(0, 1), self.upscale(lr).clamp(0, 1), hr]
        return torch.cat(rows) * 2 - 1


@register_model("catanet")
class CATANet(SRModel):
    def __init__(
        self,
        scale: PosInt = 2,
        in_channels: PosInt = 3,
        dim: PosInt = 40,
        qk_dim: PosInt = 36,
        mlp_dim: PosInt = 96,
        heads: PosInt = 4,
        num_centers: PosInts = (16, 32, 64, 128, 16, 32, 64, 128),
        group_sizes: PosInts = (256, 128, 64, 32, 256, 128, 64, 32),
        patch_sizes: PosInts = (16, 20, 24, 28, 16, 20, 24, 28),
        kmeans_iters: PosInts = (5, 5, 5, 5, 5, 5, 5, 5),
        ema_decay: Decay = 0.999,
        overlap: NonNegInt = 2,
    ):
        super().__init__()
        lists = {"num_centers": num_centers, "group_sizes": group_sizes, "patch_sizes": patch_sizes, "kmeans_iters": kmeans_iters}
        if len({len(v) for v in lists.values()}) != 1:
            raise ValueError(f"catanet: the per-block lists must have one entry per block, got lengths "
                             f"{ {k: len(v) for k, v in lists.items()} }")
        if qk_dim % heads or dim % heads:
            raise ValueError(f"catanet: dim {dim} and qk_dim {qk_dim} must be divisible by heads {heads}")
        if any(p <= overlap for p in patch_sizes):
            raise ValueError(f"catanet: patch_sizes {list(patch_sizes)} must exceed the overlap {overlap}")
        self.scale = scale
        self.shallow = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.blocks = nn.ModuleList(
            CATABlock(dim, qk_dim, mlp_dim, heads, int(k), int(g), int(p), int(it), ema_decay, overlap)
            for k, g, p, it in zip(num_centers, group_sizes, patch_sizes, kmeans_iters))
        self.up = upsampler_convs(dim, scale)
        self.last = nn.Conv2d(dim, in_channels, 3, padding=1)
        self.apply(_init)


def _init(m):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight), nn.init.zeros_(m.bias)
