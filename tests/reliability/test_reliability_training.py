"""Training reliability (issue: reliability): interruption and exact resume, non-finite losses, determinism,
and parity between 1 and 2 CPU processes.

In-process tests train on a synthetic crop cache (no backbone: milliseconds per step). Subprocess tests run
the KR-NFT recipe on a tiny mini world with clipood-tiny; their expectations are an uninterrupted run of the
same command (bit-identical adapter bytes on CPU with one process) and, for 2 processes, stated tolerances.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clipood.training import task as method_mod
from clipood.crops.cache import CropCache
from clipood.config.settings import TrainConfig
from clipood.training.checkpoints import latest_checkpoint, load_checkpoint
from clipood.training.loop import CropTrainData, NonFiniteLoss, fit
from clipood.errors import ClipoodError
import adapters
from helpers import ROOT, run_script


# ============================================================================ in-process, synthetic crops
N_IMG, Q, D, NUM_ID, K = 8, 2, 16, 3, 7
WEIGHTS = {"cls": 1.0, "ood": 0.3, "kr": 100.0}


def fake_crops(seed: int = 0) -> tuple[CropCache, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g), dim=-1)

    labels = torch.arange(N_IMG) % NUM_ID
    img = torch.arange(N_IMG).repeat_interleave(Q)
    cache = CropCache(id_features=unit(N_IMG * Q, D), id_labels=labels.repeat_interleave(Q), id_image=img,
                      id_similarity=torch.zeros(N_IMG * Q), neg_features=unit(N_IMG * Q, D), neg_image=img.clone(),
                      neg_similarity=torch.zeros(N_IMG * Q), top_features=unit(N_IMG, D), image_features=unit(N_IMG, D),
                      image_labels=labels, image_indices=torch.arange(N_IMG))
    return cache, unit(K, D)


def make_method(text_features, init_seed: int = 0):
    torch.manual_seed(init_seed)
    adapter = adapters.build_adapter("nft", text_features, NUM_ID, hidden_dim=4)
    return method_mod.Method(adapter, WEIGHTS)


@pytest.fixture(scope="module")
def accelerator():
    from clipood.evaluation.benchmark import make_accelerator

    return make_accelerator(cpu=True)


def weights_of(method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.adapter.state_dict().items()}


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (k, float((a[k] - b[k]).abs().max()))


def log_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def hook_term(monkeypatch, name: str, on_call: dict):
    """Wrap loss term ``name``; ``on_call[n]`` (a callable taking the real value) runs at its n-th call."""
    real = method_mod.LOSS_TERMS[name]
    calls = {"n": 0}

    def wrapped(o):
        calls["n"] += 1
        v = real(o)
        f = on_call.get(calls["n"])
        return f(v) if f else v

    monkeypatch.setitem(method_mod.LOSS_TERMS, name, wrapped)
    return calls


@pytest.mark.parametrize("stop_at", [3, 4], ids=["mid-epoch", "epoch-end"])
def test_signal_mid_run_then_resume_is_bit_identical(tmp_path, accelerator, monkeypatch, stop_at):
    """SIGINT to our own process during step ``stop_at``: the step finishes, a checkpoint is written, training
    stops; fit() again continues and ends with the weights of an uninterrupted run (2 steps per epoch)."""
    cache, C = fake_crops()
    cfg = TrainConfig(epochs=4, batch_size=4, lr=5e-2, warmup_steps=2, schedule="cosine", checkpoint_every=0)
    ref = make_method(C)
    r = fit(ref, CropTrainData(cache), cfg, accelerator, tmp_path / "ref", progress=False)
    assert r.steps == 8 and r.resumed_from is None
    want = weights_of(ref)
    assert any(not torch.equal(want[k], v) for k, v in weights_of(make_method(C)).items())  # it trained

    out = tmp_path / "run"
    hook_term(monkeypatch, "cls", {stop_at: lambda v: (os.kill(os.getpid(), signal.SIGINT), v)[1]})
    with pytest.raises(KeyboardInterrupt, match=rf"step {stop_at}\b.*resume"):
        fit(make_method(C), CropTrainData(cache), cfg, accelerator, out, progress=False)
    assert latest_checkpoint(out / "checkpoints").name == f"step-{stop_at:06d}"
    assert log_steps(out) == list(range(1, stop_at + 1))
    monkeypatch.undo()

    # another init seed: the resumed weights must come from the checkpoint, not from the initialisation
    m = make_method(C, init_seed=123)
    r = fit(m, CropTrainData(cache), cfg, accelerator, out, progress=False)
    assert r.resumed_from and r.resumed_from.endswith(f"step-{stop_at:06d}")
    assert [h["step"] for h in r.history] == list(range(stop_at + 1, 9))
    assert_same_weights(weights_of(m), want)
    assert log_steps(out) == list(range(1, 9))
    # the losses logged after the resume are those of the uninterrupted run
    ref_log = (tmp_path / "ref" / "train_log.jsonl").read_text()
    assert (out / "train_log.jsonl").read_text() == ref_log


def test_crash_while_checkpointing_then_resume(tmp_path, accelerator, monkeypatch):
    """A process that dies after logging step 5 but before its checkpoint is complete (what SIGKILL or a power
    cut does) resumes from step 4: the replayed step 5 must not appear twice in train_log.jsonl."""
    import clipood.training.loop as engine

    cache, C = fake_crops()
    cfg = TrainConfig(epochs=4, batch_size=4, lr=5e-2, checkpoint_every=1)
    ref = make_method(C)
    fit(ref, CropTrainData(cache), cfg, accelerator, tmp_path / "ref", progress=False)
    real = engine.save_checkpoint

    def dying(root, adapter, opt, state, keep, **options):
        if state["step"] == 5:
            raise RuntimeError("simulated crash while writing a checkpoint")
        return real(root, adapter, opt, state, keep, **options)

    monkeypatch.setattr(engine, "save_checkpoint", dying)
    out = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_method(C), CropTrainData(cache), cfg, accelerator, out, progress=False)
    monkeypatch.undo()
    assert latest_checkpoint(out / "checkpoints").name == "step-000004"
    assert log_steps(out) == [1, 2, 3, 4, 5]
    (out / "checkpoints" / ".tmp-killed").mkdir()  # what a kill inside save_checkpoint leaves behind
    (out / "checkpoints" / ".tmp-killed" / "adapter.safetensors").write_bytes(b"partial")
    m = make_method(C, init_seed=5)
    r = fit(m, CropTrainData(cache), cfg, accelerator, out, progress=False)
    assert r.resumed_from.endswith("step-000004")
    assert_same_weights(weights_of(m), weights_of(ref))
    assert log_steps(out) == list(range(1, 9))
    assert (out / "train_log.jsonl").read_text() == (tmp_path / "ref" / "train_log.jsonl").read_text()
    assert not (out / "checkpoints" / ".tmp-killed").exists()


def test_nan_loss_names_step_and_last_good_checkpoint(tmp_path, accelerator, monkeypatch):
    cache, C = fake_crops()
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, schedule="constant", checkpoint_every=1)
    hook_term(monkeypatch, "kr", {3: lambda v: v * float("nan")})
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLoss) as ei:
        fit(make_method(C), CropTrainData(cache), cfg, accelerator, out, progress=False)
    assert isinstance(ei.value, ClipoodError)
    msg = str(ei.value)
    good = out / "checkpoints" / "step-000002"
    assert "\n" not in msg and re.search(r"\bstep 3\b", msg) and str(good) in msg, msg
    assert good.is_dir() and not (out / "checkpoints" / "step-000003").exists()
    monkeypatch.undo()

    # the last good checkpoint loads, is finite and holds exactly the weights after 2 clean steps
    m = make_method(C, init_seed=7)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    state = load_checkpoint(good, m.adapter, opt)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in m.adapter.state_dict().values())
    clean = make_method(C)
    fit(clean, CropTrainData(cache), TrainConfig(**{**cfg.__dict__, "max_steps": 2}), accelerator,
        tmp_path / "clean", progress=False)
    assert_same_weights(weights_of(m), weights_of(clean))


def test_huge_learning_rate_stops_with_non_finite_loss(tmp_path, accelerator):
    cache, C = fake_crops()
    cfg = TrainConfig(epochs=5, batch_size=4, lr=1e30, schedule="constant", checkpoint_every=1)
    out = tmp_path / "lr"
    with pytest.raises(NonFiniteLoss) as ei:
        fit(make_method(C), CropTrainData(cache), cfg, accelerator, out, progress=False)
    step = int(re.search(r"\bstep (\d+)\b", str(ei.value)).group(1))
    assert step >= 2
    last = latest_checkpoint(out / "checkpoints")
    assert last is not None and last.name == f"step-{step - 1:06d}" and str(last) in str(ei.value)
    assert "train.lr" in str(ei.value)


def test_same_seed_is_deterministic_in_process(tmp_path, accelerator):
    cache, C = fake_crops()
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2)
    a, b, c = make_method(C), make_method(C), make_method(C)
    fit(a, CropTrainData(cache), cfg, accelerator, tmp_path / "a", progress=False)
    fit(b, CropTrainData(cache), cfg, accelerator, tmp_path / "b", progress=False)
    assert_same_weights(weights_of(a), weights_of(b))
    fit(c, CropTrainData(cache), TrainConfig(**{**cfg.__dict__, "seed": 1}), accelerator, tmp_path / "c",
        progress=False)  # another seed: another data order
    wa, wc = weights_of(a), weights_of(c)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


# ============================================================================ subprocess, tiny mini world
SIZES = {"train_per_class": 4, "test_per_class": 6, "ood_per_set": 12, "style_per_class": 4}
# cpu=true: bit-identical comparisons hold on CPU (and 2-process CPU runs need it); a GPU box would differ
SMALL = ["model=clipood-tiny", "cpu=true", "progress=false", "eval.plots=false", "crops.num_crops=8",
         "crops.num_selected=2",
         *(f"mini.{k}={v}" for k, v in SIZES.items())]
# 40 training images, batch 8 (even: splits over 2 processes) → 5 steps per epoch, 150 steps
TRAIN = ["train.epochs=30", "train.batch_size=8", "train.checkpoint_every=1"]
TOTAL = 150
METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out", "id_acc")


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    from clipood.mini.build import MiniWorldConfig, build_world

    base = tmp_path_factory.mktemp("reliability")
    build_world(MiniWorldConfig(seed=0, **SIZES), root=base / "worlds", progress=False)
    return {"root": base / "worlds", "cache": base / "cache", "tmp": base}


def recipe_args(world, out, cache=None) -> list[str]:
    return ["recipes/krnft.py", *SMALL, *TRAIN, f"mini.root={world['root']}",
            f"cache_dir={cache or world['cache']}", f"output_dir={out}"]


def script_env(**extra) -> dict:
    """The environment helpers.run_script uses (offline hub, 1 thread, repository on PYTHONPATH)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CLIPOOD_THREADS": "1",
            "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture(scope="module")
def reference(world):
    """One uninterrupted single-process run: the expectation for resumes and for 2 processes."""
    out = world["tmp"] / "reference"
    r = run_script(recipe_args(world, out), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "processes: 1" in r.stdout
    assert log_steps(out) == list(range(1, TOTAL + 1))
    return out


def results(out: Path) -> dict:
    return {(r["method"], r["split"], r["dataset"]): r for r in json.loads((out / "results.json").read_text())}


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step-*"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_recipe_killed_then_rerun_matches_uninterrupted(world, reference, sig):
    out = world["tmp"] / f"killed-{sig.name}"
    log_out, log_err = open(world["tmp"] / f"{sig.name}.out", "w+"), open(world["tmp"] / f"{sig.name}.err", "w+")
    p = subprocess.Popen([sys.executable, *recipe_args(world, out)], cwd=ROOT, env=script_env(),
                         stdout=log_out, stderr=log_err, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:
            if (out / "checkpoints").is_dir() and max(checkpoint_steps(out), default=0) >= 5:
                break
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before it could be interrupted"
        p.send_signal(sig)
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    log_err.seek(0)
    err = log_err.read()
    steps = checkpoint_steps(out)
    assert not (out / "results.json").exists()
    assert steps and 5 <= steps[-1] < TOTAL, steps
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:
        assert rc not in (0, 2) and rc > 0, (rc, err[-2000:])
        assert "Traceback" not in err, err[-3000:]
        # a graceful stop checkpoints the step it finished: the log and the checkpoint agree
        assert log_steps(out) == list(range(1, steps[-1] + 1))
    stopped_at = steps[-1]

    r = run_script(recipe_args(world, out), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(rf"resumed from \S*step-{stopped_at:06d}", r.stdout), r.stdout[-2000:]
    assert (out / "adapter" / "adapter.safetensors").read_bytes() == \
        (reference / "adapter" / "adapter.safetensors").read_bytes()
    assert log_steps(out) == list(range(1, TOTAL + 1))
    assert not list((out / "checkpoints").glob(".tmp-*")), "a half-written checkpoint folder was left behind"
    got, want = results(out), results(reference)
    assert got.keys() == want.keys() and all(got[k][m] == want[k][m] for k in want for m in METRICS)
    if sig != signal.SIGKILL:
        assert "rerun the same command to resume" in err, err[-500:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_match_one(world, reference):
    """accelerate launch --multi_gpu --num_processes 2 with cpu=true (gloo) vs 1 process, same global batch."""
    out, cache = world["tmp"] / "ddp", world["tmp"] / "cache-ddp"
    port = free_port()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", "1", "--main_process_port", str(port),
           *recipe_args(world, out, cache)]
    r = subprocess.run(cmd, cwd=ROOT, env=script_env(MASTER_PORT=str(port)), capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "processes: 2" in r.stdout, r.stdout[-2000:]
    assert log_steps(out) == list(range(1, TOTAL + 1))  # global steps, logged once

    a = load_file(str(reference / "adapter" / "adapter.safetensors"))
    b = load_file(str(out / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    # DDP averages the two half-batch gradients (another summation order): float rounding only
    assert diff < 1e-5, diff
    got, want = results(out), results(reference)
    assert got.keys() == want.keys()
    mdiff = max(abs(got[k][m] - want[k][m]) for k in want for m in METRICS)
    assert mdiff <= 1e-4, mdiff
    print(f"2-process parity: max |Δweight| = {diff:.3g}, max |Δmetric| = {mdiff:.3g}")

    # caches: the same keys (so 1 and 2 processes share them), the same negatives, the same crop features
    ref_cache = world["cache"]
    for sub in ("negatives", "crops", "features"):
        names = sorted(p.name for p in (cache / sub).iterdir())
        assert names and set(names) <= {p.name for p in (ref_cache / sub).iterdir()}, sub
        for name in names:
            if sub == "negatives":
                # mined once by the main process, read by the other rank: byte-identical to 1 process
                assert (cache / sub / name).read_bytes() == (ref_cache / sub / name).read_bytes()
            else:
                x, y = load_file(str(cache / sub / name)), load_file(str(ref_cache / sub / name))
                assert x.keys() == y.keys()
                for k in x:
                    assert x[k].shape == y[k].shape and torch.allclose(x[k].float(), y[k].float(), atol=1e-5), \
                        (name, k)
    assert not list(cache.rglob(".*tmp*")), "temporary files left behind"
