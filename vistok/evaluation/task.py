"""The evaluation-task interface of ``evaluate.py``: a task is registered where its evaluation lives
(``@register_task("recon")``), declares its flags and returns one JSON-able dict. ``evaluate.py`` builds one
sub-command per registered task and knows none of them by name."""
from __future__ import annotations


class Task:
    help: str = ""
    distributed: bool = False  # runs under torchrun / accelerate launch: ranks evaluate disjoint shards

    @classmethod
    def add_arguments(cls, parser) -> None:
        pass

    @classmethod
    def run(cls, args) -> dict:
        raise NotImplementedError
