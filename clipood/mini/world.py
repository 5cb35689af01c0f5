"""A procedural vision-language world (v2): scenes of coloured shapes and digits on patterned backgrounds.

Everything is a pure function of a seed: ``sample_scene(rng, ...)`` draws a :class:`Scene` and
``render(scene, size)`` paints it with numpy + PIL, so the same seed gives byte-identical pixels.
A scene holds a main object and up to two small extra objects that may occlude it (as photos hold more than
their label), or is object-free (a texture), a clutter of small objects, or an arrangement (a row or a pair
of one object). Captions come from templates over real words and, like web captions, name only part of the
scene ("a photo of a red star on a brick background", "a sketch of a star and a small seven", "a row of
hearts", "a plaid texture").
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .patterns import PATTERNS, paint_pattern
from .shapes import DIGIT_NAMES, OBJECTS, SHAPE_NAMES

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (35, 160, 55), "blue": (35, 75, 215), "yellow": (240, 210, 30),
    "orange": (245, 135, 20), "purple": (135, 50, 185), "pink": (245, 120, 185), "cyan": (30, 200, 215),
    "brown": (125, 75, 35), "black": (25, 25, 25), "white": (245, 245, 245), "gray": (130, 130, 130),
    "navy": (20, 30, 110), "teal": (20, 125, 120), "olive": (120, 125, 30), "maroon": (120, 20, 40),
    "lime": (160, 230, 40), "violet": (190, 130, 235), "gold": (205, 160, 40), "beige": (225, 205, 165),
}
BACKGROUNDS = list(PATTERNS)
STYLES = ["photo", "outline", "sketch", "painting"]
#: adjectives used in captions for background kinds ("a striped texture", "on a dotted background")
BACKGROUND_WORDS = {b: b for b in BACKGROUNDS}
STYLE_WORDS = {"photo": "photo", "outline": "outline", "sketch": "sketch", "painting": "painting"}


@dataclass
class Scene:
    """Everything needed to paint one image. ``objects`` is empty for object-free texture images."""

    background: str
    bg_colours: tuple[str, str]
    style: str = "photo"
    objects: list[dict] = field(default_factory=list)  # each: shape, colour, x, y, r, rot; main object first
    noise_seed: int = 0
    kind: str = "object"  # object | texture | noise | clutter | row | pair

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- sampling
def _contrasting_bg(rng: np.random.Generator, colour: str | None) -> tuple[str, str]:
    names = [c for c in COLOURS if c != colour]
    a, b = rng.choice(len(names), size=2, replace=False)
    return names[a], names[b]


def sample_object(rng: np.random.Generator, shape: str, colour: str | None = None, r_range=(0.24, 0.4)) -> dict:
    colour = colour or str(rng.choice(list(COLOURS)))
    r = float(rng.uniform(*r_range))
    margin = r * 0.8
    return {
        "shape": shape,
        "colour": colour,
        "r": r,
        "x": float(rng.uniform(margin, 1 - margin)),
        "y": float(rng.uniform(margin, 1 - margin)),
        "rot": float(rng.uniform(-30, 30) if rng.random() < 0.7 else rng.uniform(0, 360)),
    }


#: probabilities of 0, 1 and 2 small extra objects in an object scene
EXTRAS_P = (0.4, 0.35, 0.25)


def sample_scene(rng: np.random.Generator, shape: str | None = None, style: str = "photo",
                 background: str | None = None, colour: str | None = None, kind: str = "object",
                 shapes: list[str] | None = None, extras: tuple[float, ...] | None = EXTRAS_P,
                 extra_pool: list[str] | None = None) -> Scene:
    """Draw a scene. ``kind``: object (one main object of ``shape``, or one drawn from ``shapes``, plus 0–2
    small extras drawn from ``extra_pool`` with probabilities ``extras``; ``None`` = no extras), texture (no
    object), noise, clutter (3–5 small objects from ``shapes``), row / pair (copies of one object)."""
    background = background or str(rng.choice(BACKGROUNDS))
    noise_seed = int(rng.integers(2**31 - 1))
    if kind == "texture":
        return Scene(background, _contrasting_bg(rng, None), style="photo", noise_seed=noise_seed, kind=kind)
    if kind == "noise":
        return Scene("noisy", _contrasting_bg(rng, None), style="photo", noise_seed=noise_seed, kind=kind)
    if kind == "clutter":
        pool = shapes or SHAPE_NAMES
        n = int(rng.integers(3, 6))
        objs = [sample_object(rng, str(rng.choice(pool)), r_range=(0.1, 0.17)) for _ in range(n)]
        return Scene(background, _contrasting_bg(rng, None), style, objs, noise_seed, kind)
    if shape is None:
        shape = str(rng.choice(shapes or SHAPE_NAMES))
    if kind in ("row", "pair"):
        n = 2 if kind == "pair" else int(rng.integers(3, 5))
        colour = colour or str(rng.choice(list(COLOURS)))
        r = float(rng.uniform(0.08, 0.12)) if kind == "row" else float(rng.uniform(0.14, 0.2))
        y = float(rng.uniform(0.3, 0.7))
        xs = np.linspace(0.5 - (n - 1) * r * 1.15, 0.5 + (n - 1) * r * 1.15, n)
        rot = float(rng.uniform(-20, 20))
        objs = [{"shape": shape, "colour": colour, "r": r, "x": float(x), "y": y, "rot": rot} for x in xs]
        return Scene(background, _contrasting_bg(rng, colour), style, objs, noise_seed, kind)
    obj = sample_object(rng, shape, colour)
    objs = [obj]
    if extras:
        pool = extra_pool or (SHAPE_NAMES + DIGIT_NAMES)
        for _ in range(int(rng.choice(len(extras), p=np.asarray(extras) / sum(extras)))):
            objs.append(sample_object(rng, str(rng.choice(pool)), r_range=(0.1, 0.16)))
    return Scene(background, _contrasting_bg(rng, obj["colour"]), style, objs, noise_seed, kind)


# ----------------------------------------------------------------------------------------------- painting
def _object_mask(obj: dict, size: int, jitter: float = 0.0, rng: np.random.Generator | None = None) -> Image.Image:
    ss = 2  # supersample for smooth edges
    S = size * ss
    mask = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(mask)
    a = math.radians(obj["rot"])
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    scale = obj["r"] * S
    centre = np.array([obj["x"], obj["y"]]) * S
    for prim in OBJECTS[obj["shape"]]:
        pts = prim[1] @ rot * scale + centre
        if jitter and rng is not None:
            pts = pts + rng.normal(0, jitter * S, size=pts.shape)
        flat = [tuple(p) for p in pts.tolist()]
        if prim[0] == "fill":
            draw.polygon(flat, fill=255)
        elif prim[0] == "hole":
            draw.polygon(flat, fill=0)
        else:
            draw.line(flat, fill=255, width=max(1, int(round(prim[2] * scale))), joint="curve")
    return mask.resize((size, size), Image.BILINEAR)


def _edges(mask: Image.Image, width: int) -> np.ndarray:
    m = np.asarray(mask, dtype=np.float32) / 255.0
    inner = np.asarray(mask.filter(ImageFilter.MinFilter(2 * width + 1)), dtype=np.float32) / 255.0
    return np.clip(m - inner, 0, 1)


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Paint ``scene`` as an RGB uint8 array of shape (size, size, 3). Deterministic."""
    rng = np.random.default_rng(scene.noise_seed)
    if scene.kind == "noise":
        # smooth random blobs: noise upsampled from a coarse grid plus fine noise
        coarse = rng.random((max(2, size // 8), max(2, size // 8), 3)).astype(np.float32) * 255
        img = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float32)
        img = img + rng.normal(0, 25, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)

    if scene.style == "sketch":
        paper = rng.uniform(225, 250)
        img = np.full((size, size, 3), paper, np.float32) + rng.normal(0, 6, (size, size, 1))
        ink = np.array([rng.uniform(10, 70)] * 3, np.float32)
        for obj in scene.objects:
            strokes = np.zeros((size, size), np.float32)
            for _ in range(2):  # two jittered passes look hand-drawn
                m = _object_mask(obj, size, jitter=0.006, rng=rng)
                strokes = np.maximum(strokes, _edges(m, 1) * rng.uniform(0.6, 1.0))
            if rng.random() < 0.6:  # hatching inside the shape
                m = np.asarray(_object_mask(obj, size), np.float32) / 255.0
                th = rng.uniform(0, math.pi)
                yy, xx = np.mgrid[0:size, 0:size]
                hatch = ((xx * math.cos(th) + yy * math.sin(th)) % rng.uniform(3, 5) < 1).astype(np.float32)
                strokes = np.maximum(strokes, hatch * m * 0.45)
            img = img * (1 - strokes[..., None]) + ink * strokes[..., None]
        img = img + rng.normal(0, 8, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)

    c1, c2 = scene.bg_colours
    img = paint_pattern(scene.background, COLOURS[c1], COLOURS[c2], size, rng, pale=scene.kind != "texture")
    for obj in scene.objects:
        colour = np.array(COLOURS[obj["colour"]], np.float32)
        m = _object_mask(obj, size)
        if scene.style == "outline":
            alpha = np.clip(_edges(m, max(1, size // 32)) * 1.5, 0, 1)
        else:
            alpha = np.asarray(m, np.float32) / 255.0
            # mild shading: lighter towards the top-left, as if lit
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
            shade = 1.0 + 0.18 * ((obj["x"] - xx) + (obj["y"] - yy))
            colour = colour[None, None] * shade[..., None]
        img = img * (1 - alpha[..., None]) + colour * alpha[..., None]
    img = img + rng.normal(0, 4, img.shape)
    if scene.style == "painting":
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        f = int(rng.integers(2, 4))
        pil = pil.resize((size // f, size // f), Image.BILINEAR).resize((size, size), Image.NEAREST)
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.2)))
        arr = np.asarray(pil, np.float32)
        levels = float(rng.integers(4, 7))
        arr = np.round(arr / 255 * levels) / levels * 255  # posterise: flat paint
        return np.clip(arr, 0, 255).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(obj: dict, rng: np.random.Generator, p_colour: float, style: str) -> str:
    noun = obj["shape"]
    if rng.random() < p_colour and style != "sketch":
        noun = f"{obj['colour']} {noun}"
    return noun


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")


def caption(scene: Scene, rng: np.random.Generator, p_colour: float = 0.45, p_background: float = 0.25,
            p_style: float = 0.85, p_extra: float = 0.35) -> str:
    """A random caption for ``scene``. Attributes are dropped often so that the object must be learned; small
    extra objects are named only with probability ``p_extra`` (captions name part of the image)."""
    if scene.kind == "texture":
        c = scene.bg_colours[0]
        b = BACKGROUND_WORDS[scene.background]
        return str(rng.choice([f"a {b} texture", f"a {b} pattern", f"a photo of a {b} texture",
                               f"{_article(c)} {c} {b} texture", f"a {b} background"]))
    if scene.kind == "noise":
        return str(rng.choice(["random noise", "a noise pattern", "a photo of noise", "a blurry noise texture"]))
    if scene.kind == "clutter":
        names = [o["shape"] for o in scene.objects]
        a, b = names[0], names[1]
        return str(rng.choice([f"a {a} and a {b}", "many small shapes", f"a {a}, a {b} and more",
                               "a photo of many shapes", f"small {a} and {b} shapes"]))
    style = scene.style
    obj = scene.objects[0]
    if scene.kind in ("row", "pair"):
        noun = _noun(obj, rng, p_colour, style)
        head, tail = (noun.rsplit(" ", 1) + [""])[:2] if " " in noun else ("", noun)
        plural = f"{head} {_plural(tail)}".strip()
        lead = {"photo": "a photo of", "outline": "an outline of", "sketch": "a sketch of",
                "painting": "a painting of"}[style]
        if scene.kind == "pair":
            core = str(rng.choice([f"a pair of {plural}", f"two {plural}"]))
        else:
            core = str(rng.choice([f"a row of {plural}", f"{plural} in a row"]))
        return f"{lead} {core}" if rng.random() < 0.6 else core
    noun = _noun(obj, rng, p_colour, style)
    if obj["shape"] in DIGIT_NAMES and rng.random() < 0.4:
        noun = str(rng.choice(["digit", "number"])) + " " + obj["shape"]
        noun = "the " + noun
    if rng.random() < p_style:
        lead = {"photo": "a photo of", "outline": "an outline of", "sketch": "a sketch of",
                "painting": "a painting of"}[style]
        if style == "sketch" and rng.random() < 0.3:
            lead = str(rng.choice(["a pencil sketch of", "a drawing of"]))
        if style == "outline" and rng.random() < 0.3:
            lead = "a line drawing of"
    else:
        lead = "a photo of" if rng.random() < 0.5 else ""
    art = "" if noun.startswith("the ") else _article(noun) + " "
    text = f"{lead} {art}{noun}".strip()
    if len(scene.objects) > 1 and rng.random() < p_extra:
        extra = scene.objects[1]["shape"]
        text += f" and a small {extra}"
    if rng.random() < p_background and style in ("photo", "painting", "outline"):
        b = BACKGROUND_WORDS[scene.background]
        text += f" on {_article(b)} {b} background"
    if rng.random() < 0.5:
        text += "."
    return text


#: words of captions that are not object, colour, pattern or style names
ARRANGEMENT_WORDS = ["pair", "row", "two", "digit", "number", "small", "many"]
#: caption words that are adjectives in the mining corpus (besides colours and patterns)
ADJECTIVE_WORDS = ["small", "many"]


def vocabulary() -> list[str]:
    """Every content word the world's captions use (object names, colours, patterns, styles, arrangements)."""
    words = list(SHAPE_NAMES) + list(DIGIT_NAMES) + list(COLOURS) + list(BACKGROUND_WORDS.values()) + [
        "photo", "outline", "sketch", "painting", "drawing", "texture", "pattern", "background", "noise",
        "shapes"] + ARRANGEMENT_WORDS
    return sorted(set(words))
