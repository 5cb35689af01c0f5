"""NegPT: negative prompt tuning over the negative labels (the paper's NegPT*, Tab. 7: one learned context).

The M negative labels get learned prompts ``[SOS] nctx_1 … nctx_n <neg name> [EOS]`` through the frozen text
encoder — no full stop after the name, as NegPrompt's ``PromptLearner`` builds ``"a photo of a <name>"``
(``full_stop=True``: ``<neg name> .``); the N ID rows stay the context's frozen base features C[:N]:

    t_m = L2(TextEncoder([e_SOS, nctx, e(neg_m), e_EOS])),   logits = [cos(v, c_i)]_{i<N} ‖ [cos(v, t_m)]_m

It trains with the configured terms (KR-NFT's L_cls + λ1·L_ood, Eq. 7-8; L_kr applies too: ``base_cos`` =
cos(c_m, t_m) on the negative rows, 1 on the ID rows) plus, when their weights are set (the ``negpt_*`` presets),
NegPrompt's stage-2 terms (:class:`NegPromptTask`) on the ID crops, with x = s·logits (s = logit scale), K = N + M:

    L_msm = mean_b (1/K) Σ_k −[y_bk log σ(x_bk) + (1 − y_bk) log σ(−x_bk)],  y_b = e_{label b}   (``msm_weight``)
    L_np  = −mean_m (1 − cos(c_m, t_m))        push each negative prompt from the positive of its name (``np_weight``)
    L_nn  = −mean_m (1 − cos(t_m, t̄)),  t̄ = mean_m t_m    spread the negative prompts (``nn_weight``)

(NegPrompt: weights 1, 0.1, 0.05.) Test: the NegLabel score (Eq. 2) over [ID | learned negatives].

**Two stages** (as NegPrompt): stage 1 trains a positive context (``coop``); stage 2 stacks NegPT on it —
``recipes/krnft.py adapter.name=negpt base=coop base_checkpoint=<coop run>`` — so the ID rows are CoOp's learned
features (frozen) and the negative context starts at CoOp's context + U(±1e-5) (:meth:`init_from_base`). Alone,
it starts at the token embeddings of ``ctx_init``. Shared context: n×W parameters (2,048 at ViT-B/16, n = 4);
it moves to any label set (new ID names keep their base rows, new negatives are re-encoded).
NegPrompt learns NEGA_CTX negative contexts per ID class name; here one context serves the M mined negative
labels, so "the positive of a negative prompt" is the base row of the same name and L_nn spreads the M rows
(NegPrompt spreads the NEGA_CTX prompts of each class; with one context per name that term would be 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

import torch.nn.functional as F

from clipood.errors import ClipoodError
from clipood.training.task import LossInputs, TrainingTask

from .context import AdapterContext
from .contract import Adapter, AdapterConfig, AdapterOutput, check_float, full_precision
from .prompt_learner import LabelPromptConfig, PromptLearner
from .registry import register_adapter
from .stacked import Stacked

__all__ = ["NegPT", "NegPTConfig", "NegativePrompts", "NegPromptTask", "multilabel_soft_margin",
           "prompt_distance_loss", "prompt_spread_loss"]


@dataclass
class NegPTConfig(LabelPromptConfig):
    ctx_init: str = field(default="a photo of a", metadata={
        "help": "phrase whose token embeddings initialise the negative context; '' = N(0, 0.02) with n_ctx vectors"})
    full_stop: bool = field(default=False, metadata={
        "help": "end each prompt with '.' after the name (NegPrompt's prompts have none)"})
    cls_columns: str = field(default="id", metadata={
        "help": "columns of L_cls: 'id' (NegPrompt's positive cross-entropy over the ID prompts) | 'all'"})
    msm_weight: float = field(default=0.0, metadata={
        "help": "weight of NegPrompt's multi-label soft-margin loss over all prompts (NegPrompt: 1; 0 = off)"})
    np_weight: float = field(default=0.0, metadata={
        "help": "weight of L_np, pushing each negative prompt from the positive of its name (NegPrompt: 0.1)"})
    nn_weight: float = field(default=0.0, metadata={
        "help": "weight of L_nn, spreading the negative prompts around their mean (NegPrompt: 0.05)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for k in ("msm_weight", "np_weight", "nn_weight"):
            v = getattr(self, k)
            check_float(k, v)
            if v < 0:
                raise ClipoodError(f"{k} must be a number >= 0 (0 turns the term off), got {v!r}")


class NegativePrompts(PromptLearner):
    """Shared machinery: frozen ID rows, a :class:`PromptBank` over the negative names, a learned ``neg_ctx``."""

    config_cls = NegPTConfig

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        if not self.context.neg_names:
            raise ClipoodError(f"adapter '{self.name}' learns prompts for the negative labels; the context has none "
                               "(mine negatives first)")
        self.bank = self.prompt_bank(self.context.neg_names)
        self.neg_ctx = nn.Parameter(self.initial_context(self.bank))

    def init_from_base(self, base: Adapter) -> None:
        """Stage 2 of NegPrompt: start the negative context at the trained positive one + U(±1e-5)."""
        pos = base.trainable_state_dict().get("ctx")  # a shared positive context (coop's, n×W)
        if pos is not None and pos.ndim == 2 and tuple(pos.shape) == tuple(self.neg_ctx.shape):
            with torch.no_grad():
                noise = (torch.rand(pos.shape) * 2 - 1) * 1e-5
                self.neg_ctx.copy_(pos.detach().float().cpu().to(self.neg_ctx.device) + noise.to(self.neg_ctx.device))

    def _combine(self, v: torch.Tensor, neg: torch.Tensor) -> AdapterOutput:
        """Logits [cos(v, c_id) | cos(v, t_neg)] for neg M×D (shared) or B×M×D (per image)."""
        c = self.base_text_features
        n = self.num_id
        with full_precision(v.device):
            id_logits = v @ c[:n].t()
            if neg.ndim == 2:
                neg_logits = v @ neg.t()
                neg_cos = (c[n:] * neg).sum(-1)
                base_cos = torch.cat([c.new_ones(n), neg_cos])
            else:
                neg_logits = torch.einsum("bd,bmd->bm", v, neg)
                neg_cos = torch.einsum("md,bmd->bm", c[n:], neg)
                base_cos = torch.cat([neg_cos.new_ones(v.shape[0], n), neg_cos], dim=1)
        return AdapterOutput(logits=torch.cat([id_logits, neg_logits], dim=1), base_cos=base_cos,
                             extras={"neg_text_features": neg})


class NegPT(NegativePrompts):
    """``NegPT(context, ctx_init="a photo of a")``: one learned context for all negative labels."""

    def negative_text_features(self) -> torch.Tensor:
        """M×D learned negative features (cached while no gradient is needed and the context is unchanged)."""
        return self.cached_features("neg", [self.neg_ctx], lambda: self.bank.encode(self.neg_ctx))

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """K×D: the frozen ID rows, then the learned negative prompts' features."""
        return torch.cat([self.base_text_features[: self.num_id], self.negative_text_features()], dim=0)

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        return self._combine(self.image_features(batch), self.negative_text_features())


# ------------------------------------------------------------------------------------ NegPrompt's loss terms
def multilabel_soft_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_msm: mean over the batch of (1/K) Σ_k −[y_k log σ(x_k) + (1 − y_k) log σ(−x_k)].

    logits: B×K **scaled** logits; targets: B×K in {0, 1} (1 on every prompt of the true class). The same value
    as ``torch.nn.MultiLabelSoftMarginLoss`` (NegPrompt's stage-2 loss), written with log-sigmoids.
    """
    if logits.shape != targets.shape:
        raise ClipoodError(f"targets must have the logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}")
    y = targets.to(logits.dtype)
    return -(y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)).mean()


def prompt_distance_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """L_np = −mean (1 − cos(p_m, n_m)): minimising it pushes each negative prompt n_m (M×D, or B×M×D per
    image) away from its positive p_m (M×D). −1 ≤ L_np ≤ 1; 0 when they coincide."""
    cos = (F.normalize(positive.float(), dim=-1) * F.normalize(negative.float(), dim=-1)).sum(-1)
    return -(1 - cos).mean()


def prompt_spread_loss(negative: torch.Tensor) -> torch.Tensor:
    """L_nn = −mean_m (1 − cos(n_m, n̄)), n̄ = mean_m of the unit rows (over the M rows of each image for
    B×M×D): minimising it spreads the negative prompts. For unit rows it equals −(1 − ‖n̄‖)."""
    n = F.normalize(negative.float(), dim=-1)
    centre = F.normalize(n.mean(dim=-2, keepdim=True), dim=-1)
    return -(1 - (n * centre).sum(-1)).mean()


def _negative_prompt_adapter(adapter: Any) -> "NegativePrompts":
    """The NegPT / ConNegPT adapter itself, or the tuner of a stack (NegPT on a trained ``coop``)."""
    a = adapter.tuner if isinstance(adapter, Stacked) else adapter
    if not isinstance(a, NegativePrompts):
        raise ClipoodError(f"NegPrompt's loss terms need a negpt or connegpt adapter, got '{getattr(a, 'name', a)}'")
    return a


class NegPromptTask(TrainingTask):
    """The configured terms plus NegPrompt's stage-2 terms on the ID crops, each at its adapter-option weight
    (``msm_weight``, ``np_weight``, ``nn_weight``; a term with weight 0 is not computed). It also trains a
    NegPT stacked on a trained ``coop`` (``trains_stacked``): the terms read the stack's tuner."""

    trains_stacked = True

    def extra_losses(self, o: LossInputs) -> dict[str, tuple[float, torch.Tensor]]:
        a = _negative_prompt_adapter(self.adapter)
        cfg = a.config
        out: dict[str, tuple[float, torch.Tensor]] = {}
        if cfg.msm_weight > 0:
            logits = o.logit_scale * o.id_out.logits
            targets = F.one_hot(o.batch["id_labels"].to(logits.device), logits.shape[1])
            out["msm"] = (float(cfg.msm_weight), multilabel_soft_margin(logits, targets))
        neg = o.id_out.extras.get("neg_text_features")
        if cfg.np_weight > 0:
            out["np"] = (float(cfg.np_weight), prompt_distance_loss(a.base_text_features[a.num_id:], neg))
        if cfg.nn_weight > 0:
            out["nn"] = (float(cfg.nn_weight), prompt_spread_loss(neg))
        return out


NegativePrompts.task_cls = NegPromptTask  # negpt and connegpt (clipood_recipes.methods.training_task)
register_adapter("negpt", NegPTConfig, NegPT)
