"""Cost measurement for efficiency benchmarks: FLOPs (forward and backward apart), wall time, peak memory,
learnable parameters, and the machine / git metadata a benchmark record carries.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (one multiply-add = 2 FLOPs; a matrix
product A (m×k) · B (k×n) counts 2·m·k·n), with two corrections that matter for CLIP:

- torch's CPU attention kernel (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward) has no
  FLOP formula, so attention would count zero on CPU. :func:`register_cpu_attention_flops` registers the same
  formulas torch uses for its GPU kernels: forward 4·B·H·L·S·E (QKᵀ and the product with V), backward 2.5× that
  (without recomputation).
- ``nn.MultiheadAttention`` in eval mode without gradients takes a fused "fast path" that hides its input
  projections and attention from the counter; :func:`count_flops` switches those modules to train mode while it
  counts (CLIP has no dropout, so the arithmetic is the same).

Counting can run on *fake* tensors (``fake=True``): shapes propagate, nothing is computed, so a step that takes
minutes on a CPU is counted in seconds, with the same operator shapes as the real run.
Everything here is core: it never imports ``adapters``.
"""
from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import subprocess
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

__all__ = [
    "FlopCount", "Timing", "count_flops", "count_parameters", "git_info", "machine_info", "peak_memory",
    "register_cpu_attention_flops", "time_call", "synchronize", "InterleavedTimer", "busy_machine",
]


# ------------------------------------------------------------------------------------------------ FLOPs
_REGISTERED = False


def register_cpu_attention_flops() -> bool:
    """Give torch's CPU flash-attention ops the FLOP formulas of the GPU kernels (idempotent).

    Returns True when formulas were added now or before; False when this torch has no such op.
    """
    global _REGISTERED
    if _REGISTERED:
        return True
    from torch.utils import flop_counter as fc

    ops = torch.ops.aten
    fwd = getattr(ops, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(ops, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is None or bwd is None:
        return False
    registry = fc.flop_registry

    if fwd not in registry:
        @fc.register_flop_formula(fwd)
        def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    if bwd not in registry:
        @fc.register_flop_formula(bwd)
        def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    _REGISTERED = True
    return True


@dataclass
class FlopCount:
    """FLOPs of one call: ``forward`` and ``backward`` apart (backward includes any activation recomputation
    that checkpointing does during back-propagation), and the forward+backward total per operator."""

    forward: int = 0
    backward: int = 0
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.forward + self.backward


@contextlib.contextmanager
def _slow_attention_path(modules: Iterable[nn.Module]):
    """Put every nn.MultiheadAttention under ``modules`` in train mode (no fused fast path) for a while."""
    changed = []
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, nn.MultiheadAttention) and not sub.training:
                sub.training = True
                changed.append(sub)
    try:
        yield
    finally:
        for sub in changed:
            sub.training = False


def _assumed_scalars_mode():
    """Under fake tensors, a value read (``int(t)``, ``bool(t)``, ``t.item()``) has no answer; this mode answers
    0 (True for booleans) so that input checks such as label ranges pass. Shapes must not depend on values."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten

    class _Assume(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is aten._local_scalar_dense.default:
                return True if args[0].dtype == torch.bool else 0
            if func is aten.is_nonzero.default:
                return True
            return func(*args, **(kwargs or {}))

    return _Assume()


def _merge(dst: dict[str, int], counter) -> None:
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        dst[str(op)] = dst.get(str(op), 0) + int(n)


def count_flops(forward: Callable[[], Any], backward: Callable[[Any], Any] | None = None, *,
                modules: Iterable[nn.Module] = (), fake: bool = False) -> FlopCount:
    """FLOPs of ``forward()`` and, if given, of ``backward(forward_output)`` counted apart.

    ``modules``: models whose nn.MultiheadAttention layers must not take the fused fast path (pass the backbone
    and the adapter). ``fake=True`` runs both calls on fake tensors (no arithmetic, no memory); the callables
    then must not depend on tensor values for shapes (value reads return 0 / True: checks pass; ops with
    value-dependent output shapes such as ``nonzero`` or ``unique`` fail). Under fake tensors
    ``backward`` should use :func:`torch.autograd.grad` (gradients cannot be stored in real ``.grad``).
    """
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_attention_flops()
    result = FlopCount()
    mode: contextlib.AbstractContextManager = contextlib.nullcontext()
    assume: contextlib.AbstractContextManager = contextlib.nullcontext()
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        mode, assume = FakeTensorMode(allow_non_fake_inputs=True), _assumed_scalars_mode()
    with mode, assume, _slow_attention_path(list(modules)):
        with FlopCounterMode(display=False) as fc_fwd:
            out = forward()
        result.forward = int(fc_fwd.get_total_flops())
        _merge(result.by_op, fc_fwd)
        if backward is not None:
            with FlopCounterMode(display=False) as fc_bwd:
                backward(out)
            result.backward = int(fc_bwd.get_total_flops())
            _merge(result.by_op, fc_bwd)
    return result


# ----------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued kernels on ``device`` (a no-op on CPU)."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(dev)
    elif dev is not None and dev.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


@dataclass
class Timing:
    """Wall-clock seconds of ``rounds`` calls after ``warmup`` untimed calls."""

    times: list[float]
    warmup: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def minimum(self) -> float:
        return min(self.times)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": self.minimum, "rounds": len(self.times), "warmup": self.warmup,
                "times_s": list(self.times)}


def time_call(fn: Callable[[], Any], *, rounds: int = 3, warmup: int = 1,
              device: torch.device | str | None = None) -> Timing:
    """Time ``fn()`` ``rounds`` times (device-synchronised before and after each call)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for _ in range(max(0, warmup)):
        fn()
    synchronize(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return Timing(times, warmup)


class InterleavedTimer:
    """Times many calls in interleaved rounds: round r runs every job (that has an r-th round) once, in turn, so
    a burst of load from other processes falls on every job alike; each job's :class:`Timing` has its minimum
    (the least disturbed call: what a loaded machine distorts least) and its median.

    ``add(fn, rounds=, warmup=, then=)`` registers a job: ``rounds`` calls at least, and more (up to
    ``max_rounds``) while its timed calls add up to less than ``min_total`` seconds, so that a call of a few
    milliseconds gets enough rounds for an undisturbed minimum. ``run()`` does every warm-up call, then the
    rounds, then calls each ``then(timing)`` in the order the jobs were added, and forgets the jobs.

    ``clock="cpu"`` times with this process's CPU time instead of the wall clock: for single-threaded CPU work
    that is the work itself, without the time other processes held the core (on a loaded 2-core machine a 3 ms
    step is preempted in nearly every call, so even its wall-clock minimum is off by a scheduler slice)."""

    CLOCKS = {"wall": "perf_counter", "cpu": "process_time"}   #: clock → function of :mod:`time`

    def __init__(self, device: torch.device | str | None = None, clock: str = "wall") -> None:
        if clock not in self.CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(self.CLOCKS)}, got {clock!r}")
        self.device = device
        self.clock = clock
        self._jobs: list[dict[str, Any]] = []

    def add(self, fn: Callable[[], Any], *, rounds: int = 3, warmup: int = 1, min_total: float = 0.0,
            max_rounds: int = 50, then: Callable[[Timing], Any] | None = None) -> None:
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        self._jobs.append({"fn": fn, "rounds": int(rounds), "warmup": max(0, int(warmup)), "then": then,
                           "min_total": float(min_total), "max_rounds": max(int(rounds), int(max_rounds)),
                           "times": []})

    @staticmethod
    def _wants(job: dict[str, Any], r: int) -> bool:
        return r < job["rounds"] or (r < job["max_rounds"] and sum(job["times"]) < job["min_total"])

    def run(self) -> list[Timing]:
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            for _ in range(job["warmup"]):
                job["fn"]()
        now = getattr(time, self.CLOCKS[self.clock])
        r = 0
        while any(self._wants(job, r) for job in jobs):
            for job in jobs:
                if self._wants(job, r):
                    synchronize(self.device)
                    t0 = now()
                    job["fn"]()
                    synchronize(self.device)
                    job["times"].append(now() - t0)
            r += 1
        out = [Timing(job["times"], job["warmup"]) for job in jobs]
        for t, job in zip(out, jobs):
            if job["then"] is not None:
                job["then"](t)
        return out


def busy_machine(load: Iterable[float] | None = None, cores: int | None = None) -> bool:
    """True when the 1-minute load average (``load``: the values seen during a run; default: now) exceeded the
    cores: other processes competed for the CPU while it was measured."""
    if load is None:
        try:
            load = [os.getloadavg()[0]]
        except (AttributeError, OSError):
            return False
    vals = [float(x) for x in load]
    return bool(vals) and max(vals) > (cores or os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------- memory
class _LiveBytes:
    """Bytes of tensor storages created by operators inside the mode and still alive (CPU peak tracker)."""

    def __init__(self) -> None:
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def add(self, t: torch.Tensor) -> None:
        s = t.untyped_storage()
        key, n = s.data_ptr(), s.nbytes()
        if n == 0 or key in self.live:
            return
        self.live[key] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(s, self.free, key)


def _tracking_mode(tracker: _LiveBytes):
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    tracker.add(t)
            return out

    return _Mode()


def peak_memory(fn: Callable[[], Any], device: torch.device | str | None = None) -> int:
    """Peak bytes allocated *by* ``fn()`` above what was allocated before it (activations, gradients,
    temporaries; not the model's weights). CUDA: the allocator's peak; CPU: storages made by operators."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gc.collect()
    if dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev) - before)
    tracker = _LiveBytes()
    with _tracking_mode(tracker):
        fn()
    return int(tracker.peak)


# ----------------------------------------------------------------------------------------------- params
def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (learnable) parameter elements, each shared tensor counted once."""
    seen, n = set(), 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


# --------------------------------------------------------------------------------------------- metadata
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Host, CPU, threads, load, torch version and accelerator of this run."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    info: dict[str, Any] = {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "device": str(dev),
    }
    try:
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def git_info(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit, branch and whether the work tree had changes (empty values outside a git checkout)."""
    cwd = str(path) if path is not None else os.getcwd()

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status)}


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass record as a plain dict (for JSON)."""
    return asdict(obj)
