"""The run signature is generated from the schema: for every key that decides the weights a changed value refuses
the resume, every key said not to count resumes, and the folders a run trains from count by content."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from helpers import ROOT

from clipood.config.compose import get
from clipood.errors import ClipoodError

CONFIGS = ROOT / "recipes" / "configs"


def _set(cfg: dict, dotted: str, value) -> None:
    node = cfg
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def _changed(value):
    """Another value of the same kind (validity does not matter: only the signature is compared)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-changed"
    if value is None:
        return "set"
    if isinstance(value, (list, tuple)):
        return [*value, "extra"]
    if isinstance(value, dict):
        return {**value, "changed": 1}
    raise AssertionError(f"no changed value for {value!r}")


def _checkpoint(out: Path, signature: dict) -> Path:
    step = out / "checkpoints" / "step-000010"
    step.mkdir(parents=True)
    for f in ("adapter.safetensors", "optimizer.safetensors", "optimizer.json"):
        (step / f).write_text("{}")
    (step / "trainer_state.json").write_text(json.dumps({"step": 10, "signature": json.loads(json.dumps(signature))}))
    return step


def _adapter_folder(path: Path, weights: bytes = b"w1", name: str = "coop") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"adapter": name}))
    (path / "adapter.safetensors").write_bytes(weights)
    return path


@pytest.fixture(scope="module")
def base_cfg():
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import TrainRunSettings

    return compose_settings(TrainRunSettings, [], configs_dir=CONFIGS, recipe="krnft")


def _schema_keys():
    from clipood_recipes.settings import TrainRunSettings
    from clipood_recipes.signature import NOT_WEIGHTS, _leaves, weight_keys

    leaves = _leaves(TrainRunSettings)
    return weight_keys(TrainRunSettings), [k for k in leaves if k in NOT_WEIGHTS]


WEIGHT_KEYS, FREE_KEYS = _schema_keys()


@pytest.mark.parametrize("key", WEIGHT_KEYS)
def test_a_changed_weight_key_refuses_the_resume(key, base_cfg, tmp_path):
    from clipood_recipes.signature import CONTENT_KEYS, check_resume, run_signature

    out = tmp_path / "run"
    _checkpoint(out, run_signature(base_cfg))
    cfg = copy.deepcopy(base_cfg)
    if key in CONTENT_KEYS:  # a folder trained from: set to a saved adapter elsewhere
        _set(cfg, key, str(_adapter_folder(tmp_path / "elsewhere" / "adapter")))
    else:
        _set(cfg, key, _changed(get(cfg, key)))
    with pytest.raises(ClipoodError, match="another configuration") as e:
        check_resume(cfg, str(out))
    assert key in str(e.value).split("differs in: ")[1]


@pytest.mark.parametrize("key", FREE_KEYS)
def test_a_key_that_does_not_decide_the_weights_resumes(key, base_cfg, tmp_path):
    from clipood.training.checkpoints import check_resumable
    from clipood_recipes.signature import run_signature

    out = tmp_path / "run"
    ck = _checkpoint(out, run_signature(base_cfg))
    cfg = copy.deepcopy(base_cfg)
    _set(cfg, key, _changed(get(cfg, key)))
    assert check_resumable(out, run_signature(cfg)) == ck


def test_the_schema_split_covers_every_key_and_names_the_known_ones():
    """Every leaf is either signed or has a reason; the keys the red team found unsigned are signed now."""
    from clipood_recipes.settings import TrainRunSettings
    from clipood_recipes.signature import _leaves

    assert sorted(WEIGHT_KEYS + FREE_KEYS) == sorted(_leaves(TrainRunSettings))
    for key in ("eval.logit_scale", "base_checkpoint", "init_adapter", "losses.kr", "adapter.options", "model",
                "crops.num_crops", "train.lr", "id_data", "classes", "negatives.id_template"):
        assert key in WEIGHT_KEYS, key
    assert len(WEIGHT_KEYS) >= 45


def test_eval_logit_scale_changes_the_signature(base_cfg, tmp_path):
    """Bad outcome: eval.logit_scale feeds L_cls but a run with another value resumed the old checkpoint."""
    from clipood_recipes.signature import check_resume, run_signature

    out = tmp_path / "run"
    _checkpoint(out, run_signature(base_cfg))
    cfg = copy.deepcopy(base_cfg)
    cfg["eval"]["logit_scale"] = 50.0
    with pytest.raises(ClipoodError, match=r"differs in: eval\.logit_scale\)"):
        check_resume(cfg, str(out))


@pytest.mark.parametrize("key", ["base_checkpoint", "init_adapter"])
def test_a_retrained_folder_refuses_and_a_moved_one_resumes(key, base_cfg, tmp_path):
    """Bad outcome: the signature held base_checkpoint as a path, so a retrained base resumed a tuner trained
    on the old one. Now the folder counts by content: retrained → refused, moved (same bytes) → resumed."""
    from clipood.training.checkpoints import check_resumable
    from clipood_recipes.signature import check_resume, run_signature

    src = _adapter_folder(tmp_path / "base-run" / "adapter", b"old weights")
    cfg = copy.deepcopy(base_cfg)
    cfg[key] = str(src.parent if key == "base_checkpoint" else src)
    out = tmp_path / "run"
    ck = _checkpoint(out, run_signature(cfg))
    moved = tmp_path / "moved" / "base-run"
    moved.parent.mkdir()
    src.parent.rename(moved)
    cfg2 = copy.deepcopy(cfg)
    cfg2[key] = str(moved if key == "base_checkpoint" else moved / "adapter")
    assert check_resumable(out, run_signature(cfg2)) == ck
    (moved / "adapter" / "adapter.safetensors").write_bytes(b"retrained weights")
    with pytest.raises(ClipoodError, match=f"differs in: {key}.sha256"):
        check_resume(cfg2, str(out))


@pytest.mark.parametrize("where", ["equal", "inside", "holds"])
def test_output_dir_at_the_base_run_is_refused_even_with_resume_false(where, base_cfg, tmp_path):
    """Bad outcome: output_dir = base_checkpoint with resume=false overwrote the base run's results, detector,
    checkpoints and adapter."""
    from clipood_recipes.signature import check_resume

    base_run = tmp_path / "locoop"
    _adapter_folder(base_run / "adapter")
    cfg = copy.deepcopy(base_cfg)
    cfg.update(resume=False, base_checkpoint=str(base_run if where != "holds" else base_run / "adapter"),
               output_dir=str({"equal": base_run, "inside": base_run / "sub", "holds": base_run}[where]))
    with pytest.raises(ClipoodError, match="would overwrite base_checkpoint"):
        check_resume(cfg)
    cfg["output_dir"] = str(tmp_path / "locoop-stacked")
    check_resume(cfg)  # a folder beside it is fine
