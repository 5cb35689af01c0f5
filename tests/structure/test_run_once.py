"""Work a run does once: composing the config, resolving the benchmark's defaults, each check, the data check,
building the typed ``train`` and ``crops`` sections.

The KR-NFT recipe runs in-process (``recipes/krnft.py``'s ``main``) on a tiny mini world with the random-weight
``clipood-tiny`` backbone and 2 training steps, with every step of interest wrapped by a counter.
"""
from __future__ import annotations

import json

import pytest

from helpers import ROOT

SMALL = ["model=clipood-tiny", "cpu=true", "progress=false", "eval.plots=false", "crops.num_crops=8",
         "crops.num_selected=2", "mini.train_per_class=4", "mini.test_per_class=6", "mini.ood_per_set=12",
         "mini.style_per_class=4", "train.max_steps=2"]


def _counted(monkeypatch, module, name: str, calls: dict) -> None:
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)


def _count_run_steps(monkeypatch) -> dict:
    import clipood.config.checks as checks
    import clipood.datasets.checks as data_checks
    import clipood_recipes.configure as configure

    calls: dict[str, int] = {}
    for module, name in ((checks, "check_environment"), (checks, "check_locations"),  # looked up at call time
                         (configure, "check_run_settings"), (configure, "resolve_defaults"),  # imported names
                         (configure, "compose"), (data_checks, "check_data")):
        _counted(monkeypatch, module, name, calls)
    return calls


def _count_builds(monkeypatch) -> dict:
    """Constructions of the run's ``TrainConfig`` and ``CropConfig`` (the composed schema's own default instances
    are made from the classes the schema holds, not counted here)."""
    import clipood.config.settings as settings
    import clipood.crops.sampling as sampling
    import clipood_recipes.configure as configure
    import clipood_recipes.settings  # noqa: F401  (imported first: the schema holds the unpatched classes)

    built: dict[str, int] = {}
    monkeypatch.setattr(configure, "_BUILT", {})  # nothing built by an earlier test in this process
    for module, name in ((settings, "TrainConfig"), (sampling, "CropConfig")):
        original = getattr(module, name)

        def post_init(self, _original=original, _name=name):
            built[_name] = built.get(_name, 0) + 1
            _original.__post_init__(self)

        monkeypatch.setattr(module, name, type(name, (original,), {"__post_init__": post_init}))
    return built


def test_a_default_recipe_run_checks_and_resolves_once(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("CLIPOOD_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("krnft_recipe_script", ROOT / "recipes" / "krnft.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    calls = _count_run_steps(monkeypatch)
    built = _count_builds(monkeypatch)
    out = tmp_path / "out"
    script.main([*SMALL, f"mini.root={tmp_path / 'worlds'}", f"output_dir={out}"])
    assert json.loads((out / "results.json").read_text())  # the run went through
    # the config: composed once (the preset stage and the command line on top are one pass over the layers)
    assert calls.pop("compose") == 2, "compose: the preset's stage, then the command line on top of it"
    assert calls == {"check_environment": 1, "check_locations": 1, "check_run_settings": 1, "resolve_defaults": 1,
                     "check_data": 1}
    # the checks when the config is composed and the training stage share one object of each
    assert built == {"TrainConfig": 1, "CropConfig": 1}


def test_composing_never_writes_into_the_given_layers_or_config():
    """Defaults are resolved on a copy: the dict ``finish`` is given keeps its ``None`` settings."""
    from clipood_recipes.configure import finish
    from clipood.config.compose import compose, to_dict
    from clipood_recipes.settings import TrainRunSettings

    from clipood.config.defaults import resolve_defaults

    composed = to_dict(compose(TrainRunSettings, []))
    before = json.dumps(composed, sort_keys=True)
    cfg = finish(composed)
    assert json.dumps(composed, sort_keys=True) == before
    assert resolve_defaults(composed)["negatives"]["num"] == 40
    assert json.dumps(composed, sort_keys=True) == before  # the resolution itself works on a copy
    assert composed["negatives"]["num"] is None and cfg["negatives"]["num"] == 40  # mini world: 40 negatives
    assert composed["eval"]["convention"] is None and cfg["eval"]["convention"] == "hendrycks"
    assert composed["adapter"]["options"] == {"hidden_dim": 32} and len(cfg["adapter"]["options"]) > 1


@pytest.mark.parametrize("argv,folder", [([], "outputs/krnft"), (["mini.seed=3"], None)])
def test_the_preset_stage_names_the_default_folder(argv, folder):
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import TrainRunSettings

    out = compose_settings(TrainRunSettings, argv, configs_dir=ROOT / "recipes" / "configs", recipe="krnft")["output_dir"]
    if folder:
        assert out == folder
    else:
        assert out.startswith("outputs/krnft-") and len(out) == len("outputs/krnft-") + 8
