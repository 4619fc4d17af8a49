"""Lazy registries (issue #13): `import vistok` imports no model and no heavy dependency, a lookup imports only
the module that defines the name, the names found in the source files are exactly the registered ones, and a
class outside vistok is named as package.module:Class."""
import importlib
import json
import os
import pkgutil
import subprocess
import sys

import pytest

import vistok
from tests.conftest import ROOT
from vistok.registry import KINDS, _TABLES, lookup, names, source_index

HEAVY = ("diffusers", "skimage", "torch_fidelity", "transformers", "scipy")


def _modules_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_vistok_is_light():
    mods = _modules_after("import vistok")
    loaded = sorted(m for m in mods if m.startswith(("vistok.",) + tuple(h + "." for h in HEAVY)) or m in HEAVY)
    assert loaded == ["vistok.version"], loaded  # the version string's own module, nothing else


@pytest.mark.slow
def test_a_lookup_imports_only_its_module():
    mods = _modules_after("from vistok.registry import lookup; lookup('model', 'lenet'); lookup('dataset', 'mnist')")
    assert "vistok.classifiers.lenet" in mods and "vistok.data.mnist" in mods
    others = {m for m in mods if m.startswith(("vistok.tokenizers.", "vistok.generators.", "vistok.evaluation."))}
    assert not others and "diffusers" not in mods, others


def test_source_index_equals_what_the_modules_register():
    for info in pkgutil.walk_packages(vistok.__path__, "vistok."):
        importlib.import_module(info.name)
    index = source_index()
    for kind in KINDS:
        registered = {n for n, c in _TABLES[kind].items() if c.__module__.startswith("vistok.")}
        assert set(index[kind]) == registered, (kind, set(index[kind]) ^ registered)
        for name, module in index[kind].items():
            assert _TABLES[kind][name].__module__ == module


def test_unknown_names_list_the_known_ones_and_outside_classes_load(tmp_path, monkeypatch):
    with pytest.raises(KeyError, match="unknown model type 'vqgann'; expected one of: .*vqgan.*package.module:Class"):
        lookup("model", "vqgann")
    (tmp_path / "outside_pkg.py").write_text(
        "from vistok.evaluation.lenet import LeNet\n\nclass MyLeNet(LeNet):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = lookup("model", "outside_pkg:MyLeNet")
    assert cls.__name__ == "MyLeNet" and cls.model_type == "outside_pkg:MyLeNet"
    assert "outside_pkg:MyLeNet" in names("model")
    with pytest.raises(KeyError, match="cannot import module 'no_such_pkg'"):
        lookup("model", "no_such_pkg:X")
    with pytest.raises(KeyError, match="module 'outside_pkg' has no 'Nope'"):
        lookup("model", "outside_pkg:Nope")
