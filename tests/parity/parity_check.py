"""Shared by the parity tests: compare with a reference (optionally logging the error), uneven batches (the tiny
CLIP fixture ``tiny`` is the test-wide one of ``tests/conftest.py``).

``CLIPOOD_PARITY_LOG=path`` appends one JSON line per comparison ({"name", "max_abs_err", "n"}), so the largest
error of each score against its reference can be reported; without it nothing is written.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

TOL = 1e-6


def check(name: str, got, ref, tol: float = TOL) -> float:
    g = got.detach().double().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    assert g.shape == r.shape, f"{name}: shape {g.shape} vs reference {r.shape}"
    assert np.isfinite(g).all(), f"{name}: non-finite scores"
    err = float(np.max(np.abs(g - r))) if g.size else 0.0
    log = os.environ.get("CLIPOOD_PARITY_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"name": name, "max_abs_err": err, "n": int(g.size)}) + "\n")
    assert err <= tol, f"{name}: max |Δ| = {err:.3g} > {tol:g} against the reference"
    return err


def uneven_batches(x: np.ndarray, y: np.ndarray | None = None, sizes=(1, 63, 150, 17), as_dict: bool = False):
    """x (and labels y) in batches of the given sizes, cycled (one of a single row), covering x once: tensors,
    ``(features, labels)`` pairs, or ``{"features", "labels"}`` mappings with ``as_dict``."""
    out, at, i = [], 0, 0
    while at < len(x):
        s = sizes[i % len(sizes)]
        xb = torch.tensor(x[at:at + s])
        if y is None:
            out.append(xb)
        else:
            yb = torch.tensor(y[at:at + s])
            out.append({"features": xb, "labels": yb} if as_dict else (xb, yb))
        at, i = at + s, i + 1
    return out
