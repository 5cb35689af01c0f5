"""From a command line to a checked run config: schema defaults ← preset file ← ``--config`` files ← ``key=value``.

Several ``--config`` files are applied in the order given (a later file overrides an earlier one, key by key).

``preset=NAME`` (on the command line or as ``preset:`` in a ``--config`` file) applies
``<configs>/<recipe>_<NAME>.yaml`` first; those files carry every value of a reported setting. Choosing
another adapter resets ``adapter.options`` to that adapter's defaults; the options are then completed from the
adapter's config class, so ``--help``, ``config.json`` and the checkpoint signature show every value the run
uses. Everything here is checked before any model, image or cache is touched.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from clipood.config.checks import check_run_settings
from clipood.config.compose import compose, describe, load_yaml, parse_overrides, split_config_arg, to_dict
from clipood.errors import ClipoodError, unknown
from clipood.config.defaults import resolve_defaults

__all__ = ["load_settings", "presets", "compose_settings", "check_training", "train_config", "run_crops",
           "compose_variant"]

RESETS = {"adapter.name": "adapter.options"}


def presets(configs_dir: str | Path | None, recipe: str | None) -> dict[str, Path]:
    """``{preset name: YAML file}`` of one recipe (``<recipe>_<name>.yaml`` in ``configs_dir``)."""
    if configs_dir is None or recipe is None:
        return {}
    return {p.stem[len(recipe) + 1:]: p for p in sorted(Path(configs_dir).glob(f"{recipe}_*.yaml"))}


def compose_settings(schema: type, argv: Sequence[str], *, configs_dir: str | Path | None = None,
                     recipe: str | None = None, default_output_dir: str | None = None) -> dict:
    """The checked config (a plain nested dict) of ``argv`` (``--help`` is not handled here).

    Unless ``output_dir`` is given (command line or ``--config`` file), it is the preset's (or
    ``default_output_dir``) for the preset's own setting, and ``<that>-<8 hex digits>`` of the setting for any
    other, so the README's commands run in any order never meet each other's checkpoints."""
    paths, rest = split_config_arg(argv)
    overrides = parse_overrides(rest)
    files = [(str(p), load_yaml(p)) for p in paths]  # several --config files: applied in the order given
    known = presets(configs_dir, recipe)
    name = next((data["preset"] for _, data in reversed(files) if "preset" in data), None)  # the last file's
    name = dict(overrides).get("preset", name)  # the command line's over any file's
    layers: list = []
    if name is not None and known:
        if name not in known:
            raise unknown("preset", name, known)
        layers.append((str(known[name]), load_yaml(known[name])))
    layers += files
    explicit = "output_dir" in dict(overrides) or any("output_dir" in data for _, data in files)
    if default_output_dir and not explicit:
        layers.append(("the command's default", [("output_dir", default_output_dir)]))
    resets = RESETS if "adapter" in _fields(schema) else None
    # composed once: the preset and files, then the command line on top (the first stage is the preset's setting)
    preset_stage = compose(schema, layers, resets=resets)
    given = to_dict(compose(schema, [("the command line", overrides)], resets=resets, start=preset_stage.copy()))
    cfg = finish(given)
    if "output_dir" in cfg and not explicit:
        baseline = to_dict(preset_stage)
        if _setting_key(given) != _setting_key(baseline):
            # another setting than the preset's: its own folder, so two settings never share checkpoints
            cfg["output_dir"] = f"{baseline['output_dir']}-{_setting_key(cfg)}"
    return cfg


#: keys that say where things are or how a run reports, not what it computes: they never move output_dir
LOCATION_KEYS = ("output_dir", "data_root", "cache_dir", "progress", "resume", "log_with", "cpu")


def _setting_key(cfg: dict) -> str:
    """8 hex digits of everything a run computes with (all keys but :data:`LOCATION_KEYS`)."""
    import hashlib
    import json

    what = {k: v for k, v in cfg.items() if k not in LOCATION_KEYS}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]


def finish(composed: dict) -> dict:
    """The run's config: derived values computed once on a copy (the benchmark's defaults, the stacking base, the
    adapter's complete options, the method's name), then every check. Checks never write into the settings."""
    import copy

    cfg = copy.deepcopy(composed)
    if "negatives" in cfg:  # a run (not a small command such as build-mini)
        cfg = resolve_defaults(cfg)
        check_run_settings(cfg)
    if "adapter" in cfg:
        from .stacking import check_stacking

        cfg["base"] = check_stacking(cfg)
        if not cfg.get("init_adapter"):
            cfg["adapter"]["options"] = complete_options(cfg["adapter"])
        check_training(cfg)
        if cfg.get("method_name") is None:  # the comparison's and the efficiency suite's names
            from ._compat import import_adapters

            cfg["method_name"] = import_adapters().display_name(cfg["adapter"]["name"], cfg.get("base"))
    return cfg


def complete_options(adapter: dict) -> dict:
    """Every option of the adapter's config class (the given ones, the rest at their defaults), checked."""
    from ._compat import import_adapters

    spec = import_adapters().get_adapter_spec(adapter["name"])
    return _asdict(spec.config_cls.from_dict(dict(adapter["options"] or {}), source="adapter.options"))


def compose_variant(schema: type, base: dict, overrides: dict, where: str) -> dict:
    """``base`` (a complete config) with one variant's overrides, checked like a command line."""
    base = {k: v for k, v in base.items() if k in _fields(schema)}  # drops the runner's own keys (variants, ...)
    cfg = to_dict(compose(schema, [("the base config", base), (where, overrides)], resets=RESETS))
    return finish(cfg)


def _fields(schema: type) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(schema)}


#: the typed sections built from a config, by the content they were built from (``train_config``,
#: ``run_crops``): the check when the config is composed and the recipe share one object, so each is built once
_BUILT: dict[str, Any] = {}


def _built_once(kind: str, values: Any, build) -> Any:
    import json

    key = kind + json.dumps(values, sort_keys=True, default=repr)
    if key not in _BUILT:
        if len(_BUILT) > 256:  # a long-lived process (tests, notebooks): keep the memo small
            _BUILT.clear()
        _BUILT[key] = build()
    return _BUILT[key]


def train_config(cfg: dict):
    """The ``train`` section as a checked :class:`clipood.config.settings.TrainConfig` (seed: the run's, unless
    set), built once per content (read only: every caller shares the object)."""
    from clipood.config.settings import TrainConfig

    def build():
        t = dict(cfg["train"])
        if t.get("seed") is None:
            t["seed"] = cfg["seed"]
        return TrainConfig(**t)

    return _built_once("train", [cfg["train"], cfg["seed"]], build)


def run_crops(cfg: dict):
    """The ``crops`` section as a checked :class:`clipood.crops.sampling.CropConfig` seeded by the run's seed,
    built once per content (read only: every caller shares the object)."""
    from clipood.crops.train_data import crop_config

    return _built_once("crops", [cfg["crops"], cfg["seed"]], lambda: crop_config(cfg["crops"], cfg["seed"]))


def check_training(cfg: dict) -> None:
    """Loss weights, optimisation, crops, shots, groups and the adapter's options (read only)."""
    from clipood.training.task import check_loss_weights

    check_loss_weights(cfg["losses"])
    t = train_config(cfg)
    if t.max_steps and t.warmup_steps > t.max_steps:
        raise ClipoodError(f"train.warmup_steps={t.warmup_steps} is longer than the training "
                           f"(train.max_steps={t.max_steps}); lower train.warmup_steps")
    run_crops(cfg)
    shots = cfg["shots"]
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise ClipoodError(f"shots={shots!r} is invalid; use an integer >= 1 (or 0 for every training image)")
    for k in ("cls_groups", "ood_groups"):
        if cfg[k] < 1:
            raise ClipoodError(f"{k}={cfg[k]} is invalid; use an integer >= 1 (1 = no grouping)")
        num = (cfg.get("negatives") or {}).get("num")
        if isinstance(num, int) and cfg[k] > num:
            raise ClipoodError(f"{k}={cfg[k]} is more than the negatives.num={num} negatives to split into groups; "
                               f"lower {k}")
    pool = (cfg.get("mini") or {}).get("train_per_class") if cfg.get("benchmark") == "mini" else None
    if isinstance(pool, int) and shots > pool:
        raise ClipoodError(f"shots={shots} is more than the mini world's mini.train_per_class={pool} training images "
                           f"per class; lower shots or raise mini.train_per_class")
    if cfg.get("init_adapter") and not (Path(cfg["init_adapter"]) / "adapter_config.json").is_file():
        raise ClipoodError(f"init_adapter={cfg['init_adapter']} is not a saved adapter folder (no "
                           f"adapter_config.json); give the adapter/ folder of a trained run")
    if not cfg.get("init_adapter"):
        _check_option_ranges(cfg["adapter"]["options"])
    _check_score_fits(cfg)


def _check_option_ranges(options: dict) -> None:
    """Options no adapter can mean: a weight below 0 or infinite (it would turn its term around or swamp the
    loss)."""
    import math

    for k, v in options.items():
        if "weight" in k and isinstance(v, (int, float)) and not isinstance(v, bool) and \
                (not math.isfinite(v) or v < 0):
            raise ClipoodError(f"adapter.options.{k}={v!r} is invalid; use a finite number >= 0 (0 turns the term off)")


def check_option_folders(cfg: dict) -> None:
    """A ``*_dir`` adapter option that names no folder, found when the run starts (before any model or data;
    not when the config is composed: a preset may name a folder that only the machine it runs on has)."""
    for k, v in ((cfg.get("adapter") or {}).get("options") or {}).items():
        if k.endswith("_dir") and isinstance(v, str) and v and not Path(v).expanduser().is_dir():
            raise ClipoodError(f"adapter.options.{k}={v}: no such folder (from {Path.cwd()}); give an existing "
                               f"folder, or '' for the default")


def _check_score_fits(cfg: dict) -> None:
    """``eval.score=glmcm`` needs patch features: refused up front for an adapter that never reads them."""
    if (cfg.get("eval") or {}).get("score") != "glmcm":
        return
    from .methods import adapter_requires

    needs = set(adapter_requires(cfg))
    if cfg.get("base"):
        from ._compat import import_adapters

        needs |= set(import_adapters().get_adapter_spec(cfg["base"]).adapter_cls.requires)
    if "local_features" not in needs:
        raise ClipoodError(f"eval.score=glmcm needs patch (local) features, which adapter "
                           f"'{cfg['base'] or cfg['adapter']['name']}' does not use; use eval.score=mcm or neglabel, "
                           f"or a locoop adapter")


def _asdict(config: Any) -> dict:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def load_settings(schema: type, argv: Sequence[str] | None = None, *, configs_dir: str | Path | None = None,
                  recipe: str | None = None, doc: str | None = None, default_output_dir: str | None = None) -> dict:
    """``compose_settings`` for a script's command line; ``--help`` prints the values this run would use."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_help = any(a in ("-h", "--help") for a in argv)
    cfg = compose_settings(schema, [a for a in argv if a not in ("-h", "--help")], configs_dir=configs_dir,
                           recipe=recipe, default_output_dir=default_output_dir)
    if wants_help:
        print(doc or "")
        print("Values of this run (override with key=value, or --config FILE):\n")
        print(describe(schema, cfg))
        names = presets(configs_dir, recipe)
        if names:
            print(f"\nPresets (preset=NAME, files in {Path(configs_dir).name}/): {', '.join(names)}")
        raise SystemExit(0)
    from clipood.config.checks import check_environment, check_locations

    check_environment()  # CLIPOOD_* and thread variables, before torch reads them
    if "negatives" in cfg and ("output_dir" in cfg or "output" in cfg):  # a run: its folders, before any work
        check_locations(cfg)
    return cfg
