"""Feature tuning over frozen text features: FT (Eq. 4), CoFT (Eq. 5) and NFT (Eq. 6) of KR-NFT.

Each row c_i of the frozen base text features C (K×D, unit rows, N ID rows first) becomes

    c'_i = L2(a ⊙ c_i + b),   a = α_g + ĥα_g(v),  b = β_g + ĥβ_g(v)

where g is the row's group — one group "all" or, with ``distribution_aware``, "id" (rows < N) and "neg" —
α_g, β_g are learnable (init 1 and 0) and ĥ are image-conditional meta-nets (only with ``conditional``):
Linear(D→h) → ReLU → Linear(h→D), last layer zero-initialised so every variant starts at the identity.
``mode`` sets the shape of α_g, β_g: "shared" 1×D (the paper), "class_specific" one row per label (official
``csc``), "constant" scalars (official ``constant``). Conditional + class_specific is supported:
a_i = α_i + ĥα(v) (the residual is per image and shared by the group's rows).

Efficiency: the forward never builds the B×K×D tuned features. For unit v, c_i and per-image a, b:

    v·(a⊙c_i + b)  = (v⊙a)·c_i + v·b
    ‖a⊙c_i + b‖²   = (a⊙a)·(c_i⊙c_i) + 2(a⊙b)·c_i + b·b
    c_i·(a⊙c_i + b) = a·(c_i⊙c_i) + b·c_i

so logits and cos(c_i, c'_i) come from B×2D @ 2D×K products against the buffer [C⊙C | C]. In class_specific
mode the static rows P_i = α_i⊙c_i + β_i are formed once (K×D) and the per-image residual is expanded the
same way (see ``_cos_per_row``). Memory is O(B·K + K·D).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from clipood.errors import ClipoodError

from .context import AdapterContext
from .contract import Adapter, AdapterConfig, AdapterOutput, check_bool, check_choice, check_int, full_precision
from .registry import register_adapter

MODES = ("shared", "class_specific", "constant")
_EPS = 1e-8  # norm clamp, as in F.normalize (squared before use)


def _conditional(default: bool) -> Any:
    return field(default=default, metadata={
        "help": "add per-image residuals from meta-nets on the image feature (Eq. 5); false: static features (Eq. 4)"})


def _distribution_aware(default: bool) -> Any:
    return field(default=default, metadata={
        "help": "separate α, β and meta-nets for ID rows and negative rows (Eq. 6); needs negatives"})


@dataclass
class FeatureTuningConfig(AdapterConfig):
    """Options shared by ft / coft / nft (they differ only in defaults)."""

    conditional: bool = _conditional(True)
    distribution_aware: bool = _distribution_aware(True)
    mode: str = field(default="shared", metadata={
        "help": "shape of α, β: 'shared' (D per group, paper), 'class_specific' (K×D, official csc), "
                "'constant' (scalars, official constant)"})
    hidden_dim: int = field(default=64, metadata={
        "help": "meta-net hidden width h (Linear(D→h)→ReLU→Linear(h→D)); official script 64, its yml 8"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("conditional", self.conditional)
        check_bool("distribution_aware", self.distribution_aware)
        check_choice("mode", self.mode, MODES)
        check_int("hidden_dim", self.hidden_dim, minimum=1)


@dataclass
class FTConfig(FeatureTuningConfig):
    """FT (Eq. 4): static α, β shared by all rows."""

    conditional: bool = _conditional(False)
    distribution_aware: bool = _distribution_aware(False)


@dataclass
class CoFTConfig(FeatureTuningConfig):
    """CoFT (Eq. 5): image-conditional, one transform for all rows."""

    conditional: bool = _conditional(True)
    distribution_aware: bool = _distribution_aware(False)


@dataclass
class NFTConfig(FeatureTuningConfig):
    """NFT (Eq. 6): image-conditional and distribution-aware (the KR-NFT default)."""

    conditional: bool = _conditional(True)
    distribution_aware: bool = _distribution_aware(True)


class MetaNet(nn.Sequential):
    """Linear(D→h) → ReLU → Linear(h→D) with a zero last layer, so its output starts at 0."""

    def __init__(self, dim: int, hidden: int, dtype: torch.dtype) -> None:
        super().__init__(nn.Linear(dim, hidden, dtype=dtype), nn.ReLU(), nn.Linear(hidden, dim, dtype=dtype))
        nn.init.zeros_(self[2].weight)
        nn.init.zeros_(self[2].bias)


def _rsqrt_norm(norm2: torch.Tensor) -> torch.Tensor:
    return norm2.clamp_min(_EPS * _EPS).rsqrt()


def _cos_shared(v: torch.Tensor, c: torch.Tensor, cc: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """cos(v, c'_i) (B×K) and cos(c_i, c'_i) (R×K) for c'_i = L2(a⊙c_i + b).

    v: B×D unit; c: K×D unit rows; cc = [c⊙c | c] (K×2D); a, b: R×D with R = B (conditional) or 1.
    """
    cc_t = cc.t()
    bb = (b * b).sum(-1, keepdim=True)
    norm2 = torch.addmm(bb, torch.cat([a * a, 2 * a * b], dim=1), cc_t)           # R×K
    inv = _rsqrt_norm(norm2)
    dot = torch.addmm((v * b).sum(-1, keepdim=True), v * a, c.t())                # B×K
    base = torch.cat([a, b], dim=1) @ cc_t                                        # R×K
    return dot * inv, base * inv


def _cos_per_row(v: torch.Tensor, c: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                 ha: torch.Tensor | None, hb: torch.Tensor | None):
    """class_specific: c'_i = L2(P_i + ĥα⊙c_i + ĥβ) with static rows P_i = α_i⊙c_i + β_i (α, β: K×D).

    With u_i = P_i + ĥα⊙c_i + ĥβ (ĥ: B×D, per image):
      v·u_i   = v·P_i + (v⊙ĥα)·c_i + v·ĥβ
      ‖u_i‖²  = ‖P_i‖² + ĥα²·c_i² + ‖ĥβ‖² + 2ĥα·(c_i⊙P_i) + 2ĥβ·P_i + 2(ĥα⊙ĥβ)·c_i
      c_i·u_i = c_i·P_i + ĥα·c_i² + ĥβ·c_i
    """
    p = alpha * c + beta                                                          # K×D, once per call
    cp = c * p
    dot = v @ p.t()
    norm2 = (p * p).sum(-1)[None]                                                 # 1×K
    base = cp.sum(-1)[None]
    if ha is not None:
        c_t = c.t()
        dot = torch.addmm(dot + (v * hb).sum(-1, keepdim=True), v * ha, c_t)
        norm2 = norm2 + (hb * hb).sum(-1, keepdim=True)
        norm2 = torch.addmm(norm2, ha * ha, (c * c).t())
        norm2 = torch.addmm(norm2, 2 * ha, cp.t())
        norm2 = torch.addmm(norm2, 2 * hb, p.t())
        norm2 = torch.addmm(norm2, 2 * ha * hb, c_t)
        base = torch.addmm(base, ha, (c * c).t())
        base = torch.addmm(base, hb, c_t)
    inv = _rsqrt_norm(norm2)
    return dot * inv, base * inv


class FeatureTuning(Adapter):
    """Element-wise scale-and-shift of frozen text features (Eq. 4–6); see the module docstring.

    Parameters are ``alpha[g]``, ``beta[g]`` (ParameterDict) and, when conditional, ``meta_alpha[g]``,
    ``meta_beta[g]`` (ModuleDict) for g in ("all",) or ("id", "neg").
    """

    config_cls = FeatureTuningConfig
    identity_at_init = True
    rows_independent = True  # every row's cosines and base_cos use only that row's features

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        cfg = self.config
        c = self.base_text_features
        k, d = c.shape
        num_id = self.num_id
        if cfg.distribution_aware:
            if num_id == k:
                raise ClipoodError(
                    f"distribution_aware=True needs negative rows, but num_id={num_id} equals K={k}; "
                    "add negative labels or set distribution_aware=False"
                )
            self.groups: tuple[tuple[str, int, int], ...] = (("id", 0, num_id), ("neg", num_id, k))
        else:
            self.groups = (("all", 0, k),)
        # [C⊙C | C]: the text side of every factored product, computed once
        self.register_buffer("_base_cat", torch.cat([c * c, c], dim=1), persistent=False)

        def shape(rows: int) -> tuple[int, int]:
            return {"shared": (1, d), "constant": (1, 1), "class_specific": (rows, d)}[cfg.mode]

        self.alpha = nn.ParameterDict({g: nn.Parameter(torch.ones(shape(e - s), dtype=c.dtype))
                                       for g, s, e in self.groups})
        self.beta = nn.ParameterDict({g: nn.Parameter(torch.zeros(shape(e - s), dtype=c.dtype))
                                      for g, s, e in self.groups})
        if cfg.conditional:
            self.meta_alpha = nn.ModuleDict({g: MetaNet(d, cfg.hidden_dim, c.dtype) for g, _, _ in self.groups})
            self.meta_beta = nn.ModuleDict({g: MetaNet(d, cfg.hidden_dim, c.dtype) for g, _, _ in self.groups})

    def _group_factors(self, g: str, v: torch.Tensor | None):
        """(a, b) for group g: static α, β plus the meta-net residuals for images v (if conditional)."""
        a, b = self.alpha[g], self.beta[g]
        if self.config.conditional:
            a = a + self.meta_alpha[g](v)
            b = b + self.meta_beta[g](v)
        elif a.shape[-1] == 1:  # constant mode: scalars act on every dimension
            a, b = a.expand(1, self.dim), b.expand(1, self.dim)
        return a, b

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        v = self.image_features(batch)
        cond = batch.get("condition_features")
        if cond is not None:
            # meta-nets see another feature than the one being scored (the official code conditions all
            # crops of an image on its single most class-like crop)
            cond = self.image_features({"image_features": cond})
            if cond.shape[0] != v.shape[0]:
                raise ClipoodError(f"condition_features has {cond.shape[0]} rows but image_features {v.shape[0]}")
        with full_precision(v.device):
            return self._forward(v, cond)

    def _forward(self, v: torch.Tensor, cond: torch.Tensor | None = None) -> AdapterOutput:
        c = self.base_text_features
        h = v if cond is None else cond
        logits, base = [], []
        for g, s, e in self.groups:
            if self.config.mode == "class_specific":
                ha = self.meta_alpha[g](h) if self.config.conditional else None
                hb = self.meta_beta[g](h) if self.config.conditional else None
                lg, bc = _cos_per_row(v, c[s:e], self.alpha[g], self.beta[g], ha, hb)
            else:
                a, b = self._group_factors(g, h)
                lg, bc = _cos_shared(v, c[s:e], self._base_cat[s:e], a, b)
            logits.append(lg)
            base.append(bc)
        logits_t = logits[0] if len(logits) == 1 else torch.cat(logits, dim=1)
        base_t = base[0] if len(base) == 1 else torch.cat(base, dim=1)
        if not self.config.conditional:
            base_t = base_t[0]  # static features: one cosine per row (K)
        return AdapterOutput(logits=logits_t, base_cos=base_t)

    def _relabel(self, context: AdapterContext) -> "FeatureTuning":
        """Shared and constant modes apply the learned transform to the new base rows; class_specific rows
        belong to the training labels."""
        if self.config.mode == "class_specific" and not self.context.same_labels(context):
            raise self.label_tied_error(context, "per-row α, β (mode='class_specific')")
        return super()._relabel(context)

    def factors(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image scale and shift, B×D each: ``alpha_id``, ``beta_id``, ``alpha_neg``, ``beta_neg``.

        Without ``distribution_aware`` the id and neg entries are the same tensors. Not defined in
        class_specific mode (the factors are per row there; use ``tuned_text_features``).
        """
        if self.config.mode == "class_specific":
            raise ClipoodError("factors() is per image and not defined for mode='class_specific'; "
                               "use tuned_text_features(image_features)")
        v = self.image_features({"image_features": image_features})
        out: dict[str, torch.Tensor] = {}
        for g, _, _ in self.groups:
            a, b = self._group_factors(g, v)
            a, b = a.expand(v.shape[0], self.dim), b.expand(v.shape[0], self.dim)
            for name in ((g,) if g != "all" else ("id", "neg")):
                out[f"alpha_{name}"], out[f"beta_{name}"] = a, b
        return out

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Explicit c'_i: K×D when not conditional (``image_features`` ignored), else B×K×D.

        Builds the B×K×D tensor the forward avoids; for inspection and tests only.
        """
        c = self.base_text_features
        if self.config.conditional:
            if image_features is None:
                raise ClipoodError(f"adapter '{self.name}' is image-conditional; pass image_features (B×{self.dim})")
            v = self.image_features({"image_features": image_features})
        parts = []
        for g, s, e in self.groups:
            a, b = self.alpha[g], self.beta[g]
            if self.config.conditional:
                a = a[None] + self.meta_alpha[g](v)[:, None, :]      # B×(1 or rows)×D
                b = b[None] + self.meta_beta[g](v)[:, None, :]
            parts.append(torch.nn.functional.normalize(a * c[s:e] + b, dim=-1, eps=_EPS))
        return torch.cat(parts, dim=-2)


class FT(FeatureTuning):
    """FT (Eq. 4): ``FT(text_features, num_id, mode="shared")`` — static α ⊙ c + β, shared by all rows."""

    config_cls = FTConfig


class CoFT(FeatureTuning):
    """CoFT (Eq. 5): ``CoFT(text_features, num_id, hidden_dim=64)`` — image-conditional, one transform."""

    config_cls = CoFTConfig


class NFT(FeatureTuning):
    """NFT (Eq. 6): ``NFT(text_features, num_id, hidden_dim=64, conditional=True, distribution_aware=True)``.

    Image-conditional, separate transforms for ID and negative rows. With h = 64 and D = 512 it has
    266,496 trainable parameters (h = 8: 36,896).
    """

    config_cls = NFTConfig


for _name, _cfg, _cls in (("ft", FTConfig, FT), ("coft", CoFTConfig, CoFT), ("nft", NFTConfig, NFT)):
    register_adapter(_name, _cfg, _cls)  # re-import safe: same definition re-registers silently
