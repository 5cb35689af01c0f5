"""Datasets from specs: `build_dataset(spec)` validates a spec (missing folder, empty or missing class folder,
missing listed files) and returns an `ImageDataset` yielding ``(image, label)`` where ``image`` is a PIL RGB image,
or ``transform(image)`` when a transform is given.

Specs (`ImageFolderSpec`, `ImageListSpec`, `HFDatasetSpec`, `spec_from_dict`, `data_root`, ...) live in
`clipood.datasets.specs`, the Hugging Face reader in `clipood.datasets.hf` and named benchmark suites in
`clipood.suites`.

Labels by name: a folder spec with a ``label_set`` maps class folders (WordNet IDs, names or indices) to that
set's labels; ``classes`` keeps a named subset (labels = positions in the list) for every spec type. A missing
class folder is an error listing it, never a silent shift of the later labels.

Corrupt images: ``on_corrupt="error"`` (default) raises `ClipoodError` naming the file when it is read.
``on_corrupt="skip"`` runs `ImageDataset.verify_images` while building (a header check for every image, with a
full decode only for files whose header check fails), drops unreadable files with a logged warning, and counts
them in ``dataset.skipped``. A file that passes the check but fails later to decode makes ``__getitem__`` return
``None``; use ``dataset.collate_fn`` (drops ``None`` items) in the DataLoader. For a complete check up front call
``dataset.verify_images(full=True)``.
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from torch.utils.data import Dataset

from ..errors import ClipoodError, unknown
from .folders import scan_image_folder
from .hf import hf_content_key, hf_raw, load_hf
from .specs import ROOT_HINT, ImageFolderSpec, ImageListSpec, Spec, resolve_spec, spec_from_dict, spec_name

logger = logging.getLogger(__name__)

_ON_CORRUPT = ("error", "skip")
#: how images are decoded, in cache keys (features cached before EXIF orientation was applied are not reused)
_DECODE = "decode-exif-v1"


# ------------------------------------------------------------------------------------------------- dataset
class ImageDataset(Dataset):
    """``(image, label)`` pairs; ``samples`` holds ``(path or row index, label)``.

    ``classnames`` is None for OOD pseudo-class sets and image lists without names. ``skipped`` counts corrupt
    images dropped (``on_corrupt="skip"``); ``skipped_items`` names them.
    """

    def __init__(self, samples: list[tuple[Any, int]], name: str, classnames: list[str] | None = None,
                 transform: Callable | None = None, on_corrupt: str = "error", hf_dataset: Any = None,
                 image_column: str = "image", root: str | None = None, source: Any = None) -> None:
        if on_corrupt not in _ON_CORRUPT:
            raise unknown("on_corrupt mode", on_corrupt, _ON_CORRUPT)
        self.samples = samples
        self.name = name
        self.classnames = classnames
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.skipped = 0
        self.skipped_items: list[Any] = []
        self._hf = hf_dataset
        self._image_column = image_column
        self.root = root  #: folder that file paths are relative to in the content key
        self._source = source  #: the resolved spec (what the selection is)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def content_key(self) -> list:
        """What this dataset yields, for cache keys: an HF dataset's fingerprint and selection (split, columns,
        rows), or every file's path relative to ``root`` with its size and mtime; plus every label."""
        if self._hf is not None:
            return [hf_content_key(self._hf, self._source), [[int(i), int(y)] for i, y in self.samples], _DECODE]
        files = []
        for path, label in self.samples:
            p = str(path)
            rel = os.path.relpath(p, self.root) if self.root else p
            try:
                st = os.stat(p)
                files.append([rel, int(label), st.st_size, st.st_mtime_ns])
            except OSError:
                files.append([rel, int(label), None, None])
        return ["files", files, _DECODE]

    def _describe(self, item: Any) -> str:
        return f"{self.name}[{item}]" if self._hf is not None else str(item)

    def _open(self, item: Any):
        if self._hf is None:
            return _pil_rgb(item)
        value = self._hf[int(item)][self._image_column]
        return _pil_rgb(value)

    def load_image(self, index: int):
        """The decoded RGB PIL image of sample ``index`` (no transform); raises ClipoodError if unreadable."""
        item = self.samples[index][0]
        try:
            return self._open(item)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            raise ClipoodError(
                f"cannot read image {self._describe(item)} ({type(e).__name__}: {e}); fix or delete the file, "
                "or build the dataset with on_corrupt='skip'"
            ) from None

    def __getitem__(self, index: int):
        item, label = self.samples[index]
        try:
            image = self.load_image(index)
        except ClipoodError:
            if self.on_corrupt == "error":
                raise
            self._note_skip(item)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def _note_skip(self, item: Any) -> None:
        self.skipped += 1
        self.skipped_items.append(item)
        logger.warning("skipping unreadable image %s in dataset %s", self._describe(item), self.name)

    @staticmethod
    def collate_fn(batch: Sequence):
        """`default_collate` after dropping the ``None`` items that skip mode returns for unreadable images."""
        from torch.utils.data import default_collate

        return default_collate([b for b in batch if b is not None])

    def verify_images(self, full: bool = False) -> int:
        """Check every image and drop the unreadable ones (counted in ``skipped``); returns how many were dropped.

        ``full=False`` runs PIL's header/structure check (``Image.verify``) and decodes only the files that fail
        it; ``full=True`` decodes every image. In ``on_corrupt="error"`` mode the first bad file raises.
        """
        keep, dropped = [], 0
        for index, (item, label) in enumerate(self.samples):
            if _readable(self, index, full):
                keep.append((item, label))
                continue
            if self.on_corrupt == "error":
                self.load_image(index)  # raises the ClipoodError naming the file
            dropped += 1
            self._note_skip(item)
        self.samples = keep
        if dropped:
            logger.warning("dataset %s: skipped %d unreadable image(s) of %d", self.name, dropped, len(keep) + dropped)
        return dropped


def _pil_rgb(value: Any):
    from PIL import Image

    from PIL import ImageOps

    if isinstance(value, Image.Image):
        return _to_8bit(ImageOps.exif_transpose(value)).convert("RGB")
    if isinstance(value, dict):  # an undecoded HF image: {"bytes": ..., "path": ...}
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
    with Image.open(value) as im:
        # EXIF orientation applied (a phone photo stored sideways is seen upright, as every image viewer shows it)
        return _to_8bit(ImageOps.exif_transpose(im)).convert("RGB")


def _to_8bit(im):
    """High-bit-depth grayscale (16-bit PNG/TIFF: modes ``I;16*`` and ``I``; float ``F``) scaled to 8 bits.
    PIL's ``convert("RGB")`` clips such values at 255, which turns a 16-bit image almost entirely white."""
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    import numpy as np
    from PIL import Image

    a = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        top = 1.0 if a.size and a.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if im.mode.startswith("I;16") or (a.size and a.max() > 255) else 255.0
        if a.size and a.max() > 65535:
            top = float(a.max())
    return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")


def _readable(ds: ImageDataset, index: int, full: bool) -> bool:
    from PIL import Image

    item = ds.samples[index][0]
    if not full:
        try:
            source = item if ds._hf is None else hf_raw(ds, item)
            with Image.open(source) as im:
                im.verify()
            return True
        except Exception:
            pass  # verify is stricter than decoding (e.g. a PNG missing only IEND decodes fine): decode to decide
    try:
        ds._open(item)
        return True
    except Exception:
        return False



# ------------------------------------------------------------------------------------------------- builders
def build_dataset(spec: Spec | dict | str, transform: Callable | None = None, root: str | os.PathLike | None = None,
                  on_corrupt: str = "error") -> ImageDataset:
    """Validate ``spec`` and return its `ImageDataset`. ``root`` is the ``data_root`` config value (relative
    paths only); ``on_corrupt`` is "error" or "skip" (see the module docstring)."""
    spec = spec_from_dict(spec)
    if on_corrupt not in _ON_CORRUPT:
        raise unknown("on_corrupt mode", on_corrupt, _ON_CORRUPT)
    name = spec_name(spec)
    spec = resolve_spec(spec, root)
    hf, image_column, base = None, "image", None
    if isinstance(spec, ImageFolderSpec):
        samples, classnames = scan_image_folder(spec)
        base = spec.path
    elif isinstance(spec, ImageListSpec):
        samples, classnames = _read_image_list(spec)
        base = spec.root
    else:
        hf, samples, classnames = load_hf(spec)
        image_column = spec.image_column
    if not isinstance(spec, ImageFolderSpec):
        if spec.classnames is not None:
            classnames = _check_classnames(spec.classnames, len(classnames) if classnames else None, name, samples)
        if spec.classes is not None:
            samples, classnames = _select_classes(samples, classnames, spec.classes, name)
    samples, classnames = _apply_subset(samples, classnames, spec.class_subset, name)
    ds = ImageDataset(samples, name, classnames, transform, on_corrupt, hf, image_column, root=base, source=spec)
    if on_corrupt == "skip":
        ds.verify_images(full=False)
        if not ds.samples:
            raise ClipoodError(f"dataset {name}: every image is unreadable ({ds.skipped} skipped)")
    return ds


def _check_classnames(names: list[str], n_found: int | None, name: str, samples) -> list[str]:
    n_needed = n_found if n_found is not None else max((lab for _, lab in samples), default=-1) + 1
    if len(names) < n_needed or (n_found is not None and len(names) != n_found):
        raise ClipoodError(f"dataset {name}: {len(names)} classnames given but it has {n_needed} classes")
    return list(names)


def _select_classes(samples, classnames, classes: list[str], name: str):
    """Keep the listed classes (by name, or by label index: a string of digits); relabel by list position."""
    norm = lambda s: " ".join(str(s).replace("_", " ").split()).lower()  # noqa: E731
    index = {norm(c): i for i, c in enumerate(classnames or [])}
    want, bad = [], []
    for c in classes:
        i = index.get(norm(c))
        if i is None and str(c).isdigit() and int(c) < (len(classnames) if classnames else 1 << 62):  # an index
            i = int(c)
        (want if i is not None else bad).append(i if i is not None else c)
    if bad:
        known = ", ".join(classnames[:10]) if classnames else "none (the dataset has no class names: use indices)"
        raise ClipoodError(f"dataset {name}: classes {', '.join(bad)} not found; its classes: {known}")
    relabel = {old: new for new, old in enumerate(want)}
    kept = [(item, relabel[lab]) for item, lab in samples if lab in relabel]
    empty = [str(classes[relabel[i]]) for i in want if not any(lab == relabel[i] for _, lab in kept)]
    if empty:
        raise ClipoodError(f"dataset {name}: no images of class(es) {', '.join(empty)}")
    names = [classnames[i] for i in want] if classnames else list(classes)
    return kept, names


def _apply_subset(samples, classnames, subset, name):
    if subset is None:
        return samples, classnames
    part, parts = subset
    labels = sorted({lab for _, lab in samples})
    n = len(labels)
    lo, hi = -(-part * n // parts), -(-(part + 1) * n // parts)  # ceil without floats
    keep = labels[lo:hi]
    if not keep:
        raise ClipoodError(f"dataset {name}: class_subset {list(subset)} selects no class of its {n}")
    relabel = {old: new for new, old in enumerate(keep)}
    samples = [(item, relabel[lab]) for item, lab in samples if lab in relabel]
    if classnames is not None:
        classnames = [classnames[old] for old in keep]
    return samples, classnames


def _read_image_list(spec: ImageListSpec) -> tuple[list[tuple[str, int]], list[str] | None]:
    list_file, root = Path(spec.list_file), Path(spec.root)
    if not list_file.is_file():
        raise ClipoodError(f"image list file not found: {list_file} ({ROOT_HINT})")
    if not root.is_dir():
        raise ClipoodError(f"image folder not found: {root} (the root of {list_file}; {ROOT_HINT})")
    classnames = None
    if list_file.suffix.lower() == ".json":
        entries, classnames = _read_json_list(list_file, spec.split)
    else:
        entries = _read_text_list(list_file)
    if not entries:
        raise ClipoodError(f"image list {list_file} lists no images")
    samples = [(str(root / rel), label) for rel, label in entries]
    if spec.check_files:
        missing = [rel for (rel, _), (full, _) in zip(entries, samples) if not os.path.isfile(full)]
        if missing:
            raise ClipoodError(
                f"{len(missing)} of {len(samples)} images listed in {list_file} are missing under {root} "
                f"(first: {', '.join(missing[:3])})"
            )
    return samples, classnames


def _list_text(list_file: Path) -> str:
    """An image list's text: UTF-8 (a byte-order mark dropped) or UTF-16 with its mark (as Windows tools save)."""
    data = list_file.read_bytes()
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ClipoodError(f"image list {list_file} is not UTF-8 (nor UTF-16 with a byte-order mark) text "
                           f"({e.reason} at byte {e.start}); save it as UTF-8") from None


def _read_text_list(list_file: Path) -> list[tuple[str, int]]:
    entries = []
    for lineno, line in enumerate(_list_text(list_file).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        try:
            if len(parts) != 2:
                raise ValueError
            entries.append((parts[0], int(parts[1])))
        except ValueError:
            raise ClipoodError(
                f"{list_file}:{lineno}: cannot parse {line!r}; expected '<relative/path> <integer label>'"
            ) from None
    return entries


def _read_json_list(list_file: Path, split: str) -> tuple[list[tuple[str, int]], list[str] | None]:
    try:
        data = json.loads(_list_text(list_file))
    except json.JSONDecodeError as e:
        raise ClipoodError(f"{list_file} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or split not in data:
        raise unknown(f"split in {list_file}", split, data.keys() if isinstance(data, dict) else ())
    entries, names = [], {}
    for i, row in enumerate(data[split]):
        try:
            rel, label = str(row[0]), int(row[1])
        except (TypeError, ValueError, IndexError):
            raise ClipoodError(
                f"{list_file}: entry {i} of split '{split}' is {row!r}; expected [path, label, classname]"
            ) from None
        entries.append((rel, label))
        if len(row) > 2:
            names[label] = str(row[2])
    n = max(names, default=-1) + 1
    classnames = [names[i] for i in range(n)] if names and all(i in names for i in range(n)) else None
    return entries, classnames
