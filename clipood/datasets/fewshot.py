"""k-shot sampling by seed (the few-shot training split: S images per class, K = S·N in all).

Each class draws from its own numpy stream seeded by ``(seed, label)``, so the images picked for one class do not
depend on which other classes exist: a base/new class split or a class subset keeps the same shots per class.
The global numpy / torch / random state is neither read nor changed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ClipoodError


def sample_few_shot(labels: Sequence[int], shots: int | None, seed: int = 0,
                    classnames: Sequence[str] | None = None) -> list[int]:
    """Pick ``shots`` sample indices per class, without replacement.

    Args:
        labels: the label of every sample (e.g. ``dataset.labels``); index i of this list is sample i.
        shots: images per class. ``None`` or ``0`` keep every image (the full training set); negative → error.
        seed: non-negative int; the same (labels, shots, seed) always gives the same indices.
        classnames: optional names, only used to make error messages readable.

    Returns:
        Sample indices sorted by (class, index): class 0's shots first, each class's indices ascending.

    Raises:
        ClipoodError: a class has fewer than ``shots`` images, or ``shots`` / ``seed`` is invalid.
    """
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, (int, np.integer))):
        raise ClipoodError(f"shots must be an integer (or None for all images), got {shots!r}")
    if shots is not None and shots < 0:
        raise ClipoodError(f"shots={shots} is invalid; use shots >= 1 (or 0 / None for all images)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ClipoodError(f"seed must be a non-negative integer, got {seed!r}")
    labels = [int(y) for y in labels]
    if any(y < 0 for y in labels):
        raise ClipoodError(f"few-shot sampling needs non-negative class labels, got {min(labels)}")
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    out: list[int] = []
    for y in sorted(by_class):
        idx = by_class[y]  # ascending by construction
        if not shots:
            out.extend(idx)
            continue
        if len(idx) < shots:
            name = classnames[y] if classnames is not None and 0 <= y < len(classnames) else str(y)
            raise ClipoodError(f"class '{name}' (label {y}) has {len(idx)} images but shots={shots}; lower shots")
        rng = np.random.default_rng([int(seed), y])
        pick = rng.choice(len(idx), size=int(shots), replace=False)
        out.extend(idx[j] for j in sorted(pick.tolist()))
    return out


def shots_per_class(labels: Sequence[int], indices: Sequence[int]) -> dict[int, int]:
    """How many of ``indices`` fall in each class (a quick check of a few-shot split)."""
    counts: dict[int, int] = {}
    for i in indices:
        y = int(labels[i])
        counts[y] = counts.get(y, 0) + 1
    return dict(sorted(counts.items()))
