"""Image folders: find the images of an `ImageFolderSpec` and give every class folder its label *by name*.

Without ``label_set`` or ``classes`` the sorted class folders are the classes (label = position, name = folder
name or ``classnames``). With ``label_set`` every folder is looked up in that label set (WordNet ID, class name,
or label index for numeric folders) and gets the label set's index and name; a folder the set does not know, or a
class of the set without a folder, is an error that lists them. With ``classes`` only the listed classes are kept
(labels = positions in the list, other folders ignored) and a listed class without a folder is an error.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..errors import ClipoodError
from .specs import ROOT_HINT, ImageFolderSpec, is_hf_disk_folder

logger = logging.getLogger("clipood.datasets.dataset")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(folder: Path) -> list[str]:
    """Every image file below ``folder`` (recursive, sorted, hidden files and folders skipped). Linked folders
    are followed, but never back into the class folder or above it (a loop, or a link to the class folders
    beside it), and a folder two links reach is walked once: every image counts once, in its own class."""
    found = []
    seen: set[tuple[int, int]] = set()
    root = os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        real = os.path.realpath(dirpath)
        above = real != root and (root + os.sep).startswith(real.rstrip(os.sep) + os.sep)  # an ancestor
        if (st.st_dev, st.st_ino) in seen or above:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and _is_image(f))
    return found


def readable_name(folder: str) -> str:
    """``001.Black_footed_Albatross`` → ``Black footed Albatross``."""
    return re.sub(r"^\d+[._]", "", folder).replace("_", " ").strip()


def _listed(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def scan_image_folder(spec: ImageFolderSpec) -> tuple[list[tuple[str, int]], list[str] | None]:
    """``(samples [(path, label)], classnames)`` of a resolved folder spec; every problem is a ClipoodError."""
    path = Path(spec.path)
    if not path.is_dir():
        raise ClipoodError(
            f"image folder not found: {path} ({ROOT_HINT})"
        )
    if is_hf_disk_folder(path):
        raise ClipoodError(f"{path} is a Hugging Face save_to_disk folder, not an image folder; use "
                           f"{{type: hf, path_or_name: {spec.path}, from_disk: true}}")
    entries = sorted(os.scandir(path), key=lambda e: e.name)
    subdirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    direct = [e.path for e in entries if e.is_file() and _is_image(e.name)]
    exts = " ".join(IMAGE_EXTENSIONS)
    if spec.ood and len(subdirs) <= 1:  # MOS layout: one pseudo-class folder, or a flat folder of images
        files = direct + (walk_images(path / subdirs[0]) if subdirs else [])
        if not files:
            raise ClipoodError(f"no images ({exts}) found in OOD folder {path}; add images or drop this set")
        return [(f, 0) for f in files], spec.classnames
    if not subdirs:
        if direct:
            raise ClipoodError(
                f"{path} holds {len(direct)} images but no class sub-folders: ID data need one sub-folder per "
                f"class ({path}/<class>/<image>; ImageNet val: one folder per WordNet ID, e.g. n01440764/); "
                "only an OOD set may be flat (ood: true)")
        raise ClipoodError(f"no class sub-folders in {path}: an image folder needs {path}/<class>/<image>")
    numeric = all(s.isdigit() for s in subdirs)
    if spec.sort == "numeric" and not numeric:
        raise ClipoodError(f"sort: numeric needs integer class folder names in {path}; use sort: name")
    if spec.sort == "numeric" or (spec.sort == "auto" and numeric):
        subdirs.sort(key=int)
    if direct:
        logger.warning("image folder %s: ignoring %d image(s) outside the class folders", path, len(direct))
    if spec.label_set is not None or spec.classes is not None:
        folders, classnames = _folders_by_name(spec, path, subdirs, numeric)
    else:
        folders = [(sub, label) for label, sub in enumerate(subdirs)]
        classnames = None
    samples, empty = [], []
    for sub, label in folders:
        files = walk_images(path / sub)
        if not files:
            empty.append(str(path / sub))
        samples.extend((f, label) for f in files)
    if empty:
        raise ClipoodError(f"class folder(s) with no images ({exts}): {_listed(empty)}; add images or remove them")
    if classnames is not None:
        return samples, classnames
    if spec.classnames is not None:
        if len(spec.classnames) != len(subdirs):
            raise ClipoodError(f"{len(spec.classnames)} classnames given but {path} has {len(subdirs)} class folders")
        return samples, list(spec.classnames)
    if (named := wordnet_names(subdirs)) is not None:  # n01440764/ ... folders: the ImageNet names of those IDs
        return samples, named
    return samples, [readable_name(s) for s in subdirs] if spec.readable_names else subdirs


#: a WordNet noun ID as ImageNet names its class folders
WORDNET_ID = re.compile(r"^n\d{8}$")


def looks_like_wordnet_ids(names) -> bool:
    names = list(names or [])
    return bool(names) and all(WORDNET_ID.match(str(n)) for n in names)


def wordnet_names(folders: list[str]) -> list[str] | None:
    """Class names for folders named by WordNet ID, from the ImageNet-1k list (IDs and names shipped with the
    installed packages); None when the folders are not all WordNet IDs, or some ID is not in that list."""
    if not looks_like_wordnet_ids(folders):
        return None
    from ..labels.prompts import get_label_set

    try:
        ls = get_label_set("imagenet")
    except (ClipoodError, ImportError):
        return None
    by_id = dict(zip(ls.ids or [], ls.classnames))
    return [by_id[f] for f in folders] if all(f in by_id for f in folders) else None


def _folders_by_name(spec: ImageFolderSpec, path: Path, subdirs: list[str],
                     numeric: bool) -> tuple[list[tuple[str, int]], list[str]]:
    """(folder, label) pairs and the classnames for a spec with ``label_set`` and/or ``classes``."""
    if spec.label_set is None:  # classes only: match folder names (or their readable forms) to the list
        def key(s: str) -> str:
            return " ".join(s.replace("_", " ").split()).lower()

        index: dict[str, str] = {}
        for sub in subdirs:
            index.setdefault(sub, sub)
            index.setdefault(key(sub), sub)
            index.setdefault(key(readable_name(sub)), sub)
        wanted = [index.get(c, index.get(key(c))) for c in spec.classes]
        missing = [c for c, sub in zip(spec.classes, wanted) if sub is None]
        if missing:
            raise ClipoodError(f"{path}: no class folder for {len(missing)} of the {len(spec.classes)} classes "
                               f"listed in classes: {_listed(missing)} (folders there: {_listed(subdirs)})")
        names = [readable_name(s) if spec.readable_names else c for s, c in zip(wanted, spec.classes)]
        return [(sub, i) for i, sub in enumerate(wanted)], names

    from ..labels.prompts import get_label_set

    ls = get_label_set(spec.label_set)
    found = ls.resolve(subdirs, numeric=numeric)
    by_index: dict[int, str] = {}
    clash = []
    for sub, i in zip(subdirs, found):
        if isinstance(i, int):
            if i in by_index:
                clash.append(f"{by_index[i]} and {sub} (both {ls.describe(i)})")
            by_index.setdefault(i, sub)
    if clash:
        raise ClipoodError(f"{path}: two class folders for one class of label set {ls.name}: {_listed(clash)}")
    if spec.classes is not None:
        want = ls.resolve(spec.classes)
        bad = [f"{c} ({w})" for c, w in zip(spec.classes, want) if not isinstance(w, int)]
        if bad:
            raise ClipoodError(f"classes: {_listed(bad)} not in label set {ls.name} (use WordNet IDs for ambiguous "
                               "names); check the spelling")
        missing = [ls.describe(i) for i in want if i not in by_index]
        if missing:
            raise ClipoodError(f"{path}: no class folder for {len(missing)} of the {len(want)} classes listed in "
                               f"classes: {_listed(missing)}")
        return [(by_index[i], pos) for pos, i in enumerate(want)], [ls.classnames[i] for i in want]
    unexpected = [sub for sub, i in zip(subdirs, found) if not isinstance(i, int)]
    missing = [ls.describe(i) for i in range(len(ls)) if i not in by_index]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of the {len(ls)} classes of label set {ls.name} have no class folder: "
                        f"{_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} class folder(s) are no class of label set {ls.name}: "
                        f"{_listed(unexpected)}")
    if problems:
        raise ClipoodError(f"{path}: {'; '.join(problems)}. Labels are given by name, so fix the folders, or "
                           "list the classes to evaluate with classes: [...]")
    return [(by_index[i], i) for i in sorted(by_index)], list(ls.classnames)
