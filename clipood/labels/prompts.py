"""Label sets (class names + templates), prompt templates and user label files.

Named label sets reuse what the installed packages ship: ImageNet-1k names and the 80 OpenAI templates
from ``open_clip.zero_shot_metadata``; the ImageNet-R / ImageNet-A 200-class subsets are the open_clip
ImageNet names at the indices that ``timm`` ships (``timm/data/_info/imagenet_{r,a}_synsets.txt``,
mapped through ``imagenet_synsets.txt``). CIFAR-10/100 names are written here (neither package ships
them). Heavy imports happen inside functions only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ClipoodError, unknown
from ..io import read_text_lines

__all__ = [
    "LabelSet", "TEMPLATES", "NEGLABEL_TEMPLATES", "LABEL_SETS", "CIFAR10_CLASSNAMES", "CIFAR100_CLASSNAMES",
    "get_label_set", "get_templates", "load_label_file", "format_prompts", "check_class_names", "check_prompts_fit",
    "prompts_too_long", "FittingTokenizer",
]

# The 7 "select" templates (CLIP's ImageNet notebook subset; used by several OOD papers).
SELECT7_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# NegLabel / KR-NFT prompts per part of speech: ID names and noun negatives use 'the nice {}.',
# adjective negatives 'This is a {} photo.' (docs/methods.md, KR-NFT official code).
NEGLABEL_TEMPLATES = {"id": "the nice {}.", "noun": "the nice {}.", "adj": "This is a {} photo."}


def _openai80() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    # open_clip stores them as lambdas; calling with '{}' gives back a format string.
    return tuple(t("{}") if callable(t) else str(t) for t in OPENAI_IMAGENET_TEMPLATES)


class _Templates(Mapping):
    """name → tuple of format strings with one '{}'. 'openai80' is read from open_clip on first access
    (so importing this module does not import open_clip).

    'neglabel' holds the ID (and noun) template only; the per-part-of-speech prompts are in
    ``NEGLABEL_TEMPLATES`` and are what ``clipood.negatives`` uses by default.
    """

    _LAZY = {"openai80": _openai80}

    def __init__(self, **fixed: tuple[str, ...]):
        self._data = dict(fixed)

    def __getitem__(self, key: str) -> tuple[str, ...]:
        if key not in self._data and key in self._LAZY:
            self._data[key] = self._LAZY[key]()
        return self._data[key]

    def __iter__(self):
        return iter(sorted(set(self._data) | set(self._LAZY)))

    def __len__(self) -> int:
        return len(set(self._data) | set(self._LAZY))


TEMPLATES: Mapping[str, tuple[str, ...]] = _Templates(
    simple=("a photo of a {}.",),
    select7=SELECT7_TEMPLATES,
    neglabel=(NEGLABEL_TEMPLATES["id"],),
)

CIFAR10_CLASSNAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# CIFAR-100 fine labels in label-index order (alphabetical by the original underscore names),
# underscores written as spaces.
CIFAR100_CLASSNAMES = (
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn mower", "leopard", "lion", "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
)


@dataclass
class LabelSet:
    """A named list of class names (label order = list order) and the templates to embed them with."""

    name: str
    classnames: list[str]
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    ids: list[str] | None = None  #: WordNet IDs in label order (ImageNet sets), else None

    def __len__(self) -> int:
        return len(self.classnames)

    def describe(self, index: int) -> str:
        """``n01443537 (goldfish)`` for a label-set index (the name alone when there are no IDs)."""
        name = self.classnames[index]
        return f"{self.ids[index]} ({name})" if self.ids else name

    def resolve(self, keys: Sequence, numeric: bool = False) -> list[int | str]:
        """Label indices of ``keys`` (class folders or a ``classes`` list), by WordNet ID, by class name
        (case-insensitive, '_' read as space) or by label index (an int key or a string of digits; with
        ``numeric`` digits are always an index).

        Returns one entry per key: its index, or the problem as a string ("unknown" / "ambiguous").
        """
        by_id = {w: i for i, w in enumerate(self.ids or [])}
        by_name: dict[str, list[int]] = {}
        for i, c in enumerate(self.classnames):
            by_name.setdefault(_norm(c), []).append(i)
        out: list[int | str] = []
        for key in keys:
            k = str(key).strip()
            if isinstance(key, int) or (numeric and k.isdigit()):
                i = int(k)
                out.append(i if 0 <= i < len(self) else "unknown")
            elif k in by_id:
                out.append(by_id[k])
            elif len(by_name.get(_norm(k), [])) == 1:
                out.append(by_name[_norm(k)][0])
            elif k.isdigit() and not by_name.get(_norm(k)):  # a label index
                out.append(int(k) if int(k) < len(self) else "unknown")
            else:
                out.append("ambiguous" if by_name.get(_norm(k)) else "unknown")
        return out

    def prompts(self) -> list[list[str]]:
        """``format_prompts(self.classnames, self.templates)``: one list of prompts per class."""
        return format_prompts(self.classnames, self.templates)


def _norm(name: str) -> str:
    return " ".join(str(name).replace("_", " ").split()).lower()


def _imagenet_names() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def _timm_info_dir() -> Path:
    from importlib.util import find_spec

    spec = find_spec("timm")  # locate without importing timm (and torch)
    if spec is None or not spec.submodule_search_locations:
        raise ClipoodError("the ImageNet-R/-A class lists come from the 'timm' package; install it (pip install timm)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "_info"


def _synsets(which: str) -> list[str]:
    """WordNet IDs from timm's ``imagenet[_r|_a]_synsets.txt`` (label order; the 1k list is sorted)."""
    try:
        return _timm_info_dir().joinpath(f"imagenet{which}_synsets.txt").read_text().split()
    except FileNotFoundError as e:
        raise ClipoodError(f"timm does not ship {e.filename}; upgrade timm (pip install -U timm)") from None


def _imagenet_subset(subset: str) -> tuple[list[str], list[str]]:
    """open_clip ImageNet names and WordNet IDs of a 200-class subset ('r' or 'a') via timm's synset files."""
    index = {s: i for i, s in enumerate(_synsets(""))}
    sub = _synsets(f"_{subset}")
    names = _imagenet_names()
    return [names[index[s]] for s in sub], sub


#: name → () -> class names, or (class names, WordNet IDs)
LABEL_SETS = {
    "imagenet": lambda: (_imagenet_names(), _synsets("")),
    "imagenet-r": lambda: _imagenet_subset("r"),
    "imagenet-a": lambda: _imagenet_subset("a"),
    "cifar10": lambda: list(CIFAR10_CLASSNAMES),
    "cifar100": lambda: list(CIFAR100_CLASSNAMES),
}


def get_label_set(name: str) -> LabelSet:
    """A named label set with the 80 OpenAI templates.

    'imagenet' keeps open_clip's 1000 names as they are, including the two duplicated names
    ('missile', 'sunglasses'): they are separate classes, so label index i is ImageNet class i.
    'imagenet-r' / 'imagenet-a' are the 200-class subsets in the order of their class indices. ImageNet sets
    carry their WordNet IDs (``ids``), which map ``n01440764``-style class folders to labels.
    """
    key = str(name).strip().lower()
    if key not in LABEL_SETS:
        raise unknown("label set", name, LABEL_SETS)
    got = LABEL_SETS[key]()
    names, ids = got if isinstance(got, tuple) else (got, None)
    return LabelSet(name=key, classnames=list(names), templates=list(TEMPLATES["openai80"]),
                    ids=None if ids is None else list(ids))


def get_templates(name: str) -> list[str]:
    """Templates by name: 'openai80', 'simple', 'select7', 'neglabel' (see ``TEMPLATES``)."""
    if name not in TEMPLATES:
        raise unknown("template set", name, TEMPLATES)
    return list(TEMPLATES[name])


def load_label_file(path: str | os.PathLike) -> list[str]:
    """Class names from a text file: one per line, in label order; lines starting with '#' are comments.

    Blank lines and duplicate names (compared case-insensitively) raise ``ClipoodError`` naming the
    file and line, since either would silently shift or merge label indices.
    """
    path = Path(path)
    lines = read_text_lines(path, "label file")
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(lines, start=1):
        name = raw.strip()
        if name.startswith("#"):
            continue
        if not name:
            raise ClipoodError(f"{path}:{lineno}: blank line in label file; remove it (one class name per line)")
        key = name.lower()
        if key in seen:
            raise ClipoodError(
                f"{path}:{lineno}: duplicate class name '{name}' (first on line {seen[key]}); make names unique"
            )
        seen[key] = lineno
        names.append(name)
    if not names:
        raise ClipoodError(f"label file {path} holds no class names")
    return names


def format_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """``out[i][j] = templates[j].format(classnames[i])`` — one list of prompts per class."""
    if isinstance(templates, str):
        templates = [templates]
    if not templates:
        raise ClipoodError("no templates given; pass at least one, e.g. 'a photo of a {}.'")
    for t in templates:
        if t.count("{}") != 1:
            raise ClipoodError(f"template {t!r} must contain exactly one '{{}}' placeholder for the class name")
    return [[t.replace("{}", c) for t in templates] for c in classnames]


# ------------------------------------------------------------------------------------------------ names
def _normalised(name: str) -> str:
    """A name as CLIP's tokenizer reads it: case, surrounding and repeated whitespace do not count."""
    return " ".join(str(name).split()).lower()


def check_class_names(names: Sequence[str], where: str) -> None:
    """ID class names must be non-empty and distinct as the text encoder reads them (``Cat`` and ``cat``, or
    ``dog`` twice, would give identical prompt rows: two classes the detector cannot tell apart)."""
    seen: dict[str, str] = {}
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise ClipoodError(f"{where}: class {i} has an empty name ({n!r}); its prompt would be 'a photo of a .' "
                               f"— name every class")
        key = _normalised(n)
        if key in seen:
            same = "the same name" if seen[key] == n else "names that differ only in case or spacing"
            raise ClipoodError(f"{where}: classes {seen[key]!r} and {n!r} are {same}, which the text encoder "
                               f"reads as one (it lowercases); rename or merge one of them")
        seen[key] = n


def _token_count(tokenizer, text: str) -> int | None:
    """Tokens of ``text`` with start and end tokens, untruncated (None: a tokenizer this cannot count for)."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):  # open_clip's SimpleTokenizer
        return len(tokenizer.encode(text)) + 2
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
    if inner is not None and callable(inner):
        return len(inner(text, truncation=False)["input_ids"])
    return None


def prompts_too_long(tokenizer, prompts: Sequence[str]) -> list[tuple[int, int]]:
    """``[(index, tokens)]`` of the prompts longer than the tokenizer's context (which would be cut, so two
    long names could become one text). Only prompts long enough to be at risk are tokenised."""
    limit = getattr(tokenizer, "context_length", None)
    if not isinstance(limit, int):
        return []
    out = []
    for i, p in enumerate(prompts):
        if 2 * len(p.encode("utf-8")) + 2 <= limit:  # a BPE token covers at least one byte (lowercasing aside)
            continue
        n = _token_count(tokenizer, p)
        if n is not None and n > limit:
            out.append((i, n))
    return out


def check_prompts_fit(tokenizer, prompts: Sequence[str], what: str, fix: str) -> None:
    """Refuse prompts the text encoder would truncate (one line naming the first, its length and ``fix``)."""
    long = prompts_too_long(tokenizer, prompts)
    if long:
        i, n = long[0]
        more = f" (and {len(long) - 1} more)" if len(long) > 1 else ""
        raise ClipoodError(f"{what}: the prompt {prompts[i]!r} has {n} tokens, more than the text encoder's context "
                           f"of {tokenizer.context_length}{more}; it would be cut (long names cut there become one "
                           f"text); {fix}")


class FittingTokenizer:
    """A tokenizer that refuses to truncate: what prompt learners get, so that a long learned-context phrase
    (``ctx_init``) or class name fails with one line instead of cutting every prompt at the context length.
    Every other attribute is the wrapped tokenizer's."""

    def __init__(self, tokenizer, what: str, fix: str):
        self._inner, self._what, self._fix = tokenizer, what, fix

    def __call__(self, texts, *args, **kwargs):
        texts = [texts] if isinstance(texts, str) else list(texts)
        check_prompts_fit(self._inner, texts, self._what, self._fix)
        return self._inner(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)
