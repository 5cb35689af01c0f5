"""Named benchmark suites: an ID dataset, its OOD datasets and the label set, laid out under the data root.

Expected layouts (relative to the data root, ``data_root=`` in the config or ``$CLIPOOD_DATA``):

imagenet (MOS benchmark; ID ImageNet-1k val, far-OOD iNaturalist / SUN / Places / Textures)
    imagenet/val/<wnid>/*.JPEG          1,000 class folders (n01440764, ...), 50,000 images
    iNaturalist/images/*.jpg            10,000 images, one pseudo-class folder (MOS)
    SUN/images/*.jpg                    10,000
    Places/images/*.jpg                 10,000
    dtd/images/<texture>/*.jpg          5,640 (the DTD archive as extracted; its 47 folders are ignored as labels)
openood-imagenet (OpenOOD v1.5; near-OOD ssb_hard, ninco; far-OOD inaturalist, textures, openimage_o)
    benchmark_imglist/imagenet/test_{imagenet,ssb_hard,ninco,inaturalist,textures,openimage_o}.txt
    images_largescale/...               paths as listed (imagenet_1k/val/..., ssb_hard/..., ninco/..., ...)
    images_classic/...                  textures (OpenOOD keeps DTD with the classic images)
cifar10, cifar100 (OpenOOD v1.5; near-OOD the other CIFAR and tin (TinyImageNet); far-OOD mnist, svhn,
                  texture, places365)
    benchmark_imglist/cifar10/test_{cifar10,cifar100,tin,mnist,svhn,texture,places365}.txt
    benchmark_imglist/cifar100/test_{cifar100,cifar10,tin,mnist,svhn,texture,places365}.txt
    images_classic/...                  paths as listed
imagenet-r, imagenet-a, imagenet-v2, imagenet-sketch (style shift: these are the ID set, OOD as in "imagenet")
    imagenet-rendition/imagenet-r/<wnid>/*.jpg      200 classes (label set "imagenet-r")
    imagenet-adversarial/imagenet-a/<wnid>/*.jpg    200 classes (label set "imagenet-a")
    imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg   (numeric folders, sorted as numbers)
    imagenet-sketch/images/<wnid>/*.JPEG            1,000 classes (the archive's sketch/ folder renamed)
    (the CoOp DATASETS.md layout) plus the four MOS OOD folders above.
cub, stanford_cars, food101, oxford_pets (unseen classes: first half of the classes, by label index, is ID and
the second half OOD; with an odd count the first half gets the extra class)
    CUB_200_2011/images/<001.Black_footed_Albatross>/*.jpg   all 11,788 images, class per folder
    stanford_cars/split_zhou_StanfordCars.json + stanford_cars/cars_test/*.jpg     (CoOp split files;
    food-101/split_zhou_Food101.json + food-101/images/<class>/*.jpg               the "test" split is used)
    oxford_pets/split_zhou_OxfordPets.json + oxford_pets/images/*.jpg

Class folders of the ImageNet family are matched to the suite's label set by name (WordNet ID, or label index
for ImageNet-V2's numeric folders): a missing or unexpected class folder is an error. To evaluate a subset, pass
``classes`` (names or WordNet IDs) to `get_suite` (config key ``classes``).
The OpenOOD v1.5 ``data/`` folder is used as is: ``data_root=<OpenOOD>/data benchmark=openood-imagenet``.

Other layouts: write the specs yourself (`clipood.datasets.dataset.spec_from_dict` accepts YAML dicts).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .datasets.specs import (
    DATA_ROOT_ENV, ImageFolderSpec, ImageListSpec, Spec, data_root, describe_root, resolve_spec,
    spec_from_dict, spec_name,
)
from .errors import ClipoodError, unknown


@dataclass
class Suite:
    """An ID spec, OOD specs by name, and the label-set name for prompts.

    ``label_set`` None means: use the ID dataset's own classnames (``build_dataset(suite.id).classnames``), as
    for the half-split suites whose ID classes are a subset. ``groups`` names OOD subsets (OpenOOD near/far).
    """

    name: str
    id: Spec
    ood: dict[str, Spec]
    label_set: str | None
    description: str
    groups: dict[str, list[str]] = field(default_factory=dict)
    root: str | None = None


def half_split(spec: Spec | dict) -> tuple[Spec, Spec]:
    """(ID spec, OOD spec): the first and second half of ``spec``'s classes, sorted by label index
    (``class_subset`` (0, 2) and (1, 2); each half is relabelled from 0 and keeps its own classnames)."""
    spec = spec_from_dict(spec)
    if spec.class_subset is not None:
        raise ClipoodError(f"dataset {spec_name(spec)} already has class_subset {list(spec.class_subset)}")
    base = spec_name(spec)
    return (dataclasses.replace(spec, class_subset=(0, 2), name=f"{base}:first_half"),
            dataclasses.replace(spec, class_subset=(1, 2), name=f"{base}:second_half"))


def _mos_ood() -> dict[str, Spec]:
    return {
        "iNaturalist": ImageFolderSpec("iNaturalist", ood=True, name="iNaturalist"),
        "SUN": ImageFolderSpec("SUN", ood=True, name="SUN"),
        "Places": ImageFolderSpec("Places", ood=True, name="Places"),
        "Textures": ImageFolderSpec("dtd/images", ood=True, name="Textures"),
    }


def _openood_list(bench: str, name: str, images: str) -> ImageListSpec:
    return ImageListSpec(images, f"benchmark_imglist/{bench}/test_{name}.txt", name=name)


def _openood_imagenet() -> Suite:
    near, far = ["ssb_hard", "ninco"], ["inaturalist", "textures", "openimage_o"]
    ood = {n: _openood_list("imagenet", n, "images_classic" if n == "textures" else "images_largescale")
           for n in near + far}
    return Suite("openood-imagenet", _openood_list("imagenet", "imagenet", "images_largescale"), ood, "imagenet",
                 "OpenOOD v1.5 ImageNet-1k: near-OOD SSB-hard, NINCO; far-OOD iNaturalist, Textures, OpenImage-O",
                 groups={"near": near, "far": far})


def _openood_cifar(bench: str) -> Suite:
    near = ["cifar100" if bench == "cifar10" else "cifar10", "tin"]
    far = ["mnist", "svhn", "texture", "places365"]
    return Suite(bench, _openood_list(bench, bench, "images_classic"),
                 {n: _openood_list(bench, n, "images_classic") for n in near + far}, bench,
                 f"{bench.upper()} test (OpenOOD v1.5 lists): near-OOD {near[0].upper()}, TinyImageNet; far-OOD "
                 "MNIST, SVHN, Textures, Places365", groups={"near": near, "far": far})


def _style(name: str, path: str, label_set: str, what: str) -> Suite:
    return Suite(name, ImageFolderSpec(path, name=name, label_set=label_set), _mos_ood(), label_set,
                 f"{what} as ID (style shift) with the MOS OOD sets iNaturalist, SUN, Places, Textures")


def _fine_grained(name: str, spec: Spec, what: str) -> Suite:
    id_spec, ood_spec = half_split(dataclasses.replace(spec, name=name))
    return Suite(name, id_spec, {f"{name}:second_half": ood_spec}, None,
                 f"{what}: first half of the classes ID, second half OOD (unseen classes)")


_SUITES = {
    "imagenet": lambda: Suite("imagenet", ImageFolderSpec("imagenet/val", name="imagenet", label_set="imagenet"),
                              _mos_ood(), "imagenet",
                              "ImageNet-1k val with the MOS OOD sets iNaturalist, SUN, Places, Textures"),
    "openood-imagenet": _openood_imagenet,
    "cifar10": lambda: _openood_cifar("cifar10"),
    "cifar100": lambda: _openood_cifar("cifar100"),
    "imagenet-r": lambda: _style("imagenet-r", "imagenet-rendition/imagenet-r", "imagenet-r",
                                 "ImageNet-R (200 classes)"),
    "imagenet-a": lambda: _style("imagenet-a", "imagenet-adversarial/imagenet-a", "imagenet-a",
                                 "ImageNet-A (200 classes)"),
    "imagenet-v2": lambda: _style("imagenet-v2", "imagenetv2/imagenetv2-matched-frequency-format-val", "imagenet",
                                  "ImageNet-V2 matched frequency"),
    "imagenet-sketch": lambda: _style("imagenet-sketch", "imagenet-sketch/images", "imagenet", "ImageNet-Sketch"),
    "cub": lambda: _fine_grained("cub", ImageFolderSpec("CUB_200_2011/images", readable_names=True), "CUB-200-2011"),
    "stanford_cars": lambda: _fine_grained(
        "stanford_cars", ImageListSpec("stanford_cars", "stanford_cars/split_zhou_StanfordCars.json"), "Stanford Cars"),
    "food101": lambda: _fine_grained(
        "food101", ImageListSpec("food-101/images", "food-101/split_zhou_Food101.json"), "Food-101"),
    "oxford_pets": lambda: _fine_grained(
        "oxford_pets", ImageListSpec("oxford_pets/images", "oxford_pets/split_zhou_OxfordPets.json"),
        "Oxford-IIIT Pets"),
}


def list_suites() -> list[str]:
    """Names accepted by `get_suite`."""
    return sorted(_SUITES)


def get_suite(name: str, root: str | os.PathLike | None = None, classes: list | None = None) -> Suite:
    """The named suite. Its spec paths stay relative unless ``root`` (the ``data_root`` config value) is given,
    in which case they are made absolute against it. ``classes`` (names or WordNet IDs) evaluates that subset of
    the ID classes, labelled by position in the list. Nothing is read from disk (see `check_suite`)."""
    key = str(name).lower().replace(" ", "")
    if key not in _SUITES:
        raise unknown("suite", name, _SUITES)
    suite = _SUITES[key]()
    if classes:
        suite.id = with_classes(suite.id, suite.label_set, classes)
    if root is not None:
        suite.id = resolve_spec(suite.id, root)
        suite.ood = {k: resolve_spec(v, root) for k, v in suite.ood.items()}
        suite.root = str(data_root(root))
    return suite


def with_classes(spec: Spec, label_set: str | None, classes) -> Spec:
    """``spec`` keeping only ``classes``. With a label set the keys are checked against it at once (a typo fails
    here), and image lists (integer labels) get the label set's names and the classes as label indices."""
    spec = dataclasses.replace(spec, classes=[str(c) for c in classes])
    if label_set is None or isinstance(spec, ImageFolderSpec):
        if label_set is not None:
            suite_classnames_for(label_set, spec.classes)
        return spec
    suite_classnames_for(label_set, spec.classes)  # fails on an unknown or ambiguous class at once
    from .labels.prompts import get_label_set

    ls = get_label_set(label_set)
    return dataclasses.replace(spec, classnames=list(ls.classnames), classes=[str(i) for i in ls.resolve(spec.classes)])


def suite_classnames_for(label_set: str, classes=None) -> list[str]:
    """The class names (prompts) of ``label_set``, or of its ``classes`` subset in list order."""
    from .labels.prompts import get_label_set

    ls = get_label_set(label_set)
    if not classes:
        return list(ls.classnames)
    found = ls.resolve(classes)
    bad = [f"{c} ({i})" for c, i in zip(classes, found) if not isinstance(i, int)]
    if bad:
        raise ClipoodError(f"classes: {', '.join(bad[:10])} not in label set {ls.name} (use WordNet IDs for "
                           "ambiguous names); check the spelling")
    return [ls.classnames[i] for i in found]


def suite_classnames(suite: Suite, root: str | os.PathLike | None = None) -> list[str]:
    """The ID class names of ``suite`` in label order: its label set (or the ``classes`` subset of it), else the
    ID dataset's own names (half-split suites)."""
    if suite.label_set:
        return suite_classnames_for(suite.label_set, getattr(suite.id, "classes", None))
    from .datasets.dataset import build_dataset

    return list(build_dataset(suite.id, root=root).classnames)


def _required_paths(spec: Spec) -> list[str]:
    if isinstance(spec, ImageFolderSpec):
        return [spec.path]
    if isinstance(spec, ImageListSpec):
        return [spec.list_file, spec.root]
    return [spec.path_or_name] if spec.from_disk else []


def check_suite(suite: Suite | str, root: str | os.PathLike | None = None) -> None:
    """Check that every folder and list file of ``suite`` exists, and every image an existing list names.

    Raises ONE `ClipoodError` naming every missing path and the data root it looked in; returns None if all
    is there. Image folders are not scanned here (`build_dataset` validates their contents, and
    `clipood.datasets.checks.check_data` runs both for every split of a run before the model loads).
    """
    if isinstance(suite, str):
        suite = get_suite(suite)
    base = data_root(root if root is not None else suite.root)
    where = describe_root(root if root is not None else suite.root)
    missing: list[str] = []
    problems: list[str] = []
    for spec in [suite.id, *suite.ood.values()]:
        for rel in _required_paths(spec):
            full = base / rel
            if not full.exists() and rel not in missing:
                missing.append(rel)
        if isinstance(spec, ImageListSpec) and (base / spec.list_file).is_file() and (base / spec.root).is_dir():
            problems += _missing_listed(spec, base)
    if not missing and not problems:
        return
    parts = []
    if missing:
        shown = [os.path.relpath(base / m, base) if Path(m).is_absolute() else m for m in missing]
        parts.append(f"{len(missing)} path(s) missing: {', '.join(shown)}")
    parts += problems
    raise ClipoodError(
        f"suite '{suite.name}' is incomplete under {where}: {'; '.join(parts)}. "
        f"Put the datasets in the layout described in clipood.suites, or point data_root= / {DATA_ROOT_ENV} "
        "at the folder that holds them"
    )


def _missing_listed(spec: ImageListSpec, base: Path) -> list[str]:
    from .datasets.dataset import _read_json_list, _read_text_list

    list_file = base / spec.list_file
    if list_file.suffix.lower() == ".json":
        entries, _ = _read_json_list(list_file, spec.split)
    else:
        entries = _read_text_list(list_file)
    gone = [rel for rel, _ in entries if not (base / spec.root / rel).is_file()]
    if not gone:
        return []
    return [f"{len(gone)} of {len(entries)} images listed in {spec.list_file} missing under {spec.root} "
            f"(first: {', '.join(gone[:3])})"]


__all__ = ["Suite", "get_suite", "list_suites", "check_suite", "half_split", "suite_classnames"]
