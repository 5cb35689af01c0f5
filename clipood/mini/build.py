"""Build the mini world's benchmark on disk (ImageFolder PNGs), reproducing the paper's protocol in miniature.

Layout under ``<cache>/mini-world-s<seed>-<hash>/``::

    base/train/<class>/*.png          few-shot training pool (photo style)
    base/test/<class>/*.png           Base ID test (≈ ImageNet val)
    base_ood/<set>/images/*.png       OOD sets for Base (MOS single pseudo-class layout)
    new_class/test/<class>/*.png      unseen ID classes (≈ CIFAR / fine-grained rows)
    new_class_ood/<set>/images/*.png  their OOD sets
    new_style/<style>/<class>/*.png   Base classes in styles never used for training (≈ ImageNet-Sketch / -R)
    corpus.tsv                        word corpus for negative mining (word<TAB>noun|adj)
    manifest.json                     settings, class assignment, counts (written last: marks completion)

OOD sets, from named families at several distances: ``textures`` (object-free patterns ≈ Textures; far),
``digits`` (the glyph family; far), ``shapes`` (unseen shapes whose names are in the mining corpus ≈
iNaturalist; near), ``rare_shapes`` (unseen shapes the corpus never names; near) and ``clutter`` (many small
unseen shapes ≈ SUN / Places). ID and OOD object images alike hold 0–2 small extra objects drawn from every
shape and digit (the world version 2 change: real photos hold more than their label), so an image's match
to any one label varies. The mining corpus holds only grounded words: every word in it occurs in pretraining
captions with images that show it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from ..config.settings import MiniSettings
from ..errors import ClipoodError
from ..io import make_temp_dir
from .shapes import DIGIT_NAMES, OBJECTS, SHAPE_NAMES
from .world import ADJECTIVE_WORDS, BACKGROUNDS, COLOURS, STYLES, render, sample_scene, vocabulary

FORMAT_VERSION = 3  # v2: extra objects, digits, 18 patterns, grounded corpus; v3: the corpus is the whole caption
#                    vocabulary (same images as v2; older caches are never reused)
OOD_SETS = ("textures", "digits", "shapes", "rare_shapes", "clutter")


@dataclass
class MiniWorldConfig(MiniSettings):
    """Settings of a mini-world benchmark: the recipe's ``mini`` section (:class:`clipood.config.settings.MiniSettings`:
    seed, sizes, where it is built) and the world's fixed shape. A different ``seed`` gives different images *and*
    a different assignment of shapes to Base / unseen / OOD."""

    image_size: int = 64
    num_base: int = 10
    num_new: int = 10
    num_ood_shapes: int = 14  # named in the corpus; the rest of the 48 shapes are "rare" (not named)
    unseen_styles: tuple[str, ...] = ("sketch", "painting", "outline")
    #: WordNet words added to the corpus (0 by default: the tiny CLIP never saw them, they act as noise)
    distractor_nouns: int = 0
    distractor_adjectives: int = 0

    @classmethod
    def from_settings(cls, mini: MiniSettings) -> "MiniWorldConfig":
        """The world the recipe's ``mini`` section names (its own fields; the shape stays the default)."""
        return cls(**{f.name: getattr(mini, f.name) for f in fields(MiniSettings)})

    def __post_init__(self):
        n = self.num_base + self.num_new + self.num_ood_shapes
        if n >= len(SHAPE_NAMES):
            raise ClipoodError(f"mini world: num_base + num_new + num_ood_shapes = {n} leaves no rare shapes "
                               f"(there are {len(SHAPE_NAMES)} shapes); lower one of them")
        for s in self.unseen_styles:
            if s not in STYLES or s == "photo":
                raise ClipoodError(f"mini world: unseen style '{s}' must be one of {STYLES[1:]}")
        for k in ("train_per_class", "test_per_class", "ood_per_set", "style_per_class", "image_size"):
            if getattr(self, k) < 1:
                raise ClipoodError(f"mini world: {k} must be >= 1, got {getattr(self, k)}")

    def key(self) -> str:
        what = {k: v for k, v in asdict(self).items() if k != "root"}  # where it is built does not change it
        blob = json.dumps({**what, "v": FORMAT_VERSION}, sort_keys=True)
        return f"mini-world{FORMAT_VERSION}-s{self.seed}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def assign_shapes(seed: int, num_base: int = 10, num_new: int = 10, num_ood: int = 14) -> dict[str, list[str]]:
    """Deterministic split of the 48 shapes into base / new / ood (in corpus) / rare (not in corpus)."""
    order = np.random.default_rng([seed, 99]).permutation(len(SHAPE_NAMES))
    names = [SHAPE_NAMES[i] for i in order]
    a, b, c = num_base, num_base + num_new, num_base + num_new + num_ood
    return {"base": sorted(names[:a]), "new": sorted(names[a:b]), "ood": sorted(names[b:c]),
            "rare": sorted(names[c:])}


def default_cache_dir() -> Path:
    """``$CLIPOOD_DATA/mini`` if set, else ``~/.cache/clipood/mini``."""
    root = os.environ.get("CLIPOOD_DATA")
    return Path(root) / "mini" if root else Path.home() / ".cache" / "clipood" / "mini"


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", optimize=False, compress_level=6)


def _corpus(cfg: MiniWorldConfig, shapes: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Every content word of the captions (:func:`~clipood.mini.world.vocabulary`) except the rare shapes, plus
    optional distractor words from the shipped WordNet lists. Colours, patterns and the size / number words
    are adjectives, the rest nouns (shape, digit, style and scene names such as "shapes", the name clutter
    captions use)."""
    vocab = [w for w in vocabulary() if w not in set(shapes["rare"])]
    adjectives = set(COLOURS) | set(BACKGROUNDS) | set(ADJECTIVE_WORDS)
    nouns = sorted(w for w in vocab if w not in adjectives)
    adjs = sorted(w for w in vocab if w in adjectives)
    data = Path(__file__).resolve().parent.parent / "data"
    rng = np.random.default_rng([cfg.seed, 7])
    out = [(w, "noun") for w in nouns] + [(w, "adj") for w in adjs]
    for fname, pos, n in (("wordnet_nouns.txt", "noun", cfg.distractor_nouns),
                          ("wordnet_adjectives.txt", "adj", cfg.distractor_adjectives)):
        f = data / fname
        if not f.is_file() or n == 0:
            continue
        words = [w.strip() for w in f.read_text().splitlines()
                 if w.strip() and not w.startswith("#") and w.strip().isalpha() and w.strip().islower()
                 and 3 <= len(w.strip()) <= 10 and w.strip() not in SHAPE_NAMES]
        pick = rng.choice(len(words), size=min(n, len(words)), replace=False)
        out += [(words[i], pos) for i in sorted(pick)]
    seen, uniq = set(), []
    for w, p in out:
        if w not in seen:
            seen.add(w)
            uniq.append((w, p))
    return uniq


def _render_many(rng_key: list[int], n: int, **scene_kw) -> list[np.ndarray]:
    return [render(sample_scene(np.random.default_rng(rng_key + [i]), **scene_kw), _SIZE[0]) for i in range(n)]


_SIZE = [64]


def build_world(cfg: MiniWorldConfig | None = None, root: str | os.PathLike | None = None,
                progress: bool = True, force: bool = False) -> Path:
    """Build (or reuse) the benchmark for ``cfg`` under ``root`` and return its folder.

    Written to a temporary folder and renamed into place, so an interrupted build never leaves a partial
    benchmark and two concurrent builders do not corrupt each other (the second one just reuses the first).
    """
    from tqdm.auto import tqdm

    cfg = cfg or MiniWorldConfig()
    root = root if root is not None else cfg.root
    root = Path(root) if root is not None else default_cache_dir()
    final = root / cfg.key()
    if (final / "manifest.json").is_file() and not force:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(root, f".{cfg.key()}.")
    shapes = assign_shapes(cfg.seed, cfg.num_base, cfg.num_new, cfg.num_ood_shapes)
    _SIZE[0] = cfg.image_size
    s = cfg.seed
    jobs = []  # (folder, rng key, count, scene kwargs)
    for ci, c in enumerate(shapes["base"]):
        jobs.append((f"base/train/{c}", [s, 1, ci], cfg.train_per_class, dict(shape=c, style="photo")))
        jobs.append((f"base/test/{c}", [s, 2, ci], cfg.test_per_class, dict(shape=c, style="photo")))
        for si, st in enumerate(cfg.unseen_styles):
            jobs.append((f"new_style/{st}/{c}", [s, 3, ci, si], cfg.style_per_class, dict(shape=c, style=st)))
    for ci, c in enumerate(shapes["new"]):
        jobs.append((f"new_class/test/{c}", [s, 4, ci], cfg.test_per_class, dict(shape=c, style="photo")))
    for split_i, split in enumerate(("base_ood", "new_class_ood")):
        base_key = [s, 5 + split_i]
        jobs.append((f"{split}/textures/images", base_key + [0], cfg.ood_per_set, dict(kind="texture")))
        jobs.append((f"{split}/digits/images", base_key + [4], cfg.ood_per_set, dict(shapes=DIGIT_NAMES)))
        jobs.append((f"{split}/shapes/images", base_key + [1], cfg.ood_per_set, dict(shapes=shapes["ood"])))
        jobs.append((f"{split}/rare_shapes/images", base_key + [2], cfg.ood_per_set, dict(shapes=shapes["rare"])))
        jobs.append((f"{split}/clutter/images", base_key + [3], cfg.ood_per_set,
                     dict(kind="clutter", shapes=shapes["ood"] + shapes["rare"])))
    total = sum(j[2] for j in jobs)
    counts: dict[str, int] = {}
    try:
        with tqdm(total=total, desc=f"build {cfg.key()}", disable=not progress, mininterval=2) as bar:
            for folder, key, n, kw in jobs:
                for i, arr in enumerate(_render_many(key, n, **kw)):
                    _save(arr, tmp / folder / f"{i:05d}.png")
                counts[folder] = n
                bar.update(n)
        with open(tmp / "corpus.tsv", "w") as f:
            f.write("# mini-world mining corpus: grounded world words (rare shapes left out) [+ WordNet distractors]\n")
            for w, p in _corpus(cfg, shapes):
                f.write(f"{w}\t{p}\n")
        manifest = {"format": FORMAT_VERSION, "config": asdict(cfg), "shapes": shapes, "counts": counts,
                    "ood_sets": list(OOD_SETS)}
        with open(tmp / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=2)
        try:
            os.replace(tmp, final) if not final.exists() else None
        except OSError:
            pass
        if final.exists() and force and not (final / "manifest.json").is_file():
            shutil.rmtree(final)
            os.replace(tmp, final)
        if not (final / "manifest.json").is_file():
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise ClipoodError(f"{folder} is not a built mini world (no manifest.json); build it with build_world()")
    return json.loads(path.read_text())


def render_label(text: str, n: int = 8, seed: int = 0, size: int = 64) -> list[np.ndarray]:
    """Render ``n`` images for a caption or label ("a sketch of a red star", "striped", "crescent").

    Used by methods that train on images of their (negative) labels, such as LAPT: in the mini world they can
    be rendered instead of collected. Words the world does not know give object-free texture images.
    """
    words = text.lower().replace(".", " ").replace(",", " ").split()
    shape = next((w for w in words if w in OBJECTS), None)
    colour = next((w for w in words if w in COLOURS), None)
    background = next((w for w in words if w in BACKGROUNDS), None)
    style = next((st for st in STYLES if st in words), "photo")
    digest = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, digest, i])
        if shape is None:
            scene = sample_scene(rng, kind="texture", background=background)
        else:
            scene = sample_scene(rng, shape=shape, style=style, background=background, colour=colour)
        out.append(render(scene, size))
    return out
