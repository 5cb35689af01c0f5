"""One split's label set, made once: its ID names and prompt template, its mined negatives with their part of
speech and templates, and the frozen label features C (K×D: N ID rows first, then the M negatives). Adapters are
built from it (``adapters.AdapterContext.from_label_set``); evaluation scores against its features."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from ..errors import ClipoodError

__all__ = ["LabelSet"]


@dataclass(frozen=True)
class LabelSet:
    """ID names + negatives (words, part of speech ``noun`` / ``adj``) + the templates their rows were encoded
    with + the K×D features of those rows. Without negative names the rows after the N ID rows are unnamed
    negatives (features given as they are)."""

    id_names: tuple[str, ...]
    features: torch.Tensor
    id_template: str = "a photo of a {}."
    neg_names: tuple[str, ...] = ()
    neg_pos: tuple[str, ...] = ()
    #: part of speech → the template of its negatives
    pos_templates: Mapping[str, str] = field(default_factory=lambda: {"noun": "a photo of a {}.",
                                                                      "adj": "a photo of a {}."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "id_names", tuple(self.id_names))
        object.__setattr__(self, "neg_names", tuple(self.neg_names))
        object.__setattr__(self, "neg_pos", tuple(self.neg_pos) or ("noun",) * len(self.neg_names))
        object.__setattr__(self, "pos_templates", dict(self.pos_templates))
        if len(self.neg_pos) != len(self.neg_names):
            raise ClipoodError(f"label set: {len(self.neg_names)} negatives but {len(self.neg_pos)} parts of speech")
        unknown = sorted(set(self.neg_pos) - set(self.pos_templates))
        if unknown:
            raise ClipoodError(f"label set: no template for the negatives' part of speech {unknown[0]!r}")
        rows = self.features.shape[0] if self.features.ndim == 2 else -1
        if rows < self.num_id or (self.neg_names and rows != self.num_id + len(self.neg_names)):
            raise ClipoodError(f"label set: features of shape {tuple(self.features.shape)} do not hold "
                               f"{self.num_id} ID + {len(self.neg_names)} negative rows")

    @classmethod
    def from_mined(cls, id_names: Sequence[str], features: torch.Tensor, negatives, settings: Mapping) -> "LabelSet":
        """From mined negatives (a :class:`clipood.negatives.NegativeSet`, or None) and the ``negatives``
        settings they were mined and encoded with (``id_template``, ``noun_template``, ``adj_template``)."""
        return cls(tuple(id_names), features, settings["id_template"],
                   tuple(negatives.words) if negatives is not None else (),
                   tuple(negatives.pos) if negatives is not None else (),
                   {"noun": settings["noun_template"], "adj": settings["adj_template"]})

    @property
    def num_id(self) -> int:
        return len(self.id_names)

    @property
    def neg_templates(self) -> list[str]:
        """The template of each negative (its part of speech's), or the noun template when there are none."""
        if not self.neg_names:
            return [self.pos_templates["noun"]]
        return [self.pos_templates[p] for p in self.neg_pos]
