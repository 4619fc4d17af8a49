"""Logging set-up."""
from __future__ import annotations

import logging


def setup_logging(is_main: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if is_main else logging.WARNING)
    # accelerate's per-file INFO lines (and its "sampler state saved" even when none is written) drown ours
    logging.getLogger("accelerate").setLevel(logging.WARNING)


