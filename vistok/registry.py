"""Name -> class registries, lazy: a class is registered where it is defined and imported only when looked up.

    @register_model("vqgan")          # in vistok/tokenizers/vqgan.py
    lookup("model", "vqgan")          # imports vistok.tokenizers.vqgan, nothing else

Which module defines which name is read from the source files' ``@register_<kind>("name")`` lines (nothing
is imported to find out, so ``import vistok`` stays light and a new system edits no central list). A config
may also name a class outside vistok as ``package.module:Class`` (importable from PYTHONPATH); installed
packages can add names through the ``vistok.plugins`` entry-point group (``name = "pkg.module"``; the
module is imported when a name is not found otherwise). A model's ``model_type`` is the name it was
looked up or registered under, so a release of a plug-in model loads with that plug-in importable.
"""
from __future__ import annotations

import importlib
import os
import re

KINDS = ("model", "dataset", "pipeline", "writer", "task", "converter", "schedule", "part")
_TABLES: dict[str, dict[str, type]] = {k: {} for k in KINDS}
MODELS, DATASETS = _TABLES["model"], _TABLES["dataset"]
_PATTERN = re.compile(r'^\s*@register_(' + "|".join(KINDS) + r')\(\s*"([^"]+)"', re.M)
_ROOT = os.path.dirname(os.path.abspath(__file__))
_index: dict[str, dict[str, str]] | None = None
_plugins_loaded = False


def source_index() -> dict[str, dict[str, str]]:
    """kind -> name -> module, from the ``@register_<kind>("name")`` lines of vistok's source files."""
    global _index
    if _index is None:
        found: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        for root, dirs, files in os.walk(_ROOT):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            for f in files:
                if f.endswith(".py") and f != "registry.py":
                    path = os.path.join(root, f)
                    with open(path, encoding="utf-8") as fh:
                        text = fh.read()
                    rel = os.path.relpath(path, os.path.dirname(_ROOT))[:-3].replace(os.sep, ".")
                    for kind, name in _PATTERN.findall(text):
                        found[kind][name] = rel.removesuffix(".__init__")
        _index = found
    return _index


def _register(kind: str, name: str):
    table = _TABLES[kind]

    def deco(cls):
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} '{name}' is registered twice ({table[name].__name__}, {cls.__name__})")
        return _record(kind, name, cls)

    return deco


def _record(kind: str, name: str, cls):
    """Enter ``cls`` under ``name``; a model's ``model_type`` (saved in config.json) and every other class's
    ``registered_name`` become that name."""
    _TABLES[kind][name] = cls
    if kind == "model":
        cls.model_type = name
    else:
        cls.registered_name = name
    return cls


def register_model(name: str):
    return _register("model", name)


def register_dataset(name: str):
    return _register("dataset", name)


def register_pipeline(name: str):
    return _register("pipeline", name)


def register_writer(name: str):
    return _register("writer", name)


def register_task(name: str):
    return _register("task", name)


def register_converter(name: str):
    return _register("converter", name)


def register_schedule(name: str):
    return _register("schedule", name)


def register_part(name: str):
    return _register("part", name)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="vistok.plugins"):
        importlib.import_module(ep.value.split(":")[0])


def _from_path(kind: str, name: str) -> type:
    module, _, attr = name.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise KeyError(f"{kind} type '{name}': cannot import module '{module}' ({e}); is it on PYTHONPATH?") from None
    except AttributeError:
        raise KeyError(f"{kind} type '{name}': module '{module}' has no '{attr}'") from None
    if _TABLES[kind].get(name) is not obj:
        _record(kind, name, obj)  # the release of a plug-in model loads wherever its module imports
    return obj


def lookup(kind: str, name: str) -> type:
    table = _TABLES[kind]
    if name in table:
        return table[name]
    if ":" in name:
        return _from_path(kind, name)
    module = source_index()[kind].get(name)
    if module is not None:
        importlib.import_module(module)
    if name not in table:
        _load_plugins()
    if name not in table:
        raise KeyError(f"unknown {kind} type '{name}'; expected one of: {', '.join(names(kind))} "
                       f"(or package.module:Class for a class outside vistok)")
    return table[name]


def names(kind: str) -> list[str]:
    return sorted(set(source_index()[kind]) | set(_TABLES[kind]))
