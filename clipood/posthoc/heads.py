"""Classifier heads that map features to logits, for the scores that modify features before the logits.

OpenOOD's postprocessors read a network's penultimate features and its final linear layer (``net.get_fc()``).
CLIP has no trained linear layer; its "classifier" is the text features. Two heads cover it:

* :class:`LinearHead` ``z = x Wᵀ + b``. For CLIP in the joint space: ``x`` the L2-normalised image feature
  (B×D), ``W = s·T̂`` (K×D, T̂ the unit text features, s the logit scale), ``b = 0``: exactly CLIP's scaled
  cosine logits. Any trained linear probe is a ``LinearHead`` too.
* :class:`ProjectedHead` ``z = s · L2(h Pᵀ + p) · T̂ᵀ``: CLIP's own path from the image tower's features
  *before* the final projection (``h``, B×F; :func:`clipood.clip.pre_projection.image_projection` gives ``P``, ``p``).
  It is not linear in ``h`` (the normalisation); :meth:`ProjectedHead.linearised` drops the normalisation and
  gives the ``LinearHead`` ``W = s·T̂·P``, ``b = s·T̂·p`` for the scores that need a linear layer (GradNorm,
  DICE, ViM) on the penultimate space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError

from ._checks import as_matrix, positive, same_width

__all__ = ["Head", "LinearHead", "ProjectedHead", "apply_head"]


@dataclass(frozen=True)
class LinearHead:
    """``logits = features @ weight.T + bias``; weight (K×F), bias (K,) or None."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    def __post_init__(self):
        w = as_matrix(self.weight, "head weight", shape="(K, F)")
        object.__setattr__(self, "weight", w)
        if self.bias is not None:
            b = as_matrix(self.bias, "head bias", ndim=1, shape="(K,)")
            if b.shape[0] != w.shape[0]:
                raise ClipoodError(f"head bias has {b.shape[0]} entries but the weight has {w.shape[0]} rows")
            object.__setattr__(self, "bias", b)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    def bias_or_zeros(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        b = self.bias if self.bias is not None else self.weight.new_zeros(self.weight.shape[0])
        return b if dtype is None else b.to(dtype)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        same_width(features, self.in_features, "features", "the head's weight")
        dt = torch.promote_types(features.dtype, self.weight.dtype)
        z = features.to(dt) @ self.weight.to(dt, copy=False).T
        return z if self.bias is None else z + self.bias.to(dt)

    @classmethod
    def from_text_features(cls, text_features: torch.Tensor, logit_scale: float = 100.0) -> "LinearHead":
        """CLIP's zero-shot head on normalised image features: ``W = logit_scale · L2(text_features)``, no bias."""
        t = as_matrix(text_features, "text_features", shape="(K, D)")
        return cls(positive(logit_scale, "logit_scale") * F.normalize(t, dim=-1))


@dataclass(frozen=True)
class ProjectedHead:
    """CLIP's logits from pre-projection image features: ``s · L2(h Pᵀ + p) · L2(T)ᵀ``.

    ``projection`` is D×F (``image_projection(backbone).weight``), ``projection_bias`` D or None (a ResNet's
    attention-pool output layer has one), ``text_features`` K×D.
    """

    projection: torch.Tensor
    text_features: torch.Tensor
    logit_scale: float = 100.0
    projection_bias: torch.Tensor | None = None

    def __post_init__(self):
        p = as_matrix(self.projection, "projection", shape="(D, F)")
        t = F.normalize(as_matrix(self.text_features, "text_features", shape="(K, D)"), dim=-1)
        if t.shape[1] != p.shape[0]:
            raise ClipoodError(f"text_features have {t.shape[1]} columns but the projection maps to {p.shape[0]}; "
                               f"use text features of the same backbone")
        object.__setattr__(self, "projection", p)
        object.__setattr__(self, "text_features", t)
        object.__setattr__(self, "logit_scale", positive(self.logit_scale, "logit_scale"))
        if self.projection_bias is not None:
            object.__setattr__(self, "projection_bias",
                               as_matrix(self.projection_bias, "projection_bias", ndim=1, shape="(D,)"))

    @property
    def in_features(self) -> int:
        return int(self.projection.shape[1])

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-projection features (B×F) → image features in the joint space (B×D, not normalised)."""
        same_width(features, self.in_features, "features", "the projection")
        dt = torch.promote_types(features.dtype, self.projection.dtype)
        v = features.to(dt) @ self.projection.to(dt).T
        return v if self.projection_bias is None else v + self.projection_bias.to(dt)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        v = F.normalize(self.project(features), dim=-1)
        return self.logit_scale * v @ self.text_features.to(v.dtype).T

    def linearised(self) -> LinearHead:
        """The head without the normalisation: ``W = s·T̂·P`` (K×F), ``b = s·T̂·p``."""
        w = self.logit_scale * self.text_features @ self.projection.to(self.text_features.dtype)
        b = None
        if self.projection_bias is not None:
            b = self.logit_scale * self.text_features @ self.projection_bias.to(self.text_features.dtype)
        return LinearHead(w, b)


Head = Union[LinearHead, ProjectedHead, Callable[[torch.Tensor], torch.Tensor]]


def apply_head(head: Head, features: torch.Tensor) -> torch.Tensor:
    """``head(features)`` checked to be (B, K) logits."""
    if not callable(head):
        raise ClipoodError(f"head must be a LinearHead, a ProjectedHead or a callable features → logits, got "
                           f"{type(head).__name__}")
    z = head(features)
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != features.shape[0]:
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ClipoodError(f"head returned {got}; it must map (B, F) features to (B, K) logits")
    return z


def require_linear(head: object, score: str) -> LinearHead:
    if not isinstance(head, LinearHead):
        raise ClipoodError(f"the '{score}' score needs a linear head (clipood.posthoc.LinearHead), got "
                           f"{type(head).__name__}; for pre-projection CLIP features use ProjectedHead.linearised()")
    return head
