"""Atomic file writes and small serialisation helpers (never leave a half-written file behind)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A temporary folder beside its final location (renamed into place later), with ordinary permissions.
    Its name carries the writer's process id, so that :func:`clean_stale_temps` can tell a killed writer's."""
    d = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    os.chmod(d, 0o777 & ~_umask())
    return d


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target folder; on success rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the final file gets ordinary permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # writers that recreate the file (safetensors) would leave it 0600
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file for writing; it replaces ``path`` only when the block succeeds."""
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Save a dict of tensors as safetensors atomically (contiguous CPU copies)."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_safetensors(path: str | os.PathLike) -> dict:
    """Load safetensors; a corrupt or truncated file raises ClipoodError naming it."""
    from safetensors.torch import load_file

    from .errors import ClipoodError

    path = Path(path)
    if not path.is_file():
        raise ClipoodError(f"file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for corrupt headers/data
        raise ClipoodError(f"corrupt safetensors file {path} ({type(e).__name__}: {e}); delete it and rerun") from None


def read_text_lines(path: str | os.PathLike, what: str) -> list[str]:
    """Lines of a UTF-8 text file; a missing or non-UTF-8 file raises ClipoodError naming ``what`` and the path."""
    from .errors import ClipoodError

    path = Path(path)
    if not path.is_file():
        raise ClipoodError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ClipoodError(f"{what} {path} is not UTF-8 text ({e.reason}); save it as UTF-8") from None


# ------------------------------------------------------------------------------------------------ caches
log = logging.getLogger("clipood")
_WARNED: set[str] = set()


def warn_cache_once(folder: str | os.PathLike, problem: str) -> None:
    """One warning per cache folder that cannot be written (the run keeps its results in memory)."""
    key = str(Path(folder).expanduser().absolute())
    if not any(key == w or key.startswith(w + os.sep) for w in _WARNED):  # once for a folder and what is below it
        _WARNED.add(key)
        log.warning("warning: cache not written (%s); going on in memory. Set cache_dir= or CLIPOOD_CACHE to a "
                    "writable folder to keep encoded features", problem)


def _write_errors() -> tuple[type, ...]:
    """What a full or broken disk raises while a cache file is written: ``OSError`` from Python and numpy,
    safetensors' own ``SafetensorError`` (its Rust writer does not raise OSError)."""
    errors: list[type] = [OSError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # an old safetensors: its errors are OSError or RuntimeError
        pass
    return tuple(errors)


def cache_write(write, path: str | os.PathLike) -> bool:
    """``write()`` a cache file; a write error of a full, read-only or broken disk (``OSError``, safetensors'
    ``SafetensorError``) warns once and returns False instead of throwing away what was just computed."""
    try:
        write()
        return True
    except _write_errors() as e:
        why = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        warn_cache_once(Path(path).parent, f"{Path(path).parent}: {why}")
        return False


# ------------------------------------------------------------------------------------------------ temp files
#: ``.<name>.<pid>-<random>.tmp`` (atomic_path), ``<prefix><pid>-<random>`` folders (make_temp_dir: ``.tmp-``,
#: ``.<name>.tmp-``), ``.tmp-trash-<name>-<pid>`` (checkpoints being discarded)
_TEMP = re.compile(r"^\.(?:.+\.(?P<fpid>\d+)-[^.]+\.tmp|(?:.+\.)?tmp-(?P<dpid>\d+)-\w+|tmp-trash-.+-(?P<tpid>\d+))$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike, *, owned: bool = False, min_age_s: float = 60.0,
                      depth: int = 3) -> list[Path]:
    """Remove the temporary files and folders that killed writers left under ``folder`` (down to ``depth``
    levels: checkpoints of ablation variants lie 3 deep); returns them. With ``owned`` (the caller holds the
    folder's run lock) every temp name is stale; otherwise (a shared cache) only those whose writer process
    is gone and that are older than ``min_age_s``. Other hidden folders (``.git``, ...) are not entered."""
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    now = time.time()
    for dirpath, dirnames, filenames in os.walk(root):
        if len(Path(dirpath).relative_to(root).parts) >= depth:
            dirnames[:] = []
        for name in list(dirnames) + filenames:
            m = _TEMP.match(name)
            if m is None:
                continue
            p = Path(dirpath) / name
            pid = int(next(g for g in m.groups() if g is not None))
            try:
                stale = owned or (not _alive(pid) and now - p.lstat().st_mtime > min_age_s)
            except OSError:
                continue
            if not stale:
                continue
            if name in dirnames:
                dirnames.remove(name)
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return removed
