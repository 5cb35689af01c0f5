"""Evaluation rows: per OOD set, per ID set, and averages; compared with sklearn on hand-built scores."""
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from clipood.evaluation.protocol import EvalSplit, SplitFeatures, zero_shot_logits
from clipood.evaluation.runner import ScoredMethod, evaluate_detectors

from clipood.config.settings import EvalSettings

EV = EvalSettings(logit_scale=100.0, groups=1, convention="hendrycks")


def _feats(n, d, seed, labels=None):
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    return {"features": f, "labels": torch.as_tensor(labels if labels is not None else [0] * n)}


def _sf(split, id_name, seed, n_id=2, k=6, d=8):
    g = torch.Generator().manual_seed(100 + seed)
    C = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    ids = {id_name: _feats(20, d, seed, labels=[i % n_id for i in range(20)])}
    oods = {"o1": _feats(15, d, seed + 1), "o2": _feats(9, d, seed + 2)}
    return SplitFeatures(EvalSplit(split, {id_name: None}, {"o1": None, "o2": None}, ["a", "b"]), ids, oods, C, n_id)


def _auroc_by_hand(sf, id_name, ood_name):
    def lo(f):
        x = (100 * f @ sf.text_features.T).double().numpy()
        return np.log(np.exp(x[:, :sf.num_id]).sum(1)) - np.log(np.exp(x[:, sf.num_id:]).sum(1))
    a, b = lo(sf.id_feats[id_name]["features"]), lo(sf.ood_feats[ood_name]["features"])
    return roc_auc_score(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b])


def test_rows_for_single_and_multi_dataset_splits():
    base = _sf("base", "base", 0)
    c10, c100 = _sf("new_class", "cifar10", 10), _sf("new_class", "cifar100", 20)
    rows, raw = evaluate_detectors([ScoredMethod("zs", zero_shot_logits)], [base, c10, c100], EV)
    by = {(r["split"], r["dataset"]): r for r in rows}
    # one ID set: a row per OOD set plus the average of those rows
    assert abs(by[("base", "o1")]["auroc"] - _auroc_by_hand(base, "base", "o1")) < 1e-12
    assert abs(by[("base", "average")]["auroc"] - (by[("base", "o1")]["auroc"] + by[("base", "o2")]["auroc"]) / 2) < 1e-12
    # several ID datasets in a split: a row per dataset (mean over its own OOD sets), then their mean
    want10 = (_auroc_by_hand(c10, "cifar10", "o1") + _auroc_by_hand(c10, "cifar10", "o2")) / 2
    want100 = (_auroc_by_hand(c100, "cifar100", "o1") + _auroc_by_hand(c100, "cifar100", "o2")) / 2
    assert abs(by[("new_class", "cifar10")]["auroc"] - want10) < 1e-12
    assert abs(by[("new_class", "cifar100")]["auroc"] - want100) < 1e-12
    assert abs(by[("new_class", "average")]["auroc"] - (want10 + want100) / 2) < 1e-12
    assert sum(1 for r in rows if r["split"] == "new_class") == 3
    # accuracy: argmax over ID columns vs labels, by hand
    f = c10.id_feats["cifar10"]
    hits = int(((f["features"] @ c10.text_features[:2].T).argmax(1) == f["labels"]).sum())
    assert by[("new_class", "cifar10")]["id_acc"] == hits / len(f["labels"])   # the exact ratio, in float64
    assert set(raw["new_class"]["zs"]) >= {"id/cifar10", "ood/cifar10:o1", "id/cifar100", "ood/cifar100:o2"}


def test_configured_score_gets_a_zero_shot_row_and_scores_as_formula():
    from clipood.evaluation.runner import zero_shot_detectors

    ev = EvalSettings(score="energy", mcm=False, logit_scale=100.0, groups=1, convention="hendrycks")
    ms = zero_shot_detectors(ev)
    assert [m.name for m in ms] == ["NegLabel (zero-shot)", "energy (zero-shot)"]
    sf = _sf("base", "base", 3)
    rows, raw = evaluate_detectors([ms[1]], [sf], ev)
    f = sf.id_feats["base"]["features"]
    want = torch.logsumexp(100 * f @ sf.text_features[:sf.num_id].T, dim=1)  # energy over ID columns, T = 1
    assert np.allclose(raw["base"]["energy (zero-shot)"]["id/base"], want.double().numpy(), atol=1e-6)
