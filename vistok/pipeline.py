"""Release folders: a pipeline of stages (tokenizer [+ generator] [+ sr]) loaded and saved as a whole.

    checkpoints/NAME/pipeline.json + tokenizer/ [generator/] [sr/] + README.md (model card)

``release(...)`` turns training runs (``runs/<name>`` with config.yaml and checkpoints) into such a
folder, taking the EMA weights when the run kept them. ``Pipeline.from_pretrained`` loads it back.
"""
from __future__ import annotations

import json
import os

import torch
from omegaconf import OmegaConf

from vistok import __version__
from vistok.config import build, validate
from vistok.modeling import VistokModel, count_parameters, load_weights
from vistok.io import atomic_write_json, atomic_write_text, guard_output_dir, is_run_dir, write_release_dir
from vistok.training import checkpoint as ckpt

PIPELINE_NAME = "pipeline.json"
STAGES = ("tokenizer", "generator", "sr")  # a stage's name is also the ``kind`` its model class declares


class Pipeline:
    def __init__(self, tokenizer: VistokModel | None = None, generator: VistokModel | None = None, sr: VistokModel | None = None,
                 data: dict | None = None, info: dict | None = None):
        self.tokenizer, self.generator, self.sr = tokenizer, generator, sr
        self.data = data  # the data config the tokenizer was trained on (defines the held-out split)
        self.info = info or {}

    @property
    def stages(self) -> dict:
        return {name: m for name, m in (("tokenizer", self.tokenizer), ("generator", self.generator), ("sr", self.sr))
                if m is not None}

    @classmethod
    def from_pretrained(cls, path: str) -> "Pipeline":
        meta_path = os.path.join(path, PIPELINE_NAME)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(not_a_release(path))
        with open(meta_path, encoding="utf-8") as f:
            try:
                meta = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{meta_path}: not valid JSON ({e})") from e
        stages = meta.get("stages")
        if not isinstance(stages, dict) or not ("tokenizer" in stages or "sr" in stages):
            raise ValueError(f"{meta_path}: expected 'stages' with a 'tokenizer' (or, alone, an 'sr') entry")
        loaded = {}
        for name, sub in stages.items():
            if name not in STAGES:
                raise ValueError(f"{meta_path}: unknown stage '{name}'; expected one of {STAGES}")
            model = VistokModel.from_pretrained(os.path.join(path, sub))
            if getattr(model, "kind", None) != name:
                raise ValueError(f"{os.path.join(path, sub)}: a '{model.model_type}' model ({getattr(model, 'kind', '?')}) "
                                 f"cannot be the '{name}' stage")
            loaded[name] = model
        check_compatible(loaded.get("tokenizer"), loaded.get("generator"))
        return cls(**loaded, data=meta.get("data"), info=meta)

    def save_pretrained(self, path: str, card: str | None = None, sources: dict | None = None,
                        overwrite: bool = False) -> None:
        """Write the release beside ``path`` and swap it in atomically. Refused (before anything is written) when
        ``path`` holds anything but a vistok release, and for an existing release unless ``overwrite``."""
        def write(tmp):
            for name, model in self.stages.items():
                model.save_pretrained(os.path.join(tmp, name))
            meta = {"format": "vistok-pipeline", "vistok_version": __version__,
                    "stages": {name: name for name in self.stages}, "data": self.data, "sources": sources or {}}
            atomic_write_json(os.path.join(tmp, PIPELINE_NAME), meta)
            if card:
                atomic_write_text(os.path.join(tmp, "README.md"), card)

        write_release_dir(path, write, overwrite)

    def compile(self, mode: str | None = None) -> "Pipeline":
        """torch.compile the parts sampling spends its time in, in place (weights and names unchanged): the
        generator's transformer blocks (dynamic shapes: the prefill and the one-token/one-scale steps share a
        graph) and the tokenizer's decoder. Worth it on GPUs for many images; on a CPU the compile itself
        (tens of seconds) usually costs more than it saves."""
        if self.generator is not None:
            blocks = getattr(self.generator, "blocks", None)
            for blk in blocks if blocks is not None else []:
                blk.compile(mode=mode, dynamic=True)
        decoder = getattr(self.tokenizer, "decoder", None)
        if decoder is not None:
            decoder.compile(mode=mode)
        return self

    def to(self, device) -> "Pipeline":
        for m in self.stages.values():
            m.to(device)
        return self

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.reconstruct(images)[0].clamp(-1, 1)

    @torch.no_grad()
    def generate_codes(self, class_labels=None, prompts=None, seed: int | None = None, **sampling) -> torch.Tensor:
        if self.generator is None:
            raise ValueError("this pipeline has no generator stage (released with --tokenizer only); "
                             "use .reconstruct(images), or release it with --generator RUN")
        device = next(self.generator.parameters()).device
        g = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        if prompts is not None:
            return self.generator.sample(prompts=list(prompts), generator=g, **sampling)
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
        return self.generator.sample(labels, generator=g, **sampling)

    @torch.no_grad()
    def upscale(self, images: torch.Tensor) -> torch.Tensor:
        """The sr stage on images B,C,H,W in [-1, 1] -> B,C,sH,sW in [-1, 1]. The SR model works in [0, 1]
        (BasicSR's range); grey images go through an RGB model as three equal channels and come back grey."""
        if self.sr is None:
            raise ValueError("this pipeline has no sr stage (release one with --sr RUN)")
        x = ((images + 1) / 2).clamp(0, 1)
        c, want = x.shape[1], self.sr.shallow.in_channels if hasattr(self.sr, "shallow") else x.shape[1]
        if c == 1 and want == 3:
            x = x.expand(-1, 3, -1, -1)
        out = self.sr.upscale(x.to(next(self.sr.parameters()).device)).clamp(0, 1)
        if c == 1 and want == 3:
            out = out.mean(1, keepdim=True)
        return out * 2 - 1

    @torch.no_grad()
    def __call__(self, class_labels=None, prompts=None, seed: int | None = None, **sampling) -> torch.Tensor:
        """Class labels (or prompts, for text-conditional generators) -> images B,C,H,W in [-1, 1].
        ``sampling``: cfg_scale, cfg_schedule, temperature, top_k, top_p, use_cache. Same seed, same images."""
        codes = self.generate_codes(class_labels, prompts, seed=seed, **sampling)
        return self.tokenizer.decode(codes).clamp(-1, 1)


def not_a_release(path: str) -> str:
    """Why ``path`` cannot be loaded as a release, and what to do instead."""
    if not os.path.exists(path):
        return f"'{path}' does not exist (expected a vistok release folder, e.g. checkpoints/NAME)"
    if not os.path.isdir(path):
        return f"'{path}' is a file, not a folder (expected a vistok release folder, e.g. checkpoints/NAME)"
    if is_run_dir(path):
        return (f"'{path}' is a training run, not a release; release it first: `python release.py --tokenizer "
                f"{path} --out checkpoints/NAME`, then pass checkpoints/NAME")
    return f"'{path}' is not a vistok pipeline: {PIPELINE_NAME} is missing"


def model_from_run(run_dir: str, checkpoint: str | None = None, use_ema: bool = True):
    """Build a run's model and load its newest complete checkpoint (EMA parameters when kept).

    Returns (model, cfg, info) with info = {"checkpoint", "step", "ema", "summary"}.
    """
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"'{run_dir}' does not exist" if not os.path.exists(run_dir) else
                                f"'{run_dir}' is not a training run: config.yaml is missing")
    cfg = validate(OmegaConf.load(cfg_path), source=cfg_path)
    path = checkpoint or ckpt.resolve_resume("latest", os.path.join(run_dir, "checkpoints"))
    if not path:
        raise FileNotFoundError(f"'{run_dir}' has no complete checkpoint under checkpoints/")
    model = build("model", cfg.model)
    load_weights(model, os.path.join(path, "model.safetensors"))
    from vistok.training.ema import ema_state_dict

    ema_state = ema_state_dict(path, model) if use_ema else None
    if ema_state is not None:
        model.load_state_dict(ema_state, strict=True)
    summary_path = os.path.join(run_dir, "train_summary.json")
    summary = json.load(open(summary_path)) if os.path.isfile(summary_path) else {}
    info = {"checkpoint": path, "step": ckpt.read_state(path)["step"], "ema": ema_state is not None, "summary": summary}
    return model.eval(), cfg, info


def load_stage(path: str, kind: str):
    """A model of ``kind`` from a pipeline folder (its stage of that kind), a training run (newest checkpoint,
    EMA when kept) or a saved model folder."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"'{path}' {'does not exist' if not os.path.exists(path) else 'is not a folder'} "
                                f"(expected a release, model or training-run folder)")
    if os.path.isfile(os.path.join(path, PIPELINE_NAME)):
        pipe = Pipeline.from_pretrained(path)
        if kind not in pipe.stages:
            raise ValueError(f"'{path}': this pipeline has no {kind} stage (stages: {list(pipe.stages)})")
        return pipe.stages[kind]
    if os.path.isfile(os.path.join(path, "config.yaml")):
        model = model_from_run(path)[0]
    else:
        model = VistokModel.from_pretrained(path)
    if getattr(model, "kind", None) != kind:
        raise ValueError(f"'{path}': a '{model.model_type}' model ({getattr(model, 'kind', '?')}) is not a {kind} model")
    return model


def init_from(model, path: str, skip: list[str] = ()) -> list[str]:
    """Initialise ``model`` from the weights of ``path`` (see ``load_stage``): every key must match in name and
    shape except those under a ``skip`` prefix (e.g. the upsampler when fine-tuning x3/x4 from x2), which keep
    their fresh values. Returns the skipped keys."""
    src = load_stage(path, getattr(model, "kind", "")).state_dict()
    own = model.state_dict()
    skipped = sorted(k for k in set(own) | set(src) if any(k.startswith(p) for p in skip))
    missing = sorted(k for k in set(own) - set(src) if k not in skipped)
    extra = sorted(k for k in set(src) - set(own) if k not in skipped)
    bad = [f"{k}: {tuple(src[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in src and k not in skipped
           and src[k].shape != own[k].shape]
    if missing or extra or bad:
        raise ValueError(f"train.init_from '{path}': weights do not fit {type(model).__name__} (train.init_skip "
                         f"{list(skip)}): missing {missing[:5]}, unexpected {extra[:5]}, shape mismatches {bad[:5]}")
    # every key is accounted for above; the skipped ones keep the model's own fresh values
    model.load_state_dict({k: (own[k] if k in skipped else src[k]) for k in own}, strict=True)
    return skipped


def release(out: str, tokenizer: str | None = None, generator: str | None = None, sr: str | None = None,
            overwrite: bool = False) -> Pipeline:
    if not tokenizer and not sr:
        raise ValueError("release: give a tokenizer (and optionally a generator and an sr stage), or an sr stage alone")
    if generator and not tokenizer:
        raise ValueError("release: a generator needs its tokenizer (--tokenizer)")
    guard_output_dir(out, "--out", overwrite)  # before any work: nothing of the user's may be replaced
    runs = {"tokenizer": tokenizer, "generator": generator, "sr": sr}
    models, cards, sources, data = {}, [], {}, None
    for name, run in runs.items():
        if not run:
            continue
        if os.path.isfile(os.path.join(run, PIPELINE_NAME)):
            # an existing release (e.g. a tokenizer whose latent scale was measured after training, or the
            # generator of a released pipeline that gets an sr stage): reuse that stage as is
            prev = Pipeline.from_pretrained(run)
            if name not in prev.stages:
                raise ValueError(f"--{name} {run}: that release has no {name} stage (stages: {list(prev.stages)})")
            models[name] = prev.stages[name]
            if name == "tokenizer":
                data = prev.data
            sources[name] = {"release": os.path.abspath(run), **(prev.info.get("sources", {}).get(name) or {})}
            cards.append(f"## {name}: `{models[name].model_type}` from the release `{run}`\n")
            continue
        model, cfg, info = model_from_run(run)
        if getattr(model, "kind", None) != name:
            raise ValueError(f"--{name} {run}: its model '{model.model_type}' is a {getattr(model, 'kind', '?')}, not a {name}")
        models[name] = model
        if name == "tokenizer":
            data = OmegaConf.to_container(cfg.data)
        sources[name] = {"run": os.path.abspath(run), "checkpoint": os.path.basename(info["checkpoint"]),
                         "step": info["step"], "ema": info["ema"]}
        cards.append(_stage_card(name, model, cfg, info))
    check_compatible(models.get("tokenizer"), models.get("generator"))
    pipe = Pipeline(**models, data=data)
    card = f"# vistok pipeline `{os.path.basename(out.rstrip('/'))}`\n\nvistok {__version__}. Load with " \
           f"`vistok.Pipeline.from_pretrained(\"{out}\")`.\n\n" + "\n".join(cards)
    pipe.save_pretrained(out, card=card, sources=sources, overwrite=overwrite)
    return pipe


def check_compatible(tokenizer, generator) -> None:
    """A generator must speak its tokenizer's vocabulary on its token grid."""
    if tokenizer is None or generator is None:
        return
    if getattr(generator, "continuous", False) or getattr(tokenizer, "codebook_size", 0) is None:
        lat = tuple(getattr(tokenizer, "latent_shape", ()))
        if not getattr(generator, "continuous", False) or tuple(getattr(generator, "latent_shape", ())) != lat:
            raise ValueError(f"a continuous tokenizer (latents {lat}) needs a continuous generator with the same "
                             f"latent_shape; got '{generator.model_type}' with "
                             f"{tuple(getattr(generator, 'latent_shape', ())) or 'discrete codes'}")
        return
    if generator.vocab_size != tokenizer.codebook_size:
        raise ValueError(f"generator vocab_size {generator.vocab_size} != tokenizer codebook_size {tokenizer.codebook_size}")
    tok_scales = list(getattr(tokenizer, "scales", []) or [])
    if tok_scales or generator.scales:
        if tok_scales != list(generator.scales):
            raise ValueError(f"generator scales {list(generator.scales)} != tokenizer scales {tok_scales} "
                             f"(a multi-scale tokenizer needs a next-scale generator with the same scales)")
    elif tuple(generator.token_shape) != tuple(tokenizer.token_shape):
        raise ValueError(f"generator token_shape {tuple(generator.token_shape)} != tokenizer token_shape {tuple(tokenizer.token_shape)}")


def _stage_card(name: str, model, cfg, info: dict) -> str:
    metrics = {k: v for k, v in info["summary"].get("metrics", {}).items()}
    lines = [f"## {name}: `{model.model_type}` ({count_parameters(model) / 1e6:.2f}M parameters)", "",
             f"- trained {info['step']} steps on `{cfg.data.type}` ({dict(cfg.data)}); weights: "
             f"{'EMA (decay ' + str(cfg.train.ema_decay) + ')' if info['ema'] else 'live (no EMA)'}",
             f"- checkpoint: `{os.path.basename(info['checkpoint'])}`"]
    if metrics:
        lines += ["- metrics at the end of training, on the first "
                  f"{cfg.train.eval_batches} held-out batches (PSNR: mean of per-image PSNR on [0, 1]; SSIM: 11x11 "
                  "Gaussian window, sigma 1.5; usage: fraction of codes used); full held-out figures: `evaluate.py recon`:", ""]
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
    lines += ["", "<details><summary>training config</summary>", "", "```yaml", OmegaConf.to_yaml(cfg), "```", "</details>", ""]
    return "\n".join(lines)
