"""Loss terms of KR-NFT (Eq. 7–10) and the knowledge-regularisation variants of its Fig. 4c, as plain functions.

Conventions: ``logits`` here are **scaled** logits (logit scale × cosine, e.g. ``100 * output.logits``),
shape B×K with the N ID columns first and the M = K − N negative columns after them. Every function returns
a 0-d tensor (mean over the batch) and is numerically stable for logits of any magnitude (log-sum-exp).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ClipoodError

__all__ = [
    "classification_loss", "ood_loss", "kr_feature_loss", "kr_cos_loss", "kr_logit_loss", "kr_prob_loss",
    "krnft_loss",
]


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if not torch.is_tensor(logits) or logits.ndim != 2:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise ClipoodError(f"{name} must be a B×K tensor of scaled logits, got {shape}")


def _check_num_id(num_id: int, num_labels: int) -> None:
    if isinstance(num_id, bool) or not isinstance(num_id, int) or not 1 <= num_id <= num_labels:
        raise ClipoodError(f"num_id={num_id!r} must be an integer between 1 and K={num_labels}")


def negative_groups(num_neg: int, groups: int, seed: int = 0, *, drop_remainder: bool = False) -> list[torch.Tensor]:
    """Fixed random split of the M negative columns into ``groups`` index groups (0-based in M).

    Default: ``torch.randperm(M, generator=torch.Generator().manual_seed(seed))`` then ``torch.tensor_split``
    (near-equal groups, every negative used). ``drop_remainder=True`` is the released KR-NFT trainer's rule:
    drop the last M mod G columns, permute the other M' with ``randperm(M', seed)``, cut into G equal groups.
    The two agree whenever G divides M (the official M = 10,500 and the mini world's 40 with G = 10).
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= max(num_neg, 1):
        raise ClipoodError(f"groups={groups!r} must be an integer between 1 and the number of negatives M={num_neg}")
    if drop_remainder:
        kept = num_neg - num_neg % groups
        perm = torch.randperm(kept, generator=torch.Generator().manual_seed(seed))
        return list(perm.view(groups, -1))
    perm = torch.randperm(num_neg, generator=torch.Generator().manual_seed(seed))
    return list(torch.tensor_split(perm, groups))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, num_id: int | None = None,
                        groups: int = 1, seed: int = 0) -> torch.Tensor:
    """L_p, Eq. 7: cross-entropy over all K columns (ID + negatives) with the ID label index.

    logits: B×K scaled; labels: B (int, in [0, N)). With ``groups > 1`` (official code) the negatives are
    permuted with a fixed seed, split into near-equal groups (see :func:`negative_groups`), and the loss is the
    mean over groups g of CE over the columns [ID | group g]; this needs ``num_id``.
    """
    _check_logits(logits)
    if not torch.is_tensor(labels) or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ClipoodError(f"labels must be a 1-D tensor of {logits.shape[0]} class indices, got {shape}")
    k = logits.shape[1]
    if num_id is not None:
        _check_num_id(num_id, k)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_id):
            raise ClipoodError(f"labels must be ID class indices in [0, {num_id}), got range "
                               f"[{int(labels.min())}, {int(labels.max())}]")
    if groups == 1:
        return F.cross_entropy(logits, labels)
    if num_id is None:
        raise ClipoodError(f"classification_loss with groups={groups} needs num_id (the number of ID columns)")
    id_logits, neg_logits = logits[:, :num_id], logits[:, num_id:]
    idx = negative_groups(k - num_id, groups, seed)
    losses = [F.cross_entropy(torch.cat([id_logits, neg_logits[:, g.to(logits.device)]], dim=1), labels)
              for g in idx]
    return torch.stack(losses).mean()


def ood_loss(logits: torch.Tensor, num_id: int, groups: int = 1, seed: int = 0) -> torch.Tensor:
    """L_n, Eq. 8: mean over the batch of log(Σ_{i≤N} softmax(logits)_i) = logsumexp(ID) − logsumexp(all).

    logits: B×K scaled logits of negative (OOD) samples. Minimising it pushes them away from the ID labels.

    With ``groups = G > 1`` (the released KR-NFT trainer: G = 10, seed 0) the softmax runs over [ID | group g]
    instead of all K columns and the loss is the mean over the batch and the G groups: the last M mod G negative
    columns are dropped, the remaining M' columns are permuted with ``torch.randperm(M', seed)`` and cut into G
    equal groups (:func:`negative_groups` with ``drop_remainder=True``).

    The official code computes log(Σ softmax + 1e-16); the log-sum-exp form is exact and needs no epsilon
    (it differs from the official value only where Σ_ID softmax < ~1e-14, where theirs saturates at −36.8).
    """
    _check_logits(logits)
    _check_num_id(num_id, logits.shape[1])
    lse_id = torch.logsumexp(logits[:, :num_id], dim=1)
    if groups == 1:
        return (lse_id - torch.logsumexp(logits, dim=1)).mean()
    idx = negative_groups(logits.shape[1] - num_id, groups, seed, drop_remainder=True)
    cols = torch.stack(idx).to(logits.device)                                       # G×(M'/G)
    lse_neg = torch.logsumexp(logits[:, num_id:][:, cols], dim=2)                   # B×G
    return (lse_id[:, None] - torch.logaddexp(lse_id[:, None], lse_neg)).mean()


def kr_feature_loss(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """L_kr, Eq. 9: mean over rows (and images) of 1 − cos(c_i, c'_i).

    base: K×D frozen features; tuned: K×D, or B×K×D for image-conditional features (base broadcasts).
    Training should prefer :func:`kr_cos_loss` on ``AdapterOutput.base_cos``, which never builds B×K×D.
    """
    if not torch.is_tensor(base) or base.ndim != 2:
        raise ClipoodError(f"base must be a K×D tensor, got {tuple(getattr(base, 'shape', ()))}")
    if not torch.is_tensor(tuned) or tuned.ndim not in (2, 3) or tuple(tuned.shape[-2:]) != tuple(base.shape):
        raise ClipoodError(f"tuned must be K×D or B×K×D with K×D = {tuple(base.shape)}, "
                           f"got {tuple(getattr(tuned, 'shape', ()))}")
    cos = F.cosine_similarity(tuned, base.expand_as(tuned), dim=-1, eps=1e-8)
    return (1 - cos).mean()


def kr_cos_loss(base_cos: torch.Tensor) -> torch.Tensor:
    """L_kr, Eq. 9, from the cosines cos(c_i, c'_i) an adapter returns (``AdapterOutput.base_cos``, K or B×K):
    mean(1 − base_cos)."""
    if not torch.is_tensor(base_cos) or base_cos.ndim not in (1, 2):
        raise ClipoodError(f"base_cos must be a K or B×K tensor, got {tuple(getattr(base_cos, 'shape', ()))}")
    return (1 - base_cos).mean()


def kr_logit_loss(tuned_logits: torch.Tensor, base_logits: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Knowledge regularisation on logits (Fig. 4c "logits"): mean |tuned − base|^p over B×K.

    Default p = 2 (mean squared error, the usual logit-matching distillation loss; the paper's supplementary
    is not public); p = 1 gives L1. ``base_logits`` (from the frozen features, e.g. ``100 * v @ C.T``) is a
    constant target and is detached. With scaled logits the loss is scale² × the cosine MSE: weight accordingly.
    """
    _check_logits(tuned_logits, "tuned_logits")
    if not torch.is_tensor(base_logits) or base_logits.shape != tuned_logits.shape:
        raise ClipoodError(f"base_logits must have the shape of tuned_logits {tuple(tuned_logits.shape)}, "
                           f"got {tuple(getattr(base_logits, 'shape', ()))}")
    if p not in (1, 2):
        raise ClipoodError(f"p must be 1 (L1) or 2 (squared error), got {p!r}")
    diff = tuned_logits - base_logits.detach()
    return diff.abs().mean() if p == 1 else (diff * diff).mean()


def kr_prob_loss(tuned_logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """Knowledge regularisation on probabilities (Fig. 4c "probabilities"): KL(softmax(base) ‖ softmax(tuned)),
    summed over the K labels and averaged over the batch (distillation direction: base is the teacher,
    detached)."""
    _check_logits(tuned_logits, "tuned_logits")
    if not torch.is_tensor(base_logits) or base_logits.shape != tuned_logits.shape:
        raise ClipoodError(f"base_logits must have the shape of tuned_logits {tuple(tuned_logits.shape)}, "
                           f"got {tuple(getattr(base_logits, 'shape', ()))}")
    log_q = F.log_softmax(tuned_logits, dim=1)
    log_p = F.log_softmax(base_logits.detach(), dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def krnft_loss(id_logits: torch.Tensor, id_labels: torch.Tensor, neg_logits: torch.Tensor | None, num_id: int,
               base_cos: torch.Tensor | None, lambda1: float = 0.3, lambda2: float = 100.0, groups: int = 1,
               seed: int = 0, ood_groups: int = 1) -> dict[str, torch.Tensor]:
    """Eq. 10: L = L_p + λ1·L_n + λ2·L_kr.

    id_logits: B×K scaled logits of ID crops with labels B; neg_logits: B'×K scaled logits of negative crops
    (None → L_n = 0); base_cos: K or B×K cos(c_i, c'_i) (None → L_kr = 0). λ2 = 100 follows the paper
    (the official code uses 10); ``groups`` = 10 and ``ood_groups`` = 10 reproduce the official grouped L_p and L_n.
    Returns {"loss": total, "cls_loss": L_p, "ood_loss": L_n, "kr_loss": L_kr} with the terms unweighted.
    """
    cls = classification_loss(id_logits, id_labels, num_id=num_id, groups=groups, seed=seed)
    zero = cls.new_zeros(())
    ood = ood_loss(neg_logits, num_id, groups=ood_groups, seed=seed) if neg_logits is not None else zero
    kr = kr_cos_loss(base_cos) if base_cos is not None else zero
    return {"loss": cls + lambda1 * ood + lambda2 * kr, "cls_loss": cls, "ood_loss": ood, "kr_loss": kr}
