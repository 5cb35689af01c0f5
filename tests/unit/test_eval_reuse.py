"""One evaluation scores an OOD set once per method and label set: the unseen-style split, evaluated against the
Base OOD sets under the Base labels, takes the Base split's OOD scores instead of running the method again; a
split with other labels (or other OOD features) runs it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clipood.config.settings import EvalSettings
from clipood.evaluation.protocol import EvalSplit, SplitFeatures
from clipood.evaluation.runner import ScoredMethod, evaluate_detectors

G = torch.Generator().manual_seed(0)
TEXT = F.normalize(torch.randn(6, 8, generator=G), dim=-1)  # 2 ID + 4 negative labels
OOD = {"o1": {"features": F.normalize(torch.randn(5, 8, generator=G), dim=-1), "labels": torch.zeros(5).long()},
       "o2": {"features": F.normalize(torch.randn(3, 8, generator=G), dim=-1), "labels": torch.zeros(3).long()}}


def _id(n):
    return {"features": F.normalize(torch.randn(n, 8, generator=G), dim=-1), "labels": torch.arange(n) % 2}


def _copy(feats):  # the same numbers in other tensors (each split loads its own copy from the cache)
    return {k: {kk: vv.clone() for kk, vv in v.items()} for k, v in feats.items()}


def _splits(style_text=TEXT, style_ood=None):
    base = SplitFeatures(EvalSplit("base", {"id": None}, dict.fromkeys(OOD), ["a", "b"]), {"id": _id(6)},
                         _copy(OOD), TEXT.clone(), 2)
    style = SplitFeatures(EvalSplit("new_style", {"sketch": None, "paint": None}, dict.fromkeys(OOD), ["a", "b"]),
                          {"sketch": _id(4), "paint": _id(4)}, style_ood or _copy(OOD), style_text, 2)
    return [base, style]


def _method(calls):
    def logits_fn(batch, sf):
        calls.append((sf.split.name, batch["image_features"].shape[0]))
        return batch["image_features"] @ sf.text_features.T
    return ScoredMethod("probe", logits_fn)


def _neglabel_by_hand(feats, text):
    lg = 100.0 * (feats @ text.T).double()  # the method returns float32 cosines; the score runs in float64
    return torch.logsumexp(lg[:, :2], 1) - torch.logsumexp(lg[:, 2:], 1)  # NegLabel log-odds of Σ_ID softmax


def test_the_unseen_styles_take_the_base_ood_scores():
    calls = []
    _, raw = evaluate_detectors([_method(calls)], _splits(), EvalSettings())
    assert sorted(calls) == sorted([("base", 6), ("base", 5), ("base", 3), ("new_style", 4), ("new_style", 4)])
    for name, f in OOD.items():
        expected = _neglabel_by_hand(f["features"], TEXT).numpy()
        assert abs(raw["new_style"]["probe"][f"ood/{name}"] - expected).max() < 1e-5
        assert abs(raw["base"]["probe"][f"ood/{name}"] - expected).max() < 1e-5


def test_other_labels_or_other_ood_features_are_scored_again():
    other = TEXT.clone()
    other[3] = F.normalize(other[3] + 0.1, dim=0)  # one negative label differs
    calls = []
    _, raw = evaluate_detectors([_method(calls)], _splits(style_text=other), EvalSettings())
    assert sorted(c for c in calls if c[0] == "new_style") == [("new_style", 3), ("new_style", 4),
                                                                ("new_style", 4), ("new_style", 5)]
    expected = _neglabel_by_hand(OOD["o1"]["features"], other).numpy()
    assert abs(raw["new_style"]["probe"]["ood/o1"] - expected).max() < 1e-5
    moved = _copy(OOD)
    moved["o2"]["features"][0] = -moved["o2"]["features"][0]
    calls = []
    evaluate_detectors([_method(calls)], _splits(style_ood=moved), EvalSettings())
    assert sorted(c for c in calls if c[0] == "new_style") == [("new_style", 3), ("new_style", 4), ("new_style", 4)]
