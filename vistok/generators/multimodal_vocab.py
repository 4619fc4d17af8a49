"""One vocabulary for text and image codes (SEED-LLaMA's): text tokens first, then the K image codes at an id
offset, then the two markers that wrap an image.

    ids 0 .. T-1          the text tokenizer's (ShapesWorld words, or a causal LM's own tokenizer: T = its rows)
    ids T .. T+K-1        image code k as T + k   (SEED-LLaMA: <img_00000>..<img_08191> at offset 32000)
    id  T+K, T+K+1        <img>, </img>

Training sequences, in one of two directions (the loss falls on the target side only):

    text -> image:  [bos] caption <img> | c_1 .. c_Q </img> [eos]
    image -> text:  [bos] <img> c_1 .. c_Q </img> | caption [eos]

``segments(ids)`` parses any id sequence back into text and images and ``encode_segments`` writes one, so
text + codes -> ids -> text + codes round trips. ``WordText`` is the ShapesWorld word codec (its ``bos`` is None:
the CPU backbone's learnt start embedding stands in front of every sequence); ``HFText`` wraps a causal LM's
tokenizer.
"""
from __future__ import annotations

import torch

from vistok.data.text import PAD, UNK, WordTokenizer, words


class WordText:
    """ShapesWorld words: 0 padding, 1 unknown, 2.. the words, then end-of-sequence."""
    bos = None

    def __init__(self, vocab: list[str], max_len: int):
        self.words = WordTokenizer(list(vocab), max_len)
        self.pad, self.unk, self.eos = PAD, UNK, self.words.size
        self.size = self.words.size + 1

    def encode(self, text: str, strict: bool = False) -> list[int]:
        ws = words(text)
        if strict:
            self.words.encode([text], strict=True)  # unknown words / too long: the tokenizer's errors
        return [self.words.index.get(w, UNK) for w in ws][: self.words.max_len]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words.vocab[i - 2] for i in ids if 2 <= i < self.words.size)

    @property
    def specials(self) -> set[int]:
        return {self.pad, self.unk}


class HFText:
    """A transformers tokenizer; ``size``: the LM's embedding rows before the image tokens were added."""

    def __init__(self, tokenizer, size: int, max_len: int):
        self.tok, self.size, self.max_len = tokenizer, size, max_len
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError("the causal LM's tokenizer has no eos_token: captions could never end")
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    def encode(self, text: str, strict: bool = False) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if strict and len(ids) > self.max_len:
            raise ValueError(f"prompt {text!r} has {len(ids)} tokens; this model takes at most {self.max_len}")
        return ids[: self.max_len]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True).strip()

    @property
    def specials(self) -> set[int]:
        return {i for i in (self.pad, self.bos, getattr(self.tok, "unk_token_id", None)) if i is not None}


class MultimodalVocab:
    def __init__(self, text, codebook_size: int):
        self.text, self.codebook_size = text, codebook_size
        self.offset = text.size
        self.boi, self.eoi = self.offset + codebook_size, self.offset + codebook_size + 1
        self.size = self.eoi + 1

    # ---- sequences --------------------------------------------------------------------------------
    def _start(self) -> list[int]:
        return [] if self.text.bos is None else [self.text.bos]

    def image(self, codes) -> list[int]:
        codes = [int(c) for c in codes]
        bad = [c for c in codes if not 0 <= c < self.codebook_size]
        if bad:
            raise ValueError(f"image codes must be in 0..{self.codebook_size - 1}, got {bad[:5]}")
        return [self.boi] + [self.offset + c for c in codes] + [self.eoi]

    def text_to_image(self, caption: str, codes) -> tuple[list[int], list[int]]:
        """(source, target) ids: the caption and <img>, then the codes, </img> and the end."""
        return self._start() + self.text.encode(caption) + [self.boi], self.image(codes)[1:] + [self.text.eos]

    def image_to_text(self, codes, caption: str) -> tuple[list[int], list[int]]:
        return self._start() + self.image(codes), self.text.encode(caption) + [self.text.eos]

    def t2i_prompt(self, caption: str, strict: bool = True) -> list[int]:
        return self._start() + self.text.encode(caption, strict=strict) + [self.boi]

    def null_prompt(self) -> list[int]:
        """The caption-free text -> image prompt (the unconditional stream of CFG): no caption, then ``<img>``."""
        return self._start() + self.text.encode("") + [self.boi]

    def i2t_prompt(self, codes) -> list[int]:
        return self._start() + self.image(codes)

    def pack(self, pairs: list[tuple[list[int], list[int]]], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids B,T right-padded, target B,T bool: True where the id is on the target side)."""
        t = max(len(s) + len(g) for s, g in pairs)
        ids = torch.full((len(pairs), t), self.text.pad, dtype=torch.long)
        target = torch.zeros(len(pairs), t, dtype=torch.bool)
        for i, (s, g) in enumerate(pairs):
            ids[i, : len(s) + len(g)] = torch.tensor(s + g, dtype=torch.long)
            target[i, len(s): len(s) + len(g)] = True
        return ids.to(device), target.to(device)

    # ---- allowed ids while sampling ----------------------------------------------------------------
    def code_slice(self) -> slice:
        return slice(self.offset, self.offset + self.codebook_size)

    def text_mask(self, device=None) -> torch.Tensor:
        """V bool: the ids a caption may continue with (text tokens and the end; no image ids, no padding)."""
        keep = torch.zeros(self.size, dtype=torch.bool)
        keep[: self.text.size] = True
        keep[sorted(self.text.specials)] = False
        keep[self.text.eos] = True
        return keep.to(device)

    # ---- parsing ----------------------------------------------------------------------------------
    def segments(self, ids) -> list[tuple[str, object]]:
        """ids -> [("text", str) | ("image", [codes])] up to the first end-of-sequence; padding and the start
        token are skipped; an image left open at the end is returned with the codes it has."""
        out, text, image = [], [], None
        for i in (int(v) for v in ids):
            if i == self.text.eos:
                break
            if i == self.boi:
                if text:
                    out.append(("text", self.text.decode(text)))
                text, image = [], []
            elif i == self.eoi:
                if image is not None:
                    out.append(("image", image))
                image = None
            elif image is not None:
                if self.offset <= i < self.offset + self.codebook_size:
                    image.append(i - self.offset)
            elif i < self.text.size and i not in self.text.specials:
                text.append(i)
        if text:
            out.append(("text", self.text.decode(text)))
        if image:
            out.append(("image", image))
        return out

    def encode_segments(self, segments: list[tuple[str, object]]) -> list[int]:
        ids = self._start()
        for kind, value in segments:
            if kind not in ("text", "image"):
                raise ValueError(f"segment kind '{kind}': expected 'text' or 'image'")
            ids += self.text.encode(value) if kind == "text" else self.image(value)
        return ids + [self.text.eos]

    def describe(self, ids) -> str:
        """A readable form: 'a red circle <img><img_00012>...</img>'."""
        parts = []
        for kind, value in self.segments(ids):
            parts.append(value if kind == "text" else "<img>" + "".join(f"<img_{c:05d}>" for c in value) + "</img>")
        return " ".join(parts)
