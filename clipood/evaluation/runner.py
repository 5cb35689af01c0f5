"""Evaluating scored methods: a :class:`ScoredMethod` is a named logits function plus a score (one row name of the
results tables; the deployable detector is :class:`clipood.Detector`). Every method is evaluated on every split
(one row per method × split × dataset, paper Tab. 1-3) and its raw scores are kept for the plots. Zero-shot
NegLabel / MCM are scored methods on the frozen label features."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..config.settings import EvalSettings
from .protocol import SplitFeatures, evaluate_split

__all__ = ["ScoredMethod", "evaluate_detectors", "zero_shot_detectors"]


@dataclass
class ScoredMethod:
    """A method to evaluate: a name, a function giving cosine logits (n×K) for a batch of a split's
    features (``image_features``, and ``local_features`` where encoded) and the score (Eq. 2 NegLabel, MCM, ...)
    with its temperature."""

    name: str
    logits_fn: Callable[[Mapping[str, torch.Tensor], SplitFeatures], torch.Tensor]
    score: str = "neglabel"
    temperature: float = 1.0


def evaluate_detectors(methods: list[ScoredMethod], sfs: list[SplitFeatures], ev: EvalSettings
                       ) -> tuple[list[dict], dict]:
    """Rows for every method × split, and raw scores ``{split: {method: {set: scores}}}`` for the plots, with
    the ``eval`` settings (logit scale, grouping, metric convention)."""
    from .protocol import METRIC_KEYS

    rows, raw = [], {}
    reuse: dict = {}  # OOD scores of a method under a label set, reused by a later split with the same ones
    groups: dict[str, list[SplitFeatures]] = {}
    for sf in sfs:
        groups.setdefault(sf.split.name, []).append(sf)
    for split, members in groups.items():
        raw[split] = {m.name: {} for m in methods}
        for m in methods:
            collapsed = []
            for sf in members:
                r, sc = evaluate_split(m.name, m.logits_fn, sf, score=m.score, logit_scale=ev.logit_scale,
                                       groups=ev.groups, temperature=m.temperature,
                                       convention=ev.convention or "hendrycks",
                                       remainder=ev.group_remainder or "drop", lambda_local=float(ev.lambda_local),
                                       reuse=reuse)
                if len(members) == 1:
                    rows += r
                    raw[split][m.name].update({k: v.numpy() for k, v in sc.items()})
                else:
                    # several ID datasets in one split (CIFAR-10, CIFAR-100, ... as in Tab. 2): one row each,
                    # averaged over that dataset's own OOD sets, then the average over datasets
                    ident = next(iter(sf.split.id_sets))
                    avg = dict(r[-1], dataset=ident)
                    collapsed.append(avg)
                    raw[split][m.name].update({k if k.startswith("id/") else f"ood/{ident}:{k[4:]}": v.numpy()
                                               for k, v in sc.items()})
            if collapsed:
                mean = {k: sum(c[k] for c in collapsed) / len(collapsed) for k in (*METRIC_KEYS, "id_acc")}
                rows += collapsed + [{"method": m.name, "split": split, "dataset": "average", **mean}]
    return rows, raw


def zero_shot_detectors(ev: EvalSettings) -> list[ScoredMethod]:
    """Zero-shot NegLabel (always), the configured score's zero-shot baseline, and MCM where enabled."""
    from ..scores import score_temperature
    from .protocol import zero_shot_local_logits, zero_shot_logits

    def method(name, logits_fn, score):
        return ScoredMethod(name, logits_fn, score, score_temperature(score, ev.logit_scale))

    methods = [method("NegLabel (zero-shot)", zero_shot_logits, "neglabel")]
    score = ev.score
    if score == "glmcm":  # GL-MCM: global + best patch (needs patch features)
        methods.append(method("GL-MCM (zero-shot)", zero_shot_local_logits, score))
    elif score not in ("neglabel", "mcm", "adapter"):  # the tuned methods' score gets its zero-shot baseline too
        methods.append(method(f"{score} (zero-shot)", zero_shot_logits, score))
    if ev.mcm:
        methods.insert(0, method("MCM (zero-shot)", zero_shot_logits, "mcm"))
    return methods
