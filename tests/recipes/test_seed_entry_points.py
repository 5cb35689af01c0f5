"""CLIPN, ZOC and the fine-tuned encoder through the common entry points (issue 23's acceptance), in process on a
small mini world with the random-weight clipood-tiny backbone:

- ``recipes/krnft.py preset=<method>_mini`` (and ``clipood train preset=...``) hands the rest of the command line
  to that method's recipe: its results.json equals the one ``recipes/<method>.py`` writes on the same command line
  (and is not a KR-NFT run); unknown presets keep the training recipe's error;
- ``recipes/compare.py extra=[clipn,zoc,finetune]``: the rows of the three, in the comparison's results.json next to
  its variants, carry the numbers of the standalone recipes on the same settings; the default comparison has none.
"""
from __future__ import annotations

import json
import runpy

import pytest

from helpers import ROOT

SMALL = ["model=clipood-tiny", "cpu=true", "progress=false", "eval.plots=false", "mini.train_per_class=4",
         "mini.test_per_class=6", "mini.ood_per_set=12", "mini.style_per_class=4"]
#: each method's own section, small (CLIPN: 16 pretraining pairs, 3 steps; fine-tuning: 2 steps)
SEED_ARGS = {"clipn": ["clipn.pairs.num=16", "clipn.steps=3", "clipn.batch_size=4"],
             "zoc": ["zoc.k=3"],
             "finetune": ["finetune.steps=2", "finetune.batch_size=4", "finetune.knn_k=2", "finetune.vim_dim=4",
                          "finetune.scores=[msp,energy,knn]"]}
#: the rows each method adds (beside the zero-shot ones)
SEED_ROWS = {"clipn": {"CLIPN-CTW", "CLIPN-ATD"}, "zoc": {"ZOC (retrieval, k=3)"},
             "finetune": {"MSP (fine-tuned)", "Energy (fine-tuned)", "KNN (fine-tuned)"}}
ZERO_SHOT = {"NegLabel (zero-shot)", "MCM (zero-shot)"}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPOOD_THREADS", "1")


def _main(recipe: str):
    return runpy.run_path(str(ROOT / "recipes" / f"{recipe}.py"), run_name="entry_test")["main"]


def _results(out) -> list[dict]:
    return json.loads((out / "results.json").read_text())


def _common(tmp_path, out: str) -> list[str]:
    return SMALL + [f"cache_dir={tmp_path.parent / 'seed-entry-cache'}", f"output_dir={tmp_path / out}"]


@pytest.mark.parametrize("method", ["clipn", "zoc", "finetune"])
def test_krnft_preset_hands_over_to_the_methods_recipe(method, tmp_path):
    args = _common(tmp_path, "via-krnft") + SEED_ARGS[method]
    _main("krnft")([f"preset={method}_mini", *args])
    _main(method)(["preset=mini", *[a.replace("via-krnft", "own") for a in args]])
    via, own = _results(tmp_path / "via-krnft"), _results(tmp_path / "own")
    assert {r["method"] for r in via} == SEED_ROWS[method] | ZERO_SHOT   # no KR-NFT row: its own recipe ran
    assert via == own                                                    # the same rows, every number
    cfg = json.loads((tmp_path / "via-krnft" / "config.json").read_text())
    assert method in cfg and "adapter" not in cfg and cfg["preset"] == "mini"


def test_installed_train_command_hands_over_too(tmp_path, capsys):
    from clipood_recipes.cli import main

    main(["train", "preset=zoc_mini", *_common(tmp_path, "cli"), "zoc.k=3"])
    assert {r["method"] for r in _results(tmp_path / "cli")} == SEED_ROWS["zoc"] | ZERO_SHOT


def test_unknown_and_krnft_presets_stay_the_training_recipes(capsys):
    from clipood.errors import ClipoodError
    from clipood_recipes.seed_settings import seed_hand_over

    with pytest.raises(ClipoodError, match=r"unknown preset 'clipn_mino' \(did you mean 'locoop_mini'|unknown preset "
                                           r"'clipn_mino'") as e:
        _main("krnft")(["preset=clipn_mino"])
    assert "clipn_mini" not in str(e.value)       # today's error: the training recipe's own presets
    assert seed_hand_over(["preset=sct_mini", "shots=2"]) is None
    assert seed_hand_over(["shots=2"]) is None
    assert seed_hand_over(["preset=paper", "shots=2", "preset=zoc_mini"]) == ("zoc", ["preset=mini", "shots=2"])
    assert seed_hand_over(["preset=zoc_mini", "preset=paper"]) is None   # the last preset= counts


# -------------------------------------------------------------------------------------------- the comparison
FEW_STEPS = ["shots=2", "crops.num_crops=4", "crops.num_selected=2", "train.batch_size=2", "train.max_steps=2"]
ONE_VARIANT = ["variants={KR-NFT: {adapter: {name: nft, options: {hidden_dim: 8}}, losses: {kr: 10.0}}}",
               "stack_on={}"]


def test_compare_extra_rows_are_the_standalone_recipes_rows(tmp_path):
    extra = [a for m in ("clipn", "zoc", "finetune") for a in SEED_ARGS[m]]
    _main("compare")(_common(tmp_path, "cmp") + FEW_STEPS + ONE_VARIANT + extra + ["extra=[zoc,clipn,finetune]"])
    rows = _results(tmp_path / "cmp")
    methods = [r["method"] for r in rows]
    assert set(methods) == {"NegLabel (zero-shot)", "KR-NFT"} | set().union(*SEED_ROWS.values())
    assert methods.index("KR-NFT") < min(methods.index(m) for m in SEED_ROWS["zoc"])   # after the variants
    for method in ("clipn", "zoc", "finetune"):
        _main(method)(["preset=mini", *_common(tmp_path, f"own-{method}"), *SEED_ARGS[method]])
        own = {(r["method"], r["split"], r["dataset"]): r for r in _results(tmp_path / f"own-{method}")}
        mine = [r for r in rows if r["method"] in SEED_ROWS[method]]
        assert mine and len(mine) == sum(1 for k in own if k[0] in SEED_ROWS[method])
        for r in mine:
            assert r == own[(r["method"], r["split"], r["dataset"])]
    assert (tmp_path / "cmp" / "clipn" / "no_encoder.safetensors").is_file()
    assert (tmp_path / "cmp" / "finetune" / "finetuned_head.safetensors").is_file()
    md = (tmp_path / "cmp" / "results.md").read_text()
    assert "CLIPN-CTW" in md and "ZOC (retrieval, k=3)" in md and "MSP (fine-tuned)" in md


def test_compare_extra_bad_names_fail_before_any_work(tmp_path):
    from clipood.errors import ClipoodError

    base = _common(tmp_path, "cmp-bad") + ONE_VARIANT
    with pytest.raises(ClipoodError, match=r"unknown extra 'clipm' \(did you mean 'clipn'\?\); choose one of: "
                                           r"clipn, finetune, zoc"):
        _main("compare")(base + ["extra=[clipm]"])
    with pytest.raises(ClipoodError, match="names a method twice"):
        _main("compare")(base + ["extra=[zoc,zoc]"])
    with pytest.raises(ClipoodError, match="zoc.template"):
        _main("compare")(base + ["extra=[zoc]", "zoc.template=no placeholder"])
    with pytest.raises(ClipoodError, match="finetune.scores"):
        _main("compare")(base + ["extra=[finetune]", "finetune.scores=[react]"])
    assert not (tmp_path / "cmp-bad").exists()   # nothing was written: checked before any work
