"""A saved vistok model as a part (``{type: vistok, path: checkpoints/teacher-shapes}``): the in-project stand-ins
for pretrained towers on CPU (the self-supervised ViT teachers) take the same config form as CLIP or EVA. The
model reads vistok's [-1, 1] images itself; it must provide ``tokens(images) -> B,N,D`` and may provide
``embed(images) -> B,D`` (the teachers do)."""
from __future__ import annotations

import torch

from vistok.modeling import CONFIG_NAME, VistokModel, read_model_config
from vistok.parts.base import Part
from vistok.registry import register_part


@register_part("vistok")
class VistokPart(Part):
    expected, model_class = "vistok model", "VistokModel (config.json + model.safetensors)"
    needs = (CONFIG_NAME, "model.safetensors")
    config_files = (CONFIG_NAME,)

    def load(self, folder: str, read_weights: bool) -> None:
        if read_weights:
            self.model = VistokModel.from_pretrained(folder)
        else:
            from vistok.modeling import resolve_class

            cfg = read_model_config(folder)
            cls = resolve_class(VistokModel, cfg, folder)
            self.model = cls(**{k: v for k, v in cfg.items() if k not in ("model_type", "vistok_version", "format_version")})
        if not hasattr(self.model, "tokens"):
            raise ValueError(f"part '{self.config_key}': the '{self.model.model_type}' model in '{folder}' has no "
                             f"tokens(images); a vision part needs one")
        self.model.to(self.torch_dtype)
        self.grid, self.dim = getattr(self.model, "grid", 0), getattr(self.model, "dim", 0)
        self.out_dim = self.dim
        self.image_size = getattr(self.model, "image_size", 0) or self.grid * getattr(self.model, "patch", 1)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.tokens(images.to(self.torch_dtype))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images.to(self.torch_dtype))


@register_part("vistok_autoencoder")
class VistokAutoencoderPart(Part):
    """A saved vistok continuous tokenizer (``kl``) as a frozen latent space (``{type: vistok_autoencoder, path:
    checkpoints/demo-layton-kl}``: a release, whose tokenizer is read, or a model folder): the CPU stand-in for an
    SD/SDXL VAE, with the ``autoencoder_kl`` part's interface: ``encode(images)`` -> latents at the tokenizer's
    measured scale, ``decode(latents)`` -> images."""
    expected, model_class = "vistok continuous tokenizer", "a 'kl' release or model (config.json + model.safetensors)"
    needs = (CONFIG_NAME, "model.safetensors")
    config_files = (CONFIG_NAME,)

    def folder(self) -> str:
        import os

        from vistok.release_format import PIPELINE_NAME, read_meta

        if not os.path.isfile(os.path.join(self.path, PIPELINE_NAME)):
            return self.path
        components = read_meta(self.path)["components"]
        entry = components.get("tokenizer") or next(iter(components.values()))
        return os.path.join(self.path, entry["path"])

    def load(self, folder: str, read_weights: bool) -> None:
        from vistok.modeling import resolve_class

        if read_weights:
            model = VistokModel.from_pretrained(folder)
        else:
            cfg = read_model_config(folder)
            model = resolve_class(VistokModel, cfg, folder)(**{
                k: v for k, v in cfg.items() if k not in ("model_type", "vistok_version", "format_version")})
        shape = getattr(model, "latent_shape", None)
        if shape is None or not hasattr(model, "decode"):
            raise ValueError(f"part '{self.config_key}': the '{model.model_type}' model in '{folder}' is not a "
                             f"continuous tokenizer (no latent_shape); expected e.g. a 'kl' release")
        self.model = model.to(self.torch_dtype)
        self.latent_channels, self.in_channels = shape[0], model.in_channels
        self.downsample = model.image_size // shape[-1]

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.encode(images.to(self.torch_dtype)).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents.to(self.torch_dtype)).float()
