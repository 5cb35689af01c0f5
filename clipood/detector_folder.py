"""The detector folder on disk: where it is (a folder, a run folder, a Hub id), what may be in it, and the
recovery of a save that was killed half way.

A folder is read only after every check here passed:

- ``checksums.json`` maps relative paths to sha256; an entry that is absolute, holds ``..`` or resolves outside
  the folder (a symlink) is refused before anything is read or hashed through it;
- every listed file exists with its hash; the three required files are listed; **every file of the adapter
  folder is listed** (loading reads all of them: a file whose line was deleted is refused, not trusted);
- every JSON file is checked against its schema (types, finite threshold / scale / temperature, a known score,
  group and batch ranges, label lists), and ``detector.json``'s adapter folder must lie inside the folder.

Each refusal is one :class:`clipood.errors.ClipoodError` naming the file and what to do.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .errors import ClipoodError

log = logging.getLogger("clipood")

__all__ = ["FORMAT", "FORMAT_VERSION", "META_FILE", "FEATURES_FILE", "CALIBRATION_FILE", "CHECKSUMS_FILE",
           "ADAPTER_DIR", "sha256_file", "inside", "verify_folder", "resolve_detector_dir", "recover_interrupted_save",
           "check_label_counts"]

FORMAT = "clipood-detector"
FORMAT_VERSION = 1
META_FILE = "detector.json"
FEATURES_FILE = "label_features.safetensors"
CALIBRATION_FILE = "calibration.json"
CHECKSUMS_FILE = "checksums.json"
ADAPTER_DIR = "adapter"
_MAX_JSON = 256 << 20  # a JSON file of a detector folder (calibration lists every image: large, not unbounded)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inside(directory: Path, rel: Any, where: Path, what: str) -> Path:
    """``directory / rel`` for a relative path that stays inside ``directory`` (symlinks resolved); else refused."""
    text = rel if isinstance(rel, str) else None
    if not text or "\\" in text or "\x00" in text or Path(text).is_absolute() or text.startswith("~") \
            or ".." in Path(text).parts:
        raise ClipoodError(f"{where}: {what} {rel!r} is not a relative path inside the detector folder; the folder "
                           f"was altered — re-save the detector")
    full = directory / text
    root = directory.resolve()
    real = full.resolve()
    if real != root and root not in real.parents:
        raise ClipoodError(f"{where}: {what} {rel!r} leads outside the detector folder (to {real}); the folder was "
                           f"altered — re-save the detector")
    return full


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > _MAX_JSON:
            raise ClipoodError(f"{path} is larger than {_MAX_JSON >> 20} MB; it is not a detector file — re-save it")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClipoodError(f"{path} is missing; the detector folder is incomplete — re-save it") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError; NaN literals pass json
        raise ClipoodError(f"{path} is not valid JSON ({e}); re-save the detector") from None


def _bad(path: Path, key: str, value: Any, want: str) -> ClipoodError:
    shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
    return ClipoodError(f"{path}: {key} = {shown} is invalid ({want}); the file was altered — re-save the detector")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _need(path: Path, node: Any, key: str, ok, want: str, optional: bool = False) -> Any:
    value = node.get(key) if isinstance(node, dict) else None
    if optional and value is None:
        return None
    if not ok(value):
        raise _bad(path, key, value, want)
    return value


def _strings(v: Any, nonempty: bool = False) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) and (s.strip() or not nonempty) for s in v)


def check_meta(meta: Any, path: Path) -> dict:
    """The schema of ``detector.json`` (see the module docstring); returns it."""
    from .scores import SCORES

    if not isinstance(meta, dict):
        raise ClipoodError(f"{path} must hold a JSON object; re-save the detector")
    if meta.get("format") != FORMAT:
        raise ClipoodError(f"{path} is not a clipood detector (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ClipoodError(f"{path} has format version {meta.get('format_version')!r}; this clipood reads version "
                           f"{FORMAT_VERSION} — use the clipood version that wrote it")
    for section in ("backbone", "labels", "score"):
        _need(path, meta, section, lambda v: isinstance(v, dict), "an object")
    bb, lab, sc = meta["backbone"], meta["labels"], meta["score"]
    _need(path, bb, "model", lambda v: isinstance(v, str) and v.strip(), "a model name")
    _need(path, bb, "pretrained", lambda v: isinstance(v, str), "a pretrained tag or weights file", optional=True)
    _need(path, bb, "identifier", lambda v: isinstance(v, str) and v, "the backbone identifier")
    _need(path, bb, "embed_dim", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
    names = _need(path, lab, "id_names", lambda v: _strings(v, nonempty=True) and v, "a list of non-empty names")
    if len({" ".join(n.lower().split()) for n in names}) != len(names):
        raise _bad(path, "labels.id_names", names, "names must be unique")
    negs = _need(path, lab, "negatives", lambda v: _strings(v), "a list of words", optional=True) or []
    for key in ("id_templates", "neg_templates"):
        _need(path, lab, key, lambda v: isinstance(v, str) or _strings(v), "a template or a list of them",
              optional=True)
    names = (*SCORES, "adapter") if meta.get("adapter") is not None else tuple(SCORES)  # adapter: its own score
    _need(path, sc, "name", lambda v: isinstance(v, str) and v in names, f"one of {', '.join(sorted(names))}")
    _need(path, sc, "logit_scale", lambda v: _is_finite(v) and v > 0, "a finite number > 0")
    _need(path, sc, "temperature", lambda v: _is_finite(v) and v > 0, "a finite number > 0")
    _need(path, sc, "groups", lambda v: _is_int(v) and 1 <= v <= max(1, len(negs)),
          f"an integer from 1 to the {len(negs)} negatives")
    _need(path, meta, "threshold", _is_finite, "a finite number, or null", optional=True)
    _need(path, meta, "batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1", optional=True)
    for key in ("calibration", "preprocessing"):
        _need(path, meta, key, lambda v: isinstance(v, dict), "an object", optional=True)
    ad = meta.get("adapter")
    if ad is not None:
        _need(path, meta, "adapter", lambda v: isinstance(v, dict), "an object or null")
        _need(path, ad, "folder", lambda v: isinstance(v, str), "a folder inside the detector")
        _need(path, ad, "requires", lambda v: _strings(v), "a list of batch keys", optional=True)
    if meta.get("posthoc") is not None:  # issue 22: a fitted post-hoc score (clipood.detector_posthoc)
        from .detector_posthoc import check_posthoc_meta

        check_posthoc_meta(meta["posthoc"], path)
    return meta


def check_calibration(data: Any, path: Path) -> dict:
    if not isinstance(data, dict):
        raise ClipoodError(f"{path} must hold a JSON object; re-save the detector")
    images = _need(path, data, "images", lambda v: _strings(v), "a list of image paths")
    scores = _need(path, data, "scores", lambda v: isinstance(v, list) and all(_is_finite(s) for s in v),
                   "a list of finite scores")
    if images and len(images) != len(scores):
        raise ClipoodError(f"{path}: {len(images)} images but {len(scores)} scores; re-save the detector")
    return data


def check_label_counts(features, meta: dict, path: Path) -> None:
    """The label features hold N ID + M negative rows of the recorded width."""
    lab, dim = meta["labels"], meta["backbone"]["embed_dim"]
    rows = len(lab["id_names"]) + len(lab.get("negatives") or [])
    if features.ndim != 2 or features.shape[0] != rows or features.shape[1] != dim:
        raise ClipoodError(f"{path}: text_features of shape {tuple(features.shape)} do not hold the {rows} labels "
                           f"(x {dim}) that {META_FILE} lists; the folder was altered — re-save the detector")


def verify_folder(directory: Path) -> tuple[dict, dict]:
    """Check the manifest, every hash, the adapter folder and every JSON file; returns (detector.json,
    calibration.json) parsed and checked."""
    sums_path = directory / CHECKSUMS_FILE
    sums = _read_json(sums_path)
    if not isinstance(sums, dict) or not all(isinstance(v, str) and _HEX64.match(v) for v in sums.values()):
        raise ClipoodError(f"{sums_path} is corrupt (not an object of sha256 digests); re-save the detector")
    files = {}
    for rel in sums:
        files[rel] = inside(directory, rel, sums_path, "entry")  # every entry first: nothing outside is read
    for required in (META_FILE, FEATURES_FILE, CALIBRATION_FILE):
        if required not in sums:
            raise ClipoodError(f"{sums_path} does not list {required}; the detector folder was altered — re-save it")
    for rel, f in files.items():
        if not f.is_file():
            raise ClipoodError(f"detector file {f} is missing; copy the complete detector folder")
        if sha256_file(f) != sums[rel]:
            raise ClipoodError(f"detector file {f} does not match its sha256 in {CHECKSUMS_FILE} (changed or "
                               f"corrupt); restore the original file or re-save the detector")
    meta = check_meta(_read_json(directory / META_FILE), directory / META_FILE)
    if meta.get("adapter") is not None:
        adir = inside(directory, meta["adapter"]["folder"], directory / META_FILE, "adapter.folder")
        if not adir.is_dir():
            raise ClipoodError(f"{directory / META_FILE}: adapter folder {adir} is missing; copy the complete folder")
        listed = {f.resolve() for f in files.values()}
        for f in sorted(p for p in adir.rglob("*") if not p.is_dir()):
            if f.resolve() not in listed:
                raise ClipoodError(f"detector file {f} is not listed in {CHECKSUMS_FILE}, and loading the adapter "
                                   f"would read it; the folder was altered — remove the file or re-save the detector")
    if meta.get("posthoc") is not None and meta["posthoc"]["file"] and meta["posthoc"]["file"] not in sums:
        raise ClipoodError(f"{directory / META_FILE}: the post-hoc statistics {meta['posthoc']['file']} are not listed "
                           f"in {CHECKSUMS_FILE}; the folder was altered — re-save the detector")
    calibration = check_calibration(_read_json(directory / CALIBRATION_FILE), directory / CALIBRATION_FILE)
    return meta, calibration


# ------------------------------------------------------------------------------------------------ where
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def recover_interrupted_save(directory: Path) -> None:
    """A ``save_pretrained`` killed between moving the old folder aside and moving the new one in leaves
    ``.<name>.old-<pid>`` and no folder: put the old one back. Leftovers of a save that completed (the new
    folder is there) and temporary folders of dead writers are removed."""
    directory = Path(directory)
    if not directory.parent.is_dir():
        return
    olds = []
    for p in directory.parent.glob(f".{directory.name}.old-*"):
        m = re.fullmatch(rf"\.{re.escape(directory.name)}\.old-(\d+)", p.name)
        if m and not _pid_alive(int(m.group(1))):
            olds.append(p)
    olds.sort(key=lambda p: p.stat().st_mtime)
    if olds and not directory.exists():
        os.replace(olds.pop(), directory)
        log.warning("restored %s from an interrupted save", directory)
    for p in olds:
        shutil.rmtree(p, ignore_errors=True)
    for p in directory.parent.glob(f".{directory.name}.tmp-*"):
        m = re.match(rf"\.{re.escape(directory.name)}\.tmp-(\d+)-", p.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def resolve_detector_dir(path: str | os.PathLike) -> Path:
    """A detector folder, a run folder holding ``detector/``, or a Hub repo id → the local detector folder."""
    p = Path(path)
    for cand in (p, p / "detector"):
        recover_interrupted_save(cand)
    if p.is_dir():
        if not (p / META_FILE).is_file() and (p / "detector" / META_FILE).is_file():
            return p / "detector"
        if not (p / META_FILE).is_file():
            raise ClipoodError(f"{p} is not a detector folder (no {META_FILE}, nor detector/{META_FILE}); pass a "
                               f"trained run's output_dir or the folder Detector.save_pretrained wrote")
        return p
    text = str(path)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not text.startswith((".", "/")):
        return _from_hub(text)
    raise ClipoodError(f"detector folder not found: {p} (nor a Hub repo id like user/name)")


def _from_hub(repo_id: str) -> Path:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ClipoodError(f"loading detector {repo_id!r} from the Hub needs huggingface_hub; pip install "
                           f"huggingface_hub, or pass a local folder") from None
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline))
    except Exception as e:  # network errors, missing repos, offline cache misses
        why = "not in the local cache and HF_HUB_OFFLINE=1 forbids downloads" if offline else \
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise ClipoodError(f"cannot fetch detector {repo_id!r} from the Hugging Face Hub ({why}); download the "
                           f"folder once with network access, or pass a local folder") from None
