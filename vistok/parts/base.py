"""A pretrained part: a module built from a local folder, named in a config by a registered type.

    teacher: {type: clip_vision, path: checkpoints/clip-vit-base-patch16, feature: "hidden_states[-2]"}

``build_part(spec, key)`` looks the type up (``@register_part``), checks the folder, loads the weights and, when
``frozen`` (the default), turns gradients off and keeps the part in eval mode. A frozen part's tensors are not in
its owner's ``state_dict`` (so never in a checkpoint or a release): the owner's config records the folder and
its ``fingerprint`` (``vistok.parts.folders.fingerprint``), and loading a saved model reads the part from that
folder again, or from the one ``from_pretrained(..., parts={key: new_path})`` names, refusing a folder whose
fingerprint differs. A part with ``frozen: false`` is fine-tuned: initialised from the folder, then saved with
its owner's weights (its folder's config files under ``parts/<key>/``), and rebuilt from those when loaded.

A frozen part may still train a few tensors of its own (LoRA adapters over a frozen LLM, ``vistok.parts.causal_lm``):
it names them in ``trained_keys()`` (relative to the part; none by default). Those keep ``requires_grad``
(``Part.freeze``), are in the owner's ``state_dict`` (a strict load needs them: they are never filled from the
folder's weights), and the part follows ``train()`` / ``eval()`` instead of staying in eval mode.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from vistok.modeling import LOADING, PARTS_DIR
from vistok.parts.folders import fingerprint, require_folder
from vistok.registry import lookup
from vistok.schema import OneOf

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DtypeName = OneOf(*DTYPES)


class Part(nn.Module):
    """Base of every part. Subclasses set ``expected`` (what folder they read, for errors), ``needs`` (the files
    that folder must hold) and implement ``load(folder, read_weights)``: build the modules, reading the
    pretrained weights only when ``read_weights`` (a fine-tuned part being restored gets them from its owner)."""

    expected = "model"
    needs: tuple[str, ...] = ("config.json",)
    config_files: tuple[str, ...] = ("config.json",)  # copied for a fine-tuned part (see save_configs)

    def __init__(self, path: str, frozen: bool = True, dtype: DtypeName = "float32",
                 fingerprint: str = ""):
        super().__init__()
        self.path, self.frozen, self.dtype_name, self.recorded = path, frozen, dtype, fingerprint
        self.config_key, self.fingerprint, self.options = "", "", {}
        self.register_state_dict_post_hook(_drop_frozen)
        self.register_load_state_dict_pre_hook(_keep_frozen)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    def folder(self) -> str:
        """Where this part's files are (a subclass with a ``subfolder`` joins it)."""
        return self.path

    def load(self, folder: str, read_weights: bool) -> None:
        raise NotImplementedError

    def folder_fingerprint(self) -> str:
        """The fingerprint of the weights this part reads (a pipeline folder combines its subfolders')."""
        return fingerprint(self.folder())

    def spec(self) -> dict:
        """The config entry that rebuilds this part (what its owner's config.json records)."""
        return {"type": self.registered_name, "path": self.path, "frozen": self.frozen, "dtype": self.dtype_name,
                **self.options, "fingerprint": self.fingerprint}

    def save_configs(self, out: str) -> None:
        """Copy the folder's small files (configs, tokenizer, preprocessing) a fine-tuned part is rebuilt from."""
        import shutil

        os.makedirs(out, exist_ok=True)
        for name in self.config_files:
            src = os.path.join(self.source, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(out, name))

    def trained_keys(self) -> set[str]:
        """The ``state_dict`` names (relative to the part) of the tensors that train and are saved with the owner
        although the part is frozen (LoRA adapters); none by default."""
        return set()

    def freeze(self) -> None:
        """A frozen part's gradients: off, except on its ``trained_keys``."""
        keep = self.trained_keys()
        for name, p in self.named_parameters():
            p.requires_grad_(name in keep)

    def train(self, mode: bool = True):
        # a frozen part stays in eval mode (no dropout), unless it trains tensors of its own
        return super().train(mode and (not self.frozen or bool(self.trained_keys())))


def _drop_frozen(module: Part, state_dict: dict, prefix: str, local_metadata) -> None:
    if module.frozen:
        keep = module.trained_keys()
        for k in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in keep]:
            del state_dict[k]


def _keep_frozen(module: Part, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    """A frozen part keeps the weights it read from its folder: they are put back for a strict load (not its
    ``trained_keys``, which the state dict must hold)."""
    if module.frozen:
        keep = module.trained_keys()
        for k, v in _tensors(module).items():
            if k not in keep:
                state_dict.setdefault(prefix + k, v)


def _tensors(part: Part) -> dict:
    """The part's state without its own hooks: its direct parameters and persistent buffers, its children's."""
    out = {k: v.detach() for k, v in part._parameters.items() if v is not None}
    out.update({k: v for k, v in part._buffers.items() if v is not None and k not in part._non_persistent_buffers_set})
    for name, child in part.named_children():
        out.update({f"{name}.{k}": v for k, v in child.state_dict(keep_vars=True).items()})
    return {k: v.detach() for k, v in out.items()}


def as_spec(spec):
    """A plain dict of a config entry (an OmegaConf node becomes one); anything else as it is."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec


def on_meta_device() -> bool:
    """Inside ``with torch.device("meta")``: models are built for their shapes only (parameter counts)."""
    return torch.empty(0).device.type == "meta"


def build_part(spec: dict | str | None, key: str) -> Part | None:
    """The part a config entry names (None for an empty entry). Inside ``VistokModel.from_pretrained`` a frozen
    part is read from its (possibly remapped) folder and its fingerprint checked; a fine-tuned one is built from
    the saved model's ``parts/<key>/`` without reading pretrained weights."""
    if not spec:
        return None
    spec = as_spec(spec)
    if not isinstance(spec, dict) or "type" not in spec or "path" not in spec:
        raise ValueError(f"part '{key}': expected a mapping with 'type' and 'path' (e.g. {{type: clip_vision, path: "
                         f"DIR}}), got {spec!r}")
    opts = dict(spec)
    try:
        cls = lookup("part", opts.pop("type"))
    except KeyError as e:
        raise ValueError(f"part '{key}': {e.args[0]}") from None
    loading = LOADING.get()
    if loading is not None:
        opts["path"] = loading.parts.get(key, opts["path"])
    part = cls(**opts)
    part.config_key = key
    source, read_weights = part.folder(), not on_meta_device()  # on meta (shapes only) a folder's config suffices
    if loading is not None and not part.frozen:
        saved = os.path.join(loading.folder, PARTS_DIR, key)
        source, read_weights = (saved if os.path.isdir(saved) else source), False
    require_folder(source, key, f"{cls.expected} ({getattr(cls, 'model_class', '') or cls.__name__})", cls.needs)
    part.source = source
    part.fingerprint = part.folder_fingerprint() if read_weights else part.recorded
    if loading is not None and part.frozen and part.recorded and part.fingerprint != part.recorded:
        raise ValueError(f"part '{key}': the weights in '{part.folder()}' (fingerprint {part.fingerprint}) are not the "
                         f"ones {loading.folder} was saved with (fingerprint {part.recorded}); point it at the right "
                         f"copy with from_pretrained(..., parts={{'{key}': PATH}})")
    part.load(source, read_weights)
    if part.frozen:
        part.freeze()
    return part.train(False)



class LazyPart:
    """A frozen part read from its folder on first use (a teacher only training needs, a text encoder a cached
    dataset makes unnecessary), not a submodule: ``get(device)`` builds and moves it. It is created inside the
    owner's constructor, so a saved model's remapped path and recorded fingerprint still apply; the fingerprint
    is read from the folder at once (headers only) when the folder is there, so a save records it."""
    frozen = True

    def __init__(self, owner: nn.Module, spec: dict, key: str):
        self.key, self.loading = key, LOADING.get()
        self.spec_in = {**as_spec(spec), "frozen": True}
        if self.loading is not None:
            self.spec_in["path"] = self.loading.parts.get(key, self.spec_in["path"])
        self.part: Part | None = None
        lazy = owner.__dict__.setdefault("_lazy_parts", {})
        lazy[key] = self

    def spec(self) -> dict:
        if self.part is not None:
            return self.part.spec()
        path = os.path.join(self.spec_in["path"], self.spec_in.get("subfolder") or "")
        found = fingerprint(path) if os.path.isdir(path) else ""
        return {**self.spec_in, "fingerprint": found or self.spec_in.get("fingerprint", "")}

    def get(self, device: torch.device | None = None) -> Part:
        if self.part is None:
            token = LOADING.set(self.loading)
            try:
                self.part = build_part(self.spec_in, self.key)
            finally:
                LOADING.reset(token)
        if device is not None and next(self.part.parameters(), torch.empty(0, device=device)).device != device:
            self.part.to(device)
        return self.part
