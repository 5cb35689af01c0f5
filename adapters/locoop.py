"""LoCoOp: CoOp with entropy maximisation on OOD patches (Miyai et al., NeurIPS 2023).

The learnable context and the ID text features t_i are CoOp's (:mod:`adapters.coop`; negative rows stay the
frozen base features). With the patch (local) features u_{b,p} of an image (B×T×D, in the joint space) the
adapter also returns the local cosines cos(u_{b,p}, t_i) over the N ID labels (``extras["local_logits"]``,
B×T×N). Training adds to CoOp's cross-entropy (Eq. 7 of KR-NFT, L_cls) the LoCoOp term

    L_ent = − mean_{(b,p) ∈ OOD} H(softmax(s · cos(u_{b,p}, t)))        (LoCoOp Eq. 6, weight λ = 0.25)

where a patch is OOD when the image's label y_b is not among the top-K ID classes of that patch, and H is
the entropy over the N ID classes (s = logit scale), H(p) = −Σ p log(p + ε) with the released
``entropy_select_topk``'s ε = 1e-5 (``entropy_eps``; 0 = the exact entropy). K = 200 on ImageNet-1k; ``top_k=0``
scales it to the label count: K = max(1, round(N / 5)). L_cls is CoOp's (over the N ID columns by default).
Test: MCM on the global logits, or GL-MCM (global + best local MCM) with the ``glmcm`` score. Without patch
features in a batch the adapter is CoOp (``local_features`` is requested from batch builders, but only the
entropy term needs it). The patch features are the backbone's (``Backbone.local_path``; on a ViT the released
value path of the last block, as LoCoOp's ``clip_w_local``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError
from clipood.training.task import LossInputs, TrainingTask

from .contract import AdapterOutput, check_float, check_int, full_precision
from .coop import CoOp, CoOpConfig
from .registry import register_adapter

__all__ = ["LoCoOp", "LoCoOpConfig", "LoCoOpTask", "ood_patch_mask", "patch_entropy", "locoop_entropy_loss",
           "scaled_top_k"]


@dataclass
class LoCoOpConfig(CoOpConfig):
    top_k: int = field(default=0, metadata={
        "help": "a patch is OOD when its label is not in its top-K ID classes (LoCoOp: 200 of 1,000; "
                "0 = max(1, round(N/5)), the same share of any label count)"})
    entropy_weight: float = field(default=0.25, metadata={
        "help": "λ of the entropy term on OOD patches (LoCoOp: 0.25)"})
    entropy_eps: float = field(default=1e-5, metadata={
        "help": "ε of the patch entropy −Σ p log(p + ε) (the released code: 1e-5; 0 = the exact entropy)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("top_k", self.top_k, minimum=0)
        check_float("entropy_weight", self.entropy_weight, minimum=0)  # < 0 would minimise the OOD entropy
        check_float("entropy_eps", self.entropy_eps, minimum=0)


def scaled_top_k(top_k: int, num_id: int) -> int:
    """The K of the OOD-patch rule: ``top_k`` when set, else 200 per 1,000 labels (at least 1)."""
    return int(top_k) if top_k > 0 else max(1, round(num_id / 5))


def ood_patch_mask(local_logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> torch.Tensor:
    """B×T booleans: True where label y_b is **not** among the ``top_k`` largest of ``local_logits[b, p]``.

    local_logits: B×T×N ID logits of each patch; labels: B class indices. Ties are broken by ``torch.topk``.
    """
    if local_logits.ndim != 3:
        raise ClipoodError(f"local_logits must be B×T×N, got shape {tuple(local_logits.shape)}")
    k = min(int(top_k), local_logits.shape[-1])
    top = local_logits.topk(k, dim=-1).indices                                     # B×T×k
    return ~(top == labels.to(top.device)[:, None, None]).any(dim=-1)


def patch_entropy(scaled_local_logits: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """B×T entropies H(p) = −Σ_i p_i log(p_i + eps) of p = softmax over the last dim (the ID classes);
    ``eps = 0`` is the exact entropy (computed with log-softmax)."""
    logp = F.log_softmax(scaled_local_logits, dim=-1)
    p = logp.exp()
    return -(p * (logp if eps == 0 else torch.log(p + eps))).sum(-1)


def locoop_entropy_loss(scaled_local_logits: torch.Tensor, labels: torch.Tensor, top_k: int,
                        eps: float = 0.0) -> torch.Tensor:
    """−(mean entropy of the OOD patches); 0 (with gradient 0) when no patch is OOD."""
    mask = ood_patch_mask(scaled_local_logits.detach(), labels, top_k)
    h = patch_entropy(scaled_local_logits, eps)
    if not bool(mask.any()):
        return h.sum() * 0.0
    return -h[mask].mean()


class LoCoOp(CoOp):
    """``LoCoOp(context, ctx_init="a photo of a", top_k=0, entropy_weight=0.25)``: CoOp's context plus local
    logits over patch features; trains with :class:`LoCoOpTask`."""

    config_cls = LoCoOpConfig
    requires = frozenset({"image_features", "local_features"})

    def as_batch(self, batch_or_image_features):
        # patch features are asked for (batch builders carry them) but only the entropy term needs them
        if isinstance(batch_or_image_features, Mapping) and "local_features" not in batch_or_image_features:
            if "image_features" in batch_or_image_features:
                return batch_or_image_features
        if torch.is_tensor(batch_or_image_features):
            return {"image_features": batch_or_image_features}
        return super().as_batch(batch_or_image_features)

    def local_logits(self, local_features: torch.Tensor, tuned_id: torch.Tensor | None = None) -> torch.Tensor:
        """B×T×N cosines between each patch feature and the learned ID text features."""
        if not torch.is_tensor(local_features) or local_features.ndim != 3 or local_features.shape[-1] != self.dim:
            shape = tuple(local_features.shape) if torch.is_tensor(local_features) else type(local_features).__name__
            raise ClipoodError(f"local_features must be a B×T×{self.dim} tensor of patch features, got {shape}")
        tuned_id = self.id_text_features() if tuned_id is None else tuned_id
        u = F.normalize(local_features.to(tuned_id.dtype), dim=-1)
        with full_precision(u.device):
            return u @ tuned_id.t()

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        tuned = self.id_text_features()  # one encoding for the global and the patch logits
        out = self._output(self.image_features(batch), tuned)
        if batch.get("local_features") is not None:
            out.extras["local_logits"] = self.local_logits(batch["local_features"], tuned)
        return out

    @property
    def top_k(self) -> int:
        return scaled_top_k(self.config.top_k, self.num_id)


class LoCoOpTask(TrainingTask):
    """The configured loss terms (CoOp: L_cls) plus λ·L_ent on the OOD patches of the ID crops."""

    def __init__(self, adapter, *args, **kwargs):
        super().__init__(adapter, *args, **kwargs)
        k, n = int(adapter.config.top_k), adapter.num_id
        if k >= n:  # every label is in every patch's top K: no patch is ever OOD, the entropy term is always 0
            raise ClipoodError(f"adapter.options.top_k={k} is not below the {n} ID classes, so no patch is ever OOD "
                               f"and LoCoOp's entropy term is off; use top_k < {n} (0 = round(N/5))")

    def extra_losses(self, o: LossInputs) -> dict[str, tuple[float, torch.Tensor]]:
        a = self.adapter
        local = o.id_out.extras.get("local_logits")
        if local is None:
            raise ClipoodError("locoop's entropy term needs patch features: the training batch has no id_local "
                               "(the crop cache stores them when an adapter requires local_features)")
        loss = locoop_entropy_loss(o.logit_scale * local, o.batch["id_labels"], a.top_k, a.config.entropy_eps)
        return {"entropy": (float(a.config.entropy_weight), loss)}


LoCoOp.task_cls = LoCoOpTask  # what recipes train it with (clipood_recipes.methods.training_task)
register_adapter("locoop", LoCoOpConfig, LoCoOp)
