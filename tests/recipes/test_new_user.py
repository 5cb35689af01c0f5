"""What a new user meets (issue 24): the thread policy, load-robust timing, outputs that say what they did
(headings, warnings, rounded results, plots with titles and labelled axes), ``clipood mine`` without the
datasets, and messages that list every missing path. Expected values are written by hand."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from clipood.runtime import threads
from clipood.errors import ClipoodError


# ------------------------------------------------------------------------------------------------ threads
@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.delenv("CLIPOOD_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    saved = torch.get_num_threads()
    threads.reset()
    yield monkeypatch
    threads.reset()
    torch.set_num_threads(saved)


def _others_busy(monkeypatch, others: float, own: float = 0.3):
    """One second ago the machine and this process had used 100 s / 10 s of CPU; since then the machine used
    ``others + own`` more core-seconds, this process ``own``."""
    monkeypatch.setattr(threads, "_last", (time.monotonic() - 1.0, 100.0, 10.0))
    monkeypatch.setattr(threads, "_busy_seconds", lambda: (100.0 + others + own, 10.0 + own))


def test_free_cores_leave_this_process_out(two_cores):
    _others_busy(two_cores, others=1.5)
    assert threads.free_cores() == pytest.approx(0.5, abs=0.02)   # 2 cores − 1.5 held by others
    _others_busy(two_cores, others=0.0, own=2.0)                   # only we were busy: both cores are ours
    assert threads.free_cores() == pytest.approx(2.0, abs=0.02)


@pytest.mark.parametrize("others, encode", [(0.05, 2), (0.9, 1), (2.0, 1)])
def test_encoders_get_the_free_cores_and_the_small_loop_one(two_cores, others, encode):
    _others_busy(two_cores, others)
    assert threads.plan("encode")[0] == encode
    assert threads.plan("train")[0] == 1       # idle or busy
    _others_busy(two_cores, others)
    assert threads.use("train", heavy=True) == encode   # a prompt learner's step: the encoders' policy
    assert threads.use("train") == 1


def test_clipood_threads_fixes_every_stage_and_runs_record_it(two_cores):
    two_cores.setenv("CLIPOOD_THREADS", "3")
    assert threads.use("encode") == 3 and threads.use("train") == 3 and torch.get_num_threads() == 3
    assert threads.record()["stages"] == {"encode": [3], "train": [3]}
    assert threads.summary() == "CPU threads: encode 3, train 3 (CLIPOOD_THREADS=3)."
    two_cores.delenv("CLIPOOD_THREADS")
    _others_busy(two_cores, 0.0)
    threads.use("encode")
    assert threads.summary().startswith("CPU threads: encode 2–3, train 3 (train 1, encode = free cores of 2")
    with pytest.raises(ValueError, match="unknown thread stage"):
        threads.plan("decode")


def test_trains_text_encoder_only_for_prompt_steps():
    import adapters
    from clipood_recipes.methods import trains_text_encoder

    feats = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert not trains_text_encoder(adapters.build_adapter("nft", feats, 3, hidden_dim=4))
    assert trains_text_encoder(adapters.CoOp) and not trains_text_encoder(adapters.FT)
    stacked = type("S", (), {"uses_text_encoder": True, "tuner": adapters.build_adapter("ft", feats, 3)})()
    assert not trains_text_encoder(stacked)   # a stack trains its tuner only


# ------------------------------------------------------------------------------------------------ timing
def test_interleaved_timer_rounds_order_minimum_and_min_total(monkeypatch):
    from clipood.efficiency import measure as bench

    clock = {"t": 0.0}
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["t"])
    calls = []

    def job(name, cost):
        def fn():
            calls.append(name)
            clock["t"] += cost.pop(0) if isinstance(cost, list) else cost
        return fn

    got = {}
    timer = bench.InterleavedTimer()
    timer.add(job("a", [9.0, 1.0, 2.0, 3.0]), rounds=3, warmup=1, then=lambda t: got.setdefault("a", t))
    timer.add(job("b", 0.5), rounds=1, warmup=0, then=lambda t: got.setdefault("b", t))
    timer.add(job("c", 0.1), rounds=1, warmup=0, min_total=0.35, max_rounds=10, then=lambda t: got.setdefault("c", t))
    out = timer.run()
    # warm-up first, then round by round: c runs until its calls add up to 0.35 s (4 × 0.1)
    assert calls == ["a", "a", "b", "c", "a", "c", "a", "c", "c"]
    assert got["a"].times == [1.0, 2.0, 3.0] and got["a"].minimum == 1.0 and got["a"].median == 2.0
    assert got["b"].times == [0.5] and len(got["c"].times) == 4 and out[2] is got["c"]
    # the CPU clock: what preemption by other processes does not inflate
    monkeypatch.setattr(bench.time, "process_time", lambda: clock["t"] / 2)
    cpu = bench.InterleavedTimer(clock="cpu")
    cpu.add(job("d", 1.0), rounds=2, warmup=0)
    assert cpu.run()[0].times == [0.5, 0.5]
    with pytest.raises(ValueError, match="clock"):
        bench.InterleavedTimer(clock="sundial")


def test_busy_machine_line_in_the_efficiency_table():
    from clipood.efficiency.measure import busy_machine
    from clipood.efficiency.record import render_markdown

    assert busy_machine([1.5, 2.7], cores=2) and not busy_machine([1.5, 1.9], cores=2)
    rec = {"machine": {"cpu": "x", "cpu_count": 2, "torch_threads": 1, "threads_source": "suite default",
                       "load_seen": [2.2, 4.5], "busy": True}, "rows": []}
    text = render_markdown(rec)
    assert "1 torch threads (suite default)" in text and "reached 4.5 on 2 cores" in text
    rec["machine"]["busy"] = False
    assert "Busy machine" not in render_markdown(rec)


# ------------------------------------------------------------------------------------------------ outputs
def test_results_json_values_keep_every_real_digit_and_drop_float_noise():
    from clipood.evaluation.report import rounded_rows

    rows = rounded_rows([{"method": "m", "auroc": 0.9889439999999999, "id_acc": 0.8360000252723694,
                          "fpr95": 1 / 3, "tiny": 2.5e-9, "n": 7, "zero": 0.0}])
    assert rows == [{"method": "m", "auroc": 0.988944, "id_acc": 0.836000025272, "fpr95": 0.333333333333,
                     "tiny": 2.5e-9, "n": 7, "zero": 0.0}]


@pytest.mark.parametrize("k, acc, warned", [(10, 0.15, True), (10, 0.25, False), (4, 0.45, True), (4, 0.55, False),
                                            (2, 0.70, True), (2, 0.80, False)])
def test_near_chance_zero_shot_accuracy_is_warned(k, acc, warned):
    from clipood.evaluation.report import chance_warnings

    rows = [{"method": "NegLabel (zero-shot)", "split": "base", "dataset": "average", "id_acc": acc},
            {"method": "KR-NFT", "split": "base", "dataset": "average", "id_acc": 0.99}]   # trained rows don't count
    out = chance_warnings(rows, {"base": k}, "clipood-mini")
    assert bool(out) == warned
    if warned:
        assert f"{100 * acc:.1f} % with {k} classes" in out[0] and f"chance {100 / k:.1f} %" in out[0]


def test_table_headings_name_split_data_classes_backbone_convention():
    from clipood.evaluation.report import split_heading

    h = split_heading("base", data="custom data: ID mydata/test", num_classes=4, backbone="ViT-B-16 (openai)",
                      convention="hendrycks", trained=False)
    assert h == "Base classes (ID) — custom data: ID mydata/test, 4 ID classes, ViT-B-16 (openai), hendrycks convention"
    assert split_heading("base", trained=True) == "Base classes (ID, the classes trained on)"
    assert split_heading("new_style") == "Unseen styles"


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, kept instead of closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    return kept


def test_loss_plot_shows_weighted_terms_and_their_total_on_a_linear_axis(figures, tmp_path):
    from clipood.evaluation.report import plot_loss

    history = [{"step": s, "cls_loss": 0.5 + s, "ood_loss": -2.0 * s, "loss": 0.5 + s + 0.3 * -2.0 * s}
               for s in (1, 2, 3)]
    plot_loss(history, tmp_path / "loss.png", weights={"cls_loss": 1.0, "ood_loss": 0.3}, title="KR-NFT loss")
    assert (tmp_path / "loss.png").is_file()
    (ax,) = figures[0].axes
    assert ax.get_title() == "KR-NFT loss" and ax.get_xlabel() and ax.get_ylabel() and ax.get_yscale() == "linear"
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert lines["0.3 · ood_loss"] == pytest.approx([-0.6, -1.2, -1.8])
    assert lines["1 · cls_loss"] == pytest.approx([1.5, 2.5, 3.5])
    assert lines["total loss"] == pytest.approx([0.9, 1.3, 1.7])   # = the sum of the weighted terms as drawn


def test_histograms_of_many_methods_are_a_grid_with_labelled_axes(figures, tmp_path):
    from clipood.evaluation.report import plot_histograms

    rng = np.random.default_rng(0)
    raw = {f"m{i}": {"id/x": rng.normal(1, 1, 20), "ood/y": rng.normal(-1, 1, 20)} for i in range(5)}
    plot_histograms(raw, tmp_path / "h.png", title="run: base")
    fig = figures[0]
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 6 and len(shown) == 5          # 2 rows of at most 3 panels
    assert [ax.get_title() for ax in shown] == list(raw)
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in shown) and fig._suptitle.get_text() == "run: base"
    w, h = fig.get_size_inches()
    assert w / h < 2.5                                       # not 9 panels in one row (4950 × 396 px: 12.5)


# ------------------------------------------------------------------------------------------- data, mining
def test_mine_needs_only_the_label_set(tmp_path, monkeypatch):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from clipood.config.records import DataSettings
    from clipood.evaluation.benchmark import mining_inputs
    from clipood_recipes.configure import load_settings
    from clipood_recipes.settings import MineSettings

    monkeypatch.chdir(tmp_path)                 # an empty folder: no ImageNet, no OOD sets anywhere
    monkeypatch.delenv("CLIPOOD_DATA", raising=False)
    (tmp_path / "w.txt").write_text("apple\nriver\n")
    cfg = load_settings(MineSettings, ["benchmark=imagenet", "negatives.corpus=w.txt", f"output_dir={tmp_path}/o"])
    names, corpus = mining_inputs(DataSettings.from_config(cfg))
    assert names == list(IMAGENET_CLASSNAMES) and len(names) == 1000 and sorted(corpus.nouns) == ["apple", "river"]


def test_custom_mining_reads_only_the_id_class_folders(tmp_path, monkeypatch):
    from helpers import make_image_folder

    from clipood.config.records import DataSettings
    from clipood.evaluation.benchmark import mining_inputs

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLIPOOD_DATA", raising=False)
    make_image_folder(tmp_path / "mydata" / "test", {"golden retriever": (1, 2, 3), "tabby cat": (4, 5, 6)}, n=1)
    (tmp_path / "w.txt").write_text("apple\n")
    cfg = {"benchmark": "custom", "id_data": {"path": "mydata/test"}, "data_root": None,   # relative: cwd
           "negatives": {"corpus": "w.txt"}}
    names, _ = mining_inputs(DataSettings.from_config(cfg))
    assert names == ["golden retriever", "tabby cat"]


def test_missing_paths_message_lists_every_path(tmp_path):
    from clipood.config.records import DataSettings
    from clipood.datasets.checks import check_data

    (tmp_path / "id" / "a").mkdir(parents=True)
    data = DataSettings(benchmark="custom", data_root=str(tmp_path), id_data={"path": "id"},
                        ood_data={f"o{i}": {"path": f"gone{i:02d}"} for i in range(31)})
    with pytest.raises(ClipoodError) as e:
        check_data(data)
    msg = str(e.value)
    assert "31 path(s) missing" in msg and all(f"gone{i:02d}" in msg for i in range(31)) and "..." not in msg


def test_compare_detector_must_be_a_variant():
    from clipood_recipes.compare import plan_variants

    cfg = {"variants": {"CoOp": {}, "KR-NFT": {}}, "stack_on": {}, "output_dir": "o", "detector": "KR-NFT"}
    assert [n for n, _ in plan_variants(cfg)] == ["CoOp", "KR-NFT"]
    with pytest.raises(ClipoodError, match="detector='LAPT' is not a variant"):
        plan_variants({**cfg, "detector": "LAPT"})
    assert plan_variants({**cfg, "detector": "NegLabel (zero-shot)"})


def test_one_naming_of_methods():
    import adapters

    assert adapters.display_name("nft") == "KR-NFT" and adapters.display_name("coop") == "CoOp"
    assert adapters.display_name("nft", "locoop") == "LoCoOp+KR-NFT"
    assert adapters.display_name("my_method") == "my_method"      # a plugin keeps its own name
