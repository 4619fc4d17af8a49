"""Every declared range, walked (issue #12): for every config in configs/ and every setting of its model, data,
train, sample and eval sections that declares a range (``vistok.schema``), values just outside it are refused
by ``load_config`` before anything is built or read, naming the key, the value and the range, and blaming
the command line. Generated from the declarations, so a new setting with a range is tested without a new test."""
import glob
import math
import os
import typing

import pytest

from tests.conftest import ROOT
from vistok.config import SCHEMAS, ConfigError, _init_params, load_config
from vistok.registry import lookup, names
from vistok.schema import Length, Range

CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                 if "/accelerate/" not in p)
# numeric constructor arguments that may take any finite value (everything else must declare a range)
FREE = {("kl", "shift_factor"), ("xar", "t_mean")}


def _bad_values(hint) -> list[tuple[str, str]]:
    """(override value, text the error must contain) for values outside ``hint``'s declared ranges."""
    out = []
    if typing.get_origin(hint) is typing.Annotated:
        base, *meta = typing.get_args(hint)
        for m in meta:
            if isinstance(m, Range):
                out += [(repr(v) if base is float else str(int(v)), m.describe()) for v in m.outside()]
            if isinstance(m, Length):
                out.append(("[" + ",".join(["1"] * (m.n - 1)) + "]", f"{m.n} items"))
        if base is float:
            out.append((".nan", "finite"))
    elif typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        for v, t in _bad_values(item):
            if not v.startswith("["):
                out.append((f"[{v}]", t))
    return out


def _cases(cfg) -> list[tuple[str, str, str]]:
    cases = []
    for sec, schema in SCHEMAS.items():
        for key, hint in typing.get_type_hints(schema, include_extras=True).items():
            cases += [(f"{sec}.{key}", v, t) for v, t in _bad_values(hint)]
    for sec, kind in (("model", "model"), ("data", "dataset")):
        _, hints = _init_params(lookup(kind, cfg[sec]["type"]))
        cases += [(f"{sec}.{key}", v, t) for key, hint in hints.items() for v, t in _bad_values(hint)]
    return cases


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "configs")))
def test_every_declared_range_is_enforced(path):
    cfg = load_config(path)  # the config itself is within every range
    cases = _cases(cfg)
    assert len(cases) > 40, f"{path}: only {len(cases)} range checks generated"
    for key, value, needle in cases:
        with pytest.raises(ConfigError) as e:
            load_config(path, [f"{key}={value}"])
        msg = str(e.value)
        assert f"command-line override '{key}={value}'" in msg and f"'{key}" in msg and needle in msg, (key, value, msg)


def test_every_numeric_setting_declares_a_range():
    missing = []
    for kind in ("model", "dataset"):
        for name, cls in ((n, lookup(kind, n)) for n in names(kind)):
            if not cls.__module__.startswith("vistok."):
                continue  # a model another test registers
            params, hints = _init_params(cls)
            for key in params:
                h = hints.get(key)
                base = typing.get_args(h)[0] if typing.get_origin(h) is list else h
                if base in (int, float) and (name, key) not in FREE:
                    missing.append(f"{kind} {name}.{key}")
    for sec, schema in SCHEMAS.items():
        for key, h in typing.get_type_hints(schema, include_extras=True).items():
            if h in (int, float):
                missing.append(f"{sec}.{key}")
    assert not missing, f"numeric settings without a declared range: {missing}"


def test_free_floats_must_still_be_finite():
    with pytest.raises(ConfigError, match=r"'model.t_mean' = inf; expected a finite number"):
        load_config(os.path.join(ROOT, "configs/xar/mnist.yaml"), ["model.t_mean=.inf"])
    assert math.isfinite(load_config(os.path.join(ROOT, "configs/xar/mnist.yaml"), ["model.t_mean=-0.5"]).model.t_mean)
