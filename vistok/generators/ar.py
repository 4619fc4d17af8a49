"""Discrete autoregressive generator (LLaMA-style decoder) over a tokenizer's codes.

Next-token prediction over the raster of codes: the input is [condition, c_0, ..., c_{L-2}] and the
output at position i predicts c_i. The condition is a class embedding (a null class stands for
"unconditional": label dropout in training, the second half of the batch under classifier-free
guidance). Rotary positions are 1-D (sequence index) or 2-D (row, column of the code on its grid).

Sampling: CFG by doubling the batch, scale constant or ramped linearly over tokens; temperature,
top-k, top-p; a static KV cache (prefill the condition, then one token per step) or, for reference,
a full forward pass per token.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.modeling import VistokModel
from vistok.nn.transformer import Block, KVCache, RMSNorm, causal_mask, rope_angles
from vistok.registry import register_model


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """logits B,V -> token ids B. temperature 0 is greedy."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest set whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def cfg_scales(scale: float, schedule: str, length: int) -> list[float]:
    """Guidance scale per token: constant, or linear from 1 (first token) to ``scale`` (last)."""
    if schedule == "constant":
        return [scale] * length
    if schedule == "linear":
        return [1 + (scale - 1) * i / max(1, length - 1) for i in range(length)]
    raise ValueError(f"cfg_schedule '{schedule}': expected 'constant' or 'linear'")


@register_model("ar")
class ARGenerator(VistokModel):
    kind = "generator"

    def __init__(
        self,
        vocab_size: int = 16384,
        token_shape: list[int] = (16, 16),
        num_classes: int = 1000,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 8 / 3,
        dropout: float = 0.0,
        class_dropout: float = 0.1,
        rope: str = "2d",
    ):
        super().__init__()
        if rope not in ("1d", "2d"):
            raise ValueError(f"ar: rope='{rope}'; expected '1d' or '2d'")
        self.vocab_size, self.token_shape = vocab_size, tuple(token_shape)
        self.seq_len = self.token_shape[0] * self.token_shape[1]
        self.num_classes, self.class_dropout = num_classes, class_dropout
        self.null_class = num_classes  # index of the "no condition" embedding
        self.depth, self.heads, self.head_dim = depth, heads, dim // heads
        self.class_emb = nn.Embedding(num_classes + 1, dim)
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        h, w = self.token_shape
        if rope == "2d":  # condition at (0, 0); code k at (row + 1, col + 1)
            grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2) + 1
            pos = torch.cat([torch.zeros(1, 2, dtype=torch.long), grid])
        else:
            pos = torch.arange(self.seq_len + 1)[:, None]
        self.register_buffer("positions", pos, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    # ---- the network --------------------------------------------------------------------------
    def logits(self, cond: torch.Tensor | None, tokens: torch.Tensor, cache: KVCache | None = None, start: int = 0):
        """Logits for input positions start..start+T-1 (position 0 is the condition, given when start == 0)."""
        x = self.tok_emb(tokens)
        if start == 0:
            x = torch.cat([self.class_emb(cond)[:, None], x], 1)
        t = x.shape[1]
        angles = rope_angles(self.positions[start:start + t], self.head_dim)[None].expand(x.shape[0], -1, -1)
        mask = causal_mask(t, start + t, start, x.device)
        for i, blk in enumerate(self.blocks):
            x = blk(x, angles, mask, cache, i, start)
        return self.head(self.norm(x))

    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        codes = batch["codes"].flatten(1)
        labels = batch["label"].long()
        if self.training and self.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        logits = self.logits(labels, codes[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, self.vocab_size), codes.reshape(-1))
        return {"loss": loss, "ce": loss.detach()}

    # ---- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, labels: torch.Tensor, cfg_scale: float = 1.0, cfg_schedule: str = "constant",
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """labels B (class ids; ``null_class`` for unconditional) -> codes B,h,w."""
        labels = labels.long()
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(f"class labels must be in 0..{self.num_classes - 1} (or {self.null_class} for none), "
                             f"got {labels.tolist()}")
        guided = cfg_scale != 1.0
        cond = torch.cat([labels, torch.full_like(labels, self.null_class)]) if guided else labels
        b, n = labels.shape[0], self.seq_len
        scales = cfg_scales(cfg_scale, cfg_schedule, n)
        tokens = torch.zeros(cond.shape[0], 0, dtype=torch.long, device=labels.device)
        param = next(self.parameters())
        cache = KVCache(self.depth, cond.shape[0], self.heads, n, self.head_dim, param.device, param.dtype) if use_cache else None
        for i in range(n):
            if use_cache:
                logits = self.logits(cond, tokens, cache, 0) if i == 0 else self.logits(None, tokens[:, -1:], cache, i)
            else:
                logits = self.logits(cond, tokens)
            logits = logits[:, -1].float()
            if guided:
                c, u = logits[:b], logits[b:]
                logits = u + scales[i] * (c - u)
            nxt = sample_logits(logits, temperature, top_k, top_p, generator)
            tokens = torch.cat([tokens, nxt.repeat(2 if guided else 1)[:, None]], 1)
        return tokens[:b].reshape(b, *self.token_shape)

    # ---- trainer hooks --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        total, correct, count, n = 0.0, 0, 0, 0
        for batch in batches:
            codes = batch["codes"].flatten(1)
            logits = self.logits(batch["label"].long(), codes[:, :-1]).float()
            total += float(F.cross_entropy(logits.reshape(-1, self.vocab_size), codes.reshape(-1), reduction="sum"))
            correct += int((logits.argmax(-1) == codes).sum())
            count += codes.numel()
            n += 1
        return {"ce": total / count, "token_accuracy": correct / count}

    @torch.no_grad()
    def visualize(self, batch: dict, n: int = 8, decode=None, cfg_scale: float = 2.0):
        if decode is None:
            return None
        g = torch.Generator(device=batch["label"].device).manual_seed(0)
        codes = self.sample(batch["label"][:n], cfg_scale=cfg_scale, generator=g)
        return decode(codes)
