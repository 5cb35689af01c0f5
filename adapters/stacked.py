"""Stacking: a feature tuner (KR-NFT's ``nft`` by default) trained on top of a trained prompt adapter.

The prompt adapter (``coop``, ``locoop``, ``lapt``, ``negpt``: any adapter whose tuned text features do not
depend on the image) is frozen; its text features for the current label set, C' = base.tuned_text_features()
(K×D), become the frozen base rows of the tuner, which trains with its usual loss terms (NFT + L_cls, L_ood,
L_kr with cos(c'_i, c''_i) against C'):

    c''_i = tuner(C')_i,   logits = cos(v, c''_i)

On another label set (unseen classes, other negatives) the prompt part re-encodes the new names with its learned
context (``base.for_labels``) and the tuner's learned transform is applied to those rows (``tuner.for_labels``).

Checkpoint: one folder — the tuner's trainable tensors in ``adapter.safetensors`` (this adapter's own state),
the frozen prompt adapter's checkpoint in ``base/`` — reloaded by ``load_adapter(folder, backbone=...)``.
Recipes: ``accelerate launch recipes/krnft.py base=locoop base_checkpoint=<locoop run dir>``.
Stacking NegPT on ``coop`` is NegPrompt's two-stage training (the tuner's ``init_from_base`` hook copies the
trained positive context into the negative one).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping

import torch

from clipood.errors import ClipoodError
from clipood.training.task import TrainingTask

from .context import AdapterContext
from .contract import Adapter, AdapterConfig, AdapterOutput

__all__ = ["Stacked", "StackedConfig", "stack"]

BASE_DIR = "base"


@dataclass
class StackedConfig(AdapterConfig):
    base: str = field(default="coop", metadata={"help": "the frozen prompt adapter underneath (registry name)"})
    base_options: Dict[str, Any] = field(default_factory=dict, metadata={"help": "that adapter's options"})
    tuner: str = field(default="nft", metadata={"help": "the adapter trained on the prompt adapter's features"})
    tuner_options: Dict[str, Any] = field(default_factory=dict, metadata={"help": "the tuner's options"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for k in ("base", "tuner"):
            if not isinstance(getattr(self, k), str):
                raise ClipoodError(f"{k} must be a registered adapter name, got {getattr(self, k)!r}")
        for k in ("base_options", "tuner_options"):
            if not isinstance(getattr(self, k), Mapping):
                raise ClipoodError(f"{k} must be a mapping of options, got {getattr(self, k)!r}")
        if self.tuner == "stacked" or self.base == "stacked":
            raise ClipoodError("stack one prompt adapter and one tuner (nested stacks are not supported)")


def _frozen(adapter: Adapter) -> Adapter:
    """The base in eval mode. It is not a submodule, so optimisers over the stacked adapter never see its
    parameters, and C' is computed without gradient: it stays as trained (its tensors keep ``requires_grad``,
    so its own checkpoint and relabelling work unchanged)."""
    return adapter.eval()


class Stacked(Adapter):
    """``Stacked(context, base="coop", tuner="nft")`` builds a fresh prompt adapter underneath (tests, loading);
    :func:`stack` wraps a trained one. Trainable: the tuner only (``self.tuner``); ``self.base`` is frozen and
    not a submodule (saved under ``base/`` of the checkpoint)."""

    config_cls = StackedConfig
    uses_text_encoder = True

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, *, base: Adapter | None = None,
                 **overrides: Any) -> None:
        super().__init__(context, num_id, config, **overrides)
        from .registry import build_adapter

        cfg = self.config
        if base is None:
            base = build_adapter(cfg.base, self.context, **dict(cfg.base_options))
        self._set_base(base)
        self.tuner = build_adapter(cfg.tuner, self._tuner_context(), **dict(cfg.tuner_options))
        self.tuner.init_from_base(self.base)
        self.requires = frozenset(self.tuner.requires)  # batches carry what the tuner reads

    def _set_base(self, base: Adapter) -> None:
        if not isinstance(base, Adapter):
            raise ClipoodError(f"stacking needs a trained adapter underneath, got {type(base).__name__}")
        if base.num_labels != self.num_labels or base.num_id != self.num_id:
            raise ClipoodError(f"the base adapter '{base.name}' has {base.num_id} ID + {base.num_neg} negative "
                               f"labels, the stacked context {self.num_id} + {self.num_neg}")
        object.__setattr__(self, "base", _frozen(base))

    def base_features(self) -> torch.Tensor:
        """C': the prompt adapter's text features for this label set (K×D, frozen)."""
        with torch.no_grad():
            try:
                feats = self.base.tuned_text_features()
            except (NotImplementedError, ValueError) as e:
                raise ClipoodError(f"cannot stack on adapter '{self.base.name}': its text features depend on the "
                                   f"image or are not exposed ({e}); stack on coop, locoop, lapt or negpt") from None
        if feats.ndim != 2:
            raise ClipoodError(f"cannot stack on adapter '{self.base.name}': its text features depend on the image")
        return feats.detach().float().to(self.base_text_features.device)

    def _tuner_context(self) -> AdapterContext:
        return self.context.with_features(self.base_features())

    @property
    def task_cls(self) -> type[TrainingTask]:
        """The tuner's training task when it is written to train through a stack (``trains_stacked``: NegPT's
        NegPrompt terms on a trained ``coop``); otherwise the plain configured terms (TrainingTask)."""
        cls = self.tuner.task_cls
        return cls if cls.trains_stacked else TrainingTask

    @property
    def cls_columns(self) -> str:
        """The tuner's columns of L_cls (the stack trains the tuner)."""
        return self.tuner.cls_columns

    def text_feature_scope(self) -> contextlib.AbstractContextManager:
        """The tuner's scope (the base's features are computed once, frozen)."""
        return self.tuner.text_feature_scope()

    # ------------------------------------------------------------------------------------ forward
    def as_batch(self, batch_or_image_features):
        return self.tuner.as_batch(batch_or_image_features)

    def forward_batch(self, batch: Mapping[str, Any]) -> AdapterOutput:
        return self.tuner.forward_batch(batch)

    def tuned_text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError("a stacked adapter's base_cos is measured against the prompt adapter's features "
                                  "C', not the context's; use .tuner.tuned_text_features(v) with .base_features()")

    # --------------------------------------------------------------------------------- relabelling
    def _relabel(self, context: AdapterContext) -> "Stacked":
        """The prompt part re-encodes the new names; the tuner's transform moves onto those rows."""
        new = type(self)(context, config=self.config, base=self.base.for_labels(context))
        new.tuner = self.tuner.for_labels(new._tuner_context())
        return new

    # --------------------------------------------------------------------------------- checkpoints
    def save_parts(self, directory: Path) -> None:
        """Called by ``save_adapter``: the frozen prompt adapter goes to ``<directory>/base``."""
        from .checkpoint import save_adapter

        save_adapter(self.base, Path(directory) / BASE_DIR)

    def load_parts(self, directory: Path) -> None:
        """Called by ``load_adapter`` before the tuner's weights are loaded: the trained prompt adapter."""
        from .checkpoint import load_adapter

        sub = Path(directory) / BASE_DIR
        if not sub.is_dir():
            raise ClipoodError(f"{directory} is a stacked adapter without its base/ folder; re-save it")
        base = load_adapter(sub, context=self.context).to(self.base_text_features.device)
        if base.name != self.config.base:
            raise ClipoodError(f"{sub} holds adapter '{base.name}', the stacked config names '{self.config.base}'")
        self._set_base(base)
        tuner = type(self.tuner)(self._tuner_context(), config=self.tuner.config)
        self.tuner = tuner.to(self.base_text_features.device)


def stack(base: Adapter, tuner: str = "nft", **tuner_options: Any) -> Stacked:
    """A :class:`Stacked` adapter over the trained ``base`` on its own label context."""
    cfg = StackedConfig(base=base.name, base_options=base.config.to_dict(), tuner=tuner,
                        tuner_options=dict(tuner_options))
    return Stacked(base.context, config=cfg, base=base)


def _register() -> None:
    from .registry import register_adapter

    register_adapter("stacked", StackedConfig, Stacked)


_register()
