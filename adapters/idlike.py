"""ID-like prompt learning (Bai et al., CVPR 2024) — crop selection, loss terms and test score.

Part A of the seed-methods issue: pure functions, no adapter registered yet. The authors' repository
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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clipood.crops.sampling import select_crops
from clipood.errors import ClipoodError
from clipood.losses import ood_loss
from clipood.scores import neglabel_score

__all__ = ["IDLIKE_DEFAULTS", "idlike_diversity_loss", "idlike_loss", "idlike_out_loss", "idlike_score",
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
