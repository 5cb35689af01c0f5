"""The evaluation protocol: Base classes, unseen classes and unseen styles (paper §3.5, Tab. 1–3).

A *split* holds one or more ID sets, several OOD sets and the ID class names. A *method* is a function from
a batch and the split's label features to cosine logits over K = N + M labels (ID first): zero-shot NegLabel
uses the frozen text features, a tuned adapter its tuned ones. The batch is a dict with ``image_features``
(B×D unit rows) and, when the split was encoded with ``local=True`` (an adapter's ``requires`` names
``local_features``), ``local_features`` (B×T×D patch tokens in the joint space) — the keys adapters read. Rows follow the stable
``results.json`` schema ``{method, split, dataset, auroc, fpr95, aupr_in, aupr_out, id_acc}`` (fractions).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import torch

from ..batch_keys import FROM_FEATURE_CACHE
from ..errors import ClipoodError
from ..metrics import ood_metrics
from ..scores import compute_score, neglabel_log_odds

log = logging.getLogger("clipood")
METRIC_KEYS = ("auroc", "fpr95", "aupr_in", "aupr_out")


@dataclass
class EvalSplit:
    """One evaluation split: ID sets (name → spec), OOD sets (name → spec), ID class names, and named groups of
    OOD sets (OpenOOD's ``near`` / ``far``) whose averages get rows of their own."""

    name: str
    id_sets: dict
    ood_sets: dict
    classnames: list[str]
    description: str = ""
    groups: dict = field(default_factory=dict)


@dataclass
class SplitFeatures:
    """Image features of a split (unit rows) and its label features C (K×D, ID rows first)."""

    split: EvalSplit
    id_feats: dict[str, dict[str, torch.Tensor]]
    ood_feats: dict[str, dict[str, torch.Tensor]]
    text_features: torch.Tensor
    num_id: int
    negatives: list[str] = field(default_factory=list)
    #: the split's labels (names, templates, negatives with part of speech, these features): made once per ID set
    label_set: "LabelSet | None" = None  # noqa: F821

    def __post_init__(self) -> None:
        if self.label_set is None:  # features given bare: the split's names, its negatives unnamed
            from ..labels.label_set import LabelSet

            self.label_set = LabelSet(tuple(self.split.classnames), self.text_features,
                                      neg_names=tuple(self.negatives))


LogitsFn = Callable[[Mapping[str, torch.Tensor], SplitFeatures], torch.Tensor]

def feature_batches(feats: Mapping[str, torch.Tensor], batch_size: int = 1024) -> Iterator[dict[str, torch.Tensor]]:
    """Slices of encoded features as method batches: ``image_features`` (+ ``local_features`` when stored)."""
    n = feats["features"].shape[0]
    for s in range(0, n, batch_size):
        yield {dst: feats[src][s:s + batch_size] for src, dst in FROM_FEATURE_CACHE.items() if src in feats}


def zero_shot_logits(batch: Mapping[str, torch.Tensor] | torch.Tensor, sf: SplitFeatures) -> torch.Tensor:
    """Frozen CLIP: cos(v, c_i) for all K labels (B×K). Takes a batch dict (or, as before, a B×D tensor)."""
    from .scoring import frozen_logits

    return frozen_logits(batch if isinstance(batch, Mapping) else {"image_features": batch}, sf.text_features)


def zero_shot_local_logits(batch: Mapping[str, torch.Tensor], sf: SplitFeatures):
    """Frozen CLIP with patch features: (cos(v, c_i) B×K, cos(u_p, c_i) B×T×N over the ID labels) — what
    GL-MCM scores. Needs ``local_features`` in the batch (splits encoded with ``local=True``)."""
    if "local_features" not in batch:
        from ..errors import ClipoodError

        raise ClipoodError("the GL-MCM score needs patch features: encode the splits with local=True (an adapter "
                           "that requires local_features, e.g. locoop, does this), or use eval.score=mcm")
    local = torch.nn.functional.normalize(batch["local_features"].float(), dim=-1)
    return zero_shot_logits(batch, sf), local @ sf.text_features[: sf.num_id].T


@torch.no_grad()
def _scores(logits_fn: LogitsFn, feats: Mapping[str, torch.Tensor], sf: SplitFeatures, score: str,
            logit_scale: float, groups: int, temperature: float = 1.0,
            batch_size: int = 1024, **score_options) -> tuple[torch.Tensor, torch.Tensor]:
    scores, preds = [], []
    for batch in feature_batches(feats, batch_size):
        s, p = score_cosines(logits_fn(batch, sf), sf.num_id, score, logit_scale, groups, temperature,
                             **score_options)
        scores.append(s)
        preds.append(p)
    return torch.cat(scores), torch.cat(preds)


def score_cosines(cos: torch.Tensor | tuple[torch.Tensor, torch.Tensor], num_id: int, score: str = "neglabel",
                  logit_scale: float = 100.0, groups: int = 1, temperature: float = 1.0, *,
                  remainder: str = "drop", lambda_local: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine logits (B×K, ID columns first) → (per-image ID score, predicted ID class): the one scoring step
    of evaluation and of :class:`clipood.detector.Detector`. ``cos`` may also be (global cosines B×K, patch
    cosines B×T×N) for scores that use local features (GL-MCM, local term weighted by ``lambda_local``).
    NegLabel (Eq. 2) without grouping is ranked by its float64 log-odds (no float saturation ties, see
    ``scores.neglabel_log_odds``); with groups, ``remainder`` says what happens to the last M mod G negatives.
    ``score="adapter"``: ``cos`` is (cosines B×K, the adapter's own scores B), returned as they are."""
    if score == "adapter":  # the adapter's own test score, computed by the adapter: (cosines, scores)
        if not isinstance(cos, tuple):
            raise ClipoodError("eval.score=adapter needs the adapter's own scores (extras['ood_score']) beside the "
                               "logits; this method has none, choose a score of clipood.scores")
        cos, own = cos
        return own.double(), cos[:, :num_id].argmax(1)
    local = None
    if isinstance(cos, tuple):
        cos, local = cos
        local = logit_scale * local.double()
    logits = logit_scale * cos.float()
    if score == "neglabel" and groups == 1:
        s = neglabel_log_odds(logits, num_id)
    else:
        s = compute_score(score, logits.double(), num_id, groups=groups, temperature=temperature,
                          local_logits=local, remainder=remainder, lambda_local=lambda_local)
    return s, logits[:, :num_id].argmax(1)


def _fingerprint(*tensors: torch.Tensor | None, extra: tuple = ()) -> str:
    """A content key of tensors (dtype, shape and bytes) and plain values: equal keys, equal inputs."""
    import hashlib

    h = hashlib.blake2b(repr(extra).encode("utf-8"), digest_size=16)
    for t in tensors:
        if t is None:
            h.update(b"-")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _label_key(sf: SplitFeatures) -> str:
    """Everything of a split's labels a method may read: names, templates, negatives with parts of speech, the
    label features."""
    ls = sf.label_set
    return _fingerprint(sf.text_features, ls.features, extra=(
        tuple(sf.split.classnames), sf.num_id, tuple(sf.negatives), ls.id_names, ls.id_template, ls.neg_names,
        ls.neg_pos, tuple(sorted(dict(ls.pos_templates).items()))))


def evaluate_split(method: str, logits_fn: LogitsFn, sf: SplitFeatures, *, score: str = "neglabel",
                   logit_scale: float = 100.0, groups: int = 1, temperature: float = 1.0,
                   convention: str = "hendrycks", remainder: str = "drop", lambda_local: float = 1.0,
                   reuse: dict | None = None):
    """Score every set of a split → (rows, raw scores {set name: 1-D tensor}).

    With one ID set, one row per OOD set, then one row per group of ``sf.split.groups`` (``dataset: "near"``,
    ``"far"``: the mean over that group's OOD sets, as OpenOOD v1.5 reports them); with several ID sets (unseen
    styles), one row per ID set averaged over the OOD sets (as the paper's Tab. 3). A final
    ``dataset: "average"`` row averages the per-set rows (not the group rows). ``remainder`` / ``lambda_local``:
    see :func:`score_cosines`.

    ``reuse``: a dict shared by the calls of one evaluation. An OOD set whose features were already scored by
    the same method and score settings under an equal label set (Base OOD sets, scored again with the unseen
    styles) takes those scores: a method's logits depend on a split only through its label set (names,
    features, negatives), so they are the same numbers, computed once.
    """
    opts = {"remainder": remainder, "lambda_local": lambda_local}
    raw: dict[str, torch.Tensor] = {}
    ood_scores = {}
    labels = _label_key(sf) if reuse is not None else None
    for name, f in sf.ood_feats.items():
        key = None
        if reuse is not None:
            key = (method, id(logits_fn), score, logit_scale, groups, temperature, remainder, lambda_local, labels,
                   _fingerprint(f.get("features"), f.get("local")))
        if key is not None and key in reuse:
            ood_scores[name] = reuse[key]
        else:
            ood_scores[name], _ = _scores(logits_fn, f, sf, score, logit_scale, groups, temperature, **opts)
            if key is not None:
                reuse[key] = ood_scores[name]
        raw[f"ood/{name}"] = ood_scores[name]
    rows, group_rows = [], []
    single = len(sf.id_feats) == 1
    for id_name, f in sf.id_feats.items():
        id_scores, preds = _scores(logits_fn, f, sf, score, logit_scale, groups, temperature, **opts)
        raw[f"id/{id_name}"] = id_scores
        acc = int((preds == f["labels"]).sum()) / max(1, int(f["labels"].numel()))  # exact count ratio (float64)
        per_ood = {o: ood_metrics(id_scores, s, convention=convention) for o, s in ood_scores.items()}
        if single:
            for o, m in per_ood.items():
                rows.append({"method": method, "split": sf.split.name, "dataset": o, **m, "id_acc": acc})
            for g, members in (sf.split.groups or {}).items():
                ms = [per_ood[o] for o in members if o in per_ood]
                if ms:
                    mean = {k: sum(m[k] for m in ms) / len(ms) for k in METRIC_KEYS}
                    group_rows.append({"method": method, "split": sf.split.name, "dataset": g, **mean, "id_acc": acc})
        else:
            mean = {k: sum(m[k] for m in per_ood.values()) / len(per_ood) for k in METRIC_KEYS}
            rows.append({"method": method, "split": sf.split.name, "dataset": id_name, **mean, "id_acc": acc})
    if not rows:
        raise ClipoodError(f"split {sf.split.name} has no ID or no OOD sets")
    avg = {k: sum(r[k] for r in rows) / len(rows) for k in (*METRIC_KEYS, "id_acc")}
    rows += group_rows
    rows.append({"method": method, "split": sf.split.name, "dataset": "average", **avg})
    return rows, raw


def prepare_split(split: EvalSplit, backbone, text_features: torch.Tensor, num_id: int, *, negatives=(),
                  batch_size: int = 128, accelerator=None, cache_dir=None, progress: bool = True,
                  root=None, on_corrupt: str = "error", local: bool = False, label_set=None) -> SplitFeatures:
    """Encode every image of a split once (cached) and bundle it with its label features.

    ``local=True`` also stores patch features (``local``: N×T×D), for adapters whose ``requires`` names
    ``local_features``; the cache key includes it, so global-only runs never pay for them."""
    from ..datasets.dataset import build_dataset
    from ..clip.image_features import extract_features

    def enc(spec, what, is_id=False):
        ds = build_dataset(spec, transform=backbone.preprocess, root=root, on_corrupt=on_corrupt)
        if is_id and ds.classnames and list(ds.classnames) != list(split.classnames):
            # labels by name: label i of the images must be the i-th ID prompt
            raise ClipoodError(f"ID set {what} of split {split.name}: its classes {ds.classnames[:5]}... are not "
                               f"the split's ID classes {list(split.classnames)[:5]}... in that order")
        return extract_features(backbone, ds, batch_size=batch_size, accelerator=accelerator, local=local,
                                cache_dir=cache_dir, progress=progress, desc=f"{split.name}/{what}")

    id_feats = {n: enc(s, n, is_id=True) for n, s in split.id_sets.items()}
    ood_feats = {n: enc(s, n) for n, s in split.ood_sets.items()}
    return SplitFeatures(split, id_feats, ood_feats, text_features, num_id, list(negatives), label_set)
