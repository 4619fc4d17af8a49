"""The pipeline base: any number of named components, a registered ``pipeline_type``, one release format
(read by ``vistok.release_format``, written here).

A pipeline class (registered with ``@register_pipeline("name")``) declares the components it needs
(``requires``) and may take (``optional``), checks that they fit each other through methods the components
declare (``check_fits``), the command-line inputs of ``sample.py`` (``add_arguments``) and what sampling
writes (``sample``). The base names no model and no system.
"""
from __future__ import annotations

import os

import torch

from vistok.io import atomic_write_json, atomic_write_text, write_release_dir
from vistok.release_format import FORMAT, FORMAT_VERSION, PIPELINE_NAME, _lookup, default_type, load_components  # noqa: F401

def pipeline_class(name: str):
    return _lookup("pipeline", name)


class Pipeline:
    """Named components + the data config the first component was trained on (its held-out split)."""

    requires: dict[str, str] = {}  # component name -> the ``kind`` its model must declare
    optional: dict[str, str] = {}
    writers: tuple[str, ...] = ("png",)  # output writers sample.py uses by default
    data_from: str = ""  # the component whose training data defines the held-out split (default: the first required)

    def __init__(self, components: dict | None = None, data: dict | None = None, info: dict | None = None, **named):
        if components is not None and not isinstance(components, dict):
            raise TypeError("Pipeline(components): a dict {name: model}, or the components by name: "
                            "Pipeline(tokenizer=..., generator=...)")
        self.components = {k: v for k, v in {**(components or {}), **named}.items() if v is not None}
        self.data = data
        self.info = info or {}

    def __getattr__(self, name):  # pipe.tokenizer, pipe.generator ...: a component, or None if this one has none
        if name.startswith("_") or name in ("components", "data", "info"):
            raise AttributeError(name)
        return self.__dict__.get("components", {}).get(name)

    @property
    def stages(self) -> dict:  # the components, in the name of format 1
        return self.components

    @property
    def pipeline_type(self) -> str:
        return getattr(type(self), "registered_name", "") or default_type(self.components)

    @classmethod
    def for_components(cls, components: dict, pipeline_type: str | None = None, **kw) -> "Pipeline":
        """A pipeline of the type given, or of the type the components' driver declares."""
        return pipeline_class(pipeline_type or default_type(components))(components, **kw)

    def options_by_component(self, options: dict) -> tuple[dict, dict]:
        """({component name: the options its SamplingOptions declares}, the options no component declares)."""
        import dataclasses

        out, claimed = {}, set()
        for name, model in self.components.items():
            opts = getattr(type(model), "SamplingOptions", None)
            fields = {f.name for f in dataclasses.fields(opts)} if opts is not None else set()
            out[name] = {k: v for k, v in options.items() if k in fields}
            claimed |= set(out[name])
        return out, {k: v for k, v in options.items() if k not in claimed}

    # ---- checks ---------------------------------------------------------------------------------
    @classmethod
    def roles(cls) -> dict:
        return {**cls.requires, **cls.optional}

    def check(self, where: str = "pipeline") -> None:
        """Every required component present, of the kind its role needs; then the components fit each other."""
        if type(self) is Pipeline:  # built from components alone: check as the type they call for
            return Pipeline.for_components(self.components, data=self.data).check(where)
        missing = [n for n in self.requires if n not in self.components]
        extra = [n for n in self.components if n not in self.roles()]
        if missing or extra:
            raise ValueError(f"{where}: a '{self.pipeline_type}' pipeline needs components {sorted(self.requires)}"
                             f"{' (optionally ' + str(sorted(self.optional)) + ')' if self.optional else ''}; got "
                             f"{sorted(self.components)}")
        for name, model in self.components.items():
            if getattr(model, "kind", None) != self.roles()[name]:
                raise ValueError(f"{where}: a '{model.model_type}' model ({getattr(model, 'kind', '?')}) cannot be the "
                                 f"'{name}' component (a {self.roles()[name]})")
        self.check_components()

    def check_components(self) -> None:
        """Each component that declares ``check_fits(other)`` checks the components it consumes."""
        for name, model in self.components.items():
            fits = getattr(model, "check_fits", None)
            if fits is not None:
                fits(self.components)

    # ---- loading and saving -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, parts: dict | None = None, pipeline_type: str | None = None) -> "Pipeline":
        """The release at ``path``; ``parts`` points pretrained parts at other folders (a release moved to another
        machine): {"text_encoder": path} for whichever component holds it, or {"generator.text_encoder": path}.
        ``pipeline_type``: read the release as another type (checked like its own: every required component there,
        fitting each other; components the type has no role for are left out)."""
        meta, components = load_components(path, parts=parts)
        meta_path = os.path.join(path, PIPELINE_NAME)
        klass = pipeline_class(pipeline_type or meta["pipeline_type"])
        if pipeline_type:
            components = {k: v for k, v in components.items() if k in klass.roles()}
        if cls is not Pipeline and not issubclass(klass, cls):
            raise ValueError(f"{path} is a '{klass.registered_name}' pipeline, not a {cls.__name__}")
        pipe = klass(components, data=meta.get("data"), info=meta)
        pipe.check(meta_path)
        return pipe

    def save_pretrained(self, path: str, card: str | None = None, sources: dict | None = None,
                        overwrite: bool = False) -> None:
        """Write the release beside ``path`` and swap it in atomically; refused before anything is written when
        ``path`` holds anything but a vistok release, and for an existing release unless ``overwrite``."""
        from vistok.version import __version__

        self.check("release")

        def write(tmp):
            for name, model in self.components.items():
                model.save_pretrained(os.path.join(tmp, name))
            meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "vistok_version": __version__,
                    "pipeline_type": self.pipeline_type, "data": self.data, "sources": sources or {},
                    "components": {n: {"path": n, "model_type": m.model_type} for n, m in self.components.items()}}
            atomic_write_json(os.path.join(tmp, PIPELINE_NAME), meta)
            if card:
                atomic_write_text(os.path.join(tmp, "README.md"), card)

        write_release_dir(path, write, overwrite)

    def to(self, device) -> "Pipeline":
        for m in self.components.values():
            m.to(device)
        return self

    @property
    def device(self):
        return next(next(iter(self.components.values())).parameters()).device

    def compile(self, mode: str | None = None) -> "Pipeline":
        """torch.compile what each component says sampling spends its time in (``compile_for_sampling``)."""
        for m in self.components.values():
            hook = getattr(m, "compile_for_sampling", None)
            if hook is not None:
                hook(mode)
        return self

    # ---- sampling (sample.py) ---------------------------------------------------------------------------
    @classmethod
    def option_classes(cls, components_meta: dict) -> list:
        """The sampling-options dataclasses of the component classes (from pipeline.json, no weights read)."""
        from vistok.registry import lookup

        out = []
        for entry in components_meta.values():
            if entry.get("model_type"):
                opts = getattr(lookup("model", entry["model_type"]), "SamplingOptions", None)
                if opts is not None:
                    out.append(opts)
        return out

    @classmethod
    def add_arguments(cls, parser) -> None:
        """The inputs sample.py takes for this pipeline (class labels, prompts, an image folder ...)."""

    def sample(self, args, options: dict, out: str, state) -> dict:  # pragma: no cover - each class has its own
        raise NotImplementedError(f"a '{self.pipeline_type}' pipeline does not sample")

    def __call__(self, *args, **kwargs):
        raise ValueError(f"this is a '{self.pipeline_type}' pipeline (components {sorted(self.components)}) with no "
                         f"generator stage to sample from; release one with --stage generator=RUN")

    def generator_seed(self, seed: int | None):
        return torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
