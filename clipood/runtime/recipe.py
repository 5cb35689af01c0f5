"""Helpers for recipe scripts: clean error exits, logging, seeding."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

from ..errors import ClipoodError


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
    """Threads for the next stage of a run (:mod:`clipood.runtime.threads`: ``train`` 1, ``encode`` the free cores,
    ``CLIPOOD_THREADS`` fixes both). Called when a stage starts its work, so that a config error exits before
    torch is even imported."""
    from .threads import use

    return use(stage, heavy=heavy)


def unexpected_error_line(e: BaseException) -> str:
    """One line for an exception that is not a :class:`ClipoodError`: its type, its message's first line and
    the innermost frame of this project (``CLIPOOD_TRACEBACK=1`` prints the whole traceback instead)."""
    import traceback

    # the folder holding the core, the methods and the recipes (this file is clipood/runtime/recipe.py)
    project = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename).startswith(project)
              and "site-packages" not in f.filename]
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return (f"unexpected {type(e).__name__}{where}: {first} (this is a bug or an unchecked input; rerun with "
            f"CLIPOOD_TRACEBACK=1 for the traceback and report it)")


def run(main: Callable[[list[str]], Any]) -> None:
    """Run a recipe's main. A ClipoodError becomes one line on stderr and exit status 2; any other exception
    one line too (exit status 1, see :func:`unexpected_error_line`). Either way the run's output-folder lock is
    released and a folder it created holding nothing else is removed."""
    from .run_lock import release_output_dirs

    try:
        main(sys.argv[1:])
    except ClipoodError as e:
        release_output_dirs(failed=True)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        release_output_dirs(failed=True)
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback, no lock left behind
        release_output_dirs(failed=True)
        if os.environ.get("CLIPOOD_TRACEBACK"):
            raise
        print(f"error: {unexpected_error_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None
