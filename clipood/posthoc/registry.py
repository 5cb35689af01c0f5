"""The post-hoc score registry: ``get_score(name)`` and ``list_scores()``, each with what it needs.

A :class:`ScoreInfo` is callable (``get_score("gen")(logits)``) and says which inputs the function takes, its
keyword parameters with their defaults (OpenOOD v1.5's), and whether it needs fitted statistics (and which fit
makes them), pre-projection features, a linear head, pixels, or an extra label file. Names follow OpenOOD's
postprocessors; OpenOOD's own short names are aliases (``mls``, ``ebo``, ``ash``, ``mahalanobis``).

This registry is separate from :data:`clipood.scores.SCORES` (the evaluation's scores, computed from logits by
``compute_score``); unifying the two is left to the evaluation wiring.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from clipood.errors import unknown

from . import activation, distance, logit_scores
from .odin import odin as odin_score
from .fit import GaussianFit, KNNFit, MeanFit, ReActFit, ViMFit
from .stats import Statistics

__all__ = ["ScoreInfo", "get_score", "list_scores"]


@dataclass(frozen=True)
class ScoreInfo:
    """One post-hoc score: the function and what it needs."""

    name: str
    fn: Callable[..., torch.Tensor]
    inputs: tuple[str, ...]
    reference: str
    fit: type | None = None
    pre_projection: bool = False
    linear_head: bool = False
    pixels: bool = False
    label_file: bool = False
    aliases: tuple[str, ...] = ()
    _stats_kwargs: Callable[[Statistics], dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def params(self) -> dict[str, Any]:
        """Keyword parameters and their defaults (required keywords, filled from statistics, are left out)."""
        sig = inspect.signature(self.fn)
        return {p.name: p.default for p in sig.parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}

    @property
    def fit_params(self) -> dict[str, Any]:
        """The fit's parameters with defaults (e.g. ReAct's percentile 90, ViM's dim 256); {} without a fit."""
        if self.fit is None:
            return {}
        sig = inspect.signature(self.fit.__init__)
        return {p.name: p.default for p in sig.parameters.values()
                if p.name not in ("self", "features_key") and p.default is not p.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    @property
    def needs_fit(self) -> bool:
        return self.fit is not None

    def stats_kwargs(self, stats: Statistics) -> dict[str, Any]:
        """The keyword arguments that pass fitted ``stats`` to :attr:`fn` (empty for scores without a fit)."""
        return self._stats_kwargs(stats) if self._stats_kwargs is not None else {}

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.fn(*args, **kwargs)


_SCORES: tuple[ScoreInfo, ...] = (
    ScoreInfo("msp", logit_scores.msp, ("logits",), "base_postprocessor.py"),
    ScoreInfo("max_logit", logit_scores.max_logit, ("logits",), "maxlogit_postprocessor.py", aliases=("mls",)),
    ScoreInfo("energy", logit_scores.energy, ("logits",), "ebo_postprocessor.py", aliases=("ebo",)),
    ScoreInfo("gen", logit_scores.gen, ("logits",), "gen_postprocessor.py"),
    ScoreInfo("eoe", logit_scores.eoe, ("logits", "num_id"), "Aboriginer/EOE utils/detection_util.py",
              label_file=True),
    ScoreInfo("odin", odin_score, ("pixels", "encoder", "head"), "odin_postprocessor.py", pixels=True),
    ScoreInfo("gradnorm", activation.gradnorm, ("features", "head"), "gradnorm_postprocessor.py",
              pre_projection=True, linear_head=True),
    ScoreInfo("react", activation.react, ("features", "head"), "react_postprocessor.py", fit=ReActFit,
              pre_projection=True, _stats_kwargs=lambda s: {"threshold": float(s.threshold)}),
    ScoreInfo("ash_p", activation.ash_p, ("features", "head"), "ash_postprocessor.py (ash_p)",
              pre_projection=True),
    ScoreInfo("ash_b", activation.ash_b, ("features", "head"), "ash_postprocessor.py (ash_b)",
              pre_projection=True, aliases=("ash",)),
    ScoreInfo("ash_s", activation.ash_s, ("features", "head"), "ash_postprocessor.py (ash_s)",
              pre_projection=True),
    ScoreInfo("dice", activation.dice, ("features", "head"), "dice_postprocessor.py", fit=MeanFit,
              pre_projection=True, linear_head=True, _stats_kwargs=lambda s: {"mean_activation": s.mean}),
    ScoreInfo("vim", distance.vim, ("features", "head", "stats"), "vim_postprocessor.py", fit=ViMFit,
              pre_projection=True, linear_head=True, _stats_kwargs=lambda s: {"stats": s}),
    ScoreInfo("knn", distance.knn, ("features", "stats"), "knn_postprocessor.py", fit=KNNFit,
              _stats_kwargs=lambda s: {"stats": s}),
    ScoreInfo("mds", distance.mahalanobis, ("features", "stats"), "mds_postprocessor.py", fit=GaussianFit,
              aliases=("mahalanobis",), _stats_kwargs=lambda s: {"stats": s}),
    ScoreInfo("rmds", distance.rmds, ("features", "stats"), "rmds_postprocessor.py", fit=GaussianFit,
              _stats_kwargs=lambda s: {"stats": s}),
)
_BY_NAME: dict[str, ScoreInfo] = {a: s for s in _SCORES for a in (s.name, *s.aliases)}


def list_scores() -> list[ScoreInfo]:
    """Every post-hoc score, in registry order (logit scores first, then feature and fitted ones)."""
    return list(_SCORES)


def get_score(name: str) -> ScoreInfo:
    """The score registered under ``name`` or one of its aliases."""
    if not isinstance(name, str) or name not in _BY_NAME:
        raise unknown("post-hoc score", str(name), _BY_NAME)
    return _BY_NAME[name]
