"""SEED-LLaMA-style multimodal AR: one left-to-right model that both draws images (caption -> SEED codes) and
reads them (codes -> caption), over one vocabulary of text tokens and image codes
(``vistok.generators.multimodal_vocab``).

Two backbones:

- on CPU, the shared AR generator (``vistok.generators.ar.ARGenerator``: 1-D RoPE, static KV cache) over the
  ShapesWorld words + codes; its one learnt class embedding is the start of every sequence;
- at paper scale, a causal LM from a local folder (``lm: {type: causal_lm, path: DIR, lora: {r: 16, alpha: 32,
  dropout: 0.05}}``, ``vistok.parts.causal_lm``): its embeddings grow by K + 2 rows for the codes and markers,
  the base stays frozen in its folder, the LoRA adapters and ``modules_to_save`` (embeddings, head, norms) train.

Training draws a direction per item (``t2i_ratio``: text -> image, else image -> text) and computes the
cross-entropy on the target side only (the codes, </img> and the end for text -> image; the caption and the end
for image -> text); a text -> image caption is dropped with ``caption_dropout`` so classifier-free guidance has
an unconditional branch ([bos] <img> ...). ``evaluate`` scores both directions on every held-out item:
``code_ce`` (the next-code loss over the Q codes), ``caption_ce`` (the caption and its end).

Sampling: ``sample_codes(prompts)`` forces <img>, then draws exactly Q codes among the code ids (CFG: the
caption-free sequence runs as a second stream with its own cache), ``sample_captions(codes)`` draws text ids
and the end only, up to ``text_len`` tokens. Temperature 0 is greedy. KV cache or, for reference, a full
forward pass per token.
"""
from __future__ import annotations

import dataclasses
import torch
import torch.nn.functional as F

from vistok.generators.ar import ARGenerator, ARSamplingOptions, sample_logits
from vistok.generators.multimodal_vocab import HFText, MultimodalVocab, WordText
from vistok.modeling import VistokModel
from vistok.nn.guidance import blend, guidance_scale
from vistok.nn.transformer import KVCache
from vistok.registry import register_model
from vistok.schema import NonNegFloat, PartSpec, PosFloat, PosInt, Prob


@dataclasses.dataclass
class SeedLlamaSamplingOptions(ARSamplingOptions):
    """The AR generator's options (``--cfg-scale`` guides text -> image on the caption); temperature 0 is greedy
    (what image -> text usually wants)."""
    temperature: NonNegFloat = dataclasses.field(default=1.0, metadata={"help": "0: greedy"})


@register_model("seed_llama")
class SeedLlama(VistokModel):
    kind = "generator"
    drive_priority = 2
    SamplingOptions = SeedLlamaSamplingOptions

    @classmethod
    def default_pipeline(cls, config: dict) -> str:
        return "seed-text-to-image"

    def __init__(
        self,
        codebook_size: PosInt = 8192,
        num_queries: PosInt = 32,
        lm: PartSpec = None,
        text_vocab: list[str] = (),
        text_len: PosInt = 32,
        dim: PosInt = 256,
        depth: PosInt = 8,
        heads: PosInt = 8,
        mlp_ratio: PosFloat = 8 / 3,
        dropout: Prob = 0.0,
        grad_checkpointing: bool = False,
        t2i_ratio: Prob = 0.5,
        caption_dropout: Prob = 0.1,
    ):
        super().__init__()
        self.codebook_size, self.num_queries, self.text_len = codebook_size, num_queries, text_len
        self.t2i_ratio, self.caption_dropout = t2i_ratio, caption_dropout
        self.max_len = 2 + text_len + num_queries + 2  # [bos] caption <img> codes </img> [eos], either direction
        if lm and text_vocab:
            raise ValueError("seed_llama: set model.lm (a causal LM from a folder, its own tokenizer) or "
                             "model.text_vocab (the CPU backbone's words), not both")
        if lm:
            from vistok.parts.base import build_part

            self.lm = build_part({**lm, "extra_tokens": codebook_size + 2, "grad_checkpointing": grad_checkpointing}, "lm")
            self.vocab = MultimodalVocab(HFText(self.lm.tokenizer, self.lm.base_vocab, text_len), codebook_size)
        elif text_vocab:
            self.vocab = MultimodalVocab(WordText(list(text_vocab), text_len), codebook_size)
            self.backbone = ARGenerator(vocab_size=self.vocab.size, token_shape=(self.max_len,), num_classes=1, dim=dim,
                                        depth=depth, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout,
                                        class_dropout=0.0, rope="1d", grad_checkpointing=grad_checkpointing)
        else:
            raise ValueError("seed_llama: model.text_vocab (the words of the CPU backbone) or model.lm (a causal LM "
                             "folder, e.g. {type: causal_lm, path: checkpoints/llama-2-7b, lora: {r: 16}}) is required")

    def check_fits(self, components: dict) -> None:
        """This model must speak its tokenizer's codes: the same codebook and Q codes per image."""
        tok = components.get("tokenizer")
        if tok is None:
            return
        if getattr(tok, "codebook_size", None) != self.codebook_size:
            raise ValueError(f"seed_llama codebook_size {self.codebook_size} != the tokenizer's "
                             f"{getattr(tok, 'codebook_size', None)}")
        q = getattr(tok, "num_queries", None)
        if q != self.num_queries:
            raise ValueError(f"seed_llama num_queries {self.num_queries}: the tokenizer gives {q} codes per image")

    # ---- the backbone -------------------------------------------------------------------------
    def new_state(self, batch: int):
        """What a stream of ``batch`` sequences carries between calls (its KV cache and position)."""
        if hasattr(self, "lm"):
            return {"cache": self.lm.new_cache(), "pos": 0}
        b = self.backbone
        p = next(self.parameters())
        return {"cache": KVCache(b.depth, batch, b.heads, self.max_len + 1, b.head_dim, p.device, p.dtype), "pos": 0}

    def logits(self, ids: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """ids B,T -> logits B,T,V (position t predicts id t+1). With ``state`` the ids continue its sequence."""
        start = 0 if state is None else state["pos"]
        cache = None if state is None else state["cache"]
        if hasattr(self, "lm"):
            out, _ = self.lm.logits(ids, cache)
            step = ids.shape[1]
        else:
            cond = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)  # the one class: the start token
            out = self.backbone.logits(cond, ids, cache, 0)[:, 1:] if start == 0 else \
                self.backbone.logits(None, ids, cache, start)
            step = ids.shape[1] + (1 if start == 0 else 0)
        if state is not None:
            state["pos"] = start + step
        return out

    # ---- training -----------------------------------------------------------------------------
    def sequences(self, codes: torch.Tensor, captions: list[str], t2i: torch.Tensor, drop: torch.Tensor):
        pairs = [self.vocab.text_to_image("" if d else cap, c) if t else self.vocab.image_to_text(c, cap)
                 for c, cap, t, d in zip(codes.tolist(), captions, t2i.tolist(), drop.tolist())]
        return self.vocab.pack(pairs, codes.device)

    def token_losses(self, ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """B,T-1 cross-entropy of each next id, zero off the target side."""
        logits = self.logits(ids[:, :-1]).float()
        labels = ids[:, 1:].masked_fill(~target[:, 1:], -100)
        return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")

    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        codes = batch["codes"].reshape(batch["codes"].shape[0], -1).long()
        if "caption" not in batch:
            raise ValueError("seed_llama trains on image-caption pairs: its data needs captions (a token cache of "
                             "a SEED tokenizer over captioned data)")
        b = codes.shape[0]
        t2i = torch.rand(b, device=codes.device) < self.t2i_ratio
        drop = t2i & (torch.rand(b, device=codes.device) < self.caption_dropout)
        ids, target = self.sequences(codes, list(batch["caption"]), t2i, drop)
        losses, tgt = self.token_losses(ids, target), target[:, 1:]
        loss = losses.sum() / tgt.sum()
        logs = {"loss": loss, "ce": loss.detach()}
        for name, rows in (("ce_t2i", t2i), ("ce_i2t", ~t2i)):
            if rows.any():
                logs[name] = (losses[rows].sum() / tgt[rows].sum()).detach()
        return logs

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """Both directions on every item: code_ce / code_accuracy over the Q codes (text -> image), caption_ce
        over the caption and its end (image -> text)."""
        from vistok.dist import all_sum

        sums = torch.zeros(5, dtype=torch.float64)
        for batch in batches:
            codes = batch["codes"].reshape(batch["codes"].shape[0], -1).long()
            caps, b = list(batch["caption"]), codes.shape[0]
            no = torch.zeros(b, dtype=torch.bool, device=codes.device)
            ids, target = self.sequences(codes, caps, ~no, no)
            losses = self.token_losses(ids, target)
            is_code = (ids[:, 1:] >= self.vocab.offset) & (ids[:, 1:] < self.vocab.boi) & target[:, 1:]
            pred = self.logits(ids[:, :-1]).argmax(-1)
            sums[0] += float(losses[is_code].sum())
            sums[1] += float(((pred == ids[:, 1:]) & is_code).sum())
            sums[2] += float(is_code.sum())
            ids, target = self.sequences(codes, caps, no, no)
            losses = self.token_losses(ids, target)
            sums[3] += float(losses.sum())
            sums[4] += float(target[:, 1:].sum())
        s = all_sum([float(v) for v in sums])
        return {"code_ce": s[0] / s[2], "code_accuracy": s[1] / s[2], "caption_ce": s[3] / s[4]}

    # ---- sampling -----------------------------------------------------------------------------
    def _continue(self, prompts: list[torch.Tensor], steps: int, pick, use_cache: bool, stop=None) -> torch.Tensor:
        """Extend equal-length prompt batches (one stream, or two: conditional and caption-free) by ``steps`` ids;
        ``pick(last logits of each stream, step) -> B ids`` (the same ids go to every stream); ``stop(ids so far)``
        ends early. -> B,steps (fewer when stopped)."""
        states = [self.new_state(p.shape[0]) if use_cache else None for p in prompts]
        seqs = list(prompts)
        last = [self.logits(p, s)[:, -1].float() for p, s in zip(prompts, states)]
        out = []
        for i in range(steps):
            nxt = pick(last, i)
            out.append(nxt)
            if i == steps - 1 or (stop is not None and stop(torch.stack(out, 1))):
                break
            seqs = [torch.cat([s, nxt[:, None]], 1) for s in seqs]
            last = [self.logits(nxt[:, None] if use_cache else s, st)[:, -1].float() for s, st in zip(seqs, states)]
        return torch.stack(out, 1)

    @torch.no_grad()
    def sample_codes(self, prompts: list[str], cfg_scale: float = 1.0, cfg_schedule: str = "constant",
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                     generator: torch.Generator | None = None, use_cache: bool = True,
                     strict_prompts: bool = True) -> torch.Tensor:
        """Captions -> codes B,Q (prompts of one token length share a batch; the batches run in prompt order)."""
        device = next(self.parameters()).device
        encoded = [self.vocab.t2i_prompt(p, strict=strict_prompts) for p in prompts]
        out = torch.zeros(len(prompts), self.num_queries, dtype=torch.long, device=device)
        codes = self.vocab.code_slice()
        for length in dict.fromkeys(len(e) for e in encoded):
            rows = [i for i, e in enumerate(encoded) if len(e) == length]
            streams = [torch.tensor([encoded[i] for i in rows], device=device)]
            if cfg_scale != 1.0:
                streams.append(torch.tensor([self.vocab.null_prompt()] * len(rows), device=device))

            def pick(last, i):
                logits = last[0][:, codes]
                if len(last) == 2:
                    logits = blend(logits, last[1][:, codes],
                                   guidance_scale(cfg_scale, cfg_schedule, i, self.num_queries))
                return sample_logits(logits, temperature, top_k, top_p, generator) + self.vocab.offset

            drawn = self._continue(streams, self.num_queries, pick, use_cache)
            out[rows] = drawn - self.vocab.offset
        return out

    @torch.no_grad()
    def sample_captions(self, codes: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                        generator: torch.Generator | None = None, use_cache: bool = True, max_tokens: int = 0,
                        cfg_scale: float = 1.0, cfg_schedule: str = "constant") -> list[str]:
        """Codes B,Q -> captions (text ids and the end only, at most ``max_tokens``, default text_len + 1). The
        guidance options are text -> image's and are ignored here (accepted so one option set serves both)."""
        device = next(self.parameters()).device
        codes = torch.as_tensor(codes).reshape(len(codes), -1)
        prompt = torch.tensor([self.vocab.i2t_prompt(c) for c in codes.tolist()], device=device)
        allowed = self.vocab.text_mask(device)
        eos = self.vocab.text.eos

        def pick(last, i):
            return sample_logits(last[0].masked_fill(~allowed, float("-inf")), temperature, top_k, top_p, generator)

        drawn = self._continue([prompt], max_tokens or self.text_len + 1, pick, use_cache,
                               stop=lambda ids: bool((ids == eos).any(1).all()))
        return [self.vocab.text.decode(row[: row.index(eos)] if eos in row else row) for row in drawn.tolist()]

    @torch.no_grad()
    def sample(self, labels=None, prompts: list[str] | None = None, **options) -> torch.Tensor:
        """The generator interface (GenEval during training, pipelines): prompts -> codes B,Q."""
        if prompts is None:
            raise ValueError("seed_llama draws images from captions: pass prompts")
        return self.sample_codes(list(prompts), **options)

    @torch.no_grad()
    def visualize(self, batch: dict, n: int = 8, decode=None, **_):
        return None  # codes become images only through a SEED decoder (the seed pipelines)
