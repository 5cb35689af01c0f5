"""TaskRes: a learnable residual on the frozen text classifier, c'_i = L2(c_i + μ·x_i) (Yu et al., CVPR 2023).

x is zero-initialised (so the adapter starts at the zero-shot classifier). By default only the N ID rows get
a residual (``residual_rows="id"``, N×D parameters, as in the original method, which has no negatives);
``"all"`` gives every row one (K×D).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .context import AdapterContext
from .contract import Adapter, AdapterConfig, AdapterOutput, check_choice, check_float
from .registry import register_adapter

_EPS = 1e-8


@dataclass
class TaskResConfig(AdapterConfig):
    mu: float = field(default=0.5, metadata={"help": "residual scale μ in c' = L2(c + μ·x) (TaskRes: 0.5)"})
    residual_rows: str = field(default="id", metadata={
        "help": "which rows get a residual: 'id' (N×D parameters) or 'all' (K×D, negatives too)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("mu", self.mu)
        check_choice("residual_rows", self.residual_rows, ("id", "all"))


class TaskRes(Adapter):
    """``TaskRes(text_features, num_id, mu=0.5, residual_rows="id")``; logits are cos(v, c'_i)."""

    config_cls = TaskResConfig
    identity_at_init = True

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        rows = self.num_id if self.config.residual_rows == "id" else self.num_labels
        self.residual = nn.Parameter(torch.zeros(rows, self.dim, dtype=self.base_text_features.dtype))

    def _tuned_rows(self) -> torch.Tensor:
        """Tuned features of the rows that carry a residual (the first ``residual.shape[0]`` rows)."""
        c = self.base_text_features[: self.residual.shape[0]]
        return F.normalize(c + self.config.mu * self.residual, dim=-1, eps=_EPS)

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        v = self.image_features(batch)
        c = self.base_text_features
        tuned = self._tuned_rows()
        r = tuned.shape[0]
        base_cos = (c[:r] * tuned).sum(-1)
        logits = v @ tuned.t()
        if r < self.num_labels:  # untouched negative rows: plain cosines, cos(c, c) = 1
            logits = torch.cat([logits, v @ c[r:].t()], dim=1)
            base_cos = torch.cat([base_cos, base_cos.new_ones(self.num_labels - r)])
        return AdapterOutput(logits=logits, base_cos=base_cos)

    def _relabel(self, context: AdapterContext) -> "TaskRes":
        """Residuals belong to rows: they move only when the rows that carry them are the same labels."""
        rows = self.config.residual_rows
        same = self.context.same_id_labels(context) if rows == "id" else self.context.same_labels(context)
        if not same:
            raise self.label_tied_error(context, f"per-row residuals (residual_rows='{self.config.residual_rows}')")
        return super()._relabel(context)

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """K×D tuned features (not image-conditional; ``image_features`` is ignored)."""
        return torch.cat([self._tuned_rows(), self.base_text_features[self.residual.shape[0]:]], dim=0)


register_adapter("taskres", TaskResConfig, TaskRes)
