"""Models from the folders users hand us: a training run (``runs/<name>``: config.yaml and checkpoints; EMA
weights when the run kept them), a release (a pipeline folder: the component of the kind asked for) or a saved
model folder. ``init_from`` starts a model from any of them."""
from __future__ import annotations

import json
import os

from omegaconf import OmegaConf

from vistok import checkpoints as ckpt
from vistok.config import build, validate
from vistok.modeling import VistokModel, load_weights
from vistok.release_format import PIPELINE_NAME, component_of_kind


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
    ema_state = ckpt.ema_state_dict(path, model) if use_ema else None
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
        return component_of_kind(path, kind)[0]
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


def init_module(model, name: str, path: str) -> list[str]:
    """Fill the submodule ``name`` of ``model`` from the weights of ``path`` (a release's component of the
    model's kind, a run or a model folder): every key of the submodule must be there with its shape; the
    source's other keys (a vqgan's decoder for Layton's VQ encoder) are returned, unused."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"train.init_modules: '{name}' is not a submodule of {type(model).__name__} "
                         f"(its children: {[n for n, _ in model.named_children()]})") from None
    src = load_stage(path, getattr(model, "kind", "")).state_dict()
    own = module.state_dict()
    missing = sorted(set(own) - set(src))
    bad = [f"{k}: {tuple(src[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in src and src[k].shape != own[k].shape]
    if missing or bad:
        raise ValueError(f"train.init_modules.{name} '{path}': weights do not fit {type(module).__name__}: missing "
                         f"{missing[:5]}, shape mismatches {bad[:5]}")
    module.load_state_dict({k: src[k] for k in own}, strict=True)
    return sorted({k.split(".")[0] for k in set(src) - set(own)})
