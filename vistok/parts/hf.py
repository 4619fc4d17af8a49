"""Loading a transformers model class from a local folder, strictly: every weight the class needs must be in the
folder (transformers itself only logs missing weights and leaves them random)."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def quiet_transformers():
    """transformers' load reports and progress bars off while vistok checks the load itself."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


def load_hf_model(cls, folder: str, read_weights: bool, dtype: torch.dtype, key: str, subfolder: str = ""):
    """``cls.from_pretrained(folder)`` with no download and an error naming the part, folder, class and keys if any
    weight is missing or has the wrong shape; with ``read_weights=False`` the class built from the folder's config
    (random weights, to be overwritten by a saved vistok model's)."""
    sub = {"subfolder": subfolder} if subfolder else {}
    check_model_type(cls, folder, key)
    with quiet_transformers():
        if not read_weights:
            config = cls.config_class.from_pretrained(folder, local_files_only=True, **sub)
            return cls(config).to(dtype)
        try:
            model, info = cls.from_pretrained(folder, local_files_only=True, dtype=dtype, output_loading_info=True, **sub)
        except (OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"part '{key}': cannot load {cls.__name__} from '{folder}' ({e})") from e
    missing = list(info.get("missing_keys") or [])
    bad = list(info.get("mismatched_keys") or [])
    if missing or bad:
        raise ValueError(f"part '{key}': '{folder}' does not hold the weights of a {cls.__name__}: "
                         f"{len(missing)} missing {sorted(missing)[:5]}, mismatched {bad[:3]} "
                         f"(a folder of another model type, or a composite folder whose weights sit under a prefix)")
    return model


def check_model_type(cls, folder: str, key: str) -> None:
    """The folder's ``model_type`` must be the class's, or the composite it is part of (a CLIP folder for CLIP's
    vision or text tower)."""
    import json
    import os

    want = cls.config_class.model_type
    path = os.path.join(folder, "config.json")
    found = json.load(open(path, encoding="utf-8")).get("model_type") if os.path.isfile(path) else None
    accepted = {want, want.removesuffix("_vision_model").removesuffix("_text_model")}
    if found is not None and found not in accepted:
        raise ValueError(f"part '{key}': '{folder}' holds a '{found}' model; {cls.__name__} expects model_type "
                         f"{' or '.join(repr(a) for a in sorted(accepted))}")
