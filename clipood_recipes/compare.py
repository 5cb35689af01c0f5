"""The comparison of methods (paper Tab. 2-4 layout): several trained adapters after one setup, one table.

Like the ablation, every variant is a set of overrides of the training config that trains into
``output_dir/<variant>`` and reuses the image-feature and crop caches. A variant named in ``stack_on`` trains on
the trained adapter of another variant (``base_checkpoint`` = that variant's folder): KR-NFT on LoCoOp or LAPT,
NegPT's second stage on CoOp. Everything that can be checked is checked before any work; stacked variants are
checked again once their base has trained.
"""
from __future__ import annotations

import re
from pathlib import Path

from clipood.errors import ClipoodError

from .settings import CompareSettings

__all__ = ["CompareSettings", "plan_variants", "variant_dir", "ZERO_SHOT"]


def variant_dir(cfg: dict, name: str) -> str:
    return str(Path(cfg["output_dir"]) / re.sub(r"[^A-Za-z0-9_.-]+", "_", name))


def plan_variants(cfg: dict) -> list[tuple[str, dict]]:
    """``[(name, overrides)]`` in training order, with ``base_checkpoint`` filled in for stacked variants.

    Raises ClipoodError when ``stack_on`` names an unknown variant or one that trains later.
    """
    names = list(cfg["variants"])
    if not names:
        raise ClipoodError("no variants: pass --config recipes/configs/compare_mini.yaml or set variants")
    plan = []
    for i, name in enumerate(names):
        overrides = {**cfg["variants"][name], "method_name": name, "output_dir": variant_dir(cfg, name)}
        base = cfg["stack_on"].get(name)
        if base is not None:
            if base not in names[:i]:
                raise ClipoodError(f"stack_on: variant '{name}' stacks on '{base}', which is not a variant trained "
                                   f"before it ({', '.join(names[:i]) or 'none'})")
            overrides["base_checkpoint"] = variant_dir(cfg, base)
        plan.append((name, overrides))
    unknown = sorted(set(cfg["stack_on"]) - set(names))
    if unknown:
        raise ClipoodError(f"stack_on names {', '.join(unknown)}, which are not variants")
    det = cfg.get("detector")
    if det is not None and det not in names and det != ZERO_SHOT:
        raise ClipoodError(f"detector={det!r} is not a variant; choose one of: {', '.join(names)} or "
                           f"{ZERO_SHOT!r}")
    return plan


#: the row name of the setup's zero-shot method (the detector when no trained variant is chosen)
ZERO_SHOT = "NegLabel (zero-shot)"
