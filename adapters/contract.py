"""The adapter contract (version 2): what an adapter is built from, what it returns, how it relabels.

An adapter is the only trainable part of a clipood model. It is built from an
:class:`~adapters.context.AdapterContext` (label names + templates, negatives, frozen base text features
C (K×D, N ID rows first), the backbone's frozen text path) and maps a batch to an :class:`AdapterOutput` whose
``logits`` are **unscaled cosine similarities** over the K labels (N ID columns first, then M negatives).
Losses and scores multiply them by a logit scale (100 for CLIP). Adapters never compute losses, step
optimisers or move tensors between devices.

- ``requires`` names what a batch must carry: ``image_features`` (B×D), ``local_features`` (B×T×D patch tokens
  in the joint space), ``condition_features`` (B×D the meta-nets see instead of the image feature). Batch
  builders and feature caches read it and carry/store only what some adapter asked for.
- ``for_labels(context)`` moves a trained adapter to another label set explicitly: feature tuners apply their
  learned transform to the new base rows, prompt learners re-encode the new names with their learned context;
  weights tied to the training labels raise a ClipoodError (never a silent fall-back to frozen features).
- ``trainable_state_dict()`` holds trainable tensors only; the frozen text path is not a submodule.

Every hook a method may use is declared on :class:`Adapter` with its default, so callers never probe for one
(``docs/adding-an-adapter.md`` documents each): ``task_cls`` (the :class:`~clipood.training.task.TrainingTask`
that trains it: the method's own loss terms, its ``trains_stacked`` flag and its typed ``prepare`` step),
``cls_columns``, ``text_feature_scope()``, ``as_batch``, the stacking hooks ``init_from_base(base)`` and
``save_parts(directory)`` / ``load_parts(directory)``, and the optional fit step (``needs_fit``,
``fit(batches)``) on ID training features.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from clipood.batch_keys import ADAPTER_KEYS
from clipood.errors import ClipoodError, did_you_mean, unknown
from clipood.training.task import TrainingTask

from .context import AdapterContext, as_context

#: every batch key an adapter may name in ``requires`` (``pre_projection_features``: B×F image features before
#: the final projection, :func:`clipood.clip.pre_projection.pre_projection_features`, for post-hoc scores)
BATCH_KEYS = ADAPTER_KEYS  # defined once, in the core (clipood.batch_keys)

__all__ = [
    "Adapter", "AdapterConfig", "AdapterOutput", "BATCH_KEYS", "check_bool", "check_choice", "check_float",
    "check_int", "full_precision",
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
        try:
            return cls(**dict(values))
        except ClipoodError as e:  # name the option as the user writes it (adapter.options.mix_weight)
            msg = str(e)
            first = msg.split(" ", 1)[0].split("=", 1)[0]
            if source and first in names:
                raise ClipoodError(f"{source}.{msg}") from None
            raise


def check_int(name: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClipoodError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ClipoodError(f"{name} must be >= {minimum}, got {value}")


def check_float(name: str, value: Any, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ClipoodError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ClipoodError(f"{name} must be >= {minimum}, got {value!r}")


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
    ``name`` is filled in by :func:`adapters.register_adapter`.

    ``Adapter(context, config=None, **overrides)``; the v1 call ``Adapter(text_features, num_id, ...)`` builds a
    context without names. The frozen base text features are stored L2-normalised as the non-persistent buffer
    ``base_text_features`` (K×D, ID rows first); ``self.context`` is a plain attribute (never in the state).
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[AdapterConfig]] = AdapterConfig
    requires: ClassVar[frozenset[str]] = frozenset({"image_features"})
    #: True when a freshly built adapter returns exactly the zero-shot cosines C v (tested).
    identity_at_init: ClassVar[bool] = False
    #: True when the adapter runs the frozen text encoder itself (prompt learners): its context needs names,
    #: a text path and a tokenizer, and reloading needs ``backbone=`` (or a full ``context=``).
    uses_text_encoder: ClassVar[bool] = False
    #: The task recipes train it with: the core's TrainingTask (the configured loss terms), or a subclass defined
    #: next to the adapter adding the method's own terms (``extra_losses``), its own way of computing a term
    #: (``term``), extra training data (``prepare(inputs)``) or training through a stack (``trains_stacked``).
    task_cls: ClassVar[type[TrainingTask]] = TrainingTask
    #: Columns of the training cross-entropy L_cls: "all" (the K columns, KR-NFT's Eq. 7) or "id" (the N ID
    #: columns, CoOp's released loss); a task's ``options["cls_columns"]`` overrides it.
    cls_columns: str = "all"
    #: True when each input row's outputs depend only on that row and the parameters (no batch statistics, no
    #: shared prompts built from the batch): the training task may then score a step's ID and negative crops in
    #: one call and split the outputs by rows (half the small ops of a step; FeatureTuning declares it).
    rows_independent: ClassVar[bool] = False
    #: True when the adapter must see ID training features once before it scores (post-hoc statistics): the
    #: caller runs :meth:`fit` on batches of them first.
    needs_fit: ClassVar[bool] = False

    def __init__(self, context: AdapterContext | torch.Tensor, num_id: int | None = None,
                 config: AdapterConfig | Mapping | None = None, **overrides: Any) -> None:
        super().__init__()
        ctx = as_context(context, num_id)
        self.config = self._make_config(config, overrides)
        object.__setattr__(self, "context", ctx)  # not a submodule: the text path never enters the state
        self._num_id = int(ctx.num_id)
        self.register_buffer("base_text_features", F.normalize(ctx.text_features, dim=-1), persistent=False)

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
        """The batch ``forward`` hands to ``forward_batch``: a tensor becomes ``{"image_features": x}``, a
        batch missing a key of ``requires`` raises a ClipoodError naming it. Override it to accept batches
        without a key the adapter only sometimes needs (LoCoOp's patch features) or to delegate (a stack)."""
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

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """The optional fit step (``needs_fit``): read batches of ID training features (the keys ``requires``
        names, e.g. ``image_features`` or ``pre_projection_features``) once and keep what scoring needs as
        buffers. The default has nothing to fit."""
        if self.needs_fit:
            raise NotImplementedError(f"adapter '{self.name}' sets needs_fit but does not implement fit(batches)")

    @contextlib.contextmanager
    def text_feature_scope(self) -> Iterator[None]:
        """A block (one training step, entered by the TrainingTask) within which the adapter may compute each
        text feature once; prompt learners cache their encodings here. The default does nothing."""
        yield

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

    # ---------------------------------------------------------------------------------- relabelling
    def for_labels(self, context: AdapterContext) -> "Adapter":
        """This trained adapter on another label set (unseen classes, other negatives, stacking).

        Returns ``self`` for the same labels and base features. Otherwise a new adapter of the same class and
        config on ``context`` with the trained weights (:meth:`_relabel`); adapters whose weights are tied to the
        training labels raise ClipoodError for other labels (the same labels with other base features are fine).
        Never falls back to frozen features.
        """
        if not isinstance(context, AdapterContext):
            raise ClipoodError(f"for_labels takes an AdapterContext, got {type(context).__name__}")
        if context.dim != self.dim:
            raise ClipoodError(f"for_labels: the new context has feature dim {context.dim}, adapter "
                               f"'{self.name}' was trained with {self.dim}")
        if (self.context.same_labels(context) and context.text_features.shape == self.context.text_features.shape
                and torch.equal(context.text_features.cpu(), self.context.text_features.cpu())):
            return self
        new = self._relabel(context)
        return new.to(self.base_text_features.device).train(self.training)

    def _relabel(self, context: AdapterContext) -> "Adapter":
        """Default: the same weights on the new rows; subclasses with label-tied weights override this."""
        new = type(self)(context, config=self.config)
        self._copy_weights_into(new, context)
        return new

    def _copy_weights_into(self, new: "Adapter", context: AdapterContext) -> None:
        mine, theirs = self.trainable_state_dict(), new.trainable_state_dict()
        bad = sorted(k for k in mine if k not in theirs or mine[k].shape != theirs[k].shape)
        if bad or set(mine) != set(theirs):
            raise ClipoodError(
                f"adapter '{self.name}' cannot move to a label set of {context.num_id} ID + {context.num_neg} "
                f"negative labels: its weights {', '.join(bad) or 'keys'} are tied to the training labels"
            )
        new.load_state_dict({k: v.detach().clone() for k, v in mine.items()}, strict=False)

    def label_tied_error(self, context: AdapterContext, what: str) -> ClipoodError:
        """The error for weights that belong to specific training labels (class-specific modes)."""
        return ClipoodError(
            f"adapter '{self.name}' has {what} tied to its {self.num_id} training labels and cannot transfer to "
            f"other labels ({context.num_id} ID + {context.num_neg} negatives); evaluate it on its own label set "
            f"or choose a shared mode"
        )

    # ---------------------------------------------------------------------------------- stacking
    def init_from_base(self, base: "Adapter") -> None:
        """Called once when this adapter is stacked on the trained ``base`` (``adapters.stack`` / the recipe's
        ``base_checkpoint``), after it is built on the base's features: start from the base's weights (NegPT
        starts its negative context at CoOp's). The default keeps its own initialisation."""

    def save_parts(self, directory: Path) -> None:
        """Called by ``save_adapter`` after the trainable weights are written: save the frozen parts this
        adapter is made of (a stack's trained base) inside ``directory``. The default has none."""

    def load_parts(self, directory: Path) -> None:
        """Called by ``load_adapter`` before the trainable weights are loaded: reload what :meth:`save_parts`
        wrote (the adapter is built on the saved context). The default has none."""

    # ---------------------------------------------------------------------------------- state
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable tensors only (as PEFT's ``get_peft_model_state_dict``): what a checkpoint holds."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_id={self.num_id}, num_labels={self.num_labels}, dim={self.dim}"


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast for adapter arithmetic (norms of tuned features expand into sums that bf16 would
    blur); the products are B×D by D×K, so fp32 costs little next to the backbone."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()
