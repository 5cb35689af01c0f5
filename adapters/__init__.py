"""clipood adapters: the trainable part of every method, behind one contract (see ``adapters.contract``).

Methods are discovered without a central list: every module of this package is imported by a scan, and
third-party adapters come in through the entry-point group ``clipood.adapters`` (see ``adapters.registry``).
The built-in classes are also exported here by name. Note: AdapterHub also ships a package importable as
``adapters``; use ``clipood_recipes._compat.import_adapters()`` for a clear error when that one shadows this.
"""
from __future__ import annotations

from .base import (
    Adapter,
    AdapterConfig,
    AdapterContext,
    AdapterOutput,
    AdapterSpec,
    build_adapter,
    discover_adapters,
    get_adapter_class,
    get_adapter_spec,
    list_adapters,
    load_adapter,
    register_adapter,
    save_adapter,
)
from .connegpt import ConNegPT, ConNegPTConfig
from .coop import CoOp, CoOpConfig
from .lapt import LAPT, LAPTConfig
from .locoop import LoCoOp, LoCoOpConfig
from .negpt import NegPT, NegPTConfig
from .prompt_learner import LabelPromptConfig, PromptConfig, PromptLearner
from .stacked import Stacked, StackedConfig, stack
from .feature_tuning import FT, NFT, CoFT, CoFTConfig, FeatureTuning, FeatureTuningConfig, FTConfig, NFTConfig
from .taskres import TaskRes, TaskResConfig
from .registry import DISPLAY_NAMES, display_name

__clipood_adapters__ = True


def _register_detector_io() -> None:
    # clipood.Detector (core) saves / reloads a trained adapter through these (the core never imports adapters)
    from clipood.detector import register_adapter_io

    register_adapter_io(save=lambda adapter, directory: save_adapter(adapter, directory, include_base=True),
                        load=lambda directory, backbone=None: load_adapter(directory, backbone=backbone))


_register_detector_io()

__all__ = [
    "Adapter", "AdapterConfig", "AdapterContext", "AdapterOutput", "AdapterSpec", "DISPLAY_NAMES", "build_adapter",
    "display_name",
    "discover_adapters", "get_adapter_class", "get_adapter_spec", "list_adapters", "load_adapter",
    "register_adapter", "save_adapter",
    "CoOp", "CoOpConfig", "FeatureTuning", "FeatureTuningConfig", "FT", "FTConfig", "CoFT", "CoFTConfig", "NFT",
    "NFTConfig", "TaskRes", "TaskResConfig", "LoCoOp", "LoCoOpConfig", "NegPT", "NegPTConfig", "ConNegPT",
    "ConNegPTConfig", "LAPT", "LAPTConfig", "Stacked", "StackedConfig", "stack", "PromptLearner", "PromptConfig",
    "LabelPromptConfig",
]
