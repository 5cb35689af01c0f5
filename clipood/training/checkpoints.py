"""Training checkpoints: atomic ``step-NNNNNN/`` folders (trainable adapter weights, optimiser state, trainer
state with the run's signature), the newest complete one, resume checks and the training log kept in step."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
from pathlib import Path

import torch

from ..config.compose import flat_leaves
from ..errors import ClipoodError
from ..io import load_safetensors, make_temp_dir, save_safetensors, write_json

__all__ = ["save_checkpoint", "finish_pruning", "load_checkpoint", "latest_checkpoint", "check_resumable",
           "truncate_history",
           "CHECKPOINT_FILES", "folder_digest"]


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
                meta["state"][str(idx)][k] = {"tensor": f"{idx}.{k}"}
            else:
                meta["state"][str(idx)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state = {}
    for idx, st in meta["state"].items():
        state[int(idx)] = {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
                           for k, v in st.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(ckpt_root: Path, adapter, optimizer, state: dict, keep: int, *,
                    prune_later: bool = False) -> Path:
    """Write ``step-NNNNNN/`` atomically (temporary folder, then rename) and prune old checkpoints.

    Pruning renames an old checkpoint out of the ``step-*`` names at once; with ``prune_later`` its files are then
    deleted in a background thread (deleting is slow on some file systems and needs no CPU: the training loop
    goes on meanwhile) and :func:`finish_pruning` waits for them."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{state['step']:06d}"
    tmp = make_temp_dir(ckpt_root, ".tmp-")
    try:
        save_safetensors(adapter.state_dict(), tmp / "adapter.safetensors")
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_safetensors(tensors if tensors else {"_empty": torch.zeros(1)}, tmp / "optimizer.safetensors")
        write_json(tmp / "optimizer.json", meta)
        write_json(tmp / "trainer_state.json", state)
        if final.exists():
            # never delete in place: a kill mid-delete would leave a half checkpoint under a valid name.
            # Renames are atomic; a kill between the two leaves the previous checkpoint as the latest.
            _discard(final, later=prune_later)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        _discard(old, later=prune_later)
    return final


_PRUNING: list[threading.Thread] = []
_TRASH_IDS = itertools.count()


def _discard(folder: Path, later: bool = False) -> None:
    """Rename out of the ``step-*`` namespace first (atomic), then delete (``later``: in a background thread).
    A ``.tmp-trash-*`` folder left by a killed process is removed by the next run (``.tmp-*`` in checkpoints/)."""
    trash = folder.with_name(f".tmp-trash-{folder.name}-{os.getpid()}-{next(_TRASH_IDS)}")
    os.replace(folder, trash)
    if not later:
        shutil.rmtree(trash, ignore_errors=True)
        return
    t = threading.Thread(target=shutil.rmtree, args=(trash,), kwargs={"ignore_errors": True}, daemon=True)
    t.start()
    _PRUNING.append(t)


def finish_pruning() -> None:
    """Wait until the checkpoints pruned with ``prune_later`` are deleted."""
    while _PRUNING:
        _PRUNING.pop().join()


CHECKPOINT_FILES = ("adapter.safetensors", "optimizer.safetensors", "optimizer.json", "trainer_state.json")


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete ``step-*`` checkpoint (every file present), or None."""
    cands = sorted(p for p in Path(ckpt_root).glob("step-*") if all((p / f).is_file() for f in CHECKPOINT_FILES))
    return cands[-1] if cands else None


def load_checkpoint(path: Path, adapter, optimizer) -> dict:
    sd = load_safetensors(path / "adapter.safetensors")
    try:
        adapter.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ClipoodError(f"checkpoint {path} does not fit this adapter ({str(e).splitlines()[-1].strip()}); "
                           f"use another output_dir or delete the checkpoints folder") from None
    meta = json.loads((path / "optimizer.json").read_text())
    tensors = load_safetensors(path / "optimizer.safetensors")
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta))
    return json.loads((path / "trainer_state.json").read_text())


def folder_digest(folder: str | os.PathLike) -> str | None:
    """sha256 over every file below ``folder`` (relative paths and contents, sorted; hidden temp files of a
    writer in progress left out): what a run trained from a saved adapter signs. None when it is not a folder."""
    import hashlib

    root = Path(folder)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(p.relative_to(root).as_posix().encode("utf-8") + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def check_resumable(output_dir: str | os.PathLike, signature: dict) -> Path | None:
    """The checkpoint a run in ``output_dir`` would resume from, or None. Raises ClipoodError when that folder
    holds checkpoints of another configuration (recipes call this first, before any expensive work)."""
    ckpt_root = Path(output_dir) / "checkpoints"
    ck = latest_checkpoint(ckpt_root)
    if ck is None:
        return None
    signature = json.loads(json.dumps(signature, default=str))
    old = json.loads((ck / "trainer_state.json").read_text()).get("signature")
    if old != signature:
        if isinstance(old, dict) and old.get("signature_version") != signature.get("signature_version"):
            raise ClipoodError(f"{ckpt_root} holds checkpoints signed by another clipood version (run signature "
                               f"{old.get('signature_version', 1)}, this one writes "
                               f"{signature.get('signature_version')}); set another output_dir, or resume=false "
                               f"to train again")
        a, b = flat_leaves(old or {}), flat_leaves(signature)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ClipoodError(f"{ckpt_root} holds checkpoints of another configuration (differs in: {', '.join(diff)}); set "
                           f"another output_dir, or resume=false to start over (it overwrites that run's results)")
    return ck


def truncate_history(path: Path, step: int) -> None:
    """Keep the log records of steps <= ``step`` (the checkpoint resumed from): a run killed after logging a
    step but before checkpointing it replays that step, which must not appear twice."""
    from ..io import atomic_write

    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            continue
    with atomic_write(path) as f:
        f.write("".join(f"{line}\n" for line in keep))
