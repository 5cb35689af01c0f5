"""Fitted statistics of ID training features, as plain named tensors.

Every class is a dataclass of tensors (scalars as 0-d tensors) with

* ``state_dict()`` → ``{name: tensor}``: safetensors-ready (``clipood.io.save_safetensors`` writes it as is);
* ``from_state_dict(d)``: the object back, with its shapes checked (a wrong or partial file is a
  :class:`ClipoodError` naming the missing / odd tensor);
* ``content_key()``: sha256 of the kind, names, dtypes, shapes and bytes (16 hex digits) — equal statistics give
  equal keys, so a detector folder or cache can name and verify them.

:func:`fit_key` is the key *before* fitting (kind + parameters + a key of the feature source), for a cache lookup.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, ClassVar, Mapping

import torch

from clipood.errors import ClipoodError

__all__ = ["GaussianStats", "KNNStats", "MeanStats", "ReActStats", "Statistics", "ViMStats", "fit_key"]

#: bump when a statistic's definition changes, so old cached statistics are not reused
STATS_VERSION = 1


def fit_key(kind: str, params: Mapping[str, Any], source: str) -> str:
    """Cache key of statistics not yet fitted: ``kind`` (e.g. ``"gaussian"``), its fit parameters (JSON-able) and
    ``source``, a content key of the ID features (e.g. ``clipood.clip.image_features.cache_key`` of backbone + dataset)."""
    blob = json.dumps({"kind": kind, "params": dict(params), "source": str(source), "v": STATS_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Statistics:
    """Base class: a frozen dataclass whose fields are tensors."""

    KIND: ClassVar[str] = ""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]):
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in state]
        extra = sorted(set(state) - set(names))
        if missing or extra:
            what = (f"missing {', '.join(missing)}" if missing else "") + \
                   ("; " if missing and extra else "") + (f"unexpected {', '.join(extra)}" if extra else "")
            raise ClipoodError(f"not {cls.KIND} statistics ({what}); refit them or load the right file")
        for n in names:
            if not isinstance(state[n], torch.Tensor):
                raise ClipoodError(f"{cls.KIND} statistics: '{n}' must be a tensor, got {type(state[n]).__name__}")
        return cls(**{n: state[n] for n in names})

    def content_key(self) -> str:
        h = hashlib.sha256(f"{self.KIND}|{STATS_VERSION}".encode())
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]

    def _shape(self, name: str, ndim: int, *sizes: int | None) -> torch.Tensor:
        t = getattr(self, name)
        bad = t.dim() != ndim or any(s is not None and t.shape[i] != s for i, s in enumerate(sizes))
        if bad:
            want = "(" + ", ".join("*" if s is None else str(s) for s in sizes) + ")" if sizes else "()"
            raise ClipoodError(f"{self.KIND} statistics: '{name}' has shape {tuple(t.shape)}, expected {want}; "
                               f"the file is damaged or from another feature space — refit")
        return t


@dataclasses.dataclass(frozen=True)
class GaussianStats(Statistics):
    """Class-conditional Gaussians with a shared covariance (Mahalanobis / MDS) and the background Gaussian of
    all features (RMDS). ``class_means`` C×F, ``precision`` F×F (pseudo-inverse of the within-class covariance),
    ``background_mean`` F, ``background_precision`` F×F, ``class_counts`` C."""

    KIND: ClassVar[str] = "gaussian"
    class_means: torch.Tensor
    precision: torch.Tensor
    background_mean: torch.Tensor
    background_precision: torch.Tensor
    class_counts: torch.Tensor

    def __post_init__(self):
        c, f = self._shape("class_means", 2, None, None).shape
        self._shape("precision", 2, f, f)
        self._shape("background_mean", 1, f)
        self._shape("background_precision", 2, f, f)
        self._shape("class_counts", 1, c)


@dataclasses.dataclass(frozen=True)
class ViMStats(Statistics):
    """ViM's principal space: ``origin`` u = −W⁺b (F), ``null_space`` (F×(F−dim)), the eigenvectors of the
    F − dim smallest eigenvalues of the covariance about u, and ``alpha`` (0-d)."""

    KIND: ClassVar[str] = "vim"
    origin: torch.Tensor
    null_space: torch.Tensor
    alpha: torch.Tensor

    def __post_init__(self):
        f = self._shape("origin", 1, None).shape[0]
        self._shape("null_space", 2, f, None)
        self._shape("alpha", 0)


@dataclasses.dataclass(frozen=True)
class KNNStats(Statistics):
    """KNN's bank: the L2-normalised ID training features (N×F), in the dtype it was fitted with."""

    KIND: ClassVar[str] = "knn"
    bank: torch.Tensor

    def __post_init__(self):
        self._shape("bank", 2, None, None)
        if self.bank.shape[0] == 0:
            raise ClipoodError("knn statistics: the bank is empty; fit it on at least one ID feature")


@dataclasses.dataclass(frozen=True)
class ReActStats(Statistics):
    """ReAct's clipping threshold (0-d) and the percentile of the ID activations it is (0-d)."""

    KIND: ClassVar[str] = "react"
    threshold: torch.Tensor
    percentile: torch.Tensor

    def __post_init__(self):
        self._shape("threshold", 0)
        self._shape("percentile", 0)


@dataclasses.dataclass(frozen=True)
class MeanStats(Statistics):
    """The mean ID training feature (F) and how many features it averages (0-d); DICE's ū."""

    KIND: ClassVar[str] = "mean"
    mean: torch.Tensor
    count: torch.Tensor

    def __post_init__(self):
        self._shape("mean", 1, None)
        self._shape("count", 0)
