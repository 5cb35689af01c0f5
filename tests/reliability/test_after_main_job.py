"""Settings that do not decide the weights (processes, log_with) never rewrite a run's results silently: the
README's after-main-job sequence — the default run, the same with 2 CPU processes, the same with a tracker —
reuses the checkpoint, says so, records every session, and fills the tracker with the whole run.

``log_with=jsonl`` is clipood's built-in tracker (tensorboard is not installed in the test environment; when it
is, the same sequence is run with it too)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from helpers import ROOT, run_script

SIZES = {"train_per_class": 4, "test_per_class": 6, "ood_per_set": 12, "style_per_class": 4}
ARGS = ["model=clipood-tiny", "cpu=true", "progress=false", "eval.plots=false", "crops.num_crops=8",
        "crops.num_selected=2", *(f"mini.{k}={v}" for k, v in SIZES.items()),
        "train.epochs=4", "train.batch_size=8", "train.log_every=5"]
TOTAL = 20  # 40 training images, batch 8: 5 steps per epoch, 4 epochs


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CLIPOOD_THREADS": "1",
            "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    from clipood.mini.build import MiniWorldConfig, build_world

    base = tmp_path_factory.mktemp("after")
    build_world(MiniWorldConfig(seed=0, **SIZES), root=base / "worlds", progress=False)
    out = base / "run"
    args = ["recipes/krnft.py", *ARGS, f"mini.root={base / 'worlds'}", f"cache_dir={base / 'cache'}",
            f"output_dir={out}"]
    runs = {}
    r = run_script(args, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs["main"] = (r, (out / "adapter" / "adapter.safetensors").read_bytes(), (out / "train_log.jsonl").read_text())
    port = _port()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", "1", "--main_process_port", str(port), *args]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(MASTER_PORT=str(port)), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    runs["2 processes"] = (r, (out / "adapter" / "adapter.safetensors").read_bytes(),
                           (out / "train_log.jsonl").read_text(), (out / "results.md").read_text(),
                           json.loads((out / "training.json").read_text()))
    r = run_script([*args, "log_with=jsonl"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs["tracker"] = (r,)
    return out, runs


def test_two_processes_after_the_main_job_say_they_reused_the_checkpoint(sequence):
    out, runs = sequence
    r, adapter, log, md, training = runs["2 processes"]
    assert adapter == runs["main"][1] and log == runs["main"][2]  # nothing retrained, the log not cut
    for text in (r.stdout, md):
        assert "reused checkpoint" in text and f"step-{TOTAL:06d}" in text and "nothing retrained" in text, text
        assert "processes: 2" in text and "with 1 process(es)" in text
    sessions = training["sessions"]
    assert [(s["steps_trained"], s["processes"]) for s in sessions] == [(TOTAL, 1), (0, 2)], sessions
    assert training["steps"] == TOTAL and training["this_session_steps"] == 0


def test_a_tracker_added_after_the_main_job_holds_the_whole_run(sequence):
    out, runs = sequence
    r = runs["tracker"][0]
    metrics = out / "KR-NFT" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(5, TOTAL + 1, 5))  # every logged step, replayed
    log = {rec["step"]: rec for rec in map(json.loads, runs["main"][2].splitlines())}
    for row in rows:  # the values the main job logged at those steps
        assert row["loss"] == pytest.approx(log[row["step"]]["loss"], rel=1e-6)
    assert json.loads((out / "KR-NFT" / "config.json").read_text())["log_with"] == "jsonl"
    assert "reused checkpoint" in r.stdout and "nothing retrained" in r.stdout
    training = json.loads((out / "training.json").read_text())
    assert [s["steps_trained"] for s in training["sessions"]] == [TOTAL, 0, 0]


def test_tensorboard_after_the_main_job_writes_a_non_empty_log(sequence):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (the built-in jsonl tracker is tested)")
    out, _ = sequence
    args = ["recipes/krnft.py", *ARGS, f"mini.root={out.parent / 'worlds'}", f"cache_dir={out.parent / 'cache'}",
            f"output_dir={out}", "log_with=tensorboard"]
    r = run_script(args, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and max(e.stat().st_size for e in events) > 200
