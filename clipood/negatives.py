"""NegLabel negative-label mining over a word corpus (Jiang et al., ICLR 2024; used by KR-NFT).

For every candidate word w (nouns and adjectives, each embedded with its own prompt) and the ID text
features {c_1..c_N} (unit vectors, N×D), the affinity is

    η(w) = Quantile_q({ cos(t_w, c_i) : i = 1..N }),   q = 0.95 (torch.quantile, linear interpolation)

Candidates are sorted ascending by η per part of speech and the lowest ones are kept: the lowest
``fraction`` (floor) of nouns and of adjectives separately, or — when ``num_negatives`` M is given — M in
total, split between the two parts of speech in proportion to their candidate counts:
``M_noun = round_half_up(M · n_noun / (n_noun + n_adj))``, ``M_adj = M − M_noun`` (so exactly M).
Ties in η are broken by the word (stable sort by (η, word)), so the result is deterministic.

Candidate clean-up (NegLabel): words are stripped; within a part of speech duplicates are dropped
case-insensitively (first spelling kept); adjectives that are also nouns are dropped; words equal to an ID
class name (lowercase, '_' read as space, whitespace collapsed) are dropped.

The result order is KR-NFT's: adjective negatives, then noun negatives, each by ascending η.
The backbone enters only through ``encode_text``: list[str] → L2-normalised tensor (n×D).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .errors import ClipoodError
from .io import atomic_write, read_text_lines
from .labels.prompts import NEGLABEL_TEMPLATES

__all__ = [
    "Corpus", "NegativeSet", "load_corpus", "load_word_file", "mine_negatives", "mine_or_load",
    "DATA_DIR", "POS",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
POS = ("noun", "adj")
_POS_ALIASES = {"noun": "noun", "n": "noun", "adj": "adj", "adjective": "adj", "a": "adj", "s": "adj"}
FORMAT = "clipood-negatives/1"
# torch.quantile refuses inputs with more than 2**24 elements; chunk rows to stay below it.
_QUANTILE_MAX_ELEMENTS = 2**24

EncodeText = Callable[[list], torch.Tensor]


def _norm_name(s: str) -> str:
    return " ".join(str(s).replace("_", " ").split()).lower()


def _sha256(lines: Sequence[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class Corpus:
    """Candidate words by part of speech. Use ``clean()`` for the de-duplicated form mining uses."""

    nouns: list[str] = field(default_factory=list)
    adjectives: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.nouns) + len(self.adjectives)

    def clean(self) -> "Corpus":
        """Strip, drop empties and case-insensitive duplicates per POS, and adjectives that are also nouns."""

        def dedup(words: Sequence[str], exclude: set[str]) -> list[str]:
            out, seen = [], set(exclude)
            for w in words:
                w = str(w).strip()
                if not w:
                    continue
                if "\t" in w or "\n" in w or w.startswith("#"):
                    raise ClipoodError(f"corpus word {w!r} contains a tab/newline or starts with '#'; remove it")
                k = w.lower()
                if k not in seen:
                    seen.add(k)
                    out.append(w)
            return out

        nouns = dedup(self.nouns, set())
        return Corpus(nouns=nouns, adjectives=dedup(self.adjectives, {w.lower() for w in nouns}))

    def digest(self) -> str:
        """sha256 of the cleaned corpus (POS-tagged, in order): identifies it in cache headers."""
        c = self.clean()
        return _sha256([f"noun\t{w}" for w in c.nouns] + [f"adj\t{w}" for w in c.adjectives])


def _read_words(path: Path, default_pos: str) -> Corpus:
    lines = read_text_lines(path, "word file")
    by_pos: dict[str, list[str]] = {"noun": [], "adj": []}
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cols = [c.strip() for c in raw.rstrip("\r\n").split("\t")]
        cols = [c for c in cols if c != ""] if len(cols) > 1 else cols
        if len(cols) == 1:
            pos = default_pos
        elif len(cols) == 2:
            pos = _POS_ALIASES.get(cols[1].lower())
            if pos is None:
                raise ClipoodError(
                    f"{path}:{lineno}: unknown part of speech '{cols[1]}'; use 'noun' or 'adj' after a tab"
                )
        else:
            raise ClipoodError(f"{path}:{lineno}: expected 'word' or 'word<TAB>noun|adj', got {len(cols)} columns")
        by_pos[pos].append(cols[0])
    return Corpus(nouns=by_pos["noun"], adjectives=by_pos["adj"])


def load_word_file(path: str | os.PathLike, default_pos: str = "noun") -> Corpus:
    """Read any UTF-8 word list: one word per line, optionally ``word<TAB>noun|adj``.

    Lines without a POS column take ``default_pos``; blank lines and '#' comments are skipped.
    """
    pos = _POS_ALIASES.get(str(default_pos).lower())
    if pos is None:
        raise ClipoodError(f"unknown part of speech '{default_pos}'; use 'noun' or 'adj'")
    return _read_words(Path(path), pos)


def load_corpus(nouns_file: str | os.PathLike | None = None,
                adjectives_file: str | os.PathLike | None = None) -> Corpus:
    """The candidate corpus. With no arguments: the shipped WordNet 3.0 lists (clipood/data/).

    When either file is given, only the given files are read (the other part of speech is empty
    unless its file is given too); each file may still tag lines with a POS column.
    """
    if nouns_file is None and adjectives_file is None:
        nouns_file = DATA_DIR / "wordnet_nouns.txt"
        adjectives_file = DATA_DIR / "wordnet_adjectives.txt"
        for f in (nouns_file, adjectives_file):
            if not f.is_file():
                raise ClipoodError(f"shipped word list missing: {f}; reinstall clipood or run "
                                   "scripts/make_wordnet_lists.py")
    out = Corpus()
    for f, pos in ((nouns_file, "noun"), (adjectives_file, "adj")):
        if f is not None:
            c = _read_words(Path(f), pos)
            out.nouns += c.nouns
            out.adjectives += c.adjectives
    return out


@dataclass
class NegativeSet:
    """Mined negative labels: ``words[i]`` with part of speech ``pos[i]`` and affinity ``scores[i]`` (η).

    ``settings`` records how they were mined (templates, q, fraction/M, hashes) and is written to the
    header of the TSV file by ``save``.
    """

    words: list[str]
    pos: list[str]
    scores: list[float]
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (len(self.words) == len(self.pos) == len(self.scores)):
            raise ValueError("words, pos and scores must have the same length")

    def __len__(self) -> int:
        return len(self.words)

    def prompts(self, noun_template: str | None = None, adj_template: str | None = None) -> list[str]:
        """The prompt of each word with its POS template (defaults: the templates it was mined with)."""
        t = {
            "noun": noun_template or self.settings.get("noun_template", NEGLABEL_TEMPLATES["noun"]),
            "adj": adj_template or self.settings.get("adj_template", NEGLABEL_TEMPLATES["adj"]),
        }
        return [t[p].replace("{}", w) for w, p in zip(self.words, self.pos)]

    def save(self, path: str | os.PathLike) -> None:
        """Write ``word<TAB>pos<TAB>score`` lines after a '# ' header holding the settings (atomic)."""
        with atomic_write(path) as f:
            f.write(f"# {FORMAT}: NegLabel negatives mined by clipood.negatives\n")
            f.write("# settings: " + json.dumps(self.settings, sort_keys=True) + "\n")
            f.write("# word\tpos\tscore\n")
            for w, p, s in zip(self.words, self.pos, self.scores):
                f.write(f"{w}\t{p}\t{float(s)!r}\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NegativeSet":
        path = Path(path)
        if not path.is_file():
            raise ClipoodError(f"negatives file not found: {path}")
        words, pos, scores, settings = [], [], [], {}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.rstrip("\n")
                if line.startswith("# settings: "):
                    try:
                        settings = json.loads(line[len("# settings: "):])
                    except json.JSONDecodeError:
                        raise ClipoodError(f"{path}:{lineno}: corrupt settings header; delete the file") from None
                    continue
                if line.startswith("#") or not line:
                    continue
                cols = line.split("\t")
                if len(cols) != 3 or cols[1] not in POS:
                    raise ClipoodError(f"{path}:{lineno}: expected 'word<TAB>noun|adj<TAB>score'; delete or fix the file")
                try:
                    score = float(cols[2])
                except ValueError:
                    raise ClipoodError(f"{path}:{lineno}: score '{cols[2]}' is not a number") from None
                words.append(cols[0])
                pos.append(cols[1])
                scores.append(score)
        return cls(words=words, pos=pos, scores=scores, settings=settings)


def _split_m(m: int, n_noun: int, n_adj: int) -> tuple[int, int]:
    """M split in proportion to candidate counts (round half up for nouns, adjectives get the rest)."""
    total = n_noun + n_adj
    m_noun = (2 * m * n_noun + total) // (2 * total)
    return m_noun, m - m_noun


def _check_template(name: str, t: str) -> None:
    if not isinstance(t, str) or t.count("{}") != 1:
        raise ClipoodError(f"{name} {t!r} must contain exactly one '{{}}' placeholder for the word")


def _settings(id_classnames, corpus: Corpus, num_negatives, fraction, quantile,
              id_template, noun_template, adj_template) -> dict:
    return {
        "format": FORMAT,
        "id_names_sha256": _sha256(list(id_classnames)),
        "num_id": len(id_classnames),
        "corpus_sha256": corpus.digest(),
        "num_negatives": num_negatives,
        "fraction": None if num_negatives is not None else float(fraction),
        "quantile": float(quantile),
        "id_template": id_template,
        "noun_template": noun_template,
        "adj_template": adj_template,
    }


def _encode(encode_text: EncodeText, prompts: list[str]) -> torch.Tensor:
    out = torch.as_tensor(encode_text(prompts))
    if out.ndim != 2 or out.shape[0] != len(prompts):
        raise ClipoodError(f"encode_text returned shape {tuple(out.shape)} for {len(prompts)} prompts; "
                           "it must return an (n, D) tensor")
    out = out.detach().to("cpu", torch.float32)
    return torch.nn.functional.normalize(out, dim=-1)


@torch.no_grad()
def mine_negatives(
    encode_text: EncodeText,
    id_classnames: Sequence[str],
    corpus: Corpus,
    *,
    num_negatives: int | None = None,
    fraction: float = 0.15,
    quantile: float = 0.95,
    id_template: str = NEGLABEL_TEMPLATES["id"],
    noun_template: str = NEGLABEL_TEMPLATES["noun"],
    adj_template: str = NEGLABEL_TEMPLATES["adj"],
    batch_size: int = 1024,
    progress: bool = True,
) -> NegativeSet:
    """Select NegLabel negatives (module docstring for the rule). Cost: one ``encode_text`` call for
    the N ID prompts plus ceil(#candidates / batch_size) calls; memory O(batch_size · N)."""
    from tqdm.auto import tqdm

    id_classnames = [str(c) for c in id_classnames]
    if not id_classnames:
        raise ClipoodError("no ID class names given; negatives are mined against the ID labels")
    if num_negatives is not None and (isinstance(num_negatives, bool) or not isinstance(num_negatives, int)
                                      or num_negatives < 0):
        raise ClipoodError(f"num_negatives must be a non-negative integer or None, got {num_negatives!r}")
    if num_negatives is None and not (0.0 < float(fraction) <= 1.0):
        raise ClipoodError(f"fraction must be in (0, 1], got {fraction!r}")
    if not (0.0 <= float(quantile) <= 1.0):
        raise ClipoodError(f"quantile must be in [0, 1], got {quantile!r}")
    if int(batch_size) < 1:
        raise ClipoodError(f"batch_size must be >= 1, got {batch_size!r}")
    for name, t in (("id_template", id_template), ("noun_template", noun_template), ("adj_template", adj_template)):
        _check_template(name, t)

    corpus = corpus.clean()
    id_keys = {_norm_name(c) for c in id_classnames}
    cands = ([(w, "noun") for w in corpus.nouns if _norm_name(w) not in id_keys]
             + [(w, "adj") for w in corpus.adjectives if _norm_name(w) not in id_keys])
    n_noun = sum(p == "noun" for _, p in cands)
    n_adj = len(cands) - n_noun
    if not cands:
        raise ClipoodError("the corpus has no candidate words left after removing ID class names")
    if num_negatives is not None and num_negatives > len(cands):
        raise ClipoodError(f"num_negatives={num_negatives} exceeds the {len(cands)} candidate words in the corpus")

    id_feats = _encode(encode_text, [id_template.replace("{}", c) for c in id_classnames])  # N×D
    template = {"noun": noun_template, "adj": adj_template}
    prompts = [template[p].replace("{}", w) for w, p in cands]
    q = torch.tensor(float(quantile), dtype=torch.float32)
    step = int(batch_size)
    qrows = max(1, _QUANTILE_MAX_ELEMENTS // len(id_classnames))
    # Encode in order of prompt length: an encode_text that trims padding per batch then does far less
    # work (rows are independent, so the order does not change any η).
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    eta_sorted = torch.empty(len(cands), dtype=torch.float32)
    with tqdm(total=len(cands), desc="mining negatives", unit="word", disable=not progress) as bar:
        for start in range(0, len(cands), step):
            feats = _encode(encode_text, [prompts[i] for i in order[start:start + step]])  # B×D
            if feats.shape[1] != id_feats.shape[1]:
                raise ClipoodError(f"encode_text returned dimension {feats.shape[1]} for words but "
                                   f"{id_feats.shape[1]} for ID names")
            sims = feats @ id_feats.T  # B×N cosines
            for r in range(0, sims.shape[0], qrows):  # η per candidate, Eq. of NegLabel (q-quantile)
                part = sims[r:r + qrows]
                eta_sorted[start + r:start + r + part.shape[0]] = torch.quantile(part, q, dim=1)
            bar.update(feats.shape[0])
    eta = torch.empty_like(eta_sorted)
    eta[torch.tensor(order, dtype=torch.long)] = eta_sorted

    if num_negatives is None:
        k = {"noun": math.floor(float(fraction) * n_noun + 1e-9), "adj": math.floor(float(fraction) * n_adj + 1e-9)}
    else:
        k = dict(zip(POS, _split_m(num_negatives, n_noun, n_adj)))

    scores = eta.tolist()
    words, pos, kept = [], [], []
    for p in ("adj", "noun"):  # KR-NFT order: adjective negatives, then noun negatives
        idx = [i for i, (_, cp) in enumerate(cands) if cp == p]
        idx.sort(key=lambda i: (scores[i], cands[i][0]))
        for i in idx[:k[p]]:
            words.append(cands[i][0])
            pos.append(p)
            kept.append(scores[i])
    settings = _settings(id_classnames, corpus, num_negatives, fraction, quantile,
                         id_template, noun_template, adj_template)
    settings.update(num_candidates={"noun": n_noun, "adj": n_adj}, num_selected={p: k[p] for p in POS})
    return NegativeSet(words=words, pos=pos, scores=kept, settings=settings)


_CACHE_KEYS = ("format", "backbone", "id_names_sha256", "num_id", "corpus_sha256", "num_negatives",
               "fraction", "quantile", "id_template", "noun_template", "adj_template")


def _mining_options() -> dict[str, Any]:
    """The keyword options of :func:`mine_negatives` with their defaults."""
    params = inspect.signature(mine_negatives).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def mine_or_load(
    cache_path: str | os.PathLike,
    encode_text: EncodeText,
    id_classnames: Sequence[str],
    corpus: Corpus | None = None,
    *,
    backbone: str,
    **options: Any,
) -> NegativeSet:
    """Reuse ``cache_path`` when its header settings match these (backbone id string, ID names hash,
    corpus hash, M / fraction, q, templates); otherwise mine with ``mine_negatives`` and write it.
    ``options`` are :func:`mine_negatives`'s keyword options (``num_negatives``, ``fraction``, ``quantile``,
    the three templates, ``batch_size``, ``progress``) with the same defaults. ``corpus`` defaults to the
    shipped WordNet lists."""
    opts = _mining_options()
    unknown_opts = sorted(set(options) - set(opts))
    if unknown_opts:
        raise TypeError(f"mine_or_load() got unexpected keyword argument(s) {unknown_opts}; "
                        f"valid options: {sorted(opts)}")
    opts.update(options)
    corpus = load_corpus() if corpus is None else corpus
    wanted = _settings([str(c) for c in id_classnames], corpus, opts["num_negatives"], opts["fraction"],
                       opts["quantile"], opts["id_template"], opts["noun_template"], opts["adj_template"])
    wanted["backbone"] = str(backbone)
    path = Path(cache_path)
    if path.is_file():
        try:
            cached = NegativeSet.load(path)
        except ClipoodError:
            cached = None  # unreadable cache: mine again and overwrite it
        if cached is not None and all(cached.settings.get(k) == wanted[k] for k in _CACHE_KEYS):
            return cached
    ns = mine_negatives(encode_text, id_classnames, corpus, **opts)
    ns.settings["backbone"] = str(backbone)
    from .io import cache_write

    cache_write(lambda: ns.save(path), path)
    return ns
