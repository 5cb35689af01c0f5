"""Bad inputs fail with one actionable line (issue "Reliability", bad-input half).

Every case checks the exception type (``ClipoodError``, a ``ValueError``), that the message names the file or
value and says what to do, and — for recipes and the CLI — exit status 2 with exactly one ``error:`` line on
stderr and no traceback. Also: atomic writes and an interrupted mini-world build leave nothing half-written.
"""
from __future__ import annotations

import logging
import os
import pathlib
import time

import numpy as np
import pytest
import torch

from clipood.errors import ClipoodError
from helpers import make_image_folder, run_script

RGB = {"red": (220, 30, 30), "green": (30, 200, 30)}


# ------------------------------------------------------------------------------------------------ helpers
def user_error(excinfo, *needles: str) -> str:
    """The message of a raised ClipoodError: one line that contains every needle."""
    e = excinfo.value
    assert type(e) is ClipoodError or isinstance(e, ClipoodError), type(e)
    assert isinstance(e, ValueError)
    msg = str(e)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def cli_error(r, *needles: str) -> str:
    """Exit status 2, stderr is exactly one ``error: ...`` line (no traceback, no other noise)."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def isolated(tmp_path) -> dict:
    """Environment for subprocesses: caches and data under tmp_path, never in the user's home."""
    return {"CLIPOOD_CACHE": str(tmp_path / "cache"), "CLIPOOD_DATA": str(tmp_path / "data")}


def truncate(path: pathlib.Path) -> pathlib.Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _settings(args=()):
    """The KR-NFT recipe's config for ``args``, composed and checked as the recipe does (in-process)."""
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import TrainRunSettings

    from helpers import ROOT

    return compose_settings(TrainRunSettings, list(args), configs_dir=ROOT / "recipes" / "configs", recipe="krnft")


# -------------------------------------------------------------------------------------- data root / folders
def test_missing_folder_without_data_root_names_every_way_to_set_it(tmp_path, monkeypatch):
    from clipood.datasets.dataset import build_dataset

    monkeypatch.delenv("CLIPOOD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ClipoodError) as e:
        build_dataset({"path": "imagenet/val"})
    user_error(e, str(tmp_path / "imagenet" / "val"), "data_root=", "CLIPOOD_DATA", "current folder")


def test_missing_data_root_cli_is_one_line(tmp_path):
    r = run_script(["-m", "clipood_recipes.cli", "eval", "model=clipood-tiny", "benchmark=imagenet", "progress=false",
                    f"output_dir={tmp_path / 'out'}"], env_extra={**isolated(tmp_path), "CLIPOOD_DATA": ""})
    cli_error(r, "the current folder", "data_root=", "CLIPOOD_DATA")
    assert not (tmp_path / "out").exists()


def test_missing_dataset_folder_names_the_resolved_path(tmp_path):
    from clipood.datasets.dataset import build_dataset

    with pytest.raises(ClipoodError) as e:
        build_dataset({"path": "imagenet/val"}, root=tmp_path)
    user_error(e, "image folder not found", str(tmp_path / "imagenet" / "val"), "data root")
    with pytest.raises(ClipoodError) as e:
        build_dataset({"path": "x"}, root=tmp_path / "nowhere")
    user_error(e, str(tmp_path / "nowhere"), "is not a folder", "create it or fix data_root")


def test_class_folder_without_images(tmp_path):
    from clipood.datasets.dataset import build_dataset

    make_image_folder(tmp_path / "id", {"red": RGB["red"]}, n=2, size=16)
    (tmp_path / "id" / "blue").mkdir()
    (tmp_path / "id" / "blue" / "notes.txt").write_text("not an image")
    with pytest.raises(ClipoodError) as e:
        build_dataset(str(tmp_path / "id"))
    user_error(e, "no images", str(tmp_path / "id" / "blue"), "add images or remove them")


# ------------------------------------------------------------------------------------------ corrupt images
def test_truncated_image_fails_naming_the_file(tmp_path):
    from clipood.datasets.dataset import build_dataset

    make_image_folder(tmp_path / "id", RGB, n=3, size=32)
    bad = truncate(tmp_path / "id" / "green" / "green_1.png")
    ds = build_dataset(str(tmp_path / "id"))  # default on_corrupt="error": found when read
    index = [str(p) for p, _ in ds.samples].index(str(bad))
    assert ds[0][1] == 0  # good images still load
    with pytest.raises(ClipoodError) as e:
        ds[index]
    user_error(e, "cannot read image", str(bad), "fix or delete the file", "on_corrupt='skip'")


def test_corrupt_image_skip_mode_warns_and_counts(tmp_path, caplog):
    from clipood.datasets.dataset import build_dataset

    make_image_folder(tmp_path / "id", RGB, n=3, size=32)
    bad1 = truncate(tmp_path / "id" / "red" / "red_0.png")
    bad2 = tmp_path / "id" / "green" / "green_9.png"
    bad2.write_bytes(b"this is not a png")
    with caplog.at_level(logging.WARNING, logger="clipood.datasets.dataset"):
        ds = build_dataset(str(tmp_path / "id"), on_corrupt="skip")
    assert ds.skipped == 2 and len(ds) == 5  # 6 good PNGs + 1 garbage file, 2 unreadable
    assert sorted(ds.skipped_items) == sorted([str(bad1), str(bad2)])
    text = caplog.text
    assert str(bad1) in text and str(bad2) in text and "skipped 2 unreadable image(s)" in text
    assert all(ds[i] is not None for i in range(len(ds)))


def test_corrupt_image_in_cli_eval_is_one_line(tmp_path):
    make_image_folder(tmp_path / "id", RGB, n=2, size=32)
    make_image_folder(tmp_path / "ood", {"x": (30, 30, 220)}, n=2, size=32, pseudo=True)
    bad = truncate(tmp_path / "id" / "red" / "red_1.png")
    words = tmp_path / "words.txt"
    words.write_text("apple\tnoun\nriver\tnoun\nstone\tnoun\nshiny\tadj\nbright\tadj\n")
    r = run_script(["-m", "clipood_recipes.cli", "eval", "model=clipood-tiny", "benchmark=custom",
                    f"id_data.path={tmp_path / 'id'}", f"ood_data.a.path={tmp_path / 'ood'}",
                    f"negatives.corpus={words}", "negatives.num=2", f"cache_dir={tmp_path / 'cache'}",
                    f"output_dir={tmp_path / 'out'}", "progress=false"], env_extra=isolated(tmp_path))
    cli_error(r, "cannot read image", str(bad), "on_corrupt='skip'")


# ------------------------------------------------------------------------------------ lists and label files
def test_image_list_line_that_does_not_parse_names_file_and_line(tmp_path):
    from clipood.datasets.dataset import build_dataset

    make_image_folder(tmp_path / "imgs", {"a": RGB["red"]}, n=2, size=16)
    lst = tmp_path / "test.txt"
    lst.write_text("# comment\na/a_0.png 0\na/a_1.png zero\n")
    with pytest.raises(ClipoodError) as e:
        build_dataset({"root": str(tmp_path / "imgs"), "list_file": str(lst)})
    user_error(e, f"{lst}:3", "'a/a_1.png zero'", "expected '<relative/path> <integer label>'")


@pytest.mark.parametrize("text, needles", [
    ("cat\ndog\nCat\n", [":3:", "duplicate class name 'Cat'", "first on line 1", "make names unique"]),
    ("cat\n\ndog\n", [":2:", "blank line", "remove it"]),
])
def test_label_file_with_duplicates_or_blank_lines(tmp_path, text, needles):
    from clipood.labels.prompts import load_label_file

    f = tmp_path / "labels.txt"
    f.write_text(text)
    with pytest.raises(ClipoodError) as e:
        load_label_file(f)
    user_error(e, str(f), *needles)


# ------------------------------------------------------------------------------------- adapter checkpoints
@pytest.mark.parametrize("shape", [(6, 8), (5, 9)], ids=["class-count", "feature-dim"])
def test_adapter_checkpoint_with_other_text_features(tmp_path, shape):
    import adapters

    torch.manual_seed(0)
    a = adapters.NFT(torch.randn(5, 8), 2, hidden_dim=4)
    adapters.save_adapter(a, tmp_path / "ad")
    with pytest.raises(ClipoodError) as e:
        adapters.load_adapter(tmp_path / "ad", text_features=torch.randn(*shape))
    user_error(e, f"shape {shape}", str(tmp_path / "ad" / "adapter_config.json"), "(5, 8)",
               "pass the base text features used in training")


def test_adapter_weights_from_another_run(tmp_path):
    import json

    import adapters

    C = torch.randn(5, 8)
    adapters.save_adapter(adapters.NFT(C, 2, hidden_dim=4), tmp_path / "ad")
    cfg = tmp_path / "ad" / "adapter_config.json"
    meta = json.loads(cfg.read_text())
    meta["config"]["hidden_dim"] = 6
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ClipoodError) as e:
        adapters.load_adapter(tmp_path / "ad", text_features=C)
    user_error(e, str(tmp_path / "ad" / "adapter.safetensors"), "adapter expects",
               "the config and weights come from different runs")


# ------------------------------------------------------------------------------------ unknown names, typos
def test_unknown_adapter_score_and_option_suggest_the_closest():
    import adapters
    from clipood.scores import get_score

    C = torch.randn(5, 8)
    with pytest.raises(ClipoodError) as e:
        adapters.build_adapter("nfy", C, 2)
    user_error(e, "unknown adapter 'nfy'", "did you mean 'nft'?", "choose one of")
    with pytest.raises(ClipoodError) as e:
        adapters.build_adapter("nft", C, 2, hiden_dim=4)
    user_error(e, "unknown option 'hiden_dim'", "did you mean 'hidden_dim'?", "valid options")
    with pytest.raises(ClipoodError) as e:
        get_score("neglable")
    user_error(e, "unknown score 'neglable'", "did you mean 'neglabel'?")


@pytest.mark.parametrize("args, needles", [
    (["preset=papr"], ["unknown preset 'papr'", "did you mean 'paper'?", "choose one of"]),
    (["losses.kr2=1"], ["unknown config key 'losses.kr2'", "did you mean 'losses.kr'?"]),
    (["adapter.name=nfy"], ["unknown adapter 'nfy'", "did you mean 'nft'?"]),
    (["losses.kr=-1"], ["losses.kr", ">= 0", "-1"]),
    (["crops.num_selected=20"], ["num_selected Q=20", "P >= 40", "raise num_crops or lower num_selected"]),
    (["train.lr=0"], ["train.lr", "positive", "got 0"]),
    (["train.batch_size=0"], ["train.batch_size", ">= 1", "got 0"]),
], ids=["preset", "key", "adapter", "lambda", "Q>P", "lr", "batch"])
def test_krnft_recipe_rejects_bad_settings_before_any_work(tmp_path, args, needles):
    t = time.perf_counter()
    r = run_script(["recipes/krnft.py", "model=clipood-tiny", "progress=false", f"output_dir={tmp_path / 'out'}",
                    *args], env_extra=isolated(tmp_path))
    cli_error(r, *needles)
    # nothing was built, encoded or written
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    assert not (tmp_path / "data").exists()
    assert time.perf_counter() - t < 60


@pytest.mark.parametrize("args, needles", [
    (["train.lrr=0.1"], ["unknown config key 'train.lrr'", "did you mean 'train.lr'?"]),
    (["train.lr=fast"], ["config key 'train.lr'", "'fast'", "expected float"]),
    (["adapter.name=taskres", "adapter.options.hidden_dim=8"], ["'hidden_dim'", "TaskResConfig", "valid options"]),
    (["adapter.options.hiden_dim=8"], ["'hiden_dim'", "adapter.options", "did you mean 'hidden_dim'?"]),
    (["eval.score=neglable"], ["unknown score 'neglable'", "did you mean 'neglabel'?"]),
    (["eval.convention=opennood"], ["eval.convention", "did you mean 'openood'?"]),
    (["shots=-2"], ["shots=-2", "integer >= 1"]),
    (["crops.scale=[0.5, 2]"], ["scale=(0.5, 2.0)", "0 < min <= max <= 1"]),
], ids=["train-key", "train-type", "other-adapter-option", "adapter-option", "score", "convention", "shots", "scale"])
def test_training_config_is_checked_up_front(args, needles):
    """What the recipe checks before it loads a model or touches data (in-process, no subprocess)."""
    with pytest.raises(ClipoodError) as e:
        _settings(args)
    user_error(e, *needles)


def test_unknown_open_clip_model_suggests_the_closest():
    from clipood.clip.backbone import load_clip

    with pytest.raises(ClipoodError) as e:
        load_clip("ViT-B-61")
    user_error(e, "unknown open_clip model 'ViT-B-61'", "did you mean 'ViT-B-16'?")


# ------------------------------------------------------------------------------------ out-of-range values
def test_negative_lambda_is_rejected_by_method():
    import adapters
    from clipood.training.task import Method

    nft = adapters.NFT(torch.randn(5, 8), 2, hidden_dim=4)
    with pytest.raises(ClipoodError) as e:
        Method(nft, {"cls": 1.0, "ood": 0.3, "kr": -1})
    user_error(e, "'kr'", "losses.kr", "must be a number >= 0", "got -1")
    with pytest.raises(ClipoodError) as e:
        Method(nft, {"cls": 1.0, "kr": float("nan")})
    user_error(e, "losses.kr", "nan")
    with pytest.raises(ClipoodError) as e:
        Method(nft, {"cls": 0, "kr": 0})
    user_error(e, "every loss weight is 0", "losses.cls=1")


def test_more_selected_crops_than_half_the_crops():
    from clipood.crops.sampling import CropConfig

    with pytest.raises(ClipoodError) as e:
        CropConfig(num_crops=32, num_selected=17)
    user_error(e, "num_selected Q=17", "num_crops P >= 34", "got P=32", "raise num_crops or lower num_selected")


def test_more_shots_than_images():
    from clipood.datasets.fewshot import sample_few_shot

    with pytest.raises(ClipoodError) as e:
        sample_few_shot([0, 0, 0, 0, 1, 1], 4, classnames=["cat", "dog"])
    user_error(e, "class 'dog'", "has 2 images but shots=4", "lower shots")
    with pytest.raises(ClipoodError) as e:
        sample_few_shot([0, 1], -1)
    user_error(e, "shots=-1", "shots >= 1")


@pytest.mark.parametrize("kwargs, needles", [
    ({"lr": 0}, ["train.lr", "positive", "got 0"]),
    ({"lr": -1e-3}, ["train.lr", "got -0.001"]),
    ({"batch_size": 0}, ["train.batch_size", "integer >= 1", "got 0"]),
    ({"weight_decay": "1e-4x"}, ["train.weight_decay", ">= 0", "'1e-4x'"]),
])
def test_train_config_out_of_range(kwargs, needles):
    from clipood.config.settings import TrainConfig

    with pytest.raises(ClipoodError) as e:
        TrainConfig(**kwargs)
    user_error(e, *needles)


def test_scientific_notation_on_the_command_line_is_a_number():
    """YAML 1.1 reads ``1e-5`` as a string; the config turns it into the float the user meant."""
    from clipood.config.settings import TrainConfig

    cfg = _settings(["train.lr=1e-5", "train.weight_decay=5E-4"])
    assert (cfg["train"]["lr"], cfg["train"]["weight_decay"]) == (1e-5, 5e-4)
    assert TrainConfig(**cfg["train"]).lr == 1e-5


# ---------------------------------------------------------------------------------------- pretrained weights
def test_unreachable_pretrained_weights_fail_fast_with_the_fix(monkeypatch):
    import clipood
    from clipood.clip import backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbone, "_hf_cached_file", lambda cfg: None)  # as on a machine that never cached them
    t = time.perf_counter()
    with pytest.raises(ClipoodError) as e:
        clipood.load_clip("ViT-B-16", pretrained="openai")
    assert time.perf_counter() - t < 10
    user_error(e, "'ViT-B-16'", "'openai'", "HF_HUB_OFFLINE", "Fix:", "pretrained='/path/to/")


class _Payload:
    """A pickled object whose unpickling would create a marker file (it must never run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_checkpoint_is_refused_without_running_it(tmp_path):
    from clipood.clip.backbone import load_clip

    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    with pytest.raises(ClipoodError) as e:
        load_clip("clipood-tiny", pretrained=path)
    user_error(e, "refusing to load", str(path), "weights-only loading failed", "safetensors")
    assert not marker.exists()


def test_state_dict_of_the_wrong_shapes(tmp_path, tiny):
    from clipood.clip.backbone import load_clip

    sd = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    sd["positional_embedding"] = torch.zeros(78, sd["positional_embedding"].shape[1])
    path = tmp_path / "wrong.pt"
    torch.save(sd, path)
    with pytest.raises(ClipoodError) as e:
        load_clip("clipood-tiny", pretrained=path)
    msg = user_error(e, f"weights in {path} do not fit model 'clipood-tiny'", "positional_embedding", "(78, 64)",
                     "pass the matching model_name")
    # another model's file: a short summary instead of torch's list of 60 keys
    torch.save({"visual.conv1.weight": torch.zeros(3), "head.weight": torch.zeros(2)}, path)
    with pytest.raises(ClipoodError) as e:
        load_clip("clipood-tiny", pretrained=path)
    msg = user_error(e, "visual.conv1.weight (3,) vs (64, 3, 16, 16)", "61 missing key(s)", "in all)",
                     "1 unexpected key(s) (head.weight)")
    assert len(msg) < 600, msg


# ---------------------------------------------------------------------------------------- corrupt caches
def test_garbage_safetensors_names_the_file(tmp_path):
    from clipood.io import load_safetensors

    f = tmp_path / "feats.safetensors"
    f.write_bytes(os.urandom(64))
    with pytest.raises(ClipoodError) as e:
        load_safetensors(f)
    user_error(e, "corrupt safetensors file", str(f), "delete it and rerun")
    with pytest.raises(ClipoodError) as e:
        load_safetensors(tmp_path / "absent.safetensors")
    user_error(e, "file not found", str(tmp_path / "absent.safetensors"))


def test_garbage_feature_cache_is_rebuilt(tmp_path, tiny, caplog):
    from clipood.datasets.dataset import build_dataset
    from clipood.clip.image_features import extract_features
    from clipood.io import load_safetensors

    make_image_folder(tmp_path / "id", RGB, n=2, size=32)
    ds = build_dataset(str(tmp_path / "id"), transform=tiny.preprocess)
    cache = tmp_path / "cache"
    first = extract_features(tiny, ds, cache_dir=cache, progress=False)
    (f,) = cache.glob("*.safetensors")
    f.write_bytes(b"\x00garbage" * 10)
    with caplog.at_level(logging.WARNING, logger="clipood"):
        again = extract_features(tiny, ds, cache_dir=cache, progress=False)
    assert "corrupt" in caplog.text and f.name in caplog.text
    assert torch.allclose(first["features"], again["features"]) and torch.equal(first["labels"], again["labels"])
    assert torch.allclose(load_safetensors(f)["features"], first["features"])  # replaced by a valid file
    assert sorted(p.name for p in cache.iterdir()) == [f.name]  # no temporary files left behind


# ------------------------------------------------------------------------------------- metrics and adapters
def test_ood_metrics_empty_or_nan_names_the_argument():
    from clipood.metrics import ood_metrics

    with pytest.raises(ValueError) as e:
        ood_metrics(np.array([]), np.array([0.1, 0.2]))
    user_error(e, "id_scores is empty", "at least one sample")
    with pytest.raises(ValueError) as e:
        ood_metrics(np.array([0.9, 0.8]), np.array([0.1, np.nan, np.nan]))
    user_error(e, "ood_scores contains 2 NaN values", "check the logits or features")
    with pytest.raises(ValueError) as e:
        ood_metrics(torch.tensor([[0.9, 0.8]]), torch.tensor([0.1]))
    user_error(e, "id_scores must be 1-D", "(1, 2)")


def test_nft_bad_num_id_or_text_features_name_the_value():
    import adapters

    with pytest.raises(ValueError) as e:
        adapters.NFT(torch.randn(5, 8), 7)
    user_error(e, "num_id=7", "K=5")
    with pytest.raises(ValueError) as e:
        adapters.NFT(torch.randn(8), 2)
    user_error(e, "text_features must be a K×D tensor", "(8,)")
    with pytest.raises(ValueError) as e:
        adapters.NFT(torch.randn(3, 8), 3)  # distribution-aware NFT without negative rows
    user_error(e, "num_id=3 equals K=3", "distribution_aware=False")


# ------------------------------------------------------------------------------------------------ config
def test_malformed_argument():
    with pytest.raises(ClipoodError) as e:
        _settings(["lr"])
    user_error(e, "'lr'", "use key=value")
    with pytest.raises(ClipoodError) as e:
        _settings(["=3"])
    user_error(e, "'=3'", "use key=value")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("seed: 1\nlosses:\n  kr: [1, 2\n  ood: 0.3\n")
    with pytest.raises(ClipoodError) as e:
        _settings(["--config", str(f)])
    user_error(e, str(f), "line 4", "not valid YAML")
    r = run_script(["recipes/krnft.py", "--config", str(f)], env_extra=isolated(tmp_path))
    cli_error(r, str(f), "line 4", "not valid YAML")


# ------------------------------------------------------------------------------------------- atomic writes
def test_atomic_write_keeps_the_old_file_when_the_block_raises(tmp_path):
    from clipood.io import atomic_write

    f = tmp_path / "results.json"
    f.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(f) as out:
            out.write("half of the new cont")
            raise RuntimeError("boom")
    assert f.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    with atomic_write(f, "wb") as out:
        out.write(b"new")
    assert f.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_interrupted_mini_world_build_leaves_nothing_and_a_rerun_completes(tmp_path, monkeypatch):
    from clipood.mini import build

    cfg = build.MiniWorldConfig(seed=5, image_size=16, train_per_class=1, test_per_class=1, ood_per_set=1,
                                style_per_class=1, distractor_nouns=5, distractor_adjectives=5)
    root = tmp_path / "mini"
    real_save = build._save
    saved = []

    def failing_save(arr, path):
        if len(saved) == 7:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the build
        real_save(arr, path)
        saved.append(path)

    monkeypatch.setattr(build, "_save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        build.build_world(cfg, root=root, progress=False)
    assert len(saved) == 7
    assert list(root.iterdir()) == []  # no final folder, no temporary folder
    monkeypatch.setattr(build, "_save", real_save)

    # a partial folder under the final name (e.g. from an older version that crashed) is replaced too
    (root / cfg.key() / "base" / "train").mkdir(parents=True)
    folder = build.build_world(cfg, root=root, progress=False)
    assert folder == root / cfg.key() and [p.name for p in root.iterdir()] == [cfg.key()]
    manifest = build.load_manifest(folder)
    for sub, n in manifest["counts"].items():
        assert len(list((folder / sub).glob("*.png"))) == n, sub
    assert sum(manifest["counts"].values()) == len(list(folder.rglob("*.png")))
