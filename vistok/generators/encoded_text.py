"""A frozen pretrained text encoder as an AR generator's condition (LlamaGen's T2I: flan-t5 features, 120 prefix
tokens). The encoder (``vistok.parts.text``: ``t5_encoder`` or ``clip_text``) turns a caption into B,L,D features,
zero at padding; a trainable MLP (LlamaGen's caption embedder) maps them to the generator's width, and every
padded position, like a caption dropped for classifier-free guidance (all zeros), takes a learnt null embedding
of its position. The encoder is read lazily: a token cache that stored the features (``data.text_encoder``)
means training never loads it; sampling from prompts does."""
from __future__ import annotations

import torch
import torch.nn as nn

from vistok.parts.base import LazyPart


class EncodedText(nn.Module):
    def __init__(self, owner: nn.Module, spec: dict, dim: int, max_length: int, feature_dim: int):
        super().__init__()
        object.__setattr__(self, "lazy", LazyPart(owner, spec, "text_encoder"))
        self.max_length, self.feature_dim = max_length, feature_dim
        self.proj = nn.Sequential(nn.Linear(feature_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.randn(max_length, dim) / dim ** 0.5)

    def encode(self, prompts: list[str], device) -> torch.Tensor:
        enc = self.lazy.get(device)
        feats = enc.encode(list(prompts))
        self.check(feats, "the text encoder")
        return feats

    def check(self, feats: torch.Tensor, where: str) -> None:
        if tuple(feats.shape[1:]) != (self.max_length, self.feature_dim):
            raise ValueError(f"{where} gives text features of shape {tuple(feats.shape[1:])}; this generator was built "
                             f"for ({self.max_length}, {self.feature_dim}) (model.text_len, model.text_dim)")

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """B,L,D features (zeros where padded or dropped) -> B,L,dim prefix embeddings."""
        real = (feats.abs().sum(-1, keepdim=True) > 0).to(feats.dtype)
        return self.proj(feats) * real + self.null[None].to(feats.dtype) * (1 - real)
