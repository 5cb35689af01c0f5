"""Dataset specs: small dataclasses that say where a dataset lives (image folder, image list, Hugging Face), the
data root that relative paths resolve against, and the conversions to and from YAML/JSON dicts.

Keys every spec accepts (README "Data keys" shows an example of each):

- ``classes``: an explicit list of classes (names, WordNet IDs or label-set indices) to keep, in this order;
  labels become positions in this list. This is how a subset is evaluated; without it a named label set must be
  complete (a missing or unexpected class folder is an error).
- ``class_subset=(part, parts)``: keeps the classes with sorted index in
  ``[ceil(part*N/parts), ceil((part+1)*N/parts))`` and relabels them 0..m-1 (the CoOp base/new split).
- ``classnames``: names for the classes in label order (folders: in sorted folder order).
- ``name``: the row name in result tables.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ClipoodError, did_you_mean, unknown

DATA_ROOT_ENV = "CLIPOOD_DATA"
ROOT_HINT = (f"relative paths resolve against the data root: data_root= (config or command line), else "
             f"${DATA_ROOT_ENV}, else the current folder; absolute paths work as they are")
#: files that `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk` write into their folder
HF_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


# ----------------------------------------------------------------------------------------------- data root
def data_root(config_value: str | os.PathLike | None = None) -> Path:
    """The folder that relative dataset paths resolve against: ``config_value``, else ``$CLIPOOD_DATA``, else the
    current folder (so ``id_data.path=mydata/test`` means what a shell user expects)."""
    source = data_root_source(config_value)
    if source == "data_root":
        root = Path(config_value).expanduser()
    elif source == DATA_ROOT_ENV:
        root = Path(os.environ[DATA_ROOT_ENV]).expanduser()
    else:
        return Path.cwd()
    if not root.is_dir():
        raise ClipoodError(f"data root {root} (from {source}) is not a folder; create it or fix {source}")
    return root


def data_root_source(config_value: str | os.PathLike | None = None) -> str:
    """Where the data root comes from: ``"data_root"``, ``"CLIPOOD_DATA"`` or ``"the current folder"``."""
    if config_value not in (None, ""):
        return "data_root"
    if os.environ.get(DATA_ROOT_ENV):
        return DATA_ROOT_ENV
    return "the current folder"


def describe_root(config_value: str | os.PathLike | None = None) -> str:
    """``"data root /x (set by data_root=)"`` for messages; for the current folder, how to set another."""
    source = data_root_source(config_value)
    how = {"data_root": "set by data_root=", DATA_ROOT_ENV: f"set by {DATA_ROOT_ENV}"}.get(
        source, f"the current folder: neither data_root= nor {DATA_ROOT_ENV} is set")
    return f"data root {data_root(config_value)} ({how})"


def _resolve(path: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else data_root(root) / p


def is_hf_disk_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder written by Hugging Face ``save_to_disk`` (a Dataset or a DatasetDict)."""
    p = Path(path)
    return p.is_dir() and any((p / m).is_file() for m in HF_DISK_MARKERS)


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


def _check_classes(classes: Any) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise ClipoodError(f"classes must be a list of class names or IDs, e.g. [goldfish, n01440764]; "
                           f"got {classes!r}")
    out = [str(c) for c in classes]
    if not out:
        raise ClipoodError("classes is an empty list; list the classes to keep or drop the key")
    dup = sorted({c for c in out if out.count(c) > 1})
    if dup:
        raise ClipoodError(f"classes lists {', '.join(dup)} twice; list every class once")
    return out


def _names(v: Any) -> list[str] | None:
    return None if v is None else [str(c) for c in v]


@dataclass
class ImageFolderSpec:
    """One sub-folder per class (sorted), images found recursively below it.

    ``label_set`` (e.g. "imagenet") maps class folders to that label set *by name*: a folder may be named by
    WordNet ID (``n01440764``), by class name, or by label index (ImageNet-V2's ``0..999``); labels and prompt
    names come from the label set, and every class of it must have a folder (or use ``classes``).
    ``ood=True`` also accepts the MOS OOD layouts: a single pseudo-class folder (``SUN/images/*.jpg``) or
    images directly in ``path``; then every image gets label 0 and ``classnames`` stays None.
    ``sort``: "auto" sorts class folders numerically when all names are integers, else by name; "name" /
    "numeric" force one. ``readable_names`` turns ``001.Black_footed_Albatross`` into ``Black footed Albatross``.
    """

    path: str
    classnames: list[str] | None = None
    ood: bool = False
    sort: str = "auto"
    readable_names: bool = False
    class_subset: tuple[int, int] | None = None
    name: str | None = None
    label_set: str | None = None
    classes: list[str] | None = None
    type: ClassVar[str] = "imagefolder"

    def __post_init__(self) -> None:
        self.path = str(self.path)
        if self.sort not in ("auto", "name", "numeric"):
            raise unknown("sort order", self.sort, ("auto", "name", "numeric"))
        self.class_subset = _check_subset(self.class_subset)
        self.classnames = _names(self.classnames)
        self.classes = _check_classes(self.classes)


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
    classes: list[str] | None = None
    type: ClassVar[str] = "imagelist"

    def __post_init__(self) -> None:
        self.root, self.list_file = str(self.root), str(self.list_file)
        self.class_subset = _check_subset(self.class_subset)
        self.classnames = _names(self.classnames)
        self.classes = _check_classes(self.classes)


@dataclass
class HFDatasetSpec:
    """A Hugging Face dataset: ``from_disk=True`` loads a `save_to_disk` folder (relative to the data root; such
    a folder is also recognised without it), otherwise ``load_dataset(path_or_name, config_name)`` from the
    local cache or the hub. ``label_column=None`` gives every image label 0 (an OOD set). Classnames come from
    a ClassLabel feature unless given."""

    path_or_name: str
    split: str = "test"
    image_column: str = "image"
    label_column: str | None = "label"
    from_disk: bool = False
    config_name: str | None = None
    classnames: list[str] | None = None
    class_subset: tuple[int, int] | None = None
    name: str | None = None
    classes: list[str] | None = None
    type: ClassVar[str] = "hf"

    def __post_init__(self) -> None:
        self.path_or_name = str(self.path_or_name)
        self.class_subset = _check_subset(self.class_subset)
        self.classnames = _names(self.classnames)
        self.classes = _check_classes(self.classes)


Spec = ImageFolderSpec | ImageListSpec | HFDatasetSpec
SPEC_CLASSES = (ImageFolderSpec, ImageListSpec, HFDatasetSpec)
_SPEC_TYPES: dict[str, type] = {
    "imagefolder": ImageFolderSpec, "image_folder": ImageFolderSpec,
    "imagelist": ImageListSpec, "image_list": ImageListSpec,
    "hf": HFDatasetSpec, "huggingface": HFDatasetSpec, "hf_dataset": HFDatasetSpec,
}


def spec_from_dict(d: dict | str | Spec) -> Spec:
    """Build a spec from a YAML/JSON dict. ``type`` is one of imagefolder / imagelist / hf; without it the type
    is inferred from the keys (``list_file`` → image list, ``path_or_name`` → HF, ``path`` → image folder).
    A plain string is an image folder path; a spec is returned unchanged."""
    if isinstance(d, SPEC_CLASSES):
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
    """A copy of ``spec`` with its paths made absolute against the data root (hub names are left alone; an HF
    name that is a `save_to_disk` folder, absolute or under the data root, becomes ``from_disk``)."""
    if isinstance(spec, ImageFolderSpec):
        return dataclasses.replace(spec, path=str(_resolve(spec.path, root)))
    if isinstance(spec, ImageListSpec):
        return dataclasses.replace(spec, root=str(_resolve(spec.root, root)),
                                   list_file=str(_resolve(spec.list_file, root)))
    if spec.from_disk:
        return dataclasses.replace(spec, path_or_name=str(_resolve(spec.path_or_name, root)))
    local = Path(spec.path_or_name).expanduser()
    if not local.is_absolute():
        try:
            local = data_root(root) / local
        except ClipoodError:  # a data root that is no folder: a hub name
            return spec
    if is_hf_disk_folder(local):
        return dataclasses.replace(spec, path_or_name=str(local), from_disk=True)
    return spec


def as_ood_spec(spec: Spec) -> Spec:
    """The spec read as an OOD set: folders accept the MOS layouts, HF sets need no label column."""
    if isinstance(spec, ImageFolderSpec) and not spec.ood:
        return dataclasses.replace(spec, ood=True)
    if isinstance(spec, HFDatasetSpec) and spec.label_column is not None and spec.classes is None:
        return dataclasses.replace(spec, label_column=None)
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
