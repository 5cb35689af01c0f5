"""One import for everything an adapter module needs (the contract, the context, the registry, checkpoints).

The pieces live along their seams: :mod:`adapters.contract` (``Adapter``, ``AdapterConfig``, ``AdapterOutput``,
option checks), :mod:`adapters.context` (``AdapterContext``), :mod:`adapters.registry` (registration and
discovery) and :mod:`adapters.checkpoint` (``save_adapter`` / ``load_adapter``). Method modules may import from
here or from those modules directly.
"""
from __future__ import annotations

from .checkpoint import BASE_FILE, CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, load_adapter, save_adapter
from .context import AdapterContext, as_context
from .contract import (
    BATCH_KEYS, Adapter, AdapterConfig, AdapterOutput, check_bool, check_choice, check_float, check_int,
    full_precision,
)
from .registry import (
    _REGISTRY, ENTRY_POINT_GROUP, AdapterSpec, build_adapter, discover_adapters, get_adapter_class,
    get_adapter_spec, list_adapters, register_adapter,
)

__all__ = [
    "Adapter", "AdapterConfig", "AdapterContext", "AdapterOutput", "AdapterSpec", "BASE_FILE", "BATCH_KEYS",
    "CONFIG_FILE", "ENTRY_POINT_GROUP", "FORMAT_VERSION", "WEIGHTS_FILE", "as_context", "build_adapter",
    "check_bool", "check_choice", "check_float", "check_int", "discover_adapters", "full_precision",
    "get_adapter_class", "get_adapter_spec", "list_adapters", "load_adapter", "register_adapter", "save_adapter",
]
