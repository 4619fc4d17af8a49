"""Word-level text tokenization for the small trainable text encoder (captions of the embedded data).

The vocabulary is a plain list of words stored in the generator's config, so a release carries it.
Id 0 is padding (also the "no caption" condition), id 1 stands for an unknown word.
"""
from __future__ import annotations

import re

import torch

PAD, UNK = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordTokenizer:
    def __init__(self, vocab: list[str], max_len: int):
        self.vocab = list(vocab)
        self.index = {w: i + 2 for i, w in enumerate(self.vocab)}
        self.max_len = max_len

    @property
    def size(self) -> int:
        return len(self.vocab) + 2

    def encode(self, texts: list[str], strict: bool = False) -> torch.Tensor:
        """texts -> B,max_len ids (PAD-filled). ``strict``: an unknown word or an empty text is an error."""
        out = torch.full((len(texts), self.max_len), PAD, dtype=torch.long)
        for i, t in enumerate(texts):
            ws = words(t)
            if strict:
                unknown = [w for w in ws if w not in self.index]
                if not ws or unknown:
                    raise ValueError(f"prompt {t!r}: " + (f"unknown word(s) {unknown}; the text encoder knows "
                                     f"{len(self.vocab)} words" if unknown else "is empty"))
                if len(ws) > self.max_len:
                    raise ValueError(f"prompt {t!r} has {len(ws)} words; the text encoder takes at most {self.max_len}")
            ids = [self.index.get(w, UNK) for w in ws][: self.max_len]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def shapes_vocabulary() -> list[str]:
    """Every word a ShapesWorld caption or prompt can use."""
    from vistok.data.shapes import COLORS, NUMBERS, SHAPES

    rel = ["a", "and", "left", "right", "of", "above", "below"]
    return rel + list(COLORS) + list(SHAPES) + [s + "s" for s in SHAPES] + list(NUMBERS)
