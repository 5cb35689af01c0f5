"""``eval.scores``: a list of scores evaluated in one run over the cached features, one row per score.

    clipood eval eval.scores=[neglabel,mcm,msp,gen,energy,react,knn,mds,vim,odin]

Names of :data:`clipood.scores.SCORES` (``neglabel``, ``mcm``, ``energy``, ``max_logit``, ``glmcm``) are the
evaluation's own scores on the method's logits (:class:`clipood.evaluation.runner.ScoredMethod` rows); every
other name is a :mod:`clipood.posthoc` score (``clipood scores`` lists them). For each method:

* zero-shot CLIP gets every requested score. Fitted scores (KNN, MDS, RMDS, ViM, ReAct, DICE) are fitted on
  the **fit data**: ``eval.fit_data`` (a dataset spec) or else the benchmark's training pool, ``eval.fit_shots``
  images per class (None = the run's ``shots``, 16 for a zero-shot run; 0 = all). Statistics are cached by
  content key under ``<cache>/posthoc/<key>.safetensors`` (written to a temporary name, then renamed): a second
  identical run fits nothing. Pre-projection features are encoded only when a score reads them, and cached like
  the image features (``extract_features(pre_projection=True)``). ODIN reads the images (it perturbs pixels
  through the frozen encoder): the one score that encodes on every run; results.md says so.
* a trained adapter gets the scores of its logits (``msp``, ``max_logit``, ``energy``, ``gen`` and the
  evaluation's own). The feature scores read the frozen image features (KNN, MDS, RMDS do not depend on the
  adapter) or CLIP's own head on pre-projection features (ReAct, ASH, DICE, GradNorm, ViM, ODIN), which a tuned
  adapter does not have: those are zero-shot rows only, and results.md says so.

Rows follow the evaluation's schema (one per OOD set, OpenOOD's near / far groups for ``openood-*`` suites, and
the average); the row name is ``<Score> (<method>)``. The default ``eval.scores=[]`` adds nothing.
"""
from __future__ import annotations

import logging

import torch

from ..errors import ClipoodError, unknown
from ..config.settings import EvalSettings
from ..metrics import ood_metrics
from ..scores import score_temperature
from .posthoc_run import PosthocRun, make_score, score_options
from .protocol import METRIC_KEYS, SplitFeatures, zero_shot_logits
from .runner import ScoredMethod, evaluate_detectors

log = logging.getLogger("clipood")

__all__ = ["DISPLAY", "check_scores", "evaluate_scores", "requested", "score_lines"]

DISPLAY = {"neglabel": "NegLabel", "mcm": "MCM", "energy": "Energy", "max_logit": "MaxLogit", "glmcm": "GL-MCM",
           "msp": "MSP", "gen": "GEN", "eoe": "EOE", "odin": "ODIN", "gradnorm": "GradNorm", "react": "ReAct",
           "ash_p": "ASH-P", "ash_b": "ASH-B", "ash_s": "ASH-S", "dice": "DICE", "vim": "ViM", "knn": "KNN",
           "mds": "MDS", "rmds": "RMDS"}


def _own(name: str) -> bool:
    from ..scores import SCORES

    return name in SCORES


def requested(ev: EvalSettings) -> list[str]:
    """The canonical names in ``eval.scores`` (aliases resolved, repeats dropped, order kept)."""
    from ..posthoc.registry import get_score

    names = ev.scores or []
    if isinstance(names, str):
        names = [names]
    out = []
    for n in names:
        canon = n if _own(n) else get_score(n).name if isinstance(n, str) else n
        if canon not in out:
            out.append(canon)
    return out


def check_scores(ev: EvalSettings) -> None:
    """Every name and option of ``eval.scores`` / ``eval.score_options`` checked before any model work."""
    from ..posthoc.registry import _BY_NAME
    from ..scores import SCORES

    names = ev.scores or []
    if isinstance(names, str):
        names = [names]
    for n in names:
        if not isinstance(n, str) or (n not in SCORES and n not in _BY_NAME):
            raise unknown("score in eval.scores", str(n), {**SCORES, **_BY_NAME})
    for name in requested(ev):
        if _own(name):
            continue
        opts = score_options(ev, name)
        make_score(name, opts, envisioned=torch.zeros(1, 1) if "label_file" in opts else None)
        if name == "eoe" and not opts.get("label_file"):
            raise ClipoodError("eval.scores has eoe, which needs the envisioned-label file: set "
                               "eval.score_options.eoe.label_file=FILE (docs/methods.md gives the LLM prompts)")
        if opts.get("label_file"):
            from pathlib import Path

            if not Path(opts["label_file"]).is_file():
                raise ClipoodError(f"eval.score_options.{name}.label_file: {opts['label_file']} is not a file")


def evaluate_scores(run: PosthocRun, method: ScoredMethod | None, splits: list[SplitFeatures], ev: EvalSettings,
                    present: set[str]) -> tuple[list[dict], list[str]]:
    """Rows of ``eval.scores`` for zero-shot CLIP (``method=None``) or a trained method; rows already
    ``present`` (by name) are not repeated."""
    names = requested(ev)
    if not names:
        return [], []
    tag = "zero-shot" if method is None else method.name
    logits_fn = zero_shot_logits if method is None else method.logits_fn
    rows, notes = [], []
    for name in names:
        row = f"{DISPLAY.get(name, name)} ({tag})"
        if row in present:
            continue
        if _own(name):  # the evaluation's own score, on this method's logits
            t = score_temperature(name, ev.logit_scale)
            rows += evaluate_detectors([ScoredMethod(row, logits_fn, name, t)], splits, ev)[0]
            continue
        from ..posthoc.registry import get_score

        if method is not None and get_score(name).inputs != ("logits",):
            notes.append(f"{DISPLAY[name]}: zero-shot only (it reads CLIP's image features or its own head, not a "
                         f"tuned method's logits)")
            continue
        score = run.score(name)
        groups: dict[str, list[SplitFeatures]] = {}
        for sf in splits:
            groups.setdefault(sf.split.name, []).append(sf)
        for split, members in groups.items():
            per = [_split_rows(row, run.score_split(score, sf, logits_fn), sf, ev.convention) for sf in members]
            rows += per[0] if len(per) == 1 else _collapsed(row, split, members, per)
    return rows, notes + (run.notes if method is None else [])


def _collapsed(method: str, split: str, members: list[SplitFeatures], per: list[list[dict]]) -> list[dict]:
    """Several ID datasets in one split (``runner.evaluate_detectors``' layout): one row per ID dataset (its
    average over its own OOD sets), then their mean."""
    rows = [dict(r[-1], dataset=next(iter(sf.split.id_sets))) for sf, r in zip(members, per)]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in (*METRIC_KEYS, "id_acc")}
    return rows + [{"method": method, "split": split, "dataset": "average", **mean}]


def _split_rows(method: str, scored: dict, sf: SplitFeatures, convention: str | None) -> list[dict]:
    """The evaluation's rows (``protocol.evaluate_split``'s layout) from precomputed scores."""
    convention = convention or "hendrycks"
    ood = {n: scored[f"ood/{n}"][0] for n in sf.ood_feats}
    rows, group_rows = [], []
    single = len(sf.id_feats) == 1
    for id_name, f in sf.id_feats.items():
        s, preds = scored[f"id/{id_name}"]
        acc = int((preds == f["labels"]).sum()) / max(1, int(f["labels"].numel()))
        per = {o: ood_metrics(s, x, convention=convention) for o, x in ood.items()}
        if single:
            rows += [{"method": method, "split": sf.split.name, "dataset": o, **m, "id_acc": acc} for o, m in per.items()]
            for g, members in (sf.split.groups or {}).items():
                ms = [per[o] for o in members if o in per]
                if ms:
                    group_rows.append({"method": method, "split": sf.split.name, "dataset": g, "id_acc": acc,
                                       **{k: sum(m[k] for m in ms) / len(ms) for k in METRIC_KEYS}})
        else:
            rows.append({"method": method, "split": sf.split.name, "dataset": id_name, "id_acc": acc,
                         **{k: sum(m[k] for m in per.values()) / len(per) for k in METRIC_KEYS}})
    avg = {k: sum(r[k] for r in rows) / len(rows) for k in (*METRIC_KEYS, "id_acc")}
    return rows + group_rows + [{"method": method, "split": sf.split.name, "dataset": "average", **avg}]


def score_lines() -> list[str]:
    """``clipood scores``: one line per score with its parameters, then what it needs (indented)."""
    import inspect

    from ..posthoc.registry import list_scores
    from ..scores import SCORES

    lines = ["evaluation scores (on a method's logits; eval.score or eval.scores):"]
    for name, fn in SCORES.items():
        params = {p.name: p.default for p in inspect.signature(fn).parameters.values()
                  if p.default is not p.empty and p.name not in ("local_logits",)}
        lines.append(f"  {name}: {', '.join(f'{k}={v}' for k, v in params.items()) or 'no parameters'}")
    lines.append("post-hoc scores (clipood.posthoc; eval.scores, eval.score_options.NAME.PARAM=V):")
    for s in list_scores():
        params = {**s.params, **s.fit_params}
        needs = [k for k, on in (("fitted statistics (" + (s.fit.__name__ if s.fit else "") + ")", s.needs_fit),
                                 ("pre-projection features", s.pre_projection), ("a linear head", s.linear_head),
                                 ("the images (not the feature cache)", s.pixels),
                                 ("a label file (label_file)", s.label_file)) if on]
        alias = f" (alias {', '.join(s.aliases)})" if s.aliases else ""
        lines.append(f"  {s.name}{alias}: {', '.join(f'{k}={v}' for k, v in params.items()) or 'no parameters'}")
        lines.append(f"      reads {', '.join(s.inputs)}; needs {', '.join(needs) or 'logits only'}; OpenOOD "
                     f"{s.reference}")
    return lines
