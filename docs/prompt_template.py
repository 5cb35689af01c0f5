"""TEMPLATE for a new clipood prompt method: copy this file to ``adapters/<your_name>.py`` (or into your own package
with a ``clipood.adapters`` entry point) and rename ``my_prompt`` / ``MyPrompt`` / ``MyPromptConfig`` /
``MyPromptTask``.

The example learns one context shared by the N ID prompts ``[SOS] ctx_1 … ctx_n <name_i> . [EOS]`` (CoOp's
prompts; the M negative rows stay the frozen base features) and trains with the configured loss terms plus
one term of its own that spreads the ID prompts apart:

    t_i = L2(TextEncoder([e_SOS, ctx, e(name_i .), e_EOS])),    logits = [cos(v, t_i)]_i ‖ [cos(v, c_m)]_m
    L_spread = mean_{i≠j} cos(t_i, t_j)                          (weight ``spread_weight``)

Everything it uses is a declared hook (docs/adding-an-adapter.md): ``PromptLearner`` (context options and
checks, ``prompt_bank``, ``initial_context``, ``cached_features``, the relabelling rule), ``task_cls`` and
``TrainingTask.extra_losses`` / ``prepare``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from adapters.context import AdapterContext
from adapters.contract import AdapterConfig, AdapterOutput, check_float, full_precision
from adapters.prompt_learner import LabelPromptConfig, PromptLearner
from adapters.registry import register_adapter
from clipood.training.task import LossInputs, PrepareInputs, TrainingTask


@dataclass
class MyPromptConfig(LabelPromptConfig):
    """ctx_init, n_ctx, ctx_count, chunk_size, full_stop and cls_columns come from LabelPromptConfig (checked
    there); add your own options as typed fields with one line of help."""

    spread_weight: float = field(default=0.1, metadata={
        "help": "weight of L_spread, the mean cosine between different ID prompts (0 = off)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("spread_weight", self.spread_weight, minimum=0)


class MyPrompt(PromptLearner):
    """``MyPrompt(context, ctx_init="a photo of a", spread_weight=0.1)``; parameter ``ctx`` (n×W)."""

    config_cls = MyPromptConfig

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)  # checks the context, sets self.n_ctx
        self.id_bank = self.prompt_bank(self.context.id_names)   # frozen prompt pieces around the n slots
        self.ctx = nn.Parameter(self.initial_context(self.id_bank))  # the phrase's embeddings (or N(0, 0.02²))

    def id_text_features(self) -> torch.Tensor:
        """N×D learned ID features: encoded once per training step, cached between optimiser steps."""
        return self.cached_features("id", [self.ctx],
                                    lambda: self.id_bank.encode(self.ctx).to(self.base_text_features.device))

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([self.id_text_features(), self.base_text_features[self.num_id:]])

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        v = self.image_features(batch)
        tuned, c = self.tuned_text_features(), self.base_text_features
        with full_precision(v.device):
            return AdapterOutput(logits=v @ tuned.T, base_cos=(c * tuned).sum(-1))

    # Relabelling: a shared context re-encodes any new names (PromptLearner's rule). Weights that belong to the
    # training classes: return what they are from id_tied_weights() and they move only to the same ID labels.


class MyPromptTask(TrainingTask):
    """The configured terms (L_cls, L_ood, L_kr at their weights) plus ``spread_weight`` · L_spread."""

    def prepare(self, inputs: PrepareInputs) -> None:
        """Run once before training with the backbone, device, seed and mini-world folder: encode extra
        training data here (LAPT encodes images of its negative labels). This method needs none."""

    def extra_losses(self, o: LossInputs) -> dict[str, tuple[float, torch.Tensor]]:
        w = float(self.adapter.config.spread_weight)
        if w <= 0:
            return {}
        t = self.adapter.id_text_features()  # the step's encoding (text_feature_scope): no second pass
        n = t.shape[0]
        cos = t @ t.T
        return {"spread": (w, (cos.sum() - cos.diagonal().sum()) / max(1, n * (n - 1)))}


MyPrompt.task_cls = MyPromptTask  # the recipe trains MyPrompt with this task
register_adapter("my_prompt", MyPromptConfig, MyPrompt)
