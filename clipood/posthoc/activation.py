"""Scores that change the penultimate features or the last layer before an energy score: ReAct, ASH (-P, -B,
-S), DICE, and GradNorm (the gradient norm of that last layer, in closed form).

``features`` are (B, F): a network's penultimate features. On CLIP these are the image tower's features before
the final projection (:func:`clipood.clip.pre_projection.pre_projection_features`), mapped to logits by a
:class:`~clipood.posthoc.heads.ProjectedHead` (or its ``linearised()`` ``LinearHead`` where a linear last layer is
needed). Returns (B,) with higher = more ID, float64 for float64 input and float32 otherwise.
"""
from __future__ import annotations

import torch

from clipood.errors import ClipoodError

from ._checks import as_matrix, out_dtype, same_width
from ._checks import percentile as check_percentile
from .heads import Head, apply_head, require_linear
from .quantile import linear_percentile

__all__ = ["ash_b", "ash_p", "ash_s", "ash_transform", "dice", "dice_mask", "gradnorm", "react"]


def _energy(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, dim=1)


def react(features: torch.Tensor, head: Head, *, threshold: float) -> torch.Tensor:
    """ReAct (Sun et al., NeurIPS 2021), OpenOOD ``react_postprocessor.py`` + ``networks/react_net.py``.

        S = log Σ_k exp(head(min(h, c))_k)

    every activation clipped from above at ``c``, then the energy (T = 1) of the head's logits. ``c`` is a
    percentile of the ID activations (OpenOOD: the 90th over all entries of the ID *validation* features;
    :class:`clipood.posthoc.fit.ReActFit` computes it exactly over any stream).
    """
    h = as_matrix(features, "features")
    try:
        c = float(threshold)
    except (TypeError, ValueError):
        raise ClipoodError(f"ReAct's threshold must be a number (ReActStats.threshold), got {threshold!r}") from None
    if c != c:
        raise ClipoodError("ReAct's threshold is NaN; refit it on finite ID features")
    return _energy(apply_head(head, h.clamp(max=c))).to(out_dtype(h))


def _keep(n: int, p: float) -> int:
    k = n - int(round(n * p / 100.0))  # Python's round is numpy's (half to even), as OpenOOD's np.round
    if k < 1:
        raise ClipoodError(f"ASH with percentile={p} keeps no activation of {n}; use a lower percentile "
                           f"(OpenOOD: 90)")
    return k


def ash_transform(features: torch.Tensor, *, percentile: float = 90.0, variant: str = "b") -> torch.Tensor:
    """ASH's activation shaping (Djurisic et al., ICLR 2023; OpenOOD ``networks/ash_net.py``), per sample.

    With n = F and k = n − round(n·p/100) kept entries (the k largest of each row), s1 = Σ h:

    * ``"p"`` (prune): the k largest keep their value, the rest become 0;
    * ``"b"`` (binarise): the k largest become s1 / k, the rest 0;
    * ``"s"`` (scale): prune, then multiply by exp(s1 / s2) with s2 the pruned row's sum.
    """
    h = as_matrix(features, "features")
    pct = check_percentile(percentile)
    if variant not in ("p", "b", "s"):
        raise ClipoodError(f"unknown ASH variant {variant!r}; choose 'p' (prune), 'b' (binarise) or 's' (scale)")
    k = _keep(h.shape[1], pct)
    top = torch.topk(h, k, dim=1)
    s1 = h.sum(dim=1, keepdim=True)
    src = top.values if variant != "b" else (s1 / k).expand(-1, k)
    out = torch.zeros_like(h).scatter_(1, top.indices, src)
    if variant == "s":
        out = out * torch.exp(s1 / out.sum(dim=1, keepdim=True))
    return out


def _ash(features: torch.Tensor, head: Head, percentile: float, variant: str) -> torch.Tensor:
    h = as_matrix(features, "features")
    return _energy(apply_head(head, ash_transform(h, percentile=percentile, variant=variant))).to(out_dtype(h))


def ash_p(features: torch.Tensor, head: Head, *, percentile: float = 90.0) -> torch.Tensor:
    """ASH-P: energy of the head's logits on pruned features (:func:`ash_transform` ``"p"``; OpenOOD p = 90)."""
    return _ash(features, head, percentile, "p")


def ash_b(features: torch.Tensor, head: Head, *, percentile: float = 90.0) -> torch.Tensor:
    """ASH-B, OpenOOD's ``ash`` (``ash_postprocessor.py``; ``ASHNet.forward_threshold`` applies ``ash_b``):
    energy of the head's logits on binarised features (:func:`ash_transform` ``"b"``), p = 90."""
    return _ash(features, head, percentile, "b")


def ash_s(features: torch.Tensor, head: Head, *, percentile: float = 90.0) -> torch.Tensor:
    """ASH-S: energy of the head's logits on pruned and rescaled features (:func:`ash_transform` ``"s"``)."""
    return _ash(features, head, percentile, "s")


def dice_mask(weight: torch.Tensor, mean_activation: torch.Tensor, *, percentile: float = 90.0) -> torch.Tensor:
    """DICE's weight mask: contribution u_j · W_kj (K×F) kept where it is above its ``percentile``-th value over
    all K·F entries (numpy's linear percentile, as OpenOOD's ``np.percentile``)."""
    w = as_matrix(weight, "head weight", shape="(K, F)")
    m = as_matrix(mean_activation, "mean_activation", ndim=1, shape="(F,)")
    same_width(w, m.shape[0], "head weight", "mean_activation")
    contrib = m.to(w.dtype)[None, :] * w
    return contrib > linear_percentile(contrib, check_percentile(percentile))


def dice(features: torch.Tensor, head: Head, *, mean_activation: torch.Tensor, percentile: float = 90.0
         ) -> torch.Tensor:
    """DICE (Sun & Li, ECCV 2022), OpenOOD ``dice_postprocessor.py`` (p = 90).

        S = log Σ_k exp(Σ_j M_kj W_kj h_j + b_k),   M = dice_mask(W, ū, p)

    ``mean_activation`` ū (F,) is the mean ID training feature (:class:`clipood.posthoc.fit.MeanFit`);
    ``head`` must be a :class:`LinearHead`.
    """
    h = as_matrix(features, "features")
    lin = require_linear(head, "dice")
    same_width(h, lin.in_features, "features", "the head's weight")
    mask = dice_mask(lin.weight, mean_activation, percentile=percentile)
    dt = torch.promote_types(h.dtype, lin.weight.dtype)
    z = h.to(dt) @ (lin.weight.to(dt) * mask).T + lin.bias_or_zeros(dt)
    return _energy(z).to(out_dtype(h))


def gradnorm(features: torch.Tensor, head: Head) -> torch.Tensor:
    """GradNorm (Huang et al., NeurIPS 2021), OpenOOD ``gradnorm_postprocessor.py``, in closed form.

    OpenOOD back-propagates L = −Σ_k log softmax(z)_k (targets all ones, K classes) for each sample to the last
    layer's weight and sums |∂L/∂W|. With z = W h + b, ∂L/∂z = K·softmax(z) − 1 and ∂L/∂W = (K·p − 1) hᵀ, so

        S = ‖K·softmax(z) − 1‖₁ · ‖h‖₁

    with no per-sample backward pass. ``head`` must be a :class:`LinearHead`.
    """
    h = as_matrix(features, "features")
    lin = require_linear(head, "gradnorm")
    z = lin(h)
    p = torch.softmax(z, dim=1)
    return ((lin.num_classes * p - 1.0).abs().sum(dim=1) * h.to(z.dtype).abs().sum(dim=1)).to(out_dtype(h))
