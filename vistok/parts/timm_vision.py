"""timm vision towers from a local folder (``config.json`` with ``architecture``, ``model_args`` and
``pretrained_cfg``, plus ``model.safetensors`` or ``pytorch_model.bin``: what ``timm.models.save_for_hf`` and the
Hub's timm repos hold), e.g. ViTamin-XL (``vitamin_xlarge_256``, TokenFlow's 256-px teacher) or EVA-02.

    feature: forward_features (the last block after the model's final norm: for ViTamin, whose norm is an
             identity under average pooling, the last block's output, as TokenFlow reads it) | blocks[i] (the
             i-th block's output, before any norm)

The classifier head is dropped after loading; prefix (class / register) tokens are dropped from ``tokens``;
``embed`` is the model's pooled features. Preprocessing: resize to ``pretrained_cfg.input_size`` with its
interpolation (no crop: the tokenizer's image is the whole input), mean/std from ``pretrained_cfg``.
"""
from __future__ import annotations

import json
import os
import re

import torch

from vistok.parts.base import Part
from vistok.parts.folders import load_strict, read_prefixed, weight_files
from vistok.parts.preprocess import RESAMPLE, ImagePreprocess
from vistok.registry import register_part

FEATURE = re.compile(r"^(forward_features|blocks\[(-?\d+)\])$")


@register_part("timm")
class TimmVision(Part):
    expected, model_class = "timm model", "timm.create_model(architecture)"

    def __init__(self, path: str, feature: str = "forward_features", mean: list[float] = (), std: list[float] = (), **base):
        super().__init__(path, **base)
        if not FEATURE.match(feature):
            raise ValueError(f"feature='{feature}'; expected 'forward_features' or 'blocks[i]' (e.g. blocks[-2])")
        self.feature = feature
        self.options = {"feature": feature, "mean": list(mean), "std": list(std)}

    def load(self, folder: str, read_weights: bool) -> None:
        import timm

        cfg = json.load(open(os.path.join(folder, "config.json"), encoding="utf-8"))
        if "architecture" not in cfg:
            raise ValueError(f"part '{self.config_key}': {folder}/config.json has no 'architecture' (expected a timm "
                             f"model folder, as written by timm.models.save_for_hf)")
        args = {**cfg.get("model_args", {}), "num_classes": cfg.get("num_classes", 0)}
        model = timm.create_model(cfg["architecture"], pretrained=False, **args)
        if read_weights:
            if not weight_files(folder):
                raise FileNotFoundError(f"part '{self.config_key}': '{folder}' has no weight file (expected "
                                        f"model.safetensors or pytorch_model.bin)")
            load_strict(model, read_prefixed(folder, {"": ""}, self.config_key, self.expected), folder, self.config_key)
        model.reset_classifier(0)
        self.model = model.to(self.torch_dtype)
        pre = cfg.get("pretrained_cfg", {})
        size = tuple(pre.get("input_size", (3, 224, 224))[1:])
        self.preprocess = ImagePreprocess(size, self.options["mean"] or pre.get("mean", (0.5,) * 3),
                                          self.options["std"] or pre.get("std", (0.5,) * 3),
                                          mode=RESAMPLE.get(pre.get("interpolation", "bicubic"), "bicubic"))
        self.image_size, self.grid = size[0], model.patch_embed.grid_size[0]
        self.dim = self.out_dim = model.embed_dim

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images).to(self.torch_dtype)
        m = FEATURE.match(self.feature)
        if m.group(2) is None:
            return self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        return self.model.forward_intermediates(x, indices=[int(m.group(2))], output_fmt="NLC", norm=False,
                                                intermediates_only=True)[0]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images).to(self.torch_dtype)
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
