"""SCT (Self-Calibrated Tuning; Yu et al., NeurIPS 2024): LoCoOp with confidence weights — the ``sct`` adapter.

The adapter is LoCoOp's (CoOp's context, patch logits over the ID labels; GL-MCM / MCM at test); its training task
(:class:`SCTTask`) replaces L_cls and LoCoOp's entropy term by the confidence-weighted pair below. It stacks with
KR-NFT as LoCoOp does (``base=sct base_checkpoint=<sct run>``).

With scaled global logits z (B×N, s·cos over the N ID labels), p = softmax(z), p_y the true-class probability,
and scaled local logits z^(b,t) of the T patches of each image (B×T×N):

    L_ce  = mean_b (1 + ε_ce − p_y) · CE(z_b, y_b)                                   ε_ce = 1e-7
    L_ent = − mean_{(b,t) ∈ OOD} (ε_w + p_{y_b}) · H'(softmax(z^(b,t)))             ε_w  = 1e-7
    H'(q) = − Σ_i q_i log(q_i + ε_log)                                               ε_log = 1e-5
    L     = L_ce + λ · L_ent                                                         λ = 0.25, K = 200

A patch (b, t) is OOD when y_b is not among the K largest entries of z^(b,t) (LoCoOp's rule,
:func:`adapters.locoop.ood_patch_mask`). With no OOD patch in the batch L_ent = 0.

Release (tmlr-group/SCT, ``trainers/sct.py``): ``forward_backward`` (the fp32 branch: CE through
``log_softmax``, weight ``1.0000001 - true_probs``) and ``entropy_select_topk`` (``log(p + 1e-5)``, weight
``0.0000001 + true_probs``). ``true_probs`` is **not detached** in the release, so gradient flows through both
confidence weights; ``detach_confidence=True`` stops it (the paper treats the weights as calibration factors).
The release's test scores are LoCoOp's MCM and GL-MCM (global + best local MCM, T = 1 on raw cosines):
``clipood.scores.mcm_score`` / ``glmcm_score`` with ``temperature=100`` on 100·cos logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError
from clipood.training.task import LossInputs

from .contract import check_bool, check_float
from .locoop import LoCoOp, LoCoOpConfig, LoCoOpTask, ood_patch_mask, patch_entropy
from .registry import register_adapter

__all__ = ["SCT", "SCTConfig", "SCTTask", "SCT_DEFAULTS", "sct_ce_loss", "sct_entropy_loss", "sct_loss",
           "true_class_probs"]

#: the release's values (``train.py`` argparse defaults, ``scripts/sct/train.sh``)
SCT_DEFAULTS = {"entropy_weight": 0.25, "top_k": 200, "ce_eps": 1e-7, "weight_eps": 1e-7, "log_eps": 1e-5}


def _check(logits: torch.Tensor, labels: torch.Tensor, ndim: int, name: str) -> None:
    if not torch.is_tensor(logits) or logits.ndim != ndim:
        got = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise ClipoodError(f"{name} must be a {'B×N' if ndim == 2 else 'B×T×N'} tensor of scaled logits, got {got}")
    if not torch.is_tensor(labels) or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        got = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ClipoodError(f"labels must be a 1-D tensor of {logits.shape[0]} class indices, got {got}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[-1]):
        raise ClipoodError(f"labels must be class indices in [0, {logits.shape[-1]}), got range "
                           f"[{int(labels.min())}, {int(labels.max())}]")


def true_class_probs(logits: torch.Tensor, labels: torch.Tensor, detach: bool = False) -> torch.Tensor:
    """p_y = softmax(logits)[b, y_b] (B), with gradient unless ``detach``."""
    _check(logits, labels, 2, "logits")
    p = F.softmax(logits, dim=1).gather(1, labels.long().to(logits.device)[:, None])[:, 0]
    return p.detach() if detach else p


def sct_ce_loss(logits: torch.Tensor, labels: torch.Tensor, *, detach_confidence: bool = False,
                eps: float = 1e-7) -> torch.Tensor:
    """L_ce = mean_b (1 + eps − p_y)·CE(z_b, y_b): cross-entropy down-weighted on confident images."""
    w = 1.0 + eps - true_class_probs(logits, labels, detach=detach_confidence)
    ce = F.cross_entropy(logits, labels.long().to(logits.device), reduction="none")
    return (w * ce).mean()


def sct_entropy_loss(local_logits: torch.Tensor, labels: torch.Tensor, top_k: int, confidence: torch.Tensor, *,
                     eps: float = 1e-7, log_eps: float = 1e-5) -> torch.Tensor:
    """L_ent = −mean over OOD patches of (eps + p_{y_b})·H'(softmax(z^(b,t))); 0 (with gradient 0) when no
    patch is OOD.

    local_logits: B×T×N scaled; confidence: B true-class probabilities of the images (from the *global*
    logits, :func:`true_class_probs`; pass it detached for ``detach_confidence``). ``log_eps=0`` uses the exact
    entropy (LoCoOp's term in clipood); the release adds 1e-5 inside the log.
    """
    _check(local_logits, labels, 3, "local_logits")
    if not torch.is_tensor(confidence) or confidence.shape != labels.shape:
        raise ClipoodError(f"confidence must hold one probability per image, shape {tuple(labels.shape)}")
    k = int(top_k)
    if isinstance(top_k, bool) or k < 1:
        raise ClipoodError(f"top_k must be an integer >= 1, got {top_k!r}")
    mask = ood_patch_mask(local_logits.detach(), labels, k)
    if log_eps == 0:
        h = patch_entropy(local_logits)
    else:
        q = F.softmax(local_logits, dim=-1)
        h = -(q * torch.log(q + log_eps)).sum(-1)
    w = (eps + confidence.to(h.dtype))[:, None].expand_as(h)
    if not bool(mask.any()):
        return (h * w).sum() * 0.0
    return -(w[mask] * h[mask]).mean()


def sct_loss(logits: torch.Tensor, local_logits: torch.Tensor, labels: torch.Tensor, top_k: int = 200,
             entropy_weight: float = 0.25, *, detach_confidence: bool = False, ce_eps: float = 1e-7,
             weight_eps: float = 1e-7, log_eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """SCT's objective L = L_ce + λ·L_ent (see the module docstring).

    Returns ``{"loss", "ce_loss", "entropy_loss"}`` with the terms unweighted (``entropy_loss`` is L_ent, ≤ 0).
    """
    conf = true_class_probs(logits, labels, detach=detach_confidence)
    ce = sct_ce_loss(logits, labels, detach_confidence=detach_confidence, eps=ce_eps)
    ent = sct_entropy_loss(local_logits, labels, top_k, conf, eps=weight_eps, log_eps=log_eps)
    return {"loss": ce + float(entropy_weight) * ent, "ce_loss": ce, "entropy_loss": ent}


# ------------------------------------------------------------------------------------------------ adapter
@dataclass
class SCTConfig(LoCoOpConfig):
    detach_confidence: bool = field(default=False, metadata={
        "help": "stop the gradient through the confidence weights p_y (the release does not: false)"})
    ce_eps: float = field(default=1e-7, metadata={"help": "ε of the CE weight 1 + ε − p_y (release: 1e-7)"})
    weight_eps: float = field(default=1e-7, metadata={"help": "ε of the entropy weight ε + p_y (release: 1e-7)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("detach_confidence", self.detach_confidence)
        check_float("ce_eps", self.ce_eps, minimum=0)
        check_float("weight_eps", self.weight_eps, minimum=0)


class SCT(LoCoOp):
    """``SCT(context, top_k=0, entropy_weight=0.25)``: LoCoOp's adapter; trains with :class:`SCTTask`."""

    config_cls = SCTConfig


class SCTTask(LoCoOpTask):
    """L_cls (``losses.cls``) is SCT's (1 + ε − p_y)·CE over the N ID columns (the release's ``forward_backward``);
    LoCoOp's entropy term becomes the (ε + p_y)-weighted one (λ = ``entropy_weight``). p_y comes from the global
    logits of the same ID crops."""

    def term(self, name: str, o: LossInputs) -> torch.Tensor:
        if name != "cls":
            return super().term(name, o)
        cfg = self.adapter.config
        logits = o.logit_scale * o.id_out.logits[:, : o.num_id]
        return sct_ce_loss(logits, o.batch["id_labels"].to(logits.device), detach_confidence=cfg.detach_confidence,
                           eps=cfg.ce_eps)

    def extra_losses(self, o: LossInputs) -> dict[str, tuple[float, torch.Tensor]]:
        a = self.adapter
        cfg = a.config
        local = o.id_out.extras.get("local_logits")
        if local is None:
            raise ClipoodError("sct's entropy term needs patch features: the training batch has no id_local "
                               "(the crop cache stores them when an adapter requires local_features)")
        y = o.batch["id_labels"].to(local.device)
        conf = true_class_probs(o.logit_scale * o.id_out.logits[:, : o.num_id], y, detach=cfg.detach_confidence)
        ent = sct_entropy_loss(o.logit_scale * local, y, a.top_k, conf, eps=cfg.weight_eps, log_eps=cfg.entropy_eps)
        return {"entropy": (float(cfg.entropy_weight), ent)}


SCT.task_cls = SCTTask
register_adapter("sct", SCTConfig, SCT)
