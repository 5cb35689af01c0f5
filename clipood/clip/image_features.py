"""Frozen-encoder feature extraction: sharded over Accelerate processes, cached once as safetensors.

Every frozen encoder runs once per input: the cache key is the backbone identifier + what the dataset yields
(`dataset_fingerprint`: an HF dataset's own fingerprint with its split, columns and rows; or every file's relative
path, size and mtime; and every label) + the transform, so the zero-shot baseline and every tuned method evaluated
on the same images share one cache file, and two datasets with other pixels never do.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ClipoodError
from ..io import cache_write, load_safetensors, save_safetensors

log = logging.getLogger("clipood")


def default_cache_dir() -> Path:
    root = os.environ.get("CLIPOOD_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "clipood" / "features"


def dataset_fingerprint(dataset) -> str:
    """Hash of what a dataset will yield. An `ImageDataset` gives its ``content_key()`` (HF: fingerprint, split,
    columns and selected rows; files: relative path, size and mtime of each); other datasets with ``samples``
    hash each sample (files are stat'ed only when the item is a path, never an integer row index)."""
    h = hashlib.sha256()
    content = getattr(dataset, "content_key", None)
    if callable(content):
        h.update(json.dumps(content(), default=str).encode())
    else:
        for item, label in getattr(dataset, "samples", []):
            h.update(f"{type(item).__name__}|{item}|{label}".encode())
            if isinstance(item, (str, os.PathLike)):
                try:
                    st = os.stat(item)
                    h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
                except OSError:
                    pass
    h.update(str(len(dataset)).encode())
    return h.hexdigest()[:16]


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:20]


def _loader(dataset, batch_size: int, num_workers: int):
    from torch.utils.data import DataLoader

    collate = getattr(dataset, "collate_fn", None)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate, drop_last=False)


@torch.no_grad()
def extract_features(backbone, dataset, *, batch_size: int = 128, num_workers: int = 0, local: bool = False,
                     accelerator=None, cache_dir: str | os.PathLike | None = None, progress: bool = True,
                     desc: str = "features", pre_projection: bool = False) -> dict[str, torch.Tensor]:
    """Encode every image of ``dataset`` → {"features": N×D, "labels": N, ["local": N×P×D]} (unit rows).

    With an ``accelerator`` the dataset is sharded over processes and gathered back in order, so every rank
    ends with the full, identical tensors. With ``cache_dir`` (None = no cache) results are read from / written
    to ``<cache_dir>/<key>.safetensors`` (written atomically by the main process).

    ``pre_projection=True`` (issue 22: a post-hoc score asks for them) stores the image tower's features *before*
    the final projection instead (``features``: N×F, not normalised; :mod:`clipood.clip.pre_projection`), in a
    cache file of their own.
    """
    from tqdm.auto import tqdm

    path = None
    if cache_dir is not None:
        key = cache_key(backbone.identifier, dataset_fingerprint(dataset), repr(getattr(dataset, "transform", "")),
                        getattr(backbone, "local_key", True) if local else False,
                        *(("pre_projection",) if pre_projection else ()))  # default keys stay as they were
        path = Path(cache_dir) / f"{key}.safetensors"
        if path.is_file():
            try:
                out = load_safetensors(path)
                if out["features"].shape[0] == len(dataset):
                    log.debug("feature cache hit for %s: %s", desc, path.name)
                    return out
            except ClipoodError:
                log.warning("feature cache %s is corrupt; rebuilding it", path)
    loader = _loader(dataset, batch_size, num_workers)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader, device_placement=False)
    main = accelerator is None or accelerator.is_local_main_process
    feats, labels, locs = [], [], []
    for images, y in tqdm(loader, desc=desc, disable=not (progress and main), mininterval=2, leave=False):
        if pre_projection:
            from . import pre_projection as pp

            g = pp.pre_projection_features(backbone, images)
        elif local:
            g, loc = backbone.encode_images(images, local=True)
            locs.append(loc.cpu())
        else:
            g = backbone.encode_images(images)
        if accelerator is not None:
            g = accelerator.gather_for_metrics(g.to(accelerator.device)).cpu()
            y = accelerator.gather_for_metrics(torch.as_tensor(y).to(accelerator.device)).cpu()
            if local:
                locs[-1] = accelerator.gather_for_metrics(locs[-1].to(accelerator.device)).cpu()
        feats.append(g.cpu())
        labels.append(torch.as_tensor(y))
    if not feats:
        raise ClipoodError(f"dataset {getattr(dataset, 'name', '?')} yielded no images")
    out = {"features": torch.cat(feats).float(), "labels": torch.cat(labels).long()}
    if local:
        out["local"] = torch.cat(locs).float()
    if path is not None and main:
        cache_write(lambda: save_safetensors(out, path), path)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return out
