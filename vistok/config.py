"""Configs: OmegaConf YAML + ``key.sub=value`` overrides + typed validation.

Sections:
  model   ``type`` names a registered model; every other key must be a constructor argument of it,
          of the annotated type (the class signature is the schema, so there is one source of truth).
  data    ``type`` names a registered dataset; other keys are its constructor arguments (``split`` is
          set by the caller).
  train, sample, eval   dataclass schemas below.

Every error names the key, the file and what was expected.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vistok.schema import Choices, Component, Decay, Length, NonNegFloat, NonNegInt, NonNegInts, Pair, PosFloat, PosInt, Range, is_finite

SECTIONS = ("model", "data", "train", "sample", "eval")
CONFIG_FORMAT = 2  # the format number saved configs carry (with vistok_version); a newer one is refused


class ConfigError(ValueError):
    """A config key, value or file is wrong; the message says which and what was expected. ``key`` is the
    dotted key at fault (when one is), so that a caller can tell a command-line override from the file."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclass
class GenEvalConfig:
    """A generation metric computed during training by a registered evaluation task (as MAR computes FID)."""
    task: str = ""  # an evaluation task that can score a generator in training (e.g. classify, geneval); "" disables
    every: NonNegInt = 0  # steps between two evaluations (and at the last step); 0 disables
    num_samples: PosInt = 100
    batch_size: PosInt = 100
    options: dict = field(default_factory=dict)  # the generator's sampling options, e.g. {cfg_scale: 2.0}


@dataclass
class TrainConfig:
    output_dir: str = ""  # default: runs/<config file stem>
    seed: NonNegInt = 0
    batch_size: PosInt = 32  # per process
    max_steps: PosInt = 1000
    optimizer: str = "adamw"  # adamw | adam (see vistok/training/optim.py for the parameter groups)
    lr: PosFloat = 1e-3
    betas: Pair(Decay) = field(default_factory=lambda: [0.9, 0.99])
    eps: PosFloat = 1e-8
    weight_decay: NonNegFloat = 0.0  # on tensors of 2+ dimensions only, minus the model's no_weight_decay()
    lr_schedule: str = "cosine"  # a registered schedule: constant | cosine | linear | constant_cosine | multistep
    warmup_steps: NonNegInt = 0
    decay_start: NonNegInt = 0  # constant_cosine: the step where the cosine decay begins (xAR/MAR: epoch 600 of 800)
    min_lr: NonNegFloat = 0.0  # constant_cosine: the lr the cosine reaches at max_steps (xAR: 1e-5)
    milestones: NonNegInts = field(default_factory=list)  # multistep: the steps where the lr is multiplied by gamma
    gamma: PosFloat = 0.5  # multistep
    grad_clip: NonNegFloat = 1.0  # 0 disables clipping
    grad_accum_steps: PosInt = 1
    mixed_precision: str = "bf16"  # no | bf16 | fp16 (bf16 falls back to no where unsupported)
    ema_decay: Decay = 0.0  # 0 disables EMA
    checkpoint_every: PosInt = 500
    checkpoints_total_limit: NonNegInt = 3  # 0 keeps all
    resume: str = ""  # "" | latest | path to a checkpoint-<step> folder
    resume_inexact: bool = False  # resume even when a checkpoint lacks its RNG state (warns: no longer exact)
    force_unlock: bool = False  # take over a run whose lock was left by another host
    init_from: str = ""  # start from these weights (a run, model or pipeline folder); ignored when resuming
    init_skip: list = field(default_factory=list)  # key prefixes init_from may not fill (listed in the log)
    init_modules: dict = field(default_factory=dict)  # {submodule: folder}: fill these submodules (every key) from
    # the weights of a release / run / model folder, e.g. Layton's VQ from a vqgan release; ignored when resuming
    log_every: PosInt = 50
    image_every: NonNegInt = 500  # image grids (inputs vs reconstructions / samples); 0 disables
    eval_every: NonNegInt = 500  # model metrics on held-out data; 0 disables
    eval_batches: PosInt = 4
    num_workers: NonNegInt = 0
    log_with: str = "tensorboard"  # tensorboard | wandb | none
    on_nan: str = "stop"  # stop | skip
    progress: bool = True
    gen_eval: GenEvalConfig = field(default_factory=GenEvalConfig)


@dataclass
class SampleConfig:
    num_images: PosInt = 64
    batch_size: PosInt = 64
    seed: NonNegInt = 0


@dataclass
class EvalConfig:
    batch_size: PosInt = 100
    max_images: NonNegInt = 0  # 0: the whole held-out split
    lenet: str = "checkpoints/fd_lenet"  # FD-LeNet classifier (release folder)
    inception_weights: str = ""  # local path to torch-fidelity's inception-v3-compat weights


SCHEMAS = {"train": TrainConfig, "sample": SampleConfig, "eval": EvalConfig}
def _schedules() -> tuple:
    from vistok.registry import names

    return tuple(names("schedule"))


_CHOICES = {
    ("train", "lr_schedule"): _schedules,
    ("train", "optimizer"): ("adamw", "adam"),
    ("train", "mixed_precision"): ("no", "bf16", "fp16"),
    ("train", "log_with"): ("tensorboard", "wandb", "none"),
    ("train", "on_nan"): ("stop", "skip"),
}


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a YAML config, apply ``key.sub=value`` overrides, validate, fill defaults."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path} (expected a YAML file, e.g. configs/vqgan/mnist.yaml)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml errors carry line numbers
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping with sections {SECTIONS}, got {type(cfg).__name__}")
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"command-line override '{ov}' (config {path}): expected key.sub=value")
    try:
        cli = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"command-line overrides {list(overrides)}: {e}") from e
    cfg = OmegaConf.merge(cfg, cli)
    try:
        return validate(cfg, source=path, name=os.path.splitext(os.path.basename(path))[0])
    except ConfigError as e:
        raise _attribute(e, path, overrides) from None


def _attribute(e: ConfigError, path: str, overrides) -> ConfigError:
    """Say whether the key at fault came from the command line or from the YAML file."""
    msg = str(e)
    if e.key:
        key = e.key.split("[")[0]
        for ov in overrides:
            k = ov.split("=", 1)[0].strip()
            if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                return ConfigError(msg.replace(path, f"command-line override '{ov}' (config {path})", 1) if path in msg
                                   else f"command-line override '{ov}': {msg}", e.key)
    return ConfigError(msg.replace(path, f"{path} (YAML file)", 1), e.key)


def validate(cfg: DictConfig, source: str = "<config>", name: str | None = None) -> DictConfig:
    """Check every section; return a new config with defaults filled in."""
    version = cfg.get("format_version", 1)
    if not isinstance(version, int) or version > CONFIG_FORMAT:
        from vistok.version import __version__

        raise ConfigError(f"{source}: a config of format {version} (vistok {cfg.get('vistok_version', '?')}); this vistok "
                          f"({__version__}) reads formats up to {CONFIG_FORMAT}: upgrade vistok")
    unknown = [k for k in cfg.keys() if k not in SECTIONS and k not in ("name", "vistok_version", "format_version")]
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown}; expected sections {SECTIONS} (and 'name')")
    if version < 2:
        cfg = _migrate_1(cfg, source)
    out: dict[str, Any] = {"name": cfg.get("name", name or "run")}
    for sec, schema in SCHEMAS.items():
        out[sec] = _validate_dataclass(sec, cfg.get(sec) or {}, schema, source)
    for sec, kind in (("model", "model"), ("data", "dataset")):
        if sec not in cfg or cfg[sec] is None:
            raise ConfigError(f"{source}: missing section '{sec}' (expected '{sec}.type' and its arguments)")
        out[sec] = validate_component(kind, OmegaConf.to_container(cfg[sec], resolve=True), f"{source}: {sec}")
    if not out["train"]["output_dir"]:
        out["train"]["output_dir"] = os.path.join("runs", out["name"])
    return OmegaConf.create(out)


def _migrate_1(cfg: DictConfig, source: str) -> DictConfig:
    """Format 1 -> 2: the adversarial phase belongs to the model's loss module (``model.disc_start``,
    ``model.disc_lr``), no longer to the trainer."""
    train = cfg.get("train") or {}
    moved = {k: train[k] for k in ("disc_start", "disc_lr") if k in train}
    if not moved:
        return cfg
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    for k in moved:
        del cfg.train[k]
    model = cfg.get("model") or {}
    if model.get("gan_weight", 0) or moved.get("disc_start", -1) != -1:  # keep them only where a GAN is trained
        cfg.model = OmegaConf.merge(model, {k: v for k, v in moved.items() if k not in model})
    logging.getLogger("vistok.config").warning(f"{source}: train.{'/'.join(moved)} moved to model.{'/'.join(moved)} "
                                               f"(config format 2: the model's loss module owns the adversarial phase)")
    return cfg


def _validate_dataclass(sec: str, values, schema, source: str) -> dict:
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section '{sec}' must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    types = typing.get_type_hints(schema, include_extras=True)
    result = dataclasses.asdict(schema())
    for key, val in values.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{sec}.{key}'; expected one of: {', '.join(fields)}", f"{sec}.{key}")
        allowed = _CHOICES.get((sec, key))
        allowed = allowed() if callable(allowed) else allowed
        if dataclasses.is_dataclass(types[key]):
            result[key] = _validate_dataclass(f"{sec}.{key}", val, types[key], source)
            continue
        if allowed and val is False and "no" in allowed:  # YAML 1.1 reads a bare `no` as false
            val = "no"
        result[key] = _coerce(val, types[key], f"{sec}.{key}", source)
        if allowed and result[key] not in allowed:
            raise ConfigError(f"{source}: '{sec}.{key}' = {val!r}; expected one of {allowed}", f"{sec}.{key}")
    return result


def validate_component(kind: str, values: dict, where: str) -> dict:
    """Validate ``{type: name, **kwargs}`` against the registered class's constructor."""
    from vistok.registry import lookup

    sec = where.rsplit(": ", 1)[-1]
    if not isinstance(values, dict) or "type" not in values:
        raise ConfigError(f"{where}: expected a mapping with a 'type' key naming the {kind}", f"{sec}.type")
    try:
        cls = lookup(kind, values["type"])
    except KeyError as e:
        raise ConfigError(f"{where}.type: {e.args[0]}", f"{sec}.type") from None
    params, hints = _init_params(cls)
    result = {"type": values["type"]}
    for key, val in values.items():
        if key == "type":
            continue
        if key not in params or (kind == "dataset" and key == "split"):
            expected = [p for p in params if not (kind == "dataset" and p == "split")]
            raise ConfigError(f"{where}: unknown key '{key}' for {kind} '{values['type']}'; expected one of: "
                              f"{', '.join(expected)}", f"{sec}.{key}")
        result[key] = _coerce(val, hints.get(key, Any), f"{sec}.{key}", where.rsplit(": ", 1)[0])
    missing = [n for n, p in params.items() if p.default is p.empty and n not in result and n != "split"]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing} for {kind} '{values['type']}'")
    return result


def _init_params(cls) -> tuple[dict, dict]:
    """Constructor parameters and their type hints; a ``**kwargs`` passes on to the parent class's."""
    params, hints = {}, {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        sig = inspect.signature(init)
        hints = {**typing.get_type_hints(init, include_extras=True), **hints}
        for n, p in sig.parameters.items():
            if n != "self" and p.kind is p.POSITIONAL_OR_KEYWORD:
                params.setdefault(n, p)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return params, hints


def _coerce(val, typ, key: str, source: str):
    """Check ``val`` against a type annotation (and its ``vistok.schema`` ranges); ints are accepted for floats,
    lists for tuples; every float must be finite."""
    if isinstance(val, (DictConfig, ListConfig)):
        val = OmegaConf.to_container(val, resolve=True)
    if typing.get_origin(typ) is typing.Annotated:
        base, *meta = typing.get_args(typ)
        for m in meta:  # a list of the wrong length is named as such before its items are checked
            if isinstance(m, Length) and isinstance(val, (list, tuple)) and not m.ok(val):
                raise ConfigError(f"{source}: '{key}' = {val!r}; expected {m.describe()}", key)
        val = _coerce(val, base, key, source)
        for m in meta:
            if isinstance(m, Component) and isinstance(val, dict):
                val = validate_component(m.kind, val, f"{source}: {key}")
            if isinstance(m, (Range, Length, Choices)) and val is not None and not m.ok(val):
                what = "a value in " + m.describe() if isinstance(m, Range) else m.describe()
                raise ConfigError(f"{source}: '{key}' = {val!r}; expected {what}", key)
        return val
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if typ is Any or typ is inspect.Parameter.empty:
        return val
    if origin is typing.Union or origin is types.UnionType:
        if val is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(val, a, key, source)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{source}: '{key}' = {val!r}; expected {_typename(typ)}", key)
    if origin in (list, tuple) or typ in (list, tuple):
        if not isinstance(val, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' = {val!r}; expected a list", key)
        if args and args[-1] is not Ellipsis and origin is tuple and len(args) != len(val):
            raise ConfigError(f"{source}: '{key}' = {val!r}; expected {len(args)} items", key)
        item = args[0] if args else Any
        return [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(val)]
    if origin is dict or typ is dict:
        if not isinstance(val, dict):
            raise ConfigError(f"{source}: '{key}' = {val!r}; expected a mapping", key)
        return val
    if typ is float:
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise ConfigError(f"{source}: '{key}' = {val!r}; expected a number", key)
        if not is_finite(float(val)):
            raise ConfigError(f"{source}: '{key}' = {val!r}; expected a finite number", key)
        return float(val)
    simple = {int: "an integer", bool: "true or false", str: "a string"}
    if typ in simple:
        if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
            raise ConfigError(f"{source}: '{key}' = {val!r}; expected {simple[typ]}", key)
    return val


def _typename(typ) -> str:
    return getattr(typ, "__name__", str(typ).replace("typing.", ""))


def save_config(cfg: DictConfig, path: str) -> None:
    from vistok.io import atomic_write_text

    from vistok.version import __version__

    stamped = OmegaConf.merge(cfg, {"vistok_version": __version__, "format_version": CONFIG_FORMAT})
    atomic_write_text(path, OmegaConf.to_yaml(stamped))


def build(kind: str, section, **extra):
    """Instantiate the registered class named by ``section.type`` with its keyword arguments."""
    from vistok.registry import lookup

    values = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    cls = lookup(kind, values.pop("type"))
    return cls(**values, **extra)
