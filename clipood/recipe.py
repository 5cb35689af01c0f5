"""Helpers for recipe scripts: clean error exits, logging, seeding."""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from .errors import ClipoodError


def setup_logging(is_main: bool = True) -> None:
    # open_clip logs chatter through the root logger: keep the root at WARNING, clipood's own logger at INFO
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("clipood").setLevel(logging.INFO if is_main else logging.WARNING)
    for noisy in ("accelerate", "open_clip", "datasets", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_cpu_threads(stage: str = "encode", *, heavy: bool = False) -> int:
    """Threads for the next stage of a run (:mod:`clipood.threads`: ``train`` 1, ``encode`` the free cores,
    ``CLIPOOD_THREADS`` fixes both). Called when a stage starts its work, so that a config error exits before
    torch is even imported."""
    from .threads import use

    return use(stage, heavy=heavy)


def run(main: Callable[[list[str]], Any]) -> None:
    """Run a recipe's main; a ClipoodError becomes one line on stderr and exit status 2 (no traceback)."""
    from .run_lock import release_output_dirs

    try:
        main(sys.argv[1:])
    except ClipoodError as e:
        release_output_dirs(failed=True)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        raise SystemExit(130) from None
