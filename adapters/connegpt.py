"""ConNegPT: negative prompts conditioned on the image (CoCoOp-style meta-net; the paper's ConNegPT*, Tab. 7).

As NegPT (:mod:`adapters.negpt`), but every image b shifts the shared negative context by a meta-net output:

    nctx_b = nctx + π(v_b),   π = Linear(D→h) → ReLU → Linear(h→W)      (CoCoOp: h = D/16)
    t_{b,m} = L2(TextEncoder([e_SOS, nctx_b, e(neg_m .), e_EOS]))

The meta-net has PyTorch's default ``nn.Linear`` initialisation, as CoCoOp's ``meta_net`` (``meta_init="zero"``:
its last layer starts at zero, so a fresh ConNegPT equals NegPT). The prompts end in a full stop, as CoCoOp's.

so the text encoder runs once per (image, negative label). The reference implementation (CoCoOp) runs batch 1;
here the B·M sequences of a batch are encoded together, in chunks of ``chunk_size`` sequences (activation
checkpointing per chunk while training): B images in one call give the logits of B single-image calls.
Images with identical condition features (all crops of one training image with ``train.condition=top_crop``)
are encoded once. The meta-net sees ``condition_features`` when the batch has them, else the image feature.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .contract import AdapterOutput, check_choice, check_int
from .negpt import NegativePrompts, NegPTConfig
from .registry import register_adapter

__all__ = ["ConNegPT", "ConNegPTConfig"]


@dataclass
class ConNegPTConfig(NegPTConfig):
    hidden_dim: int = field(default=0, metadata={
        "help": "meta-net hidden width h (0 = max(1, D // 16), CoCoOp's rule)"})
    chunk_size: int = field(default=512, metadata={
        "help": "(image, label) prompts encoded per text-encoder call"})
    full_stop: bool = field(default=True, metadata={"help": "end each prompt with '.' after the name (CoCoOp)"})
    cls_columns: str = field(default="all", metadata={
        "help": "columns of L_cls: 'all' (KR-NFT's L_cls, the paper's ConNegPT*) | 'id'"})
    meta_init: str = field(default="default", metadata={
        "help": "meta-net init: 'default' (PyTorch's nn.Linear init, CoCoOp) | 'zero' (last layer 0: starts as NegPT)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("hidden_dim", self.hidden_dim, minimum=0)
        check_choice("meta_init", self.meta_init, ("default", "zero"))


class ConNegPT(NegativePrompts):
    """``ConNegPT(context, ctx_init="a photo of a", hidden_dim=0)``: parameters ``neg_ctx`` (n×W) and the
    meta-net ``meta`` (D→h→W; ``meta_init="zero"`` starts its last layer at zero, i.e. at NegPT)."""

    config_cls = ConNegPTConfig

    def __init__(self, context, num_id: int | None = None, config=None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        h = self.config.hidden_dim or max(1, self.dim // 16)
        width = self.neg_ctx.shape[1]
        self.meta = nn.Sequential(nn.Linear(self.dim, h), nn.ReLU(), nn.Linear(h, width))
        if self.config.meta_init == "zero":
            nn.init.zeros_(self.meta[2].weight)
            nn.init.zeros_(self.meta[2].bias)

    def negative_text_features(self, condition: torch.Tensor) -> torch.Tensor:
        """B×M×D: the negative prompts of each image (unit rows), encoded once per distinct condition; within a
        :meth:`text_feature_scope` (a training step) a second call with the same distinct conditions (the
        negative crops of the same images under ``train.condition=top_crop``) reuses the first one's features."""
        cond = F.normalize(condition.to(self.neg_ctx.dtype), dim=-1)
        uniq, inverse = torch.unique(cond, dim=0, return_inverse=True)
        scope = self.__dict__.get("_feature_scope")
        seen = scope.get("conditional") if scope is not None else None
        if seen is not None and seen[0].shape == uniq.shape and torch.equal(seen[0], uniq):
            return seen[1][inverse]
        ctx = self.neg_ctx[None] + self.meta(uniq)[:, None, :]                     # U×n×W
        feats = self.bank.encode_per_image(ctx)
        if scope is not None:
            scope["conditional"] = (uniq, feats)
        return feats[inverse]

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """B×K×D for the given images: frozen ID rows, then that image's negative prompts."""
        if image_features is None:
            raise ValueError("connegpt's features depend on the image: pass image_features")
        v = F.normalize(image_features.to(self.base_text_features.dtype), dim=-1)
        neg = self.negative_text_features(v)
        ids = self.base_text_features[: self.num_id][None].expand(v.shape[0], -1, -1)
        return torch.cat([ids, neg], dim=1)

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        v = self.image_features(batch)
        cond = batch.get("condition_features")
        cond = v if cond is None else cond.to(v.device)
        return self._combine(v, self.negative_text_features(cond))


register_adapter("connegpt", ConNegPTConfig, ConNegPT)
