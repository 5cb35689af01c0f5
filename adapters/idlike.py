"""ID-like prompt learning (Bai et al., CVPR 2024): crop selection, loss terms, test score, the ``idlike`` adapter.

The authors' repository
(ycfate/ID-like) holds only a README; the paper defines the method. The defaults below agree with a public copy
of the authors' training script (``eval_ood_detection.py`` argparse, ``config.py``, ``utils/id_like.py``,
``utils/id_like_loss.py``; it carries no licence, so nothing of it is reused — it is read for the values).

**Outliers from the ID images** (§3.2): P random crops of each few-shot image (P = 256); each crop's cosine to
the text feature of its label (``'a photo of a {}.'``); the Q most similar crops are ID samples labelled y, the
Q least similar are ID-like outliers (Q = 32). This is clipood's crop protocol (:func:`clipood.crops.select_crops`,
``CropConfig(num_crops=256, num_selected=32)``), which KR-NFT took from ID-like.

**Prompts** (§3.3): N ID prompts ``[ctx_1..ctx_16] <name>.`` with one shared, randomly initialised context, and
M = 100 class-agnostic OOD prompts ``[octx_1..octx_16][w_j].`` sharing a second context, each with its own
learned word vector w_j (the copy's ``ex_learned_cls=True``). Logits z = s·cos over the N + M prompts.

**Loss** (λ_in = 1, λ_out = 0.3, λ_div = 0.2):

    L_in  = CE(z, y) over all N + M prompts, on the ID crops
    L_out = mean over outlier crops of log Σ_{i ≤ N} softmax(z)_i                      (``out_rule="id_mass"``)
            or −log Σ_{j > N} softmax(z)_j = −log(1 − Σ_ID p)                          (``out_rule="ood_mass"``)
    L_div = mean over pairs j < k of max(0, cos(t_j, t_k)) of the M OOD prompt features
    L     = λ_in·L_in + λ_out·L_out + λ_div·L_div

``id_mass`` is the executed line of the copy (``torch.log(p_in + 1e-16)``; here the exact log-sum-exp form,
:func:`clipood.losses.ood_loss`, which differs only where Σ_ID p < 1e-14); ``ood_mass`` is the alternative the
copy keeps commented out. Both push the outliers onto the OOD prompts. L_div is
``F.cosine_embedding_loss(t_j, t_k, target=-1)`` (margin 0) averaged over the M(M−1)/2 pairs.

**Score**: the ID probability mass over all N + M prompts, S = Σ_{i ≤ N} softmax(z / T)_i (``rule="sum"``, the
copy's ``get_result``: Σ_OOD p − 1, negated by its metric code; T = 1 on s·cos); ``rule="max"`` is the MCM form
max_{i ≤ N} softmax(z / T)_i over the same N + M columns.

**In clipood** (``idlike`` adapter): the M OOD prompts fill the M negative columns of the contract (M = the
run's ``negatives.num``; the mined negatives' names are not used, their frozen rows only give ``base_cos``); the ID
crops and the outlier crops are the crop cache's Q most and Q least label-like crops; L_in is ``losses.cls`` over
all N + M columns (``cls_columns: all``), L_out is ``losses.ood`` (``out_rule="id_mass"``: clipood's L_ood, the
same formula) and L_div is added by :class:`IDLikeTask` at ``div_weight``; the test score is ``eval.score=neglabel``
(the ID mass over all prompts, ungrouped). The ID context and the OOD prompts are class-agnostic, so a trained
adapter moves to other ID labels with the same number of negative columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from clipood.crops.sampling import select_crops
from clipood.errors import ClipoodError
from clipood.losses import ood_loss
from clipood.scores import neglabel_score
from clipood.training.task import LossInputs, TrainingTask

from .context import AdapterContext
from .contract import AdapterConfig, AdapterOutput, check_choice, check_float, check_int, full_precision
from .coop import CoOp, CoOpConfig
from .prompting import PromptBank
from .registry import register_adapter

__all__ = ["IDLike", "IDLikeConfig", "IDLikeTask", "IDLIKE_DEFAULTS", "idlike_diversity_loss", "idlike_loss",
           "idlike_out_loss", "idlike_score",
           "idlike_select_crops", "ood_prompt_context"]

#: the paper's ImageNet-1k setting (4-shot), as the authors' training script sets it
IDLIKE_DEFAULTS = {"num_crops": 256, "num_selected": 32, "num_ood_prompts": 100, "n_ctx": 16, "ood_n_ctx": 16,
                   "lam_in": 1.0, "lam_out": 0.3, "lam_div": 0.2, "out_rule": "id_mass", "score": "sum",
                   "optimizer": "adamw", "lr": 5e-3, "epochs": 3, "batch_size": 1, "shots": 4,
                   "crop_prompt": "a photo of a {}."}
OUT_RULES = ("id_mass", "ood_mass")


def idlike_select_crops(crop_features: torch.Tensor, text_features: torch.Tensor,
                        q: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """ID crops and ID-like outlier crops of B images: (B×Q ID indices, B×Q outlier indices) into the P crops.

    crop_features: B×P×D unit features of each image's crops; text_features: B×D unit text features of each
    image's label prompt. Per image, :func:`clipood.crops.select_crops` (most similar first / least similar
    first; ties by crop index).
    """
    if crop_features.ndim != 3 or text_features.ndim != 2 or text_features.shape[0] != crop_features.shape[0]:
        raise ClipoodError(f"crop_features must be B×P×D and text_features B×D, got {tuple(crop_features.shape)} "
                           f"and {tuple(text_features.shape)}")
    pairs = [select_crops(c, t, q) for c, t in zip(crop_features, text_features)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def idlike_out_loss(logits: torch.Tensor, num_id: int, rule: str = "id_mass") -> torch.Tensor:
    """L_out on the outlier crops' scaled logits (B×(N+M)); see the module docstring for the two rules."""
    if rule not in OUT_RULES:
        raise ClipoodError(f"unknown out_rule {rule!r}; choose one of {', '.join(OUT_RULES)}")
    if rule == "id_mass":
        return ood_loss(logits, num_id)
    lse_all = torch.logsumexp(logits, dim=1)
    return -(torch.logsumexp(logits[:, num_id:], dim=1) - lse_all).mean()


def idlike_diversity_loss(ood_prompt_features: torch.Tensor) -> torch.Tensor:
    """L_div = mean over pairs j < k of max(0, cos(t_j, t_k)) of the M×D OOD prompt features (0 when M = 1)."""
    if ood_prompt_features.ndim != 2:
        raise ClipoodError(f"ood_prompt_features must be M×D, got {tuple(ood_prompt_features.shape)}")
    m = ood_prompt_features.shape[0]
    if m < 2:
        return ood_prompt_features.sum() * 0.0
    t = F.normalize(ood_prompt_features, dim=-1)
    cos = t @ t.T
    j, k = torch.triu_indices(m, m, offset=1, device=cos.device)
    return cos[j, k].clamp(min=0).mean()


def idlike_loss(id_logits: torch.Tensor, id_labels: torch.Tensor, ood_logits: torch.Tensor,
                ood_prompt_features: torch.Tensor, num_id: int, *, lam_in: float = 1.0, lam_out: float = 0.3,
                lam_div: float = 0.2, out_rule: str = "id_mass") -> dict[str, torch.Tensor]:
    """ID-like's objective. id_logits / ood_logits: scaled logits of the ID and outlier crops over the N ID then M
    OOD prompts; ood_prompt_features: M×D. Returns ``{"loss", "in_loss", "out_loss", "div_loss"}`` (unweighted)."""
    k = id_logits.shape[1]
    if ood_logits.shape[1] != k or ood_prompt_features.shape[0] != k - num_id or not 1 <= num_id < k:
        raise ClipoodError(f"logits must hold N={num_id} ID then M OOD-prompt columns with M = "
                           f"{ood_prompt_features.shape[0]} prompt features; got {k} and {ood_logits.shape[1]} columns")
    lin = F.cross_entropy(id_logits, id_labels.long().to(id_logits.device))
    lout = idlike_out_loss(ood_logits, num_id, out_rule)
    ldiv = idlike_diversity_loss(ood_prompt_features)
    return {"loss": lam_in * lin + lam_out * lout + lam_div * ldiv, "in_loss": lin, "out_loss": lout,
            "div_loss": ldiv}


def idlike_score(logits: torch.Tensor, num_id: int, rule: str = "sum", temperature: float = 1.0) -> torch.Tensor:
    """ID-like's test score (B, higher = more ID) from scaled logits over N ID then M OOD prompts."""
    t = float(temperature)
    if not t > 0:
        raise ClipoodError(f"temperature must be > 0, got {temperature!r}")
    if rule == "sum":
        return neglabel_score(logits.double() / t, num_id)
    if rule == "max":
        z = logits.double() / t
        return torch.exp(z[:, :num_id].amax(1) - torch.logsumexp(z, dim=1))
    raise ClipoodError(f"unknown ID-like score rule {rule!r}; choose 'sum' (the authors') or 'max' (MCM form)")


def ood_prompt_context(shared_ctx: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Per-prompt contexts M×(L+1)×W of the OOD prompts: the shared L×W context followed by each prompt's learned
    word (M×W). With a :class:`adapters.prompting.PromptBank` over M empty names and ``n_ctx = L + 1``,
    ``bank.encode(ood_prompt_context(ctx, words))`` gives the features of ``[octx_1..octx_L][w_j].``"""
    if shared_ctx.ndim != 2 or words.ndim != 2 or words.shape[1] != shared_ctx.shape[1]:
        raise ClipoodError(f"shared_ctx must be L×W and words M×W, got {tuple(shared_ctx.shape)}, {tuple(words.shape)}")
    m = words.shape[0]
    return torch.cat([shared_ctx[None].expand(m, -1, -1), words[:, None, :]], dim=1)


# ------------------------------------------------------------------------------------------------ adapter
@dataclass
class IDLikeConfig(CoOpConfig):
    ctx_init: str = field(default="", metadata={
        "help": "phrase initialising the ID context; '' = N(0, 0.02) with n_ctx vectors (ID-like: random, 16)"})
    n_ctx: int = field(default=16, metadata={"help": "ID context vectors when ctx_init is '' (ID-like: 16)"})
    cls_columns: str = field(default="all", metadata={
        "help": "columns of L_in: 'all' (the N ID and M OOD prompts, ID-like) | 'id'"})
    ood_n_ctx: int = field(default=16, metadata={"help": "shared context vectors of the OOD prompts (ID-like: 16)"})
    div_weight: float = field(default=0.2, metadata={"help": "λ_div of the OOD prompts' diversity loss (0.2)"})
    out_rule: str = field(default="id_mass", metadata={
        "help": "L_out: 'id_mass' (log Σ_ID p, the authors' executed line = losses.ood) | 'ood_mass'"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("ood_n_ctx", self.ood_n_ctx, minimum=1)
        check_float("div_weight", self.div_weight, minimum=0)
        check_choice("out_rule", self.out_rule, OUT_RULES)
        if self.class_specific:
            raise ClipoodError("class_specific=true: ID-like's ID context is shared by the classes")


class IDLike(CoOp):
    """``IDLike(context)``: CoOp's shared ID context (``ctx``) and M class-agnostic OOD prompts
    ``[octx][w_j].`` (``ood_ctx`` L×W shared, ``ood_words`` M×W), M = the context's negative columns."""

    config_cls = IDLikeConfig

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        m = self.num_neg
        if m < 1:
            raise ClipoodError("idlike puts its OOD prompts in the negative columns; the context has none "
                               "(set negatives.num to the number of OOD prompts, ID-like: 100)")
        tp, w = self.context.text_path, self.ctx.shape[-1]
        self.ood_bank = PromptBank(tp, self.context.tokenizer, [""] * m, self.config.ood_n_ctx + 1,
                                   chunk_size=self.config.chunk_size, end=".")
        self.ood_ctx = nn.Parameter(0.02 * torch.randn(self.config.ood_n_ctx, w))
        self.ood_words = nn.Parameter(0.02 * torch.randn(m, w))

    def ood_text_features(self) -> torch.Tensor:
        """M×D unit features of the OOD prompts (one encoding per training step; cached while no gradient is
        needed and the parameters are unchanged)."""
        return self.cached_features("idlike_ood", [self.ood_ctx, self.ood_words], lambda: self.ood_bank.encode(
            ood_prompt_context(self.ood_ctx, self.ood_words)).to(self.base_text_features.device))

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([self.id_text_features(), self.ood_text_features()], dim=0)

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        v = self.image_features(batch)
        tuned = self.tuned_text_features()
        c = self.base_text_features
        with full_precision(v.device):
            logits = v @ tuned.t()
            base_cos = (c * tuned).sum(-1)
        return AdapterOutput(logits=logits, base_cos=base_cos, extras={"ood_text_features": tuned[self.num_id:]})

    def _relabel(self, context: AdapterContext) -> "IDLike":
        if context.num_neg != self.num_neg:
            raise ClipoodError(f"adapter 'idlike' has {self.num_neg} OOD prompts in its negative columns; the new "
                               f"label set has {context.num_neg} negatives: use negatives.num={self.num_neg}")
        return super()._relabel(context)


class IDLikeTask(TrainingTask):
    """L_in = ``losses.cls`` (all columns), L_out = ``losses.ood`` (``out_rule``), plus div_weight·L_div."""

    def term(self, name: str, o: LossInputs) -> torch.Tensor:
        if name == "ood" and self.adapter.config.out_rule != "id_mass":
            if o.neg_out is None:
                raise ClipoodError("ID-like's L_out needs outlier crops (neg_features) in the batch")
            return idlike_out_loss(o.logit_scale * o.neg_out.logits, o.num_id, self.adapter.config.out_rule)
        return super().term(name, o)

    def extra_losses(self, o: LossInputs) -> dict[str, tuple[float, torch.Tensor]]:
        w = float(self.adapter.config.div_weight)
        return {"div": (w, idlike_diversity_loss(o.id_out.extras["ood_text_features"]))} if w > 0 else {}


IDLike.task_cls = IDLikeTask
register_adapter("idlike", IDLikeConfig, IDLike)
