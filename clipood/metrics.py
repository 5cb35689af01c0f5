"""OOD detection metrics (AUROC, FPR@95, AUPR-In, AUPR-Out) in two named conventions.

Scores follow clipood's convention: **higher = more in-distribution**. All metrics are fractions in [0, 1].

Two conventions are in use in the literature (see ``docs/metrics.md``); :func:`ood_metrics` names the one it
reports and implements both with numpy only (sklearn is a test dependency, used to check these numbers):

``"hendrycks"`` (MCM, LoCoOp, NegLabel, NegPrompt, ...): ID is the positive class.
    * AUROC = ``roc_auc_score(is_id, score)``.
    * AUPR-In = ``average_precision_score(is_id, score)``; AUPR-Out = ``average_precision_score(is_ood, -score)``
      (average precision: the step sum ``Σ (R_k − R_{k−1}) P_k``).
    * FPR@95 = ``fpr_and_fdr_at_recall`` of the Outlier-Exposure / MCM code: over the distinct score
      thresholds t (a sample is accepted as ID when ``score >= t``), take the one whose ID recall is nearest to
      0.95 — it may fall below 0.95 — and report the share of OOD samples accepted at t. Tie-break (exactly the
      reference's ``argmin`` over its reversed arrays): only thresholds at or above the highest threshold that
      accepts every ID sample are candidates; the distance is the float64 value ``|tp / n_id − 0.95|``; among
      equal distances the *lowest* threshold wins (so the higher recall, and within equal recall the larger
      OOD count).

``"openood"`` (OpenOOD v1.5, the official KR-NFT code): OOD is the positive class, scored by ``−score``.
    * ``fpr, tpr, _ = roc_curve(is_ood, -score)`` (sklearn's default ``drop_intermediate=True``, reproduced
      here because it changes which point the argmax below lands on); FPR@95 = ``fpr[argmax(tpr >= 0.95)]``:
      the share of **ID** samples flagged as OOD when 95% of OOD is caught.
    * AUROC = ``auc(fpr, tpr)`` (equal to the hendrycks AUROC up to rounding).
    * AUPR-In = ``auc(recall, precision)`` of ``precision_recall_curve(is_id, score)``, AUPR-Out likewise with
      ``(is_ood, -score)``: trapezoid rule over the curve including its final (recall 0, precision 1) point
      (``drop_intermediate=False``, sklearn's default for that function).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from clipood.errors import ClipoodError, unknown

__all__ = ["CONVENTIONS", "ood_metrics", "accuracy", "summarize"]

CONVENTIONS = ("hendrycks", "openood")


def default_convention(benchmark: str) -> str:
    """The metric convention a benchmark is reported in by default: ``openood`` for the ``openood-*`` suites
    (comparable with OpenOOD v1.5 tables), else ``hendrycks`` (the CLIP-OOD papers, KR-NFT's tables)."""
    return "openood" if str(benchmark).lower().startswith("openood") else "hendrycks"
RECALL_LEVEL = 0.95


def _as_numpy(x: Any, name: str) -> np.ndarray:
    """Array-like (list, numpy, torch on any device/dtype) → numpy array without copying data needlessly."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor; torch is not imported here on purpose
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.dtype.itemsize < 4:  # float16 / bfloat16 have no numpy view
            x = x.float()
        x = x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ClipoodError(f"{name} cannot be read as an array ({e}); pass a 1-D numpy array or tensor") from e


def _check_scores(x: Any, name: str) -> np.ndarray:
    """Validate one score vector: 1-D, non-empty, real, finite → float64."""
    a = _as_numpy(x, name)
    if a.ndim != 1:
        raise ClipoodError(f"{name} must be 1-D (one score per sample), got shape {tuple(a.shape)}; "
                           f"flatten it or pick one score column")
    if a.size == 0:
        raise ClipoodError(f"{name} is empty; each side needs at least one sample to compute OOD metrics")
    if a.dtype.kind not in "biuf":
        raise ClipoodError(f"{name} must hold real numbers, got dtype {a.dtype}")
    # float32 → float64 is exact, so ties and order are those of the caller's values.
    a = a.astype(np.float64, copy=False)
    n_nan = int(np.isnan(a).sum())
    if n_nan:
        raise ClipoodError(f"{name} contains {n_nan} NaN values; scores must be finite — check the logits "
                           f"or features that produced them")
    n_inf = int(np.isinf(a).sum())
    if n_inf:
        raise ClipoodError(f"{name} contains {n_inf} infinite values; scores must be finite — check the "
                           f"logits or features that produced them")
    return a


def _counts_at_thresholds(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (false positives, true positives) at each distinct threshold, thresholds descending.

    A sample is predicted positive when its score is >= the threshold. Ties collapse into one threshold, as in
    sklearn's ``_binary_clf_curve``. Counts are exact integers stored as float64.
    """
    score = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-score, kind="stable")
    score, is_pos = score[order], is_pos[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tps = np.cumsum(is_pos)[last_of_tie]
    fps = (last_of_tie + 1.0) - tps
    return fps, tps


def _roc(fps: np.ndarray, tps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sklearn ``roc_curve`` with its default ``drop_intermediate=True``: (fpr, tpr) starting at (0, 0)."""
    if fps.size > 2:
        # Keep the ends and every corner; collinear interior points are dropped (sklearn's exact rule).
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1]


def _pr(fps: np.ndarray, tps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sklearn ``precision_recall_curve`` (``drop_intermediate=False``): recall decreasing, ends at (0, 1)."""
    precision = tps / (tps + fps)  # every threshold accepts at least one sample, so no 0/0
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def _average_precision(fps: np.ndarray, tps: np.ndarray) -> float:
    """sklearn ``average_precision_score``: AP = Σ_k (R_k − R_{k−1}) P_k (step rule, no interpolation)."""
    precision, recall = _pr(fps, tps)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid area under y(x) for monotone x (either direction), like sklearn ``auc``."""
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return -area if x[-1] < x[0] else area


def _fpr_at_recall_hendrycks(fps: np.ndarray, tps: np.ndarray, n_neg: int) -> float:
    """FPR at the threshold whose positive recall is nearest to 0.95 (tie-break: see the module docstring)."""
    n_pos = tps[-1]
    last = int(np.searchsorted(tps, n_pos))  # highest threshold that accepts every positive
    dist = np.abs(tps[: last + 1] / n_pos - RECALL_LEVEL)
    best = int(np.flatnonzero(dist == dist.min())[-1])  # lowest threshold among the nearest
    return float(fps[best] / n_neg)


def ood_metrics(id_scores: Any, ood_scores: Any, convention: str = "hendrycks") -> dict[str, float]:
    """AUROC, FPR@95, AUPR-In and AUPR-Out of ID-vs-OOD scores (higher score = more ID).

    Args:
        id_scores: 1-D array-like (numpy, torch on any device/dtype, list) of scores of ID samples, shape (n_id,).
        ood_scores: 1-D array-like of scores of OOD samples, shape (n_ood,).
        convention: ``"hendrycks"`` (default; most CLIP-OOD papers) or ``"openood"`` — see the module docstring.

    Returns:
        ``{"auroc", "fpr95", "aupr_in", "aupr_out"}`` as Python floats in [0, 1].

    Raises:
        ClipoodError: an input is empty, not 1-D, not real, or holds NaN/Inf; or the convention is unknown.
    """
    if convention not in CONVENTIONS:
        raise unknown("metric convention", convention, CONVENTIONS)
    id_s = _check_scores(id_scores, "id_scores")
    ood_s = _check_scores(ood_scores, "ood_scores")
    n_id, n_ood = id_s.size, ood_s.size

    # ID positive, score as is; OOD positive, score negated. Both run over the same distinct thresholds.
    fps_in, tps_in = _counts_at_thresholds(id_s, ood_s)
    fps_out, tps_out = _counts_at_thresholds(-ood_s, -id_s)

    if convention == "hendrycks":
        fpr, tpr = _roc(fps_in, tps_in)
        return {
            "auroc": _trapezoid(tpr, fpr),
            "fpr95": _fpr_at_recall_hendrycks(fps_in, tps_in, n_ood),
            "aupr_in": _average_precision(fps_in, tps_in),
            "aupr_out": _average_precision(fps_out, tps_out),
        }

    fpr, tpr = _roc(fps_out, tps_out)
    p_in, r_in = _pr(fps_in, tps_in)
    p_out, r_out = _pr(fps_out, tps_out)
    return {
        "auroc": _trapezoid(tpr, fpr),
        "fpr95": float(fpr[int(np.argmax(tpr >= RECALL_LEVEL))]),
        "aupr_in": _trapezoid(p_in, r_in),
        "aupr_out": _trapezoid(p_out, r_out),
    }


def accuracy(logits_or_preds: Any, labels: Any) -> float:
    """Top-1 accuracy as a fraction in [0, 1].

    Args:
        logits_or_preds: (B, K) logits (the prediction is the argmax over K) or (B,) integer predictions.
        labels: (B,) integer class indices.
    """
    x = _as_numpy(logits_or_preds, "logits_or_preds")
    y = _as_numpy(labels, "labels")
    if x.ndim == 2:
        if x.shape[1] == 0:
            raise ClipoodError("logits_or_preds has 0 columns; pass (B, K) logits with K >= 1")
        x = x.argmax(axis=1)
    elif x.ndim != 1:
        raise ClipoodError(f"logits_or_preds must be (B, K) logits or (B,) predictions, got shape {x.shape}")
    if y.ndim != 1:
        raise ClipoodError(f"labels must be 1-D class indices, got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ClipoodError(f"logits_or_preds has {x.shape[0]} rows but labels has {y.shape[0]}; they must match")
    if y.size == 0:
        raise ClipoodError("labels is empty; accuracy needs at least one sample")
    return float(np.mean(x == y))


def summarize(rows: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Append an ``"average"`` row (mean of each metric over the rows) to a table of per-OOD-set metrics.

    Args:
        rows: e.g. ``{"inaturalist": ood_metrics(...), "sun": ood_metrics(...)}``; every row has the same keys.

    Returns:
        A new dict with the same rows (as plain dicts) followed by ``"average"``.
    """
    table = {name: dict(row) for name, row in rows.items()}
    if not table:
        raise ClipoodError("summarize() got no rows; pass a mapping of OOD set name → metrics dict")
    if "average" in table:
        raise ClipoodError("summarize() rows already contain 'average'; rename that row")
    keys = list(next(iter(table.values())))
    for name, row in table.items():
        if set(row) != set(keys):
            raise ClipoodError(f"row '{name}' has metrics {sorted(row)}, expected {sorted(keys)}")
    table["average"] = {k: float(np.mean([row[k] for row in table.values()])) for k in keys}
    return table
