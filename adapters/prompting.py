"""Soft prompts for any list of label names: the machinery CoOp, LoCoOp, NegPT, ConNegPT and LAPT share.

A :class:`PromptBank` holds, for R label names, the frozen token embeddings of ``"<phrase> <name><end>"``
(``end`` = "." by default, "" for NegPrompt's prompts) split around the n context slots: the start token (R×1×W),
and the name, full stop, end token and padding after the context (R×L'×W). ``encode(ctx)`` puts learned
context vectors into the slots and runs the frozen text path:

    t_r = L2(TextEncoder([e_SOS, ctx_r, e(name_r .), e_EOS]))

The n slots hold the first n tokens of the phrase: with ``ctx_count="words"`` (the released CoOp's, CoCoOp's,
LoCoOp's and LAPT's rule) n is the phrase's word count and any further tokens of a multi-token word stay
frozen in the prompt; ``"tokens"`` learns every token of the phrase (:func:`context_length`).

``ctx`` is one shared context (n×W), one per row (R×n×W), or one per (image, row) pair (B×R×n×W, conditional
prompts as in CoCoOp): all sequences are encoded in chunks of ``chunk_size``, each chunk under activation
checkpointing while gradients are needed (when there is more than one chunk), so memory grows with the chunk,
not with B·R. The bank has no
parameters and is never saved; the text path stays outside every module tree.

:class:`SharedTextFeatures` lets a training step encode each context once: inside
``adapter.text_feature_scope()`` (entered by ``clipood.training.task.TrainingTask`` around a whole step) every named
text-feature computation runs once and is reused by the ID crops, the negative crops and the method's own
loss terms.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipood.errors import ClipoodError

__all__ = ["PromptBank", "SharedTextFeatures", "context_length", "encode_prompts", "phrase_length",
           "check_frozen_text_path"]

_EPS = 1e-8


def check_frozen_text_path(text_path, who: str) -> None:
    """Prompt learners train only their contexts: the text encoder must be frozen."""
    mods = (text_path.token_embedding, text_path.transformer, text_path.ln_final)
    if any(p.requires_grad for m in mods for p in m.parameters()):
        raise ClipoodError(f"{who} needs a frozen text encoder (load_clip returns one); gradients must reach only "
                           f"the learned contexts")


def phrase_length(text_path, tokenizer, phrase: str) -> int:
    """Number of tokens of ``phrase`` (without start / end tokens)."""
    toks = tokenizer([phrase]).to(text_path.token_embedding.weight.device)
    return int(text_path.end_positions(toks)[0]) - 1


@torch.no_grad()
def encode_prompts(text_path, tokenizer, prompts: Sequence[str], chunk_size: int = 256) -> torch.Tensor:
    """Raw (not normalised) text features P×D of whole prompts through the frozen text path, in chunks."""
    dev = text_path.token_embedding.weight.device
    out = []
    for s in range(0, len(prompts), chunk_size):
        tokens = tokenizer(list(prompts[s:s + chunk_size])).to(dev)
        ends = text_path.end_positions(tokens)
        if text_path.pool_type in ("argmax", "eos") and text_path.attn_mask is not None:
            tokens = tokens[:, : int(ends.max()) + 1]  # causal and end-pooled: later positions change nothing
        out.append(text_path.encode_embeddings(text_path.embed(tokens), ends).float())
    return torch.cat(out)


CTX_COUNTS = ("words", "tokens")


def context_length(text_path, tokenizer, phrase: str, count: str = "words") -> int:
    """How many context vectors a ``phrase`` initialises: its word count (``"words"``: ``len(ctx_init.split(" "))``
    as the released CoOp, CoCoOp, LoCoOp and LAPT code; NegPrompt counts ``\\w+`` runs, the same for plain
    phrases) or its token count (``"tokens"``)."""
    if count not in CTX_COUNTS:
        raise ClipoodError(f"ctx_count must be one of {', '.join(CTX_COUNTS)}, got {count!r}")
    n = phrase_length(text_path, tokenizer, phrase)
    if count == "words":
        n = min(n, len(phrase.split()))
    if n < 1:
        raise ClipoodError(f"ctx_init {phrase!r} has no tokens")
    return n


class SharedTextFeatures:
    """Mixin of prompt learners: text features computed once per :meth:`text_feature_scope`."""

    @contextlib.contextmanager
    def text_feature_scope(self) -> Iterator[None]:
        """Within this block each named text-feature computation (:meth:`_shared`) runs once, gradients
        included; nested scopes reuse the outer one. Leaving it drops the features (and their graph)."""
        if self.__dict__.get("_feature_scope") is not None:
            yield
            return
        self.__dict__["_feature_scope"] = {}
        try:
            yield
        finally:
            self.__dict__["_feature_scope"] = None

    def _shared(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        scope = self.__dict__.get("_feature_scope")
        if scope is None:
            return compute()
        if key not in scope:
            scope[key] = compute()
        return scope[key]


class PromptBank(nn.Module):
    """Frozen prompt pieces of ``names`` around ``n_ctx`` context slots (see the module docstring).

    ``phrase``: the words in the context slots when the prompts are tokenised (the embeddings of its first
    ``n_ctx`` tokens are :attr:`init_ctx`, the natural initial context; later tokens stay frozen in the prompt);
    ``None`` uses ``n_ctx`` placeholder tokens. ``end``: the text after each name ("." or "").
    """

    def __init__(self, text_path, tokenizer, names: Sequence[str], n_ctx: int, phrase: str | None = None,
                 chunk_size: int = 256, end: str = ".") -> None:
        super().__init__()
        object.__setattr__(self, "text_path", text_path)  # frozen, never a submodule
        if not names:
            raise ClipoodError("a prompt bank needs at least one label name")
        phrase = " ".join(phrase.split()) if phrase else " ".join(["X"] * n_ctx)
        with torch.no_grad():
            tokens = tokenizer([f"{phrase} {n}{end}" for n in names]).to(text_path.token_embedding.weight.device)
            ends = text_path.end_positions(tokens)
            if text_path.pool_type in ("argmax", "eos") and text_path.attn_mask is not None:
                tokens = tokens[:, : int(ends.max()) + 1]  # causal and end-pooled: later positions change nothing
            emb = text_path.embed(tokens).float()
        if int(ends.min()) < n_ctx + 1:
            raise ClipoodError(f"a prompt is shorter than its {n_ctx} context tokens; check the context phrase")
        if int(ends.max()) >= tokens.shape[1] and text_path.pool_type in ("argmax", "eos"):
            raise ClipoodError("a prompt does not fit the text encoder's context length; shorten the context")
        self.n_ctx = int(n_ctx)
        self.chunk_size = int(chunk_size)
        self.register_buffer("prefix", emb[:, :1], persistent=False)
        self.register_buffer("suffix", emb[:, 1 + n_ctx:], persistent=False)
        self.register_buffer("ends", ends, persistent=False)
        self.register_buffer("init_ctx", emb[0, 1:1 + n_ctx].clone(), persistent=False)

    @property
    def num_rows(self) -> int:
        return self.prefix.shape[0]

    def _encode(self, ctx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        tp = self.text_path
        dev = tp.token_embedding.weight.device
        x = torch.cat([self.prefix[rows].to(dev), ctx.to(dev), self.suffix[rows].to(dev)], dim=1)
        return tp.encode_embeddings(x, self.ends[rows].to(dev)).float()

    def encode(self, ctx: torch.Tensor) -> torch.Tensor:
        """Unit text features R×D for one shared context (n×W) or one context per row (R×n×W)."""
        r = self.num_rows
        flat = ctx[None].expand(r, -1, -1) if ctx.ndim == 2 else ctx
        return self._chunks(flat, torch.arange(r, device=self.prefix.device))

    def encode_per_image(self, ctx: torch.Tensor) -> torch.Tensor:
        """Unit text features B×R×D for one context per image (B×n×W) shared by the R rows (CoCoOp-style):
        the B·R sequences are batched together and encoded in chunks."""
        b, r, n = ctx.shape[0], self.num_rows, self.n_ctx
        flat = ctx[:, None].expand(b, r, n, ctx.shape[-1]).reshape(b * r, n, ctx.shape[-1])
        rows = torch.arange(r, device=self.prefix.device).repeat(b)
        return self._chunks(flat, rows).reshape(b, r, -1)

    def _chunks(self, flat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # checkpointing bounds memory by one chunk; when everything fits in one chunk it would only recompute
        grad = torch.is_grad_enabled() and flat.requires_grad and flat.shape[0] > self.chunk_size
        parts = []
        for s in range(0, flat.shape[0], self.chunk_size):
            e = min(s + self.chunk_size, flat.shape[0])
            if grad:
                parts.append(checkpoint(self._encode, flat[s:e], rows[s:e], use_reentrant=False))
            else:
                parts.append(self._encode(flat[s:e], rows[s:e]))
        return F.normalize(torch.cat(parts).to(self.prefix.device), dim=-1, eps=_EPS)
