"""LSN ("learn to say no": Nie et al., *Out-of-Distribution Detection with Negative Prompts*, ICLR 2024) — losses
and score as pure functions.

Part A of the seed-methods issue; no adapter is registered yet. There is no public code, and the equations below
are **clipood's reading of the paper**: what the paper states in words (its abstract and the published reviews)
is fixed; where the exact form of an equation could not be checked, the choice is a named option and
``docs/methods.md`` says so. Check these against the paper's Eqs. before a preset claims the paper's setting.

What the paper fixes:

* one **shared positive prompt** for all classes (CoOp's context; stage 1 trains it with CE and freezes it);
* a **set of K negative prompts for each class**, ``[nctx^{i,k}_1..nctx^{i,k}_n] <name_i>.`` (class-specific
  contexts; K = 3 in the paper's main setting), trained in stage 2 so that the negative prompts of an image's own
  class are the *least* similar to it and those of the other classes more similar ("dissimilarity matching");
* a **semantic-orthogonality regulariser** that keeps the K negative prompts of a class apart;
* a test score that adds an MCM-type score of the positive prompts to one of the negative prompts, each taken
  on its own (the two argmax classes may differ).

clipood's forms, with positive logits z (B×N, scaled), negative logits z̄ (B×N×K, s·cos(v, t̄_{i,k})) and
negative features t̄ (N×K×D):

    negative classifier   p̄^k(i | x) = softmax_i(−z̄_{·,i,k} / T);   p̄ = mean_k p̄^k
    L_pos = CE(z, y)
    L_neg = mean_k CE(−z̄_{·,·,k}, y)                     (``neg_rule="dissimilarity"``, default)
          = mean_k −log(1 − softmax(z̄_{·,·,k})_y)         (``neg_rule="complementary"``: negative learning with
                                                           y as the complementary label)
    L_orth = mean_i mean_{k ≠ l} |cos(t̄_{i,k}, t̄_{i,l})|^p   (p = 2, ``orth_power``)
    S(x)  = max_i softmax(z / T)_i + w · max_i p̄(i | x)     (T = 100 on 100·cos logits, w = 1)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError

__all__ = ["LSN_DEFAULTS", "NEG_RULES", "lsn_loss", "lsn_negative_loss", "lsn_negative_probs",
           "lsn_orthogonality_loss", "lsn_score"]

#: values the paper states (K = 3 negative prompts per class) and clipood's choices where it states none
LSN_DEFAULTS = {"n_neg_prompts": 3, "neg_rule": "dissimilarity", "orth_weight": 1.0, "orth_power": 2,
                "score_weight": 1.0, "temperature": 100.0}
NEG_RULES = ("dissimilarity", "complementary")


def _check(pos: torch.Tensor | None, neg: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if not torch.is_tensor(neg) or neg.ndim != 3 or neg.shape[1] < 2:
        raise ClipoodError(f"negative logits must be B×N×K with N >= 2 classes, got {tuple(getattr(neg, 'shape', ()))}")
    if pos is not None and (not torch.is_tensor(pos) or pos.shape != neg.shape[:2]):
        raise ClipoodError(f"positive logits must be B×N = {tuple(neg.shape[:2])}, got {tuple(getattr(pos, 'shape', ()))}")
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != neg.shape[0]:
            raise ClipoodError(f"labels must be a 1-D tensor of {neg.shape[0]} class indices")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= neg.shape[1]):
            raise ClipoodError(f"labels must be class indices in [0, {neg.shape[1]})")


def lsn_negative_probs(neg_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """p̄(i | x) = mean_k softmax_i(−z̄_{·,i,k} / T) (B×N): high for the class whose negative prompts are the
    least similar to the image."""
    _check(None, neg_logits)
    return F.softmax(-neg_logits / float(temperature), dim=1).mean(dim=2)


def lsn_negative_loss(neg_logits: torch.Tensor, labels: torch.Tensor, rule: str = "dissimilarity") -> torch.Tensor:
    """L_neg on scaled negative logits B×N×K (module docstring); averaged over the K prompt sets."""
    _check(None, neg_logits, labels)
    if rule not in NEG_RULES:
        raise ClipoodError(f"unknown neg_rule {rule!r}; choose one of {', '.join(NEG_RULES)}")
    y = labels.long().to(neg_logits.device)
    z = neg_logits.permute(0, 2, 1).reshape(-1, neg_logits.shape[1])            # (B·K)×N
    yk = y.repeat_interleave(neg_logits.shape[2])
    if rule == "dissimilarity":
        return F.cross_entropy(-z, yk)
    others = z.masked_fill(F.one_hot(yk, z.shape[1]).bool(), float("-inf"))    # log(1 − p_y) = LSE(z_{≠y}) − LSE(z)
    return -(torch.logsumexp(others, dim=1) - torch.logsumexp(z, dim=1)).mean()


def lsn_orthogonality_loss(neg_features: torch.Tensor, power: int = 2) -> torch.Tensor:
    """L_orth = mean over classes and ordered pairs k ≠ l of |cos(t̄_{i,k}, t̄_{i,l})|^power (N×K×D features);
    0 when K = 1."""
    if neg_features.ndim != 3:
        raise ClipoodError(f"negative prompt features must be N×K×D, got {tuple(neg_features.shape)}")
    if power not in (1, 2):
        raise ClipoodError(f"orth_power must be 1 or 2, got {power!r}")
    k = neg_features.shape[1]
    if k < 2:
        return neg_features.sum() * 0.0
    t = F.normalize(neg_features, dim=-1)
    gram = t @ t.transpose(1, 2)                                                  # N×K×K
    off = ~torch.eye(k, dtype=torch.bool, device=gram.device)
    return gram[:, off].abs().pow(power).mean()


def lsn_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, labels: torch.Tensor, neg_features: torch.Tensor,
             *, pos_weight: float = 0.0, neg_weight: float = 1.0, orth_weight: float = 1.0, orth_power: int = 2,
             neg_rule: str = "dissimilarity") -> dict[str, torch.Tensor]:
    """LSN's stage-2 objective by default (positive prompt frozen: ``pos_weight=0``; ``pos_weight=1`` with the
    other weights 0 is stage 1). Returns ``{"loss", "pos_loss", "neg_loss", "orth_loss"}`` (unweighted terms)."""
    _check(pos_logits, neg_logits, labels)
    if tuple(neg_features.shape[:2]) != (neg_logits.shape[1], neg_logits.shape[2]):
        raise ClipoodError(f"negative prompt features must be N×K×D with N×K = {tuple(neg_logits.shape[1:])}, got "
                           f"{tuple(neg_features.shape)}")
    lpos = F.cross_entropy(pos_logits, labels.long().to(pos_logits.device))
    lneg = lsn_negative_loss(neg_logits, labels, neg_rule)
    lorth = lsn_orthogonality_loss(neg_features, orth_power)
    total = pos_weight * lpos + neg_weight * lneg + orth_weight * lorth
    return {"loss": total, "pos_loss": lpos, "neg_loss": lneg, "orth_loss": lorth}


def lsn_score(pos_logits: torch.Tensor, neg_logits: torch.Tensor, temperature: float = 100.0,
              neg_weight: float = 1.0) -> torch.Tensor:
    """S = max_i softmax(z / T)_i + w·max_i p̄(i | x) (B, higher = more ID) from scaled logits."""
    _check(pos_logits, neg_logits)
    t = float(temperature)
    if not t > 0:
        raise ClipoodError(f"temperature must be > 0, got {temperature!r}")
    z = pos_logits.double() / t
    mcm = torch.exp(z.amax(1) - torch.logsumexp(z, dim=1))
    return mcm + float(neg_weight) * lsn_negative_probs(neg_logits.double(), t).amax(1)
