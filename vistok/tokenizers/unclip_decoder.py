"""SEED's image decoder: a generation embedding (what SEED's tokenizer predicts from its codes) -> an image,
unCLIP style. Two modes, one interface (``generate(embeds, steps, guidance_scale, generator)`` -> B,C,H,W in
[-1, 1], deterministic given the generator):

- **trainable** (CPU, no ``unclip``): a small ``diffusers.UNet2DConditionModel`` on pixels (``patch`` x ``patch``
  pixels folded into channels: patch 2 runs a 32-px image at 16x16, 4x cheaper), conditioned on the embedding
  twice: projected to ``cond_tokens`` cross-attention tokens, and added to the timestep embedding
  (``class_embed_type="projection"``). It is trained on the ground-truth embeddings of a frozen ``embedder``
  part (``{type: vistok, path: checkpoints/teacher-shapes}``: its ``embed(images)``, the stand-in for CLIP-ViT-H;
  read lazily, never in the weights; the config records its path and fingerprint): the image is noised with a
  ``DDPMScheduler`` at a uniform timestep and the UNet predicts the noise (eps MSE), or with ``prediction_type:
  v_prediction`` (SD 2.x's, and SD-2.1-unCLIP's) v = sqrt(ab) eps - sqrt(1 - ab) x0, which needs no division by
  sqrt(ab) ~ 0 at t ~ T and draws shapes after far fewer steps. The embedding (after a LayerNorm without gains,
  so its scale does not matter) is replaced by a learnt null embedding with probability ``cond_dropout`` for
  classifier-free guidance (``vistok.nn.guidance``: uncond + s (cond - uncond), s = 1 the conditional model
  alone). Sampling: DDIM (eta 0, trailing timesteps, x0 clipped) or DPM-Solver++ (2nd order, x0 clipped).
- **paper scale** (``unclip``: a ``stable_unclip`` part, a local copy of stabilityai/stable-diffusion-2-1-unclip):
  the frozen StableUnCLIPImg2ImgPipeline decodes the embedding (``image_embeds``; CLIP-ViT-H, 1024-d) as SEED's
  inference does (noise_level 0, 20 steps, guidance 10, an empty prompt). Nothing is trained (``forward``
  refuses) and nothing is saved but the config (the part's path + fingerprint).

In a ``seed`` pipeline (``vistok.pipelines.seed``) the decoder turns the tokenizer's codes into images:
``decoder.generate(tokenizer.generation_embedding(codes))``; ``check_fits`` refuses a tokenizer whose ``gen_dim``
is not this decoder's ``embed_dim``.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.modeling import VistokModel
from vistok.nn.guidance import Guidance, drop_condition
from vistok.parts.base import LazyPart, as_spec, build_part
from vistok.registry import register_model
from vistok.schema import NonNegFloat, NonNegInt, NonNegInts, OneOf, PartSpec, PosInt, PosInts, Prob

SAMPLERS = ("ddim", "dpmsolver")
PREDICTIONS = ("epsilon", "v_prediction")  # what the UNet outputs: the noise, or v = sqrt(ab) eps - sqrt(1-ab) x0


@dataclasses.dataclass
class DecoderSamplingOptions:
    """What decoding an embedding takes (``sample.py`` builds its flags from this); 0 keeps the decoder's own
    default (its config's ``sample_steps`` / ``guidance_scale``: 20 and 10 in SEED's inference; 3 in the
    ShapesWorld config). ``decode_options`` maps them to ``generate``'s keywords."""
    steps: NonNegInt = dataclasses.field(default=0, metadata={
        "help": "diffusion sampling steps (0: the decoder's sample_steps)"})
    guidance_scale: NonNegFloat = dataclasses.field(default=0.0, metadata={
        "help": "classifier-free guidance of the decoder (1: none; 0: the decoder's guidance_scale)"})


@register_model("unclip_decoder")
class UnCLIPDecoder(VistokModel):
    kind = "decoder"
    drive_priority = 1.5  # above a tokenizer (its codes <-> images pipeline), below a generator
    SamplingOptions = DecoderSamplingOptions

    @classmethod
    def default_pipeline(cls, config: dict) -> str:
        return "seed"

    @staticmethod
    def decode_options(steps: int = 0, guidance_scale: float = 0.0) -> dict:
        """SamplingOptions (0: the decoder's default) -> ``generate``'s keywords (None: the decoder's default)."""
        return {"steps": steps or None, "guidance_scale": guidance_scale or None}

    def __init__(
        self,
        embed_dim: PosInt = 64,
        image_size: PosInt = 32,
        in_channels: PosInt = 3,
        patch: PosInt = 2,
        embedder: PartSpec = None,
        unclip: PartSpec = None,
        block_out_channels: PosInts = (32, 64, 64),
        layers_per_block: PosInt = 1,
        attn_levels: NonNegInts = (2,),
        attention_heads: PosInt = 4,
        norm_num_groups: PosInt = 8,
        cross_attention_dim: PosInt = 64,
        cond_tokens: PosInt = 4,
        cond_dropout: Prob = 0.1,
        num_train_timesteps: PosInt = 1000,
        beta_schedule: OneOf("squaredcos_cap_v2", "linear", "scaled_linear") = "squaredcos_cap_v2",
        prediction_type: OneOf(*PREDICTIONS) = "epsilon",
        sampler: OneOf(*SAMPLERS) = "ddim",
        sample_steps: PosInt = 20,
        guidance_scale: NonNegFloat = 10.0,
        noise_level: NonNegInt = 0,
        eval_steps: NonNegInt = 10,
    ):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"unclip_decoder: sampler='{sampler}'; expected one of {SAMPLERS}")
        self.embed_dim, self.image_size, self.in_channels, self.patch = embed_dim, image_size, in_channels, patch
        self.cond_dropout, self.sampler, self.noise_level = cond_dropout, sampler, noise_level
        self.sample_steps, self.default_guidance, self.eval_steps = sample_steps, guidance_scale, eval_steps
        self.frozen_unclip = bool(as_spec(unclip))
        if isinstance(as_spec(embedder), dict):
            LazyPart(self, embedder, "embedder")
        if self.frozen_unclip:
            self.unclip = build_part(unclip, "unclip")
            if self.unclip.embed_dim != embed_dim:
                raise ValueError(f"unclip_decoder: model.unclip ('{self.unclip.path}') decodes "
                                 f"{self.unclip.embed_dim}-d image embeddings; model.embed_dim is {embed_dim}")
            return
        self._build_unet(block_out_channels, layers_per_block, attn_levels, attention_heads, norm_num_groups,
                         cross_attention_dim, cond_tokens)
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                             prediction_type=prediction_type, clip_sample=True)

    def _build_unet(self, channels, layers, attn_levels, heads, groups, cross_dim, cond_tokens) -> None:
        from vistok.nn.unet import small_unet

        factor = self.patch * 2 ** (len(channels) - 1)
        if self.image_size % factor:
            raise ValueError(f"unclip_decoder: image_size {self.image_size} is not divisible by patch x the UNet's "
                             f"downsampling = {factor} (patch {self.patch}, block_out_channels {list(channels)})")
        width = self.in_channels * self.patch ** 2
        self.unet = small_unet("unclip_decoder", self.image_size // self.patch, width, width, channels, layers,
                               attn_levels, heads, groups, cross_dim, class_embed_type="projection",
                               projection_class_embeddings_input_dim=self.embed_dim)
        self.cond_norm = nn.LayerNorm(self.embed_dim, elementwise_affine=False)
        self.null_embedding = nn.Parameter(torch.zeros(self.embed_dim))  # after cond_norm: the dropped condition
        self.to_tokens = nn.Linear(self.embed_dim, cond_tokens * cross_dim)
        self.cond_tokens, self.cross_dim = cond_tokens, cross_dim

    # ---- the embeddings --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """B, embed_dim float32 target embeddings of images in [-1, 1]: the embedder part's ``embed`` (or, at
        paper scale without one, the unCLIP pipeline's own CLIP image encoder)."""
        lazy = self.__dict__.get("_lazy_parts", {}).get("embedder")
        if lazy is not None:
            e = lazy.get(images.device).embed(images).float()
        elif self.frozen_unclip:
            e = self.unclip.image_embeds(images).float()
        else:
            raise ValueError("unclip_decoder: training and evaluating on images need model.embedder (a frozen part "
                             "whose embed(images) gives the conditioning, e.g. {type: vistok, path: "
                             "checkpoints/teacher-shapes})")
        if e.shape[-1] != self.embed_dim:
            raise ValueError(f"unclip_decoder: model.embedder ('{lazy.spec_in['path'] if lazy else 'unclip'}') gives "
                             f"{e.shape[-1]}-d embeddings; model.embed_dim is {self.embed_dim}")
        return e

    def condition(self, embeds: torch.Tensor, drop: float = 0.0) -> torch.Tensor:
        """Raw embeddings B,E -> the UNet's condition: normalised, some replaced by the null embedding."""
        if embeds.dim() != 2 or embeds.shape[1] != self.embed_dim:
            raise ValueError(f"unclip_decoder: embeddings must be B x {self.embed_dim}, got {tuple(embeds.shape)}")
        e = self.cond_norm(embeds.to(self.null_embedding.device).float())
        return drop_condition(e, self.null_embedding.to(e.dtype), drop)

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction (eps, or v: ``prediction_type``) at noisy images ``x`` (B,C,H,W), timesteps ``t``
        (B,) and conditions ``cond`` (B,E: from ``condition``, or the null embedding)."""
        tokens = self.to_tokens(cond).view(len(cond), self.cond_tokens, self.cross_dim)
        if self.patch == 1:
            return self.unet(x, t, encoder_hidden_states=tokens, class_labels=cond).sample
        x = F.pixel_unshuffle(x, self.patch)  # p x p pixels -> channels: the UNet runs at 1/p the resolution
        out = self.unet(x, t, encoder_hidden_states=tokens, class_labels=cond).sample
        return F.pixel_shuffle(out, self.patch)

    def null_condition(self, n: int) -> torch.Tensor:
        return self.null_embedding[None].expand(n, -1)

    # ---- training ----------------------------------------------------------------------------------
    def _require_trainable(self, what: str) -> None:
        if self.frozen_unclip:
            raise ValueError(f"unclip_decoder: {what}: this decoder is the SD-2.1-unCLIP pipeline (model.unclip), used "
                             f"frozen as SEED does; there is nothing to train. Train the small decoder instead "
                             f"(configs/seed/decoder_shapes.yaml: no model.unclip)")

    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        self._require_trainable("training")
        x = batch["image"]
        with torch.no_grad():
            emb = self.embed(x)
        cond = self.condition(emb, self.cond_dropout if self.training else 0.0)
        noise = torch.randn_like(x)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(x),), device=x.device)
        noisy = self.noise_scheduler.add_noise(x, noise, t)
        v = self.noise_scheduler.config.prediction_type == "v_prediction"
        target = self.noise_scheduler.get_velocity(x, noise, t) if v else noise
        loss = F.mse_loss(self.predict(noisy, t, cond).float(), target.float())
        return {"loss": loss, ("v_mse" if v else "eps_mse"): loss.detach()}

    def eps_of(self, pred: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise a prediction implies (v -> eps = sqrt(ab) v + sqrt(1 - ab) x_t): one measure for both."""
        if self.noise_scheduler.config.prediction_type == "epsilon":
            return pred
        ab = self.noise_scheduler.alphas_cumprod.to(pred.device)[t].view(-1, *[1] * (pred.dim() - 1)).float()
        return ab.sqrt() * pred + (1 - ab).sqrt() * noisy

    # ---- sampling ----------------------------------------------------------------------------------
    def _scheduler(self, sampler: str):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        cfg = self.noise_scheduler.config
        if sampler == "ddim":
            return DDIMScheduler.from_config(cfg, timestep_spacing="trailing", set_alpha_to_one=True)  # ends on x0
        if sampler == "dpmsolver":
            # x0 clipped to [-1, 1] at every step (DDIM's clip_sample): without it the eps -> x0 conversion at
            # t ~ T (alpha ~ 1e-4 on the cosine schedule) turns small errors into noise
            return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2,
                                                           timestep_spacing="trailing", thresholding=True,
                                                           sample_max_value=1.0, dynamic_thresholding_ratio=1.0)
        raise ValueError(f"unclip_decoder: sampler='{sampler}'; expected one of {SAMPLERS}")

    @torch.no_grad()
    def generate(self, embeds: torch.Tensor, steps: int | None = None, guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, sampler: str | None = None) -> torch.Tensor:
        """B,C,H,W images in [-1, 1] decoded from B embeddings (B, embed_dim); ``steps`` / ``guidance_scale`` None
        take the config's (``sample_steps``, ``guidance_scale``); guidance 1 is the conditional model alone, 0 the
        unconditional one. The same generator state, the same images."""
        steps = int(steps or self.sample_steps)
        scale = float(self.default_guidance if guidance_scale is None else guidance_scale)
        if self.frozen_unclip:
            size = self.image_size
            return self.unclip.generate(embeds, num_inference_steps=steps, guidance_scale=scale, generator=generator,
                                        height=size, width=size, noise_level=self.noise_level).clamp(-1, 1)
        device = self.device
        cond = self.condition(embeds)
        shape = (len(cond), self.in_channels, self.image_size, self.image_size)
        x = torch.randn(shape, generator=generator, device=generator.device if generator is not None else device)
        x = x.to(device)
        sched = self._scheduler(sampler or self.sampler)
        sched.set_timesteps(steps, device=device)
        guide = Guidance(scale=scale, steps=len(sched.timesteps))
        cond_in = guide.double(cond, self.null_condition(len(cond)))
        for i, t in enumerate(sched.timesteps):
            x_in = guide.double(sched.scale_model_input(x, t))
            ts = t.expand(len(x_in)).to(device)
            pred = guide(self.predict(x_in, ts, cond_in).float(), i)
            x = sched.step(pred, t, x).prev_sample
        return x.clamp(-1, 1)

    # ---- held-out metrics and pictures -------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """On held-out images: the eps MSE at fixed timesteps (spread evenly over [0, T)) and fixed noise, with the
        true embedding (``eps_mse``) and the null one (``eps_mse_null``: what the embedding is worth); on the
        first batch, images generated from its embeddings (``eval_steps`` steps, the config's guidance) and the
        embedder's cosine between each generated image and its conditioning embedding (``embed_cosine``), beside
        the cosine to another image's embedding (``embed_cosine_other``: the level of a wrong picture)."""
        sums, n, out = {"eps_mse": 0.0, "eps_mse_null": 0.0}, 0, {}
        for i, batch in enumerate(batches):
            x = batch["image"]
            e = self.embed(x)
            if self.frozen_unclip:
                if i == 0:
                    out.update(self._embed_cosines(e))
                continue
            b, total = len(x), self.noise_scheduler.config.num_train_timesteps
            t = ((torch.arange(b, device=x.device) * 2 + 1) * total // (2 * b)).clamp(max=total - 1)
            g = torch.Generator(device=x.device).manual_seed(i)
            noise = torch.randn(x.shape, generator=g, device=x.device)
            noisy = self.noise_scheduler.add_noise(x, noise, t)
            for key, cond in (("eps_mse", self.condition(e)), ("eps_mse_null", self.null_condition(b))):
                eps = self.eps_of(self.predict(noisy, t, cond).float(), noisy, t)
                sums[key] += float(F.mse_loss(eps, noise, reduction="sum"))
            n += noise.numel()
            if i == 0 and self.eval_steps:
                out.update(self._embed_cosines(e))
        if n:
            out.update({k: v / n for k, v in sums.items()})
        return out

    def _embed_cosines(self, e: torch.Tensor) -> dict:
        steps = self.eval_steps or self.sample_steps
        gen = self.generate(e, steps=steps, generator=torch.Generator(device=e.device).manual_seed(0))
        got = F.normalize(self.embed(gen), dim=-1)
        want = F.normalize(e, dim=-1)
        out = {"embed_cosine": float((got * want).sum(-1).mean())}
        if len(e) > 1:
            out["embed_cosine_other"] = float((got * want.roll(1, 0)).sum(-1).mean())
        return out

    @torch.no_grad()
    def visualize(self, batch: dict, n: int = 8, **_) -> torch.Tensor:
        """Held-out images (top row) over the images generated from their embeddings (bottom row)."""
        x = batch["image"][:n]
        gen = self.generate(self.embed(x), steps=self.eval_steps or self.sample_steps,
                            generator=torch.Generator(device=x.device).manual_seed(0))
        return torch.cat([x, gen.to(x.dtype)])

    # ---- in a pipeline ----------------------------------------------------------------------------------
    def check_fits(self, components: dict) -> None:
        """The tokenizer must predict embeddings of this decoder's width (SEED: 1024, CLIP-ViT-H's)."""
        tok = components.get("tokenizer")
        if tok is None:
            return
        width = getattr(tok, "gen_dim", None)
        if width is None or not hasattr(tok, "generation_embedding"):
            raise ValueError(f"a '{tok.model_type}' tokenizer has no generation embedding (gen_dim, "
                             f"generation_embedding(codes)); the '{self.model_type}' decoder decodes SEED-style "
                             f"generation embeddings")
        if int(width) != self.embed_dim:
            raise ValueError(f"decoder embed_dim {self.embed_dim} != tokenizer gen_dim {width}: the "
                             f"'{self.model_type}' decoder is conditioned on {self.embed_dim}-d embeddings and the "
                             f"'{tok.model_type}' tokenizer predicts {width}-d ones")
