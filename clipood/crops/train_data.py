"""Training data of a run: the few-shot sample of the benchmark's training pool, cut into crops, the Q most
and Q least class-like crops of each image encoded once and cached (paper §3.4)."""
from __future__ import annotations

from ..config.checks import cache_root
from ..errors import ClipoodError
from ..evaluation.benchmark import Benchmark
from ..evaluation.protocol import SplitFeatures

__all__ = ["build_crop_data"]


def build_crop_data(bench: Benchmark, base_sf: SplitFeatures, cfg, accelerator, local: bool = False, *,
                    check_schedule: bool = False):
    """Few-shot sample of the training pool → P crops per image → Q ID + Q negative crops, encoded once and
    cached (a second run with other loss weights re-encodes nothing); ``local`` keeps their patch features.
    ``check_schedule``: check ``cfg['train']`` (batch size, warm-up) against the sample before any crop."""
    from .cache import build_crop_cache
    from ..datasets.checks import training_dataset
    from ..datasets.fewshot import sample_few_shot

    spec = bench.train_spec or cfg.get("train_data")  # the mini world's pool, else the config's
    if not spec:
        raise ClipoodError("no training data: set train_data (a dataset spec) for this benchmark")
    suite_set = None if cfg["benchmark"] in ("mini", "custom") else _suite_label_set(cfg["benchmark"])
    # labels by name: the training classes are matched to the ID classes, whose names rank the crops
    ds = training_dataset(spec, base_sf.split.classnames, label_set=suite_set, classes=cfg.get("classes"),
                          mode=cfg.get("train_classes") or "exact", root=cfg.get("data_root"))
    labels = [lab for _, lab in ds.samples]
    idx = sample_few_shot(labels, cfg["shots"], seed=cfg["seed"], classnames=ds.classnames)
    if check_schedule:
        from ..training.loop import check_schedule as check

        check(cfg["train"], len(idx), getattr(accelerator, "num_processes", 1))  # before any crop is encoded
    crop_cfg = crop_config(cfg["crops"], cfg["seed"])
    return build_crop_cache(bench.backbone, ds, idx, crop_cfg, ds.classnames, accelerator=accelerator,
                            cache_dir=cache_root(cfg) / "crops", progress=bool(cfg.get("progress")),
                            local=local)


def crop_config(crops, seed: int) -> "CropConfig":  # noqa: F821
    """The ``crops`` section (a mapping or :class:`clipood.config.settings.CropSettings`) as a checked
    :class:`clipood.crops.sampling.CropConfig`, seeded by the run's seed."""
    import dataclasses

    from .sampling import CropConfig

    values = dataclasses.asdict(crops) if dataclasses.is_dataclass(crops) else dict(crops)
    return CropConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}, seed=seed)


def _suite_label_set(name: str) -> str | None:
    from ..suites import get_suite

    return get_suite(name).label_set
