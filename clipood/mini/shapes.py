"""The object kinds of the mini world, as primitives in unit coordinates.

Each shape is a list of primitives ``(kind, points[, width])`` in the square [-1, 1]²:
``"fill"`` polygons are painted, ``"hole"`` polygons are cut out again, ``"stroke"`` polylines are drawn with a
width relative to the shape radius. Names are real English words so captions use real tokens. Two families:
48 shapes (the classes of the benchmark) and 10 stroke digits ("zero" … "nine", a glyph family for OOD).
"""
from __future__ import annotations

import math

import numpy as np


def _regular(n: int, r: float = 1.0, phase: float = 0.0, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([cx + r * np.sin(t), cy - r * np.cos(t)], 1)


def _ellipse(rx: float, ry: float, cx: float = 0.0, cy: float = 0.0, n: int = 40, t0=0.0, t1=2 * math.pi) -> np.ndarray:
    t = np.linspace(t0, t1, n, endpoint=abs(t1 - t0 - 2 * math.pi) > 1e-9)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _star(n: int = 5, r_out: float = 1.0, r_in: float = 0.42) -> np.ndarray:
    t = np.arange(2 * n) * math.pi / n
    r = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
    return np.stack([r * np.sin(t), -r * np.cos(t)], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    pts = np.stack([x, -y], 1) / 17.0
    return pts + np.array([0.0, 0.1])


def _spiral() -> np.ndarray:
    t = np.linspace(0, 5 * math.pi, 80)
    r = 0.08 + 0.9 * t / t[-1]
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _drop() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 50, endpoint=False)
    x = 0.75 * np.sin(t) * np.sin(t / 2) ** 1.2
    y = -np.cos(t)
    return np.stack([x, -y * 0.95], 1)


def _bell() -> np.ndarray:
    left = [[-0.2, -0.9], [-0.45, -0.6], [-0.55, -0.1], [-0.65, 0.4], [-0.95, 0.7]]
    right = [[-x, y] for x, y in reversed(left)]
    return np.array(left + right, dtype=float)


def _arc(rx: float, ry: float, cx: float, cy: float, d0: float, d1: float, n: int = 24) -> np.ndarray:
    """Points on an elliptic arc from angle d0 to d1 (degrees; 0 = right, 90 = down in image coordinates)."""
    t = np.radians(np.linspace(d0, d1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _shapes() -> dict[str, list]:
    S: dict[str, list] = {}
    S["circle"] = [("fill", _ellipse(1, 1))]
    S["square"] = [("fill", _regular(4, 1.2, math.pi / 4))]
    S["triangle"] = [("fill", _regular(3, 1.1) + [0, 0.15])]
    S["pentagon"] = [("fill", _regular(5, 1.05))]
    S["hexagon"] = [("fill", _regular(6, 1.05))]
    S["octagon"] = [("fill", _regular(8, 1.05, math.pi / 8))]
    S["star"] = [("fill", _star())]
    S["cross"] = [("fill", _rect(-1, -0.2, 1, 0.2) @ _rot(45)), ("fill", _rect(-0.2, -1, 0.2, 1) @ _rot(45))]
    S["plus"] = [("fill", _rect(-1, -0.25, 1, 0.25)), ("fill", _rect(-0.25, -1, 0.25, 1))]
    S["heart"] = [("fill", _heart())]
    S["diamond"] = [("fill", np.array([[0, -1.1], [0.62, 0], [0, 1.1], [-0.62, 0]], dtype=float))]
    S["ring"] = [("fill", _ellipse(1, 1)), ("hole", _ellipse(0.55, 0.55))]
    S["arrow"] = [("fill", np.array([[-1, -0.2], [0.2, -0.2], [0.2, -0.55], [1, 0], [0.2, 0.55], [0.2, 0.2], [-1, 0.2]]))]
    S["crescent"] = [("fill", _ellipse(1, 1)), ("hole", _ellipse(0.85, 0.85, cx=0.45))]
    S["ellipse"] = [("fill", _ellipse(1, 0.5))]
    S["bar"] = [("fill", _rect(-1, -0.22, 1, 0.22))]
    S["spiral"] = [("stroke", _spiral(), 0.16)]
    S["zigzag"] = [("stroke", np.array([[-1, 0.4], [-0.5, -0.4], [0, 0.4], [0.5, -0.4], [1, 0.4]]), 0.2)]
    S["trapezoid"] = [("fill", np.array([[-0.5, -0.6], [0.5, -0.6], [1, 0.6], [-1, 0.6]]))]
    S["kite"] = [("fill", np.array([[0, -1.1], [0.6, -0.3], [0, 1.1], [-0.6, -0.3]]))]
    S["semicircle"] = [("fill", _ellipse(1, 1, cy=0.3, t0=math.pi, t1=2 * math.pi, n=30))]
    S["bolt"] = [("fill", np.array([[0.15, -1], [-0.55, 0.15], [-0.05, 0.15], [-0.25, 1], [0.55, -0.2], [0.05, -0.2], [0.35, -1]]))]
    S["drop"] = [("fill", _drop())]
    S["house"] = [("fill", _rect(-0.7, -0.05, 0.7, 1)), ("fill", np.array([[-0.95, 0], [0, -1], [0.95, 0]]))]
    S["tree"] = [("fill", np.array([[0, -1], [0.8, 0.45], [-0.8, 0.45]])), ("fill", _rect(-0.18, 0.4, 0.18, 1))]
    S["flower"] = [("fill", _ellipse(0.38, 0.38, cx=0.58 * math.cos(a), cy=0.58 * math.sin(a), n=24))
                   for a in np.arange(6) * math.pi / 3] + [("fill", _ellipse(0.35, 0.35))]
    S["sun"] = [("fill", _ellipse(0.55, 0.55))] + [
        ("fill", np.array([[0.68, -0.1], [1.0, 0.0], [0.68, 0.1]]) @ _rot(a)) for a in range(0, 360, 45)]
    S["cloud"] = [("fill", _ellipse(0.45, 0.45, cx=cx, cy=cy, n=24)) for cx, cy in
                  [(-0.5, 0.15), (0.0, -0.2), (0.5, 0.1), (0.05, 0.3)]]
    S["shield"] = [("fill", np.array([[-0.8, -0.9], [0.8, -0.9], [0.8, 0.1], [0.0, 1.0], [-0.8, 0.1]]))]
    S["chevron"] = [("fill", np.array([[-1, -0.6], [0, 0.2], [1, -0.6], [1, 0.0], [0, 0.8], [-1, 0.0]]))]
    S["hourglass"] = [("fill", np.array([[-0.7, -1], [0.7, -1], [0.05, 0], [0.7, 1], [-0.7, 1], [-0.05, 0]]))]
    S["fish"] = [("fill", _ellipse(0.7, 0.4, cx=-0.2)), ("fill", np.array([[0.35, 0], [1, -0.5], [1, 0.5]]))]
    S["boat"] = [("fill", np.array([[-1, 0.35], [1, 0.35], [0.6, 0.9], [-0.6, 0.9]])),
                 ("fill", np.array([[0.0, -1], [0.0, 0.25], [0.7, 0.25]]))]
    S["key"] = [("fill", _ellipse(0.45, 0.45, cx=-0.55)), ("hole", _ellipse(0.2, 0.2, cx=-0.55)),
                ("fill", _rect(-0.15, -0.1, 1, 0.1)), ("fill", _rect(0.55, 0.05, 0.7, 0.4)),
                ("fill", _rect(0.82, 0.05, 0.97, 0.3))]
    S["bell"] = [("fill", _bell()), ("fill", _ellipse(0.16, 0.16, cy=0.85, n=16))]
    S["mushroom"] = [("fill", _ellipse(1, 0.75, cy=0.0, t0=math.pi, t1=2 * math.pi, n=30)),
                     ("fill", _rect(-0.25, -0.02, 0.25, 0.9))]
    # twelve more (world v2): a larger shape family gives more named and unnamed near-OOD concepts
    xs = np.linspace(-1, 1, 21)
    S["leaf"] = [("fill", np.concatenate([np.stack([xs, -0.45 * (1 - xs ** 2)], 1),
                                          np.stack([xs[::-1], 0.45 * (1 - xs[::-1] ** 2)], 1)]) @ _rot(40))]
    S["arch"] = [("fill", np.concatenate([_arc(0.9, 0.9, 0, -0.1, 180, 360), [[0.9, 1.0], [-0.9, 1.0]]])),
                 ("hole", np.concatenate([_arc(0.45, 0.45, 0, -0.1, 180, 360), [[0.45, 1.0], [-0.45, 1.0]]]))]
    S["clover"] = [("fill", _ellipse(0.38, 0.38, cx=cx, cy=cy, n=24)) for cx, cy in
                   [(0, -0.5), (-0.45, 0.1), (0.45, 0.1)]] + [("stroke", np.array([[0, 0], [0.15, 1.0]]), 0.16)]
    S["cup"] = [("fill", np.array([[-0.7, -0.7], [0.5, -0.7], [0.35, 0.9], [-0.55, 0.9]])),
                ("stroke", _arc(0.32, 0.38, 0.5, 0.05, 270, 450), 0.16)]
    S["flag"] = [("fill", _rect(-0.75, -1, -0.6, 1)), ("fill", _rect(-0.6, -1, 0.9, -0.1))]
    S["frame"] = [("fill", _rect(-0.9, -0.9, 0.9, 0.9)), ("hole", _rect(-0.55, -0.55, 0.55, 0.55))]
    S["window"] = [("fill", _rect(-0.9, -0.9, 0.9, 0.9)), ("hole", _rect(-0.72, -0.72, 0.72, 0.72)),
                   ("fill", _rect(-0.9, -0.09, 0.9, 0.09)), ("fill", _rect(-0.09, -0.9, 0.09, 0.9))]
    S["ladder"] = [("fill", _rect(-0.6, -1, -0.42, 1)), ("fill", _rect(0.42, -1, 0.6, 1))] + [
        ("fill", _rect(-0.45, y - 0.08, 0.45, y + 0.08)) for y in (-0.65, -0.2, 0.25, 0.7)]
    S["wave"] = [("stroke", np.stack([xs, 0.45 * np.sin(xs * 2 * math.pi)], 1), 0.2)]
    S["umbrella"] = [("fill", _ellipse(1, 0.8, cy=-0.1, t0=math.pi, t1=2 * math.pi, n=30)),
                     ("stroke", np.concatenate([[[0, -0.15]], _arc(0.22, 0.22, -0.22, 0.75, 0, 180, 10)]), 0.14)]
    S["candle"] = [("fill", _rect(-0.3, -0.3, 0.3, 1)), ("fill", _drop() * 0.3 + np.array([0, -0.7]))]
    S["anchor"] = [("stroke", np.array([[0, -0.55], [0, 0.9]]), 0.16),
                   ("stroke", _arc(0.75, 0.6, 0, 0.3, 10, 170), 0.16),
                   ("stroke", _arc(0.25, 0.25, 0, -0.8, 0, 360, 20), 0.14), ("fill", _rect(-0.4, -0.4, 0.4, -0.28))]
    return S


def _rot(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def _digits() -> dict[str, list]:
    """Hand-drawn-like stroke digits (the glyph family), named by their English words."""
    w = 0.2
    P = np.array
    D: dict[str, list] = {}
    D["zero"] = [("stroke", _arc(0.55, 0.9, 0, 0, 0, 360, 40), w)]
    D["one"] = [("stroke", P([[-0.35, -0.6], [0.05, -1.0], [0.05, 1.0]]), w), ("stroke", P([[-0.35, 1], [0.45, 1]]), w)]
    D["two"] = [("stroke", np.concatenate([_arc(0.5, 0.45, 0, -0.5, 200, 380),
                                           P([[0.45, -0.3], [-0.55, 1], [0.6, 1]])]), w)]
    D["three"] = [("stroke", _arc(0.5, 0.47, 0, -0.5, 200, 450), w), ("stroke", _arc(0.55, 0.5, 0, 0.47, 270, 520), w)]
    D["four"] = [("stroke", P([[0.3, 1], [0.3, -1], [-0.6, 0.35], [0.65, 0.35]]), w)]
    D["five"] = [("stroke", np.concatenate([P([[0.55, -1], [-0.4, -1], [-0.45, -0.15]]),
                                            _arc(0.55, 0.55, 0, 0.4, 235, 495)]), w)]
    D["six"] = [("stroke", np.concatenate([_arc(0.6, 1.0, 0.05, 0.0, 290, 180, 16),
                                           _arc(0.55, 0.5, 0, 0.45, 180, 540)]), w)]
    D["seven"] = [("stroke", P([[-0.6, -1], [0.6, -1], [-0.1, 1]]), w)]
    D["eight"] = [("stroke", _arc(0.42, 0.42, 0, -0.55, 0, 360, 30), w),
                  ("stroke", _arc(0.52, 0.5, 0, 0.48, 0, 360, 30), w)]
    D["nine"] = [("stroke", _arc(0.5, 0.45, 0, -0.5, 0, 360, 30), w), ("stroke", P([[0.5, -0.5], [0.35, 1]]), w)]
    return D


SHAPES: dict[str, list] = _shapes()
SHAPE_NAMES: list[str] = list(SHAPES)
#: the glyph family: digits, named by words ("seven"); never ID classes, used as a far-OOD set
DIGITS: dict[str, list] = _digits()
DIGIT_NAMES: list[str] = list(DIGITS)
#: everything a scene can hold as an object
OBJECTS: dict[str, list] = {**SHAPES, **DIGITS}
