"""Dataset construction from a config section."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from vistok.config import build


def build_dataset(section, split: str, **defaults):
    """Instantiate ``data.type`` with its config arguments for one split (``train`` or ``test``). ``defaults``
    fill arguments the class takes and the config leaves empty (the trainer's ``cache_dir=<run>/token_cache``)."""
    from vistok.config import _init_params
    from vistok.registry import lookup

    section = dict(OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section)
    params, _ = _init_params(lookup("dataset", section["type"]))
    section.update({k: v for k, v in defaults.items() if k in params and not section.get(k)})
    dataset = build("dataset", section, split=split)
    if len(dataset) == 0:
        raise ValueError(f"dataset '{section['type']}' split '{split}' is empty ({dataset!r})")
    return dataset


