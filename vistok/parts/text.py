"""Text encoders from transformers folders with the tokenizer of the same folder: ``t5_encoder``
(``T5EncoderModel``, e.g. google/flan-t5-xl: LlamaGen's T2I condition, 120 tokens) and ``clip_text``
(``CLIPTextModel``, e.g. openai/clip-vit-large-patch14 or an SD folder's ``text_encoder``, 77 tokens).

``encode(prompts) -> B, max_length, D`` features at ``feature`` (last_hidden_state or hidden_states[i]), with the
padded positions set to zero (what ``vistok.generators.ar`` replaces by its learnt null embeddings). For an SD
pipeline folder set ``subfolder: text_encoder`` and ``tokenizer_subfolder: tokenizer``.
"""
from __future__ import annotations

import os

import torch

from vistok.parts.base import Part
from vistok.parts.blip2 import load_tokenizer
from vistok.parts.hf import load_hf_model
from vistok.parts.vision import check_feature, select_hidden
from vistok.registry import register_part
from vistok.schema import PosInt

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model", "vocab.json",
                   "merges.txt")


class TextEncoder(Part):
    model_class = ""
    config_files = ("config.json",) + TOKENIZER_FILES

    def __init__(self, path: str, max_length: PosInt = 120, feature: str = "last_hidden_state", subfolder: str = "",
                 tokenizer_subfolder: str = "", **base):
        super().__init__(path, **base)
        check_feature(feature)
        self.max_length, self.feature, self.subfolder, self.tokenizer_subfolder = max_length, feature, subfolder, tokenizer_subfolder
        self.options = {"max_length": max_length, "feature": feature, "subfolder": subfolder,
                        "tokenizer_subfolder": tokenizer_subfolder}

    def folder(self) -> str:
        return os.path.join(self.path, self.subfolder) if self.subfolder else self.path

    def load(self, folder: str, read_weights: bool) -> None:
        import transformers

        self.model = load_hf_model(getattr(transformers, self.model_class), folder, read_weights, self.torch_dtype,
                                   self.config_key)
        tok_dir = os.path.join(self.path, self.tokenizer_subfolder) if self.tokenizer_subfolder and read_weights else folder
        object.__setattr__(self, "tokenizer", load_tokenizer(tok_dir))  # not a module
        self.dim = self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.d_model

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                           return_tensors="pt")
        return t["input_ids"], t["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """B, max_length, D float32 features; zero where the prompt is padding."""
        ids, mask = self.tokenize(prompts)
        device = next(self.model.parameters()).device
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=self.feature != "last_hidden_state")
        return select_hidden(out, self.feature).float() * mask.to(device)[..., None]


@register_part("t5_encoder")
class T5Encoder(TextEncoder):
    expected, model_class = "T5 encoder", "T5EncoderModel"


@register_part("clip_text")
class CLIPText(TextEncoder):
    expected, model_class = "CLIP text", "CLIPTextModel"

    def __init__(self, path: str, max_length: PosInt = 77, **kw):
        super().__init__(path, max_length=max_length, **kw)
