"""The texture family of the mini world: 18 background patterns, each a pure function of a seeded generator.

Every pattern name is a real English word used in captions ("a brick texture", "a star on a plaid
background"); the first eight are the v1 backgrounds.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

PATTERNS = ["plain", "striped", "dotted", "checkered", "noisy", "gradient", "wavy", "grid",
            "brick", "plaid", "concentric", "radial", "speckled", "marbled", "crosshatched", "swirly",
            "cloudy", "scaly"]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32) / 255.0


def pattern_map(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Mixing weights t ∈ [0, 1] (size×size) between a pattern's two colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, math.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    period = rng.uniform(0.12, 0.3)
    cx, cy = rng.uniform(0.2, 0.8, size=2)
    r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    ang = np.arctan2(yy - cy, xx - cx)
    if kind == "plain":
        return np.zeros_like(xx)
    if kind == "striped":
        return ((u / period) % 1.0 < 0.5).astype(np.float32)
    if kind in ("dotted", "checkered", "grid"):
        p = period * (0.9 if kind == "grid" else 0.8)
        if kind == "dotted":
            dx, dy = (xx / p) % 1.0 - 0.5, (yy / p) % 1.0 - 0.5
            return (dx * dx + dy * dy < 0.07).astype(np.float32)
        if kind == "checkered":
            return ((np.floor(xx / p) + np.floor(yy / p)) % 2).astype(np.float32)
        w = 1.6 / size / p
        return (((xx / p) % 1.0 < w) | ((yy / p) % 1.0 < w)).astype(np.float32)
    if kind == "noisy":
        return rng.random((size, size)).astype(np.float32)
    if kind == "gradient":
        return (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    if kind == "wavy":
        return (np.sin(2 * math.pi * (u + 0.06 * np.sin(2 * math.pi * v / 0.35)) / period) > 0).astype(np.float32)
    if kind == "brick":
        h = period * 0.6
        row = np.floor(yy / h)
        bx = (xx / (2 * h) + 0.5 * (row % 2)) % 1.0
        return (((yy / h) % 1.0 < 0.18) | (bx < 0.09)).astype(np.float32)
    if kind == "plaid":
        a = ((u / period) % 1.0 < 0.35).astype(np.float32)
        b = ((v / period) % 1.0 < 0.35).astype(np.float32)
        return 0.5 * (a + b)
    if kind == "concentric":
        return ((r / (period * 0.6)) % 1.0 < 0.5).astype(np.float32)
    if kind == "radial":
        k = int(rng.integers(6, 13))
        return ((ang / (2 * math.pi) * k) % 1.0 < 0.5).astype(np.float32)
    if kind == "speckled":
        return (rng.random((size, size)) < 0.08).astype(np.float32)
    if kind == "marbled":
        turb = _smooth_noise(rng, size, 5)
        return 0.5 + 0.5 * np.sin(2 * math.pi * (u / period + 3.0 * turb))
    if kind == "crosshatched":
        p = period * 0.5
        a = ((xx + yy) / p) % 1.0 < 0.25
        b = ((xx - yy) / p) % 1.0 < 0.25
        return (a | b).astype(np.float32)
    if kind == "swirly":
        return (np.sin(3 * ang + 2 * math.pi * r / (period * 0.7)) > 0).astype(np.float32)
    if kind == "cloudy":
        return np.clip((_smooth_noise(rng, size, 4) - 0.35) * 2.5, 0, 1)
    if kind == "scaly":
        p = period * 0.7
        row = np.floor(yy / p)
        sx = (xx / p + 0.5 * (row % 2)) % 1.0 - 0.5
        sy = (yy / p) % 1.0
        return (np.sqrt(sx ** 2 + sy ** 2) % 0.5 < 0.12).astype(np.float32)
    raise ValueError(f"unknown pattern {kind!r}")


def paint_pattern(kind: str, rgb1, rgb2, size: int, rng: np.random.Generator, pale: bool = True) -> np.ndarray:
    """A size×size×3 float image of pattern ``kind`` in two colours (paler when it is a background)."""
    a = np.array(rgb1, dtype=np.float32)
    b = np.array(rgb2, dtype=np.float32)
    if pale:  # backgrounds are paler than objects so that objects stand out
        a, b = 0.55 * a + 0.45 * 200, 0.55 * b + 0.45 * 200
    t = pattern_map(kind, size, rng)
    return a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
