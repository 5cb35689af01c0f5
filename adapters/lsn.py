"""LSN ("learn to say no": Nie et al., *Out-of-Distribution Detection with Negative Prompts*, ICLR 2024) — losses,
score and the ``lsn`` adapter, following the authors' release (junz-debug/lsn: ``coop.py``,
``main_feature_100_upload.py``, ``get_score.py``; read for the facts, nothing of it is reused).

What the release computes (ImageNet-100, pre-extracted unit CLIP image features, batch 8):

* one **shared positive prompt** ``[X]×16 <name>.`` (``class_specific=False``, random N(0, 0.02²) context,
  16 vectors), trained with ``F.cross_entropy(F.softmax(100·cos), y)`` — the cross-entropy is taken on the
  softmax *probabilities* (a second softmax inside the loss) — by SGD lr 1e-3, momentum 0.9, weight decay 5e-4,
  cosine over its 50 epochs;
* **three sets of class-specific negative prompts** (three ``CustomCLIP_feaure`` models with
  ``class_specific=True``: one 16-vector context per class and set, random init), each trained with
  ``F.cross_entropy(F.softmax((1 − cos)·20), y)`` + 1·``loss_m``, where ``loss_m`` is the mean over classes of the
  cosine between the set's class-i feature and the other two sets' class-i features (those taken as constants:
  computed without gradient) — Adam lr 2e-3, cosine over 100 epochs, the sets updated one after the other;
* the test score ``max_i softmax(cos)_i + mean_k max_i softmax((1 − cos_k)/5)_i`` (MCM at T = 1 on cosines plus
  the mean over the three sets of each set's maximum "not-class" probability).

clipood's functions take **scaled** logits z = s·cos (s = 100): softmax((1 − cos)·20) = softmax(−z̄/5) and
softmax((1 − cos)/5) = softmax(−z̄/500) (the constant cancels). With positive logits z (B×N), negative logits
z̄ (B×N×K) and negative features t̄ (N×K×D):

    L_pos  = CE(softmax(z), y)                                   (``on_probs=True``; False: CE(z, y))
    L_neg  = Σ_k CE(softmax(−z̄_{·,·,k} / T_n), y)                T_n = 5 (``neg_temperature``), summed over the
                                                                 K sets: each set's gradient is its own loss's
    L_orth = Σ_k mean_i mean_{l ≠ k} cos(t̄_{i,k}, sg(t̄_{i,l}))   (sg: no gradient, as the release's other sets)
    S(x)   = max_i softmax(z / 100)_i + w · mean_k max_i softmax(−z̄_{·,i,k} / 500)     (w = 1)

Named options (departures, none used by the presets): ``neg_rule="complementary"`` (negative learning,
−log(1 − softmax(z̄_k)_y)), ``on_probs=False`` (plain CE on the logits), ``orth_power=2`` / ``orth_abs=True``
(squared / absolute cosines, part A's reading of the paper), ``detach_others=False``, ``neg_reduce="max_of_mean"``
(max over classes of the set-averaged negative probability).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from clipood.errors import ClipoodError
from clipood.training.task import LossInputs, TrainingTask

from .context import AdapterContext
from .contract import AdapterConfig, AdapterOutput, check_bool, check_choice, check_float, check_int, full_precision
from .coop import CoOp, CoOpConfig
from .registry import register_adapter

__all__ = ["LSN", "LSNConfig", "LSNTask", "LSN_DEFAULTS", "NEG_RULES", "NEG_REDUCES", "lsn_loss",
           "lsn_negative_loss", "lsn_negative_probs", "lsn_orthogonality_loss", "lsn_positive_loss", "lsn_score"]

#: the release's values (``main_feature_100_upload.py``); temperatures on 100·cos logits
LSN_DEFAULTS = {"n_neg_prompts": 3, "n_ctx": 16, "neg_rule": "dissimilarity", "on_probs": True,
                "neg_temperature": 5.0, "orth_weight": 1.0, "orth_power": 1, "orth_abs": False,
                "score_weight": 1.0, "temperature": 100.0, "score_neg_temperature": 500.0,
                "neg_reduce": "mean_of_max", "pos_lr": 1e-3, "neg_lr": 2e-3, "batch_size": 8}
NEG_RULES = ("dissimilarity", "complementary")
NEG_REDUCES = ("mean_of_max", "max_of_mean")


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


def _temperature(t: float, name: str = "temperature") -> float:
    t = float(t)
    if not t > 0:
        raise ClipoodError(f"{name} must be > 0, got {t!r}")
    return t


def lsn_positive_loss(pos_logits: torch.Tensor, labels: torch.Tensor, on_probs: bool = True) -> torch.Tensor:
    """L_pos: CE(softmax(z), y) as released (``on_probs``), else CE(z, y)."""
    y = labels.long().to(pos_logits.device)
    return F.cross_entropy(F.softmax(pos_logits, dim=1) if on_probs else pos_logits, y)


def lsn_negative_probs(neg_logits: torch.Tensor, temperature: float = 500.0) -> torch.Tensor:
    """Per-set "not-class" probabilities softmax_i(−z̄_{·,i,k} / T) (B×N×K): high for the class whose negative
    prompts are the least similar to the image (T = 500 on 100·cos: the release's softmax((1 − cos)/5))."""
    _check(None, neg_logits)
    return F.softmax(-neg_logits / _temperature(temperature), dim=1)


def lsn_negative_loss(neg_logits: torch.Tensor, labels: torch.Tensor, rule: str = "dissimilarity", *,
                      temperature: float = 5.0, on_probs: bool = True) -> torch.Tensor:
    """L_neg on scaled negative logits B×N×K (module docstring): the K sets' losses summed."""
    _check(None, neg_logits, labels)
    check_choice("neg_rule", rule, NEG_RULES)
    y = labels.long().to(neg_logits.device)
    k = neg_logits.shape[2]
    z = neg_logits.permute(0, 2, 1).reshape(-1, neg_logits.shape[1])            # (B·K)×N, image-major
    yk = y.repeat_interleave(k)
    if rule == "dissimilarity":
        u = -z / _temperature(temperature)
        u = F.softmax(u, dim=1) if on_probs else u
        return F.cross_entropy(u, yk) * k
    others = z.masked_fill(F.one_hot(yk, z.shape[1]).bool(), float("-inf"))    # log(1 − p_y) = LSE(z_{≠y}) − LSE(z)
    return -(torch.logsumexp(others, dim=1) - torch.logsumexp(z, dim=1)).mean() * k


def lsn_orthogonality_loss(neg_features: torch.Tensor, power: int = 1, *, absolute: bool = False,
                           detach_others: bool = True) -> torch.Tensor:
    """L_orth = Σ_k mean_i mean_{l ≠ k} f(cos(t̄_{i,k}, t̄_{i,l})), f = identity (release), else |·|^power;
    with ``detach_others`` the l-th set enters as a constant in set k's term (N×K×D features; 0 when K = 1)."""
    if neg_features.ndim != 3:
        raise ClipoodError(f"negative prompt features must be N×K×D, got {tuple(neg_features.shape)}")
    if power not in (1, 2):
        raise ClipoodError(f"orth_power must be 1 or 2, got {power!r}")
    k = neg_features.shape[1]
    if k < 2:
        return neg_features.sum() * 0.0
    t = F.normalize(neg_features, dim=-1)
    other = t.detach() if detach_others else t
    gram = torch.einsum("nkd,nld->nkl", t, other)                               # row k: set k against set l
    if absolute or power != 1:
        gram = gram.abs().pow(power)
    off = 1.0 - torch.eye(k, dtype=gram.dtype, device=gram.device)             # no boolean indexing: static shapes
    return ((gram * off).sum(2) / (k - 1)).mean(0).sum()


def lsn_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, labels: torch.Tensor, neg_features: torch.Tensor,
             *, pos_weight: float = 1.0, neg_weight: float = 1.0, orth_weight: float = 1.0, orth_power: int = 1,
             orth_abs: bool = False, neg_rule: str = "dissimilarity", neg_temperature: float = 5.0,
             on_probs: bool = True) -> dict[str, torch.Tensor]:
    """LSN's objective: every prompt trained in the same step (the release trains them with separate optimisers,
    which the sum reproduces gradient-wise). Returns ``{"loss", "pos_loss", "neg_loss", "orth_loss"}``."""
    _check(pos_logits, neg_logits, labels)
    if tuple(neg_features.shape[:2]) != (neg_logits.shape[1], neg_logits.shape[2]):
        raise ClipoodError(f"negative prompt features must be N×K×D with N×K = {tuple(neg_logits.shape[1:])}, got "
                           f"{tuple(neg_features.shape)}")
    lpos = lsn_positive_loss(pos_logits, labels, on_probs)
    lneg = lsn_negative_loss(neg_logits, labels, neg_rule, temperature=neg_temperature, on_probs=on_probs)
    lorth = lsn_orthogonality_loss(neg_features, orth_power, absolute=orth_abs)
    total = pos_weight * lpos + neg_weight * lneg + orth_weight * lorth
    return {"loss": total, "pos_loss": lpos, "neg_loss": lneg, "orth_loss": lorth}


def lsn_score(pos_logits: torch.Tensor, neg_logits: torch.Tensor, temperature: float = 100.0,
              neg_weight: float = 1.0, neg_temperature: float = 500.0,
              neg_reduce: str = "mean_of_max") -> torch.Tensor:
    """S = max_i softmax(z / T)_i + w·mean_k max_i p̄_k(i | x) (B, higher = more ID) from scaled logits;
    ``neg_reduce="max_of_mean"``: w·max_i mean_k p̄_k(i | x)."""
    _check(pos_logits, neg_logits)
    check_choice("neg_reduce", neg_reduce, NEG_REDUCES)
    z = pos_logits.double() / _temperature(temperature)
    mcm = torch.exp(z.amax(1) - torch.logsumexp(z, dim=1))
    p = lsn_negative_probs(neg_logits.double(), neg_temperature)
    neg = p.amax(1).mean(1) if neg_reduce == "mean_of_max" else p.mean(2).amax(1)
    return mcm + float(neg_weight) * neg


# ------------------------------------------------------------------------------------------------ adapter
@dataclass
class LSNConfig(CoOpConfig):
    ctx_init: str = field(default="", metadata={
        "help": "phrase initialising the positive context; '' = N(0, 0.02) with n_ctx vectors (the release)"})
    n_ctx: int = field(default=16, metadata={
        "help": "context vectors of the positive and of each negative prompt (the release: 16)"})
    n_neg_prompts: int = field(default=3, metadata={"help": "K sets of class-specific negative prompts (release: 3)"})
    neg_temperature: float = field(default=5.0, metadata={
        "help": "T of the training negative classifier softmax(−s·cos/T) (release: softmax((1 − cos)·20) = 5)"})
    on_probs: bool = field(default=True, metadata={
        "help": "take the cross-entropies on softmax probabilities, as the release does (false: on the logits)"})
    neg_rule: str = field(default="dissimilarity", metadata={
        "help": "negative loss: 'dissimilarity' (CE on the not-class classifier, release) | 'complementary'"})
    neg_weight: float = field(default=1.0, metadata={"help": "weight of L_neg (release: 1)"})
    orth_weight: float = field(default=1.0, metadata={"help": "weight of L_orth (release: loss_m * 1)"})
    orth_power: int = field(default=1, metadata={"help": "power of the cosines in L_orth (release: 1, signed)"})
    orth_abs: bool = field(default=False, metadata={"help": "absolute cosines in L_orth (release: signed)"})
    score_weight: float = field(default=1.0, metadata={"help": "w of the negative part of the test score"})
    score_neg_temperature: float = field(default=5.0, metadata={
        "help": "T on cosines of the test's negative classifier softmax((1 − cos)/T) (release: 5)"})
    neg_reduce: str = field(default="mean_of_max", metadata={
        "help": "negative score over the K sets: 'mean_of_max' (release) | 'max_of_mean'"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("n_neg_prompts", self.n_neg_prompts, minimum=1)
        check_int("orth_power", self.orth_power, minimum=1)
        if self.orth_power > 2:
            raise ClipoodError(f"orth_power must be 1 (the release) or 2, got {self.orth_power}")
        for k in ("neg_temperature", "score_neg_temperature"):
            check_float(k, getattr(self, k))
            _temperature(getattr(self, k), k)
        for k in ("neg_weight", "orth_weight", "score_weight"):
            check_float(k, getattr(self, k), minimum=0)
        check_bool("on_probs", self.on_probs)
        check_bool("orth_abs", self.orth_abs)
        check_choice("neg_rule", self.neg_rule, NEG_RULES)
        check_choice("neg_reduce", self.neg_reduce, NEG_REDUCES)
        if self.class_specific:
            raise ClipoodError("class_specific=true: LSN's positive prompt is shared (its negatives are "
                               "class-specific)")


class LSN(CoOp):
    """``LSN(context)``: CoOp's shared positive context (``ctx``, the ID columns of the logits; the negative
    columns are the frozen mined rows, unused by LSN) plus K class-specific negative contexts (``neg_ctx``,
    K×N×n×W). ``extras``: ``neg_logits`` (B×N×K cosines), ``neg_text_features`` (N×K×D) and ``ood_score``
    (the release's test score, ``eval.score=adapter``). Tied to its training classes."""

    config_cls = LSNConfig

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        k, n, w = self.config.n_neg_prompts, self.num_id, self.ctx.shape[-1]
        self.neg_ctx = nn.Parameter(0.02 * torch.randn(k, n, self.n_ctx, w))  # the release: N(0, 0.02) each

    def negative_text_features(self) -> torch.Tensor:
        """N×K×D unit features of the K negative prompts of each class (one encoding per training step)."""
        def enc():
            dev = self.base_text_features.device
            return torch.stack([self.id_bank.encode(c).to(dev) for c in self.neg_ctx], dim=1)
        return self.cached_features("lsn_neg", [self.neg_ctx], enc)

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        v = self.image_features(batch)
        out = self._output(v, self.id_text_features())
        neg = self.negative_text_features()
        with full_precision(v.device):
            neg_cos = torch.einsum("bd,nkd->bnk", v, neg)
        cfg = self.config
        out.extras.update(neg_logits=neg_cos, neg_text_features=neg,
                          ood_score=lsn_score(out.logits[:, : self.num_id], neg_cos, 1.0, cfg.score_weight,
                                              cfg.score_neg_temperature, cfg.neg_reduce).float())
        return out

    def id_tied_weights(self) -> str:
        """The negative prompts belong to the training classes: only the same ID labels (other negatives) move."""
        return "class-specific negative prompts (LSN)"


class LSNTask(TrainingTask):
    """L_cls (``losses.cls``) is LSN's positive loss (CE on probabilities with ``on_probs``); L_neg and L_orth are
    added at the adapter-option weights."""

    def term(self, name: str, o: LossInputs) -> torch.Tensor:
        a = self.adapter
        if name == "cls" and a.config.on_probs:
            return lsn_positive_loss(o.logit_scale * o.id_out.logits[:, : o.num_id], o.batch["id_labels"], True)
        return super().term(name, o)

    def extra_losses(self, o: LossInputs) -> dict[str, tuple[float, torch.Tensor]]:
        cfg = self.adapter.config
        y = o.batch["id_labels"]
        neg = o.logit_scale * o.id_out.extras["neg_logits"]
        return {"neg": (float(cfg.neg_weight), lsn_negative_loss(neg, y, cfg.neg_rule, temperature=cfg.neg_temperature,
                                                                 on_probs=cfg.on_probs)),
                "orth": (float(cfg.orth_weight), lsn_orthogonality_loss(o.id_out.extras["neg_text_features"],
                                                                        cfg.orth_power, absolute=cfg.orth_abs))}


LSN.task_cls = LSNTask
register_adapter("lsn", LSNConfig, LSN)
