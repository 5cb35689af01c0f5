"""CoOp: learnable prompt context through the frozen text encoder (Zhou et al., IJCV 2022).

Each ID label i gets the prompt ``[SOS] ctx_1 … ctx_n <name_i> . [EOS]``: the n context vectors (token
embeddings, width W) are learned, the start token, the name's tokens, the full stop and the end token are the
frozen token embeddings of the string ``"<ctx_init> <name_i>."`` (:class:`adapters.prompting.PromptBank`). The
text features are

    t_i = L2(TextEncoder([e_SOS, ctx, e(name_i .), e_EOS]))

and the logits cos(v, t_i) for the N ID rows; the M negative rows stay the frozen, precomputed base features
(``context.text_features[N:]``), so thousands of mined negatives cost nothing. ``base_cos`` = cos(c_i, t_i)
for ID rows (1 for the frozen negatives): the KR term of KR-NFT applies unchanged (as in KgCoOp).

Context: shared (n×W, the paper's default) or class-specific (N×n×W). With ``ctx_init`` (default
"a photo of a") the context starts at that phrase's token embeddings, one vector per word as in the released
``PromptLearner`` (``ctx_count="tokens"``: one per token), so a fresh adapter reproduces the zero-shot features
of "a photo of a <name>."; with ``ctx_init=""`` it starts at N(0, 0.02²) with ``n_ctx`` vectors.

Training (``cls_columns="id"``, the released ``forward_backward``): the cross-entropy runs over the N ID
columns only; ``"all"`` keeps the frozen negatives in the softmax (KR-NFT's L_cls, Eq. 7). Labels are encoded
in chunks of ``chunk_size`` under activation checkpointing while training, so memory grows with the chunk, not
with N (1,000 classes fit); inside a training step the features are encoded once for the ID and the negative
crops (:class:`adapters.prompting.SharedTextFeatures`). Gradients reach only the context: the text path is
frozen and outside the module tree (never saved).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from clipood.errors import ClipoodError

from .context import AdapterContext
from .contract import Adapter, AdapterConfig, AdapterOutput, check_bool, check_choice, check_int, full_precision
from .prompting import CTX_COUNTS, PromptBank, SharedTextFeatures, check_frozen_text_path, context_length
from .registry import register_adapter

CLS_COLUMNS = ("id", "all")


def check_prompt_options(cfg: AdapterConfig) -> None:
    """Checks shared by the prompt learners' configs (ctx_init, n_ctx, ctx_count, chunk_size, cls_columns)."""
    if not isinstance(cfg.ctx_init, str) or "{}" in cfg.ctx_init:
        raise ClipoodError(f"ctx_init must be a plain phrase such as 'a photo of a', got {cfg.ctx_init!r}")
    check_int("n_ctx", cfg.n_ctx, minimum=1)
    check_int("chunk_size", cfg.chunk_size, minimum=1)
    check_choice("ctx_count", cfg.ctx_count, CTX_COUNTS)
    if hasattr(cfg, "cls_columns"):
        check_choice("cls_columns", cfg.cls_columns, CLS_COLUMNS)


@dataclass
class CoOpConfig(AdapterConfig):
    ctx_init: str = field(default="a photo of a", metadata={
        "help": "phrase whose token embeddings initialise the context; '' = random N(0, 0.02) with n_ctx vectors"})
    n_ctx: int = field(default=4, metadata={
        "help": "number of context vectors when ctx_init is '' (random N(0, 0.02) init; CoOp: 16)"})
    ctx_count: str = field(default="words", metadata={
        "help": "context vectors of ctx_init: 'words' (one per word, the released code) | 'tokens' (one per token)"})
    full_stop: bool = field(default=True, metadata={
        "help": "end each prompt with '.' after the name (CoOp; NegPrompt's stage-1 prompts have none)"})
    class_specific: bool = field(default=False, metadata={
        "help": "one context per ID class (N×n×W, CoOp's CSC) instead of one shared context (n×W)"})
    chunk_size: int = field(default=256, metadata={
        "help": "labels encoded per text-encoder call (activation checkpointing per chunk while training)"})
    cls_columns: str = field(default="id", metadata={
        "help": "columns of the training cross-entropy: 'id' (the N ID labels, the released code) | 'all' "
                "(ID + frozen negatives, KR-NFT's L_cls)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prompt_options(self)
        check_bool("full_stop", self.full_stop)
        check_bool("class_specific", self.class_specific)


class CoOp(SharedTextFeatures, Adapter):
    """``CoOp(context, ctx_init="a photo of a", class_specific=False)``; ``context`` needs names and a text path
    (``AdapterContext.from_backbone``). Parameter: ``ctx`` (n×W shared, N×n×W class-specific)."""

    config_cls = CoOpConfig
    uses_text_encoder = True

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        ctx = self.context
        ctx.require_text_path(self.name or "coop")
        check_frozen_text_path(ctx.text_path, self.name or "coop")
        cfg = self.config
        tp = ctx.text_path
        phrase = " ".join(cfg.ctx_init.split())
        n_ctx = context_length(tp, ctx.tokenizer, phrase, cfg.ctx_count) if phrase else cfg.n_ctx
        self.id_bank = PromptBank(tp, ctx.tokenizer, ctx.id_names, n_ctx, phrase or None, cfg.chunk_size,
                                  end="." if cfg.full_stop else "")
        self.n_ctx = n_ctx
        # global RNG: seeded like every other adapter's init
        init = self.id_bank.init_ctx.clone() if phrase else 0.02 * torch.randn(n_ctx, tp.width)
        if cfg.class_specific:
            init = init[None].repeat(self.num_id, 1, 1)
        self.ctx = nn.Parameter(init.float())
        self._eval_cache: tuple[Any, torch.Tensor] | None = None

    @property
    def cls_columns(self) -> str:
        """Columns of the training cross-entropy (read by ``clipood.training.task``'s L_cls)."""
        return self.config.cls_columns

    # ------------------------------------------------------------------------------------ encoding
    def id_text_features(self) -> torch.Tensor:
        """The N learned ID text features t_i (unit rows, N×D), encoded in chunks (once per training step)."""
        key = (self.ctx._version, self.ctx.data_ptr(), self.ctx.device)
        grad = torch.is_grad_enabled() and self.ctx.requires_grad
        if not grad and self._eval_cache is not None and self._eval_cache[0] == key:
            return self._eval_cache[1]
        feats = self._shared("id", lambda: self.id_bank.encode(self.ctx).to(self.base_text_features.device))
        if not grad:
            self._eval_cache = (key, feats)
        return feats

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """K×D: the learned ID features, then the frozen negative rows (``image_features`` is ignored)."""
        return torch.cat([self.id_text_features(), self.base_text_features[self.num_id:]], dim=0)

    def _output(self, v: torch.Tensor, tuned: torch.Tensor) -> AdapterOutput:
        c = self.base_text_features
        with full_precision(v.device):
            logits = torch.cat([v @ tuned.t(), v @ c[self.num_id:].t()], dim=1)
            base_cos = torch.cat([(c[: self.num_id] * tuned).sum(-1), c.new_ones(self.num_neg)])
        return AdapterOutput(logits=logits, base_cos=base_cos)

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        return self._output(self.image_features(batch), self.id_text_features())

    # ---------------------------------------------------------------------------------- relabelling
    def _relabel(self, context: AdapterContext) -> "CoOp":
        """A shared context re-encodes the new names; a class-specific one belongs to the training classes."""
        if self.config.class_specific and not self.context.same_id_labels(context):
            raise self.label_tied_error(context, "one context per class (class_specific=True)")
        return super()._relabel(context)

    def train(self, mode: bool = True) -> "CoOp":
        self._eval_cache = None
        return super().train(mode)


register_adapter("coop", CoOpConfig, CoOp)
