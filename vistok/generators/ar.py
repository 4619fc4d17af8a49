"""Discrete autoregressive generator (LLaMA-style decoder) over a tokenizer's codes.

Next-token prediction over the raster of codes: the input is [condition, c_0, ..., c_{L-2}] and the
output at position i predicts c_i.

Next-scale prediction (``scales`` set, VAR/TokenFlow codes): the input is [condition, start block of
s_1 x s_1, then for k > 1 the codes of scale k-1 embedded and upsampled (nearest) to s_k x s_k], each
block plus a learned scale embedding; block k predicts the s_k x s_k codes of scale k in parallel and
attends to the condition and every block <= k (block-causal). Rotary positions are the token centres
on the finest grid, so all scales share one coordinate frame. Sampling feeds one whole scale per step. The condition is a prefix of P tokens: one class embedding (a null
class stands for "unconditional"), or, with ``text_encoder``, the features of a frozen pretrained T5 / CLIP text
encoder (``vistok.generators.encoded_text``: ``text_len`` = its max_length prefix tokens, as LlamaGen's T2I), or,
with ``text_vocab``, a caption encoded by a small trainable
bidirectional transformer over word ids (all-padding stands for "no caption"). Condition dropout in
training makes the unconditional branch that classifier-free guidance needs. Rotary positions are 1-D (sequence index) or 2-D (row, column of the code on its grid).

Sampling: CFG (``vistok.nn.guidance``) by doubling the batch, scale constant or ramped linearly over tokens
(next-scale: over scales); temperature,
top-k, top-p; a static KV cache (prefill the condition, then one token per step) or, for reference,
a full forward pass per token.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.utils.checkpoint
import torch.nn.functional as F

from vistok.data.text import WordTokenizer
from vistok.generators.encoded_text import EncodedText
from vistok.modeling import VistokModel
from vistok.nn.guidance import Guidance, drop_condition
from vistok.nn.layout import TokenLayout
from vistok.nn.transformer import Block, KVCache, RMSNorm, causal_mask, rope_angles
from vistok.registry import register_model
from vistok.schema import NonNegFloat, NonNegInt, OneOf, PartSpec, PosFloat, PosInt, PosInts, Prob, Range


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


def check_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class ids 0..num_classes-1, or num_classes (the null class: unconditional); anything else is an error."""
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(f"class labels must be in 0..{num_classes - 1} (or {num_classes} for none), got {labels.tolist()}")
    return labels


@dataclasses.dataclass
class ARSamplingOptions:
    """What sampling from the AR generator takes (``sample.py`` builds its flags from this)."""
    cfg_scale: NonNegFloat = dataclasses.field(default=1.0, metadata={"help": "classifier-free guidance (1: none)"})
    cfg_schedule: Literal["constant", "linear"] = dataclasses.field(default="constant", metadata={
        "help": "guidance constant, or ramped linearly from 1 over the tokens / scales"})
    temperature: PosFloat = 1.0
    top_k: NonNegInt = dataclasses.field(default=0, metadata={"help": "0: off"})
    top_p: Annotated[float, Range(0, 1, lo_open=True)] = dataclasses.field(default=1.0, metadata={"help": "1: off"})
    use_cache: bool = dataclasses.field(default=True, metadata={"flag": "--no-cache",
                                                                "help": "recompute every token (reference; slow)"})


@register_model("ar")
class ARGenerator(VistokModel):
    kind = "generator"
    drive_priority = 2
    SamplingOptions = ARSamplingOptions

    @classmethod
    def default_pipeline(cls, config: dict) -> str:
        return "text-to-image" if config.get("text_vocab") or config.get("text_encoder") else "class-to-image"

    def check_fits(self, components: dict) -> None:
        """This generator must speak its tokenizer's vocabulary on its token layout."""
        tok = components.get("tokenizer")
        if tok is None:
            return
        if getattr(tok, "codebook_size", None) is None:
            raise ValueError(f"a '{tok.model_type}' tokenizer has no codebook (continuous latents); the discrete "
                             f"'{self.model_type}' generator needs codes")
        if self.vocab_size != tok.codebook_size:
            raise ValueError(f"generator vocab_size {self.vocab_size} != tokenizer codebook_size {tok.codebook_size}")
        theirs = tok.layout
        if theirs.scales or self.layout.scales:
            if theirs.scales != self.layout.scales:
                raise ValueError(f"generator scales {list(self.scales)} != tokenizer scales {list(tok.scales)} (a "
                                 f"multi-scale tokenizer needs a next-scale generator with the same scales)")
        elif theirs.shape != self.layout.shape:
            raise ValueError(f"generator token_shape {self.layout.shape} != tokenizer token_shape {theirs.shape}")

    def compile_for_sampling(self, mode: str | None = None) -> None:
        for blk in self.blocks:  # dynamic shapes: the prefill and the one-token / one-scale steps share a graph
            blk.compile(mode=mode, dynamic=True)

    def __init__(
        self,
        vocab_size: PosInt = 16384,
        token_shape: PosInts = (16, 16),
        num_classes: PosInt = 1000,
        dim: PosInt = 768,
        depth: PosInt = 12,
        heads: PosInt = 12,
        mlp_ratio: PosFloat = 8 / 3,
        dropout: Prob = 0.0,
        class_dropout: Prob = 0.1,
        rope: str = "2d",
        scales: PosInts = (),
        scale_axes: OneOf(1, 2) = 2,
        text_vocab: list[str] = (),
        text_len: PosInt = 16,
        text_depth: NonNegInt = 2,
        text_encoder: PartSpec = None,
        text_dim: NonNegInt = 0,
        grad_checkpointing: bool = False,
        cond_rope: str = "identity",
        norm_eps: PosFloat = 1e-6,
    ):
        super().__init__()
        if rope not in ("1d", "2d"):
            raise ValueError(f"ar: rope='{rope}'; expected '1d' or '2d'")
        self.scales = [int(v) for v in scales]
        self.vocab_size = vocab_size
        # next-scale codes: 2-D maps s_k x s_k (VAR, TokenFlow) or, with scale_axes 1, token runs of n_k (VAT)
        self.token_shape = (self.scales[-1],) * scale_axes if self.scales else tuple(token_shape)
        self.layout = TokenLayout(self.token_shape, scales=tuple(self.scales))
        self.seq_len = self.layout.num_tokens
        self.num_classes, self.class_dropout = num_classes, class_dropout
        self.grad_checkpointing = grad_checkpointing  # recompute each block in backward: less memory, ~1/3 more compute
        if cond_rope not in ("identity", "zero"):
            raise ValueError(f"ar: cond_rope='{cond_rope}'; expected 'identity' or 'zero'")
        # the condition tokens' rotary entries: identity (vistok: position (0, 0)), or zero (LlamaGen's cache, which
        # zeroes their queries and keys); code tokens are unaffected either way (RoPE sees only differences)
        self.cond_rope = cond_rope
        self.null_class = num_classes  # index of the "no condition" embedding
        self.depth, self.heads, self.head_dim = depth, heads, dim // heads
        if text_vocab and text_encoder:
            raise ValueError("ar: set model.text_vocab (the small trainable encoder) or model.text_encoder (a frozen "
                             "pretrained one), not both")
        self.text = WordTokenizer(list(text_vocab), text_len) if text_vocab else None
        self.encoded_text = EncodedText(self, text_encoder, dim, text_len, text_dim) if text_encoder else None
        if text_encoder and not text_dim:
            raise ValueError("ar: model.text_encoder needs model.text_dim (the encoder's feature width, e.g. 2048 for "
                             "flan-t5-xl)")
        if self.text is not None:
            self.text_emb = nn.Embedding(self.text.size, dim)
            self.text_blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(text_depth))
            self.text_norm = RMSNorm(dim)
            self.register_buffer("text_positions", torch.arange(text_len)[:, None], persistent=False)
        elif self.encoded_text is None:
            self.class_emb = nn.Embedding(num_classes + 1, dim)
        self.prefix = text_len if self.text_conditional else 1  # condition tokens before the codes
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, norm_eps=norm_eps) for _ in range(depth))
        self.norm = RMSNorm(dim, norm_eps)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if self.scales:
            self._init_scales(dim)
        elif rope == "2d":  # condition tokens at (0, 0); code k at (row + 1, col + 1)
            grid = self.layout.positions("index").long() + 1
            pos = torch.cat([grid.new_zeros(self.prefix, self.layout.ndim), grid])  # the layout's device (CPU)
        else:
            pos = torch.arange(self.seq_len + self.prefix)[:, None]
        if not self.scales:
            self.register_buffer("positions", pos, persistent=False)
        self.apply(self._init)

    def _init_scales(self, dim: int) -> None:
        """Scale tokens at their centres on the finest grid, origin 'edge' (finest token (r, c) at (r + .5, c + .5));
        block ids: 0 for the condition, k + 1 for scale k."""
        p = self.prefix
        centres, groups = self.layout.positions("edge"), self.layout.groups()  # CPU tensors, even under a meta device
        pos = torch.cat([centres.new_zeros(p, centres.shape[1]), centres])
        block_ids = torch.cat([groups.new_zeros(p), groups + 1])
        self.register_buffer("positions", pos, persistent=False)
        self.register_buffer("block_ids", block_ids, persistent=False)
        self.register_buffer("block_mask", block_ids[None, :] <= block_ids[:, None], persistent=False)
        self.block_starts = [p + s for s in self.layout.starts[:-1]]
        self.scale_emb = nn.Embedding(len(self.scales), dim)
        self.start_emb = nn.Parameter(torch.zeros(1, 1, dim))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    # ---- the condition --------------------------------------------------------------------------
    @property
    def text_conditional(self) -> bool:
        return self.text is not None or self.encoded_text is not None

    def cond_embed(self, cond: torch.Tensor) -> torch.Tensor:
        """Class ids B, caption word ids B,text_len, or text features B,text_len,text_dim -> prefix embeddings B,P,dim."""
        if self.encoded_text is not None:
            return self.encoded_text(cond)
        if self.text is None:
            return self.class_emb(cond)[:, None]
        x = self.text_emb(cond)
        angles = rope_angles(self.text_positions, self.head_dim)[None].expand(x.shape[0], -1, -1)
        for blk in self.text_blocks:
            x = blk(x, angles)
        return self.text_norm(x)

    def null_condition(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(like) if self.text_conditional else torch.full_like(like, self.null_class)

    def condition(self, batch: dict) -> torch.Tensor:
        """The batch's condition (labels, tokenized captions, or text features: cached with the data as
        ``text_features``, else encoded here), with condition dropout in training."""
        if self.encoded_text is not None:
            if "text_features" in batch:
                cond = batch["text_features"].float()
                self.encoded_text.check(cond, "the data's cached text_features")
            elif "caption" in batch:
                cond = self.encoded_text.encode(list(batch["caption"]), batch["codes"].device)
            else:
                raise ValueError("this generator is text-conditional: its training data needs captions")
        elif self.text is not None:
            if "caption" not in batch:
                raise ValueError("this generator is text-conditional: its training data needs captions")
            cond = self.text.encode(list(batch["caption"])).to(batch["codes"].device)
        else:
            cond = batch["label"].long()
        if self.training:
            cond = drop_condition(cond, self.null_condition(cond), self.class_dropout)
        return cond

    # ---- the network --------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, start: int, mask, cache: KVCache | None) -> torch.Tensor:
        angles = rope_angles(self.positions[start:start + x.shape[1]], self.head_dim)[None].expand(x.shape[0], -1, -1)
        if self.cond_rope == "zero" and start < self.prefix:
            keep = (torch.arange(start, start + x.shape[1], device=x.device) >= self.prefix).float()[None, :, None]
            angles = (angles.cos() * keep, angles.sin() * keep)
        for i, blk in enumerate(self.blocks):
            if self.grad_checkpointing and self.training and cache is None and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, angles, mask, use_reentrant=False)
            else:
                x = blk(x, angles, mask, cache, i, start)
        return self.head(self.norm(x))

    def logits(self, cond: torch.Tensor | None, tokens: torch.Tensor, cache: KVCache | None = None, start: int = 0):
        """Next-token: logits for input positions start..start+T-1 (positions < P are the condition, given
        when start == 0)."""
        x = self.tok_emb(tokens)
        if start == 0:
            x = torch.cat([self.cond_embed(cond), x], 1)
        t = x.shape[1]
        mask = "causal" if cache is None and start == 0 else causal_mask(t, start + t, start, x.device)
        return self._run(x, start, mask, cache)

    def scale_inputs(self, codes: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
        """Input embeddings of blocks 1..len(codes)+1: the start block, then each given scale's codes
        (B,s_k,s_k; 1-D: B,n_k) upsampled (nearest) to the next scale's grid."""
        d = self.tok_emb.embedding_dim
        shapes = self.layout.scale_shapes
        blocks = [self.start_emb.expand(batch, math.prod(shapes[0]), d) + self.scale_emb.weight[0]]
        for k, c in enumerate(codes[: len(self.scales) - 1]):
            e = self.tok_emb(c).movedim(-1, 1)
            e = F.interpolate(e, size=shapes[k + 1], mode="nearest").flatten(2).transpose(1, 2)
            blocks.append(e + self.scale_emb.weight[k + 1])
        return blocks

    def scale_logits(self, cond: torch.Tensor, codes: list[torch.Tensor]) -> torch.Tensor:
        """Next-scale, full pass: logits B,(sum s_k^2 for the first len(codes)+1 scales),V given codes of
        the first len(codes) scales (block-causal mask)."""
        blocks = self.scale_inputs(codes, cond.shape[0])
        x = torch.cat([self.cond_embed(cond)] + blocks, 1)
        t = x.shape[1]
        return self._run(x, 0, self.block_mask[:t, :t], None)[:, self.prefix:]

    def teacher_forced_logits(self, cond: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """codes B,L (flat) -> logits B,L,V predicting every code from the condition and its prefix."""
        if self.scales:
            return self.scale_logits(cond, self.layout.split(codes)[:-1])
        return self.logits(cond, codes[:, :-1])[:, self.prefix - 1:]

    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        codes = batch["codes"].flatten(1)
        logits = self.teacher_forced_logits(self.condition(batch), codes)
        loss = F.cross_entropy(logits.float().reshape(-1, self.vocab_size), codes.reshape(-1))
        return {"loss": loss, "ce": loss.detach()}

    # ---- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, labels: torch.Tensor | None = None, cfg_scale: float = 1.0, cfg_schedule: str = "constant",
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               generator: torch.Generator | None = None, use_cache: bool = True,
               prompts: list[str] | None = None, strict_prompts: bool = True) -> torch.Tensor:
        """labels B (class ids; ``null_class`` for unconditional) or prompts (text-conditional generators)
        -> codes B,h,w (next-scale: B,L flat)."""
        if self.text_conditional:
            if prompts is None:
                raise ValueError("this generator is text-conditional: pass prompts, not class labels")
            device = next(self.parameters()).device
            labels = (self.encoded_text.encode(prompts, device) if self.encoded_text is not None
                      else self.text.encode(prompts, strict=strict_prompts).to(device))
        else:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass class labels, not prompts")
            labels = check_labels(labels, self.num_classes)
        cfg = Guidance(cfg_scale, cfg_schedule, len(self.scales) or self.seq_len)
        cond = cfg.double(labels, self.null_condition(labels))
        if self.scales:
            return self._sample_scales(cond, labels.shape[0], cfg, temperature, top_k, top_p, generator, use_cache)
        b, n = labels.shape[0], self.seq_len
        tokens = torch.zeros(cond.shape[0], 0, dtype=torch.long, device=labels.device)
        param = next(self.parameters())
        p = self.prefix
        cache = KVCache(self.depth, cond.shape[0], self.heads, p + n, self.head_dim, param.device, param.dtype) if use_cache else None
        for i in range(n):
            if use_cache:
                logits = self.logits(cond, tokens, cache, 0) if i == 0 else self.logits(None, tokens[:, -1:], cache, p + i - 1)
            else:
                logits = self.logits(cond, tokens)
            nxt = sample_logits(cfg(logits[:, -1].float(), i), temperature, top_k, top_p, generator)
            tokens = torch.cat([tokens, cfg.double(nxt)[:, None]], 1)
        return tokens[:b].reshape(b, *self.token_shape)

    def _sample_scales(self, cond, b, cfg, temperature, top_k, top_p, generator, use_cache):
        param = next(self.parameters())
        cache = KVCache(self.depth, cond.shape[0], self.heads, self.seq_len + self.prefix, self.head_dim, param.device,
                        param.dtype) if use_cache else None
        codes: list[torch.Tensor] = []
        for k, shape in enumerate(self.layout.scale_shapes):
            n = math.prod(shape)
            if use_cache:
                block = self.scale_inputs(codes, cond.shape[0])[k]
                if k == 0:  # prefill: the condition must not see block 1, as in the block-causal full pass
                    x = torch.cat([self.cond_embed(cond), block], 1)
                    logits = self._run(x, 0, self.block_mask[: x.shape[1], : x.shape[1]], cache)[:, -n:]
                else:  # block k sees every cached block < k and itself: no mask needed
                    logits = self._run(block, self.block_starts[k], None, cache)
            else:
                logits = self.scale_logits(cond, codes)[:, -n:]
            logits = cfg(logits.float(), k)
            nxt = sample_logits(logits.reshape(-1, self.vocab_size), temperature, top_k, top_p, generator)
            codes.append(cfg.double(nxt.reshape(b, *shape)))
        return torch.cat([c[:b].flatten(1) for c in codes], 1)

    # ---- trainer hooks --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        total, correct, count, n = 0.0, 0, 0, 0
        for batch in batches:
            codes = batch["codes"].flatten(1)
            logits = self.teacher_forced_logits(self.condition(batch), codes).float()
            total += float(F.cross_entropy(logits.reshape(-1, self.vocab_size), codes.reshape(-1), reduction="sum"))
            correct += int((logits.argmax(-1) == codes).sum())
            count += codes.numel()
            n += 1
        from vistok.dist import all_sum

        total, correct, count = all_sum([total, float(correct), float(count)])  # over ranks' shards
        return {"ce": total / count, "token_accuracy": correct / count}

    @torch.no_grad()
    def visualize(self, batch: dict, n: int = 8, decode=None, cfg_scale: float = 2.0):
        if decode is None:
            return None
        g = torch.Generator(device=batch["codes"].device).manual_seed(0)
        if self.text_conditional:
            codes = self.sample(prompts=list(batch["caption"])[:n], cfg_scale=cfg_scale, generator=g, strict_prompts=False)
        else:
            codes = self.sample(batch["label"][:n], cfg_scale=cfg_scale, generator=g)
        return decode(codes)
