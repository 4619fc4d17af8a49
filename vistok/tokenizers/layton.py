"""Layton (LaCToK): VQ codes decoded by a latent diffusion model turned into a few-step consistency decoder.

    image --resize to vq.image_size--> VQ encoder (LlamaGen layout, l2-normalised codebook) --> codes B,h,w
    codes --> code vectors B,D,h,w --nearest--> latent grid --> ControlNet branch --+
    noise --> UNet (text branch fed zeros) <-----------------------------------------+ --> x0 latents --> VAE --> image

Everything but the UNet's ``vae`` (a frozen part: vistok's ``kl`` on CPU, the SDXL VAE at paper scale) and the VQ
(``vq``, a ``VQEncoder``; initialised from a ``vqgan`` release with ``train.init_modules: {vq: RELEASE}`` and kept
frozen by default) trains. The UNet is built from ``block_out_channels`` & co. (CPU, fully trained) or read from a
folder (``unet: {type: unet2d_condition, path: ..., subfolder: unet, lora: {}}``: LaCToK's r 64 / alpha 8 LoRA).
The ControlNet is ``ControlNetModel.from_unet`` with a stride-1 conditioning embedding (``vistok.nn.controlnet``;
LaCToK's channels 8 -> 32 -> 96 -> 256 -> zero conv), so at initialisation it changes nothing.

- ``stage: 1``: eps-prediction MSE on the VAE's latents at a uniform timestep (``DDPMScheduler``; SDXL's
  scaled-linear betas), the code map as the condition. Decoding: DDIM (``ddim_steps``, eta 0, trailing timesteps).
- ``stage: 2`` (``train.init_from`` the stage-1 run): the consistency decoder. From pure noise at t = 999 the
  model predicts x0, which is re-noised with fresh noise to the next of ``consistency_timesteps`` (999, 499, 124,
  LaCToK's; ``LCMScheduler.set_timesteps(timesteps=...)`` is the same walk) and so on. Training draws the number
  of steps k from ``train_consistency_steps``, runs the first k - 1 without gradients (the stop-gradient) and
  puts a pixel loss on the frozen VAE decoder's image of the last x0: L1 (``l1_weight``) + LPIPS (``lpips_weight``,
  weights from ``lpips_path``). Decoding: ``decode_steps`` of that walk (1, 2 or 3).

Every random draw of decoding takes the caller's generator (LaCToK's re-noising calls ``randn_like``, which
ignores it), so a seed fixes the images; ``reconstruct`` uses ``torch.Generator().manual_seed(eval_seed)``.
The UNet's cross-attention gets one all-zero token (LaCToK feeds 77: with zero keys and values every token weighs
the same and contributes the same, so the output is identical); an SDXL UNet also gets zero ``text_embeds`` and
``time_ids`` (H, W, 0, 0, H, W) as LaCToK's.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F

from vistok.nn.controlnet import controlnet_from_unet
from vistok.parts.base import Part, as_spec, build_part
from vistok.registry import register_model
from vistok.schema import NonNegFloat, NonNegInt, NonNegInts, OneOf, PartSpec, PosInt, PosInts
from vistok.tokenizers.base import ImageTokenizer
from vistok.tokenizers.vqgan import VQEncoder

SAMPLERS = ("consistency", "ddim")


@dataclasses.dataclass
class LaytonDecodeOptions:
    """How Layton's decoder turns codes into images (``sample.py`` builds its flags from this); 0 / "" keep the
    model's own (stage 2: 3 consistency steps; stage 1: ``ddim_steps`` DDIM steps; ``cond_scale`` 0.8)."""
    decode_steps: NonNegInt = dataclasses.field(default=0, metadata={
        "help": "decoder steps (0: the model's: consistency decode_steps, or ddim_steps)"})
    decode_sampler: Literal["", "consistency", "ddim"] = dataclasses.field(default="", metadata={
        "help": "the few-step consistency walk or DDIM ('': consistency after stage 2, DDIM after stage 1)"})
    cond_scale: NonNegFloat = dataclasses.field(default=0.0, metadata={
        "help": "ControlNet conditioning scale (0: the model's, LaCToK's 0.8)"})


@register_model("layton")
class Layton(ImageTokenizer):
    SamplingOptions = LaytonDecodeOptions

    def __init__(
        self,
        image_size: PosInt = 32,
        in_channels: PosInt = 3,
        stage: PosInt = 1,
        vq: dict | None = None,
        freeze_vq: bool = True,
        vae: PartSpec = None,
        unet: PartSpec = None,
        block_out_channels: PosInts = (32, 64),
        layers_per_block: PosInt = 1,
        attn_levels: NonNegInts = (1,),
        attention_heads: PosInt = 4,
        norm_num_groups: PosInt = 8,
        cross_attention_dim: PosInt = 32,
        cond_embedding_channels: PosInts = (8, 32, 96, 256),
        num_train_timesteps: PosInt = 1000,
        beta_schedule: OneOf("scaled_linear", "linear", "squaredcos_cap_v2") = "scaled_linear",
        beta_start: NonNegFloat = 0.00085,
        beta_end: NonNegFloat = 0.012,
        consistency_timesteps: NonNegInts = (999, 499, 124),
        train_consistency_steps: PosInts = (1, 2, 3),
        decode_steps: PosInt = 3,
        ddim_steps: PosInt = 50,
        cond_scale: NonNegFloat = 0.8,
        l1_weight: NonNegFloat = 1.0,
        lpips_weight: NonNegFloat = 0.0,
        lpips_path: str = "",
        eval_seed: NonNegInt = 0,
    ):
        super().__init__()
        if stage not in (1, 2):
            raise ValueError(f"layton: stage={stage}; expected 1 (eps-prediction) or 2 (the consistency decoder)")
        self.stage = stage
        self.image_size, self.in_channels, self.freeze_vq = image_size, in_channels, freeze_vq
        self.vq = self._build_vq(vq or {})
        self.codebook_size, self.token_shape = self.vq.codebook_size, self.vq.token_shape
        self.vae = build_part(vae, "vae")
        if self.vae is None:
            raise ValueError("layton: model.vae is required: the frozen latent space, e.g. {type: vistok_autoencoder, "
                             "path: checkpoints/layton-kl-shapes} or {type: autoencoder_kl, path: SDXL, subfolder: vae}")
        if self.vae.in_channels != in_channels and not (in_channels == 1 and self.vae.in_channels == 3):
            raise ValueError(f"layton: model.vae ('{self.vae.path}') reads {self.vae.in_channels}-channel images; "
                             f"model.in_channels is {in_channels}")
        if image_size % self.vae.downsample:
            raise ValueError(f"layton: image_size {image_size} is not divisible by the VAE's downsampling "
                             f"{self.vae.downsample}")
        self.latent_shape = (self.vae.latent_channels, image_size // self.vae.downsample,
                             image_size // self.vae.downsample)
        unet = dict(as_spec(unet) or {})
        lora = unet.pop("lora", None)  # added after the ControlNet copies the plain UNet (LaCToK's order)
        self.unet = build_part(unet, "unet") or self._small_unet(
            block_out_channels, layers_per_block, attn_levels, attention_heads, norm_num_groups, cross_attention_dim)
        self.controlnet = controlnet_from_unet(self.unet_model, self.vq.codebook_dim, tuple(cond_embedding_channels))
        if lora is not None:
            if not isinstance(self.unet, Part):
                raise ValueError("layton: model.unet.lora needs a UNet read from a folder (model.unet: {type: "
                                 "unet2d_condition, path: ...}); the small UNet built here trains in full")
            self.unet.add_lora(lora)
        self._check_steps(consistency_timesteps, train_consistency_steps, decode_steps, num_train_timesteps)
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                             beta_start=beta_start, beta_end=beta_end, clip_sample=False)
        self.consistency_timesteps = [int(t) for t in consistency_timesteps]
        self.train_consistency_steps = [int(k) for k in train_consistency_steps]
        self.decode_steps, self.ddim_steps, self.cond_scale = decode_steps, ddim_steps, cond_scale
        self.l1_weight, self.lpips_weight, self.lpips_path, self.eval_seed = l1_weight, lpips_weight, lpips_path, eval_seed

    # ---- construction -------------------------------------------------------------------------------
    def _build_vq(self, vq: dict) -> VQEncoder:
        vq = {"image_size": self.image_size, "in_channels": self.in_channels, **dict(vq)}
        try:
            enc = VQEncoder(**vq)
        except TypeError as e:
            raise ValueError(f"layton: model.vq: {e}; expected the VQ arguments of a vqgan config (image_size, ch, "
                             f"ch_mult, num_res_blocks, z_channels, codebook_size, codebook_dim, ...)") from None
        if enc.in_channels != self.in_channels:
            raise ValueError(f"layton: model.vq.in_channels {enc.in_channels} != model.in_channels {self.in_channels}")
        if self.freeze_vq:
            enc.requires_grad_(False)
        return enc

    def _small_unet(self, channels, layers, attn_levels, heads, groups, cross_dim):
        from vistok.nn.unet import small_unet

        c, h, _ = self.latent_shape
        return small_unet("layton", h, c, c, channels, layers, attn_levels, heads, groups, cross_dim)

    @staticmethod
    def _check_steps(timesteps, train_steps, decode_steps, total) -> None:
        ts = [int(t) for t in timesteps]
        if not ts or any(a <= b for a, b in zip(ts, ts[1:])) or ts[0] >= total:
            raise ValueError(f"layton: consistency_timesteps {ts} must fall strictly, below num_train_timesteps {total}")
        bad = [k for k in list(train_steps) + [decode_steps] if int(k) > len(ts)]
        if bad:
            raise ValueError(f"layton: train_consistency_steps {list(train_steps)} / decode_steps {decode_steps}: at "
                             f"most {len(ts)} steps (consistency_timesteps {ts})")

    @property
    def unet_model(self):
        """The diffusers UNet (inside its part when read from a folder)."""
        return self.unet.model if isinstance(self.unet, Part) else self.unet

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_vq:
            self.vq.train(False)  # a frozen VQ keeps its codebook (no EMA updates, no dead-code expiry)
        return self

    @property
    def device(self) -> torch.device:
        return self.controlnet.conv_in.weight.device

    # ---- codes --------------------------------------------------------------------------------------
    def vq_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images resized (bicubic, antialiased) to the VQ's input size: 1024 -> 256 px at paper scale."""
        s = self.vq.image_size
        if images.shape[-1] == s and images.shape[-2] == s:
            return images
        return F.interpolate(images, size=(s, s), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images B,C,H,W in [-1, 1] -> codes B,h,w (int64)."""
        return self.vq.encode(self.vq_input(images))

    def code_map(self, codes: torch.Tensor) -> torch.Tensor:
        """codes B,h,w -> the ControlNet's condition: code vectors nearest-upsampled to the latent grid."""
        emb = self.vq.embed(codes.to(self.device)).float()
        return F.interpolate(emb, size=self.latent_shape[1:], mode="nearest")

    # ---- the denoiser -------------------------------------------------------------------------------
    def _context(self, n: int, device, dtype) -> dict:
        """The UNet's text inputs, all zeros (LaCToK's), plus SDXL's size conditioning."""
        cfg = self.unet_model.config
        out = {"encoder_hidden_states": torch.zeros(n, 1, cfg.cross_attention_dim, device=device, dtype=dtype)}
        if cfg.addition_embed_type == "text_time":
            width = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            s = float(self.image_size)
            ids = torch.tensor([s, s, 0.0, 0.0, s, s], device=device, dtype=dtype).expand(n, -1)
            out["added_cond_kwargs"] = {"text_embeds": torch.zeros(n, width, device=device, dtype=dtype),
                                        "time_ids": ids}
        return out

    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                      cond_scale: float = 1.0) -> torch.Tensor:
        """eps at noisy latents B,C,h,w and timesteps ``t`` (B,) given the code map ``cond``."""
        t = t.expand(len(noisy)) if t.dim() == 0 else t
        ctx = self._context(len(noisy), noisy.device, noisy.dtype)
        down, mid = self.controlnet(noisy, t, controlnet_cond=cond, conditioning_scale=float(cond_scale),
                                    return_dict=False, **ctx)
        return self.unet_model(noisy, t, down_block_additional_residuals=down, mid_block_additional_residual=mid,
                               **ctx).sample

    def _alpha(self, t: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.noise_scheduler.alphas_cumprod[int(t)].to(like.device, torch.float32)
        return ab.sqrt(), (1 - ab).sqrt()

    def x0_from_noise(self, noisy: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        a, s = self._alpha(t, noisy)
        return (noisy - s * eps) / a

    def renoise(self, x0: torch.Tensor, t: int, generator: torch.Generator | None) -> torch.Tensor:
        """x0 -> x_t with fresh noise from ``generator`` (LaCToK's ``scheduler.add_noise(x0, randn, t)``)."""
        a, s = self._alpha(t, x0)
        return a * x0 + s * _randn(x0.shape, generator, x0.device)

    def consistency_walk(self, cond: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                         cond_scale: float = 1.0, grad_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 latents, the last step's input) after ``steps`` of the walk over ``consistency_timesteps``: predict
        x0, re-noise it to the next timestep with fresh noise, ... The steps before the last run without gradients;
        the last keeps them when ``grad_last`` (stage-2 training)."""
        ts = self.consistency_timesteps[:steps]
        x = _randn((len(cond), *self.latent_shape), generator, cond.device)
        with torch.no_grad():
            for i, t in enumerate(ts[:-1]):
                x0 = self.x0_from_noise(x, self.predict_noise(x, torch.tensor(t, device=x.device), cond, cond_scale), t)
                x = self.renoise(x0, ts[i + 1], generator)
        with torch.set_grad_enabled(grad_last and torch.is_grad_enabled()):
            t = ts[-1]
            return self.x0_from_noise(x, self.predict_noise(x, torch.tensor(t, device=x.device), cond, cond_scale), t), x

    def ddim_latents(self, cond: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                     cond_scale: float = 1.0) -> torch.Tensor:
        """Multi-step baseline: diffusers' DDIM (eta 0, trailing timesteps: the first at t = T - 1)."""
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.noise_scheduler.config, timestep_spacing="trailing",
                                          set_alpha_to_one=True, clip_sample=False)
        sched.set_timesteps(int(steps), device=cond.device)
        x = _randn((len(cond), *self.latent_shape), generator, cond.device)
        for t in sched.timesteps:
            x = sched.step(self.predict_noise(x, t, cond, cond_scale).float(), t, x).prev_sample
        return x

    # ---- decoding -----------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, codes: torch.Tensor, generator: torch.Generator | None = None, decode_steps: int = 0,
               decode_sampler: str = "", cond_scale: float = 0.0) -> torch.Tensor:
        """codes B,h,w -> images B,C,H,W (about [-1, 1]); options as ``LaytonDecodeOptions`` (0 / "": the model's)."""
        sampler = decode_sampler or ("consistency" if self.stage == 2 else "ddim")
        if sampler not in SAMPLERS:
            raise ValueError(f"layton: decode_sampler='{sampler}'; expected one of {SAMPLERS}")
        scale = float(cond_scale or self.cond_scale)
        cond = self.code_map(codes)
        if sampler == "ddim":
            latents = self.ddim_latents(cond, decode_steps or self.ddim_steps, generator, scale)
        else:
            steps = int(decode_steps or self.decode_steps)
            if steps > len(self.consistency_timesteps):
                raise ValueError(f"layton: decode_steps {steps}: the consistency walk has "
                                 f"{len(self.consistency_timesteps)} timesteps {self.consistency_timesteps}")
            latents = self.consistency_walk(cond, steps, generator, scale)[0]
        return self._images(self.vae.decode(latents))

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1, keepdim=True) if self.in_channels == 1 and x.shape[1] == 3 else x

    def reconstruct(self, images: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.encode(images)
        g = torch.Generator(device=images.device).manual_seed(self.eval_seed)
        return self.decode(codes, generator=g, **options), codes

    # ---- training -----------------------------------------------------------------------------------
    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        x = batch["image"]
        with torch.no_grad():
            cond = self.code_map(self.encode(x))
            latents = self.vae.encode(x)
        if self.stage == 1:
            noise = torch.randn_like(latents)
            t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(x),), device=x.device)
            eps = self.predict_noise(self.noise_scheduler.add_noise(latents, noise, t), t, cond)
            loss = F.mse_loss(eps.float(), noise)
            return {"loss": loss, "eps_mse": loss.detach()}
        k = self.train_consistency_steps[int(torch.randint(len(self.train_consistency_steps), ()))]
        x0 = self.consistency_walk(cond, k, None, 1.0, grad_last=True)[0]
        image = self._images(self.vae.decode(x0.float()))
        out = {"l1": F.l1_loss(image, x), "latent_mse": F.mse_loss(x0.detach().float(), latents), "walk_steps":
               torch.tensor(float(k))}
        loss = self.l1_weight * out["l1"]
        if self.lpips_weight > 0:
            out["lpips"] = self.perceptual_loss(image, x)
            loss = loss + self.lpips_weight * out["lpips"]
        out["loss"] = loss
        return out

    # ---- held-out metrics and pictures ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """PSNR / SSIM / colour error / codebook usage of the default decoding (``ImageTokenizer.evaluate``), and
        the eps MSE at fixed timesteps and noise with the code map (``eps_mse``) and without it (conditioning
        scale 0: ``eps_mse_uncond``, what the codes are worth to the denoiser)."""
        batches = list(batches)
        out = super().evaluate(batches)
        sums, n = {"eps_mse": 0.0, "eps_mse_uncond": 0.0}, 0
        total = self.noise_scheduler.config.num_train_timesteps
        for i, batch in enumerate(batches):
            x = batch["image"]
            latents, cond = self.vae.encode(x), self.code_map(self.encode(x))
            t = ((torch.arange(len(x), device=x.device) * 2 + 1) * total // (2 * len(x))).clamp(max=total - 1)
            noise = _randn(latents.shape, torch.Generator(device=x.device).manual_seed(i), x.device)
            noisy = self.noise_scheduler.add_noise(latents, noise, t)
            for key, scale in (("eps_mse", 1.0), ("eps_mse_uncond", 0.0)):
                sums[key] += float(F.mse_loss(self.predict_noise(noisy, t, cond, scale).float(), noise, reduction="sum"))
            n += noise.numel()
        return {**out, **{k: v / n for k, v in sums.items()}}


def _randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (on its device), then moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=where).to(device)
