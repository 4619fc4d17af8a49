"""Vision towers from transformers folders: CLIP (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``) and
SigLIP (``SiglipVisionModel``). Each gives patch features ``tokens(images) -> B,N,D`` at the layer its config
names and a pooled ``embed(images) -> B,D``; images are vistok's [-1, 1] tensors, preprocessed by the part.

    feature: last_hidden_state | hidden_states[-2] (any index into the hidden states: hidden_states[0] is the
             embeddings, [-1] the last layer)      post_layernorm: apply the tower's final LayerNorm to them
    project: (clip_vision_projection) map them with ``visual_projection`` (TokenFlow's CLIP teacher target)
    image_size: run at another resolution (position embeddings interpolated); mean/std: replace the processor's

CLIP's class token is dropped from ``tokens``; ``embed`` is the pooled (CLS, post-LayerNorm) output, projected
for ``clip_vision_projection`` (``image_embeds``, what an unCLIP decoder is conditioned on).
"""
from __future__ import annotations

import re

import torch

from vistok.parts.base import Part
from vistok.parts.hf import load_hf_model
from vistok.parts.preprocess import from_hf_processor
from vistok.registry import register_part
from vistok.schema import NonNegInt

FEATURE = re.compile(r"^(last_hidden_state|hidden_states\[(-?\d+)\])$")


def select_hidden(out, feature: str):
    """The hidden states ``feature`` names from a transformers output (``last_hidden_state`` or ``hidden_states[i]``)."""
    i = FEATURE.match(feature).group(2)
    return out.last_hidden_state if i is None else out.hidden_states[int(i)]


def check_feature(feature: str, key: str = "feature") -> None:
    if not FEATURE.match(feature):
        raise ValueError(f"{key}='{feature}'; expected 'last_hidden_state' or 'hidden_states[i]' (e.g. hidden_states[-2])")


class HFVision(Part):
    model_class = ""  # the transformers class name
    has_cls = True
    config_files = ("config.json", "preprocessor_config.json")

    def __init__(self, path: str, feature: str = "last_hidden_state", post_layernorm: bool = False,
                 image_size: NonNegInt = 0, mean: list[float] = (), std: list[float] = (), **base):
        super().__init__(path, **base)
        check_feature(feature)
        self.feature, self.post_norm, self.image_size_override = feature, post_layernorm, image_size
        self.options = {"feature": feature, "post_layernorm": post_layernorm, "image_size": image_size,
                        "mean": list(mean), "std": list(std)}

    def load(self, folder: str, read_weights: bool) -> None:
        import transformers

        self.model = load_hf_model(getattr(transformers, self.model_class), folder, read_weights, self.torch_dtype,
                                   self.config_key)
        cfg = self.model.config
        self.preprocess = from_hf_processor(folder, self.options["image_size"], self.options["mean"],
                                            self.options["std"], default_size=cfg.image_size)
        self.image_size = self.preprocess.size[0]
        self.grid = self.image_size // cfg.patch_size
        self.dim = self.out_dim = cfg.hidden_size

    @property
    def tower(self):
        """The transformer itself (transformers nests it as ``vision_model`` in some classes and versions)."""
        return getattr(self.model, "vision_model", self.model)

    def _hidden(self, images: torch.Tensor):
        x = self.preprocess(images).to(self.torch_dtype)
        interpolate = self.image_size != self.model.config.image_size
        hidden = self.feature != "last_hidden_state"
        return self.model(pixel_values=x, output_hidden_states=hidden, interpolate_pos_encoding=interpolate)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features B, grid*grid, D at ``feature`` (class token dropped)."""
        h = select_hidden(self._hidden(images), self.feature)
        h = h[:, 1:] if self.has_cls else h
        if self.post_norm:
            h = self.tower.post_layernorm(h)
        return self._project(h)

    def _project(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._hidden(images).pooler_output


@register_part("clip_vision")
class CLIPVision(HFVision):
    """``transformers.CLIPVisionModel`` (from a CLIP or CLIP-vision folder, e.g. openai/clip-vit-base-patch16)."""
    expected, model_class = "CLIP vision", "CLIPVisionModel"


@register_part("clip_vision_projection")
class CLIPVisionProjection(HFVision):
    """``transformers.CLIPVisionModelWithProjection``: ``embed`` is ``image_embeds``; ``project`` maps the tokens too."""
    expected, model_class = "CLIP vision with projection", "CLIPVisionModelWithProjection"

    def __init__(self, path: str, project: bool = False, **kw):
        super().__init__(path, **kw)
        self.project = project
        self.options["project"] = project

    def load(self, folder: str, read_weights: bool) -> None:
        super().load(folder, read_weights)
        if self.project:
            self.out_dim = self.model.config.projection_dim

    def _project(self, h):
        return self.model.visual_projection(h) if self.project else h

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._hidden(images).image_embeds


@register_part("siglip_vision")
class SiglipVision(HFVision):
    """``transformers.SiglipVisionModel`` (e.g. google/siglip-so400m-patch14-384; no class token)."""
    expected, model_class, has_cls = "SigLIP vision", "SiglipVisionModel", False
