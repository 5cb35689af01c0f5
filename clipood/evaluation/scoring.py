"""The one scoring path of evaluation and :class:`clipood.Detector`: a method's cosine logits for a batch of
encoded features (an adapter's tuned label features, or the frozen ones) → the per-image score with its
temperature rule (:func:`clipood.scores.score_temperature`) → (score, predicted ID class)
(:func:`clipood.evaluation.protocol.score_cosines`).

``adapter_logits`` is the adapter → logits step; a new score (e.g. a post-hoc one) plugs in after it."""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import ClipoodError

__all__ = ["adapter_logits", "frozen_logits", "own_scores"]


@torch.no_grad()
def adapter_logits(adapter, batch: Mapping[str, torch.Tensor], *, local: bool = False, own_score: bool = False):
    """Cosine logits B×K of an adapter for a batch (``image_features``, ``local_features`` where encoded), on
    the CPU. ``local``: also its patch cosines B×T×N (``extras["local_logits"]``: what GL-MCM scores).
    ``own_score``: also the adapter's own released test score B (``extras["ood_score"]``: ``eval.score=adapter``)."""
    dev = adapter.base_text_features.device
    out = adapter({k: v.to(dev) for k, v in batch.items()})
    if own_score:
        return out.logits.cpu(), own_scores(adapter, out).cpu()
    if not local:
        return out.logits.cpu()
    patches = out.extras.get("local_logits")
    if patches is None:
        raise ClipoodError(f"eval.score=glmcm needs patch logits; adapter '{adapter.name}' returns none "
                           f"(use locoop, or eval.score=mcm)")
    return out.logits.cpu(), patches.cpu()


def frozen_logits(batch: Mapping[str, torch.Tensor], text_features: torch.Tensor) -> torch.Tensor:
    """Frozen CLIP: cos(v, c_i) for all K labels (B×K)."""
    return batch["image_features"].float() @ text_features.T


def own_scores(adapter, out) -> torch.Tensor:
    """``extras["ood_score"]`` of an adapter output (``eval.score=adapter``), or a one-line error naming the fix."""
    own = out.extras.get("ood_score")
    if own is None:
        raise ClipoodError(f"eval.score=adapter needs an adapter with its own test score (extras['ood_score']: lsn, "
                           f"negprompt); '{adapter.name}' has none, choose a score of clipood.scores (e.g. neglabel)")
    return own
