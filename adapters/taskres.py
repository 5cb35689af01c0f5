"""TaskRes: a learnable residual on the frozen text classifier, c'_i = L2(b_i + μ·x_i) (Yu et al., CVPR 2023).

x is zero-initialised. The base b follows the released
``TaskResLearner`` (``base="raw_mean"``): the **un-normalised** mean over the prompt templates of the text
encoder's outputs, computed through the context's text path from its names and templates, when the context's
rows are that encoder's zero-shot ensemble of those names (cosine ≥ 0.999 for every row); other rows — a
context built from bare features (``TaskRes(text_features, num_id)``), a prompt adapter's features under
``stacked`` — are the base as given. A checkpoint keeps b (``taskres_base.safetensors``). ``base="unit"`` adds the
residual to the unit base rows C instead (their norm is 1, the raw mean's ‖b‖ is the encoder's scale, so at
the same learning rate the residual moves ‖b‖ times faster there). With one template L2(b) is the unit row, so
a fresh adapter is the zero-shot classifier; with several, L2(b) is the raw mean's direction (the release's),
not the ensemble of unit features. By default only the N ID rows get a
residual (``residual_rows="id"``, N×D parameters, as in the original method, which has no negatives); ``"all"``
gives every row one (K×D).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from clipood.errors import ClipoodError

from .context import AdapterContext
from .contract import Adapter, AdapterConfig, AdapterOutput, check_choice, check_float
from .prompting import encode_prompts
from .registry import register_adapter

_EPS = 1e-8
BASE_FILE = "taskres_base.safetensors"


@dataclass
class TaskResConfig(AdapterConfig):
    mu: float = field(default=0.5, metadata={"help": "residual scale μ in c' = L2(b + μ·x) (TaskRes: 0.5)"})
    residual_rows: str = field(default="id", metadata={
        "help": "which rows get a residual: 'id' (N×D parameters) or 'all' (K×D, negatives too)"})
    base: str = field(default="raw_mean", metadata={
        "help": "b: 'raw_mean' (un-normalised template mean of the encoder outputs, the release) | 'unit' (C)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("mu", self.mu)
        check_choice("residual_rows", self.residual_rows, ("id", "all"))
        check_choice("base", self.base, ("raw_mean", "unit"))


def raw_template_mean(context: AdapterContext, rows: int) -> torch.Tensor:
    """The first ``rows`` base rows as the released TaskRes builds them: the mean over the row's templates of
    the raw (not normalised) text features. Rows that are not the encoder's zero-shot ensemble of the
    context's names (bare features, stacked features) are returned as they are."""
    given = context.text_features[:rows].float()
    if context.text_path is None or context.tokenizer is None or context.id_names is None:
        return given
    n = context.num_id
    names, temps = list(context.id_names), list(context.id_templates)
    prompts = [t.replace("{}", c) for c in names for t in temps]
    per = encode_prompts(context.text_path, context.tokenizer, prompts).view(n, len(temps), -1)
    raw, ens = [per.mean(1)], [F.normalize(F.normalize(per, dim=-1).mean(1), dim=-1)]
    if rows > n:
        neg = encode_prompts(context.text_path, context.tokenizer, context.neg_prompts())
        raw.append(neg)
        ens.append(F.normalize(neg, dim=-1))
    raw_t, ens_t = torch.cat(raw)[:rows].cpu(), torch.cat(ens)[:rows].cpu()
    if bool(((ens_t * F.normalize(given.cpu(), dim=-1)).sum(-1) < 0.999).any()):
        return given
    return raw_t.to(context.text_features.device)


class TaskRes(Adapter):
    """``TaskRes(text_features, num_id, mu=0.5, residual_rows="id")``; logits are cos(v, c'_i)."""

    config_cls = TaskResConfig
    identity_at_init = True

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        rows = self.num_id if self.config.residual_rows == "id" else self.num_labels
        base = raw_template_mean(self.context, rows) if self.config.base == "raw_mean" \
            else self.base_text_features[:rows]
        self.register_buffer("residual_base", base.to(self.base_text_features.dtype), persistent=False)
        self.residual = nn.Parameter(torch.zeros(rows, self.dim, dtype=self.base_text_features.dtype))

    def _tuned_rows(self) -> torch.Tensor:
        """Tuned features of the rows that carry a residual (the first ``residual.shape[0]`` rows)."""
        return F.normalize(self.residual_base + self.config.mu * self.residual, dim=-1, eps=_EPS)

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

    def save_parts(self, directory: Path) -> None:
        """Called by ``save_adapter``: the base b, so the checkpoint reloads without the text encoder."""
        from clipood.io import save_safetensors

        save_safetensors({"base": self.residual_base.detach().cpu().contiguous()}, Path(directory) / BASE_FILE)

    def load_parts(self, directory: Path) -> None:
        """Called by ``load_adapter``: the saved base b (checkpoints of older versions have none)."""
        from clipood.io import load_safetensors

        path = Path(directory) / BASE_FILE
        if path.is_file():
            base = load_safetensors(path)["base"]
            if tuple(base.shape) != tuple(self.residual_base.shape):
                raise ClipoodError(f"{path}: base of shape {tuple(base.shape)}, the adapter has "
                                   f"{tuple(self.residual_base.shape)} residual rows; the files come from different runs")
            self.residual_base.copy_(base.to(self.residual_base))

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """K×D tuned features (not image-conditional; ``image_features`` is ignored)."""
        return torch.cat([self._tuned_rows(), self.base_text_features[self.residual.shape[0]:]], dim=0)


register_adapter("taskres", TaskResConfig, TaskRes)
