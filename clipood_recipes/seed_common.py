"""Shared pieces of the seed-method recipes (CLIPN, ZOC, the fine-tuned encoder): a per-image score as a row of
the results tables, split features with the image features replaced, and a small Accelerate loop.

The evaluation scores methods by a named score of cosine logits (:class:`clipood.evaluation.runner.ScoredMethod`).
Methods whose score is not a function of one logit matrix (CLIPN's CTW / ATD use two, ZOC a per-image candidate
set, the post-hoc scores features and fitted statistics) enter it through :func:`scored_method`: their
``(score, predicted class)`` per image become a B×N matrix whose maximum is the score, at the predicted class, read
by the ``max_logit`` score, so every row, split average and plot is the evaluation's own."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping

import torch

from clipood.evaluation.protocol import SplitFeatures
from clipood.evaluation.runner import ScoredMethod

__all__ = ["scored_method", "score_matrix", "with_features", "accelerate_steps"]

ScoreFn = Callable[[Mapping[str, torch.Tensor], SplitFeatures], tuple[torch.Tensor, torch.Tensor]]


def score_matrix(score: torch.Tensor, pred: torch.Tensor, num_id: int, logit_scale: float) -> torch.Tensor:
    """B×N "cosines" whose ``logit_scale``-scaled row maximum is ``score``, at column ``pred`` (the others one
    below it): what ``max_logit`` reads back as the score and the predicted class."""
    s = score.double()
    out = (s - 1.0)[:, None].expand(-1, num_id).clone()
    out.scatter_(1, pred.long().view(-1, 1), s.view(-1, 1))
    return out / float(logit_scale)


def scored_method(name: str, fn: ScoreFn, logit_scale: float) -> ScoredMethod:
    """A results row for ``fn(batch, sf) -> (ID score per image, predicted ID class)`` (higher = more ID)."""

    def logits_fn(batch, sf):
        score, pred = fn(batch, sf)
        return score_matrix(score, pred, sf.num_id, logit_scale)

    return ScoredMethod(name, logits_fn, "max_logit", 1.0)


def with_features(sfs: list[SplitFeatures], encode: Callable[[torch.Tensor], torch.Tensor]) -> list[SplitFeatures]:
    """The splits with every set's ``features`` replaced by ``encode(features)`` (labels kept)."""

    def swap(sets):
        return {n: {"features": encode(f["features"]), "labels": f["labels"]} for n, f in sets.items()}

    return [replace(sf, id_feats=swap(sf.id_feats), ood_feats=swap(sf.ood_feats)) for sf in sfs]


def accelerate_steps(accelerator, model: torch.nn.Module, optimizer, steps: int, loss_fn: Callable[[int], dict],
                     *, progress: bool = False, desc: str = "train") -> list[dict]:
    """``steps`` optimisation steps through Accelerate: ``loss_fn(step)`` → ``{"loss": ..., "<term>_loss": ...}``
    on the prepared ``model``; returns the per-step log (floats). A non-finite loss stops with a one-line error."""
    import math

    from tqdm.auto import tqdm

    from clipood.errors import ClipoodError

    history = []
    model.train()
    for step in tqdm(range(steps), desc=desc, disable=not (progress and accelerator.is_main_process),
                     mininterval=2, leave=False):
        out = loss_fn(step)
        if not math.isfinite(float(out["loss"].detach())):
            raise ClipoodError(f"{desc}: the loss is not finite at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(out["loss"])
        optimizer.step()
        history.append({"step": step + 1, **{k: float(v.detach()) for k, v in out.items() if k != "loss"},
                        "total": float(out["loss"].detach())})
    return history
