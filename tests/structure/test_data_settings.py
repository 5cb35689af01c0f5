"""The data record (``clipood.config.records.DataSettings``) the recipe builds once and the core's data
functions take instead of the run config: every field comes from its config key, nothing is left behind."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest


def test_every_field_is_read_from_its_config_key(monkeypatch):
    from clipood.config.records import DataSettings
    from clipood.config.settings import MiniSettings

    monkeypatch.delenv("CLIPOOD_CACHE", raising=False)
    run = {"benchmark": "imagenet", "data_root": "d", "id_data": {"path": "i"}, "ood_data": {"o": {"path": "o"}},
           "new_class_suites": ["a"], "new_style_suites": ["b"], "classes": ["tench"],
           "mini": {"seed": 3}, "negatives": {"corpus": "w.txt"}, "cache_dir": "c", "losses": {"cls": 1.0},
           "train_data": {"path": "t"}, "train_classes": "subset", "model": "not data"}
    want = DataSettings(benchmark="imagenet", data_root="d", id_data={"path": "i"}, ood_data={"o": {"path": "o"}},
                        new_class_suites=["a"], new_style_suites=["b"], classes=["tench"], mini=MiniSettings(seed=3),
                        corpus="w.txt", cache_dir=Path("c"), training=True, train_data={"path": "t"},
                        train_classes="subset")
    got = DataSettings.from_config(run)
    assert got == want
    # each field differs from its default here, so a field from_config forgot would show above
    default = DataSettings()
    assert all(getattr(want, f.name) != getattr(default, f.name) for f in dataclasses.fields(DataSettings))


def test_a_zero_shot_config_does_not_train_and_the_record_is_read_only(monkeypatch, tmp_path):
    from clipood.config.records import DataSettings
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import ZeroShotSettings

    monkeypatch.setenv("CLIPOOD_CACHE", str(tmp_path))
    data = DataSettings.from_config(compose_settings(ZeroShotSettings, []))
    assert (data.benchmark, data.training, data.cache_dir, data.mini.seed) == ("mini", False, tmp_path, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.benchmark = "imagenet"
