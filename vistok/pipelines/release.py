"""Releases from training runs: ``release(out, {name: run})`` turns runs or components of earlier releases into
one pipeline folder (see ``vistok.pipelines.base``)."""
from __future__ import annotations

import os

from omegaconf import OmegaConf

from vistok.version import __version__
from vistok.io import guard_output_dir
from vistok.loading import model_from_run
from vistok.modeling import count_parameters
from vistok.release_format import PIPELINE_NAME, default_type
from vistok.pipelines.base import Pipeline, pipeline_class


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
    klass = pipeline_class(pipeline_type or default_type(models))
    data_from = klass.data_from or next(iter(klass.requires), next(iter(models)))
    pipe = klass(models, data=datas.get(data_from))
    pipe.check("release")  # the components fit each other, before anything is written
    card = f"# vistok pipeline `{os.path.basename(out.rstrip('/'))}` ({pipe.pipeline_type})\n\nvistok {__version__}. " \
           f"Load with `vistok.Pipeline.from_pretrained(\"{out}\")`.\n\n" + "\n".join(cards)
    pipe.save_pretrained(out, card=card, sources=sources, overwrite=overwrite)
    return pipe


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
