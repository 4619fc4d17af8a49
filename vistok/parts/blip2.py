"""BLIP-2's parts from one composite folder (e.g. ``Salesforce/blip2-itm-vit-g`` or ``blip2-opt-2.7b``), read by
key prefix from its safetensors files: the language model is never built or read.

``Blip2VisionModel.from_pretrained(blip2_dir)`` would build the sub-config but leave random weights (its keys sit
under ``vision_model.`` in the folder and transformers only logs that), hence the prefix loading here.

- ``blip2_vision``: ``vision_model.*`` -> ``Blip2VisionModel``. ``tokens`` is ``last_hidden_state``, which HF
  computes after ``post_layernorm``: LAVIS's ``ln_vision`` over its 39-layer EVA ViT-g (what SEED's Q-Former reads).
- ``blip2_qformer``: ``qformer.*`` -> ``Blip2QFormerModel``, ``query_tokens``, and, when the folder has them (the
  image-text retrieval checkpoint), the Q-Former's text mode: ``embeddings.*`` (word + position embeddings),
  ``vision_projection`` and ``text_projection`` (``Blip2ForImageTextRetrieval``'s), plus the tokenizer.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.parts.base import Part
from vistok.parts.folders import load_strict, read_prefixed, weight_files
from vistok.parts.hf import quiet_transformers
from vistok.parts.preprocess import from_hf_processor
from vistok.registry import register_part


def blip2_config(folder: str):
    from transformers import Blip2Config

    with quiet_transformers():
        return Blip2Config.from_pretrained(folder, local_files_only=True)


def has_prefix(folder: str, prefix: str) -> bool:
    import json
    import struct

    for f in weight_files(folder):
        if f.endswith(".safetensors"):
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                if any(k.startswith(prefix) for k in json.loads(fh.read(n))):
                    return True
    return False


class Blip2Part(Part):
    config_files = ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.txt")

    def _fill(self, module: nn.Module, folder: str, prefixes: dict, read_weights: bool) -> None:
        if read_weights:
            load_strict(module, read_prefixed(folder, prefixes, self.config_key, self.expected), folder, self.config_key)


@register_part("blip2_vision")
class Blip2Vision(Blip2Part):
    expected, model_class = "BLIP-2 (vision_model.*)", "Blip2VisionModel"

    def load(self, folder: str, read_weights: bool) -> None:
        from transformers import Blip2VisionModel

        cfg = blip2_config(folder).vision_config
        self.model = Blip2VisionModel(cfg)
        self._fill(self.model, folder, {"vision_model.": ""}, read_weights)
        self.model.to(self.torch_dtype)
        self.preprocess = from_hf_processor(folder, default_size=cfg.image_size)
        self.image_size, self.grid, self.dim = cfg.image_size, cfg.image_size // cfg.patch_size, cfg.hidden_size
        self.out_dim = self.dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """B, 1 + grid*grid, D: every token after post_layernorm (what the Q-Former cross-attends to)."""
        return self.model(pixel_values=self.preprocess(images).to(self.torch_dtype)).last_hidden_state

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)[:, 1:]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.preprocess(images).to(self.torch_dtype)).pooler_output


@register_part("blip2_qformer")
class Blip2QFormer(Blip2Part):
    """The Q-Former and its learnt queries; ``text=True`` also loads its text mode (needs the retrieval folder)."""
    expected, model_class = "BLIP-2 (qformer.*, query_tokens)", "Blip2QFormerModel"

    def __init__(self, path: str, text: bool = False, **base):
        super().__init__(path, **base)
        self.text = text
        self.options = {"text": text}

    def load(self, folder: str, read_weights: bool) -> None:
        from transformers import Blip2QFormerModel
        from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

        cfg = blip2_config(folder)
        q = cfg.qformer_config
        if self.text and not q.use_qformer_text_input:
            raise ValueError(f"part '{self.config_key}': text=true, but the Q-Former in '{folder}' has no text feed-forward "
                             f"(qformer_config.use_qformer_text_input is false); use an image-text retrieval folder "
                             f"such as Salesforce/blip2-itm-vit-g")
        self.qformer = Blip2QFormerModel(q)
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, q.hidden_size))
        self._fill(self.qformer, folder, {"qformer.": ""}, read_weights)
        if read_weights:
            self.query_tokens.data.copy_(read_prefixed(folder, {"query_tokens": "q"}, self.config_key, self.expected)["q"])
        if self.text:
            if read_weights and not has_prefix(folder, "text_projection."):
                raise ValueError(f"part '{self.config_key}': text=true needs the Q-Former's text embeddings and "
                                 f"projections (embeddings.*, text_projection.*, vision_projection.*), which '{folder}' "
                                 f"lacks; use an image-text retrieval folder such as Salesforce/blip2-itm-vit-g")
            self.embeddings = Blip2TextEmbeddings(q)
            self.vision_projection = nn.Linear(q.hidden_size, cfg.image_text_hidden_size)
            self.text_projection = nn.Linear(q.hidden_size, cfg.image_text_hidden_size)
            self._fill(self.embeddings, folder, {"embeddings.": ""}, read_weights)
            self._fill(self.vision_projection, folder, {"vision_projection.": ""}, read_weights)
            self._fill(self.text_projection, folder, {"text_projection.": ""}, read_weights)
            self.tokenizer = load_tokenizer(folder) if os.path.isfile(os.path.join(folder, "tokenizer_config.json")) else None
        self.to(self.torch_dtype)
        self.num_queries, self.dim = cfg.num_query_tokens, q.hidden_size

    def query(self, image_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The queries after the Q-Former (B, num_queries, D), cross-attending to the vision features."""
        queries = self.query_tokens.expand(image_features.shape[0], -1, -1)
        return self.qformer(query_embeds=queries, attention_mask=attention_mask,
                            encoder_hidden_states=image_features).last_hidden_state

    def image_embeds(self, image_features: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected queries (B, num_queries, E): the contrastive image side."""
        return F.normalize(self.vision_projection(self.query(image_features)), dim=-1)

    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected [CLS] of the Q-Former's text mode (B, E)."""
        h = self.qformer(query_embeds=self.embeddings(input_ids=input_ids), query_length=0,
                         attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.text_projection(h[:, 0]), dim=-1)


def load_tokenizer(folder: str, subfolder: str = ""):
    from transformers import AutoTokenizer

    with quiet_transformers():
        return AutoTokenizer.from_pretrained(os.path.join(folder, subfolder) if subfolder else folder, local_files_only=True)
