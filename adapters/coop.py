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

from .context import AdapterContext
from .contract import AdapterConfig, AdapterOutput, check_bool, full_precision
from .prompt_learner import LabelPromptConfig, PromptLearner
from .registry import register_adapter


@dataclass
class CoOpConfig(LabelPromptConfig):
    class_specific: bool = field(default=False, metadata={
        "help": "one context per ID class (N×n×W, CoOp's CSC) instead of one shared context (n×W)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("class_specific", self.class_specific)


class CoOp(PromptLearner):
    """``CoOp(context, ctx_init="a photo of a", class_specific=False)``; ``context`` needs names and a text path
    (``AdapterContext.from_backbone``). Parameter: ``ctx`` (n×W shared, N×n×W class-specific)."""

    config_cls = CoOpConfig

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        self.id_bank = self.prompt_bank(self.context.id_names)
        self.ctx = nn.Parameter(self.initial_context(self.id_bank, self.num_id if self.config.class_specific else None))

    # ------------------------------------------------------------------------------------ encoding
    def id_text_features(self) -> torch.Tensor:
        """The N learned ID text features t_i (unit rows, N×D), encoded in chunks (once per training step)."""
        return self.cached_features("id", [self.ctx],
                                    lambda: self.id_bank.encode(self.ctx).to(self.base_text_features.device))

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

    def id_tied_weights(self) -> str | None:
        """A class-specific context belongs to the training classes; a shared one re-encodes any names."""
        return "one context per class (class_specific=True)" if self.config.class_specific else None


register_adapter("coop", CoOpConfig, CoOp)
