"""The adapter contract, the adapter registry and the checkpoint format.

An adapter is the only trainable part of a clipood model. It maps what the frozen backbone gives (a batch
carrying at least ``image_features``) to an :class:`AdapterOutput` whose ``logits`` are **unscaled cosine
similarities** over the K labels (N ID columns first, then M negatives). Losses and scores multiply them by
a logit scale (100 for CLIP). Adapters never compute losses, step optimisers or move tensors between devices.

Checkpoint layout (``save_adapter`` / ``load_adapter``)::

    <dir>/adapter_config.json              adapter name, config, num_id, K, D, format version
    <dir>/adapter.safetensors              trainable weights only (``state_dict()``; frozen buffers excluded)
    <dir>/base_text_features.safetensors   only with include_base=True: the frozen K×D base text features
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from clipood.errors import ClipoodError, did_you_mean, unknown
from clipood.io import load_safetensors, save_safetensors, write_json

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
BASE_FILE = "base_text_features.safetensors"
FORMAT_VERSION = 1

__all__ = [
    "Adapter", "AdapterConfig", "AdapterOutput", "AdapterSpec", "register_adapter", "list_adapters",
    "get_adapter_class", "get_adapter_spec", "build_adapter", "save_adapter", "load_adapter",
]


@dataclass
class AdapterOutput:
    """What every adapter returns.

    logits:   B×K **unscaled cosine similarities** cos(v, c'_i), ID columns first. Multiply by the logit
              scale (default 100) before a softmax, a loss or a score.
    base_cos: cos(c_i, c'_i) between each tuned text feature and its frozen base: shape K when the tuned
              features do not depend on the image, B×K when they do; ``None`` for adapters without text
              features. A knowledge-regularisation term (``clipood.losses.kr_cos_loss``) needs only this.
    extras:   optional adapter-specific tensors (e.g. local logits); empty by default.
    """

    logits: torch.Tensor
    base_cos: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- configs
@dataclass
class AdapterConfig:
    """Base of adapter configs: subclasses add fields ``field(default=..., metadata={"help": ...})``
    and validate them in ``__post_init__`` (raising ClipoodError)."""

    def __post_init__(self) -> None:  # subclasses call super().__post_init__() and add their checks
        pass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """One line of help per field, for CLIs and docs."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str | None = None) -> "AdapterConfig":
        """Build from a mapping; an unknown key raises ClipoodError with a 'did you mean'."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                where = f" in {source}" if source else ""
                raise ClipoodError(
                    f"unknown option '{key}'{where} for {cls.__name__}{did_you_mean(key, names)}; "
                    f"valid options: {', '.join(names)}"
                )
        return cls(**dict(values))


def check_int(name: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClipoodError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ClipoodError(f"{name} must be >= {minimum}, got {value}")


def check_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ClipoodError(f"{name} must be a finite number, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ClipoodError(f"{name} must be true or false, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise unknown(name, value, choices)


# -------------------------------------------------------------------------------------------- contract
class Adapter(nn.Module):
    """Base class of all adapters (see the module docstring for the contract).

    Subclasses set ``config_cls`` (and ``requires`` when they need more than image features), build their
    parameters in ``__init__`` after calling ``super().__init__`` and implement ``forward_batch``.
    ``name`` is filled in by :func:`register_adapter`.

    The frozen base text features are stored L2-normalised as the non-persistent buffer
    ``base_text_features`` (K×D, ID rows first), so ``state_dict()`` holds trainable weights only.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[AdapterConfig]] = AdapterConfig
    requires: ClassVar[frozenset[str]] = frozenset({"image_features"})
    #: True when a freshly built adapter returns exactly the zero-shot cosines C v (tested).
    identity_at_init: ClassVar[bool] = False

    def __init__(self, text_features: torch.Tensor, num_id: int, config: AdapterConfig | Mapping | None = None,
                 **overrides: Any) -> None:
        super().__init__()
        text_features = _check_text_features(text_features)
        num_labels = text_features.shape[0]
        if isinstance(num_id, bool) or not isinstance(num_id, int):
            raise ClipoodError(f"num_id must be an integer, got {num_id!r}")
        if not 1 <= num_id <= num_labels:
            raise ClipoodError(
                f"num_id={num_id} must be between 1 and the number of text features K={num_labels} "
                "(ID rows first, then negatives)"
            )
        self.config = self._make_config(config, overrides)
        self._num_id = num_id
        self.register_buffer("base_text_features", F.normalize(text_features, dim=-1), persistent=False)

    @classmethod
    def _make_config(cls, config: AdapterConfig | Mapping | None, overrides: Mapping[str, Any]) -> AdapterConfig:
        if config is None:
            values: dict[str, Any] = {}
        elif isinstance(config, AdapterConfig):
            values = config.to_dict()
        elif isinstance(config, Mapping):
            values = dict(config)
        else:
            raise ClipoodError(f"config must be a {cls.config_cls.__name__} or a dict, got {type(config).__name__}")
        values.update(overrides)
        return cls.config_cls.from_dict(values)

    # ---------------------------------------------------------------------------------- properties
    @property
    def num_id(self) -> int:
        """N: the number of ID labels (the first N columns of the logits)."""
        return self._num_id

    @property
    def num_labels(self) -> int:
        """K = N + M: ID labels plus negative labels."""
        return self.base_text_features.shape[0]

    @property
    def num_neg(self) -> int:
        return self.num_labels - self._num_id

    @property
    def dim(self) -> int:
        return self.base_text_features.shape[1]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------------------------- forward
    def forward(self, batch_or_image_features: Mapping[str, Any] | torch.Tensor) -> AdapterOutput:
        """Adapt one batch. A plain B×D tensor is read as ``{"image_features": tensor}``."""
        return self.forward_batch(self.as_batch(batch_or_image_features))

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        raise NotImplementedError

    def as_batch(self, batch_or_image_features: Mapping[str, Any] | torch.Tensor) -> Mapping[str, Any]:
        if torch.is_tensor(batch_or_image_features):
            batch: Mapping[str, Any] = {"image_features": batch_or_image_features}
        elif isinstance(batch_or_image_features, Mapping):
            batch = batch_or_image_features
        else:
            raise ClipoodError(
                f"adapter '{self.name}' takes a tensor of image features or a dict batch, "
                f"got {type(batch_or_image_features).__name__}"
            )
        missing = sorted(self.requires - set(batch))
        if missing:
            raise ClipoodError(
                f"batch lacks {', '.join(repr(m) for m in missing)} required by adapter '{self.name}' "
                f"(it requires: {', '.join(sorted(self.requires))}; got: {', '.join(sorted(map(str, batch)))})"
            )
        return batch

    def image_features(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The batch's image features as unit B×D rows in the base features' dtype (validated)."""
        x = batch["image_features"]
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ClipoodError(
                f"image_features must be a B×{self.dim} tensor (feature dim D={self.dim} of the text features), "
                f"got {shape}; for one image use x[None]"
            )
        return F.normalize(x.to(self.base_text_features.dtype), dim=-1)

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """The tuned text features c'_i, explicitly (K×D, or B×K×D for image-conditional adapters).

        For inspection and tests; forward passes must not need it.
        """
        raise NotImplementedError(f"adapter '{self.name}' does not expose tuned text features")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_id={self.num_id}, num_labels={self.num_labels}, dim={self.dim}"


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast for adapter arithmetic (norms of tuned features expand into sums that bf16 would
    blur); the products are B×D by D×K, so fp32 costs little next to the backbone."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


def _check_text_features(text_features: Any) -> torch.Tensor:
    if not torch.is_tensor(text_features):
        raise ClipoodError(f"text_features must be a K×D tensor, got {type(text_features).__name__}")
    if text_features.ndim != 2 or text_features.shape[0] < 1 or text_features.shape[1] < 1:
        raise ClipoodError(
            f"text_features must be a K×D tensor (K labels, ID rows first), got shape {tuple(text_features.shape)}"
        )
    if not text_features.is_floating_point():
        raise ClipoodError(f"text_features must be floating point, got dtype {text_features.dtype}")
    text_features = text_features.detach()
    if text_features.dtype in (torch.float16, torch.bfloat16):
        # adapter arithmetic (norms of tuned features) wants fp32; autocast still applies to the matmuls
        text_features = text_features.float()
    if not bool(torch.isfinite(text_features).all()):
        raise ClipoodError("text_features contains NaN or infinite values")
    return text_features


# -------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class AdapterSpec:
    name: str
    config_cls: type[AdapterConfig]
    adapter_cls: type[Adapter]


_REGISTRY: dict[str, AdapterSpec] = {}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


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
    declared = adapter_cls.__dict__.get("name", "")
    if declared and declared != name:
        raise ClipoodError(f"{adapter_cls.__qualname__} declares name '{declared}' but is registered as '{name}'")
    if adapter_cls.__dict__.get("config_cls", config_cls) is not config_cls:
        raise ClipoodError(f"{adapter_cls.__qualname__}.config_cls is not {config_cls.__qualname__}")
    adapter_cls.name = name
    adapter_cls.config_cls = config_cls
    _REGISTRY[name] = AdapterSpec(name, config_cls, adapter_cls)


def list_adapters() -> list[str]:
    """Registered adapter names, sorted."""
    return sorted(_REGISTRY)


def get_adapter_spec(name: str) -> AdapterSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown("adapter", name, _REGISTRY) from None


def get_adapter_class(name: str) -> type[Adapter]:
    return get_adapter_spec(name).adapter_cls


def build_adapter(name: str, text_features: torch.Tensor, num_id: int, **config_overrides: Any) -> Adapter:
    """Build a registered adapter over frozen base text features (K×D, ID rows first)."""
    spec = get_adapter_spec(name)
    return spec.adapter_cls(text_features, num_id, config=spec.config_cls.from_dict(config_overrides))


# ------------------------------------------------------------------------------------ save and load
def save_adapter(adapter: Adapter, directory: str | Path, *, include_base: bool = False) -> Path:
    """Write ``adapter_config.json`` and ``adapter.safetensors`` (trainable weights only) atomically.

    With ``include_base=True`` the frozen base text features go to ``base_text_features.safetensors`` so
    ``load_adapter(directory)`` needs nothing else. Returns the directory.
    """
    if not isinstance(adapter, Adapter) or not adapter.name:
        raise ClipoodError(f"save_adapter needs a registered adapter, got {type(adapter).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "adapter": adapter.name,
        "num_id": adapter.num_id,
        "num_labels": adapter.num_labels,
        "dim": adapter.dim,
        "config": adapter.config.to_dict(),
        "base_text_features": BASE_FILE if include_base else None,
    }
    save_safetensors(adapter.state_dict(), directory / WEIGHTS_FILE, metadata={"adapter": adapter.name})
    base_path = directory / BASE_FILE
    if include_base:
        save_safetensors({"text_features": adapter.base_text_features}, base_path)
    elif base_path.exists():
        base_path.unlink()  # a stale base from an earlier save would silently pair with the new weights
    write_json(directory / CONFIG_FILE, meta)  # written last: a complete config marks a complete checkpoint
    return directory


def load_adapter(path: str | Path, text_features: torch.Tensor | None = None) -> Adapter:
    """Rebuild an adapter saved by :func:`save_adapter` (on CPU; move it yourself).

    ``text_features`` are the frozen K×D base features used in training; they may be omitted when the
    checkpoint was saved with ``include_base=True``.
    """
    directory = Path(path)
    if directory.name == CONFIG_FILE:
        directory = directory.parent
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise ClipoodError(f"no {CONFIG_FILE} in {directory}; is this an adapter checkpoint folder?")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        name, num_id, k, d = meta["adapter"], meta["num_id"], meta["num_labels"], meta["dim"]
        config_values = meta["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ClipoodError(f"corrupt adapter config {cfg_path} ({type(e).__name__}: {e}); re-save the adapter") from None
    spec = get_adapter_spec(name)
    if text_features is None:
        base_path = directory / BASE_FILE
        if not base_path.is_file():
            raise ClipoodError(
                f"{cfg_path} was saved without base text features; pass text_features (the {k}×{d} base "
                "features used in training) or save with include_base=True"
            )
        tensors = load_safetensors(base_path)
        if "text_features" not in tensors:
            raise ClipoodError(f"{base_path} has no 'text_features' tensor; re-save the adapter")
        text_features, source = tensors["text_features"], str(base_path)
    else:
        source = "text_features"
    shape = tuple(text_features.shape) if torch.is_tensor(text_features) else None
    if shape != (k, d):
        raise ClipoodError(
            f"{source} has shape {shape} but {cfg_path} was saved for K×D = ({k}, {d}) "
            f"({num_id} ID + {k - num_id} negative labels); pass the base text features used in training"
        )
    config = spec.config_cls.from_dict(config_values, source=str(cfg_path))
    adapter = spec.adapter_cls(text_features, num_id, config=config)
    weights_path = directory / WEIGHTS_FILE
    weights = load_safetensors(weights_path)
    expected = adapter.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ClipoodError(
            f"{weights_path} does not match adapter '{name}' built from {cfg_path}: "
            f"missing {missing or 'none'}, unexpected {unexpected or 'none'}"
        )
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ClipoodError(
                f"{weights_path}: '{key}' has shape {tuple(tensor.shape)}, adapter expects "
                f"{tuple(expected[key].shape)}; the config and weights come from different runs"
            )
    adapter.load_state_dict(weights)
    return adapter
