"""The up-front data check: every data problem of a run, before any model is loaded, in one message.

`check_data(data)` reads the benchmark of a run's data record (:class:`clipood.config.records.DataSettings`:
a named suite with its unseen-class / unseen-style suites, or ``custom`` specs) and the training data of a
training recipe, and reports all problems of all splits at once,
de-duplicated: missing paths, unreadable HF specs (columns, splits, no rows), empty or flat folders, missing or
unexpected class folders, and a missing or mismatched ``train_data``. It scans folders and list files (no image is
decoded); a run that passes it does not fail later on its data layout.

`training_dataset` builds the training pool with labels *by name*: its class names are matched to the ID class
names (the crops are ranked with, and the adapter trains on, the ID names); config ``train_classes: exact`` (default)
needs exactly the ID classes, ``subset`` accepts a subset of them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ClipoodError

if TYPE_CHECKING:
    from ..config.records import DataSettings

TRAIN_CLASS_MODES = ("exact", "subset")


def _norm(name: str) -> str:
    return " ".join(str(name).replace("_", " ").split()).lower()


def _listed(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _train_label_set(spec, label_set: str | None, classes):
    """A folder spec of a named suite's training data maps its class folders through the suite's label set."""
    from .specs import ImageFolderSpec

    if isinstance(spec, ImageFolderSpec) and label_set and spec.label_set is None and spec.classnames is None:
        return dataclasses.replace(spec, label_set=label_set, classes=spec.classes or classes)
    return spec


def training_dataset(train_spec: Any, id_classnames: Sequence[str], *, label_set: str | None = None,
                     classes=None, mode: str = "exact", root=None):
    """The training `ImageDataset` relabelled to the ID classes by name (``classnames`` = the ID names).

    Raises ClipoodError when the training data have no class names, hold a class that is not an ID class, or
    (``mode="exact"``) lack an ID class."""
    from .dataset import build_dataset
    from .specs import spec_from_dict, spec_name

    if mode not in TRAIN_CLASS_MODES:
        from ..errors import unknown

        raise unknown("train_classes mode", mode, TRAIN_CLASS_MODES)
    spec = _train_label_set(spec_from_dict(train_spec), label_set, classes)
    ds = build_dataset(spec, root=root)
    names = ds.classnames
    where = f"training data {spec_name(spec)}"
    if not names:
        raise ClipoodError(f"{where} have no class names; use one folder per class or set classnames")
    index = {}
    for i, c in enumerate(id_classnames):
        index.setdefault(_norm(c), i)
    to_id = [index.get(_norm(c)) for c in names]
    extra = [c for c, i in zip(names, to_id) if i is None]
    used = {i for i in to_id if i is not None}
    missing = [c for i, c in enumerate(id_classnames) if i not in used]
    problems = []
    if extra:
        problems.append(f"{len(extra)} class(es) that are no ID class: {_listed(extra)}")
    if missing and mode == "exact":
        problems.append(f"no images of {len(missing)} ID class(es): {_listed(missing)}")
    if problems:
        hint = ("; train on the ID classes (by name), set train_classes: subset to train on some of them"
                if not extra else "; the training classes must be ID classes (by name)")
        raise ClipoodError(f"{where}: {'; '.join(problems)}{hint}")
    ds.samples = [(item, to_id[lab]) for item, lab in ds.samples]
    ds.classnames = list(id_classnames)
    return ds


def _suite_entries(data: DataSettings) -> tuple[list, list[str], bool]:
    """[(where, spec)] of every dataset the configured suites evaluate, the problems found on the way, and
    whether the Base suite has a label set."""
    from ..suites import get_suite, suite_classnames

    root = data.data_root
    problems: list[str] = []
    try:
        base = get_suite(data.benchmark, root=root, classes=data.classes)
    except ClipoodError as e:
        return [], [str(e)], True
    suites = [("base", base)]
    for kind, names in (("new_class", data.new_class_suites), ("new_style", data.new_style_suites)):
        for n in names:
            try:
                suites.append((kind, get_suite(n, root=root)))
            except ClipoodError as e:
                problems.append(str(e))
    entries = []
    for kind, s in suites:
        ood = base.ood if kind == "new_style" else s.ood  # unseen styles keep the Base OOD sets
        entries.append((f"{kind} ID {s.name}", s.id))
        entries += [(f"{kind} OOD {n}", spec) for n, spec in ood.items()]
    if data.training:
        spec = data.train_data
        if not spec:
            problems.append(f"no training data: set train_data (a dataset spec, e.g. {{type: imagefolder, path: "
                            f"imagenet/train}}) for benchmark {data.benchmark}")
        else:
            try:
                names = suite_classnames(base, root) if base.label_set else None
                entries.append(("train", ("train", spec, base.label_set, names)))
            except ClipoodError as e:
                problems.append(str(e))
    return entries, problems, bool(base.label_set)


def _missing_paths(spec, root) -> list[str]:
    from .specs import resolve_spec
    from ..suites import _required_paths

    full = resolve_spec(spec, root)
    return [rel for rel, f in zip(_required_paths(spec), _required_paths(full)) if not Path(f).exists()]


def _custom_entries(data: DataSettings) -> tuple[list, list[str], bool]:
    from .specs import as_ood_spec, spec_from_dict

    problems, entries = [], []
    if not data.id_data or not data.ood_data:
        problems.append("benchmark=custom needs id_data (a dataset spec) and ood_data (name: spec, ...)")
    for key, value in (("id_data", data.id_data), *((f"ood_data.{k}", v) for k, v in data.ood_data.items())):
        if not value:
            continue
        try:
            spec = spec_from_dict(value)
            entries.append((key, as_ood_spec(spec) if key.startswith("ood_data") else spec))
        except ClipoodError as e:
            problems.append(f"{key}: {e}")
    if data.training:
        if not data.train_data:
            problems.append("no training data: set train_data (a dataset spec with the ID classes) for "
                            "benchmark=custom")
        else:
            entries.append(("train", ("train", data.train_data, None, None)))
    return entries, problems, False


def check_data(data: DataSettings) -> None:
    """Raise ONE ClipoodError listing every data problem of the run (see the module docstring); None if fine."""
    from .dataset import build_dataset
    from .specs import spec_to_dict

    bench = data.benchmark
    if bench == "mini":
        return
    root = data.data_root
    entries, problems, named = _custom_entries(data) if bench == "custom" else _suite_entries(data)
    seen: dict[str, str] = {}
    located: dict[str, list[str]] = {}  # message → where it happened (one line for a problem shared by sets)
    id_names = None
    missing: list[str] = []
    for where, spec in entries:
        if isinstance(spec, tuple):  # the training data, checked against the ID names
            continue
        key = json.dumps(spec_to_dict(spec), sort_keys=True)
        if key in seen:
            continue
        seen[key] = where
        try:
            gone = _missing_paths(spec, root)
            if gone:
                missing += [g for g in gone if g not in missing]
                continue
            ds = build_dataset(spec, root=root)
            if where.startswith(("base ID", "id_data")):
                below = [lab for _, lab in ds.samples if lab < 0]  # OOD lists may say -1; ID labels index classes
                if below:
                    src = f" in {spec.list_file}" if getattr(spec, "list_file", None) else ""
                    located.setdefault(f"label {below[0]}{src} is below 0 ({len(below)} image(s)); ID labels are "
                                       f"class indices 0, 1, ... (only OOD lists may use -1)", []).append(where)
                id_names = ds.classnames
                if not id_names and not named:  # a suite with a label set names its classes itself
                    located.setdefault("the ID dataset has no class names (use one folder per class, or set "
                                       "classnames)", []).append(where)
        except ClipoodError as e:
            located.setdefault(str(e), []).append(where)
    for where, (_, spec, label_set, names) in (e for e in entries if isinstance(e[1], tuple)):
        names = names or id_names
        if not names:
            continue  # the ID set's own problem is reported above
        try:
            training_dataset(spec, names, label_set=label_set, classes=data.classes,
                             mode=data.train_classes or "exact", root=root)
        except ClipoodError as e:
            problems.append(f"train_data: {e}")
    problems += [f"{', '.join(w)}: {msg}" for msg, w in located.items()]
    if missing:
        import os

        from .specs import data_root, describe_root

        try:
            base = data_root(root)
            where = f" under {describe_root(root)}"
        except ClipoodError:  # only absolute paths here (relative ones already reported the bad root)
            base, where = None, ""
        shown = [os.path.relpath(m, base) if base and Path(m).is_absolute() and Path(m).is_relative_to(base) else m
                 for m in missing]
        hint = ("check the paths of id_data / ood_data / train_data (relative ones resolve against the data root; "
                "absolute paths work as they are)" if bench == "custom" else
                "put the datasets in the layout described in clipood.suites (README 'Datasets') or fix the data root")
        problems.insert(0, f"{len(missing)} path(s) missing{where}: {', '.join(shown)}; {hint}")
    problems = list(dict.fromkeys(problems))
    if len(problems) == 1:
        raise ClipoodError(f"data problem (found before loading the model): {problems[0]}")
    if problems:
        # one line (a terminal wraps it), problems numbered
        raise ClipoodError(f"{len(problems)} data problems (found before loading the model): "
                           + " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))
