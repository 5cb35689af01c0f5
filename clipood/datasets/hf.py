"""Hugging Face datasets as clipood datasets: load a spec (a ``save_to_disk`` folder or a cached hub dataset) and
describe what it selects for cache keys (``Dataset._fingerprint``, which `datasets` changes whenever the rows or
pixels change, plus split, columns and config)."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from ..errors import ClipoodError, unknown
from .specs import ROOT_HINT, HFDatasetSpec, is_hf_disk_folder


def load_hf(spec: HFDatasetSpec) -> tuple[Any, list[tuple[int, int]], list[str] | None]:
    """(the `datasets.Dataset`, samples ``(row index, label)``, classnames or None) of a resolved spec."""
    import datasets

    source = spec.path_or_name
    try:
        if spec.from_disk:
            if not Path(source).exists():
                raise ClipoodError(f"HF dataset folder not found: {source} (a save_to_disk folder; {ROOT_HINT})")
            if not is_hf_disk_folder(source):
                raise ClipoodError(f"{source} is not a save_to_disk folder (no dataset_info.json, state.json or "
                                   "dataset_dict.json); for a folder of images use type: imagefolder")
            ds = datasets.load_from_disk(source)
        else:
            ds = datasets.load_dataset(source, spec.config_name, split=spec.split)
    except ClipoodError:
        raise
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if spec.from_disk:
            raise ClipoodError(f"cannot load HF dataset folder {source} ({type(e).__name__}: {first})") from None
        raise ClipoodError(
            f"HF dataset '{source}' is not cached on this machine and cannot be downloaded ({first}); download it "
            f"once online with datasets.load_dataset('{source}'), or save_to_disk it and pass that folder "
            "with from_disk: true"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if spec.split not in ds:
            raise unknown(f"split of HF dataset {source}", spec.split, ds.keys())
        ds = ds[spec.split]
    for what, col in (("image_column", spec.image_column), ("label_column", spec.label_column)):
        if col is not None and col not in ds.column_names:
            hint = "; for an unlabelled (OOD) set use label_column: null" if what == "label_column" else ""
            raise ClipoodError(str(unknown(f"{what} of HF dataset {source} (split {spec.split})", col,
                                           ds.column_names)) + hint)
    if spec.label_column is None:
        labels = [0] * len(ds)
        classnames = None
    else:
        feature = ds.features[spec.label_column]
        classnames = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        labels, named = hf_labels(list(ds[spec.label_column]), f"label_column '{spec.label_column}' of HF dataset "
                                                               f"{source}")
        classnames = classnames if named is None else named
    if not labels:
        raise ClipoodError(f"HF dataset {source} (split {spec.split}) has no rows")
    return ds, list(enumerate(labels)), classnames


def hf_labels(values: list, where: str) -> tuple[list[int], list[str] | None]:
    """Integer labels of an HF label column, and class names when the column holds names: strings become the
    sorted distinct names (labels = positions), integral floats (``3.0``) integers; anything else is refused."""
    if values and all(isinstance(v, str) for v in values):
        names = sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        return [index[v] for v in values], names
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise ClipoodError(f"{where}: row {i} has label {v!r}; labels must be class indices (integers) or "
                               f"class names (strings), not mixed")
        out.append(int(v))
    return out, None


def hf_content_key(ds: Any, spec: HFDatasetSpec | None) -> list:
    """What identifies the rows and pixels of an HF dataset: its fingerprint, the selection (split, columns,
    config) and the size and mtime of its Arrow files (a folder rewritten in place changes them too)."""
    files = []
    for f in getattr(ds, "cache_files", None) or []:
        name = f.get("filename") if isinstance(f, dict) else None
        if name and os.path.isfile(name):
            st = os.stat(name)
            files.append([os.path.basename(name), st.st_size, st.st_mtime_ns])
    sel = None if spec is None else [spec.split, spec.image_column, spec.label_column, spec.config_name]
    return ["hf", getattr(ds, "_fingerprint", None), sel, len(ds), files]


def hf_raw(ds_wrapper: Any, item: Any):
    """The undecoded bytes or path of an HF image (cheap header checks without decoding the pixels)."""
    if getattr(ds_wrapper, "_hf_raw_view", None) is None:
        import datasets

        ds_wrapper._hf_raw_view = ds_wrapper._hf.cast_column(ds_wrapper._image_column, datasets.Image(decode=False))
    value = ds_wrapper._hf_raw_view[int(item)][ds_wrapper._image_column]
    return io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
