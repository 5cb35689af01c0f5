"""The base of every prompt learner: learned context vectors put before label names and run through the frozen
text encoder (CoOp, LoCoOp, NegPT, ConNegPT, LAPT build on it; so should any new prompt method).

Public shape (stable; new prompt methods rely on it):

- :class:`PromptConfig` — the context options every prompt learner has: ``ctx_init`` (the phrase whose token
  embeddings initialise the context; ``""`` = N(0, 0.02²) with ``n_ctx`` vectors), ``n_ctx``, ``ctx_count``
  (``"words"``: one vector per word of ``ctx_init``, the released CoOp / LoCoOp / LAPT rule; ``"tokens"``: one per
  token) and ``chunk_size`` (prompts per text-encoder call). Subclass it (``@dataclass``) to add options or
  change a default; its ``__post_init__`` checks the four fields. ``prompt_end()`` is the text after each name
  (".").
- :class:`LabelPromptConfig` — a :class:`PromptConfig` plus ``full_stop`` (end each prompt with "." after the
  name, ``prompt_end()``) and ``cls_columns`` (``"id"`` | ``"all"``: the columns of the training cross-entropy).
- :class:`PromptLearner` — an :class:`~adapters.contract.Adapter` that checks its context (names, a text path, a
  tokenizer, a frozen text encoder) and resolves the context length once, then offers:

  * ``self.phrase`` (``ctx_init`` with single spaces; ``""`` for a random start) and ``self.n_ctx``;
  * ``prompt_bank(names, end=None)`` → a :class:`~adapters.prompting.PromptBank` over ``names`` with this
    learner's context slots (``end`` defaults to ``config.prompt_end()``);
  * ``initial_context(bank, rows=None)`` → the starting context (n×W, or rows×n×W): the phrase's token
    embeddings, else N(0, 0.02²) drawn from the global RNG (seeded like every adapter's init);
  * ``cached_features(key, params, compute)`` → ``compute()``, encoded once per training step inside
    ``text_feature_scope()`` and cached between steps while no gradient is needed, keyed by the parameters'
    versions (an optimiser step, an in-place edit or a move to another device re-encodes; ``train()`` /
    ``eval()`` clears the cache);
  * ``cls_columns`` (``config.cls_columns`` with a :class:`LabelPromptConfig`, else ``"all"``);
  * the relabelling rule: a shared context moves to any label set by re-encoding the new names (the default
    ``_relabel``); weights tied to the ID classes (``id_tied_weights()`` returns what they are, e.g. CoOp's
    class-specific contexts) move only to the same ID labels, else a ClipoodError names them.

A subclass builds its banks and ``nn.Parameter`` contexts in ``__init__`` (after ``super().__init__``) and
implements ``forward_batch`` (and ``tuned_text_features``). The frozen text path stays outside the module tree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from clipood.errors import ClipoodError

from .context import AdapterContext
from .contract import Adapter, AdapterConfig, check_bool, check_choice, check_int
from .prompting import CTX_COUNTS, PromptBank, SharedTextFeatures, check_frozen_text_path, context_length

__all__ = ["CLS_COLUMNS", "LabelPromptConfig", "PromptConfig", "PromptLearner"]

CLS_COLUMNS = ("id", "all")


@dataclass
class PromptConfig(AdapterConfig):
    """The context options of every prompt learner (see the module docstring)."""

    ctx_init: str = field(default="a photo of a", metadata={
        "help": "phrase whose token embeddings initialise the context; '' = random N(0, 0.02) with n_ctx vectors"})
    n_ctx: int = field(default=4, metadata={
        "help": "number of context vectors when ctx_init is '' (random N(0, 0.02) init; CoOp: 16)"})
    ctx_count: str = field(default="words", metadata={
        "help": "context vectors of ctx_init: 'words' (one per word, the released code) | 'tokens' (one per token)"})
    chunk_size: int = field(default=256, metadata={
        "help": "prompts encoded per text-encoder call (activation checkpointing per chunk while training)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.ctx_init, str) or "{}" in self.ctx_init:
            raise ClipoodError(f"ctx_init must be a plain phrase such as 'a photo of a', got {self.ctx_init!r}")
        check_int("n_ctx", self.n_ctx, minimum=1)
        check_int("chunk_size", self.chunk_size, minimum=1)
        check_choice("ctx_count", self.ctx_count, CTX_COUNTS)

    def prompt_end(self) -> str:
        """The text after each label name in a prompt."""
        return "."


@dataclass
class LabelPromptConfig(PromptConfig):
    """A :class:`PromptConfig` with the prompt's end and the columns of the training cross-entropy."""

    full_stop: bool = field(default=True, metadata={
        "help": "end each prompt with '.' after the name (CoOp; NegPrompt's prompts have none)"})
    cls_columns: str = field(default="id", metadata={
        "help": "columns of the training cross-entropy: 'id' (the N ID labels, the released code) | 'all' "
                "(ID + frozen negatives, KR-NFT's L_cls)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("full_stop", self.full_stop)
        check_choice("cls_columns", self.cls_columns, CLS_COLUMNS)

    def prompt_end(self) -> str:
        return "." if self.full_stop else ""


class PromptLearner(SharedTextFeatures, Adapter):
    """Base of the prompt learners (see the module docstring for what it holds and offers)."""

    config_cls = PromptConfig
    uses_text_encoder = True

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        ctx, cfg = self.context, self.config
        who = self.name or type(self).__name__
        ctx.require_text_path(who)
        check_frozen_text_path(ctx.text_path, f"adapter '{who}'")
        self.phrase = " ".join(cfg.ctx_init.split())
        self.n_ctx = context_length(ctx.text_path, ctx.tokenizer, self.phrase, cfg.ctx_count) if self.phrase \
            else int(cfg.n_ctx)

    # ------------------------------------------------------------------------------------ building
    def prompt_bank(self, names: Sequence[str], end: str | None = None) -> PromptBank:
        """Frozen prompt pieces of ``names`` around this learner's ``n_ctx`` context slots."""
        ctx = self.context
        return PromptBank(ctx.text_path, ctx.tokenizer, names, self.n_ctx, self.phrase or None,
                          self.config.chunk_size, end=self.config.prompt_end() if end is None else end)

    def initial_context(self, bank: PromptBank, rows: int | None = None) -> torch.Tensor:
        """The starting context: the phrase's token embeddings (n×W), or N(0, 0.02²) without a phrase; with
        ``rows`` the same start repeated per row (rows×n×W)."""
        init = bank.init_ctx.clone() if self.phrase else 0.02 * torch.randn(self.n_ctx, self.context.text_path.width)
        return (init[None].repeat(rows, 1, 1) if rows is not None else init).float()

    # ------------------------------------------------------------------------------------ encoding
    def cached_features(self, key: str, params: Sequence[nn.Parameter],
                        compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` once per training step (``text_feature_scope``); without gradients, reused while
        ``params`` are unchanged (their versions, storages and devices are the cache key)."""
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        version = tuple((p._version, p.data_ptr(), p.device) for p in params)
        cache = self.__dict__.setdefault("_eval_cache", {})
        hit = cache.get(key)
        if not grad and hit is not None and hit[0] == version:
            return hit[1]
        feats = self._shared(key, compute)
        if grad:
            cache.pop(key, None)
        else:
            cache[key] = (version, feats)
        return feats

    def train(self, mode: bool = True) -> "PromptLearner":
        self.__dict__["_eval_cache"] = {}
        return super().train(mode)

    @property
    def cls_columns(self) -> str:
        """Columns of the training cross-entropy (read by ``clipood.training.task``'s L_cls)."""
        return self.config.cls_columns if isinstance(self.config, LabelPromptConfig) else "all"

    # ---------------------------------------------------------------------------------- relabelling
    def id_tied_weights(self) -> str | None:
        """What of this learner belongs to its training ID classes (None: everything moves to new labels)."""
        return None

    def _relabel(self, context: AdapterContext) -> "PromptLearner":
        """A shared context re-encodes the new names; ID-tied weights move only to the same ID labels."""
        tied = self.id_tied_weights()
        if tied is not None and not self.context.same_id_labels(context):
            raise self.label_tied_error(context, tied)
        return super()._relabel(context)
