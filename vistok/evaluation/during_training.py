"""Generation metrics during training (as MAR computes FID inside its loop): ``train.gen_eval: {task, every,
num_samples}`` names a registered evaluation task with a ``score_generator`` method. ``train.py`` builds the
callback here and hands it to the trainer, which never imports this layer."""
from __future__ import annotations

import torch

from vistok.registry import lookup


def callbacks_for(cfg) -> list:
    """The callbacks ``cfg`` asks for (``[]`` when ``train.gen_eval.task`` is empty)."""
    g = cfg.train.gen_eval
    if not g.task or not g.every:
        return []
    try:
        task = lookup("task", g.task)
    except KeyError as e:
        raise ValueError(f"train.gen_eval.task: {e.args[0]}") from None
    if not hasattr(task, "score_generator"):
        raise ValueError(f"train.gen_eval.task '{g.task}' cannot score a generator during training (tasks that can: "
                         f"those with a score_generator method, e.g. classify, geneval)")
    return [GenerationMetric(task, g.every, g.num_samples, cfg)]


class GenerationMetric:
    """Every ``every`` steps and at the last one, ``num_samples`` images drawn by the generator (EMA weights,
    the config's sampling options), decoded by the training data's tokenizer, scored by ``task`` on the main
    process; logged as ``gen/<metric>``."""

    def __init__(self, task, every: int, num_samples: int, cfg):
        self.task, self.every, self.num_samples, self.cfg = task, every, num_samples, cfg

    def __call__(self, step: int, model, data, accelerator, last: bool = False) -> dict | None:
        if not (step % self.every == 0 or last) or not accelerator.is_main_process:
            return None
        if not hasattr(data, "decode"):
            raise ValueError(f"train.gen_eval: data '{self.cfg.data.type}' cannot decode codes to images (expected "
                             f"pre-tokenized data, data.type: tokens)")
        seed = self.cfg.sample.seed
        with torch.no_grad():
            found = self.task.score_generator(model, data.decode, self.num_samples, seed, self.cfg)
        return {f"gen/{k}": float(v) for k, v in found.items()}


def sample_in_batches(model, conditions: list, seed: int, gen_eval, key: str = "labels"):
    """The generator's codes for every condition (class labels or prompts), ``gen_eval.batch_size`` at a time,
    seeded, with ``gen_eval.options`` (checked against the generator's SamplingOptions)."""
    import dataclasses

    declared = getattr(type(model), "SamplingOptions", None)
    known = {f.name for f in dataclasses.fields(declared)} if declared is not None else set()
    options = dict(gen_eval.options)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"train.gen_eval.options {unknown}: not sampling options of {type(model).__name__} "
                         f"(expected some of {sorted(known)})")
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(0, len(conditions), gen_eval.batch_size):
        chunk = conditions[i:i + gen_eval.batch_size]
        if key == "labels":
            out.append(model.sample(torch.tensor(chunk, device=device), generator=g, **options))
        else:
            out.append(model.sample(prompts=chunk, generator=g, **options))
    return torch.cat(out)
