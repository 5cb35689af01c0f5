"""Hardening that needs a real run, a second process or a clock: an unwritable cache (warn, go on in memory,
same results), quiet logs, temporary files of killed writers cleaned on the next run, one run per output folder,
training time across a resume, the hub probe on a machine without network, WordNet-ID class folders, the
warm-up check against the run's length, and ``--help`` for every command."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, make_image_folder

from clipood.errors import ClipoodError


def _run(name: str, args: list[str]):
    import runpy

    return runpy.run_path(str(ROOT / "recipes" / f"{name}.py"), run_name="recipe_under_test")["main"](args)


def _dead_pid() -> int:
    """A process id that no running process has."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------------------------------------ caches, logs
def test_unwritable_cache_warns_once_goes_on_in_memory_and_logs_stay_quiet(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("CLIPOOD_THREADS", "1")
    make_image_folder(tmp_path / "id", {"red": (220, 20, 20), "green": (20, 200, 20)}, n=3, size=32)
    make_image_folder(tmp_path / "ood", {"x": (20, 20, 220)}, n=3, size=32, pseudo=True)
    (tmp_path / "words.txt").write_text("\n".join(["apple", "bridge", "cloud", "desk", "engine", "forest", "glass",
                                                   "hammer", "island", "jacket", "kettle", "ladder"]) + "\n")
    base = ["model=clipood-tiny", "benchmark=custom", f"id_data.path={tmp_path / 'id'}",
            f"ood_data.o.path={tmp_path / 'ood'}", f"negatives.corpus={tmp_path / 'words.txt'}", "negatives.num=4",
            "eval.plots=false", "progress=false"]

    def run(out: str, cache: str) -> tuple[list, str]:
        caplog.clear()
        _run("zeroshot", base + [f"output_dir={tmp_path / out}", f"cache_dir={cache}"])
        text = capsys.readouterr().err + "\n".join(r.getMessage() for r in caplog.records)
        return json.loads((tmp_path / out / "results.json").read_text()), text

    with caplog.at_level(logging.INFO, logger="clipood"):
        first, _ = run("a", str(tmp_path / "cache"))
        assert list((tmp_path / "cache" / "features").glob("*.safetensors"))  # the writable cache was written
        again, log2 = run("b", str(tmp_path / "cache"))  # every feature read from the cache
        assert again == first
        assert "cache hit" not in log2 and "read from" not in log2, log2  # no per-file cache-hit lines
        lines = [ln for ln in log2.splitlines() if ln.strip()]
        assert len(lines) == len(set(lines)), lines  # no line twice
        unwritable = "/proc/clipood-test-cache"  # a folder no one (root included) can create
        mem, log3 = run("c", unwritable)
    assert mem == first  # the same numbers, computed in memory
    warnings = [r for r in caplog.records if "cache not written" in r.getMessage()]
    assert len(warnings) == 1 and unwritable in warnings[0].getMessage(), [r.getMessage() for r in caplog.records]
    assert not Path(unwritable).exists()


# ------------------------------------------------------------------------------------------------ temp files
def test_temp_files_of_killed_writers_are_cleaned_on_the_next_run(tmp_path):
    from clipood.runtime.run_lock import claim_output_dir, release_output_dirs

    out, cache = tmp_path / "out", tmp_path / "cache"
    (cache / "features").mkdir(parents=True)
    (out / "checkpoints").mkdir(parents=True)
    # a writer killed (SIGKILL) inside atomic_write: its temporary file stays, the target is never created
    code = ("import sys, time; from clipood.io import atomic_write\n"
            "with atomic_write(sys.argv[1]) as f:\n    f.write('half'); f.flush(); print('writing', flush=True); "
            "time.sleep(60)\n")
    for target in (out / "results.json", cache / "features" / "k.safetensors"):
        p = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert p.stdout.readline().strip() == "writing"
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not target.exists()
    killed = sorted(str(p) for p in tmp_path.rglob("*.tmp"))
    assert len(killed) == 2
    dead = _dead_pid()
    ckpt = out / "checkpoints" / f".tmp-{dead}-abc123"  # a checkpoint folder being written at the kill
    ckpt.mkdir()
    (ckpt / "adapter.safetensors").write_bytes(b"partial")
    (out / f".detector.tmp-{dead}-q1w2e3").mkdir()
    live = cache / "features" / f".other.safetensors.{os.getpid()}-zz9.tmp"  # a live writer of another run
    live.write_bytes(b"being written")
    fresh = cache / "features" / f".new.safetensors.{dead}-yy8.tmp"  # too new to judge: left for now
    fresh.write_bytes(b"x")
    old = time.time() - 3600
    for f in cache.rglob("*.tmp"):
        if f != fresh:
            os.utime(f, (old, old))
    keep = [out / "checkpoints" / "step-000004", out / "results.md"]
    keep[0].mkdir()
    keep[1].write_text("kept\n")
    try:
        claim_output_dir(out, cache)
    finally:
        release_output_dirs()
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == sorted(["cache", "cache/features", f"cache/features/{live.name}", f"cache/features/{fresh.name}", "out",
                           "out/.clipood.lock", "out/checkpoints", "out/checkpoints/step-000004", "out/results.md"])


# ------------------------------------------------------------------------------------------------ one run per folder
def test_one_run_per_output_dir(tmp_path):
    from clipood.runtime.run_lock import claim_output_dir, release_output_dirs

    out = tmp_path / "out"
    code = ("import sys; from clipood.runtime.run_lock import claim_output_dir; claim_output_dir(sys.argv[1]); "
            "print('claimed', flush=True); sys.stdin.read()")
    first = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert first.stdout.readline().strip() == "claimed"
        t0 = time.monotonic()
        with pytest.raises(ClipoodError, match=r"another run is writing to output_dir .*out.*another output_dir"):
            claim_output_dir(out)
        assert time.monotonic() - t0 < 2  # at once, no waiting
    finally:
        first.kill()  # the OS drops the lock of a killed process
        first.wait()
    try:
        assert claim_output_dir(out) == out / ".clipood.lock"  # free again
    finally:
        release_output_dirs()


# ------------------------------------------------------------------------------------------------ training time
def test_training_time_survives_a_resume(tmp_path):
    from test_reliability_training import fake_crops, make_method

    from clipood.evaluation.benchmark import make_accelerator
    from clipood.config.settings import TrainConfig
    from clipood.training.checkpoints import latest_checkpoint
    from clipood.training.loop import CropTrainData, fit

    acc = make_accelerator(cpu=True)
    cache, C = fake_crops()
    out = tmp_path / "run"
    sig = {"run": "the same"}  # a longer run of the same configuration (epochs are not part of this signature)
    fit(make_method(C), CropTrainData(cache), TrainConfig(epochs=2, batch_size=4), acc, out, progress=False,
        signature=sig)
    ck = latest_checkpoint(out / "checkpoints")
    state = json.loads((ck / "trainer_state.json").read_text())
    assert 0 < state["train_seconds"] < 60
    state["train_seconds"] = 1000.0  # as if the first session had trained for 1000 s
    (ck / "trainer_state.json").write_text(json.dumps(state))
    t0 = time.time()
    r = fit(make_method(C), CropTrainData(cache), TrainConfig(epochs=4, batch_size=4), acc, out, progress=False,
            signature=sig)
    session = time.time() - t0
    assert r.resumed_from and 1000.0 < r.seconds < 1000.0 + session
    rec = json.loads((out / "training.json").read_text())
    assert rec["train_seconds"] == pytest.approx(r.seconds, abs=1e-3) and rec["steps"] == r.steps
    assert rec["this_session_seconds"] <= session and rec["resumed_from"] == r.resumed_from


def test_warm_up_longer_than_the_run_is_refused_before_crops():
    from clipood.training.loop import check_schedule

    # by hand: 10 images in batches of 4 -> [4, 4, 2] = 3 steps an epoch; 2 processes keep the even last batch
    assert check_schedule({"batch_size": 4, "epochs": 2, "max_steps": 0, "warmup_steps": 6}, 10) == 6
    assert check_schedule({"batch_size": 4, "epochs": 2, "max_steps": 0, "warmup_steps": 0}, 10, world=2) == 6
    assert check_schedule({"batch_size": 4, "epochs": 2, "max_steps": 0, "warmup_steps": 0}, 11, world=2) == 4
    assert check_schedule({"batch_size": 4, "epochs": 9, "max_steps": 5, "warmup_steps": 5}, 10) == 5
    with pytest.raises(ClipoodError, match=r"train.warmup_steps=7 is longer than the training \(6 steps"):
        check_schedule({"batch_size": 4, "epochs": 2, "max_steps": 0, "warmup_steps": 7}, 10)
    with pytest.raises(ClipoodError, match="train.batch_size=16 is larger than the 10 training images"):
        check_schedule({"batch_size": 16, "epochs": 2, "max_steps": 0, "warmup_steps": 0}, 10)


# ------------------------------------------------------------------------------------------------ hub
def test_hub_without_network_fails_fast_with_one_line(monkeypatch, capfd):
    import open_clip  # noqa: F401  (imported before the clock starts: the call is timed, not the import)

    import clipood.clip.backbone as backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    monkeypatch.setattr(backbone, "_hf_cached_file", lambda cfg: None)  # not in the local cache
    t0 = time.monotonic()
    with pytest.raises(ClipoodError) as e:
        backbone.load_clip("ViT-B-16", pretrained="openai")
    took = time.monotonic() - t0
    msg = str(e.value)
    assert took < 10 and "\n" not in msg and "127.0.0.1:9 cannot be reached" in msg and "local-dir:" in msg, msg
    err = capfd.readouterr().err
    assert "Retry" not in err and "thrown while requesting" not in err, err


def test_hub_probe_gives_up_on_a_silent_network(monkeypatch):
    import socket

    from clipood.clip.backbone import hub_unreachable

    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    def silent(*a, **k):  # packets dropped: no answer, then the connect times out as a real one would
        time.sleep(5)
        raise socket.timeout("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    t0 = time.monotonic()
    assert hub_unreachable(timeout=1.0) == "hub.example:443 cannot be reached (no answer within 1s)"
    assert time.monotonic() - t0 < 2


# ------------------------------------------------------------------------------------------------ WordNet IDs
def test_wordnet_id_folders_get_imagenet_names(tmp_path):
    from clipood.datasets.dataset import build_dataset

    # ImageNet-1k classes 0 and 1 (by hand): n01440764 tench, n01443537 goldfish
    make_image_folder(tmp_path / "d", {"n01443537": (0, 200, 0), "n01440764": (200, 0, 0)}, n=1, size=16)
    ds = build_dataset({"type": "imagefolder", "path": str(tmp_path / "d")})
    assert ds.classnames == ["tench", "goldfish"]  # sorted folders: n01440764 first
    make_image_folder(tmp_path / "m", {"n01440764": (200, 0, 0), "cat": (0, 0, 200)}, n=1, size=16)
    assert build_dataset({"type": "imagefolder", "path": str(tmp_path / "m")}).classnames == ["cat", "n01440764"]
    given = build_dataset({"type": "imagefolder", "path": str(tmp_path / "d"), "classnames": ["fish a", "fish b"]})
    assert given.classnames == ["fish a", "fish b"]  # names the user passes win


# ------------------------------------------------------------------------------------------------ --help
@pytest.mark.parametrize("command", ["eval", "mine", "build-mini", "adapters", "detect", "bench-report"])
def test_every_command_has_help(command, capsys):
    from clipood_recipes.cli import COMMANDS, main

    assert command in COMMANDS
    try:
        main([command, "--help"])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    assert code == 0 and ("usage" in out.out.lower() or "Values of this run" in out.out), (code, out)
    assert "error" not in out.err


@pytest.mark.parametrize("recipe", ["krnft", "zeroshot", "ablation", "compare"])
def test_every_recipe_has_help(recipe, capsys):
    with pytest.raises(SystemExit) as e:
        _run(recipe, ["--help"])
    assert e.value.code == 0 and "Values of this run" in capsys.readouterr().out
