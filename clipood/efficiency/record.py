"""Efficiency records: the JSON an efficiency run writes and the Markdown table (laid out like the paper's
Tab. 7) rendered from it — by ``pytest --benchmark`` at the end of a run, or again by ``clipood bench-report``.

A record is ``{"schema", "created", "machine", "git", "scales": {name: {...}}, "rows": [row, ...]}``; a row is one
method at one scale: ``method``, ``display``, ``params``, ``test`` (``ms_per_image`` = backbone + method part),
``train`` (``time_s`` per step, ``estimated``, ``tflops`` = forward + backward FLOPs per step,
``peak_memory_bytes``) or ``None`` for zero-shot scores, and optionally ``paper`` (Tab. 7's numbers).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from ..errors import ClipoodError
from ..io import write_json

SCHEMA = "clipood-bench/1"
ZERO_SHOT_REF = "neglabel"   # ratio columns: test time over zero-shot NegLabel ...
METHOD_REF = "nft"           # ... and over KR-NFT

__all__ = ["SCHEMA", "load_record", "render_markdown", "save_record"]


def save_record(record: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the record atomically (temporary name, then rename)."""
    write_json(path, dict(record))


def load_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read a saved efficiency record; one-line ClipoodError for a missing, unreadable or foreign file."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise ClipoodError(f"benchmark record {path} not found; run `pytest --benchmark` first "
                           f"(it writes benchmark-results/efficiency.json) or pass the file it wrote") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClipoodError(f"cannot read benchmark record {path} ({type(e).__name__}: {e}); pass the JSON file "
                           f"that `pytest --benchmark` wrote") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA or not isinstance(record.get("rows"), list):
        raise ClipoodError(f"{path} is not a clipood efficiency record (expected schema {SCHEMA!r} with 'rows'); "
                           f"pass the JSON file that `pytest --benchmark` wrote")
    return record


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 0.1:
        return f"{x:.{digits}f}"
    return f"{x:.2g}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    r = a / b
    return f"{r:.3f}×" if r < 10 else f"{r:,.0f}×"


def _train_cell(train: Mapping[str, Any] | None) -> str:
    if not train:
        return "–"
    t = _fmt(train.get("time_s"), 3 if (train.get("time_s") or 0) < 1 else 1)
    return f"≈{t}*" if train.get("estimated") else t


def _paper_cell(paper: Mapping[str, Any] | None) -> str:
    if not paper:
        return ""
    return (f"{paper['train_h']} h / {paper['test_ms']} ms / {paper['tflops']} TFLOPs / {paper['params']}")


def render_scale(record: Mapping[str, Any], scale: str) -> str:
    """One Markdown table for one scale."""
    rows = [r for r in record["rows"] if r.get("scale") == scale]
    by = {r["method"]: r for r in rows}
    zs = by.get(ZERO_SHOT_REF, {}).get("test", {}).get("ms_per_image")
    ref = by.get(METHOD_REF)
    ref_ms = ref["test"]["ms_per_image"] if ref else None
    ref_tf = ref["train"]["tflops"] if ref and ref.get("train") else None
    info = record.get("scales", {}).get(scale, {})
    head = (f"**{scale}** — {info.get('backbone', '?')}, K = {info.get('num_id', '?')} ID + "
            f"{info.get('num_neg', '?')} negatives, train batch {info.get('batch_id_crops', '?')} ID + "
            f"{info.get('batch_neg_crops', '?')} negative crop features; image encoder "
            f"{_fmt(info.get('backbone_ms_per_image'))} ms / {_fmt(info.get('backbone_gflops_per_image'))} GFLOPs "
            f"per image ({_fmt(info.get('throughput_gflops'))} GFLOP/s)"
            + (f"; times: {info['timing']}" if info.get("timing") else ""))
    lines = [head, "",
             "| Method | Train s/step | Test ms/img (backbone + method) | Train TFLOPs/step (fwd + bwd) | Params "
             "| Peak MB (train) | Test × zero-shot | Test × KR-NFT | TFLOPs × KR-NFT | Paper Tab. 7 (train / test / "
             "TFLOPs / params) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        test = r.get("test") or {}
        ms = test.get("ms_per_image")
        train = r.get("train")
        tf = train.get("tflops") if train else None
        peak = train.get("peak_memory_bytes") if train else None
        test_cell = (f"{_fmt(ms)} ({_fmt(test.get('backbone_ms_per_image'))} + "
                     f"{_fmt(test.get('method_ms_per_image'), 3)})")
        est = "≈" if test.get("estimated") else ""
        if est:  # timed on part of its negatives: the scaled estimate, and the measured lower bound
            test_cell = f"≈{test_cell}*; measured ≥ {_fmt(test.get('lower_bound_ms_per_image'))}"
        flop_cell = "–" if not train else (f"{_fmt(tf, 3)} ({_fmt(train['flops_forward'] / 1e12, 3)} + "
                                           f"{_fmt(train['flops_backward'] / 1e12, 3)})")
        lines.append(
            f"| {r.get('display', r['method'])} | {_train_cell(train)} | {test_cell} | {flop_cell} "
            f"| {r.get('params', 0):,} | {_fmt(None if peak is None else peak / 2**20)} | {est}{_ratio(ms, zs)} "
            f"| {est}{_ratio(ms, ref_ms)} | {_ratio(tf, ref_tf)} | {_paper_cell(r.get('paper'))} |")
    notes = []
    crop = next((r["train"] for r in rows if r.get("train") and "one_off_crop_encoding_tflops" in r["train"]), None)
    if crop:
        notes.append(f"- one-off crop encoding of a step's crops (cached; every method here trains on cached crop "
                     f"features): {_fmt(crop['one_off_crop_encoding_tflops'], 3)} TFLOPs, "
                     f"{_fmt(crop.get('one_off_crop_encoding_s'), 2)} s")
    notes += [f"- {r.get('display', r['method'])}: label prompts encoded once per label set (then cached): "
              f"{_fmt(r['one_off_label_encoding_tflops'], 3)} TFLOPs" for r in rows
              if r.get("one_off_label_encoding_tflops")]
    notes += [f"- {r.get('display', r['method'])}: {n}" for r in rows for n in r.get("notes", [])]
    notes += [f"- {n}" for n in info.get("notes", [])]
    if any((r.get("train") or {}).get("estimated") for r in rows):
        notes.append("- `≈…*` train: step not run at this scale on this machine; FLOPs / measured backbone throughput")
    if any((r.get("test") or {}).get("estimated") for r in rows):
        notes.append("- `≈…*` test: method part timed on the first negatives only (see its note) and scaled to all; "
                     "`measured ≥` is the measured time with those negatives, a lower bound")
    return "\n".join(lines + ([""] + notes if notes else []))


def render_markdown(record: Mapping[str, Any]) -> str:
    """Every scale's table, with the machine and commit they were measured on (and a warning line when the
    load average exceeded the cores while it was measured)."""
    m, g = record.get("machine", {}), record.get("git", {})
    load = m.get("load_avg")
    src = f" ({m['threads_source']})" if m.get("threads_source") else ""
    head = (f"clipood efficiency ({record.get('created', '?')}; {m.get('cpu', '?')}, device {m.get('device', '?')}"
            f"{', ' + m['gpu'] if m.get('gpu') else ''}, {m.get('torch_threads', '?')} torch threads{src}"
            f"{', load ' + '/'.join(map(str, load)) if load else ''}; torch {m.get('torch', '?')}; "
            f"commit {str(g.get('commit', ''))[:10] or '?'}{' (dirty)' if g.get('dirty') else ''})")
    parts = [head]
    seen = m.get("load_seen") or []
    if m.get("busy"):
        parts.append(f"**Busy machine:** the 1-minute load average reached {max(seen):g} on {m.get('cpu_count', '?')} "
                     f"cores while this ran (other processes competed for the CPU). Times are minima over "
                     f"interleaved rounds (each table says on which clock), so ratios between methods hold better "
                     f"than absolute times; measure again on an idle machine for absolute numbers.")
    scales = list(dict.fromkeys(r.get("scale") for r in record["rows"]))
    return "\n\n".join(parts + [render_scale(record, s) for s in scales]) + "\n"
