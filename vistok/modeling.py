"""Base class for every released model: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

A saved model is a folder with ``config.json`` (the constructor arguments plus a required
``model_type``) and ``model.safetensors``. Loading checks ``model_type``, rebuilds the class from the
JSON arguments and loads the weights strictly: a missing or unexpected key, or a shape that does not
match the config, is an error naming the key. Nothing is ever unpickled.

Pretrained parts (``vistok.parts``: a CLIP tower, a T5 encoder, an SD VAE) are named in the config by their
folder; a frozen part's weights stay in that folder (the config records its path and fingerprint), a fine-tuned
part's weights are saved with the model and its folder's small config files under ``parts/<name>/``.
``from_pretrained(..., parts={name: new_path})`` points frozen parts at another copy of their folder.
"""
from __future__ import annotations

import contextvars
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_FORMAT = 1  # config.json's format number; files without one (vistok 0.1.0) are format 1
PARTS_DIR = "parts"  # a saved model's fine-tuned parts' config files: parts/<name>/


@dataclass(frozen=True)
class SavedModelLoad:
    """Set while a saved model is being built (``LOADING``): parts read it to find their folders."""
    folder: str
    parts: dict = field(default_factory=dict)  # {part name: new folder}


LOADING: contextvars.ContextVar[SavedModelLoad | None] = contextvars.ContextVar("vistok_loading", default=None)


def model_parts(model: nn.Module) -> dict:
    """{config key: part} for the pretrained parts among the model's submodules (``vistok.parts.base.Part``) and
    the ones it reads lazily (``LazyPart``, in ``_lazy_parts``): each has ``spec()`` and ``frozen``."""
    found = {m.config_key: m for m in model.modules() if getattr(m, "config_key", None)}
    return {**model.__dict__.get("_lazy_parts", {}), **found}


class VistokModel(nn.Module, PyTorchModelHubMixin, library_name="vistok", repo_url="https://github.com/vistok/vistok"):
    model_type: str = ""  # set by vistok.registry.register_model

    # ---- saving -------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        cfg = dict(self._hub_mixin_config or {})
        from vistok.version import __version__

        cfg.update({k: part.spec() for k, part in model_parts(self).items() if k in cfg})
        return {"model_type": self.model_type, **cfg, "vistok_version": __version__, "format_version": MODEL_FORMAT}

    def _save_pretrained(self, save_directory: Path) -> None:
        save_model(self, str(Path(save_directory) / WEIGHTS_NAME))
        for key, part in model_parts(self).items():
            if not part.frozen:  # its weights are in model.safetensors; its folder's configs travel with them
                part.save_configs(str(Path(save_directory) / PARTS_DIR / key))
        (Path(save_directory) / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2, sort_keys=True))

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path):
            return cls._load_local(path, **kwargs)
        if not looks_like_repo_id(path):
            raise FileNotFoundError(f"'{path}' {'is a file, not' if os.path.exists(path) else 'does not exist; expected'} "
                                    f"a vistok model folder (config.json + model.safetensors)")
        return super().from_pretrained(path, **kwargs)  # a Hub repo id: the mixin downloads, then _from_pretrained

    @classmethod
    def _load_local(cls, path: str, map_location: str = "cpu", parts: dict | None = None, **overrides):
        cfg = read_model_config(path)
        model_cls = resolve_class(cls, cfg, path)
        kwargs = {k: v for k, v in cfg.items() if k not in ("model_type", "vistok_version", "format_version")}
        kwargs.update(overrides)
        unknown = sorted(set(parts or {}) - {k for k, v in kwargs.items() if isinstance(v, dict) and "path" in v})
        if unknown:
            raise ValueError(f"{path}: parts={sorted(parts)}: {unknown} name no pretrained part of this "
                             f"'{cfg['model_type']}' (its parts: "
                             f"{[k for k, v in kwargs.items() if isinstance(v, dict) and 'path' in v]})")
        token = LOADING.set(SavedModelLoad(path, dict(parts or {})))
        try:
            model = model_cls(**kwargs)
        except TypeError as e:
            raise ValueError(f"{os.path.join(path, CONFIG_NAME)}: arguments do not fit {model_cls.__name__}: {e}") from e
        finally:
            LOADING.reset(token)
        load_weights(model, os.path.join(path, WEIGHTS_NAME), map_location)
        model.eval()
        return model

    @classmethod
    def _from_pretrained(cls, *, model_id, revision=None, cache_dir=None, force_download=False,
                         local_files_only=False, token=None, map_location="cpu", strict=True, **model_kwargs):
        from huggingface_hub import hf_hub_download

        folder = os.path.dirname(hf_hub_download(model_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir,
                                                 force_download=force_download, token=token,
                                                 local_files_only=local_files_only))
        hf_hub_download(model_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir, token=token,
                        local_files_only=local_files_only)
        return cls._load_local(folder, map_location=map_location, parts=model_kwargs.get("parts"))


def looks_like_repo_id(path: str) -> bool:
    """``org/name`` and nothing local: anything else that is not a folder is a local path that is missing."""
    import re

    return (re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) is not None and not os.path.exists(path)
            and not os.path.isdir(path.split("/")[0]))


def read_model_config(path: str) -> dict:
    cfg_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"'{path}' is not a vistok model folder: {CONFIG_NAME} is missing")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict) or not cfg.get("model_type"):
        raise ValueError(f"{cfg_path}: missing required key 'model_type'")
    version = cfg.get("format_version", 1)
    if not isinstance(version, int) or version > MODEL_FORMAT:
        from vistok.version import __version__

        raise ValueError(f"{cfg_path}: a model config of format {version} (vistok {cfg.get('vistok_version', '?')}); "
                         f"this vistok ({__version__}) reads formats up to {MODEL_FORMAT}: upgrade vistok")
    return cfg


def resolve_class(cls, cfg: dict, path: str):
    from vistok.registry import lookup

    try:
        model_cls = lookup("model", cfg["model_type"])
    except KeyError as e:
        raise ValueError(f"{os.path.join(path, CONFIG_NAME)}: {e.args[0]}") from None
    if cls is not VistokModel and not issubclass(model_cls, cls):
        raise ValueError(f"{path} holds a '{cfg['model_type']}' model ({model_cls.__name__}); "
                         f"expected model_type '{cls.model_type}' ({cls.__name__})")
    return model_cls


def load_weights(model: nn.Module, weights_path: str, map_location: str = "cpu") -> None:
    """Load a safetensors file strictly, with errors that name the file and the keys."""
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"weights file '{weights_path}' is missing")
    try:
        state = load_file(weights_path, device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"'{weights_path}' is not a readable safetensors file ({e}); it may be truncated or corrupt") from e
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{weights_path}: keys do not match {type(model).__name__}: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{weights_path}: '{k}' has shape {tuple(v.shape)}, the config expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()
