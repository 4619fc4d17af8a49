"""TokenUnify (ICCV 2025): autoregressive mixture pretraining of a Mamba encoder on EM volumes, and the
affinity-prediction network fine-tuned from it for neuron segmentation.

Tokens: non-overlapping (pz, py, px) patches of the volume (``patch``), z-major. Encoder (``MambaEncoder``):
a Conv3d patch embedding, ``depth`` pre-norm residual blocks of the tri-directional Mamba mixer (forward,
reverse, slice-interleaved scans with their own parameters, summed; ``vistok.nn.mamba``), LayerNorm.

Pretraining (``model.type: tokenunify``), three objectives on the same encoder:
  random    (MAE-like) ``mask_ratio`` of the patches blanked; reconstruct the whole clean volume (sigmoid, MSE)
  next      a prefix of K tokens visible (K ~ U{1..N-1}), the rest blanked; predict token K's patch from the
            feature of token K-1 (a small MLP head), MSE
  next_all  same prefix; reconstruct the whole volume (the reconstruction head), MSE
Blanked patches are ``blank``: zeros or N(0, 1) noise. The mixture is weighted by ``weights`` and scheduled by
``schedule``: ``alternate`` (the default: steps cycle random -> prefix objectives -> random ..., so both really
train, unlike the released code whose switch never fires), ``sum`` (every objective every step), or
``staged`` (random until ``stage_steps``, then next + next_all).

Fine-tuning (``model.type: tokenunify_seg``): the same encoder, a full-resolution conv stem for the skip path,
a transposed-conv decoder back to voxels, three affinity channels (z, y, x; sigmoid) trained with
class-rebalanced MSE; segmentation by seeded watershed, scored by VOI and ARAND (``vistok.evaluation.em``).
``train.init_from`` a pretraining run with ``train.init_skip: [stem., decoder., head.]`` loads the encoder.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.modeling import VistokModel
from vistok.nn.mamba import Mamba
from vistok.registry import register_model
from vistok.schema import NonNegFloat, NonNegInt, PosInt, Prob, Triple

OBJECTIVES = ("random", "next", "next_all")


def patchify(vol: torch.Tensor, patch) -> torch.Tensor:
    """B,C,D,H,W -> B,N,C*pz*py*px (z-major patch order)."""
    b, c, d, h, w = vol.shape
    pz, py, px = patch
    x = vol.view(b, c, d // pz, pz, h // py, py, w // px, px)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, (d // pz) * (h // py) * (w // px), -1)


def unpatchify(tokens: torch.Tensor, patch, shape) -> torch.Tensor:
    """Inverse of ``patchify``: B,N,C*pz*py*px -> B,C,D,H,W."""
    b = tokens.shape[0]
    c, d, h, w = shape
    pz, py, px = patch
    x = tokens.view(b, d // pz, h // py, w // px, c, pz, py, px)
    return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, c, d, h, w)


class MambaEncoder(nn.Module):
    def __init__(self, in_channels: int, dim: int, depth: int, patch, d_state: int = 16, expand: int = 2):
        super().__init__()
        self.patch = tuple(int(p) for p in patch)
        self.embed = nn.Conv3d(in_channels, dim, self.patch, stride=self.patch)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.mixers = nn.ModuleList(Mamba(dim, d_state=d_state, expand=expand, directions=("forward", "reverse", "slice"))
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def check(self, shape) -> None:
        bad = [(s, p) for s, p in zip(shape[-3:], self.patch) if s % p]
        if bad:
            raise ValueError(f"tokenunify: volume {tuple(shape[-3:])} is not divisible by patch {self.patch}")

    def forward(self, vol: torch.Tensor) -> torch.Tensor:
        """B,C,D,H,W -> tokens B,N,dim (z-major); the slice scan interleaves the D/pz planes of patches."""
        self.check(vol.shape)
        x = self.embed(vol).flatten(2).transpose(1, 2)
        planes = vol.shape[2] // self.patch[0]
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x), nslices=planes)
        return self.norm(x)


class _EMBase(VistokModel):
    kind = "em"

    def __init__(self, in_channels: int, dim: int, depth: int, patch, d_state: int, expand: int):
        super().__init__()
        self.in_channels, self.patch = in_channels, tuple(int(p) for p in patch)
        self.encoder = MambaEncoder(in_channels, dim, depth, self.patch, d_state, expand)


@register_model("tokenunify")
class TokenUnifyPretrain(_EMBase):
    def __init__(self, in_channels: PosInt = 1, dim: PosInt = 64, depth: PosInt = 4, patch: Triple(PosInt) = (2, 8, 8),
                 d_state: PosInt = 16, expand: PosInt = 2, mask_ratio: Prob = 0.4, blank: str = "zero",
                 weights: dict | None = None, schedule: str = "alternate", stage_steps: NonNegInt = 0):
        super().__init__(in_channels, dim, depth, patch, d_state, expand)
        weights = dict(weights or {"random": 1.0, "next": 1.0, "next_all": 1.0})
        bad = [k for k in weights if k not in OBJECTIVES]
        if bad or not any(weights.get(k, 0) > 0 for k in OBJECTIVES):
            raise ValueError(f"tokenunify: weights {weights}; expected positive weights for some of {OBJECTIVES}")
        if schedule not in ("alternate", "sum", "staged"):
            raise ValueError(f"tokenunify: schedule '{schedule}'; expected alternate, sum or staged")
        if blank not in ("zero", "noise"):
            raise ValueError(f"tokenunify: blank '{blank}'; expected zero or noise")
        self.weights = {k: float(weights.get(k, 0.0)) for k in OBJECTIVES}
        self.mask_ratio, self.blank, self.schedule, self.stage_steps = mask_ratio, blank, schedule, stage_steps
        p = in_channels * math.prod(self.patch)
        self.head = nn.Linear(dim, p)  # reconstruction of every token's patch (random, next_all)
        self.next_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, p))  # token K from token K-1

    def active(self, step: int) -> list[str]:
        """The objectives this step trains (with positive weight)."""
        on = [k for k in OBJECTIVES if self.weights[k] > 0]
        groups = [g for g in (["random"], ["next", "next_all"]) if any(k in on for k in g)]
        if self.schedule == "sum":
            chosen = on
        elif self.schedule == "staged":
            chosen = groups[0] if (step < self.stage_steps or len(groups) == 1) else groups[-1]
        else:
            chosen = groups[step % len(groups)]
        return [k for k in chosen if k in on]

    def _blank(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        fill = torch.zeros_like(tokens) if self.blank == "zero" else torch.randn_like(tokens)
        return torch.where(hidden[..., None], fill, tokens)

    def losses(self, vol: torch.Tensor, objectives, generator: torch.Generator | None = None) -> dict:
        tokens = patchify(vol, self.patch)
        b, n, _ = tokens.shape
        shape = vol.shape[1:]
        out = {}
        if "random" in objectives:
            hidden = torch.rand(b, n, generator=generator, device=vol.device).argsort(1) < round(self.mask_ratio * n)
            feats = self.encoder(unpatchify(self._blank(tokens, hidden), self.patch, shape))
            out["random"] = F.mse_loss(torch.sigmoid(self.head(feats)).float(), tokens.float())
        if "next" in objectives or "next_all" in objectives:
            k = torch.randint(1, n, (b,), generator=generator, device=vol.device)  # K in 1..N-1 visible tokens
            hidden = torch.arange(n, device=vol.device)[None] >= k[:, None]
            feats = self.encoder(unpatchify(self._blank(tokens, hidden), self.patch, shape))
            if "next_all" in objectives:
                out["next_all"] = F.mse_loss(torch.sigmoid(self.head(feats)).float(), tokens.float())
            if "next" in objectives:
                last = feats[torch.arange(b, device=vol.device), k - 1]
                target = tokens[torch.arange(b, device=vol.device), k]
                out["next"] = F.mse_loss(torch.sigmoid(self.next_head(last)).float(), target.float())
        return out

    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        parts = self.losses(batch["volume"], self.active(step))
        loss = sum(self.weights[k] * v for k, v in parts.items())
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """Every objective's loss on held-out volumes (fixed masks)."""
        from vistok.dist import all_sum

        g = torch.Generator().manual_seed(0)
        sums, count = {k: 0.0 for k in OBJECTIVES}, 0
        for batch in batches:
            vol = batch["volume"]
            for k, v in self.losses(vol, OBJECTIVES, g).items():
                sums[k] += float(v) * vol.shape[0]
            count += vol.shape[0]
        totals = all_sum([sums[k] for k in OBJECTIVES] + [float(count)])
        return {f"{k}_mse": totals[i] / max(totals[-1], 1.0) for i, k in enumerate(OBJECTIVES)}


@register_model("tokenunify_seg")
class TokenUnifySeg(_EMBase):
    def __init__(self, in_channels: PosInt = 1, dim: PosInt = 64, depth: PosInt = 4, patch: Triple(PosInt) = (2, 8, 8),
                 d_state: PosInt = 16, expand: PosInt = 2, stem_channels: PosInt = 16, seed_threshold: Prob = 0.9,
                 max_weight: NonNegFloat = 10.0):
        super().__init__(in_channels, dim, depth, patch, d_state, expand)
        c = stem_channels
        self.seed_threshold, self.max_weight = seed_threshold, max_weight
        self.stem = nn.Sequential(nn.Conv3d(in_channels, c, 3, padding=1), nn.GELU(), nn.Conv3d(c, c, 3, padding=1), nn.GELU())
        self.decoder = nn.ModuleDict({
            "up": nn.ConvTranspose3d(dim, c, self.patch, stride=self.patch),
            "fuse": nn.Sequential(nn.Conv3d(2 * c, c, 3, padding=1), nn.GELU(), nn.Conv3d(c, c, 3, padding=1), nn.GELU()),
            "out": nn.Conv3d(c, 3, 1),
        })

    def affinities(self, vol: torch.Tensor) -> torch.Tensor:
        """B,C,D,H,W in [0, 1] -> affinities B,3,D,H,W in (0, 1)."""
        feats = self.encoder(vol)
        b, _, d, h, w = vol.shape
        pz, py, px = self.patch
        grid = feats.transpose(1, 2).reshape(b, -1, d // pz, h // py, w // px)
        x = torch.cat([self.decoder["up"](grid), self.stem(vol)], 1)
        return torch.sigmoid(self.decoder["out"](self.decoder["fuse"](x)))

    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        pred, target = self.affinities(batch["volume"]).float(), batch["affinities"].float()
        # class-rebalanced MSE: positives and negatives of each channel weigh equally (capped at max_weight)
        pos = target.mean((0, 2, 3, 4), keepdim=True).clamp(1e-3, 1 - 1e-3)
        weight = torch.where(target > 0.5, 0.5 / pos, 0.5 / (1 - pos)).clamp(max=self.max_weight)
        loss = (weight * (pred - target) ** 2).mean()
        return {"loss": loss, "mse": F.mse_loss(pred, target).detach()}

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        from vistok.metrics.segmentation import SegmentationMeter

        meter = SegmentationMeter(self.seed_threshold)
        for batch in batches:
            meter.update(self.affinities(batch["volume"]), batch["labels"])
        return meter.compute(sync=True)

    @torch.no_grad()
    def visualize(self, batch: dict, n: int = 4, **_):
        vol = batch["volume"][:n]
        mid = vol.shape[2] // 2
        aff = self.affinities(vol)[:, 1:, mid].mean(1, keepdim=True)  # in-plane affinity of the middle slice
        target = batch["affinities"][:n, 1:, mid].mean(1, keepdim=True)
        return torch.cat([vol[:, :, mid], aff, target]) * 2 - 1
