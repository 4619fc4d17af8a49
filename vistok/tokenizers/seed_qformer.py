"""SEED's causal Q-Former and its stage-I objective, on transformers' ``Blip2QFormerModel``.

The queries attend to each other under a lower-triangular mask (query i sees queries <= i) and cross-attend to
every image feature. The mask goes in as a 4-D boolean ``[B, 1, Q, Q]``: transformers 5 raises
NotImplementedError for a 3-D one, and adds a 4-D float mask of 0/1 to the scores (masking nothing).

``CausalQFormer`` builds the modules from a config (CPU sizes; a word-level text vocabulary for the Q-Former's own
text mode); at paper scale the same attributes come from BLIP-2 (``vistok.parts.blip2.Blip2QFormer``, ``text:
true``, from ``Salesforce/blip2-itm-vit-g``): ``qformer``, ``query_tokens``, ``embeddings`` (word + position),
``vision_projection``, ``text_projection``. Stage I (BLIP-2's image-text contrastive term only): the **last**
causal query, the one that sees all others, projected and l2-normalised, against the projected [CLS] of the
text mode; learnable temperature (initialised 0.07, clamped to [0.001, 0.5] as BLIP-2), label smoothing 0.1,
in-batch negatives gathered across ranks.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.data.text import PAD, WordTokenizer


class CausalQFormer(nn.Module):
    """A freshly initialised Q-Former with learnt queries, text embeddings and the two contrastive projections.
    Weights start at std hidden^-1/2, not BERT's 0.02: at a small width, 0.02 leaves the queries' outputs almost
    independent of the image (the embeddings of a batch differ by ~1e-3) and the learnt temperature then runs to
    its maximum before anything is learnt. ``dropout`` is BERT's 0.1 by default; a toy-sized one learns a fixed
    batch 3x faster without it (100 steps: contrastive loss 4.07 -> 1.42 at 0, -> 2.52 at 0.1)."""

    def __init__(self, num_queries: int, hidden: int, layers: int, heads: int, intermediate: int, vision_dim: int,
                 cross_attention_frequency: int, vocab: list[str], text_len: int, embed_dim: int, dropout: float = 0.1):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel
        from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

        self.words = WordTokenizer(vocab, text_len - 1)  # [CLS] + words
        self.cls_id = self.words.size
        cfg = Blip2QFormerConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                 intermediate_size=intermediate, encoder_hidden_size=vision_dim,
                                 cross_attention_frequency=cross_attention_frequency, vocab_size=self.words.size + 1,
                                 max_position_embeddings=text_len, use_qformer_text_input=True, pad_token_id=PAD,
                                 initializer_range=hidden ** -0.5, hidden_dropout_prob=dropout,
                                 attention_probs_dropout_prob=dropout)
        self.qformer = Blip2QFormerModel(cfg)
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, hidden) * cfg.initializer_range)
        self.embeddings = Blip2TextEmbeddings(cfg)
        self.vision_projection = nn.Linear(hidden, embed_dim)
        self.text_projection = nn.Linear(hidden, embed_dim)

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.words.encode(list(captions))
        ids = torch.cat([torch.full((len(ids), 1), self.cls_id), ids], 1)
        return ids, (ids != PAD).long()


def tokenize(qf, captions: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption ids and mask for the Q-Former's text mode (its own word vocabulary, or BLIP-2's BERT tokenizer)."""
    if hasattr(qf, "tokenize"):
        return qf.tokenize(captions)
    t = qf.tokenizer(list(captions), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return t["input_ids"], t["attention_mask"]


def causal_queries(qf, image_features: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """B,Q,H: the learnt queries after the Q-Former, causal among themselves (``causal=False``: BLIP-2's
    bidirectional queries, the ablation), cross-attending to all features."""
    b, q = image_features.shape[0], qf.query_tokens.shape[1]
    mask = torch.ones(q, q, dtype=torch.bool, device=image_features.device)
    mask = (mask.tril() if causal else mask)[None, None].expand(b, 1, q, q)
    queries = qf.query_tokens.expand(b, -1, -1).to(image_features.dtype)
    return qf.qformer(query_embeds=queries, attention_mask=mask, encoder_hidden_states=image_features).last_hidden_state


def image_embedding(qf, queries: torch.Tensor) -> torch.Tensor:
    """The last causal query, projected and l2-normalised (B, E): stage I's image side."""
    return F.normalize(qf.vision_projection(queries[:, -1]), dim=-1)


def text_embedding(qf, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The text mode's [CLS], projected and l2-normalised (B, E)."""
    h = qf.qformer(query_embeds=qf.embeddings(input_ids=ids), query_length=0, attention_mask=mask).last_hidden_state
    return F.normalize(qf.text_projection(h[:, 0]), dim=-1)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, temp: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """BLIP-2's ITC over the global batch: this rank's rows against every rank's columns (other ranks' features
    gathered without gradient, as its ``concat_all_gather``); the mean over ranks equals the loss of one process
    holding the whole batch."""
    from vistok.dist import world

    rank, size = world()
    img_all, txt_all = _gather(img), _gather(txt)
    t = temp.clamp(0.001, 0.5)
    targets = torch.arange(img.shape[0], device=img.device) + rank * img.shape[0]
    i2t = F.cross_entropy(img.float() @ txt_all.float().t() / t, targets, label_smoothing=label_smoothing)
    t2i = F.cross_entropy(txt.float() @ img_all.float().t() / t, targets, label_smoothing=label_smoothing)
    return (i2t + t2i) / 2


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated in rank order; this rank's rows keep their gradient."""
    import torch.distributed as dist

    from vistok.dist import world

    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts)
