"""What an adapter is built from: :class:`AdapterContext`.

A context carries everything any CLIP OOD method needs about its label set and its backbone:

- ``text_features``: the frozen base text features C (K×D, N ID rows first, then M negative rows);
- ``id_names`` + ``id_templates``: the N ID class names and the prompt templates their rows were encoded with
  (several templates = CLIP's ensemble: mean of normalised features, normalised again);
- ``neg_names`` + ``neg_templates``: the M negative labels and their templates (one template for all, or one
  per label: NegLabel uses a noun and an adjective template);
- ``text_path`` + ``tokenizer``: the backbone's frozen text tower as explicit steps
  (:class:`clipood.clip.encoders.TextPath`) and its tokenizer, for prompt learners;
- ``backbone``: the backbone's name, recorded in checkpoints;
- ``neg_pos``: the part of speech of each negative (``"noun"`` / ``"adj"``, mining order) when known (LAPT
  trains on the first of each in the released proportion); not recorded in checkpoints.

Feature tuners need only ``text_features``. The text path is a frozen callable outside the adapter's module
tree: it is never part of ``state_dict()`` and never saved. A context without names (``from_features``) serves
the v1 call ``NFT(text_features, num_id)``; relabelling and prompt learners need names.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from clipood.errors import ClipoodError

__all__ = ["AdapterContext", "as_context"]


def _check_text_features(text_features: Any) -> torch.Tensor:
    if not torch.is_tensor(text_features):
        raise ClipoodError(f"text_features must be a K×D tensor, got {type(text_features).__name__}")
    if text_features.ndim != 2 or text_features.shape[0] < 1 or text_features.shape[1] < 1:
        raise ClipoodError(
            f"text_features must be a K×D tensor (K labels, ID rows first), got shape {tuple(text_features.shape)}"
        )
    if not text_features.is_floating_point():
        raise ClipoodError(f"text_features must be floating point, got dtype {text_features.dtype}")
    text_features = text_features.detach()
    if text_features.dtype in (torch.float16, torch.bfloat16):
        # adapter arithmetic (norms of tuned features) wants fp32; autocast still applies to the matmuls
        text_features = text_features.float()
    if not bool(torch.isfinite(text_features).all()):
        raise ClipoodError("text_features contains NaN or infinite values")
    return text_features


def _check_names(what: str, names: Any) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ClipoodError(f"{what} must be a list of strings, got {names!r:.80}")
    return list(names)


def _check_templates(what: str, templates: Any) -> list[str]:
    if isinstance(templates, str):
        templates = [templates]
    templates = list(templates)
    if not templates:
        raise ClipoodError(f"{what} is empty; give at least one template such as 'a photo of a {{}}.'")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ClipoodError(f"{what}: template {t!r} must contain exactly one '{{}}' for the label name")
    return templates


@dataclass
class AdapterContext:
    """The label set and the frozen backbone parts an adapter is built and reloaded from (module docstring)."""

    text_features: torch.Tensor
    id_names: list[str] | None = None
    neg_names: list[str] | None = None
    id_templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    neg_templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    num_id: int | None = None
    text_path: Any = None
    tokenizer: Callable | None = None
    backbone: str | None = None
    neg_pos: list[str] | None = None

    def __post_init__(self) -> None:
        self.text_features = _check_text_features(self.text_features)
        k = self.text_features.shape[0]
        self.id_names = _check_names("id_names", self.id_names)
        self.neg_names = _check_names("neg_names", self.neg_names)
        self.id_templates = _check_templates("id_templates", self.id_templates)
        self.neg_templates = _check_templates("neg_templates", self.neg_templates)
        if self.id_names is not None:
            if self.num_id is not None and self.num_id != len(self.id_names):
                raise ClipoodError(f"num_id={self.num_id} but {len(self.id_names)} id_names were given")
            self.num_id = len(self.id_names)
        num_id = self.num_id
        if isinstance(num_id, bool) or not isinstance(num_id, int):
            raise ClipoodError(f"num_id must be an integer, got {num_id!r}")
        if not 1 <= num_id <= k:
            raise ClipoodError(
                f"num_id={num_id} must be between 1 and the number of text features K={k} "
                "(ID rows first, then negatives)"
            )
        if self.neg_names is not None and num_id + len(self.neg_names) != k:
            raise ClipoodError(f"{num_id} ID + {len(self.neg_names)} negative names do not match the K={k} rows "
                               "of text_features (ID rows first, then one row per negative)")
        if self.neg_pos is not None:
            self.neg_pos = _check_names("neg_pos", self.neg_pos)
            if self.neg_names is None or len(self.neg_pos) != len(self.neg_names):
                raise ClipoodError(f"neg_pos has {len(self.neg_pos)} parts of speech; give one per negative name "
                                   f"({len(self.neg_names or [])}) or None")
        if self.neg_names is not None and len(self.neg_templates) not in (1, len(self.neg_names)):
            raise ClipoodError(f"neg_templates has {len(self.neg_templates)} entries; give one template for all "
                               f"negatives or one per negative ({len(self.neg_names)})")

    # ------------------------------------------------------------------------------------ builders
    @classmethod
    def from_features(cls, text_features: torch.Tensor, num_id: int) -> "AdapterContext":
        """A context without names (the v1 call ``Adapter(text_features, num_id)``): enough for feature tuners."""
        return cls(text_features=text_features, num_id=num_id)

    @classmethod
    def from_backbone(cls, backbone, id_names: Sequence[str], neg_names: Sequence[str] = (), *,
                      id_templates: Sequence[str] | str = ("a photo of a {}.",),
                      neg_templates: Sequence[str] | str = ("a photo of a {}.",),
                      text_features: torch.Tensor | None = None,
                      neg_pos: Sequence[str] | None = None) -> "AdapterContext":
        """A full context for a :class:`clipood.clip.backbone.Backbone`: its text path, tokenizer and name.

        ``text_features`` defaults to encoding the names with their templates (ID: template ensemble;
        negatives: one prompt each); pass the features you already have to avoid encoding twice.
        """
        id_templates = _check_templates("id_templates", id_templates)
        neg_templates = _check_templates("neg_templates", neg_templates)
        if text_features is None:
            feats = [backbone.encode_text(list(id_names), templates=id_templates)]
            if len(neg_names):
                feats.append(backbone.encode_text(neg_prompts(list(neg_names), neg_templates)))
            text_features = torch.cat(feats).float().cpu()
        return cls(text_features=text_features, id_names=list(id_names), neg_names=list(neg_names),
                   id_templates=id_templates, neg_templates=neg_templates, text_path=backbone.text_path,
                   tokenizer=backbone.tokenizer, backbone=backbone.model_name,
                   neg_pos=None if neg_pos is None else list(neg_pos))

    @classmethod
    def from_label_set(cls, label_set, backbone=None, *, device=None, tokenizer: Callable | None = None
                       ) -> "AdapterContext":
        """The context of a split's :class:`clipood.labels.label_set.LabelSet` (its names, templates and frozen
        rows: nothing is re-encoded) on ``backbone``'s text path; ``tokenizer`` replaces the backbone's (e.g. one
        that refuses prompts too long for the text encoder); ``device``: where the features go."""
        feats = label_set.features if device is None else label_set.features.to(device)
        return cls(text_features=feats, id_names=list(label_set.id_names),
                   neg_names=list(label_set.neg_names) if label_set.neg_names else None,
                   id_templates=[label_set.id_template], neg_templates=label_set.neg_templates,
                   num_id=label_set.num_id, text_path=getattr(backbone, "text_path", None),
                   tokenizer=tokenizer if tokenizer is not None else getattr(backbone, "tokenizer", None),
                   backbone=getattr(backbone, "model_name", None),
                   neg_pos=list(label_set.neg_pos) if label_set.neg_names else None)

    def with_features(self, text_features: torch.Tensor) -> "AdapterContext":
        """The same labels and backbone with other base features (e.g. those a prompt learner produced)."""
        return replace(self, text_features=text_features)

    # ---------------------------------------------------------------------------------- properties
    @property
    def num_labels(self) -> int:
        return self.text_features.shape[0]

    @property
    def num_neg(self) -> int:
        return self.num_labels - int(self.num_id)

    @property
    def dim(self) -> int:
        return self.text_features.shape[1]

    @property
    def has_names(self) -> bool:
        return self.id_names is not None and self.neg_names is not None

    def neg_prompts(self) -> list[str]:
        """The prompt of every negative label (its template with the name filled in)."""
        if self.neg_names is None:
            raise ClipoodError("this context has no negative names (built from bare text features)")
        return neg_prompts(self.neg_names, self.neg_templates)

    def same_labels(self, other: "AdapterContext") -> bool:
        """Same ID and negative labels in the same order (by name when both have names, else by features)."""
        if self.has_names and other.has_names:
            return self.id_names == other.id_names and self.neg_names == other.neg_names
        return (self.num_id == other.num_id and self.text_features.shape == other.text_features.shape
                and torch.equal(self.text_features.cpu(), other.text_features.cpu()))

    def same_id_labels(self, other: "AdapterContext") -> bool:
        if self.id_names is not None and other.id_names is not None:
            return self.id_names == other.id_names
        n = self.num_id
        return (n == other.num_id and self.dim == other.dim
                and torch.equal(self.text_features[:n].cpu(), other.text_features[:n].cpu()))

    def require_text_path(self, who: str) -> None:
        """Raise a clear error unless names, a text path and a tokenizer are present (prompt learners)."""
        missing = [n for n, v in (("id_names", self.id_names), ("text_path", self.text_path),
                                  ("tokenizer", self.tokenizer)) if v is None]
        if missing:
            raise ClipoodError(
                f"adapter '{who}' encodes label names through the text encoder, but its context lacks "
                f"{', '.join(missing)}; build it with AdapterContext.from_backbone(backbone, id_names, neg_names) "
                f"(or load_adapter(path, backbone=backbone))"
            )

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records so that reloading can rebuild this context (JSON-serialisable)."""
        return {"id_names": self.id_names, "neg_names": self.neg_names, "id_templates": self.id_templates,
                "neg_templates": self.neg_templates, "num_id": self.num_id, "num_labels": self.num_labels,
                "dim": self.dim, "backbone": self.backbone}


def neg_prompts(names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Fill each negative name into its template (one template for all, or one per name)."""
    if len(templates) == 1:
        templates = list(templates) * len(names)
    return [t.replace("{}", n) for n, t in zip(names, templates)]


def as_context(context_or_features: Any, num_id: int | None = None) -> AdapterContext:
    """An :class:`AdapterContext` from a context, or from bare K×D text features and ``num_id`` (v1 call)."""
    if isinstance(context_or_features, AdapterContext):
        if num_id is not None and num_id != context_or_features.num_id:
            raise ClipoodError(f"num_id={num_id} contradicts the context's {context_or_features.num_id} ID labels")
        return context_or_features
    if num_id is None:
        raise ClipoodError("an adapter is built from an AdapterContext, or from text_features (K×D) and num_id")
    return AdapterContext.from_features(context_or_features, num_id)
