"""One run at a time per output folder: a lock file (the ``filelock`` library; the operating system drops the
lock when the process ends, however it ends), and the temporary files of killed writers cleaned on the next run.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ClipoodError
from ..io import clean_stale_temps

log = logging.getLogger("clipood")

__all__ = ["LOCK_NAME", "claim_output_dir", "release_output_dirs"]

#: the lock file in every output_dir a run writes to
LOCK_NAME = ".clipood.lock"
_HELD: dict[str, object] = {}
_CREATED: set[str] = set()  # output folders this process created (removed again if a run fails leaving only the lock)
_LOCK_CREATED: set[str] = set()  # output folders whose lock file this process created (removed if the run fails)


def _is_main_process() -> bool:
    """Rank 0 (or no launcher): only the main process of a multi-process run takes the lock."""
    return os.environ.get("RANK", "0") in ("0", "") and os.environ.get("LOCAL_RANK", "0") in ("0", "")


def claim_output_dir(output_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Lock ``output_dir`` for this process until it ends (a second run into the same folder fails at once with
    one line), then remove the temporary files that killed writers left there and in ``cache_dir``. Returns the
    lock file (None on processes other than the main one). Calling it again for a held folder is a no-op."""
    out = Path(output_dir)
    key = str(out.expanduser().absolute())
    if not _is_main_process():
        return None
    if key in _HELD:
        return Path(key) / LOCK_NAME
    from filelock import FileLock, Timeout

    try:
        if not out.exists():
            _CREATED.add(key)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClipoodError(f"output_dir: cannot create {out} ({e.strerror or e}); set output_dir to a writable "
                           f"folder") from None
    if not (out / LOCK_NAME).exists():
        _LOCK_CREATED.add(key)
    lock = FileLock(str(out / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ClipoodError(f"another run is writing to output_dir {out} (it holds {out / LOCK_NAME}); wait for it "
                           f"to finish, or set another output_dir") from None
    except OSError as e:
        raise ClipoodError(f"output_dir: cannot lock {out / LOCK_NAME} ({e.strerror or e}); set output_dir to a "
                           f"writable folder") from None
    _HELD[key] = lock
    stale = clean_stale_temps(out, owned=True)  # this run owns the folder now: every temp name in it is stale
    if cache_dir is not None:
        stale += clean_stale_temps(cache_dir)  # shared by runs: only temps of writers that are gone
    if stale:
        log.info("removed %d temporary file(s) left by an interrupted run", len(stale))
    return out / LOCK_NAME


def release_output_dirs(failed: bool = False) -> None:
    """Release every lock this process holds (a process that ends releases them anyway). With ``failed`` (a
    run that stopped on an error) an output folder this process created and that holds nothing but the lock
    is removed again, so a bad input leaves nothing behind."""
    for key, lock in _HELD.items():
        lock.release()  # type: ignore[attr-defined]
        folder = Path(key)
        if failed and key in _CREATED and folder.is_dir() and {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:
                pass
        elif failed and key in _LOCK_CREATED:  # a failed run into an existing folder leaves no lock file either
            (folder / LOCK_NAME).unlink(missing_ok=True)
    _HELD.clear()
    _CREATED.clear()
    _LOCK_CREATED.clear()
