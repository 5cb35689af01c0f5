"""How many CPU threads each stage of a run uses, and the record of what it used.

Measured on a 2-core machine (torch 2.14, clipood-mini; ``scripts/load_check.sh`` repeats the comparison):

- the **training loop on cached features** (KR-NFT, FT, CoFT, TaskRes: a few B×D by D×K products per step) is
  fastest at one thread, idle or busy: a step is too small to split, and at two threads every operator waits
  at an OpenMP barrier for a thread that another process has descheduled (150 KR-NFT steps: 1.2 s at one
  thread, 16.6 s at two, beside two CPU-bound processes);
- the **encoders** (image batches, text batches, prompt learners whose step runs the text encoder, evaluation)
  gain from every *free* core (idle: a 256-image batch 0.145 s at one thread, 0.101 s at two) and lose badly
  from cores that other work holds (beside two CPU-bound processes: 0.20 s at one thread, 0.35 s at two; a
  ConNegPT step 1.4 s vs 15 s).

So ``train`` stages run at one thread, ``encode`` stages at the number of cores that are free when the stage
starts (measured from ``/proc/stat`` over the last moments, this process's own CPU time left out; every core
elsewhere, or with no such file). ``CLIPOOD_THREADS=N`` fixes every stage at N. float32 results can move in the
last digit with the thread count (reduction order), so every run records the counts it used
(:func:`summary`, :func:`record`); ``CLIPOOD_THREADS`` makes two runs on different loads bit-comparable.
Core module: imports only torch (lazily).
"""
from __future__ import annotations

import logging
import os
import time

__all__ = ["ENV", "STAGES", "use", "plan", "free_cores", "available_cores", "summary", "record", "reset"]

log = logging.getLogger("clipood")

ENV = "CLIPOOD_THREADS"
#: stage → what runs in it
STAGES = {"encode": "image / text encoders, prompt-learner steps, evaluation",
          "train": "the training loop on cached features (small operators)"}

_used: dict[str, list[int]] = {}      # stage → thread counts used in this process, in order
_why: dict[str, str] = {}             # stage → why its last count was chosen
_last: tuple[float, float, float] | None = None   # (wall time, busy CPU seconds of all, of this process)


def available_cores() -> int:
    """Cores this process may use (its CPU affinity), shared among the processes of one launch."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1)
    return max(1, n // max(1, local))


def _busy_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, of this process) since boot; None without /proc."""
    try:
        with open("/proc/stat") as f:
            cpu = [float(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0.0)        # idle + iowait
    busy = sum(cpu[:8]) - idle                               # user nice system idle iowait irq softirq steal
    return busy / tick, (float(own[11]) + float(own[12])) / tick   # utime + stime of every thread of ours


def free_cores(window: float = 0.15) -> float | None:
    """Cores not used by *other* processes, measured over the time since the last call (when that was between
    ``window`` and 10 s ago) or over a fresh ``window`` seconds; None where /proc is missing."""
    global _last
    now = time.monotonic()
    sample = _busy_seconds()
    if sample is None:
        return None
    if _last is None or not (window <= now - _last[0] <= 10.0):
        time.sleep(window)
        _last = (now, *sample)
        now, sample = time.monotonic(), _busy_seconds()
        if sample is None:
            return None
    t0, busy0, own0 = _last
    _last = (now, *sample)
    others = max(0.0, (sample[0] - busy0) - (sample[1] - own0)) / max(now - t0, 1e-6)
    return max(0.0, (os.cpu_count() or 1) - others)


def plan(stage: str) -> tuple[int, str]:
    """(threads, why) for ``stage`` (a key of :data:`STAGES`); nothing is set."""
    if stage not in STAGES:
        raise ValueError(f"unknown thread stage {stage!r}; choose one of {', '.join(STAGES)}")
    env = os.environ.get(ENV, "").strip()
    if env:
        return int(env), f"{ENV}={env}"
    if stage == "train":
        return 1, "small-operator training loop"
    cores = available_cores()
    free = free_cores()
    if free is None:
        return cores, f"{cores} core(s)"
    n = max(1, min(cores, int(free + 0.25)))
    return n, f"{free:.1f} of {os.cpu_count() or 1} cores free"


def use(stage: str, *, heavy: bool = False) -> int:
    """Set torch's intra-op threads for ``stage`` and record it; returns the count. ``heavy=True`` runs a
    ``train`` stage under the ``encode`` policy (prompt learners: their step runs the text encoder)."""
    import torch

    n, why = plan("encode" if heavy and stage == "train" else stage)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    seen = _used.setdefault(stage, [])
    if not seen or seen[-1] != n:
        seen.append(n)
        if n < available_cores() and stage == "encode" and not os.environ.get(ENV):
            log.info("CPU threads: %d for the encoders (%s; %s=N fixes it)", n, why, ENV)
    _why[stage] = why
    return n


def record() -> dict:
    """``{"stages": {stage: [counts used]}, "why": {stage: reason}, "cores": n, "env": CLIPOOD_THREADS}``."""
    return {"stages": {k: sorted(set(v)) for k, v in _used.items()}, "why": dict(_why),
            "cores": available_cores(), "env": os.environ.get(ENV) or None}


def summary() -> str:
    """One line for results.md and the console: the threads every stage used."""
    if not _used:
        return ""
    parts = []
    for stage, counts in _used.items():
        c = sorted(set(counts))
        parts.append(f"{stage} {c[0] if len(c) == 1 else '–'.join(map(str, (c[0], c[-1])))}")
    fixed = os.environ.get(ENV)
    how = (f"{ENV}={fixed}" if fixed else
           f"train 1, encode = free cores of {available_cores()}; {ENV}=N fixes every stage")
    return f"CPU threads: {', '.join(parts)} ({how})."


def reset() -> None:
    """Forget what this process used (tests; a new run in the same process)."""
    _used.clear()
    _why.clear()
