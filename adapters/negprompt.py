"""NegPrompt as released (Li et al., CVPR 2024; mala-lab/NegPrompt) — prompt layout, stage-2 loss and test score.

clipood's ``negpt`` adapter keeps NegPrompt's stage-2 *terms* for mined negative labels; this module is the
release's own design, reusing those terms (:mod:`adapters.negpt`), and its ``negprompt`` adapter.

**The adapter** learns the n negative contexts only (n × n_ctx × W). The positives t_c are the context's frozen
ID rows: stacked on a trained ``coop`` (``base=coop base_checkpoint=<coop run>``, the release's stage 1) they are
CoOp's learned features and the negative contexts start at CoOp's context + U(±1e-5) (:meth:`init_from_base`);
alone they are the zero-shot rows and the contexts start at ``ctx_init``'s token embeddings + U(±1e-5). Its
logits are the contract's K columns (the ID positives, then the frozen mined negatives, which NegPrompt does not
use); ``extras`` carry the N×n negative-prompt cosines and the release's test score (``eval.score=adapter``).
The shared contexts apply to any ID names, so a trained adapter moves to other labels.

**Prompts** (``models/models.py`` ``NegaPromptLearner``): one positive context p (n_ctx × W, stage 1 = CoOp) and
NEGA_CTX = n shared negative contexts q_1..q_n (default n = 2), each applied to **every** ID name:
N·(1 + n) prompts ``[SOS] ctx <name> [EOS]`` (the release writes no full stop after the name). Stage 2 starts
each q_j at p + U(±1e-5) (``update_ctx_positive``) and trains only the q_j; p is frozen. Features:
t_c = L2(TextEncoder(p, name_c)) (N×D), u_cj = L2(TextEncoder(q_j, name_c)) (N×n×D). The release orders the
columns class-major, ``[t_1, u_11..u_1n, t_2, ...]`` (:func:`release_layout`); here positives and negatives
travel apart (B×N and B×N×n), so no function depends on a column order.

**Stage-2 loss** (``core/train_clip.py`` ``train_nega_clip`` with ``stage > 1``, ``open_set_method='MSP'``;
weights from ``scripts/train_test_ood.py``), x = scaled logits over all N(1+n) prompts:

    L = 1e-8·CE(x_pos, y) + 1·L_msm + 0.1·L_np + 0.05·L_nn
    L_msm = MultiLabelSoftMargin(x, Y),  Y = 1 on all 1 + n prompts of the true class
    L_np  = −mean_{c,j} (1 − cos(t_c, u_cj))                  push each negative from its positive
    L_nn  = −mean_c mean_j (1 − cos(u_cj, ū_c)),  ū_c = mean_j u_cj   spread the negatives of each class

(the release's ``loss_positive *= 1e-8`` keeps CE in the total; with p frozen it has no gradient). L_nn is the
release's expression for unit rows: it multiplies norms (``negative_features.norm() @ mean.norm().t()``), which
equals cos(u_cj, ū_c) averaged over j exactly when the u_cj are unit vectors, as the release always passes.

**Test score** (``core/test_clip.py`` ``test_nega_clip`` + ``get_ood_score``, then ``np.max(_pred_k, axis=1)``):
logits are divided by the logit scale (cosines, T = 1) and softmaxed over all N(1 + n) prompts; ``--open_score``:

* ``msp`` (the argparse default): max_c softmax[c, positive];
* ``posi_nega``: max_c p_pos,c − max_j p_neg,ĉj with ĉ = argmax_c p_pos,c;
* ``maxlogit``: max_c x_pos,c / T;  ``energy_oe``: log Σ_c exp(x_pos,c / T).

The release's script asks for ``--open_score OE``, which ``get_ood_score`` does not know (its ``ood_score`` is
then unbound); clipood's default is ``msp``. Temperature: T = 100 on clipood's 100·cos logits is the release's
T = 1 on cosines.
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
from .contract import Adapter, AdapterConfig, AdapterOutput, check_choice, check_float, check_int, full_precision
from .negpt import multilabel_soft_margin, prompt_distance_loss, prompt_spread_loss
from .prompt_learner import LabelPromptConfig, PromptLearner
from .registry import register_adapter

__all__ = ["NegPrompt", "NegPromptConfig", "NegPromptReleaseTask", "NEGPROMPT_DEFAULTS", "NEGPROMPT_SCORES",
           "negative_context_init", "negprompt_score",
           "negprompt_stage2_loss", "negprompt_targets", "negprompt_text_features", "release_layout",
           "split_release_layout"]

#: the release's values (``scripts/train_test_ood.py``, ``osr_nega_prompt.py`` argparse, ``train_clip.py``)
NEGPROMPT_DEFAULTS = {"n_neg": 2, "ctx_init": "a photo of a", "ce_weight": 1e-8, "msm_weight": 1.0,
                      "np_weight": 0.1, "nn_weight": 0.05, "init_noise": 1e-5, "score": "msp",
                      "lr": 0.1, "batch_size": 64, "shots": 16, "stage2_epochs": 15}
NEGPROMPT_SCORES = ("msp", "posi_nega", "maxlogit", "energy_oe")


def _check_pair(pos: torch.Tensor, neg: torch.Tensor, what: str = "logits") -> None:
    if not torch.is_tensor(pos) or pos.ndim != 2:
        raise ClipoodError(f"positive {what} must be B×N, got {tuple(getattr(pos, 'shape', ()))}")
    if not torch.is_tensor(neg) or neg.ndim != 3 or neg.shape[:2] != pos.shape or neg.shape[2] < 1:
        raise ClipoodError(f"negative {what} must be B×N×n with B×N = {tuple(pos.shape)} and n >= 1, got "
                           f"{tuple(getattr(neg, 'shape', ()))}")


def release_layout(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """B×N(1+n) columns in the release's class-major order ``[pos_1, neg_11..neg_1n, pos_2, ...]``."""
    _check_pair(pos, neg)
    return torch.cat([pos[:, :, None], neg], dim=2).reshape(pos.shape[0], -1)


def split_release_layout(logits: torch.Tensor, n_neg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`release_layout`: (B×N positives, B×N×n negatives)."""
    if not torch.is_tensor(logits) or logits.ndim != 2 or n_neg < 1 or logits.shape[1] % (1 + n_neg):
        raise ClipoodError(f"logits of shape {tuple(getattr(logits, 'shape', ()))} do not hold N·(1 + {n_neg}) "
                           f"columns")
    x = logits.reshape(logits.shape[0], -1, 1 + n_neg)
    return x[:, :, 0], x[:, :, 1:]


def negprompt_targets(labels: torch.Tensor, num_classes: int, n_neg: int) -> torch.Tensor:
    """B×N×(1+n) multi-label targets: 1 on every prompt (positive and negatives) of the true class."""
    y = torch.zeros(labels.shape[0], num_classes, 1 + n_neg, dtype=torch.long, device=labels.device)
    y[torch.arange(labels.shape[0], device=labels.device), labels.long()] = 1
    return y


def negprompt_stage2_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, labels: torch.Tensor,
                          pos_features: torch.Tensor, neg_features: torch.Tensor, *, ce_weight: float = 1e-8,
                          msm_weight: float = 1.0, np_weight: float = 0.1,
                          nn_weight: float = 0.05) -> dict[str, torch.Tensor]:
    """NegPrompt's stage-2 objective (module docstring) on scaled logits (B×N, B×N×n) and the text features of
    the prompts (N×D positives, N×n×D negatives; normalised inside).

    Returns ``{"loss", "ce_loss", "msm_loss", "np_loss", "nn_loss"}`` with the terms unweighted.
    """
    _check_pair(pos_logits, neg_logits)
    n, k = pos_logits.shape[1], neg_logits.shape[2]
    if pos_features.ndim != 2 or pos_features.shape[0] != n or tuple(neg_features.shape[:2]) != (n, k):
        raise ClipoodError(f"prompt features must be N×D and N×n×D with N={n}, n={k}; got "
                           f"{tuple(pos_features.shape)} and {tuple(neg_features.shape)}")
    labels = labels.to(pos_logits.device).long()
    x = release_layout(pos_logits, neg_logits)
    msm = multilabel_soft_margin(x, negprompt_targets(labels, n, k).reshape(x.shape))
    ce = F.cross_entropy(pos_logits, labels)
    np_loss = prompt_distance_loss(pos_features[:, None, :], neg_features)
    nn_loss = prompt_spread_loss(neg_features)
    total = ce_weight * ce + msm_weight * msm + np_weight * np_loss + nn_weight * nn_loss
    return {"loss": total, "ce_loss": ce, "msm_loss": msm, "np_loss": np_loss, "nn_loss": nn_loss}


def negprompt_score(pos_logits: torch.Tensor, neg_logits: torch.Tensor, rule: str = "msp",
                    temperature: float = 100.0) -> torch.Tensor:
    """The release's test score (higher = more ID), B, from scaled logits; see the module docstring."""
    _check_pair(pos_logits, neg_logits)
    if rule not in NEGPROMPT_SCORES:
        raise ClipoodError(f"unknown NegPrompt score {rule!r}; choose one of {', '.join(NEGPROMPT_SCORES)}")
    t = float(temperature)
    if not t > 0:
        raise ClipoodError(f"temperature must be > 0, got {temperature!r}")
    pos, neg = pos_logits.double() / t, neg_logits.double() / t
    if rule == "maxlogit":
        return pos.amax(1)
    if rule == "energy_oe":
        return torch.logsumexp(pos, dim=1)
    lse = torch.logsumexp(release_layout(pos, neg), dim=1, keepdim=True)
    p_pos, p_neg = torch.exp(pos - lse), torch.exp(neg - lse[:, :, None])
    if rule == "msp":
        return p_pos.amax(1)
    top = p_pos.argmax(1)
    return p_pos.amax(1) - p_neg[torch.arange(pos.shape[0]), top].amax(1)


def negative_context_init(positive_ctx: torch.Tensor, n_neg: int = 2, noise: float = 1e-5,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage-2 start of the n negative contexts: the trained positive context repeated n times + U(±noise)
    (n × n_ctx × W). The release then casts them to float16 (``ctx_negative.half()``); clipood keeps float32."""
    if positive_ctx.ndim != 2 or n_neg < 1:
        raise ClipoodError(f"positive_ctx must be n_ctx×W and n_neg >= 1, got {tuple(positive_ctx.shape)}, {n_neg}")
    rep = positive_ctx.detach().float()[None].expand(n_neg, -1, -1)
    u = torch.rand(rep.shape, generator=generator, dtype=rep.dtype)
    return rep + (2 * u - 1).to(rep.device) * noise


def negprompt_text_features(bank, positive_ctx: torch.Tensor,
                            negative_ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit text features of the N·(1+n) prompts from a :class:`adapters.prompting.PromptBank` over the N ID
    names: (N×D positives with ``positive_ctx`` n_ctx×W, N×n×D negatives with ``negative_ctx`` n×n_ctx×W)."""
    if negative_ctx.ndim != 3 or tuple(negative_ctx.shape[1:]) != tuple(positive_ctx.shape):
        raise ClipoodError(f"negative_ctx must be n×{tuple(positive_ctx.shape)}, got {tuple(negative_ctx.shape)}")
    pos = bank.encode(positive_ctx)
    neg = torch.stack([bank.encode(q) for q in negative_ctx], dim=1)
    return pos, neg


# ------------------------------------------------------------------------------------------------ adapter
@dataclass
class NegPromptConfig(LabelPromptConfig):
    full_stop: bool = field(default=False, metadata={"help": "'.' after each name (the release writes none)"})
    n_neg: int = field(default=2, metadata={"help": "NEGA_CTX: shared negative contexts, each on every ID name (2)"})
    msm_weight: float = field(default=1.0, metadata={"help": "weight of the multi-label soft margin (release: 1)"})
    np_weight: float = field(default=0.1, metadata={"help": "weight of L_np (release: 0.1)"})
    nn_weight: float = field(default=0.05, metadata={"help": "weight of L_nn (release: 0.05)"})
    init_noise: float = field(default=1e-5, metadata={"help": "U(±noise) added to the starting contexts (1e-5)"})
    score: str = field(default="msp", metadata={
        "help": f"test score with eval.score=adapter: {' | '.join(NEGPROMPT_SCORES)} (the release's default: msp)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("n_neg", self.n_neg, minimum=1)
        for k in ("msm_weight", "np_weight", "nn_weight", "init_noise"):
            check_float(k, getattr(self, k), minimum=0)
        check_choice("score", self.score, NEGPROMPT_SCORES)


class NegPrompt(PromptLearner):
    """``NegPrompt(context, n_neg=2)``: n learned negative contexts (``neg_ctx``) over every ID name, positives =
    the context's frozen ID rows; trains with :class:`NegPromptReleaseTask`."""

    config_cls = NegPromptConfig

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        self.bank = self.prompt_bank(self.context.id_names)
        start = self.initial_context(self.bank)
        self.neg_ctx = nn.Parameter(negative_context_init(start, self.config.n_neg, self.config.init_noise))

    def init_from_base(self, base: Adapter) -> None:
        """Stage 2: every negative context starts at the trained positive (CoOp) context + U(±init_noise)."""
        pos = getattr(base, "ctx", None)
        if pos is not None and pos.ndim == 2 and tuple(pos.shape) == tuple(self.neg_ctx.shape[1:]):
            with torch.no_grad():
                init = negative_context_init(pos.detach().cpu(), self.config.n_neg, self.config.init_noise)
                self.neg_ctx.copy_(init.to(self.neg_ctx.device))

    def negative_text_features(self) -> torch.Tensor:
        """N×n×D unit features of the negative prompts (one encoding per step; cached while unchanged)."""
        return self.cached_features("negprompt_neg", [self.neg_ctx], lambda: torch.stack(
            [self.bank.encode(q).to(self.base_text_features.device) for q in self.neg_ctx], dim=1))

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.base_text_features  # the logits' K columns are the frozen rows (positives, mined negatives)

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        v = self.image_features(batch)
        c, neg = self.base_text_features, self.negative_text_features()
        with full_precision(v.device):
            logits = v @ c.t()
            neg_cos = torch.einsum("bd,ncd->bnc", v, neg)
        score = negprompt_score(logits[:, : self.num_id], neg_cos, self.config.score, temperature=1.0)
        return AdapterOutput(logits=logits, base_cos=c.new_ones(self.num_labels),
                             extras={"neg_logits": neg_cos, "neg_text_features": neg, "ood_score": score.float()})


class NegPromptReleaseTask(TrainingTask):
    """The configured terms (``losses.cls`` = the release's 1e-8·CE over the positives) plus the stage-2 terms:
    msm_weight·L_msm over the N(1+n) prompts + np_weight·L_np + nn_weight·L_nn. Trains through a stack on
    ``coop``."""

    trains_stacked = True

    def extra_losses(self, o: LossInputs) -> dict[str, tuple[float, torch.Tensor]]:
        a = getattr(self.adapter, "tuner", self.adapter)
        cfg = a.config
        pos, neg = o.logit_scale * o.id_out.logits[:, : o.num_id], o.logit_scale * o.id_out.extras["neg_logits"]
        y = o.batch["id_labels"].to(pos.device).long()
        feats = o.id_out.extras["neg_text_features"]
        x = release_layout(pos, neg)
        out = {"msm": (float(cfg.msm_weight),
                       multilabel_soft_margin(x, negprompt_targets(y, pos.shape[1], neg.shape[2]).reshape(x.shape)))}
        if cfg.np_weight > 0:
            out["np"] = (float(cfg.np_weight), prompt_distance_loss(a.base_text_features[: a.num_id, None, :], feats))
        if cfg.nn_weight > 0:
            out["nn"] = (float(cfg.nn_weight), prompt_spread_loss(feats))
        return out


NegPrompt.task_cls = NegPromptReleaseTask
register_adapter("negprompt", NegPromptConfig, NegPrompt)
