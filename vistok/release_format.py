"""The release format, read: ``pipeline.json`` (any known format, migrated), its components' models, and the
pipeline type they declare. Writing a release and the pipeline classes are in ``vistok.pipelines``.

    checkpoints/NAME/pipeline.json   {"format": "vistok-pipeline", "format_version": 2, "vistok_version": ...,
                                      "pipeline_type": "class-to-image",
                                      "components": {"tokenizer": {"path": "tokenizer", "model_type": "vqgan"}, ...},
                                      "data": {...}, "sources": {...}}
    checkpoints/NAME/<component>/    config.json + model.safetensors (a VistokModel each)

Older ``pipeline.json`` files (format 1: ``stages``) are migrated on load; a newer format is refused naming
both versions.
"""
from __future__ import annotations

import os

from vistok.io import is_run_dir, read_json
from vistok.modeling import VistokModel

PIPELINE_NAME = "pipeline.json"
FORMAT, FORMAT_VERSION = "vistok-pipeline", 2


def not_a_release(path: str) -> str:
    """Why ``path`` cannot be loaded as a release, and what to do instead."""
    if not os.path.exists(path):
        return f"'{path}' does not exist (expected a vistok release folder, e.g. checkpoints/NAME)"
    if not os.path.isdir(path):
        return f"'{path}' is a file, not a folder (expected a vistok release folder, e.g. checkpoints/NAME)"
    if is_run_dir(path):
        return (f"'{path}' is a training run, not a release; release it first: `python release.py --stage NAME={path} "
                f"--out checkpoints/NAME`, then pass checkpoints/NAME")
    return f"'{path}' is not a vistok pipeline: {PIPELINE_NAME} is missing"


def migrate(meta: dict, where: str) -> dict:
    """pipeline.json of any known format -> the current one (in memory)."""
    from vistok.version import __version__

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{where}: not a vistok pipeline (expected \"format\": \"{FORMAT}\")")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{where}: written in pipeline format {version} by vistok {meta.get('vistok_version', '?')}; "
                         f"this vistok ({__version__}) reads formats up to {FORMAT_VERSION}: upgrade vistok")
    if version == 1:  # {"stages": {role: subfolder}}; the type follows from the components (see default_type)
        stages = meta.get("stages")
        if not isinstance(stages, dict) or not stages:
            raise ValueError(f"{where}: expected 'stages' (pipeline format 1) naming at least one component")
        meta = {**meta, "format_version": FORMAT_VERSION, "pipeline_type": None,
                "components": {name: {"path": sub, "model_type": None} for name, sub in stages.items()}}
        meta.pop("stages")
    comps = meta.get("components")
    if not isinstance(comps, dict) or not comps or not all(isinstance(c, dict) and "path" in c for c in comps.values()):
        raise ValueError(f"{where}: expected 'components': {{name: {{\"path\": ..., \"model_type\": ...}}}}")
    return meta


def read_meta(path: str) -> dict:
    """The migrated pipeline.json of a release folder, every component's ``model_type`` filled in and the
    pipeline type decided (component configs are read, no weights)."""
    from vistok.modeling import read_model_config

    meta_path = os.path.join(path, PIPELINE_NAME)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(not_a_release(path))
    meta = migrate(read_json(meta_path, "pipeline file"), meta_path)
    configs = {}
    for name, entry in meta["components"].items():
        configs[name] = read_model_config(os.path.join(path, entry["path"]))
        entry["model_type"] = entry.get("model_type") or configs[name]["model_type"]
    if not meta.get("pipeline_type"):
        meta["pipeline_type"] = default_type({n: (_model_class(c["model_type"]), c) for n, c in configs.items()})
    return meta


def _lookup(kind: str, name: str):
    """A registered class, with an unknown name as a ValueError (a bad file, not a bug)."""
    from vistok.registry import lookup

    try:
        return lookup(kind, name)
    except KeyError as e:
        raise ValueError(e.args[0]) from None


def _model_class(model_type: str):
    return _lookup("model", model_type)


def default_type(components: dict) -> str:
    """The pipeline type the components' driver declares: of ``{name: (model class, config dict)}`` (or model
    instances), the one with the highest ``drive_priority`` (a generator over a tokenizer over an SR stage)
    names its ``default_pipeline(config)``, which another component may map (``pipeline_for(name)``: a 3-D
    tokenizer turns a generator's 'class-to-image' into 'class-to-shape')."""
    pairs = {n: (c if isinstance(c, tuple) else (type(c), c.config_dict())) for n, c in components.items()}
    cls, config = max(pairs.values(), key=lambda p: getattr(p[0], "drive_priority", -1))
    hook = getattr(cls, "default_pipeline", None)
    name = hook(config) if hook is not None else None
    for other, _ in pairs.values():  # a component may say what the driver's type becomes over it (images -> meshes)
        if other is not cls and name and hasattr(other, "pipeline_for"):
            name = other.pipeline_for(name)
    if not name:
        raise ValueError(f"no component of {sorted(components)} names a pipeline type; pass one (--pipeline-type)")
    return name


def parts_for(component: str, sub: str, parts: dict) -> dict:
    """The part remaps of ``parts`` ({part: path} for any component holding that part, or {"component.part": path})
    that apply to one component (whose saved config is at ``sub``)."""
    from vistok.modeling import read_model_config

    own = {k for k, v in read_model_config(sub).items() if isinstance(v, dict) and "path" in v}
    plain = {k: v for k, v in parts.items() if "." not in k and k in own}
    dotted = {k.split(".", 1)[1]: v for k, v in parts.items() if k.startswith(component + ".")}
    return {**plain, **dotted}


def load_components(path: str, names=None, parts: dict | None = None) -> tuple[dict, dict]:
    """(the migrated pipeline.json, {name: model}) of a release folder (only ``names`` when given); each model is
    checked against the ``model_type`` the file names for it. ``parts`` remaps pretrained parts' folders
    ({"text_encoder": path} or {"generator.text_encoder": path}; see ``VistokModel.from_pretrained``)."""
    meta = read_meta(path)
    meta_path = os.path.join(path, PIPELINE_NAME)
    components = {}
    if parts:
        used = set()
        for name, entry in meta["components"].items():
            used |= {k for k in parts if k in parts_for(name, os.path.join(path, entry["path"]), {k: 1})}
        unknown = sorted(set(parts) - used)
        if unknown:
            raise ValueError(f"{meta_path}: parts={sorted(parts)}: {unknown} name no pretrained part of any component")
    for name, entry in meta["components"].items():
        if names is not None and name not in names:
            continue
        sub = os.path.join(path, entry["path"])
        model = VistokModel.from_pretrained(sub, parts=parts_for(name, sub, parts) if parts else None)
        if entry.get("model_type") and entry["model_type"] != model.model_type:
            raise ValueError(f"{meta_path}: component '{name}' should be a '{entry['model_type']}', {sub} holds a "
                             f"'{model.model_type}'")
        components[name] = model
    return meta, components


def component_of_kind(path: str, kind: str):
    """(the one component of ``kind`` of the release at ``path``, the release's data config); only that
    component's weights are read (the kinds come from the registered classes the configs name)."""
    meta = read_meta(path)
    found = [n for n, e in meta["components"].items() if getattr(_model_class(e["model_type"]), "kind", None) == kind]
    if not found:
        raise ValueError(f"'{path}': this release has no {kind} component (components: {list(meta['components'])})")
    return load_components(path, names=found[:1])[1][found[0]], meta.get("data")
