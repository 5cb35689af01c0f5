"""Input checks shared by the post-hoc scores: one-line :class:`ClipoodError` before any work."""
from __future__ import annotations

import math

import torch

from clipood.errors import ClipoodError


def as_matrix(x: object, name: str, ndim: int = 2, shape: str = "(B, F)") -> torch.Tensor:
    """A real floating tensor with ``ndim`` dims and a non-empty last dim; integers and half precision become
    float32 (float64 stays float64)."""
    if not isinstance(x, torch.Tensor):
        raise ClipoodError(f"{name} must be a torch.Tensor {shape}, got {type(x).__name__}; wrap it with "
                           f"torch.as_tensor")
    if x.dim() != ndim:
        raise ClipoodError(f"{name} must be {ndim}-D {shape}, got shape {tuple(x.shape)}")
    if x.shape[-1] == 0:
        raise ClipoodError(f"{name} has an empty last dimension (shape {tuple(x.shape)})")
    if x.is_complex() or x.dtype == torch.bool:
        raise ClipoodError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x


def out_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, float32 otherwise (the convention of :mod:`clipood.scores`)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def positive(value: object, name: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ClipoodError(f"{name} must be a number > 0, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ClipoodError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def non_negative(value: object, name: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ClipoodError(f"{name} must be a number >= 0, got {value!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise ClipoodError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def percentile(value: object, name: str = "percentile") -> float:
    try:
        p = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ClipoodError(f"{name} must be a number in [0, 100], got {value!r}") from None
    if not 0.0 <= p <= 100.0:
        raise ClipoodError(f"{name}={value!r} is out of range; use a number in [0, 100] (OpenOOD: 90)")
    return p


def integer(value: object, name: str, low: int, high: int | None = None, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClipoodError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ClipoodError(f"{name}={value} is out of range {rng}" + (f"; {hint}" if hint else ""))
    return value


def same_width(features: torch.Tensor, width: int, name: str, what: str) -> None:
    if features.shape[-1] != width:
        raise ClipoodError(f"{name} has {features.shape[-1]} columns but {what} has {width}; pass features from "
                           f"the same space the statistics / head were built on")


def labels_vector(labels: object, n: int, num_classes: int, name: str = "labels") -> torch.Tensor:
    """Integer class indices (n,) in [0, num_classes)."""
    if not isinstance(labels, torch.Tensor):
        raise ClipoodError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ClipoodError(f"{name} must have shape ({n},) to match the features, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.is_complex() or labels.dtype == torch.bool:
        raise ClipoodError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ClipoodError(f"{name} holds class {int(labels.min())}..{int(labels.max())} but num_classes="
                           f"{num_classes}; labels must be 0..num_classes-1")
    return labels.long()
