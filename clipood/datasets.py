"""Dataset specs (image folders, image-list files, Hugging Face datasets), the data root, and `ImageDataset`.

A *spec* is a small dataclass that says where a dataset lives; `build_dataset(spec)` validates it up front
(missing folder, empty class folder, missing listed files) and returns an `ImageDataset` yielding
``(image, label)`` where ``image`` is a PIL RGB image, or ``transform(image)`` when a transform is given.

Relative paths in specs resolve against the data root: the ``data_root`` config value, else the environment
variable ``CLIPOOD_DATA`` (see `data_root`). Named benchmark suites live in `clipood.suites` (re-exported
here: `get_suite`, `list_suites`, `check_suite`, `half_split`, `Suite`).

Class subsets: every spec has ``class_subset=(part, parts)``, which keeps only the classes with sorted index in
``[ceil(part*N/parts), ceil((part+1)*N/parts))`` and relabels them 0..m-1 (so ``(0, 2)`` is the first half, with
the extra class of an odd N in the first half, as CoOp's base/new split does). Labels elsewhere are kept as found.

Corrupt images: ``on_corrupt="error"`` (default) raises `ClipoodError` naming the file when it is read.
``on_corrupt="skip"`` runs `ImageDataset.verify_images` while building (a header check for every image, with a
full decode only for files whose header check fails), drops unreadable files with a logged warning, and counts
them in ``dataset.skipped``. A file that passes the check but fails later to decode makes ``__getitem__`` return
``None``; use ``dataset.collate_fn`` (drops ``None`` items) in the DataLoader. Such late skips are counted only in
the process that read them (DataLoader workers keep their own copy). For a complete check up front call
``dataset.verify_images(full=True)``.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from torch.utils.data import Dataset

from .errors import ClipoodError, did_you_mean, unknown

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
DATA_ROOT_ENV = "CLIPOOD_DATA"
ROOT_HINT = f"set data_root= in the config or the {DATA_ROOT_ENV} environment variable"
_ON_CORRUPT = ("error", "skip")


# ----------------------------------------------------------------------------------------------- data root
def data_root(config_value: str | os.PathLike | None = None) -> Path:
    """The folder that relative dataset paths resolve against: ``config_value``, else ``$CLIPOOD_DATA``."""
    if config_value not in (None, ""):
        root, source = Path(config_value).expanduser(), "data_root"
    elif os.environ.get(DATA_ROOT_ENV):
        root, source = Path(os.environ[DATA_ROOT_ENV]).expanduser(), DATA_ROOT_ENV
    else:
        raise ClipoodError(f"no data root: {ROOT_HINT} (the folder that holds the datasets)")
    if not root.is_dir():
        raise ClipoodError(f"data root {root} (from {source}) is not a folder; create it or fix {source}")
    return root


def _resolve(path: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else data_root(root) / p


# ------------------------------------------------------------------------------------------------- specs
def _check_subset(subset: Any) -> tuple[int, int] | None:
    if subset is None:
        return None
    try:
        part, parts = (int(x) for x in subset)
    except (TypeError, ValueError):
        raise ClipoodError(
            f"class_subset must be [part, parts], e.g. [0, 2] for the first half; got {subset!r}"
        ) from None
    if not 0 <= part < parts:
        raise ClipoodError(f"class_subset [part, parts] needs 0 <= part < parts; got {subset!r}")
    return part, parts


@dataclass
class ImageFolderSpec:
    """One sub-folder per class (sorted), images found recursively below it.

    ``ood=True`` also accepts the MOS OOD layouts: a single pseudo-class folder (``SUN/images/*.jpg``) or
    images directly in ``path``; then every image gets label 0 and ``classnames`` stays None.
    ``sort``: "auto" sorts class folders numerically when all names are integers (ImageNet-V2's 0..999),
    else by name; "name" / "numeric" force one. ``readable_names`` turns ``001.Black_footed_Albatross`` into
    ``Black footed Albatross``.
    """

    path: str
    classnames: list[str] | None = None
    ood: bool = False
    sort: str = "auto"
    readable_names: bool = False
    class_subset: tuple[int, int] | None = None
    name: str | None = None
    type: ClassVar[str] = "imagefolder"

    def __post_init__(self) -> None:
        self.path = str(self.path)
        if self.sort not in ("auto", "name", "numeric"):
            raise unknown("sort order", self.sort, ("auto", "name", "numeric"))
        self.class_subset = _check_subset(self.class_subset)
        self.classnames = None if self.classnames is None else [str(c) for c in self.classnames]


@dataclass
class ImageListSpec:
    """Images listed in a file, paths relative to ``root``.

    Text lists (OpenOOD): one ``relative/path label`` per line (integer label; blank lines and lines starting
    with ``#`` are ignored; the path may contain spaces). JSON lists (CoOp ``split_zhou_*.json``): a dict of
    splits, each a list of ``[relative/path, label, classname]``; ``split`` picks one and the classnames come
    from the file. ``check_files`` stats every listed image while building.
    """

    root: str
    list_file: str
    split: str = "test"
    classnames: list[str] | None = None
    check_files: bool = True
    class_subset: tuple[int, int] | None = None
    name: str | None = None
    type: ClassVar[str] = "imagelist"

    def __post_init__(self) -> None:
        self.root, self.list_file = str(self.root), str(self.list_file)
        self.class_subset = _check_subset(self.class_subset)
        self.classnames = None if self.classnames is None else [str(c) for c in self.classnames]


@dataclass
class HFDatasetSpec:
    """A Hugging Face dataset: ``from_disk=True`` loads a `save_to_disk` folder (relative to the data root),
    otherwise ``load_dataset(path_or_name, config_name)`` from the local cache or the hub.
    ``label_column=None`` gives every image label 0 (an OOD set). Classnames come from a ClassLabel feature
    unless given."""

    path_or_name: str
    split: str = "test"
    image_column: str = "image"
    label_column: str | None = "label"
    from_disk: bool = False
    config_name: str | None = None
    classnames: list[str] | None = None
    class_subset: tuple[int, int] | None = None
    name: str | None = None
    type: ClassVar[str] = "hf"

    def __post_init__(self) -> None:
        self.path_or_name = str(self.path_or_name)
        self.class_subset = _check_subset(self.class_subset)
        self.classnames = None if self.classnames is None else [str(c) for c in self.classnames]


Spec = ImageFolderSpec | ImageListSpec | HFDatasetSpec
_SPEC_TYPES: dict[str, type] = {
    "imagefolder": ImageFolderSpec, "image_folder": ImageFolderSpec,
    "imagelist": ImageListSpec, "image_list": ImageListSpec,
    "hf": HFDatasetSpec, "huggingface": HFDatasetSpec, "hf_dataset": HFDatasetSpec,
}


def spec_from_dict(d: dict | str | Spec) -> Spec:
    """Build a spec from a YAML/JSON dict. ``type`` is one of imagefolder / imagelist / hf; without it the type
    is inferred from the keys (``list_file`` → image list, ``path_or_name`` → HF, ``path`` → image folder).
    A plain string is an image folder path; a spec is returned unchanged."""
    if isinstance(d, (ImageFolderSpec, ImageListSpec, HFDatasetSpec)):
        return d
    if isinstance(d, (str, os.PathLike)):
        return ImageFolderSpec(path=str(d))
    if not isinstance(d, dict):
        raise ClipoodError(f"a dataset spec must be a mapping or a folder path; got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("type", None)
    if kind is None:
        kind = "imagelist" if "list_file" in d else "hf" if "path_or_name" in d else "imagefolder"
    cls = _SPEC_TYPES.get(str(kind).lower())
    if cls is None:
        raise unknown("dataset type", kind, ("imagefolder", "imagelist", "hf"))
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in fields:
            raise ClipoodError(
                f"unknown key '{key}' in {cls.type} dataset spec{did_you_mean(key, fields)}; "
                f"valid keys: {', '.join(fields)}"
            )
    try:
        return cls(**d)
    except TypeError as e:  # a required key is missing
        raise ClipoodError(f"bad {cls.type} dataset spec {d}: {e}") from None


def spec_to_dict(spec: Spec) -> dict:
    """The inverse of `spec_from_dict` (a ``type`` key plus every field; JSON-safe, usable as a cache key)."""
    out = {"type": spec.type}
    for k, v in dataclasses.asdict(spec).items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def resolve_spec(spec: Spec, root: str | os.PathLike | None = None) -> Spec:
    """A copy of ``spec`` with its paths made absolute against the data root (hub names are left alone)."""
    if isinstance(spec, ImageFolderSpec):
        return dataclasses.replace(spec, path=str(_resolve(spec.path, root)))
    if isinstance(spec, ImageListSpec):
        return dataclasses.replace(spec, root=str(_resolve(spec.root, root)),
                                   list_file=str(_resolve(spec.list_file, root)))
    if spec.from_disk:
        return dataclasses.replace(spec, path_or_name=str(_resolve(spec.path_or_name, root)))
    return spec


def spec_name(spec: Spec) -> str:
    """``spec.name``, else a short name from its path (``SUN``, ``test_ninco``, ``uoft-cs/cifar10``)."""
    if spec.name:
        return spec.name
    if isinstance(spec, ImageFolderSpec):
        return Path(spec.path).name or spec.path
    if isinstance(spec, ImageListSpec):
        return Path(spec.list_file).stem
    return Path(spec.path_or_name).name if spec.from_disk else spec.path_or_name


# ------------------------------------------------------------------------------------------------- dataset
class ImageDataset(Dataset):
    """``(image, label)`` pairs; ``samples`` holds ``(path or row index, label)``.

    ``classnames`` is None for OOD pseudo-class sets and image lists without names. ``skipped`` counts corrupt
    images dropped (``on_corrupt="skip"``); ``skipped_items`` names them.
    """

    def __init__(self, samples: list[tuple[Any, int]], name: str, classnames: list[str] | None = None,
                 transform: Callable | None = None, on_corrupt: str = "error", hf_dataset: Any = None,
                 image_column: str = "image") -> None:
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

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

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

    if isinstance(value, Image.Image):
        return _to_8bit(value).convert("RGB")
    if isinstance(value, dict):  # an undecoded HF image: {"bytes": ..., "path": ...}
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
    with Image.open(value) as im:
        return _to_8bit(im).convert("RGB")


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
            source = item if ds._hf is None else _hf_raw(ds, item)
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


def _hf_raw(ds: ImageDataset, item: Any):
    """The undecoded bytes or path of an HF image (cheap header checks without decoding the pixels)."""
    if getattr(ds, "_hf_raw_view", None) is None:
        import datasets

        ds._hf_raw_view = ds._hf.cast_column(ds._image_column, datasets.Image(decode=False))
    value = ds._hf_raw_view[int(item)][ds._image_column]
    return io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]


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
    hf, image_column = None, "image"
    if isinstance(spec, ImageFolderSpec):
        samples, classnames = _scan_image_folder(spec)
    elif isinstance(spec, ImageListSpec):
        samples, classnames = _read_image_list(spec)
    else:
        hf, samples, classnames = _load_hf(spec)
        image_column = spec.image_column
    if spec.classnames is not None and not isinstance(spec, ImageFolderSpec):
        classnames = _check_classnames(spec.classnames, len(classnames) if classnames else None, name, samples)
    samples, classnames = _apply_subset(samples, classnames, spec.class_subset, name)
    ds = ImageDataset(samples, name, classnames, transform, on_corrupt, hf, image_column)
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


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and _is_image(f))
    return found


def _scan_image_folder(spec: ImageFolderSpec) -> tuple[list[tuple[str, int]], list[str] | None]:
    path = Path(spec.path)
    if not path.is_dir():
        raise ClipoodError(
            f"image folder not found: {path} (relative paths resolve against the data root; {ROOT_HINT})"
        )
    entries = sorted(os.scandir(path), key=lambda e: e.name)
    subdirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    direct = [e.path for e in entries if e.is_file() and _is_image(e.name)]
    exts = " ".join(IMAGE_EXTENSIONS)
    if spec.ood and len(subdirs) <= 1:  # MOS layout: one pseudo-class folder, or a flat folder of images
        files = direct + (_walk_images(path / subdirs[0]) if subdirs else [])
        if not files:
            raise ClipoodError(f"no images ({exts}) found in OOD folder {path}")
        return [(f, 0) for f in files], spec.classnames
    if not subdirs:
        hint = "; for a flat folder of OOD images set ood: true" if direct else ""
        raise ClipoodError(f"no class sub-folders in {path}: an image folder needs {path}/<class>/<image>{hint}")
    numeric = all(s.isdigit() for s in subdirs)
    if spec.sort == "numeric" and not numeric:
        raise ClipoodError(f"sort: numeric needs integer class folder names in {path}; use sort: name")
    if spec.sort == "numeric" or (spec.sort == "auto" and numeric):
        subdirs.sort(key=int)
    if direct:
        logger.warning("image folder %s: ignoring %d image(s) outside the class folders", path, len(direct))
    samples, empty = [], []
    for label, sub in enumerate(subdirs):
        files = _walk_images(path / sub)
        if not files:
            empty.append(str(path / sub))
        samples.extend((f, label) for f in files)
    if empty:
        raise ClipoodError(f"class folder(s) with no images ({exts}): {', '.join(empty)}; add images or remove them")
    if spec.classnames is not None:
        if len(spec.classnames) != len(subdirs):
            raise ClipoodError(f"{len(spec.classnames)} classnames given but {path} has {len(subdirs)} class folders")
        return samples, list(spec.classnames)
    names = [_readable_name(s) for s in subdirs] if spec.readable_names else subdirs
    return samples, names


def _readable_name(folder: str) -> str:
    return re.sub(r"^\d+[._]", "", folder).replace("_", " ").strip()


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


def _read_text_list(list_file: Path) -> list[tuple[str, int]]:
    entries = []
    with open(list_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
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
        data = json.loads(list_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
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


def _load_hf(spec: HFDatasetSpec):
    import datasets

    source = spec.path_or_name
    try:
        if spec.from_disk:
            if not Path(source).exists():
                raise ClipoodError(f"HF dataset folder not found: {source} (a save_to_disk folder; {ROOT_HINT})")
            ds = datasets.load_from_disk(source)
        else:
            ds = datasets.load_dataset(source, spec.config_name, split=spec.split)
    except ClipoodError:
        raise
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as e:
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
    for col in (spec.image_column, spec.label_column):
        if col is not None and col not in ds.column_names:
            raise unknown(f"column of HF dataset {source}", col, ds.column_names)
    if spec.label_column is None:
        labels = [0] * len(ds)
        classnames = None
    else:
        labels = [int(x) for x in ds[spec.label_column]]
        feature = ds.features[spec.label_column]
        classnames = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if not labels:
        raise ClipoodError(f"HF dataset {source} (split {spec.split}) has no rows")
    return ds, list(enumerate(labels)), classnames


# Suites live in clipood.suites; re-exported lazily (clipood.suites imports this module).
_SUITE_API = ("Suite", "get_suite", "list_suites", "check_suite", "half_split")


def __getattr__(name: str):
    if name in _SUITE_API:
        from . import suites

        return getattr(suites, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
