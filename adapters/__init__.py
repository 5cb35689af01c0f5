"""clipood adapters: the trainable part of every method, behind one contract (see ``adapters.base``).

Importing this package registers the built-in methods explicitly (each method module calls
``register_adapter`` once; re-imports are safe). Note: AdapterHub also ships a package importable as
``adapters``; use ``clipood._compat.import_adapters()`` for a clear error when that one shadows this.
"""
from __future__ import annotations

from .base import (
    Adapter,
    AdapterConfig,
    AdapterOutput,
    AdapterSpec,
    build_adapter,
    get_adapter_class,
    get_adapter_spec,
    list_adapters,
    load_adapter,
    register_adapter,
    save_adapter,
)
from .feature_tuning import FT, NFT, CoFT, CoFTConfig, FeatureTuning, FeatureTuningConfig, FTConfig, NFTConfig
from .taskres import TaskRes, TaskResConfig

__clipood_adapters__ = True

__all__ = [
    "Adapter", "AdapterConfig", "AdapterOutput", "AdapterSpec", "build_adapter", "get_adapter_class",
    "get_adapter_spec", "list_adapters", "load_adapter", "register_adapter", "save_adapter",
    "FeatureTuning", "FeatureTuningConfig", "FT", "FTConfig", "CoFT", "CoFTConfig", "NFT", "NFTConfig",
    "TaskRes", "TaskResConfig",
]
