"""TrainingTask = an adapter + weighted loss terms. ``forward(batch)`` returns ``{"loss": total, "<term>_loss": ...}``
so the training loop stays generic (the open_clip / timm "task" pattern). ``Method`` is its former name.

A training batch from the crop cache carries ``id_features`` (n×D) with ``id_labels`` (n), ``neg_features``
(m×D) and optionally ``id_condition`` / ``neg_condition`` (features the meta-nets see instead of the crop
itself) and ``id_local`` / ``neg_local`` (n×T×D patch features). The task hands the adapter what its
``requires`` names — ``image_features`` from ``*_features``, ``condition_features`` from ``*_condition``,
``local_features`` from ``*_local`` — and the adapter reports a missing key by name. Loss terms are plain
functions registered by name; KR composes with *any* adapter because it only needs ``AdapterOutput.base_cos``
(or the frozen text features for the logit / probability variants). The grouped terms (``cls_groups``,
``ood_groups``) follow the released KR-NFT code when set to 10. L_cls runs over all K columns (KR-NFT's Eq. 7) or
over the N ID columns only (``cls_columns="id"``: CoOp's and LoCoOp's released cross-entropy); an adapter names
its own with a ``cls_columns`` attribute, an explicit ``options["cls_columns"]`` overrides it.

A whole step (ID crops, negative crops, the method's own terms) runs inside the adapter's
``text_feature_scope()`` when it has one (prompt learners): each learned context goes through the text encoder
once per step.

The adapter is duck-typed (any module with ``num_id``, ``base_text_features`` and ``requires``): the core never
imports ``adapters``. It also reads three hooks the adapter contract declares with defaults (``adapters.contract``):
``cls_columns`` ("all" when absent), ``text_feature_scope()`` (none when absent), both delegated by a stack to
its tuner, and ``rows_independent`` (False when absent: ID and negative crops in two calls).

Hooks a TrainingTask subclass may use (each with a default here): ``extra_losses(o)`` (the method's own terms),
``term(name, o)`` (a configured term computed its own way), ``trains_stacked`` (it also trains the method stacked
on a trained prompt adapter) and ``prepare(inputs)`` (a typed data-preparation step before training, given a
:class:`PrepareInputs`; e.g. LAPT encodes images of its negative labels).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from .. import losses as L
from ..batch_keys import CONDITION, ID_LABELS, IMAGE, TRAIN_SUFFIX, train_key
from ..errors import ClipoodError, unknown


@dataclass
class LossInputs:
    """What loss terms see: adapter outputs for ID and negative crops plus the batch and settings."""

    id_out: Any
    neg_out: Any | None
    batch: Mapping[str, torch.Tensor]
    num_id: int
    logit_scale: float
    base_text_features: torch.Tensor
    options: dict = field(default_factory=dict)


CLS_COLUMNS = ("all", "id")


@dataclass(frozen=True)
class PrepareInputs:
    """What :meth:`TrainingTask.prepare` receives, built by the caller (the recipe) before training:

    backbone:  the frozen backbone (``encode_images``, ``preprocess``, ``text_path``, ``tokenizer``);
    device:    where the training tensors live;
    seed:      the run's seed (for anything the step draws or renders);
    world_dir: the mini world's folder when the run is on it, else None (images can be rendered only there);
    progress:  whether the step may show progress bars.

    The label set (names, negatives with their parts of speech ``neg_pos``) is the adapter's ``context``.
    """

    backbone: Any
    device: Any
    seed: int = 0
    world_dir: Path | None = None
    progress: bool = False


def _cls(o: LossInputs) -> torch.Tensor:
    """Eq. 7: CE over all K labels for ID crops (grouped negatives optional, as in the official code), or over
    the N ID columns only with ``options["cls_columns"] == "id"`` (CoOp / LoCoOp as released)."""
    logits = o.logit_scale * o.id_out.logits
    if o.options.get("cls_columns", "all") == "id":
        return L.classification_loss(logits[:, : o.num_id], o.batch[ID_LABELS], num_id=o.num_id)
    return L.classification_loss(logits, o.batch[ID_LABELS], num_id=o.num_id,
                                 groups=int(o.options.get("cls_groups", 1)), seed=int(o.options.get("seed", 0)))


def _ood(o: LossInputs) -> torch.Tensor:
    """Eq. 8: log Σ_ID softmax for negative (background) crops (averaged over negative groups, optional)."""
    if o.neg_out is None:
        raise ClipoodError("the 'ood' loss needs negative crops (neg_features) in the batch")
    return L.ood_loss(o.logit_scale * o.neg_out.logits, o.num_id, groups=int(o.options.get("ood_groups", 1)),
                      seed=int(o.options.get("seed", 0)))


def _base_cos(o: LossInputs) -> torch.Tensor:
    parts = [x.base_cos for x in (o.id_out, o.neg_out) if x is not None and x.base_cos is not None]
    if not parts:
        raise ClipoodError("the 'kr' loss needs an adapter whose output carries base_cos (tuned text features)")
    return torch.cat([p.reshape(-1) for p in parts]) if len(parts) > 1 else parts[0]


def _kr(o: LossInputs) -> torch.Tensor:
    """Eq. 9: 1 − mean cos(c_i, c'_i) over all rows (and images, for image-conditional adapters)."""
    return L.kr_cos_loss(_base_cos(o))


def _frozen_logits(o: LossInputs, feats: torch.Tensor) -> torch.Tensor:
    return o.logit_scale * (feats @ o.base_text_features.T)


def _kr_logit(o: LossInputs) -> torch.Tensor:
    """KR on logits (Fig. 4c): tuned vs frozen logits of the same crops."""
    t = torch.cat([o.id_out.logits] + ([o.neg_out.logits] if o.neg_out is not None else []))
    f = torch.cat([o.batch[train_key("id")]] + ([o.batch[train_key("neg")]] if o.neg_out is not None else []))
    return L.kr_logit_loss(o.logit_scale * t, _frozen_logits(o, f))


def _kr_prob(o: LossInputs) -> torch.Tensor:
    """KR on probabilities (Fig. 4c): KL(frozen softmax ‖ tuned softmax)."""
    t = torch.cat([o.id_out.logits] + ([o.neg_out.logits] if o.neg_out is not None else []))
    f = torch.cat([o.batch[train_key("id")]] + ([o.batch[train_key("neg")]] if o.neg_out is not None else []))
    return L.kr_prob_loss(o.logit_scale * t, _frozen_logits(o, f))


LOSS_TERMS: dict[str, Callable[[LossInputs], torch.Tensor]] = {
    "cls": _cls, "ood": _ood, "kr": _kr, "kr_logit": _kr_logit, "kr_prob": _kr_prob,
}


def check_loss_weights(loss_weights: Mapping[str, float]) -> None:
    """Raise ClipoodError unless every term is known and every weight is a finite number >= 0 (not all 0)."""
    if not isinstance(loss_weights, Mapping):
        raise ClipoodError(f"losses must map loss terms to weights (e.g. cls: 1, kr: 100), got {loss_weights!r}")
    for name, w in loss_weights.items():
        if name not in LOSS_TERMS:
            raise unknown("loss term", name, LOSS_TERMS)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ClipoodError(f"loss weight for '{name}' (losses.{name}) must be a number >= 0, got {w!r}; "
                               f"use 0 to turn the term off")
    if not any(w > 0 for w in loss_weights.values()):
        raise ClipoodError("every loss weight is 0: nothing to train (set e.g. losses.cls=1)")


def adapter_inputs(batch: Mapping[str, torch.Tensor], prefix: str, requires=frozenset({"image_features"})) -> dict:
    """The adapter batch for the ``id`` or ``neg`` crops: ``image_features`` always, ``condition_features``
    when the batch has it, ``local_features`` when the adapter requires it (and the batch has it: otherwise the
    adapter names what is missing)."""
    out = {IMAGE: batch[train_key(prefix, IMAGE)]}
    for key in TRAIN_SUFFIX:
        src = batch.get(train_key(prefix, key))
        if key != IMAGE and src is not None and (key == CONDITION or key in requires):
            out[key] = src
    return out


def split_rows(out: Any, n: int) -> tuple[Any, Any]:
    """An adapter output over ``n + m`` stacked rows → the outputs of the first ``n`` and of the other ``m`` rows:
    ``logits`` and per-row tensors (``base_cos`` of shape rows×K, extras whose first dimension is the rows) are
    cut, per-label tensors (``base_cos`` of shape K, other extras) belong to both."""
    rows = out.logits.shape[0]

    def cut(t, part, min_dim=1):
        if not torch.is_tensor(t) or t.ndim < min_dim or t.shape[0] != rows:
            return t
        return t[:n] if part == 0 else t[n:]

    return tuple(dataclasses.replace(out, logits=cut(out.logits, i), base_cos=cut(out.base_cos, i, min_dim=2),
                                     extras={k: cut(v, i) for k, v in out.extras.items()}) for i in (0, 1))


class TrainingTask(nn.Module):
    """An adapter trained with ``Σ weight · term`` (Eq. 10 for KR-NFT: cls + λ1·ood + λ2·kr).

    ``options``: ``cls_groups`` / ``ood_groups`` (negative groups of L_p / L_n, 1 = ungrouped), ``seed`` (their
    permutation), ``always_neg`` (run negative crops even without an ``ood`` term), ``cls_columns`` ("all" |
    "id"; default: the adapter's ``cls_columns`` attribute, else "all").
    """

    #: True when this task also trains its method stacked on a trained prompt adapter (``self.adapter`` is then
    #: the stack; NegPrompt's terms read its tuner); a stack of another tuner trains with the plain terms.
    trains_stacked: ClassVar[bool] = False

    def __init__(self, adapter: nn.Module, loss_weights: Mapping[str, float], *, logit_scale: float = 100.0,
                 options: Mapping[str, Any] | None = None):
        super().__init__()
        check_loss_weights(loss_weights)
        self.adapter = adapter
        self.loss_weights = {k: float(v) for k, v in loss_weights.items() if v > 0}
        self.logit_scale = float(logit_scale)
        self.options = dict(options or {})
        cols = self.options.get("cls_columns")
        if cols is None:
            cols = getattr(adapter, "cls_columns", None) or "all"  # declared by the adapter contract
        if cols not in CLS_COLUMNS:
            raise unknown("cls_columns", cols, CLS_COLUMNS)
        self.options["cls_columns"] = cols

    def prepare(self, inputs: PrepareInputs) -> None:
        """The typed data-preparation step, run once before training (after the adapter is built): a method
        that trains on more than the crops encodes that data here (LAPT: images of its negative labels) and
        may move ``self.adapter`` to the label set it trains on. The default has nothing to prepare."""

    def extra_losses(self, o: LossInputs) -> dict[str, tuple[float, torch.Tensor]]:
        """Method-specific terms ``{name: (weight, value)}`` added to the total; none here. Subclasses defined
        next to their adapter (LoCoOp's entropy term, LAPT's mixing) override it; the core knows no method."""
        return {}

    @property
    def needs_negatives(self) -> bool:
        return "ood" in self.loss_weights or bool(self.options.get("always_neg", False))

    def term(self, name: str, o: LossInputs) -> torch.Tensor:
        """The value of the configured term ``name`` (a subclass may compute a term its own way: LAPT's L_cls)."""
        return LOSS_TERMS[name](o)

    def _feature_scope(self) -> contextlib.AbstractContextManager:
        """The adapter's text-feature scope (declared by the adapter contract; a stack's is its tuner's): one
        text-encoder pass per context and step."""
        scope = getattr(self.adapter, "text_feature_scope", None)
        return scope() if callable(scope) else contextlib.nullcontext()

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self._feature_scope():
            return self._forward(batch)

    def _adapter_outputs(self, batch: Mapping[str, torch.Tensor], requires: frozenset) -> tuple[Any, Any | None]:
        """The adapter's outputs on the ID crops and (when a term needs them) the negative crops; an adapter that
        declares ``rows_independent`` scores both in one call (the rows' outputs are what two calls give)."""
        a = self.adapter
        id_in = adapter_inputs(batch, "id", requires)
        if not (self.needs_negatives and batch.get(train_key("neg")) is not None):
            return a(id_in), None
        neg_in = adapter_inputs(batch, "neg", requires)
        if not getattr(a, "rows_independent", False) or id_in.keys() != neg_in.keys():  # declared by the contract
            return a(id_in), a(neg_in)
        both = a({k: torch.cat([id_in[k], neg_in[k]]) for k in id_in})
        return split_rows(both, id_in[IMAGE].shape[0])

    def _forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a = self.adapter
        requires = frozenset(a.requires)
        id_out, neg_out = self._adapter_outputs(batch, requires)
        o = LossInputs(id_out, neg_out, batch, a.num_id, self.logit_scale, a.base_text_features, self.options)
        out: dict[str, torch.Tensor] = {}
        total = None
        weights: dict[str, float] = {}
        for name, w in self.loss_weights.items():
            v = self.term(name, o)
            out[f"{name}_loss"] = v.detach()
            total = w * v if total is None else total + w * v
            weights[f"{name}_loss"] = float(w)
        for name, (w, v) in self.extra_losses(o).items():
            out[f"{name}_loss"] = v.detach()
            total = w * v if total is None else total + w * v
            weights[f"{name}_loss"] = float(w)
        out["loss"] = total
        self.term_weights = weights  # the weight of each logged ``<term>_loss`` (the loss plot weights them)
        return out


#: former names, kept for existing callers
Method = TrainingTask
Outputs = LossInputs
