"""Typed schemas of the settings every run shares (backbone, benchmark, negatives, evaluation, crops).

Each field has a type, the default of the default run (the embedded mini world) and a one-line help that
``--help`` prints. Method-specific sections (adapter, loss weights) live in the layer above ``adapters``
(:mod:`clipood_recipes.settings`); this module knows no method. ``None`` where a benchmark decides
(negatives on the mini world vs NegLabel's rule on real benchmarks) is resolved by
a copy by :func:`clipood.config.defaults.resolve_defaults` once, when the config is composed: before ``--help`` prints and before the run starts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import ClipoodError

__all__ = ["MiniSettings", "NegativeSettings", "EvalSettings", "CropSettings", "TrainConfig", "RunSettings", "opt",
           "section", "typed"]


def opt(default: Any, help: str) -> Any:  # noqa: A002 - the field's help text
    """A dataclass field with a default (copied for lists and dicts) and a one-line help."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(cls: type, help: str, **values: Any) -> Any:  # noqa: A002
    """A nested settings section (its defaults, optionally changed by ``values``)."""
    return field(default_factory=lambda: cls(**values), metadata={"help": help})


def typed(schema: type, values: Any) -> Any:
    """One section of a composed config as its schema object (nested sections too; missing keys take the
    schema's defaults, an unknown key is refused): what a core function takes instead of the whole config.
    A schema object is returned as it is."""
    import dataclasses
    import typing

    if isinstance(values, schema):
        return values
    hints = typing.get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}
    extra = sorted(set(values) - names)
    if extra:
        from ..errors import unknown

        raise unknown(f"{schema.__name__} key", extra[0], sorted(names))
    return schema(**{k: typed(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v
                     for k, v in values.items()})


@dataclass
class MiniSettings:
    seed: int = opt(0, "which procedural mini world (each seed is another world, built once and cached)")
    root: Optional[str] = opt(None, "where mini worlds are built (None = $CLIPOOD_DATA/mini or ~/.cache)")
    train_per_class: int = opt(16, "training images per Base class (the few-shot pool)")
    test_per_class: int = opt(50, "test images per class")
    ood_per_set: int = opt(250, "images per OOD set")
    style_per_class: int = opt(30, "images per class in each unseen style")


@dataclass
class NegativeSettings:
    num: Optional[int] = opt(None, "M mined negative labels (None = the benchmark's default: 40 on the mini "
                                   "world, NegLabel's 15 % rule elsewhere)")
    fraction: float = opt(0.15, "NegLabel: share of the corpus kept per part of speech when num is None")
    quantile: float = opt(0.95, "NegLabel: the η-quantile of similarity that ranks candidate words")
    corpus: Optional[str] = opt(None, "word file (one word a line) instead of the shipped WordNet lists")
    id_template: Optional[str] = opt(None, "prompt of the ID labels (None = the benchmark's default)")
    noun_template: Optional[str] = opt(None, "prompt of negative nouns (None = the benchmark's default)")
    adj_template: Optional[str] = opt(None, "prompt of negative adjectives (None = the benchmark's default)")


@dataclass
class EvalSettings:
    score: str = opt("neglabel", "score of tuned methods: neglabel | mcm | ... (clipood.scores)")
    groups: int = opt(1, "NegLabel grouping: negatives split into this many groups, scores averaged")
    group_remainder: str = opt("drop", "with groups: drop (the last M mod G negatives are left out, NegLabel's and "
                                       "LAPT's code) | spread (every negative, groups one longer)")
    lambda_local: float = opt(1.0, "GL-MCM: weight of the best local MCM (LoCoOp's test: 1; GL-MCM's ImageNet "
                                   "script: 0.5)")
    logit_scale: float = opt(100.0, "CLIP logit scale applied to cosines (logits = scale · cos)")
    batch_size: int = opt(256, "images per encoding batch")
    convention: Optional[str] = opt(None, "metric convention: hendrycks (ID positive) | openood (None = openood "
                                          "for openood-* suites, else hendrycks)")
    plots: bool = opt(True, "write score histograms and ROC curves")
    mcm: bool = opt(True, "add the zero-shot MCM row")
    # issue 22: post-hoc scores as extra rows (clipood.evaluation.posthoc_eval)
    scores: List[str] = opt([], "more scores, one row each: the evaluation's (neglabel, mcm, ...) and the post-hoc "
                                "ones (msp, gen, react, knn, ...; `clipood scores` lists them); [] = none")
    score_options: Dict[str, Any] = opt({}, "per-score parameters {score: {param: value}} (OpenOOD's defaults "
                                            "otherwise); eoe takes label_file")
    fit_data: Dict[str, Any] = opt({}, "dataset spec of the ID features the fitted scores (knn, mds, rmds, vim, "
                                       "react, dice) are fitted on ({} = the benchmark's training pool)")
    fit_shots: Optional[int] = opt(None, "fit-data images per class (None = the run's shots, 16 when it trains "
                                         "nothing; 0 = all)")


@dataclass
class CropSettings:
    """How training crops are cut and chosen (paper §3.4; checked in ``__post_init__``). The recipe's ``crops``
    section; :class:`clipood.crops.sampling.CropConfig` is this with the seed the crops are drawn from."""

    num_crops: int = opt(32, "P random crops per training image (paper 256, released code 128)")
    num_selected: int = opt(8, "Q ID crops and Q negative crops kept per image (paper 32); 2Q <= P")
    scale: Tuple[float, float] = opt((0.08, 1.0), "RandomResizedCrop area fraction range")
    ratio: Tuple[float, float] = opt((0.75, 1.3333333), "RandomResizedCrop aspect-ratio range (w / h)")
    flip: bool = opt(True, "random horizontal flip (p = 0.5)")
    color_jitter: bool = opt(False, "colour jitter on every crop (paper: on; released code: off)")
    jitter: Tuple[float, float, float, float] = opt((0.4, 0.4, 0.4, 0.1),
                                                    "brightness, contrast, saturation, hue of the jitter")
    grayscale: bool = opt(False, "random grayscale (paper: on; released code: off)")
    grayscale_p: float = opt(0.2, "probability of grayscale when grayscale is on")
    prompt: str = opt("a photo of a {}.", "text that ranks the crops, formatted with the class name")

    def __post_init__(self) -> None:
        self.scale = _pair("scale", self.scale)
        self.ratio = _pair("ratio", self.ratio)
        self.jitter = tuple(float(v) for v in self.jitter)  # type: ignore[assignment]
        for name in ("num_crops", "num_selected"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ClipoodError(f"crop config: {name} must be an integer, got {v!r}")
        P, Q = self.num_crops, self.num_selected
        if P < 1:
            raise ClipoodError(f"crop config: num_crops P={P} must be >= 1")
        if Q < 1:
            raise ClipoodError(f"crop config: num_selected Q={Q} must be >= 1")
        if 2 * Q > P:
            raise ClipoodError(f"crop config: num_selected Q={Q} needs num_crops P >= {2 * Q} (the top Q and bottom Q "
                               f"crops must not overlap), got P={P}; raise num_crops or lower num_selected")
        lo, hi = self.scale
        if not (0 < lo <= hi <= 1):
            raise ClipoodError(f"crop config: scale={self.scale} must satisfy 0 < min <= max <= 1")
        lo, hi = self.ratio
        if not (0 < lo <= hi):
            raise ClipoodError(f"crop config: ratio={self.ratio} must satisfy 0 < min <= max")
        if len(self.jitter) != 4 or any(v < 0 for v in self.jitter) or self.jitter[3] > 0.5:
            raise ClipoodError(f"crop config: jitter={self.jitter} must be 4 values (brightness, contrast, saturation"
                               f", hue) >= 0 with hue <= 0.5")
        if not 0 <= self.grayscale_p <= 1:
            raise ClipoodError(f"crop config: grayscale_p={self.grayscale_p} must be in [0, 1]")
        if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
            raise ClipoodError(f"crop config: prompt {self.prompt!r} must contain exactly one '{{}}' for the class name")


def _pair(name: str, v: Any) -> Tuple[float, float]:
    try:
        a, b = (float(x) for x in v)
    except (TypeError, ValueError):
        raise ClipoodError(f"crop config: {name} must be two numbers (min, max), got {v!r}") from None
    return (a, b)


@dataclass
class TrainConfig:
    """Optimisation settings (the YAML section ``train``; checked in ``__post_init__``)."""

    epochs: int = opt(30, "passes over the few-shot training images")
    batch_size: int = opt(8, "images per global step; each brings Q ID crops and Q negative crops")
    lr: float = opt(1e-3, "peak learning rate")
    weight_decay: float = opt(0.01, "weight decay (AdamW: decoupled)")
    optimizer: str = opt("adamw", "adamw | sgd (torch.optim)")
    momentum: float = opt(0.9, "SGD momentum")
    nesterov: bool = opt(False, "SGD with Nesterov momentum (needs momentum > 0)")
    schedule: str = opt("cosine", "constant | cosine (to 0 at the last step), after the warm-up")
    warmup_steps: int = opt(0, "warm-up steps: linear lr·(s+1)/warmup, or constant at warmup_lr")
    warmup_lr: float = opt(0.0, "> 0: constant warm-up at this lr (Dassl's ConstantWarmupScheduler: CoOp, CoCoOp, "
                                "LoCoOp 1e-5 for one epoch); 0: linear warm-up")
    cosine_period: int = opt(0, "> 0: cosine of period 2·this many steps (torch CosineAnnealingLR T_max stepped per "
                                "step, NegPrompt: 50); 0: one half-cosine to 0 at the last step")
    grad_clip: float = opt(0.0, "gradient-norm clip (0 = off)")
    max_steps: int = opt(0, "0 = epochs × steps per epoch; > 0 stops there (smoke tests, the official 1,200)")
    checkpoint_every: int = opt(0, "steps between checkpoints (0 = at epoch ends only)")
    keep_checkpoints: int = opt(2, "checkpoints kept")
    log_every: int = opt(10, "steps between tracker logs")
    seed: Optional[int] = opt(None, "data-order seed (None = the run's seed; 0 when fit() is called bare)")
    condition: str = opt("self", "meta-net input for crops: self | top_crop (released code)")

    def __post_init__(self):
        for k in ("epochs", "batch_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ClipoodError(f"train.{k} must be an integer >= 1, got {v!r}")
        for k in ("warmup_steps", "cosine_period", "max_steps", "checkpoint_every", "log_every"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ClipoodError(f"train.{k} must be an integer >= 0, got {v!r}")
        if isinstance(self.lr, bool) or not (isinstance(self.lr, (int, float)) and self.lr > 0
                                              and math.isfinite(self.lr)):
            raise ClipoodError(f"train.lr must be a positive number (e.g. train.lr=0.001), got {self.lr!r}")
        for k in ("weight_decay", "grad_clip", "momentum", "warmup_lr"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ClipoodError(f"train.{k} must be a number >= 0, got {v!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ClipoodError(f"train.optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if not isinstance(self.nesterov, bool):
            raise ClipoodError(f"train.nesterov must be true or false, got {self.nesterov!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ClipoodError(f"train.nesterov={self.nesterov!r}: use true only with train.optimizer=sgd and "
                               f"train.momentum > 0 (got {self.optimizer}, momentum {self.momentum})")
        if self.schedule not in ("constant", "cosine"):
            raise ClipoodError(f"train.schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.condition not in ("self", "top_crop"):
            raise ClipoodError(f"train.condition must be 'self' or 'top_crop', got {self.condition!r}")
        if isinstance(self.keep_checkpoints, bool) or not isinstance(self.keep_checkpoints, int) \
                or self.keep_checkpoints < 1:
            raise ClipoodError("train.keep_checkpoints must be >= 1")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ClipoodError(f"train.seed must be an integer (or null for the run's seed), got {self.seed!r}")



@dataclass
class RunSettings:
    """What every run has: where it writes, which backbone, which benchmark, negatives and evaluation."""

    output_dir: str = opt("outputs/run", "folder for results.json, results.md, plots (and checkpoints)")
    preset: Optional[str] = opt(None, "name of the complete setting this run starts from (recipes/configs)")
    model: str = opt("clipood-mini", "open_clip model name, clipood-mini (shipped) or local-dir:PATH")
    pretrained: Optional[str] = opt(None, "open_clip pretrained tag or a weights file (None = shipped)")
    benchmark: str = opt("mini", "mini (embedded world) | imagenet | ... (clipood.suites) | custom")
    data_root: Optional[str] = opt(None, "root that relative dataset paths resolve against (None = $CLIPOOD_DATA, "
                                         "else the current folder)")
    cache_dir: Optional[str] = opt(None, "feature / crop / negatives cache (None = $CLIPOOD_CACHE or ~/.cache)")
    seed: int = opt(0, "seed of everything the run draws (shots, crops, adapter init, data order)")
    cpu: Optional[bool] = opt(None, "force the CPU (None = GPU when there is one)")
    progress: bool = opt(True, "progress bars")
    log_with: Optional[str] = opt(None, "an Accelerate tracker for training logs (tensorboard, wandb, ...)")
    mini: MiniSettings = section(MiniSettings, "the embedded mini world (benchmark=mini)")
    classes: Optional[List[str]] = opt(None, "a subset of the suite's ID classes (names or WordNet IDs), labelled "
                                             "in list order")
    id_data: Dict[str, Any] = opt({}, "benchmark=custom: the ID dataset spec")
    ood_data: Dict[str, Any] = opt({}, "benchmark=custom: OOD dataset specs, name: spec")
    new_class_suites: List[str] = opt([], "unseen-class suites evaluated as split new_class (paper Tab. 2)")
    new_style_suites: List[str] = opt([], "unseen-style suites evaluated as split new_style (paper Tab. 3)")
    negatives: NegativeSettings = section(NegativeSettings, "NegLabel negative mining (Eq. 1)")
    eval: EvalSettings = section(EvalSettings, "evaluation")
