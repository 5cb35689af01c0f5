"""The recipes' typed configs and the recipe matrix: every YAML, every registered adapter, a third-party one.

Config tests run in-process (no model is loaded); recipe runs are subprocesses on a tiny mini world with the
random-weight ``clipood-tiny`` backbone, 2 training steps each (a smoke test of the wiring, not of accuracy).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest
import yaml

import adapters
from clipood.errors import ClipoodError
from clipood_recipes.configure import compose_settings
from clipood_recipes.settings import RECIPE_SETTINGS, TrainRunSettings
from helpers import ROOT, run_script

CONFIGS = ROOT / "recipes" / "configs"
SCHEMAS = RECIPE_SETTINGS
YAMLS = sorted(CONFIGS.glob("*.yaml"))


def settings(recipe: str, *args: str) -> dict:
    return compose_settings(SCHEMAS[recipe], list(args), configs_dir=CONFIGS, recipe=recipe)


def _leaf_keys(schema: type, prefix: str = "") -> set[str]:
    """Every leaf key a schema defines (free-form Dict fields count as one leaf)."""
    import typing

    out = set()
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


def _has(d: dict, dotted: str) -> bool:
    *parents, last = dotted.split(".")
    for p in parents:
        if not isinstance(d, dict) or p not in d:
            return False
        d = d[p]
    return isinstance(d, dict) and last in d


# ------------------------------------------------------------------------------------------------ the YAMLs
@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_every_yaml_loads_validates_and_is_complete(path):
    recipe = path.stem.split("_")[0]
    if recipe not in SCHEMAS:  # an adapter's own run file (docs/adding-an-adapter.md): a KR-NFT run config
        assert settings("krnft", "--config", str(path))["adapter"]["name"]
        return
    schema = SCHEMAS[recipe]
    cfg = settings(recipe, "--config", str(path))
    data = yaml.safe_load(path.read_text())
    missing = {k for k in _leaf_keys(schema) if not _has(data, k)}
    assert not missing, f"{path.name} does not carry {sorted(missing)}"
    assert data["preset"] == path.stem[len(recipe) + 1:]
    assert settings(recipe, f"preset={data['preset']}") == cfg  # preset=NAME is the same file
    if recipe in ("ablation", "compare"):
        from clipood_recipes.configure import compose_variant

        for name, overrides in cfg["variants"].items():  # every variant composes and validates too
            v = compose_variant(TrainRunSettings, cfg, {**overrides, "method_name": name}, f"variant '{name}'")
            assert v["adapter"]["name"] == overrides["adapter"]["name"] and v["losses"]["kr"] == overrides["losses"]["kr"]


@pytest.mark.parametrize("recipe", ["krnft", "zeroshot"])
def test_mini_yaml_is_the_default_run(recipe):
    assert settings(recipe) == settings(recipe, "--config", str(CONFIGS / f"{recipe}_mini.yaml"))


def test_default_run_values_match_the_documented_setting():
    """The values README and the recipe docstring describe for the default run (hand-written here)."""
    cfg = settings("krnft")
    assert cfg["adapter"] == {"name": "nft", "options": {"conditional": True, "distribution_aware": True,
                                                         "mode": "shared", "hidden_dim": 32}}
    assert cfg["losses"] == {"cls": 1.0, "ood": 0.3, "kr": 1000.0, "kr_logit": 0.0, "kr_prob": 0.0}
    assert (cfg["shots"], cfg["crops"]["num_crops"], cfg["crops"]["num_selected"]) == (4, 32, 8)
    assert {k: cfg["train"][k] for k in ("epochs", "batch_size", "lr", "weight_decay", "schedule")} == \
        {"epochs": 30, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine"}
    assert cfg["negatives"]["num"] == 40 and cfg["eval"]["mcm"] is False and cfg["method_name"] == "KR-NFT"


def test_presets_hold_the_paper_and_released_code_values():
    paper, official = settings("krnft", "preset=paper"), settings("krnft", "preset=official")
    assert (paper["crops"]["num_crops"], paper["crops"]["color_jitter"], paper["losses"]["kr"],
            paper["negatives"]["num"], paper["train"]["lr"]) == (256, True, 100.0, 10000, 1e-5)
    assert (official["crops"]["num_crops"], official["crops"]["color_jitter"], official["losses"]["kr"],
            official["negatives"]["num"], official["cls_groups"], official["ood_groups"],
            official["train"]["condition"], official["train"]["max_steps"]) == \
        (128, False, 10.0, 10500, 10, 10, "top_crop", 1200)


# ------------------------------------------------------------------------------------------- overrides
def test_choosing_another_adapter_resets_its_options():
    from adapters.taskres import TaskResConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TaskResConfig)}
    assert settings("krnft", "adapter.name=taskres")["adapter"]["options"] == defaults  # no leaked hidden_dim
    cfg = settings("krnft", "adapter.options=null", "adapter.options.mu=1", "adapter.name=taskres")
    assert cfg["adapter"]["options"] == {**defaults, "mu": 1}
    assert settings("krnft", "adapter.name=nft")["adapter"]["options"]["hidden_dim"] == 32  # same adapter: kept
    assert settings("krnft", "adapter.options=null")["adapter"]["options"]["hidden_dim"] == 64  # NFT's default


def test_empty_options_in_a_yaml_file_clear_them(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("preset: mini\nadapter: {name: nft, options: {}}\nlosses: {kr: 5}\n")
    cfg = settings("krnft", "--config", str(f))
    assert cfg["adapter"]["options"]["hidden_dim"] == 64 and cfg["losses"]["kr"] == 5.0
    assert cfg["crops"]["num_crops"] == 32  # the rest is the preset's


@pytest.mark.parametrize("args, needles", [
    (["crops.num_crop=3"], ["unknown config key 'crops.num_crop'", "did you mean 'crops.num_crops'?"]),
    (["shots=four"], ["config key 'shots'", "'four'", "expected int"]),
    (["crops.flip=maybe"], ["config key 'crops.flip'", "expected bool"]),
    (["eval=3"], ["'eval'", "is a section"]),
    (["variants.x=1"], ["unknown config key 'variants.x'"]),
])
def test_wrong_keys_and_types_are_named(args, needles):
    with pytest.raises(ClipoodError) as e:
        settings("krnft", *args)
    msg = str(e.value)
    assert all(n in msg for n in needles), msg


# The recipe is run with open_clip, datasets and the mini-world builder made unimportable: a config error must
# come before any of them is needed (a structural check of "fails before expensive work"; how long it takes on
# a given machine is not asserted, shared machines are too noisy for that).
_NO_HEAVY = ("import runpy, sys\n"
             "for m in ('open_clip', 'datasets', 'clipood.mini.build', 'clipood.mini.world'):\n"
             "    sys.modules[m] = None\n"
             "sys.argv = sys.argv[1:]\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@pytest.mark.parametrize("arg, needle", [("train.lrr=1", "unknown config key 'train.lrr'"),
                                         ("train.epochs=many", "config key 'train.epochs'")])
def test_bad_config_fails_before_any_model_or_world_is_touched(arg, needle, tmp_path):
    r = run_script(["-c", _NO_HEAVY, "recipes/krnft.py", arg, f"output_dir={tmp_path / 'out'}"])
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_the_no_heavy_import_guard_can_fail(tmp_path):
    """The guard above is real: a valid run under it stops with an error about the blocked import."""
    r = run_script(["-c", _NO_HEAVY, "recipes/krnft.py", "progress=false", f"output_dir={tmp_path / 'out'}"])
    assert r.returncode != 0 and ("open_clip" in r.stderr or "mini" in r.stderr or "datasets" in r.stderr), r.stderr


def test_help_prints_the_values_of_the_run():
    r = run_script(["recipes/krnft.py", "--help", "losses.kr=7"])
    assert r.returncode == 0, r.stderr
    body = r.stdout.split("Values of this run")[1].split("\n", 2)[2].split("\nPresets")[0]
    shown = yaml.safe_load(body)
    want = settings("krnft", "losses.kr=7")
    assert json.loads(json.dumps(shown)) == json.loads(json.dumps(want))
    assert "λ2, weight of L_kr" in r.stdout and "official" in r.stdout.split("\nPresets")[1]


# ---------------------------------------------------------------------------------------- recipe matrix
SMALL = ["model=clipood-tiny", "cpu=true", "progress=false", "eval.plots=false", "crops.num_crops=8",
         "crops.num_selected=2", "mini.train_per_class=4", "mini.test_per_class=6", "mini.ood_per_set=12",
         "mini.style_per_class=4", "train.max_steps=2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from clipood.mini.build import MiniWorldConfig, build_world

    base = tmp_path_factory.mktemp("recipes")
    build_world(MiniWorldConfig(seed=0, train_per_class=4, test_per_class=6, ood_per_set=12, style_per_class=4),
                root=base / "worlds", progress=False)
    return base


def recipe_run(world, out, *extra, env=None):
    return run_script(["recipes/krnft.py", *SMALL, f"mini.root={world / 'worlds'}", f"cache_dir={world / 'cache'}",
                       f"output_dir={out}", *extra], env_extra=env, timeout=600)


def _check_trained_and_evaluated(out, method: str):
    rows = json.loads((out / "results.json").read_text())
    got = {(r["method"], r["split"]) for r in rows if r["dataset"] == "average"}
    assert (method, "base") in got and (method, "new_style") in got, sorted(got)
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    return rows, saved


@pytest.mark.parametrize("name", adapters.list_adapters())
def test_every_registered_adapter_trains_and_evaluates(name, world):
    out = world / f"run-{name}"
    r = recipe_run(world, out, f"adapter.name={name}")
    assert r.returncode == 0, r.stderr[-3000:]
    rows, saved = _check_trained_and_evaluated(out, adapters.display_name(name))  # one naming everywhere
    assert saved["adapter"] == name
    config = json.loads((out / "config.json").read_text())
    spec = adapters.get_adapter_spec(name)
    assert set(config["adapter"]["options"]) == {f.name for f in dataclasses.fields(spec.config_cls)}


def test_third_party_adapter_from_an_entry_point_trains_through_the_recipe(world, tmp_path):
    """One new module + one YAML: the plugin comes in through the ``clipood.adapters`` entry-point group of
    an installed distribution (its ``*.dist-info`` on sys.path, as pip writes it)."""
    from test_adapter_discovery import PLUGIN

    (tmp_path / "clipood_shift_plugin.py").write_text(PLUGIN.replace("{register}", ""))
    info = tmp_path / "clipood_shift_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clipood-shift-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clipood.adapters]\nshift = clipood_shift_plugin:Shift\n")
    run_yaml = tmp_path / "shift.yaml"
    run_yaml.write_text("preset: mini\nmethod_name: Shift+KR\nadapter: {name: shift, options: {init: 0.0}}\n")
    out = tmp_path / "out"
    r = recipe_run(world, out, "--config", str(run_yaml),
                   env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])})
    assert r.returncode == 0, r.stderr[-3000:]
    rows, saved = _check_trained_and_evaluated(out, "Shift+KR")
    assert saved["adapter"] == "shift" and saved["config"] == {"init": 0.0}
    new_class = [r_ for r_ in rows if r_["method"] == "Shift+KR" and r_["split"] == "new_class"]
    assert new_class  # a shared shift moves to the unseen classes' labels


# ------------------------------------------------------------------------------------- official objective
def test_official_preset_trains_with_the_10_group_ood_loss():
    """preset=official → the training task's L_ood is grouped Eq. 8 over 10 groups (released trainer: drop the
    M mod G last negatives, permute the rest with seed 0, G equal groups), computed here by hand in float64."""
    import torch
    import torch.nn.functional as F

    from clipood_recipes.methods import training_task

    cfg = settings("krnft", "preset=official")
    assert (cfg["ood_groups"], cfg["cls_groups"], cfg["seed"]) == (10, 10, 0)
    g = torch.Generator().manual_seed(3)
    N, M, D = 4, 43, 16                                        # 43 = 4·10 + 3: three negatives are dropped
    C = F.normalize(torch.randn(N + M, D, generator=g), dim=-1)
    a = cfg["adapter"]
    torch.manual_seed(0)
    task = training_task(cfg, adapters.build_adapter(a["name"], C, N, **a["options"]))
    neg = F.normalize(torch.randn(6, D, generator=g), dim=-1)
    batch = {"id_features": F.normalize(torch.randn(5, D, generator=g), dim=-1),
             "id_labels": torch.tensor([0, 1, 2, 3, 0]), "neg_features": neg}
    out = task(batch)
    with torch.no_grad():
        logits = 100.0 * task.adapter({"image_features": neg}).logits.double()  # B×K, as the task scales them
    kept = M - M % 10
    perm = torch.randperm(kept, generator=torch.Generator().manual_seed(0)).view(10, -1)
    e = logits.exp() if logits.abs().max() < 700 else None
    assert e is not None
    id_mass = e[:, :N].sum(1)
    per_group = [torch.log(id_mass / (id_mass + e[:, N:][:, grp].sum(1))) for grp in perm]   # Eq. 8 on [ID | g]
    want = torch.stack(per_group).mean()
    assert float(out["ood_loss"]) == pytest.approx(float(want), abs=1e-5)
    ungrouped = torch.log(id_mass / e.sum(1)).mean()
    assert abs(float(ungrouped) - float(want)) > 1e-3  # the grouping matters on these inputs


# -------------------------------------------------------------------------------------------- structure
LIBRARY = sorted(p for d in ("clipood", "adapters", "clipood_recipes") for p in (ROOT / d).rglob("*.py"))


def test_no_library_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in LIBRARY if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
