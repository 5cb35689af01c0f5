"""CoOp: learnable prompt context through the frozen text encoder (Zhou et al., IJCV 2022).

Each ID label i gets the prompt ``[SOS] ctx_1 … ctx_n <name_i> . [EOS]``: the n context vectors (token
embeddings, width W) are learned, the start token, the name's tokens, the full stop and the end token are the
frozen token embeddings of the string ``"<ctx_init> <name_i>."``. The text features are

    t_i = L2(TextEncoder([e_SOS, ctx, e(name_i .), e_EOS]))

and the logits cos(v, t_i) for the N ID rows; the M negative rows stay the frozen, precomputed base features
(``context.text_features[N:]``), so thousands of mined negatives cost nothing. ``base_cos`` = cos(c_i, t_i)
for ID rows (1 for the frozen negatives): the KR term of KR-NFT applies unchanged (as in KgCoOp).

Context: shared (n×W, the paper's default) or class-specific (N×n×W). With ``ctx_init`` (default
"a photo of a") the context starts at that phrase's token embeddings, so a fresh adapter reproduces the
zero-shot features of "a photo of a <name>."; with ``ctx_init=""`` it starts at N(0, 0.02²) with ``n_ctx``
vectors. Labels are encoded in chunks of ``chunk_size``; while training, each chunk runs under activation
checkpointing, so memory grows with the chunk, not with N (1,000 classes fit). Gradients reach only the
context: the text path is frozen and outside the module tree (never saved).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipood.errors import ClipoodError

from .context import AdapterContext
from .contract import Adapter, AdapterConfig, AdapterOutput, check_bool, check_int, full_precision
from .registry import register_adapter

_EPS = 1e-8


@dataclass
class CoOpConfig(AdapterConfig):
    ctx_init: str = field(default="a photo of a", metadata={
        "help": "phrase whose token embeddings initialise the context (its token count sets n_ctx); '' = random"})
    n_ctx: int = field(default=4, metadata={
        "help": "number of context vectors when ctx_init is '' (random N(0, 0.02) init; CoOp: 16)"})
    class_specific: bool = field(default=False, metadata={
        "help": "one context per ID class (N×n×W, CoOp's CSC) instead of one shared context (n×W)"})
    chunk_size: int = field(default=256, metadata={
        "help": "labels encoded per text-encoder call (activation checkpointing per chunk while training)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.ctx_init, str) or "{}" in self.ctx_init:
            raise ClipoodError(f"ctx_init must be a plain phrase such as 'a photo of a', got {self.ctx_init!r}")
        check_int("n_ctx", self.n_ctx, minimum=1)
        check_bool("class_specific", self.class_specific)
        check_int("chunk_size", self.chunk_size, minimum=1)


class CoOp(Adapter):
    """``CoOp(context, ctx_init="a photo of a", class_specific=False)``; ``context`` needs names and a text path
    (``AdapterContext.from_backbone``). Parameter: ``ctx`` (n×W shared, N×n×W class-specific)."""

    config_cls = CoOpConfig
    uses_text_encoder = True

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        ctx = self.context
        ctx.require_text_path(self.name or "coop")
        tp = ctx.text_path
        if any(p.requires_grad for m in (tp.token_embedding, tp.transformer, tp.ln_final) for p in m.parameters()):
            raise ClipoodError("coop needs a frozen text encoder (load_clip returns one); gradients must reach "
                               "only the context")
        cfg = self.config
        width = tp.width
        with torch.no_grad():
            prompts, n_ctx, init = self._prompts(ctx, cfg)
            tokens = ctx.tokenizer(prompts).to(tp.token_embedding.weight.device)
            ends = tp.end_positions(tokens)
            if tp.pool_type in ("argmax", "eos") and tp.attn_mask is not None:
                tokens = tokens[:, : int(ends.max()) + 1]  # causal, end-pooled: later positions change nothing
            emb = tp.embed(tokens).float()
        if int(ends.min()) < n_ctx + 1:
            raise ClipoodError("coop: a prompt is shorter than its context; check ctx_init and the label names")
        self.n_ctx = n_ctx
        self.register_buffer("_prefix", emb[:, :1], persistent=False)            # N×1×W start token
        self.register_buffer("_suffix", emb[:, 1 + n_ctx:], persistent=False)    # N×L'×W name, '.', end, pad
        self.register_buffer("_ends", ends, persistent=False)
        if init is None:
            init = 0.02 * torch.randn(n_ctx, width)  # global RNG: seeded like every other adapter's init
        else:
            init = emb[0, 1:1 + n_ctx].clone()
        if cfg.class_specific:
            init = init[None].repeat(self.num_id, 1, 1)
        self.ctx = nn.Parameter(init.float())
        self._eval_cache: tuple[Any, torch.Tensor] | None = None

    @staticmethod
    def _prompts(ctx: AdapterContext, cfg: CoOpConfig) -> tuple[list[str], int, Any]:
        """The prompt strings, the context length and whether the init comes from ``ctx_init``'s tokens."""
        phrase = " ".join(cfg.ctx_init.split())
        if phrase:
            toks = ctx.tokenizer([phrase])
            n_ctx = int(ctx.text_path.end_positions(toks.to(ctx.text_path.token_embedding.weight.device))[0]) - 1
            if n_ctx < 1:
                raise ClipoodError(f"ctx_init {cfg.ctx_init!r} has no tokens")
            return [f"{phrase} {name}." for name in ctx.id_names], n_ctx, True
        placeholder = " ".join(["X"] * cfg.n_ctx)
        return [f"{placeholder} {name}." for name in ctx.id_names], cfg.n_ctx, None

    # ------------------------------------------------------------------------------------ encoding
    def _encode_chunk(self, ctx: torch.Tensor, s: int, e: int) -> torch.Tensor:
        tp = self.context.text_path
        dev = tp.token_embedding.weight.device
        ctx = ctx if ctx.ndim == 3 else ctx[None].expand(e - s, -1, -1)
        x = torch.cat([self._prefix[s:e].to(dev), ctx.to(dev), self._suffix[s:e].to(dev)], dim=1)
        return tp.encode_embeddings(x, self._ends[s:e].to(dev)).float()

    def id_text_features(self) -> torch.Tensor:
        """The N learned ID text features t_i (unit rows, N×D), encoded in chunks."""
        key = (self.ctx._version, self.ctx.data_ptr(), self.ctx.device)
        grad = torch.is_grad_enabled() and self.ctx.requires_grad
        if not grad and self._eval_cache is not None and self._eval_cache[0] == key:
            return self._eval_cache[1]
        step = self.config.chunk_size
        parts = []
        for s in range(0, self.num_id, step):
            e = min(s + step, self.num_id)
            c = self.ctx[s:e] if self.config.class_specific else self.ctx
            if grad:
                parts.append(checkpoint(self._encode_chunk, c, s, e, use_reentrant=False))
            else:
                parts.append(self._encode_chunk(c, s, e))
        feats = F.normalize(torch.cat(parts).to(self.base_text_features.device), dim=-1, eps=_EPS)
        if not grad:
            self._eval_cache = (key, feats)
        return feats

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """K×D: the learned ID features, then the frozen negative rows (``image_features`` is ignored)."""
        return torch.cat([self.id_text_features(), self.base_text_features[self.num_id:]], dim=0)

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        v = self.image_features(batch)
        tuned = self.id_text_features()
        c = self.base_text_features
        with full_precision(v.device):
            logits = torch.cat([v @ tuned.t(), v @ c[self.num_id:].t()], dim=1)
            base_cos = torch.cat([(c[: self.num_id] * tuned).sum(-1), c.new_ones(self.num_neg)])
        return AdapterOutput(logits=logits, base_cos=base_cos)

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
