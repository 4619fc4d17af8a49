"""Command-line flags built from the sampling-options dataclasses the components declare.

A field ``top_k: NonNegInt = 0`` becomes ``--top-k`` (an int, range-checked); ``Literal[...]`` fields become
choices; a bool that defaults to true becomes its ``metadata["flag"]`` (or ``--no-<name>``); ``metadata["help"]``
is the help text. Two components declaring the same field share one flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from vistok.cli import ranged
from vistok.schema import Range


def _type_of(hint):
    """(base type, Range or None, choices or None) of a field's annotation."""
    rng = None
    if typing.get_origin(hint) is typing.Annotated:
        hint, *meta = typing.get_args(hint)
        rng = next((m for m in meta if isinstance(m, Range)), None)
    if typing.get_origin(hint) is typing.Literal:
        return str, None, list(typing.get_args(hint))
    return hint, rng, None


def option_fields(classes) -> list:
    seen, out = set(), []
    for cls in classes:
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            if f.name not in seen:
                seen.add(f.name)
                out.append((f, hints[f.name]))
    return out


def add_option_flags(parser: argparse.ArgumentParser, classes, title: str = "sampling options") -> None:
    group = parser.add_argument_group(title)
    for f, hint in option_fields(classes):
        base, rng, choices = _type_of(hint)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if base is bool:
            flag = f.metadata.get("flag") or (f"--no-{f.name.replace('_', '-')}" if default else f"--{f.name.replace('_', '-')}")
            group.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", help=help_text)
            continue
        kind = base if base in (int, float) else str
        typ = ranged(kind, rng.lo, rng.hi, rng.lo_open, rng.hi_open) if rng is not None else (
            ranged(kind) if kind in (int, float) else kind)
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=typ, choices=choices, default=default,
                           help=f"{help_text} (default: {default})".strip())


def collect(args, classes) -> dict:
    return {f.name: getattr(args, f.name) for f, _ in option_fields(classes)}
