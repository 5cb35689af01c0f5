"""The adapter registry and its discovery: no central list of methods.

A method module calls ``register_adapter(name, Config, Class)`` once at import. Discovery imports

1. every module of the ``adapters`` package itself (a scan with :func:`pkgutil.iter_modules`), and
2. every entry point of the group ``clipood.adapters`` (third-party packages, as pytest and timm plugins do):
   ``[project.entry-points."clipood.adapters"] myadapter = "mypkg.myadapter"``. The entry point may name a
   module (importing it registers) or an :class:`Adapter` subclass with ``config_cls`` (registered under the
   entry point's name).

Discovery runs once, lazily, the first time the registry is read (``list_adapters``, ``get_adapter_spec``,
``build_adapter``...); :func:`discover_adapters` with ``refresh=True`` runs it again (after installing a plugin).
A plugin that fails to import is reported with its entry point and the fix, not as a deep traceback.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import pkgutil
import re
from dataclasses import dataclass
from typing import Any

import torch

from clipood.errors import ClipoodError, unknown

from .context import AdapterContext, as_context
from .contract import BATCH_KEYS, Adapter, AdapterConfig

ENTRY_POINT_GROUP = "clipood.adapters"
#: package modules that hold the machinery, not methods (the scan skips nothing else)
_MACHINERY = frozenset({"base", "checkpoint", "context", "contract", "registry"})

log = logging.getLogger("clipood")

__all__ = [
    "AdapterSpec", "DISPLAY_NAMES", "ENTRY_POINT_GROUP", "build_adapter", "discover_adapters", "display_name",
    "get_adapter_class", "get_adapter_spec", "list_adapters", "register_adapter",
]

#: how recipes, the comparison, results tables and the efficiency suite name each registered method: one
#: naming everywhere (a stack is ``<base>+<tuner>``, e.g. ``LoCoOp+KR-NFT``); other names stand as they are
DISPLAY_NAMES = {"nft": "KR-NFT", "ft": "FT", "coft": "CoFT", "taskres": "TaskRes", "coop": "CoOp",
                 "locoop": "LoCoOp", "negpt": "NegPT", "connegpt": "ConNegPT", "lapt": "LAPT", "sct": "SCT",
                 "idlike": "ID-like", "lsn": "LSN", "negprompt": "NegPrompt"}


def display_name(name: str, base: str | None = None) -> str:
    """The table name of adapter ``name`` (``nft`` → ``KR-NFT``), stacked on ``base`` when given."""
    own = DISPLAY_NAMES.get(name, name)
    return f"{DISPLAY_NAMES.get(base, base)}+{own}" if base else own


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    config_cls: type[AdapterConfig]
    adapter_cls: type[Adapter]


_REGISTRY: dict[str, AdapterSpec] = {}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_discovered = False


def _same_definition(a: type, b: type) -> bool:
    # re-importing / reloading a method module re-creates its classes; that is not a name clash
    return a is b or (a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__)


def register_adapter(name: str, config_cls: type[AdapterConfig], adapter_cls: type[Adapter]) -> None:
    """Register ``adapter_cls`` under a lowercase unique ``name`` with its config dataclass.

    A name already taken by a different class raises ClipoodError; re-registering the same definition
    (a module re-import or reload) replaces the entry silently.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ClipoodError(f"adapter name {name!r} must be lowercase letters, digits and '_' (e.g. 'nft')")
    if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, Adapter)):
        raise ClipoodError(f"adapter class for '{name}' must subclass adapters.Adapter, got {adapter_cls!r}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, AdapterConfig)
            and dataclasses.is_dataclass(config_cls)):
        raise ClipoodError(f"config class for '{name}' must be a dataclass subclassing AdapterConfig, got {config_cls!r}")
    old = _REGISTRY.get(name)
    if old is not None and not (_same_definition(old.adapter_cls, adapter_cls)
                                and _same_definition(old.config_cls, config_cls)):
        raise ClipoodError(
            f"adapter name '{name}' is already registered by "
            f"{old.adapter_cls.__module__}.{old.adapter_cls.__qualname__}; choose another name"
        )
    odd = sorted(set(adapter_cls.requires) - set(BATCH_KEYS))
    if odd:
        raise ClipoodError(f"{adapter_cls.__qualname__}.requires names {odd}, which no batch carries; "
                           f"use {', '.join(BATCH_KEYS)}")
    declared = adapter_cls.__dict__.get("name", "")
    if declared and declared != name:
        raise ClipoodError(f"{adapter_cls.__qualname__} declares name '{declared}' but is registered as '{name}'")
    if adapter_cls.__dict__.get("config_cls", config_cls) is not config_cls:
        raise ClipoodError(f"{adapter_cls.__qualname__}.config_cls is not {config_cls.__qualname__}")
    adapter_cls.name = name
    adapter_cls.config_cls = config_cls
    _REGISTRY[name] = AdapterSpec(name, config_cls, adapter_cls)


# ------------------------------------------------------------------------------------------- discovery
def _scan_package() -> None:
    import adapters

    for info in pkgutil.iter_modules(adapters.__path__):
        if info.name.startswith("_") or info.name in _MACHINERY:
            continue
        importlib.import_module(f"adapters.{info.name}")


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_point(ep: Any) -> None:
    try:
        obj = ep.load()
    except Exception as e:  # noqa: BLE001 - a broken plugin must not hide behind a traceback
        raise ClipoodError(
            f"adapter plugin '{ep.name}' (entry point {ep.value!r} in group '{ENTRY_POINT_GROUP}') failed to "
            f"import: {type(e).__name__}: {e}; fix or uninstall the package that provides it"
        ) from None
    if isinstance(obj, type) and issubclass(obj, Adapter):
        if obj.name and obj.name in _REGISTRY and _REGISTRY[obj.name].adapter_cls is obj:
            return  # its module registered it already
        register_adapter(ep.name, obj.config_cls, obj)
    elif not hasattr(obj, "__path__") and not hasattr(obj, "__file__"):
        raise ClipoodError(f"adapter plugin '{ep.name}' ({ep.value!r}) is neither a module nor an Adapter "
                           f"subclass; point the entry point at the module that calls register_adapter")


def discover_adapters(refresh: bool = False) -> list[str]:
    """Import the package's own method modules and the ``clipood.adapters`` entry points; registered names."""
    global _discovered
    if _discovered and not refresh:
        return sorted(_REGISTRY)
    _discovered = True  # set first: a method module that reads the registry while importing must not recurse
    try:
        _scan_package()
        for ep in _entry_points():
            _load_entry_point(ep)
    except BaseException:
        _discovered = False  # a failed discovery is reported again next time, never half-done in silence
        raise
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------------------------- lookup
def list_adapters() -> list[str]:
    """Registered adapter names, sorted (after discovery)."""
    return discover_adapters()


def get_adapter_spec(name: str) -> AdapterSpec:
    discover_adapters()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown("adapter", name, _REGISTRY) from None


def get_adapter_class(name: str) -> type[Adapter]:
    return get_adapter_spec(name).adapter_cls


def build_adapter(name: str, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                  **config_overrides: Any) -> Adapter:
    """Build a registered adapter from an :class:`AdapterContext` (or, v1, from K×D features and ``num_id``).

    Unknown options raise ClipoodError with a 'did you mean'.
    """
    spec = get_adapter_spec(name)
    config = spec.config_cls.from_dict(config_overrides)
    return spec.adapter_cls(as_context(context, num_id), config=config)
