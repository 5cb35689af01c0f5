"""LAPT: label-driven automated prompt tuning (Zhang et al., ECCV 2024): an ID and a negative context, trained
on images of the ID classes and of the negative labels.

Prompts: ``[SOS][ctx] <ID name>.`` for the N ID labels and ``[SOS][ood_ctx] <negative>.`` for the M negative
labels; both contexts are shared (n×W each, 4,096 parameters at ViT-B/16 with n = 4) and every row is encoded
through the frozen text encoder, so the learned contexts move to any label set. Logits are cos(v, t_k) over
all K rows; ``base_cos`` = cos(c_k, t_k). Test: the NegLabel score over the learned ID and negative features
(the release: 10,000 negatives in 100 groups, ``eval.groups`` / ``eval.group_remainder``).

Training batch (:class:`LAPTTask`): the ID crops x_b (labels y_b < N) and images of the negative labels (label
N + m) — from ``neg_image_dir`` (one sub-folder per negative label, named as the label) or, on the mini world,
rendered for each negative name (``clipood.mini.build.render_label``) — ``neg_image_ratio`` of them per ID crop.
``train_negatives`` > 0 trains on that many negatives (the first ones of each part of speech in mining order,
in the released proportion) and evaluates on all of them (the release: 1,000 and 10,000).

``mix_rule="release"`` (OpenOOD-VLM ``oodmixup_trainer`` with ``mix_strategy=wccm``, ``loss_components=multice``,
its ``scripts/ood/lapt/train.sh``): L_cls is the cross-entropy of the cross-modal mixes of every batch image
with a frozen zero-shot text feature of its **own** label,

    x̃_b = L2(λ x_b + (1 − λ) T[y_b, r_b]),   L_cls = CE(s·cos(x̃, t), y)      (λ ~ Beta(1, 1) once per batch)

T[k, r] the unit feature of label k with template r (``mix_templates``: open_clip's 7 simple ImageNet templates,
the release's ``tip`` list; ``"base"``: the run's frozen rows C), r_b uniform; s the logit scale; t the current
tuned features (with gradient). ``cross_dist_weight`` > 0 adds the release's cross-distribution mixing
(``mix_strategy=wccm_cd``; weight 1 there, not used by ``train.sh``): every ID image is paired with a random
negative-label image and every negative-label image with a random ID image,

    x̂_b = L2(λ' x_b + (1 − λ') x_π(b)),   L_cd = soft-CE(s·cos(x̂, t), λ' e_y + (1 − λ') e_π(y)).

``mix_rule="clipood"`` is clipood's former rule: L_cls on the clean ID crops, plus CE on the negative-label
images (weight 1), plus ``mix_weight`` · soft-CE of x̃ = L2(λx + (1−λ)t̄_k) with a random label k's detached
tuned feature t̄_k and target λe_y + (1−λ)e_k (λ per sample), plus a one-way cross-distribution term
(ID crop with a negative-label image) at ``cross_dist_weight``.
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
from .coop import check_prompt_options
from .prompting import PromptBank, SharedTextFeatures, check_frozen_text_path, context_length, encode_prompts
from .registry import register_adapter

__all__ = ["LAPT", "LAPTConfig", "LAPTTask", "soft_cross_entropy", "cross_modal_mix_loss",
           "cross_distribution_partners", "cross_distribution_mix_loss"]

MIX_RULES = ("release", "clipood")
MIX_TEMPLATES = ("simple", "base")


@dataclass
class LAPTConfig(AdapterConfig):
    ctx_init: str = field(default="a photo of a", metadata={
        "help": "phrase initialising both contexts; '' = N(0, 0.02) with n_ctx vectors (the release)"})
    n_ctx: int = field(default=4, metadata={"help": "context length when ctx_init is '' (paper 4)"})
    ctx_count: str = field(default="words", metadata={
        "help": "context vectors of ctx_init: 'words' (one per word, the released code) | 'tokens' (one per token)"})
    chunk_size: int = field(default=256, metadata={"help": "prompts encoded per text-encoder call"})
    mix_rule: str = field(default="release", metadata={
        "help": "'release': L_cls on cross-modal mixes with the own label's frozen text (the released wccm); "
                "'clipood': clean L_cls + negative-image CE + mixing with a random label's tuned feature"})
    mix_templates: str = field(default="simple", metadata={
        "help": "frozen text features mixed in (release rule): 'simple' (the 7 simple ImageNet templates, the "
                "release's) | 'base' (the run's frozen label rows)"})
    mix_weight: float = field(default=1.0, metadata={"help": "weight of cross-modal mixing (clipood rule)"})
    cross_dist_weight: float = field(default=0.0, metadata={
        "help": "weight of cross-distribution mixing (0 = off, as the release's train.sh; its wccm_cd: 1)"})
    train_negatives: int = field(default=0, metadata={
        "help": "negatives trained on (0 = all; the release trains on 1,000 and tests on 10,000)"})
    neg_image_dir: str = field(default="", metadata={
        "help": "folder with one sub-folder of images per negative label ('' = render them on the mini world)"})
    neg_images_per_label: int = field(default=4, metadata={"help": "images per negative label used for training"})
    neg_image_ratio: float = field(default=1.0, metadata={
        "help": "negative-label images drawn per ID crop in each step"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prompt_options(self)
        check_choice("mix_rule", self.mix_rule, MIX_RULES)
        check_choice("mix_templates", self.mix_templates, MIX_TEMPLATES)
        check_int("neg_images_per_label", self.neg_images_per_label, minimum=1)
        check_int("train_negatives", self.train_negatives, minimum=0)
        for k in ("mix_weight", "cross_dist_weight", "neg_image_ratio"):
            check_float(k, getattr(self, k))
            if getattr(self, k) < 0:
                raise ClipoodError(f"{k} must be >= 0, got {getattr(self, k)!r}")
        if not isinstance(self.neg_image_dir, str):
            raise ClipoodError(f"neg_image_dir must be a folder path or '', got {self.neg_image_dir!r}")


class LAPT(SharedTextFeatures, Adapter):
    """``LAPT(context)``: parameters ``ctx`` (ID context, n×W) and ``ood_ctx`` (negative context, n×W)."""

    config_cls = LAPTConfig
    uses_text_encoder = True
    cls_columns = "all"  # the released cross-entropy runs over the ID and the negative prompts

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        ctx = self.context
        ctx.require_text_path(self.name or "lapt")
        check_frozen_text_path(ctx.text_path, f"adapter '{self.name or 'lapt'}'")
        cfg = self.config
        phrase = " ".join(cfg.ctx_init.split())
        n_ctx = context_length(ctx.text_path, ctx.tokenizer, phrase, cfg.ctx_count) if phrase else cfg.n_ctx
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
        """The K×D tuned features: cached while no gradient is needed, encoded once per training step."""
        grad = torch.is_grad_enabled() and self.ctx.requires_grad
        key = tuple((p._version, p.data_ptr(), p.device) for p in (self.ctx, self.ood_ctx))
        cache = self.__dict__.get("_eval_cache")
        if not grad and cache is not None and cache[0] == key:
            return cache[1]
        feats = self._shared("tuned", self.tuned_text_features)
        self.__dict__["_eval_cache"] = None if grad else (key, feats)
        return feats

    @torch.no_grad()
    def frozen_label_features(self) -> torch.Tensor:
        """K×R×D frozen zero-shot features of every label, one unit row per template (``mix_templates``)."""
        if self.config.mix_templates == "base":
            return self.base_text_features[:, None].clone()
        from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

        ctx = self.context
        names = list(ctx.id_names) + list(ctx.neg_names or [])
        per_template = [F.normalize(encode_prompts(ctx.text_path, ctx.tokenizer, [t(n) for n in names],
                                                   self.config.chunk_size), dim=-1)
                        for t in SIMPLE_IMAGENET_TEMPLATES]
        return torch.stack(per_template, dim=1).to(self.base_text_features.device)

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        v = self.image_features(batch)
        t = self._features()
        with full_precision(v.device):
            return AdapterOutput(logits=v @ t.t(), base_cos=(self.base_text_features * t).sum(-1))

    def train(self, mode: bool = True) -> "LAPT":
        self.__dict__["_eval_cache"] = None
        return super().train(mode)


# ------------------------------------------------------------------------------------------------ losses
def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_b −Σ_k target_{b,k} log softmax(logits_b)_k (targets are probability rows)."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def cross_modal_mix_loss(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, frozen: torch.Tensor,
                         lam: float | torch.Tensor, template: torch.Tensor, scale: float) -> torch.Tensor:
    """The released cross-modal mixing loss: CE(scale · L2(λx + (1−λ)·frozen[y, template]) @ textᵀ, y).

    x: B×D unit image features with labels y (B, in [0, K)); text: K×D tuned features; frozen: K×R×D frozen
    per-template label features; template: B template indices in [0, R); λ one number for the batch."""
    mixed = F.normalize(lam * x + (1 - lam) * frozen[y, template].to(x.dtype), dim=-1)
    return F.cross_entropy(scale * mixed @ text.t(), y)


def cross_distribution_partners(y: torch.Tensor, num_id: int, generator: torch.Generator | None = None
                                ) -> torch.Tensor:
    """Partner index of every sample: a random negative-label sample (label >= N) for each ID sample, a random
    ID sample for each negative-label one (the release's ``create_mixed_indices``); itself when a side is empty."""
    idx = torch.arange(y.shape[0], device=y.device)
    is_id = y < num_id
    ids, negs = idx[is_id], idx[~is_id]
    if ids.numel() == 0 or negs.numel() == 0:
        return idx
    out = idx.clone()
    out[ids] = negs[torch.randint(negs.numel(), (ids.numel(),), generator=generator).to(y.device)]
    out[negs] = ids[torch.randint(ids.numel(), (negs.numel(),), generator=generator).to(y.device)]
    return out


def cross_distribution_mix_loss(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, lam: float | torch.Tensor,
                                partner: torch.Tensor, scale: float) -> torch.Tensor:
    """soft-CE(scale · L2(λx + (1−λ)x[partner]) @ textᵀ, λe_y + (1−λ)e_{y[partner]}) (the release's cross_dis)."""
    k = text.shape[0]
    mixed = F.normalize(lam * x + (1 - lam) * x[partner], dim=-1)
    target = lam * F.one_hot(y, k).float() + (1 - lam) * F.one_hot(y[partner], k).float()
    return soft_cross_entropy(scale * mixed @ text.t(), target)


class LAPTTask(TrainingTask):
    """The configured terms with LAPT's L_cls (release rule) or its former extra terms (clipood rule)."""

    def prepare(self, sf, bench, accelerator, seed: int) -> None:
        """Train on ``train_negatives`` negatives (when set) and encode their images once (a folder, or
        rendered with ``seed``, the run's); encode the frozen label features the mixing uses."""
        from .lapt_data import negative_label_images, training_context

        a = self.adapter
        if a.config.train_negatives and a.config.train_negatives < a.num_neg:
            label_set = getattr(sf, "label_set", None)
            self.adapter = a = a.for_labels(training_context(a.context, a.config.train_negatives,
                                                             list(label_set.neg_pos) if label_set else None))
        feats, labels = negative_label_images(a, bench, seed, accelerator.device)
        self.set_negative_images(feats, labels)

    def set_negative_images(self, features: torch.Tensor, labels: torch.Tensor,
                            mix_features: torch.Tensor | None = None) -> None:
        """Use these negative-label image features (n×D) with labels in [N, K) (tests, custom data), and the
        K×R×D frozen label features of the mixing (default: the adapter's ``frozen_label_features()``)."""
        a = self.adapter
        labels = labels.long()
        if labels.numel() == 0 or int(labels.min()) < a.num_id or int(labels.max()) >= a.num_labels:
            raise ClipoodError(f"lapt: negative-label images need labels in [{a.num_id}, {a.num_labels}) (N + the "
                               f"negative's index); got {labels.unique().tolist()[:8]}")
        self.register_buffer("neg_image_features", F.normalize(features.float(), dim=-1), persistent=False)
        self.register_buffer("neg_image_labels", labels, persistent=False)
        if a.config.mix_rule == "release":
            mix = a.frozen_label_features() if mix_features is None else mix_features
            if mix.ndim != 3 or mix.shape[0] != a.num_labels or mix.shape[2] != a.dim:
                raise ClipoodError(f"lapt: mix_features must be K×R×D = {a.num_labels}×R×{a.dim}, got "
                                   f"{tuple(mix.shape)}")
            self.register_buffer("mix_features", F.normalize(mix.float(), dim=-1), persistent=False)

    def _draw(self, batch: Mapping[str, torch.Tensor]) -> dict:
        """This step's random draws: negative-label images, λ, templates, cross-distribution partners."""
        feats = getattr(self, "neg_image_features", None)
        if feats is None:
            raise ClipoodError("lapt trains on images of its negative labels; none were prepared (set "
                               "adapter.options.neg_image_dir, or run on the mini world where they are rendered)")
        cfg = self.adapter.config
        x_id = F.normalize(batch["id_features"].float(), dim=-1)
        dev = x_id.device
        n = max(1, round(cfg.neg_image_ratio * x_id.shape[0])) if cfg.neg_image_ratio > 0 else 0
        pick = torch.randint(0, feats.shape[0], (n,), device=feats.device)
        x = torch.cat([x_id, feats[pick].to(dev)])
        y = torch.cat([batch["id_labels"].to(dev), self.neg_image_labels[pick].to(dev)])
        d = {"x": x, "y": y, "n_id": x_id.shape[0]}
        if cfg.mix_rule == "release":
            d["lam"] = float(torch.rand(()))
            d["template"] = torch.randint(0, self.mix_features.shape[1], (x.shape[0],)).to(dev)
            if cfg.cross_dist_weight > 0:
                d["lam_cd"] = float(torch.rand(()))
                d["partner"] = cross_distribution_partners(y, self.adapter.num_id)
        return d

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._step = self._draw(batch)
        try:
            return super().forward(batch)
        finally:
            self._step = None

    def term(self, name: str, o: LossInputs) -> torch.Tensor:
        a, d = self.adapter, self._step
        if name != "cls" or a.config.mix_rule != "release":
            return super().term(name, o)
        return cross_modal_mix_loss(d["x"], d["y"], a._features(), self.mix_features, d["lam"], d["template"],
                                    o.logit_scale)

    def extra_losses(self, o: LossInputs) -> dict[str, tuple[float, torch.Tensor]]:
        a, d, cfg = self.adapter, self._step, self.adapter.config
        t, s, k = a._features(), o.logit_scale, a.num_labels
        if cfg.mix_rule == "release":
            if cfg.cross_dist_weight <= 0:
                return {}
            return {"cross_dist": (float(cfg.cross_dist_weight),
                                   cross_distribution_mix_loss(d["x"], d["y"], t, d["lam_cd"], d["partner"], s))}
        # clipood's former rule
        x, y, n_id = d["x"], d["y"], d["n_id"]
        x_id, y_id, x_neg, y_neg = x[:n_id], y[:n_id], x[n_id:], y[n_id:]
        dev = x.device
        out = {"neg_images": (1.0, F.cross_entropy(s * x_neg @ t.t(), y_neg))}
        if cfg.mix_weight > 0:
            lam = torch.rand(x.shape[0], 1, device=dev)  # Beta(1, 1) per sample
            other = torch.randint(0, k, (x.shape[0],), device=dev)
            mixed = F.normalize(lam * x + (1 - lam) * t.detach()[other], dim=-1)
            target = lam * F.one_hot(y, k).float() + (1 - lam) * F.one_hot(other, k).float()
            out["mix"] = (float(cfg.mix_weight), soft_cross_entropy(s * mixed @ t.t(), target))
        if cfg.cross_dist_weight > 0 and x_neg.shape[0]:
            m = min(x_id.shape[0], x_neg.shape[0])
            lam = torch.rand(m, 1, device=dev)
            mixed = F.normalize(lam * x_id[:m] + (1 - lam) * x_neg[:m], dim=-1)
            target = lam * F.one_hot(y_id[:m], k).float() + (1 - lam) * F.one_hot(y_neg[:m], k).float()
            out["cross_dist"] = (float(cfg.cross_dist_weight), soft_cross_entropy(s * mixed @ t.t(), target))
        return out


LAPT.task_cls = LAPTTask  # what recipes train it with (clipood_recipes.methods.training_task)
register_adapter("lapt", LAPTConfig, LAPT)
