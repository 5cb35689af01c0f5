"""TEMPLATE for a new clipood adapter: copy this file to ``adapters/<your_name>.py`` (or into your own package
with a ``clipood.adapters`` entry point) and rename ``my_adapter`` / ``MyAdapter`` / ``MyAdapterConfig``.

The example is a text-side linear residual shared by all rows (in the spirit of CLIP-Adapter):

    c'_i = L2(c_i + s · W c_i),   W ∈ R^{D×D} zero-initialised,

so a fresh adapter returns the zero-shot cosines. See docs/adding-an-adapter.md for the contract.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from adapters.base import (
    Adapter, AdapterConfig, AdapterContext, AdapterOutput, check_float, full_precision, register_adapter,
)


@dataclass
class MyAdapterConfig(AdapterConfig):
    """Every option: a typed field with a default and one line of help (shown by the CLI and --help)."""

    scale: float = field(default=1.0, metadata={"help": "residual scale s in c' = L2(c + s·W c)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("scale", self.scale)  # bad values fail at build time with the option's name


class MyAdapter(Adapter):
    """``MyAdapter(context, scale=1.0)``; logits are cos(v, c'_i) over the K labels (ID columns first)."""

    config_cls = MyAdapterConfig
    identity_at_init = True          # a fresh adapter returns exactly v @ C.T (the contract tests check it)
    # requires = frozenset({"image_features", "local_features"})  # ask for patch features if you need them
    # uses_text_encoder = True       # set when you run context.text_path (prompt learners)

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)   # sets self.config, self.context, buffers
        self.weight = nn.Parameter(torch.zeros(self.dim, self.dim))  # trainable: saved in checkpoints

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """K×D c'_i (optional to implement; tests compare it with the forward when present)."""
        c = self.base_text_features                                  # K×D, unit rows, frozen buffer
        return F.normalize(c + self.config.scale * c @ self.weight.T, dim=-1)

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        v = self.image_features(batch)                               # B×D unit rows, validated
        with full_precision(v.device):                               # keep adapter arithmetic in fp32
            tuned = self.tuned_text_features()
            return AdapterOutput(logits=v @ tuned.T,                 # B×K unscaled cosines
                                 base_cos=(self.base_text_features * tuned).sum(-1))  # K: for the KR loss

    # Relabelling: the default for_labels() builds the same class on the new context and copies the weights,
    # which is right for a transform shared by all rows. Override _relabel() and raise
    # self.label_tied_error(context, "...") when your weights belong to specific training labels.


register_adapter("my_adapter", MyAdapterConfig, MyAdapter)
