"""Name -> class registries, one small dict per kind.

A config names a class by its registry key (``model.type: vqgan``); the class's constructor signature
is the schema for the rest of that section (see ``vistok.config``).
"""
from __future__ import annotations

MODELS: dict[str, type] = {}
DATASETS: dict[str, type] = {}

_KINDS = {"model": MODELS, "dataset": DATASETS}


def _register(kind: str, name: str):
    table = _KINDS[kind]

    def deco(cls):
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} '{name}' is registered twice ({table[name].__name__}, {cls.__name__})")
        table[name] = cls
        if kind == "model":
            cls.model_type = name
        return cls

    return deco


def register_model(name: str):
    return _register("model", name)


def register_dataset(name: str):
    return _register("dataset", name)


def lookup(kind: str, name: str) -> type:
    import vistok.models_index  # noqa: F401  (imports every module so that they register)

    table = _KINDS[kind]
    if name not in table:
        raise KeyError(f"unknown {kind} type '{name}'; expected one of: {', '.join(sorted(table))}")
    return table[name]
