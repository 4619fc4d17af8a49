"""Stable Diffusion components from diffusers folders:

- ``autoencoder_kl``: ``diffusers.AutoencoderKL``, an SD/SDXL VAE (e.g. stabilityai/sd-vae-ft-mse, or the ``vae``
  folder of a pipeline: ``{type: autoencoder_kl, path: checkpoints/stable-diffusion-2-1, subfolder: vae}``).
  ``encode(images) -> latents`` (already multiplied by ``scaling_factor``), ``decode(latents) -> images``.
- ``unet2d_condition``: ``diffusers.UNet2DConditionModel`` (a pipeline's ``unet`` folder); ``forward`` returns
  the predicted tensor.
- ``stable_unclip``: a whole ``diffusers.StableUnCLIPImg2ImgPipeline`` folder (a copy of
  stabilityai/stable-diffusion-2-1-unclip): ``image_embeds(images)`` is the CLIP image embedding its decoder is
  conditioned on, ``generate(image_embeds)`` the images decoded from such embeddings.

Images are vistok's B,C,H,W tensors in [-1, 1]. Loading is strict: every weight of the class must be in the
folder (diffusers only logs missing weights, and leaves them on the meta device), and a folder of another
diffusers class is refused by its config's ``_class_name``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil

import torch

from vistok.parts.base import Part
from vistok.parts.folders import WEIGHT_SUFFIXES, fingerprint
from vistok.parts.hf import load_hf_model, quiet_transformers
from vistok.parts.preprocess import from_hf_processor
from vistok.registry import register_part


@contextlib.contextmanager
def quiet_diffusers():
    """diffusers' load reports (its errors too: vistok raises its own) and progress bars off, transformers' too."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL)
    logging.disable_progress_bar()
    try:
        with quiet_transformers():
            yield
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


def load_diffusers_config(cls, folder: str, key: str) -> dict:
    """The folder's config.json, refused when it was saved by another diffusers class (its ``_class_name``)."""
    try:
        config = cls.load_config(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"part '{key}': cannot read a {cls.__name__} config from '{folder}' ({e})") from e
    found = config.get("_class_name")
    if found and found != cls.__name__:
        raise ValueError(f"part '{key}': '{folder}' holds a {found} (config.json _class_name), expected a "
                         f"{cls.__name__}; for a pipeline folder set 'subfolder' (e.g. vae, unet)")
    return config


def load_diffusers_model(cls, folder: str, read_weights: bool, dtype: torch.dtype, key: str):
    """``cls.from_pretrained(folder)`` with no download and an error naming the part, folder, class and keys if
    any weight is missing, unexpected or of the wrong shape; with ``read_weights=False`` the class built from the
    folder's config (random weights, to be overwritten by a saved vistok model's)."""
    config = load_diffusers_config(cls, folder, key)
    with quiet_diffusers():
        if not read_weights:
            return cls.from_config(config).to(dtype)
        try:
            model, info = cls.from_pretrained(folder, local_files_only=True, torch_dtype=dtype,
                                              output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as e:  # no weight file; shape mismatches (RuntimeError)
            raise ValueError(f"part '{key}': cannot load {cls.__name__} from '{folder}' ({e})") from e
    missing, extra = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    bad = list(info.get("mismatched_keys") or [])
    if missing or extra or bad:
        raise ValueError(f"part '{key}': '{folder}' does not hold the weights of a {cls.__name__}: "
                         f"{len(missing)} missing {missing[:5]}, {len(extra)} unexpected {extra[:5]}, "
                         f"mismatched {bad[:3]}")
    return model


class DiffusersModel(Part):
    """One diffusers model class read from ``path`` (joined with ``subfolder`` for a pipeline folder)."""
    model_class = ""  # the diffusers class name

    def __init__(self, path: str, subfolder: str = "", **base):
        super().__init__(path, **base)
        self.subfolder = subfolder
        self.options = {"subfolder": subfolder}

    def folder(self) -> str:
        return os.path.join(self.path, self.subfolder) if self.subfolder else self.path

    def load(self, folder: str, read_weights: bool) -> None:
        import diffusers

        self.model = load_diffusers_model(getattr(diffusers, self.model_class), folder, read_weights,
                                          self.torch_dtype, self.config_key)


@register_part("autoencoder_kl")
class AutoencoderKLPart(DiffusersModel):
    """``diffusers.AutoencoderKL`` (an SD/SDXL VAE folder, or a pipeline folder with ``subfolder: vae``).
    ``sample: true`` encodes to a sample of the latent distribution instead of its mean."""
    expected, model_class = "diffusers KL autoencoder", "AutoencoderKL"

    def __init__(self, path: str, subfolder: str = "", sample: bool = False, **base):
        super().__init__(path, subfolder=subfolder, **base)
        self.sample = sample
        self.options["sample"] = sample

    def load(self, folder: str, read_weights: bool) -> None:
        super().load(folder, read_weights)
        cfg = self.model.config
        self.latent_channels, self.in_channels = cfg.latent_channels, cfg.in_channels
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = cfg.scaling_factor
        self.shift_factor = getattr(cfg, "shift_factor", None) or 0.0  # null in SD/SDXL configs

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """B, latent_channels, H/downsample, W/downsample float32 latents, scaled as a diffusion model sees them:
        (z - shift_factor) * scaling_factor, z the latent distribution's mean (or a sample, ``sample: true``)."""
        x = images
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        dist = self.model.encode(x.to(self.model.dtype)).latent_dist
        z = dist.sample(generator) if self.sample else dist.mean
        return ((z - self.shift_factor) * self.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Float32 images in [-1, 1] (not clamped) from latents scaled as ``encode`` returns them."""
        z = latents / self.scaling_factor + self.shift_factor
        return self.model.decode(z.to(self.model.dtype)).sample.float()


# LaCToK's adapters over the SDXL UNet: attention, feed-forward, resnet convs, samplers and time projections
UNET_LORA_DEFAULTS = {"r": 64, "alpha": 8, "dropout": 0.0, "target_modules": [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
    "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]}


@register_part("unet2d_condition")
class UNet2DConditionPart(DiffusersModel):
    """``diffusers.UNet2DConditionModel`` (a UNet folder, or a pipeline folder with ``subfolder: unet``).
    ``lora: {r, alpha, dropout, target_modules}`` (any subset; LaCToK's r 64, alpha 8 over ``UNET_LORA_DEFAULTS``)
    adds peft adapters (named ``...<module>.lora_A.default`` / ``lora_B.default`` over ``base_layer``): with
    ``frozen: true`` only they train and are saved with the owner (``trained_keys``)."""
    expected, model_class = "diffusers conditional UNet", "UNet2DConditionModel"

    def __init__(self, path: str, subfolder: str = "", lora: dict | None = None, **base):
        super().__init__(path, subfolder=subfolder, **base)
        self.lora, self._trained = self._filled(lora), set()
        self.options["lora"] = self.lora

    def _filled(self, lora: dict | None) -> dict | None:
        if lora is None:
            return None
        if not isinstance(lora, dict) or set(lora) - set(UNET_LORA_DEFAULTS):
            raise ValueError(f"part unet2d_condition ('{self.path}'): lora={lora!r}; expected a mapping with keys "
                             f"among {', '.join(UNET_LORA_DEFAULTS)}")
        return {**UNET_LORA_DEFAULTS, **lora}

    def load(self, folder: str, read_weights: bool) -> None:
        super().load(folder, read_weights)
        cfg = self.model.config
        self.in_channels, self.out_channels = cfg.in_channels, cfg.out_channels
        self.cross_attention_dim, self.sample_size = cfg.cross_attention_dim, cfg.sample_size
        if self.lora is not None:
            self._inject(self.lora)

    def add_lora(self, lora: dict) -> None:
        """Adapters added after loading (an owner first copies the plain UNet, e.g. into a ControlNet); the part
        is frozen again around them."""
        self.lora = self._filled(lora)
        self.options["lora"] = self.lora
        self._inject(self.lora)
        if self.frozen:
            self.freeze()
        self.train(False)

    def _inject(self, lora: dict) -> None:
        from peft import LoraConfig

        try:
            self.model.add_adapter(LoraConfig(r=int(lora["r"]), lora_alpha=float(lora["alpha"]),
                                              lora_dropout=float(lora["dropout"]),
                                              target_modules=list(lora["target_modules"])))
        except ValueError as e:
            raise ValueError(f"part '{self.config_key}': lora does not fit the UNet in '{self.path}' ({e})") from e
        self._trained = {f"model.{n}" for n, _ in self.model.named_parameters() if ".lora_" in n}

    def trained_keys(self) -> set[str]:
        return self._trained

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, **added) -> torch.Tensor:
        """The UNet's prediction (noise, v or x0, as it was trained); ``added`` goes to the UNet as is
        (``class_labels``, ``added_cond_kwargs``, ``timestep_cond``, ...)."""
        return self.model(sample, timestep, encoder_hidden_states=encoder_hidden_states, **added).sample


# the pipeline's torch modules: (name, library, class); its other components (schedulers, tokenizer, image
# processor) are small config files that the pipeline reads itself
UNCLIP_MODULES = (
    ("image_encoder", "transformers", "CLIPVisionModelWithProjection"),
    ("image_normalizer", "diffusers", "StableUnCLIPImageNormalizer"),
    ("text_encoder", "transformers", "CLIPTextModel"),
    ("unet", "diffusers", "UNet2DConditionModel"),
    ("vae", "diffusers", "AutoencoderKL"),
)
UNCLIP_PIPELINE = "StableUnCLIPImg2ImgPipeline"


def module_class(library: str, name: str):
    if library == "transformers":
        import transformers

        return getattr(transformers, name)
    if name == "StableUnCLIPImageNormalizer":
        from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

        return StableUnCLIPImageNormalizer
    import diffusers

    return getattr(diffusers, name)


def fingerprint_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@register_part("stable_unclip")
class StableUnCLIP(Part):
    """A ``diffusers.StableUnCLIPImg2ImgPipeline`` folder (a copy of stabilityai/stable-diffusion-2-1-unclip:
    model_index.json, feature_extractor, image_encoder, image_normalizer, image_noising_scheduler, tokenizer,
    text_encoder, unet, scheduler, vae). Its torch modules are this part's submodules (``.to``, freezing, state);
    the pipeline object is ``self.pipe``.

    Fingerprint: the base fingerprints the weight files directly in ``folder()``, and a pipeline keeps them in
    subfolders, so this part's recorded fingerprint is '' (no check when a saved model is loaded again) until
    ``build_part`` calls ``folder_fingerprint()`` below instead."""
    expected, model_class = "Stable unCLIP (image variation) pipeline", UNCLIP_PIPELINE
    needs = ("model_index.json",)
    config_files = ("model_index.json",)  # and every subfolder's non-weight files (save_configs)

    def folder_fingerprint(self) -> str:
        """The fingerprint of the pipeline's weights: over each module subfolder's own fingerprint."""
        subs = [f"{name}:{fingerprint(os.path.join(self.folder(), name))}" for name, _, _ in UNCLIP_MODULES]
        return fingerprint_of("\n".join(subs))

    def load(self, folder: str, read_weights: bool) -> None:
        from diffusers import StableUnCLIPImg2ImgPipeline

        self._check_index(folder)
        modules = {name: self._module(folder, name, library, cls, read_weights)
                   for name, library, cls in UNCLIP_MODULES}
        with quiet_diffusers():
            try:  # the modules given, from_pretrained reads only the schedulers, tokenizer and image processor
                pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(folder, local_files_only=True, **modules)
            except (OSError, ValueError) as e:
                raise ValueError(f"part '{self.config_key}': cannot load {UNCLIP_PIPELINE} from '{folder}' "
                                 f"({e})") from e
        pipe.set_progress_bar_config(disable=True)
        for name, module in modules.items():
            setattr(self, name, module)
        object.__setattr__(self, "pipe", pipe)  # not a module: its modules are registered above
        self.preprocess = from_hf_processor(os.path.join(folder, "feature_extractor"),
                                            default_size=self.image_encoder.config.image_size)
        self.embed_dim = self.image_encoder.config.projection_dim

    def _check_index(self, folder: str) -> None:
        with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as fh:
            found = json.load(fh).get("_class_name")
        if found != UNCLIP_PIPELINE:
            raise ValueError(f"part '{self.config_key}': '{folder}' holds a {found} (model_index.json _class_name), "
                             f"expected a {UNCLIP_PIPELINE} (e.g. a copy of stabilityai/stable-diffusion-2-1-unclip)")

    def _module(self, folder: str, name: str, library: str, cls_name: str, read_weights: bool):
        sub, cls = os.path.join(folder, name), module_class(library, cls_name)
        if library == "transformers":
            return load_hf_model(cls, sub, read_weights, self.torch_dtype, self.config_key)
        return load_diffusers_model(cls, sub, read_weights, self.torch_dtype, self.config_key)

    def save_configs(self, out: str) -> None:
        """model_index.json and every component subfolder without its weight files (a fine-tuned pipeline is
        rebuilt from these, its weights coming from its owner's)."""
        os.makedirs(out, exist_ok=True)
        shutil.copyfile(os.path.join(self.source, "model_index.json"), os.path.join(out, "model_index.json"))
        for name in sorted(os.listdir(self.source)):
            src = os.path.join(self.source, name)
            if os.path.isdir(src) and not name.startswith("."):
                shutil.copytree(src, os.path.join(out, name), dirs_exist_ok=True,
                                ignore=lambda d, names: [n for n in names if n.endswith(WEIGHT_SUFFIXES)])

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """B, projection_dim: the CLIP image embedding (``image_embeds``) of the image encoder, after the
        feature extractor's resize, crop and CLIP mean/std (done on tensors)."""
        x = self.preprocess(images).to(self.image_encoder.dtype)
        return self.image_encoder(pixel_values=x).image_embeds

    def generate(self, image_embeds: torch.Tensor, num_inference_steps: int = 20, guidance_scale: float = 10.0,
                 generator: torch.Generator | None = None, height: int | None = None, width: int | None = None,
                 noise_level: int = 0) -> torch.Tensor:
        """B,3,H,W float32 images in [-1, 1] decoded from B image embeddings (an empty prompt each); H, W default
        to the UNet's sample size times the VAE's downsampling (768 for SD 2.1 unCLIP)."""
        emb = image_embeds.to(device=self.unet.device, dtype=self.unet.dtype)
        out = self.pipe(image_embeds=emb, prompt=[""] * emb.shape[0], num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, generator=generator, height=height, width=width,
                        noise_level=noise_level, output_type="pt")
        return out.images.float() * 2 - 1
