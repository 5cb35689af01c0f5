"""Percentiles as numpy's ``np.percentile(..., method="linear")`` computes them, in memory and streaming.

:func:`linear_percentile` is the in-memory version (any size; ``torch.quantile`` refuses more than 2^24 values).

:class:`StreamingPercentile` is **exact** over a stream too large to hold (ReAct's threshold is a percentile of
all N×F activations: 1.28 M × 768 ≈ 10^9 values). It needs the order statistics at ranks ⌊q(n−1)⌋ and the next
one, and finds each by multi-pass selection over a re-iterable stream:

1. pass 1: count, min, max;
2. each further pass: a histogram of the values in the current window [a, b] (``bins`` equal-width bins, with
   each bin's count, min and max). The bin holding the wanted rank becomes the next window [min, max of that
   bin] — a closed interval of actual values, so the count below it is exact;
3. once the window holds at most ``collect_limit`` values (or a single distinct value), the next pass collects
   them into one buffer of exactly that size and selects the rank (``kthvalue``).

Result: the same order statistics as sorting everything, interpolated with numpy's formula — error 0 up to the
last ulp of the interpolation. Passes: 2 or 3 for most data (a window holding one distinct value — a bin with
a single value, or heavy ties — is resolved without a collecting pass; each histogram divides the window by
``bins``). Memory: the histogram (``bins`` × 24 bytes) plus at most
``collect_limit`` values (float64) — never the stream.
"""
from __future__ import annotations

import math

import torch

from clipood.errors import ClipoodError

from ._checks import integer, percentile

__all__ = ["StreamingPercentile", "linear_percentile"]


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's ``_lerp`` (``a + (b − a)·t``, from the upper end when t ≥ 0.5)."""
    d = b - a
    return b - d * (1.0 - t) if t >= 0.5 else a + d * t


def _ranks(n: int, q: float) -> tuple[int, int, float]:
    pos = q / 100.0 * (n - 1)
    lo = int(math.floor(pos))
    return lo, min(lo + 1, n - 1), pos - lo


def linear_percentile(values: torch.Tensor, q: float) -> float:
    """``np.percentile(values, q)`` (linear method) over all entries of ``values``, as a Python float."""
    q = percentile(q)
    flat = values.detach().reshape(-1).double()
    if flat.numel() == 0:
        raise ClipoodError("cannot take a percentile of an empty tensor")
    lo, hi, frac = _ranks(flat.numel(), q)
    srt = torch.sort(flat).values if flat.numel() <= (1 << 26) else None
    if srt is not None:
        return _lerp(float(srt[lo]), float(srt[hi]), frac)
    return _lerp(float(torch.kthvalue(flat, lo + 1).values), float(torch.kthvalue(flat, hi + 1).values), frac)


class _Target:
    """The search for one rank: a window [a, b] of values, the number of values below it, and its state."""

    def __init__(self, rank: int):
        self.rank, self.a, self.b, self.below = rank, 0.0, 0.0, 0
        self.inside = 0  # how many values the window holds (known from the pass before)
        self.value: float | None = None
        self.collect = False  # next pass gathers the window's values

    def bin_of(self, v: torch.Tensor, bins: int) -> torch.Tensor:
        scale = bins / (self.b - self.a)
        return ((v - self.a) * scale).floor().clamp_(0, bins - 1).long()


class StreamingPercentile:
    """Exact ``np.percentile(all values, q)`` over batches seen in several passes (see the module docstring).

    Use: ``while True: for batch in stream: sp.update(batch)`` then ``if not sp.end_pass(): break``; then
    ``sp.result()``. Every pass must see the same values (any order, any batching).
    """

    def __init__(self, q: float = 90.0, *, bins: int = 1 << 16, collect_limit: int = 1 << 22):
        self.q = percentile(q)
        self.bins = integer(bins, "bins", 2)
        self.collect_limit = integer(collect_limit, "collect_limit", 1)
        self.passes = 0
        self.n = 0
        self._min, self._max = math.inf, -math.inf
        self._targets: list[_Target] = []
        self._hist: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._below: list[int] = []
        self._inside: list[int] = []
        self._seen = 0
        self._kept: list[torch.Tensor | None] = []  # per target: a buffer of exactly the window's size

    # ---- per batch
    def update(self, values: torch.Tensor) -> None:
        v = values.detach().reshape(-1).double()
        if v.numel() == 0:
            return
        if self.passes == 0:
            self.n += v.numel()
            self._min, self._max = min(self._min, float(v.min())), max(self._max, float(v.max()))
            return
        self._seen += v.numel()
        for i, t in enumerate(self._targets):
            if t.value is not None:
                continue
            inside = (v >= t.a) & (v <= t.b)
            self._below[i] += int((v < t.a).sum())
            w = v[inside]
            at = self._inside[i]
            self._inside[i] += w.numel()
            if t.collect:  # one preallocated buffer: many small kept tensors would fragment the heap
                if self._inside[i] > t.inside:
                    raise ClipoodError("the percentile stream changed between passes; every pass must yield the "
                                       "same values")
                self._kept[i][at:at + w.numel()] = w
                continue
            idx = t.bin_of(w, self.bins)
            cnt, lo, hi = self._hist[i]
            cnt.index_add_(0, idx, torch.ones_like(idx))
            lo.scatter_reduce_(0, idx, w, reduce="amin")
            hi.scatter_reduce_(0, idx, w, reduce="amax")

    # ---- between passes
    def _start_pass(self) -> None:
        k = len(self._targets)
        self._below, self._inside, self._seen = [0] * k, [0] * k, 0
        self._kept = [torch.empty(t.inside, dtype=torch.float64) if t.collect and t.value is None else None
                      for t in self._targets]
        self._hist = [(torch.zeros(self.bins, dtype=torch.long),
                       torch.full((self.bins,), math.inf, dtype=torch.float64),
                       torch.full((self.bins,), -math.inf, dtype=torch.float64)) for _ in range(k)]

    def end_pass(self) -> bool:
        """Close a pass; True when another pass over the same values is needed."""
        self.passes += 1
        if self.passes == 1:
            if self.n == 0:
                raise ClipoodError("the percentile stream held no values; pass at least one non-empty batch")
            lo, hi, _ = _ranks(self.n, self.q)
            self._targets = [_Target(r) for r in sorted({lo, hi})]
            for t in self._targets:
                t.a, t.b, t.inside = self._min, self._max, self.n
                if t.a == t.b:
                    t.value = t.a
                else:
                    t.collect = self.n <= self.collect_limit
        else:
            for i, t in enumerate(self._targets):
                if t.value is not None:
                    continue
                if self._seen != self.n or self._below[i] != t.below or self._inside[i] != t.inside:
                    raise ClipoodError("the percentile stream changed between passes; every pass must yield the "
                                       "same values")
                local = t.rank - t.below
                if t.collect:
                    t.value = float(torch.kthvalue(self._kept[i], local + 1).values)
                    continue
                cnt, lo, hi = self._hist[i]
                cum = torch.cumsum(cnt, 0)
                j = int(torch.searchsorted(cum, torch.tensor(local), right=True))
                t.below += int(cum[j - 1]) if j > 0 else 0
                t.a, t.b, t.inside = float(lo[j]), float(hi[j]), int(cnt[j])
                if t.a == t.b:
                    t.value = t.a
                else:  # a window too narrow to split into bins (subnormal width) is collected whole
                    t.collect = int(cnt[j]) <= self.collect_limit or not math.isfinite(self.bins / (t.b - t.a))
        self._hist, self._kept = [], []
        more = any(t.value is None for t in self._targets)
        if more:
            self._start_pass()
        return more

    def result(self) -> float:
        if not self._targets or any(t.value is None for t in self._targets):
            raise ClipoodError("StreamingPercentile.result() before the last pass ended; call end_pass() until it "
                               "returns False")
        lo, hi, frac = _ranks(self.n, self.q)
        by_rank = {t.rank: t.value for t in self._targets}
        return _lerp(by_rank[lo], by_rank[hi], frac)
