"""xAR: next-X prediction with flow matching and noisy context learning, over a continuous tokenizer's latents.

The latent grid is cut into entities (``entity``: token | cell | subsample | scale | image, see
``vistok.generators.entities``). One transformer of AdaLN blocks (RMSNorm pre-norm, 6 modulation vectors per
block from class embedding + time embedding of the token's entity, SwiGLU, 2-D RoPE + learned positions)
predicts the flow-matching velocity of every token, under a block-causal mask (an entity sees itself and the
entities before it).

Training, per sample: x_t = (1 - t) x + t eps and target v = eps - x, with an **independent t per entity**
(logit-normal: sigmoid(N(t_mean, t_std))), so one pass trains every AR step while the context it sees is
noisy (**noisy context learning**). ``noisy_context=false`` is teacher forcing for the ablation: a clean copy
of the sequence is the context (twice the tokens) and only the noisy copy is scored.

Sampling, entity by entity: from N(0, I), ``steps`` solver steps on t = linspace(1, t_min, steps) then one
Euler step to 0; ``euler`` or ``euler-maruyama`` (drift v + w (x + (1 - t) v), noise sqrt(2 t w |dt|): w = 1
gives the paper's (2 - t) v + x, w = 0 plain Euler); CFG (``vistok.nn.guidance``) on every step (the batch
doubled with the null class), its scale constant or ramped linearly across entities (none on the first); the
finished entity enters the KV cache clean (t = 0). ``use_cache=False`` recomputes the whole prefix at every
step (reference).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.generators.ar import check_labels
from vistok.generators.entities import EntityLayout
from vistok.modeling import VistokModel
from vistok.nn.guidance import Guidance, drop_condition
from vistok.nn.transformer import Attention, KVCache, RMSNorm, SwiGLU, rope_angles
from vistok.registry import register_model
from vistok.schema import NonNegFloat, NonNegInt, PosFloat, PosInt, PosInts, Prob, Triple


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, discrete: bool = False) -> torch.Tensor:
    """t in [0, 1] (any shape) -> sinusoidal features (..., dim) of 1000 t (``discrete``: of int(1000 t), as
    the released xAR code embeds it)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    steps = t.float() * 1000
    if discrete:
        steps = steps.long().float()
    args = steps[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], -1)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class AdaLNBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.0, bias: bool = False, mlp_act: str = "silu"):
        super().__init__()
        self.norm1, self.attn = RMSNorm(dim), Attention(dim, heads, bias=bias)
        self.norm2, self.mlp = RMSNorm(dim), SwiGLU(dim, hidden, bias=bias, act=mlp_act)
        self.ada = nn.Linear(dim, 6 * dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, c, angles, mask=None, cache=None, layer=0, start=0):
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, -1)
        x = x + g1 * self.drop(self.attn(modulate(self.norm1(x), sh1, sc1), angles, mask, cache, layer, start))
        return x + g2 * self.drop(self.mlp(modulate(self.norm2(x), sh2, sc2)))


def em_drift(x: torch.Tensor, v: torch.Tensor, t: float, noise: float = 1.0) -> torch.Tensor:
    """Reverse-SDE drift for x_t = (1 - t) x0 + t eps with diffusion g^2 = 2 t noise: v - g^2/2 * score
    = v + noise * (x + (1 - t) v); noise 1: (2 - t) v + x; noise 0: v (the ODE)."""
    return v + noise * (x + (1 - t) * v)


@dataclasses.dataclass
class XARSamplingOptions:
    """What sampling from xAR takes (``sample.py`` builds its flags from this)."""
    cfg_scale: NonNegFloat = dataclasses.field(default=1.0, metadata={"help": "classifier-free guidance (1: none)"})
    cfg_schedule: Literal["constant", "linear"] = dataclasses.field(default="linear", metadata={
        "help": "guidance ramped linearly across entities (xAR), or constant"})
    steps: NonNegInt = dataclasses.field(default=0, metadata={"help": "flow-matching steps per entity (0: the model's)"})
    solver: Literal["euler", "euler-maruyama"] = "euler-maruyama"
    noise: NonNegFloat = dataclasses.field(default=1.0, metadata={"help": "euler-maruyama: SDE noise (0 = the ODE)"})
    use_cache: bool = dataclasses.field(default=True, metadata={"flag": "--no-cache",
                                                                "help": "recompute every entity (reference; slow)"})


@register_model("xar")
class XARGenerator(VistokModel):
    kind = "generator"
    continuous = True
    drive_priority = 2
    SamplingOptions = XARSamplingOptions

    @classmethod
    def default_pipeline(cls, config: dict) -> str:
        return "class-to-image"

    def check_fits(self, components: dict) -> None:
        """A continuous generator needs a continuous tokenizer with the same latent shape."""
        tok = components.get("tokenizer")
        if tok is None:
            return
        lat = tuple(getattr(tok, "latent_shape", ()) or ())
        if getattr(tok, "codebook_size", 0) is not None or lat != tuple(self.latent_shape):
            raise ValueError(f"a continuous generator (latent_shape {tuple(self.latent_shape)}) needs a continuous "
                             f"tokenizer with the same latent_shape; got a '{tok.model_type}' tokenizer with "
                             f"{lat or 'discrete codes'}")

    def compile_for_sampling(self, mode: str | None = None) -> None:
        for blk in getattr(self, "blocks", []):
            blk.compile(mode=mode, dynamic=True)

    def __init__(
        self,
        latent_shape: Triple(PosInt) = (16, 16, 16),
        num_classes: PosInt = 1000,
        entity: str = "cell",
        cell: PosInt = 8,
        stride: PosInt = 2,
        scales: PosInts = (),
        dim: PosInt = 768,
        depth: PosInt = 16,
        heads: PosInt = 12,
        mlp_ratio: PosFloat = 8 / 3,
        dropout: Prob = 0.1,
        class_dropout: Prob = 0.1,
        noisy_context: bool = True,
        t_mean: float = 0.0,
        t_std: PosFloat = 1.0,
        steps: PosInt = 40,
        t_min: Prob = 0.04,
        encoder_depth: NonNegInt = 0,
        final_adaln: bool = True,
        bias: bool = False,
        mlp_act: str = "silu",
        mlp_hidden: NonNegInt = 0,
        discrete_t: bool = False,
    ):
        super().__init__()
        c, h, w = (int(v) for v in latent_shape)
        self.latent_shape, self.num_classes, self.null_class = (c, h, w), num_classes, num_classes
        self.layout = EntityLayout(entity, h, w, cell=cell, stride=stride, scales=scales)
        self.class_dropout, self.noisy_context = class_dropout, noisy_context
        self.t_mean, self.t_std, self.steps, self.t_min = t_mean, t_std, steps, t_min
        self.depth, self.heads, self.head_dim, self.dim = depth, heads, dim // heads, dim
        if not 0 <= encoder_depth < depth:
            raise ValueError(f"xar: encoder_depth {encoder_depth} must be in [0, depth={depth})")
        self.encoder_depth, self.discrete_t = encoder_depth, discrete_t
        n = self.layout.num_tokens
        self.in_proj = nn.Linear(c, dim)
        self.pos_emb = nn.Parameter(torch.zeros(n, dim))
        self.class_emb = nn.Embedding(num_classes + 1, dim)
        self.t_mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        hidden = mlp_hidden or int(dim * mlp_ratio + 7) // 8 * 8
        self.blocks = nn.ModuleList(AdaLNBlock(dim, heads, hidden, dropout, bias, mlp_act) for _ in range(depth))
        if encoder_depth:  # the released code's MAR-style encoder / decoder halves of one causal stack
            self.in_norm, self.mid_norm, self.mid_proj = RMSNorm(dim), RMSNorm(dim), nn.Linear(dim, dim)
            self.pos_emb2 = nn.Parameter(torch.zeros(n, dim))
        self.norm, self.out = RMSNorm(dim), nn.Linear(dim, c)
        self.final_ada = nn.Linear(dim, 2 * dim) if final_adaln else None
        self.register_buffer("entity", self.layout.entity, persistent=False)
        self.register_buffer("positions", self.layout.positions, persistent=False)
        self.register_buffer("block_mask", self.layout.mask(), persistent=False)
        self._init()

    def _init(self):
        nn.init.normal_(self.pos_emb, std=0.02)
        if self.encoder_depth:
            nn.init.normal_(self.pos_emb2, std=0.02)
        nn.init.normal_(self.class_emb.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.blocks:  # AdaLN-zero: every block starts as the identity
            nn.init.zeros_(blk.ada.weight), nn.init.zeros_(blk.ada.bias)
        for m in (self.final_ada, self.out):
            if m is not None:
                nn.init.zeros_(m.weight), nn.init.zeros_(m.bias)

    @property
    def num_entities(self) -> int:
        return self.layout.num_entities

    # ---- the network --------------------------------------------------------------------------
    def velocity(self, x: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, index: torch.Tensor, mask=None,
                 cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        """x B,T,C noisy tokens at sequence slots ``index`` (T,) with times t B,T -> predicted velocity B,T,C."""
        h = self.in_proj(x) + self.pos_emb[index]
        if self.encoder_depth:
            h = self.in_norm(h)
        c = self.class_emb(labels)[:, None] + self.t_mlp(timestep_embedding(t, 256, discrete=self.discrete_t))
        angles = rope_angles(self.positions[index], self.head_dim)[None].expand(x.shape[0], -1, -1)
        for i, blk in enumerate(self.blocks):
            if self.encoder_depth and i == self.encoder_depth:
                h = self.mid_proj(self.mid_norm(h)) + self.pos_emb2[index]
            h = blk(h, c, angles, mask, cache, i, start)
        if self.final_ada is None:
            return self.out(self.norm(h))
        shift, scale = self.final_ada(F.silu(c)).chunk(2, -1)
        return self.out(modulate(self.norm(h), shift, scale))

    def sample_t(self, b: int, device) -> torch.Tensor:
        return torch.sigmoid(torch.randn(b, self.num_entities, device=device) * self.t_std + self.t_mean)

    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        x0 = self.layout.to_tokens(batch["latents"].float())
        b, n, _ = x0.shape
        labels = batch["label"].long()
        if self.training:
            labels = drop_condition(labels, torch.full_like(labels, self.null_class), self.class_dropout)
        t = self.sample_t(b, x0.device)[:, self.entity]  # B,N: one time per entity
        loss = self.flow_loss(x0, labels, t, torch.randn_like(x0))
        return {"loss": loss, "flow": loss.detach()}

    def flow_loss(self, x0: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                  reduction: str = "mean") -> torch.Tensor:
        """Velocity MSE for tokens x0 B,N,C at times t B,N with noise eps (noisy context or teacher forcing)."""
        n = x0.shape[1]
        xt = (1 - t[..., None]) * x0 + t[..., None] * eps
        index = torch.arange(n, device=x0.device)
        if self.noisy_context:
            v = self.velocity(xt, labels, t, index, self.block_mask)
        else:  # teacher forcing: [clean sequence, noisy sequence]; noisy entity e sees clean entities < e and itself
            e = self.entity
            clean_clean = e[None, :] <= e[:, None]
            mask = torch.cat([torch.cat([clean_clean, torch.zeros_like(clean_clean)], 1),
                              torch.cat([e[None, :] < e[:, None], e[None, :] == e[:, None]], 1)], 0)
            v = self.velocity(torch.cat([x0, xt], 1), labels, torch.cat([torch.zeros_like(t), t], 1),
                              torch.cat([index, index]), mask)[:, n:]
        return F.mse_loss(v.float(), (eps - x0).float(), reduction=reduction)

    # ---- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, labels: torch.Tensor, cfg_scale: float = 1.0, cfg_schedule: str = "linear", steps: int | None = None,
               solver: str = "euler-maruyama", noise: float = 1.0, generator: torch.Generator | None = None,
               use_cache: bool = True, **_) -> torch.Tensor:
        """labels B (``null_class`` for unconditional) -> latents B,C,H,W (normalised as the tokenizer's encode)."""
        if solver not in ("euler", "euler-maruyama"):
            raise ValueError(f"solver '{solver}': expected 'euler' or 'euler-maruyama'")
        labels = check_labels(labels, self.num_classes)
        steps = steps or self.steps
        b, dev = labels.shape[0], labels.device
        cfg = Guidance(cfg_scale, cfg_schedule, self.num_entities)
        lab = cfg.double(labels, torch.full_like(labels, self.null_class))
        n, c = self.layout.num_tokens, self.latent_shape[0]
        cache = KVCache(self.depth, lab.shape[0], self.heads, n, self.head_dim, dev, next(self.parameters()).dtype) if use_cache else None
        tokens = torch.zeros(b, n, c, device=dev)
        times = torch.linspace(1.0, self.t_min, steps).tolist() + [0.0]
        for e in range(self.num_entities):
            s, t_end = self.layout.starts[e], self.layout.starts[e + 1]
            idx = torch.arange(s, t_end, device=dev)
            x = torch.randn(b, t_end - s, c, device=dev, generator=generator)

            def v_of(x_cur, t_cur):
                xin = cfg.double(x_cur)
                tt = torch.full(xin.shape[:2], t_cur, device=dev)
                if cache is not None:
                    v = self.velocity(xin, lab, tt, idx, None, cache, s)
                else:  # recompute: the clean prefix at t = 0, then this entity
                    prev = cfg.double(tokens[:, :s])
                    full = torch.cat([prev, xin], 1)
                    ftimes = torch.cat([torch.zeros(full.shape[0], s, device=dev), tt], 1)
                    v = self.velocity(full, lab, ftimes, torch.arange(t_end, device=dev), self.block_mask[:t_end, :t_end])[:, s:]
                return cfg(v, e)

            for i in range(steps):
                t_cur, t_next = times[i], times[i + 1]
                dt = t_next - t_cur
                v = v_of(x, t_cur)
                if solver == "euler" or i == steps - 1 or noise == 0:
                    x = x + v * dt  # (euler-maruyama with zero noise is this step: its drift is v)
                else:
                    z = torch.randn(x.shape, device=dev, generator=generator)
                    x = x + em_drift(x, v, t_cur, noise) * dt + math.sqrt(2 * t_cur * noise * abs(dt)) * z
            tokens[:, s:t_end] = x
            if cache is not None and e < self.num_entities - 1:  # the finished entity enters the cache clean
                xin = cfg.double(x)
                self.velocity(xin, lab, torch.zeros(xin.shape[:2], device=dev), idx, None, cache, s)
        return self.layout.to_latent(tokens)

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """Flow-matching loss on held-out latents at fixed (seeded) times and noise, in the training mode."""
        total, n = 0.0, 0
        g = torch.Generator().manual_seed(0)
        for batch in batches:
            x0 = self.layout.to_tokens(batch["latents"].float())
            t = torch.sigmoid(torch.randn(x0.shape[0], self.num_entities, generator=g) * self.t_std + self.t_mean)
            eps = torch.randn(x0.shape, generator=g).to(x0.device)
            total += float(self.flow_loss(x0, batch["label"].long(), t.to(x0.device)[:, self.entity], eps, "sum"))
            n += x0.numel()
        from vistok.dist import all_sum

        total, n = all_sum([total, float(n)])
        return {"flow_mse": total / n}

    @torch.no_grad()
    def visualize(self, batch: dict, n: int = 8, decode=None, cfg_scale: float = 2.0):
        if decode is None:
            return None
        labels = batch["label"][:n].long()
        g = torch.Generator(device=labels.device).manual_seed(0)
        return torch.cat([decode(batch["latents"][:n]), decode(self.sample(labels, cfg_scale, steps=10, generator=g))])
