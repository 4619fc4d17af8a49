"""Pipelines over named components (``base``), registered by ``pipeline_type`` (``images``), and the output
writers of ``sample.py`` (``writers``). Nothing here is imported by ``import vistok``."""
