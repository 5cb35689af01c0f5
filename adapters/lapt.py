"""LAPT: label-driven automated prompt tuning (Zhang et al., ECCV 2024): ID and negative contexts, with
images of the negative labels and two kinds of mixing.

Prompts: ``[SOS][ctx] <ID name>.`` for the N ID labels and ``[SOS][ood_ctx] <negative>.`` for the M negative
labels; both contexts are shared (n×W each, 4,096 parameters at ViT-B/16 with n = 4) and every row is encoded
through the frozen text encoder, so the learned contexts move to any label set. Logits are cos(v, t_k) over
all K rows; ``base_cos`` = cos(c_k, t_k).

Training (:class:`LAPTTask`, on top of the configured terms, e.g. L_cls on ID crops): images of the negative
labels (label N + m) — from ``neg_image_dir`` (one sub-folder per negative label, named as the label) or, on the
mini world, rendered for each negative name (``clipood.mini.build.render_label``) — and

    L_neg   = CE(s·cos(x, t), y)                          on negative-label images
    L_mix   = soft-CE(s·cos(x̃, t), λ e_y + (1−λ) e_k),   x̃ = L2(λ x + (1−λ) t_k)   cross-modal mixing
    L_cd    = soft-CE(s·cos(x̂, t), λ e_y + (1−λ) e_y'),  x̂ = L2(λ x_id + (1−λ) x_neg) cross-distribution mixing

with λ ~ Beta(1, 1) per sample, k a random label, t the current tuned features (detached inside the mix),
weights 1, ``mix_weight`` and ``cross_dist_weight`` (β = 0.3 in the paper; a released script uses 0). Test:
the NegLabel score over the learned ID and negative features.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from clipood.errors import ClipoodError
from clipood.method import LossInputs, TrainingTask

from .context import AdapterContext
from .contract import Adapter, AdapterConfig, AdapterOutput, check_float, check_int, full_precision
from .prompting import PromptBank, check_frozen_text_path, phrase_length
from .registry import register_adapter

__all__ = ["LAPT", "LAPTConfig", "LAPTTask", "soft_cross_entropy"]


@dataclass
class LAPTConfig(AdapterConfig):
    ctx_init: str = field(default="a photo of a", metadata={
        "help": "phrase initialising both contexts (token count = n_ctx); '' = N(0, 0.02) with n_ctx vectors"})
    n_ctx: int = field(default=4, metadata={"help": "context length when ctx_init is '' (paper 4)"})
    chunk_size: int = field(default=256, metadata={"help": "prompts encoded per text-encoder call"})
    mix_weight: float = field(default=1.0, metadata={"help": "weight of cross-modal mixing"})
    cross_dist_weight: float = field(default=0.3, metadata={
        "help": "β, weight of cross-distribution mixing (paper 0.3, a released script 0)"})
    neg_image_dir: str = field(default="", metadata={
        "help": "folder with one sub-folder of images per negative label ('' = render them on the mini world)"})
    neg_images_per_label: int = field(default=4, metadata={"help": "images per negative label used for training"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.ctx_init, str) or "{}" in self.ctx_init:
            raise ClipoodError(f"ctx_init must be a plain phrase such as 'a photo of a', got {self.ctx_init!r}")
        for k in ("n_ctx", "chunk_size", "neg_images_per_label"):
            check_int(k, getattr(self, k), minimum=1)
        check_float("mix_weight", self.mix_weight)
        check_float("cross_dist_weight", self.cross_dist_weight)
        if not isinstance(self.neg_image_dir, str):
            raise ClipoodError(f"neg_image_dir must be a folder path or '', got {self.neg_image_dir!r}")


class LAPT(Adapter):
    """``LAPT(context)``: parameters ``ctx`` (ID context, n×W) and ``ood_ctx`` (negative context, n×W)."""

    config_cls = LAPTConfig
    uses_text_encoder = True

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        ctx = self.context
        ctx.require_text_path(self.name or "lapt")
        check_frozen_text_path(ctx.text_path, f"adapter '{self.name or 'lapt'}'")
        cfg = self.config
        phrase = " ".join(cfg.ctx_init.split())
        n_ctx = phrase_length(ctx.text_path, ctx.tokenizer, phrase) if phrase else cfg.n_ctx
        self.id_bank = PromptBank(ctx.text_path, ctx.tokenizer, ctx.id_names, n_ctx, phrase or None, cfg.chunk_size)
        self.neg_bank = (PromptBank(ctx.text_path, ctx.tokenizer, ctx.neg_names, n_ctx, phrase or None,
                                    cfg.chunk_size) if ctx.neg_names else None)
        width = ctx.text_path.width
        if phrase:
            init_id, init_neg = self.id_bank.init_ctx.clone(), self.id_bank.init_ctx.clone()
        else:
            init_id, init_neg = 0.02 * torch.randn(n_ctx, width), 0.02 * torch.randn(n_ctx, width)
        self.ctx = nn.Parameter(init_id.float())
        self.ood_ctx = nn.Parameter(init_neg.float())

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """K×D learned features: ID prompts, then negative prompts."""
        parts = [self.id_bank.encode(self.ctx)]
        if self.neg_bank is not None:
            parts.append(self.neg_bank.encode(self.ood_ctx))
        else:  # no negatives: the context still has to be part of the graph for a uniform state
            parts[0] = parts[0] + 0.0 * self.ood_ctx.sum()
        return torch.cat(parts, dim=0)

    def _features(self) -> torch.Tensor:
        grad = torch.is_grad_enabled() and self.ctx.requires_grad
        key = tuple((p._version, p.data_ptr(), p.device) for p in (self.ctx, self.ood_ctx))
        cache = self.__dict__.get("_eval_cache")
        if not grad and cache is not None and cache[0] == key:
            return cache[1]
        feats = self.tuned_text_features()
        self.__dict__["_eval_cache"] = None if grad else (key, feats)
        return feats

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        v = self.image_features(batch)
        t = self._features()
        with full_precision(v.device):
            return AdapterOutput(logits=v @ t.t(), base_cos=(self.base_text_features * t).sum(-1))

    def train(self, mode: bool = True) -> "LAPT":
        self.__dict__["_eval_cache"] = None
        return super().train(mode)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_b −Σ_k target_{b,k} log softmax(logits_b)_k (targets are probability rows)."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def _beta11(n: int, device) -> torch.Tensor:
    return torch.rand(n, 1, device=device)  # Beta(1, 1) = U(0, 1)


class LAPTTask(TrainingTask):
    """The configured terms plus LAPT's negative-label CE, cross-modal and cross-distribution mixing."""

    def prepare(self, cfg: dict, sf, bench, accelerator) -> None:
        """Encode the training images of the negative labels once (a user folder, or rendered)."""
        from .lapt_data import negative_label_images

        feats, labels = negative_label_images(self.adapter, bench, cfg, accelerator.device)
        self.register_buffer("neg_image_features", feats, persistent=False)
        self.register_buffer("neg_image_labels", labels, persistent=False)

    def set_negative_images(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Use these negative-label image features (n×D) with labels in [N, K) (tests, custom data)."""
        self.register_buffer("neg_image_features", F.normalize(features.float(), dim=-1), persistent=False)
        self.register_buffer("neg_image_labels", labels.long(), persistent=False)

    def extra_losses(self, o: LossInputs) -> dict[str, tuple[float, torch.Tensor]]:
        a = self.adapter
        feats = getattr(self, "neg_image_features", None)
        if feats is None:
            raise ClipoodError("lapt trains on images of its negative labels; none were prepared (set "
                               "adapter.options.neg_image_dir, or run on the mini world where they are rendered)")
        x_id = F.normalize(o.batch["id_features"].float(), dim=-1)
        y_id = o.batch["id_labels"]
        dev = x_id.device
        pick = torch.randint(0, feats.shape[0], (x_id.shape[0],), device=feats.device)
        x_neg, y_neg = feats[pick].to(dev), self.neg_image_labels[pick].to(dev)
        t = a.tuned_text_features()                                                  # K×D, with gradient
        s, k = o.logit_scale, t.shape[0]
        out = {"neg_images": (1.0, F.cross_entropy(s * x_neg @ t.t(), y_neg))}
        x, y = torch.cat([x_id, x_neg]), torch.cat([y_id, y_neg])
        onehot = F.one_hot(y, k).float()
        if a.config.mix_weight > 0:
            lam = _beta11(x.shape[0], dev)
            other = torch.randint(0, k, (x.shape[0],), device=dev)
            mixed = F.normalize(lam * x + (1 - lam) * t.detach()[other], dim=-1)
            target = lam * onehot + (1 - lam) * F.one_hot(other, k).float()
            out["mix"] = (float(a.config.mix_weight), soft_cross_entropy(s * mixed @ t.t(), target))
        if a.config.cross_dist_weight > 0:
            lam = _beta11(x_id.shape[0], dev)
            mixed = F.normalize(lam * x_id + (1 - lam) * x_neg, dim=-1)
            target = lam * F.one_hot(y_id, k).float() + (1 - lam) * F.one_hot(y_neg, k).float()
            out["cross_dist"] = (float(a.config.cross_dist_weight), soft_cross_entropy(s * mixed @ t.t(), target))
        return out


LAPT.task_cls = LAPTTask  # what recipes train it with (clipood_recipes.methods.training_task)
register_adapter("lapt", LAPTConfig, LAPT)
