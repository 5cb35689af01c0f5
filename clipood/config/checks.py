"""Checks of a run's settings, environment and folders, made before any model, image or cache is touched.

Every check raises :class:`clipood.errors.ClipoodError` with one line that names the key (or the environment
variable, or the folder) and the fix. :func:`check_run_settings` needs only the composed config (it runs when
the config is composed, before torch is imported); :func:`check_environment` reads the ``CLIPOOD_*`` and thread
variables; :func:`check_locations` looks at ``output_dir`` and the cache on disk (without creating anything).
"""
from __future__ import annotations

import logging
import math
import os
import string
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ClipoodError, unknown
from .compose import get

log = logging.getLogger("clipood")

__all__ = ["check_run_settings", "check_template", "check_environment", "check_locations", "folder_problem",
           "cache_writable", "cache_root"]


#: the scores of :data:`clipood.scores.SCORES`, named here so that a config is checked before torch is imported
SCORE_NAMES = ("neglabel", "mcm", "energy", "max_logit", "glmcm")
#: ``eval.score=adapter``: the adapter's own test score (``AdapterOutput.extras["ood_score"]``, e.g. LSN's and
#: NegPrompt's released scores), used as it is; not a function of the logits, so not in ``clipood.scores``
ADAPTER_SCORE = "adapter"
#: NegLabel's rules for the M mod G remainder (``clipood.scores.GROUP_REMAINDERS``, kept here without torch)
GROUP_REMAINDERS = ("drop", "spread")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(key: str, v: Any, low: int, hint: str = "") -> None:
    if not _is_int(v) or v < low:
        raise ClipoodError(f"{key}={v!r} is invalid; use an integer >= {low}{hint}")


def check_template(key: str, t: Any, what: str = "the class name") -> None:
    """A prompt template: a string with exactly one ``{}`` for ``what`` and no other ``{field}``."""
    if not isinstance(t, str):
        raise ClipoodError(f"{key}={t!r} is invalid; use a text with one '{{}}' for {what}, e.g. 'a photo of a {{}}.'")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
    except ValueError as e:  # a lone '{' or '}'
        raise ClipoodError(f"{key}={t!r} is not a valid template ({e}); write literal braces as '{{{{' and "
                           f"'}}}}'") from None
    other = [f for f in fields if f != ""]
    if other:
        raise ClipoodError(f"{key}={t!r} has an unknown field '{{{other[0]}}}'; the only field is '{{}}' ({what})")
    if len(fields) != 1:
        raise ClipoodError(f"{key}={t!r} must contain exactly one '{{}}' placeholder for {what}")


def check_run_settings(cfg) -> None:
    """Types and ranges of the shared settings (score, convention, ``eval.*``, ``negatives.*``, ``mini.*``,
    the crop prompt, the seed) so that a typo fails in milliseconds instead of after the features are encoded."""
    from ..metrics import CONVENTIONS

    e = cfg.get("eval") or {}
    if e.get("score") is not None and e["score"] not in (*SCORE_NAMES, ADAPTER_SCORE):  # without torch
        raise unknown("score", str(e["score"]), (*SCORE_NAMES, ADAPTER_SCORE))
    if e.get("convention") is not None and e["convention"] not in CONVENTIONS:
        raise unknown("metric convention (eval.convention)", e["convention"], CONVENTIONS)
    if "logit_scale" in e and (not _is_num(e["logit_scale"]) or e["logit_scale"] <= 0):
        raise ClipoodError(f"eval.logit_scale={e['logit_scale']!r} is invalid; use a positive number (CLIP: 100)")
    if "batch_size" in e:
        _int_at_least("eval.batch_size", e["batch_size"], 1)
    if "groups" in e:
        _int_at_least("eval.groups", e["groups"], 1, " (1 = no grouping)")
    if e.get("group_remainder") is not None:
        if e["group_remainder"] not in GROUP_REMAINDERS:
            raise unknown("eval.group_remainder", e["group_remainder"], GROUP_REMAINDERS)
    if "lambda_local" in e and (isinstance(e["lambda_local"], bool) or not isinstance(e["lambda_local"], (int, float))
                                or not math.isfinite(e["lambda_local"]) or e["lambda_local"] < 0):
        raise ClipoodError(f"eval.lambda_local={e['lambda_local']!r} is invalid; use a number >= 0 (GL-MCM: 1)")
    n = cfg.get("negatives") or {}
    if _is_int(n.get("num")) and _is_int(e.get("groups")) and e["groups"] > n["num"] > 0:
        raise ClipoodError(f"eval.groups={e['groups']} is more than the negatives.num={n['num']} negatives to split "
                           f"into groups; lower eval.groups")
    if n.get("num") is not None:
        _int_at_least("negatives.num", n["num"], 1, " (or null for the benchmark's default)")
    if "fraction" in n and (not _is_num(n["fraction"]) or not 0 < n["fraction"] <= 1):
        raise ClipoodError(f"negatives.fraction={n['fraction']!r} is invalid; use a number in (0, 1], e.g. 0.15")
    if "quantile" in n and (not _is_num(n["quantile"]) or not 0 <= n["quantile"] <= 1):
        raise ClipoodError(f"negatives.quantile={n['quantile']!r} is invalid; use a number in [0, 1], e.g. 0.95")
    for k, what in (("id_template", "the class name"), ("noun_template", "the word"), ("adj_template", "the word")):
        if n.get(k) is not None:
            check_template(f"negatives.{k}", n[k], what)
    if n.get("corpus") is not None:
        p = Path(str(n["corpus"])).expanduser()
        if not p.is_file():
            raise ClipoodError(f"negatives.corpus={n['corpus']!r}: no such file; give a word file (one word a line)")
        if not _has_a_word(p):
            raise ClipoodError(f"negatives.corpus={n['corpus']!r} holds no words (only blank lines or comments); "
                               f"give a word file with one word a line")
    if cfg.get("benchmark") == "mini" and isinstance(cfg.get("mini"), dict):
        m = cfg["mini"]
        _int_at_least("mini.seed", m.get("seed", 0), 0)
        for k in ("train_per_class", "test_per_class", "ood_per_set", "style_per_class"):
            if k in m:
                _int_at_least(f"mini.{k}", m[k], 1)
        root = m.get("root")
        if root is not None and Path(str(root)).expanduser().exists() and not Path(str(root)).expanduser().is_dir():
            raise ClipoodError(f"mini.root={root} is a file, not a folder; set mini.root to a folder")
    crops = cfg.get("crops")
    if isinstance(crops, dict) and "prompt" in crops:
        check_template("crops.prompt", crops["prompt"])
    if "seed" in cfg:
        _int_at_least("seed", cfg["seed"], 0)
    if cfg.get("classes") is not None and cfg.get("benchmark") in ("mini", "custom"):
        where = ("the mini world's classes are its own" if cfg["benchmark"] == "mini" else
                 "for benchmark=custom set id_data.classes=[...] (and train_data.classes=[...])")
        raise ClipoodError(f"classes={cfg['classes']} applies to named suites only (benchmark=imagenet, ...); {where}")
    if cfg.get("classes") is not None:
        from ..datasets.specs import _check_classes

        try:
            _check_classes(cfg["classes"])
        except ClipoodError as err:
            raise ClipoodError(f"classes: {err}") from None


def _has_a_word(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return any(line.strip() and not line.lstrip().startswith("#") for line in f)
    except OSError:
        return True  # unreadable: the reader names the problem


# ------------------------------------------------------------------------------------------------ environment
def check_environment() -> None:
    """``CLIPOOD_THREADS`` / ``OMP_NUM_THREADS`` are positive integers; ``CLIPOOD_DATA`` / ``CLIPOOD_CACHE`` are
    not files (a folder that does not exist yet is fine: it is created when needed)."""
    for var in ("CLIPOOD_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var)
        parts = v.split(",") if v and var == "OMP_NUM_THREADS" else [v or ""]  # OpenMP also takes "4,2"
        ok = v in (None, "") or all(p.strip().isdigit() and int(p) >= 1 for p in parts)
        if not ok:
            raise ClipoodError(f"environment variable {var}={v!r} is not a positive integer; unset it or set e.g. "
                               f"{var}=4")
    for var in ("CLIPOOD_DATA", "CLIPOOD_CACHE"):
        v = os.environ.get(var)
        if v and Path(v).expanduser().exists() and not Path(v).expanduser().is_dir():
            raise ClipoodError(f"environment variable {var}={v} names a file, not a folder; point it at a folder "
                               f"(or unset it)")


# ------------------------------------------------------------------------------------------------ folders
def folder_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be (created and) written as a folder, or None. Creates nothing: an existing folder
    gets a probe file (created and removed again, so permissions, read-only mounts and quotas all count)."""
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        return f"{p} is a file, not a folder"
    q = p
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        return f"{p} lies below {q}, which is a file"
    try:
        fd, probe = tempfile.mkstemp(prefix=".clipood-probe-", dir=q)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = "" if q == p else f" ({q} is not writable)"
        return f"{p} is not writable{where}: {e.strerror or e}"
    return None


def cache_writable(cache_dir: str | os.PathLike) -> bool:
    """False (with one warning) when the cache folder cannot be written: the run goes on in memory."""
    problem = folder_problem(cache_dir)
    if problem is None:
        return True
    from ..io import warn_cache_once

    warn_cache_once(cache_dir, problem)
    return False


def cache_root(cfg) -> Path:
    """The cache folder: ``cache_dir`` in the config, else ``$CLIPOOD_CACHE``, else ``~/.cache/clipood``."""
    c = get(cfg, "cache_dir")
    if c:
        return Path(c)
    env = os.environ.get("CLIPOOD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "clipood"


def check_locations(cfg) -> None:
    """``output_dir`` must be a writable folder (or creatable); the cache must not be a file. A cache folder
    that cannot be written only warns: cached results are then kept in memory for this run."""
    out = cfg.get("output_dir")
    if out:
        if problem := folder_problem(out):
            raise ClipoodError(f"output_dir: {problem}; set output_dir to a writable folder")
    target = cfg.get("output")  # a command that writes one file (clipood mine)
    if target:
        t = Path(str(target)).expanduser()
        if t.is_dir():
            raise ClipoodError(f"output={target} is a folder; give a file name (e.g. output={t / 'negatives.tsv'})")
        if problem := folder_problem(t.absolute().parent):
            raise ClipoodError(f"output={target}: {problem}; write it to a writable folder")
    cache = cache_root(cfg)
    if cache.exists() and not cache.is_dir():
        src = "cache_dir" if get(cfg, "cache_dir") else "CLIPOOD_CACHE"
        raise ClipoodError(f"{src}: {cache} is a file, not a folder; point {src} at a folder")
    cache_writable(cache)
