"""Releases from training runs: ``release(out, {name: run})`` turns runs (``runs/<name>``: config.yaml and
checkpoints; EMA weights when the run kept them) or components of earlier releases into one pipeline folder
(see ``vistok.pipelines.base``); ``model_from_run`` / ``load_stage`` / ``init_from`` read runs and releases.
``Pipeline.from_pretrained`` (re-exported here) loads a release as the class its ``pipeline_type`` names."""
from __future__ import annotations

import json
import os

from omegaconf import OmegaConf

from vistok import __version__
from vistok.config import build, validate
from vistok.modeling import VistokModel, count_parameters, load_weights
from vistok.io import guard_output_dir
from vistok.pipelines.base import PIPELINE_NAME, Pipeline, not_a_release  # noqa: F401 (the public names)
from vistok.training import checkpoint as ckpt



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
        found = [m for m in pipe.components.values() if getattr(m, "kind", None) == kind]
        if not found:
            raise ValueError(f"'{path}': this pipeline has no {kind} component (components: {list(pipe.components)})")
        return found[0]
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


def release(out: str, stages: dict | None = None, tokenizer: str | None = None, generator: str | None = None,
            sr: str | None = None, overwrite: bool = False, pipeline_type: str | None = None) -> Pipeline:
    """One release folder from ``stages`` ({component name: a training run, or a release holding a component of
    that name to reuse as is}); ``tokenizer=`` / ``generator=`` / ``sr=`` are shorthands for those names. The
    pipeline type is ``pipeline_type`` or the one the components' driver declares; it checks they fit."""
    stages = {**{k: v for k, v in (("tokenizer", tokenizer), ("generator", generator), ("sr", sr)) if v}, **(stages or {})}
    if not stages:
        raise ValueError("release: give at least one component (--stage NAME=RUN, or --tokenizer / --generator / --sr RUN)")
    guard_output_dir(out, "--out", overwrite)  # before any work: nothing of the user's may be replaced
    models, cards, sources, datas = {}, [], {}, {}
    for name, run in stages.items():
        if os.path.isfile(os.path.join(run, PIPELINE_NAME)):
            # an existing release (e.g. a tokenizer whose latent scale was measured after training, or the
            # generator of a released pipeline that gets an sr stage): reuse that component as is
            prev = Pipeline.from_pretrained(run)
            if name not in prev.components:
                raise ValueError(f"--stage {name}={run}: that release has no '{name}' component "
                                 f"(components: {list(prev.components)})")
            models[name] = prev.components[name]
            datas[name] = prev.data
            sources[name] = {"release": os.path.abspath(run), **(prev.info.get("sources", {}).get(name) or {})}
            cards.append(f"## {name}: `{models[name].model_type}` from the release `{run}`\n")
            continue
        model, cfg, info = model_from_run(run)
        models[name] = model
        datas[name] = OmegaConf.to_container(cfg.data)
        sources[name] = {"run": os.path.abspath(run), "checkpoint": os.path.basename(info["checkpoint"]),
                         "step": info["step"], "ema": info["ema"]}
        cards.append(_stage_card(name, model, cfg, info))
    from vistok.pipelines.base import default_type, pipeline_class

    klass = pipeline_class(pipeline_type or default_type(models))
    data_from = klass.data_from or next(iter(klass.requires), next(iter(models)))
    pipe = klass(models, data=datas.get(data_from))
    pipe.check("release")  # the components fit each other, before anything is written
    card = f"# vistok pipeline `{os.path.basename(out.rstrip('/'))}` ({pipe.pipeline_type})\n\nvistok {__version__}. " \
           f"Load with `vistok.Pipeline.from_pretrained(\"{out}\")`.\n\n" + "\n".join(cards)
    pipe.save_pretrained(out, card=card, sources=sources, overwrite=overwrite)
    return pipe


def check_compatible(tokenizer, generator) -> None:
    """A generator must fit its tokenizer (the generator's own ``check_fits``)."""
    if tokenizer is not None and generator is not None and hasattr(generator, "check_fits"):
        generator.check_fits({"tokenizer": tokenizer})


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
