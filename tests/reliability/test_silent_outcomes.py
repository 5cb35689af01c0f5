"""Bad outcomes of issue 12, each with the right result or one clear line: 16-bit grayscale images, random
weights said in the results for any model, ``local-dir:`` folders without weights, default output folders that
keep the README's commands apart, and a configuration-conflict message that lists every differing key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import ROOT, make_image_folder
from PIL import Image

from clipood.errors import ClipoodError

CONFIGS = ROOT / "recipes" / "configs"


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    from clipood.datasets.dataset import build_dataset

    a = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472: a full 16-bit ramp
    (tmp_path / "c").mkdir()
    Image.fromarray(a).save(tmp_path / "c" / "g.png")
    assert Image.open(tmp_path / "c" / "g.png").mode.startswith("I")
    rgb = np.asarray(build_dataset({"type": "imagefolder", "path": str(tmp_path)}).load_image(0))
    expected = np.rint(a.astype(np.float64) * 255 / 65535).astype(np.uint8)  # by hand
    assert rgb.shape == (32, 32, 3) and np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert (rgb == 255).mean() < 0.01  # PIL's own convert("RGB") gives 99.6 % white here
    Image.fromarray((a // 257).astype(np.uint8)).save(tmp_path / "c" / "g8.png")  # 8-bit stays as it is
    assert np.array_equal(np.asarray(build_dataset({"type": "imagefolder", "path": str(tmp_path)}).load_image(1))[..., 0],
                          (a // 257).astype(np.uint8))


def test_random_weights_are_said_in_the_results_for_any_model(tmp_path, monkeypatch):
    import clipood.clip.backbone
    from clipood.config.records import DataSettings
    from clipood.evaluation.benchmark import setup_benchmark
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import ZeroShotSettings

    make_image_folder(tmp_path / "id", {"a": (200, 0, 0), "b": (0, 200, 0)}, n=2)
    make_image_folder(tmp_path / "ood", {"x": (0, 0, 200)}, n=2, pseudo=True)
    cfg = compose_settings(ZeroShotSettings, ["model=ViT-B-32", "benchmark=custom", f"id_data.path={tmp_path / 'id'}",
                                              f"ood_data.o.path={tmp_path / 'ood'}"])
    fake = SimpleNamespace(identifier="ViT-B-32|random:0123456789abcdef")
    monkeypatch.setattr(clipood.clip.backbone, "load_clip", lambda *a, **k: fake)
    data = DataSettings.from_config(cfg)
    bench = setup_benchmark(data, SimpleNamespace(device="cpu", is_main_process=True), model=cfg["model"])
    assert any("ViT-B-32 has random weights" in n for n in bench.notes), bench.notes
    fake.identifier = "ViT-B-32|openai"
    assert not any("random weights" in n
                   for n in setup_benchmark(data, SimpleNamespace(device="cpu"), model=cfg["model"]).notes)


def test_local_dir_without_weights_is_refused(tmp_path):
    from clipood import load_clip

    d = tmp_path / "dir"
    d.mkdir()
    cfg = json.loads((Path(__import__("clipood.clip.backbone").clip.backbone._CONFIG_DIR) / "clipood-tiny.json").read_text())
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    for kwargs in ({"model_name": f"local-dir:{d}"}, {"model_name": "clipood-tiny", "pretrained": f"local-dir:{d}"}):
        with pytest.raises(ClipoodError, match=r"holds no weights.*open_clip_model.safetensors"):
            load_clip(**kwargs)


def test_pretrained_local_dir_loads_into_the_named_model(tmp_path):
    import torch
    from safetensors.torch import save_file

    from clipood import load_clip

    tiny = load_clip("clipood-tiny")
    d = tmp_path / "dir"
    d.mkdir()
    cfg = json.loads((Path(__import__("clipood.clip.backbone").clip.backbone._CONFIG_DIR) / "clipood-tiny.json").read_text())
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    b = load_clip("clipood-tiny", pretrained=f"local-dir:{d}")
    assert torch.allclose(b.encode_images(x), tiny.encode_images(x), atol=1e-6) and "random" not in b.identifier
    with pytest.raises(ClipoodError, match="do not fit model 'clipood-mini'"):
        load_clip("clipood-mini", pretrained=f"local-dir:{d}")


@pytest.mark.parametrize("recipe,schema", [("krnft", "TrainRunSettings"), ("zeroshot", "ZeroShotSettings")])
def test_default_output_dir_differs_per_setting(recipe, schema):
    import clipood_recipes.settings as settings
    from clipood_recipes.configure import compose_settings, presets

    def out(*argv):
        return compose_settings(getattr(settings, schema), list(argv), configs_dir=CONFIGS, recipe=recipe)["output_dir"]

    dirs = {name: out(f"preset={name}") for name in presets(CONFIGS, recipe)}
    assert len(set(dirs.values())) == len(dirs), dirs  # every preset its own folder
    assert out() == dirs["mini"] if "mini" in dirs else True
    assert out("mini.seed=1") != out() and out("mini.seed=1") == out("mini.seed=1") != out("mini.seed=2")
    assert out("data_root=/elsewhere", "progress=false") == out()  # locations and reporting do not count
    assert out("mini.seed=1", "output_dir=mine") == "mine"


def test_readme_commands_in_order_give_the_data_error_not_a_conflict(tmp_path):
    """quick-start (its checkpoints in outputs/krnft), then ``preset=paper data_root=...`` in the same folder."""
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.krnft import run_signature
    from clipood_recipes.settings import TrainRunSettings

    quick = compose_settings(TrainRunSettings, [], configs_dir=CONFIGS, recipe="krnft")
    for out in (quick["output_dir"], "outputs/krnft-paper"):  # a quick-start checkpoint in both candidate folders
        step = tmp_path / out / "checkpoints" / "step-00000150"
        step.mkdir(parents=True)
        for f in ("adapter.safetensors", "optimizer.safetensors", "optimizer.json"):
            (step / f).write_text("{}")
        (step / "trainer_state.json").write_text(json.dumps({"signature": json.loads(json.dumps(run_signature(quick)))}))
    (tmp_path / "outputs" / "krnft-paper" / "checkpoints").rename(tmp_path / "other-checkpoints")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "CLIPOOD_THREADS": "1"}
    (tmp_path / "data").mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "recipes" / "krnft.py"), "preset=paper", f"data_root={tmp_path / 'data'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and err[0].startswith("error:") and "another configuration" not in r.stderr, r.stderr[-2000:]
    assert "imagenet" in r.stderr and "missing" in r.stderr and "Traceback" not in r.stderr, err
    # the same folder with another setting: every differing key is named, and both ways out
    r = subprocess.run([sys.executable, str(ROOT / "recipes" / "krnft.py"), "preset=paper", "output_dir=outputs/krnft",
                        f"data_root={tmp_path / 'data'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "another configuration" in err[0]
    named = err[0].split("differs in: ")[1].split(")")[0].split(", ")
    assert len(named) > 6 and "losses.kr" in named and "output_dir" in err[0] and "resume=false" in err[0]
