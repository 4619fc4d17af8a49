"""Datasets. Every item is a dict: ``image`` (float tensor C,H,W in [-1, 1]), ``label`` (int, -1 when
none) and, where the data has text, ``caption`` (str)."""
from vistok.data.base import build_dataset  # noqa: F401
