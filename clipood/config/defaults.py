"""The settings a benchmark decides: ``None`` in a composed config resolved to the benchmark's defaults, once,
when the recipe composes its config (negatives on the mini world vs NegLabel's rule on real benchmarks, the
metric convention of the ``openood-*`` suites)."""
from __future__ import annotations

__all__ = ["MINI_NEGATIVES", "NEGLABEL_NEGATIVES", "resolve_defaults"]

MINI_NEGATIVES = {"num": 40, "id_template": "a photo of a {}.", "noun_template": "a photo of a {}.",
                  "adj_template": "a {} texture."}
NEGLABEL_NEGATIVES = {"num": None, "id_template": "the nice {}.", "noun_template": "the nice {}.",
                      "adj_template": "This is a {} photo."}


def resolve_defaults(cfg) -> dict:
    """A copy of ``cfg`` with its ``None`` settings resolved to the benchmark's defaults (``cfg`` is not changed):
    the negative-label settings, and the metric convention (openood for the ``openood-*`` suites, else
    hendrycks). The recipe resolves its config once, when it is composed."""
    from ..metrics import default_convention  # not via clipood.suites: no torch before the config is checked

    src = MINI_NEGATIVES if cfg["benchmark"] == "mini" else NEGLABEL_NEGATIVES
    ev = dict(cfg["eval"])
    if ev.get("convention") is None:
        ev["convention"] = default_convention(cfg["benchmark"])
    negatives = {**cfg["negatives"], **{k: v for k, v in src.items() if cfg["negatives"].get(k) is None}}
    return {**cfg, "eval": ev, "negatives": negatives}
