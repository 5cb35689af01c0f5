"""The comparison's rows of the seed methods that have recipes of their own (``extra=[clipn, zoc, finetune]`` of
recipes/compare.py): CLIPN (CTW, ATD), ZOC and the fine-tuned encoder's post-hoc scores, next to the variants in
the same results.json / results.md tables.

Each extra is its recipe (:mod:`clipood_recipes.clipn`, ``zoc``, ``finetune``) with the comparison's settings
(its schema's keys of the comparison's config, i.e. the shared run settings and the ``clipn`` / ``zoc`` /
``finetune`` section) and ``output_dir/<extra>``. It runs on the comparison's setup (accelerator, benchmark,
cached image features) instead of its own, so its rows are the ones ``accelerate launch recipes/<extra>.py`` gives
on the same settings; the zero-shot rows are the comparison's. Settings are checked before any work."""
from __future__ import annotations

import time
from collections import defaultdict

from clipood.errors import ClipoodError, unknown

__all__ = ["EXTRAS", "plan_extras", "start_extras", "run_extras"]

#: extra name → the recipe's class (module, name)
EXTRAS = {"clipn": ("clipood_recipes.clipn", "CLIPNRecipe"), "zoc": ("clipood_recipes.zoc", "ZOCRecipe"),
          "finetune": ("clipood_recipes.finetune", "FinetuneRecipe")}


def plan_extras(cfg: dict) -> list[tuple[str, dict]]:
    """``[(extra, its recipe's config)]`` of ``cfg['extra']`` in the order given, composed and checked like a
    command line (before torch is imported)."""
    from .compare import variant_dir
    from .configure import compose_variant
    from .seed_settings import SEED_RECIPE_SETTINGS

    names = list(cfg.get("extra") or [])
    for n in names:
        if n not in EXTRAS:
            raise unknown("extra", n, EXTRAS)
    if len(set(names)) < len(names):
        raise ClipoodError(f"extra={names} names a method twice; give each of {', '.join(EXTRAS)} once")
    taken = {variant_dir(cfg, v) for v in cfg.get("variants") or {}}
    plan = []
    for n in names:
        out = variant_dir(cfg, n)
        if out in taken:
            raise ClipoodError(f"extra '{n}' writes to {out}, which a variant of the same name uses; rename that "
                               f"variant")
        plan.append((n, compose_variant(SEED_RECIPE_SETTINGS[n], cfg, {"output_dir": out}, f"extra '{n}'")))
    return plan


def start_extras(plan: list[tuple[str, dict]]) -> list[tuple[str, object]]:
    """The recipe objects of the plan, their own checks done (before the comparison's setup)."""
    import importlib

    started = []
    for name, cfg in plan:
        module, cls = EXTRAS[name]
        recipe = getattr(importlib.import_module(module), cls)(cfg)
        recipe.check()
        started.append((name, recipe))
    return started


def run_extras(host, started: list[tuple[str, object]], step: int = 0, total: int = 0) -> None:
    """Train (CLIPN, fine-tuning) and evaluate each started recipe on ``host``'s setup; their rows, raw scores
    and notes join ``host``'s. ``step`` / ``total``: the progress line's numbering after the variants."""
    from clipood.runtime.recipe import seed_everything

    for i, (name, r) in enumerate(started, step + 1):
        r.accelerator, r.bench, r.splits = host.accelerator, host.bench, host.splits
        r.rows, r.raw, r.notes = [], defaultdict(dict), []
        if host.accelerator.is_main_process:
            print(f"[{i}/{total or len(started)}] {name}: training into {r.cfg['output_dir']}", flush=True)
        start, cpu = time.time(), time.process_time()
        seed_everything(r.cfg["seed"])  # as its own recipe's setup
        if hasattr(r, "train"):
            r.train()
        r.evaluate()
        host.rows += r.rows
        for split, by_method in r.raw.items():
            host.raw[split].update(by_method)
        host.notes += r.notes + [f"{name} (extra): trained and evaluated in {time.time() - start:.0f}s "
                                 f"({time.process_time() - cpu:.0f}s CPU)"]
