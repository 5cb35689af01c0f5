"""Small typed records the recipe builds once from the composed run config and hands to the core, so a core
function's signature shows what it may read (the run config itself stops at the recipe).

:class:`DataSettings` is where a run's images and words come from: the benchmark, its data root and dataset
specs, the suites, the class subset, the mini world, the word corpus, the cache folder and (for a training
recipe) the training pool. The core's data functions (`clipood.evaluation.benchmark.setup_benchmark`,
`clipood.datasets.checks.check_data`, `clipood.crops.train_data.build_crop_data`, ...) take it instead of the
config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional

from .settings import MiniSettings, typed

__all__ = ["DataSettings"]


@dataclass(frozen=True)
class DataSettings:
    """The data-location fields of a run config (see :class:`clipood.config.settings.RunSettings` for each
    one's meaning), read only; ``corpus`` is ``negatives.corpus``, ``cache_dir`` the resolved cache folder
    (:func:`clipood.config.checks.cache_root`), ``training`` whether the run trains (its ``train_data`` is then
    checked with the evaluation data)."""

    benchmark: str = "mini"
    data_root: Optional[str] = None
    id_data: Mapping[str, Any] = field(default_factory=dict)
    ood_data: Mapping[str, Any] = field(default_factory=dict)
    new_class_suites: List[str] = field(default_factory=list)
    new_style_suites: List[str] = field(default_factory=list)
    classes: Optional[List[str]] = None
    mini: MiniSettings = field(default_factory=MiniSettings)
    corpus: Optional[str] = None
    cache_dir: Optional[Path] = None
    training: bool = False
    train_data: Mapping[str, Any] = field(default_factory=dict)
    train_classes: str = "exact"

    @classmethod
    def from_config(cls, run: Mapping[str, Any]) -> "DataSettings":
        """The record of a composed run config (a partial one too: missing keys take the defaults). A run
        trains when its config has loss weights (``losses``)."""
        from .checks import cache_root

        return cls(benchmark=run.get("benchmark", "mini"), data_root=run.get("data_root"),
                   id_data=run.get("id_data") or {}, ood_data=run.get("ood_data") or {},
                   new_class_suites=list(run.get("new_class_suites") or []),
                   new_style_suites=list(run.get("new_style_suites") or []), classes=run.get("classes"),
                   mini=typed(MiniSettings, run.get("mini") or {}),
                   corpus=(run.get("negatives") or {}).get("corpus"), cache_dir=cache_root(run),
                   training="losses" in run, train_data=run.get("train_data") or {},
                   train_classes=run.get("train_classes") or "exact")
