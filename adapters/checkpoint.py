"""Adapter checkpoints: trainable tensors only, plus the JSON that reloading needs.

Layout (``save_adapter`` / ``load_adapter``)::

    <dir>/adapter_config.json              adapter name, config, format version, and the label context:
                                           ID names + templates, negative names + templates, num_id, K, D,
                                           backbone name
    <dir>/adapter.safetensors              trainable tensors only (``trainable_state_dict()``); never the
                                           frozen text encoder or the base features
    <dir>/base_text_features.safetensors   only with include_base=True: the frozen K×D base text features

Reloading rebuilds the context from, in this order: ``context=`` (checked against the JSON), ``text_features=``
(the v1 call), ``backbone=`` (names from the JSON, features from the base file or re-encoded, the backbone's
text path attached: what prompt learners need), or the base file alone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from clipood.errors import ClipoodError
from clipood.io import load_safetensors, save_safetensors, write_json

from .context import AdapterContext
from .contract import Adapter
from .registry import get_adapter_spec

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
BASE_FILE = "base_text_features.safetensors"
FORMAT_VERSION = 2

__all__ = ["BASE_FILE", "CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "load_adapter", "save_adapter"]


def save_adapter(adapter: Adapter, directory: str | Path, *, include_base: bool = False) -> Path:
    """Write ``adapter_config.json`` and ``adapter.safetensors`` (trainable tensors only) atomically.

    With ``include_base=True`` the frozen base text features go to ``base_text_features.safetensors`` so
    ``load_adapter(directory)`` needs nothing else for feature tuners. Returns the directory.
    """
    if not isinstance(adapter, Adapter) or not adapter.name:
        raise ClipoodError(f"save_adapter needs a registered adapter, got {type(adapter).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ctx = adapter.context.describe()
    meta = {
        "format_version": FORMAT_VERSION,
        "adapter": adapter.name,
        "num_id": adapter.num_id,
        "num_labels": adapter.num_labels,
        "dim": adapter.dim,
        "config": adapter.config.to_dict(),
        "base_text_features": BASE_FILE if include_base else None,
        "context": ctx,
    }
    weights = {k: v.detach().contiguous() for k, v in adapter.trainable_state_dict().items()}
    save_safetensors(weights, directory / WEIGHTS_FILE, metadata={"adapter": adapter.name})
    base_path = directory / BASE_FILE
    if include_base:
        save_safetensors({"text_features": adapter.context.text_features}, base_path)
    elif base_path.exists():
        base_path.unlink()  # a stale base from an earlier save would silently pair with the new weights
    adapter.save_parts(directory)  # composite adapters (stacking) save their frozen parts alongside
    write_json(directory / CONFIG_FILE, meta)  # written last: a complete config marks a complete checkpoint
    return directory


def _read_meta(directory: Path) -> tuple[Path, dict]:
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise ClipoodError(f"no {CONFIG_FILE} in {directory}; is this an adapter checkpoint folder?")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        for key in ("adapter", "num_id", "num_labels", "dim", "config"):
            meta[key]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ClipoodError(f"corrupt adapter config {cfg_path} ({type(e).__name__}: {e}); re-save the adapter") from None
    return cfg_path, meta


def _base_features(directory: Path, cfg_path: Path, k: int, d: int) -> torch.Tensor | None:
    base_path = directory / BASE_FILE
    if not base_path.is_file():
        return None
    tensors = load_safetensors(base_path)
    if "text_features" not in tensors:
        raise ClipoodError(f"{base_path} has no 'text_features' tensor; re-save the adapter")
    return tensors["text_features"]


def _context_from_meta(meta: dict, features: torch.Tensor, backbone=None) -> AdapterContext:
    saved = meta.get("context") or {}
    kwargs: dict[str, Any] = {"text_features": features, "num_id": meta["num_id"],
                              "id_names": saved.get("id_names"), "neg_names": saved.get("neg_names"),
                              "backbone": saved.get("backbone")}
    for key in ("id_templates", "neg_templates"):
        if saved.get(key):
            kwargs[key] = saved[key]
    if backbone is not None:
        kwargs.update(text_path=backbone.text_path, tokenizer=backbone.tokenizer, backbone=backbone.model_name)
    return AdapterContext(**kwargs)


def _check_shape(source: str, features: Any, cfg_path: Path, meta: dict) -> None:
    k, d, n = meta["num_labels"], meta["dim"], meta["num_id"]
    shape = tuple(features.shape) if torch.is_tensor(features) else None
    if shape != (k, d):
        raise ClipoodError(
            f"{source} has shape {shape} but {cfg_path} was saved for K×D = ({k}, {d}) "
            f"({n} ID + {k - n} negative labels); pass the base text features used in training"
        )


def _resolve_context(directory: Path, cfg_path: Path, meta: dict, context, text_features, backbone):
    k, d = meta["num_labels"], meta["dim"]
    saved = meta.get("context") or {}
    if context is not None:
        if not isinstance(context, AdapterContext):
            raise ClipoodError(f"context must be an AdapterContext, got {type(context).__name__}")
        _check_shape("context.text_features", context.text_features, cfg_path, meta)
        for key in ("id_names", "neg_names"):
            if saved.get(key) is not None and getattr(context, key) is not None and getattr(context, key) != saved[key]:
                raise ClipoodError(f"context.{key} differ from the {key} saved in {cfg_path}; to move the adapter to "
                                   f"other labels load it on its own labels, then call adapter.for_labels(context)")
        return context
    if text_features is not None:
        _check_shape("text_features", text_features, cfg_path, meta)
        return _context_from_meta(meta, text_features, backbone)
    features = _base_features(directory, cfg_path, k, d)
    if features is None and backbone is not None:
        if saved.get("id_names") is None or saved.get("neg_names") is None:
            raise ClipoodError(f"{cfg_path} records no label names; pass text_features (the {k}×{d} base features)")
        features = AdapterContext.from_backbone(backbone, saved["id_names"], saved["neg_names"],
                                                id_templates=saved.get("id_templates") or ["a photo of a {}."],
                                                neg_templates=saved.get("neg_templates") or ["a photo of a {}."]
                                                ).text_features
    if features is None:
        raise ClipoodError(
            f"{cfg_path} was saved without base text features; pass text_features (the {k}×{d} base "
            "features used in training), backbone= (re-encodes the saved names), or save with include_base=True"
        )
    _check_shape(str(directory / BASE_FILE), features, cfg_path, meta)
    return _context_from_meta(meta, features, backbone)


def load_adapter(path: str | Path, text_features: torch.Tensor | None = None, *,
                 context: AdapterContext | None = None, backbone=None) -> Adapter:
    """Rebuild an adapter saved by :func:`save_adapter` (on CPU; move it yourself).

    Give the label context one way (see the module docstring): ``context``, ``text_features`` (the frozen K×D
    base features used in training), ``backbone`` (its text path is attached; prompt learners need it), or
    nothing when the checkpoint was saved with ``include_base=True``.
    """
    directory = Path(path)
    if directory.name == CONFIG_FILE:
        directory = directory.parent
    cfg_path, meta = _read_meta(directory)
    spec = get_adapter_spec(meta["adapter"])
    ctx = _resolve_context(directory, cfg_path, meta, context, text_features, backbone)
    config = spec.config_cls.from_dict(meta["config"], source=str(cfg_path))
    adapter = spec.adapter_cls(ctx, config=config)
    adapter.load_parts(directory)  # composite adapters (stacking) reload their frozen parts first
    weights_path = directory / WEIGHTS_FILE
    weights = load_safetensors(weights_path)
    expected = adapter.trainable_state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ClipoodError(
            f"{weights_path} does not match adapter '{meta['adapter']}' built from {cfg_path}: "
            f"missing {missing or 'none'}, unexpected {unexpected or 'none'}"
        )
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ClipoodError(
                f"{weights_path}: '{key}' has shape {tuple(tensor.shape)}, adapter expects "
                f"{tuple(expected[key].shape)}; the config and weights come from different runs"
            )
    adapter.load_state_dict(weights, strict=False)
    return adapter
