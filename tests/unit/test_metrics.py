"""clipood.metrics against sklearn references and independent brute-force computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    auc,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from clipood.errors import ClipoodError
from clipood.metrics import accuracy, ood_metrics, summarize

KEYS = {"auroc", "fpr95", "aupr_in", "aupr_out"}


# ---------------------------------------------------------------- references (written independently)


def _labels(id_s, ood_s):
    score = np.concatenate([id_s, ood_s]).astype(np.float64)
    is_id = np.concatenate([np.ones(len(id_s), int), np.zeros(len(ood_s), int)])
    return score, is_id


def brute_force_fpr95_hendrycks(id_s, ood_s):
    """Loop over every distinct threshold t (accept as ID when score >= t); documented tie-break:
    candidates are thresholds >= the highest one that accepts all ID samples; nearest float distance
    |tp/n_id - 0.95| wins; on equal distance the lowest threshold wins."""
    id_s, ood_s = np.asarray(id_s, float), np.asarray(ood_s, float)
    thresholds = sorted(set(id_s.tolist()) | set(ood_s.tolist()), reverse=True)
    t_full = max(t for t in thresholds if np.all(id_s >= t))
    best = None  # (distance, threshold, fpr)
    for t in thresholds:
        if t < t_full:
            continue
        tp = int(np.sum(id_s >= t))
        d = abs(tp / len(id_s) - 0.95)
        fpr = np.sum(ood_s >= t) / len(ood_s)
        if best is None or d < best[0] or (d == best[0] and t < best[1]):
            best = (d, t, fpr)
    return float(best[2])


def hendrycks_reference_fpr95(id_s, ood_s, recall_level=0.95):
    """Transcription of `fpr_and_fdr_at_recall` (Outlier Exposure / MCM / NegLabel code), ID positive."""
    y_score, y_true = _labels(id_s, ood_s)
    desc = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[desc], y_true[desc]
    distinct = np.where(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true, dtype=np.float64)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    recall = tps / tps[-1]
    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return float(fps[cutoff] / np.sum(np.logical_not(y_true)))


def sklearn_hendrycks(id_s, ood_s):
    score, is_id = _labels(id_s, ood_s)
    return {
        "auroc": roc_auc_score(is_id, score),
        "aupr_in": average_precision_score(is_id, score),
        "aupr_out": average_precision_score(1 - is_id, -score),
        "fpr95": brute_force_fpr95_hendrycks(id_s, ood_s),
    }


def sklearn_openood(id_s, ood_s):
    score, is_id = _labels(id_s, ood_s)
    is_ood = 1 - is_id
    fpr, tpr, _ = roc_curve(is_ood, -score)
    p_in, r_in, _ = precision_recall_curve(is_id, score)
    p_out, r_out, _ = precision_recall_curve(is_ood, -score)
    return {
        "auroc": auc(fpr, tpr),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
        "aupr_in": auc(r_in, p_in),
        "aupr_out": auc(r_out, p_out),
    }


def _cases():
    rng = np.random.default_rng(0)
    g_id, g_ood = rng.normal(1.0, 1.0, 700), rng.normal(0.0, 1.0, 500)
    yield "gaussian", g_id, g_ood
    yield "gaussian_small", rng.normal(0.5, 1, 37), rng.normal(0, 1, 23)
    yield "rounded_0.1", np.round(g_id, 1), np.round(g_ood, 1)
    yield "integers_few_values", rng.integers(2, 7, 300).astype(float), rng.integers(0, 5, 200).astype(float)
    yield "integers_n_multiple_of_20", rng.integers(0, 4, 200).astype(float), rng.integers(0, 3, 100).astype(float)
    yield "separated", rng.uniform(2, 3, 50), rng.uniform(0, 1, 40)
    yield "reversed", rng.uniform(0, 1, 50), rng.uniform(2, 3, 40)
    yield "tiny_2id_1ood", np.array([0.3, 0.8]), np.array([0.5])
    yield "tiny_all_tied", np.array([1.0, 1.0]), np.array([1.0])
    yield "one_each", np.array([0.2]), np.array([0.7])
    for seed in range(5):  # many ties and small sets: where tie-breaking rules show
        r = np.random.default_rng(100 + seed)
        yield f"random_ties_{seed}", r.integers(0, 6, r.integers(5, 40)).astype(float), \
            r.integers(0, 5, r.integers(3, 30)).astype(float)


CASES = list(_cases())


@pytest.mark.parametrize("name,id_s,ood_s", CASES, ids=[c[0] for c in CASES])
def test_hendrycks_matches_sklearn(name, id_s, ood_s):
    got = ood_metrics(id_s, ood_s, convention="hendrycks")
    ref = sklearn_hendrycks(id_s, ood_s)
    assert set(got) == KEYS
    for k in KEYS:
        assert isinstance(got[k], float)
        assert got[k] == pytest.approx(ref[k], abs=1e-9), k
    # the brute force agrees with the papers' reference implementation
    assert ref["fpr95"] == pytest.approx(hendrycks_reference_fpr95(id_s, ood_s), abs=1e-12)


@pytest.mark.parametrize("name,id_s,ood_s", CASES, ids=[c[0] for c in CASES])
def test_openood_matches_sklearn(name, id_s, ood_s):
    got = ood_metrics(id_s, ood_s, convention="openood")
    ref = sklearn_openood(id_s, ood_s)
    assert set(got) == KEYS
    for k in KEYS:
        assert isinstance(got[k], float)
        assert got[k] == pytest.approx(ref[k], abs=1e-9), k


def test_conventions_differ_on_ties():
    rng = np.random.default_rng(1)
    id_s, ood_s = np.round(rng.normal(1, 1, 2000), 1), np.round(rng.normal(0, 1, 2000), 1)
    h, o = ood_metrics(id_s, ood_s), ood_metrics(id_s, ood_s, "openood")
    assert h["auroc"] == pytest.approx(o["auroc"], abs=1e-12)
    assert abs(h["aupr_in"] - o["aupr_in"]) > 1e-4  # AP vs trapezoid
    assert abs(h["fpr95"] - o["fpr95"]) > 1e-4


def test_hand_computed_example():
    # sorted by score: .9I .8I .7I .65O .6I .5O .3O
    id_s, ood_s = [0.9, 0.8, 0.7, 0.6], [0.65, 0.5, 0.3]
    h = ood_metrics(id_s, ood_s)
    assert h["auroc"] == pytest.approx(11 / 12)  # only (0.6 vs 0.65) is mis-ordered
    assert h["aupr_in"] == pytest.approx((1 + 1 + 1 + 4 / 5) / 4)  # precision at each ID hit
    assert h["aupr_out"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert h["fpr95"] == pytest.approx(1 / 3)  # recall 1.0 (dist .05) beats .75; 0.65 accepted
    o = ood_metrics(id_s, ood_s, "openood")
    assert o["fpr95"] == pytest.approx(1 / 4)  # catching all 3 OOD flags ID 0.6
    # PR (recall, precision): (0,1) (.25,1) (.5,1) (.75,1) (.75,.75) (1,.8)
    assert o["aupr_in"] == pytest.approx(0.75 + 0.25 * (0.75 + 0.8) / 2)
    assert o["auroc"] == pytest.approx(11 / 12)


def test_openood_fpr95_reproduces_drop_intermediate():
    # OOD-positive curve has collinear points (fps, tps) = (0,18) (1,19) (2,20): the middle one, the first to
    # reach tpr 0.95, is dropped by roc_curve's default, so sklearn reports 2/n_id instead of 1/n_id.
    ood_s = np.r_[np.arange(18.0), 20.0, 30.0]
    id_s = np.r_[20.0, 30.0, np.arange(40.0, 48.0)]
    got = ood_metrics(id_s, ood_s, "openood")["fpr95"]
    assert got == pytest.approx(sklearn_openood(id_s, ood_s)["fpr95"], abs=1e-12)
    assert got == pytest.approx(2 / 10)


def test_hendrycks_fpr95_tie_break():
    # recall 0.9 (t=5) and 1.0 (t=1) lie 0.05 apart from 0.95 in exact arithmetic; in float64 0.9 is nearer,
    # as in the reference code. Within recall 0.9 the lowest threshold (t=2, 2 OOD accepted) is taken.
    id_s = np.r_[np.full(9, 5.0), 1.0]
    ood_s = np.array([4.0, 2.0, 0.0, 0.0])
    assert ood_metrics(id_s, ood_s)["fpr95"] == pytest.approx(2 / 4)
    assert hendrycks_reference_fpr95(id_s, ood_s) == pytest.approx(2 / 4)


@pytest.mark.parametrize("convert", [
    lambda a: a.tolist(),
    lambda a: a.astype(np.float32),
    lambda a: torch.tensor(a, dtype=torch.float32),
    lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True),
    lambda a: torch.tensor(a, dtype=torch.bfloat16),
])
def test_array_likes(convert):
    id_s = np.array([3.0, 2.5, 2.0, 1.0, 0.5])
    ood_s = np.array([2.25, 1.5, 0.0, -1.0])
    ref = ood_metrics(id_s, ood_s)  # every value is exact in bfloat16
    assert ood_metrics(convert(id_s), convert(ood_s)) == ref


@pytest.mark.parametrize("id_s,ood_s,message", [
    ([], [1.0], "id_scores is empty"),
    ([1.0], np.array([]), "ood_scores is empty"),
    ([1.0, 2.0], [np.nan, 1.0, np.nan, np.nan], "ood_scores contains 3 NaN values"),
    ([np.inf, 1.0], [1.0], "id_scores contains 1 infinite values"),
    (np.ones((2, 2)), [1.0], "id_scores must be 1-D"),
    ([1.0], 3.0, "ood_scores must be 1-D"),
    (["a", "b"], [1.0], "id_scores must hold real numbers"),
])
def test_validation(id_s, ood_s, message):
    with pytest.raises(ClipoodError, match=message):
        ood_metrics(id_s, ood_s)


def test_unknown_convention():
    with pytest.raises(ClipoodError) as e:
        ood_metrics([1.0], [0.0], convention="open_ood")
    msg = str(e.value)
    assert "unknown metric convention 'open_ood'" in msg and "did you mean 'openood'" in msg
    assert "hendrycks" in msg
    assert isinstance(e.value, ValueError)


def test_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.5]])
    labels = torch.tensor([1, 0, 1, 2])
    assert accuracy(logits, labels) == pytest.approx(0.5)
    assert accuracy(np.array([1, 0, 2, 0]), [1, 0, 1, 2]) == pytest.approx(0.5)
    with pytest.raises(ClipoodError, match="4 rows but labels has 3"):
        accuracy(logits, labels[:3])
    with pytest.raises(ClipoodError, match="labels is empty"):
        accuracy(np.zeros(0), np.zeros(0))


def test_summarize():
    rows = {"a": {"auroc": 0.8, "fpr95": 0.4}, "b": {"auroc": 0.6, "fpr95": 0.2}}
    table = summarize(rows)
    assert list(table) == ["a", "b", "average"]
    assert table["average"] == pytest.approx({"auroc": 0.7, "fpr95": 0.3})
    with pytest.raises(ClipoodError, match="row 'b'"):
        summarize({"a": {"auroc": 0.8}, "b": {"fpr95": 0.2}})
