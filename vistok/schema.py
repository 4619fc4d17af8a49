"""Ranges declared once, beside the setting they constrain, as ``typing.Annotated`` metadata.

    def __init__(self, dim: PosInt = 64, dropout: Prob = 0.0, betas: Pair[Decay] = (0.9, 0.99)): ...

``vistok.config`` reads the metadata when it validates a config (before any data is read) and names the key,
the value and the range in its error; ``tests/test_ranges.py`` walks every declared range. Every float
must be finite, whatever its range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated


@dataclass(frozen=True)
class Range:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)))

    def describe(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{'(' if self.lo_open or self.lo is None else '['}{lo}, {hi}{')' if self.hi_open or self.hi is None else ']'}"

    def outside(self) -> list:
        """Values just outside the range (for the generated tests)."""
        out = []
        if self.lo is not None:
            out.append(self.lo if self.lo_open else self.lo - 1)
        if self.hi is not None:
            out.append(self.hi if self.hi_open else self.hi + 1)
        return out


@dataclass(frozen=True)
class Length:
    n: int

    def ok(self, v) -> bool:
        return len(v) == self.n

    def describe(self) -> str:
        return f"{self.n} items"


def is_finite(v) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


PosInt = Annotated[int, Range(1)]
NonNegInt = Annotated[int, Range(0)]
PosFloat = Annotated[float, Range(0, lo_open=True)]
NonNegFloat = Annotated[float, Range(0)]
Prob = Annotated[float, Range(0, 1)]  # probabilities, ratios, dropout
Decay = Annotated[float, Range(0, 1, hi_open=True)]  # EMA decays, Adam betas
OpenUnit = Annotated[float, Range(0, 1, lo_open=True, hi_open=True)]
PosInts = list[PosInt]
NonNegInts = list[NonNegInt]


@dataclass(frozen=True)
class Choices:
    values: tuple

    def ok(self, v) -> bool:
        return v in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


def OneOf(*values):  # noqa: N802 (reads as a type)
    """One of the given strings (or, given ints, one of those ints)."""
    kind = int if values and all(isinstance(v, int) for v in values) else str
    return Annotated[kind, Choices(tuple(values))]


@dataclass(frozen=True)
class Component:
    """A nested ``{type: name, ...}`` entry of a registered kind (checked against that class's constructor)."""
    kind: str


PartSpec = Annotated[dict | None, Component("part")]  # a pretrained part (vistok.parts): {type, path, ...}


def Triple(t):  # noqa: N802 (reads as a type)
    return Annotated[list[t], Length(3)]


def Pair(t):  # noqa: N802
    return Annotated[list[t], Length(2)]
