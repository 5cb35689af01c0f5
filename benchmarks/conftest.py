"""Efficiency suite plumbing: scales built once per session, one row per (scale, method), and at the end the
Tab. 7-style Markdown table printed and the JSON record written (``--bench-json``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_SCALES: dict = {}
_ROWS: dict = {}
_LOAD: list = []   # 1-minute load averages seen while measuring (before each scale, after its rows)


def scale_names(config) -> list[str]:
    raw = config.getoption("--bench-scale", default="mini,vit-b-16") or "mini,vit-b-16"
    return [s.strip() for s in raw.split(",") if s.strip()]


def bench_threads() -> int:
    """torch threads of the suite: ``CLIPOOD_THREADS`` when set, else 1 on a CPU (a cost measurement that does
    not depend on what else runs; at 2 threads on 2 busy cores small operators stall on every barrier), torch's
    own count with a GPU. Set before anything is measured and recorded with the results."""
    env = os.environ.get("CLIPOOD_THREADS", "").strip()
    if env:
        return int(env)
    return torch.get_num_threads() if torch.cuda.is_available() else 1


def get_scale(config, name: str):
    from efficiency_scale import make_scale

    if name not in _SCALES:
        torch.set_num_threads(bench_threads())
        _LOAD.append(_load1())
        _SCALES[name] = make_scale(name, rounds=config.getoption("--bench-rounds") or None,
                                   train_budget_s=config.getoption("--bench-train-budget") or None)
    return _SCALES[name]


def get_row(config, scale: str, method: str) -> dict:
    """The measured row. Every method of a scale is measured on the first request, in interleaved rounds
    (``efficiency.measure_methods``), and memoised: the acceptance tests reuse the parametrised tests' rows."""
    from efficiency import measure_methods

    key = (scale, method)
    if key not in _ROWS:
        names = methods() if method in methods() else [method]
        for m, row in measure_methods(get_scale(config, scale), names).items():
            _ROWS[(scale, m)] = row
        _LOAD.append(_load1())
    return _ROWS[key]


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def methods() -> list[str]:
    import adapters
    from efficiency_scale import ZERO_SHOT
    from efficiency_seed import SEED

    return list(ZERO_SHOT) + adapters.list_adapters() + list(SEED)


def pytest_generate_tests(metafunc):
    if "bench_scale" in metafunc.fixturenames and "bench_method" in metafunc.fixturenames:
        pairs = [(s, m) for s in scale_names(metafunc.config) for m in methods()]
        metafunc.parametrize(("bench_scale", "bench_method"), pairs, ids=[f"{s}-{m}" for s, m in pairs])


@pytest.fixture
def bench_row(request, bench_scale, bench_method):
    return get_row(request.config, bench_scale, bench_method)


def _record() -> dict:
    from efficiency import now_iso

    from clipood.efficiency import measure as bench
    from clipood.efficiency.record import SCHEMA

    device = next(iter(_SCALES.values())).device if _SCALES else None
    machine = bench.machine_info(device)
    seen = [x for x in [*_LOAD, _load1()] if x is not None]
    machine.update(threads_source="CLIPOOD_THREADS" if os.environ.get("CLIPOOD_THREADS") else "suite default",
                   load_seen=seen, busy=bench.busy_machine(seen, machine.get("cpu_count")))
    return {"schema": SCHEMA, "created": now_iso(), "machine": machine,
            "git": bench.git_info(Path(__file__).resolve().parent),
            "scales": {n: s.describe() for n, s in _SCALES.items()},
            "rows": [r for (s, m), r in sorted(_ROWS.items(), key=lambda kv: (_order(kv[0][0]), _morder(kv[0][1])))]}


def _order(scale: str) -> int:
    return {"mini": 0, "vit-b-16": 1}.get(scale, 2)


def _morder(method: str) -> tuple:
    first = ["neglabel", "mcm", "nft"]
    return (first.index(method) if method in first else len(first), method)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _ROWS:
        return
    from clipood.efficiency.record import render_markdown, save_record

    record = _record()
    path = Path(config.getoption("--bench-json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_record(record, path)
    terminalreporter.write_sep("=", "clipood efficiency (paper Tab. 7 layout)")
    terminalreporter.write_line(render_markdown(record))
    terminalreporter.write_line(f"efficiency record written to {path} (render again: clipood bench-report {path})")
