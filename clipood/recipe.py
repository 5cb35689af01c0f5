"""Helpers for recipe scripts: config from argv, clean error exits, logging, seeding."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Mapping

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


def config_from_argv(defaults: Mapping, argv=None, presets: Mapping | None = None) -> dict:
    from .config import build_config, split_config_arg

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        import yaml

        print(sys.modules["__main__"].__doc__ or "")
        print("Defaults (override with key=value):\n")
        print(yaml.safe_dump(dict(defaults), sort_keys=False))
        if presets:
            print("Presets (preset=NAME):", ", ".join(presets))
        raise SystemExit(0)
    path, rest = split_config_arg(argv)
    return build_config(defaults, rest, presets=presets, config_file=path)


def run(main: Callable[[list[str]], Any]) -> None:
    """Run a recipe's main; a ClipoodError becomes one line on stderr and exit status 2 (no traceback)."""
    if "OMP_NUM_THREADS" in os.environ and os.environ["OMP_NUM_THREADS"] == "1" and "CLIPOOD_THREADS" not in os.environ:
        # accelerate launch sets OMP_NUM_THREADS=1; on a CPU-only single-process run use the cores we have
        import torch

        if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            torch.set_num_threads(max(1, os.cpu_count() or 1))
    elif os.environ.get("CLIPOOD_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["CLIPOOD_THREADS"]))
    try:
        main(sys.argv[1:])
    except ClipoodError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        raise SystemExit(130) from None
