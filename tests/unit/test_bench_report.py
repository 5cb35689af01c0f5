"""The efficiency record: JSON round trip, the Tab. 7-style table with ratio columns (checked against hand
division), clear errors for missing or foreign files, and ``clipood bench-report``."""
import json

import pytest

from clipood.efficiency.record import SCHEMA, load_record, render_markdown, save_record
from clipood.errors import ClipoodError


def _row(method, ms, tflops=None, params=0, **extra):
    train = None if tflops is None else {"time_s": 0.5, "estimated": False, "tflops": tflops,
                                         "flops_forward": tflops * 1e12 / 3, "flops_backward": tflops * 2e12 / 3,
                                         "peak_memory_bytes": 3 * 2**20}
    return {"scale": "s", "method": method, "display": method.upper(), "params": params,
            "test": {"ms_per_image": ms, "backbone_ms_per_image": ms - 1, "method_ms_per_image": 1.0},
            "train": train, "notes": [], **extra}


def record():
    return {"schema": SCHEMA, "created": "now", "machine": {"cpu": "x", "device": "cpu", "load_avg": [1.0, 2.0, 3.0]},
            "git": {"commit": "abcdef0123456", "dirty": False}, "scales": {"s": {"backbone": "B", "num_id": 3}},
            "rows": [_row("neglabel", 20.0), _row("nft", 21.0, 0.002, 266_496,
                                                  paper={"train_h": 0.25, "test_ms": 21.6, "tflops": 0.11,
                                                         "params": "6K"}),
                     _row("connegpt", 840.0, 1.0, 35_360)]}


def _cells(md, name):
    line = next(l for l in md.splitlines() if l.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_ratios_against_hand_division(tmp_path):
    md = render_markdown(record())
    head = next(l for l in md.splitlines() if l.startswith("| Method"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    nft, con = _cells(md, "NFT"), _cells(md, "CONNEGPT")
    assert nft[cols.index("Test × zero-shot")] == "1.050×"                  # 21 / 20
    assert con[cols.index("Test × KR-NFT")] == "40×"                         # 840 / 21
    assert con[cols.index("TFLOPs × KR-NFT")] == "500×"                      # 1.0 / 0.002
    assert nft[cols.index("Params")] == "266,496"
    assert nft[cols.index("Peak MB (train)")] == "3.0"
    assert "0.25 h / 21.6 ms / 0.11 TFLOPs / 6K" in nft[-1]
    assert _cells(md, "NEGLABEL")[cols.index("Train s/step")] == "–"         # zero-shot: nothing to train
    assert "load 1.0/2.0/3.0" in md and "abcdef0123" in md


def test_estimated_steps_are_marked():
    rec = record()
    rec["rows"][2]["train"]["estimated"] = True
    md = render_markdown(rec)
    assert _cells(md, "CONNEGPT")[1].startswith("≈") and "not run at this scale" in md


def test_round_trip_and_cli(tmp_path, capsys):
    from clipood_recipes.cli import main

    path = tmp_path / "r.json"
    save_record(record(), path)
    assert load_record(path) == json.loads(path.read_text())
    main(["bench-report", str(path)])
    assert capsys.readouterr().out == render_markdown(record())


@pytest.mark.parametrize("content, match", [(None, "not found"), ("{oops", "cannot read"),
                                            ('{"rows": []}', "not a clipood efficiency record")])
def test_bad_files_fail_in_one_line(tmp_path, capsys, content, match):
    from clipood_recipes.cli import main

    path = tmp_path / "x.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ClipoodError, match=match):
        load_record(path)
    with pytest.raises(SystemExit) as e:
        main(["bench-report", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
