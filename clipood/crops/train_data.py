"""Training data of a run: the few-shot sample of the benchmark's training pool, cut into crops, the Q most
and Q least class-like crops of each image encoded once and cached (paper §3.4)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config.checks import cache_root
from ..errors import ClipoodError
from ..evaluation.benchmark import Benchmark
from ..evaluation.protocol import SplitFeatures

if TYPE_CHECKING:
    from ..config.records import DataSettings
    from ..config.settings import TrainConfig
    from .sampling import CropConfig

__all__ = ["build_crop_data"]


def build_crop_data(bench: Benchmark, base_sf: SplitFeatures, data: DataSettings, crops: CropConfig, accelerator,
                    local: bool = False, *, shots: int, seed: int, train: TrainConfig | None = None,
                    progress: bool = False):
    """Few-shot sample (``shots`` per class, drawn by ``seed``) of the training pool → P crops per image → Q ID +
    Q negative crops (``crops``), encoded once and cached under ``data.cache_dir`` (a second run with other loss
    weights re-encodes nothing); ``local`` keeps their patch features. ``train``: the run's optimisation
    settings, checked (batch size, warm-up) against the sample before any crop."""
    from .cache import build_crop_cache
    from ..datasets.checks import training_dataset
    from ..datasets.fewshot import sample_few_shot

    spec = bench.train_spec or data.train_data  # the mini world's pool, else the config's
    if not spec:
        raise ClipoodError("no training data: set train_data (a dataset spec) for this benchmark")
    suite_set = None if data.benchmark in ("mini", "custom") else _suite_label_set(data.benchmark)
    # labels by name: the training classes are matched to the ID classes, whose names rank the crops
    ds = training_dataset(spec, base_sf.split.classnames, label_set=suite_set, classes=data.classes,
                          mode=data.train_classes or "exact", root=data.data_root)
    labels = [lab for _, lab in ds.samples]
    idx = sample_few_shot(labels, shots, seed=seed, classnames=ds.classnames)
    if train is not None:
        from ..training.loop import check_schedule

        check_schedule(train, len(idx), getattr(accelerator, "num_processes", 1))  # before any crop is encoded
    cache_dir = data.cache_dir if data.cache_dir is not None else cache_root({})
    return build_crop_cache(bench.backbone, ds, idx, crops, ds.classnames, accelerator=accelerator,
                            cache_dir=Path(cache_dir) / "crops", progress=bool(progress), local=local)


def crop_config(crops, seed: int) -> CropConfig:
    """The ``crops`` section (a mapping or :class:`clipood.config.settings.CropSettings`) as a checked
    :class:`clipood.crops.sampling.CropConfig`, seeded by the run's seed."""
    import dataclasses

    from .sampling import CropConfig

    values = dataclasses.asdict(crops) if dataclasses.is_dataclass(crops) else dict(crops)
    return CropConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}, seed=seed)


def _suite_label_set(name: str) -> str | None:
    from ..suites import get_suite

    return get_suite(name).label_set
