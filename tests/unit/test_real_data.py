"""Real-data layouts on generated data: HF datasets, ImageNet-style WordNet-ID trees, OpenOOD lists.

Every test compares against what the data are known to hold (pixels, folder → class), never the code's output.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipood.datasets.dataset import build_dataset
from clipood.datasets.specs import HFDatasetSpec, ImageFolderSpec, spec_from_dict
from clipood.errors import ClipoodError
from clipood.clip.image_features import dataset_fingerprint, extract_features
from clipood.labels.prompts import get_label_set

IMAGENET = get_label_set("imagenet")


def png(path, value: int, size: int = 8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)
    return path


class PixelBackbone:
    """Feature of an image = its mean pixel value in a 2-D unit vector; counts every encode call."""

    identifier = "pixel-mean-test"

    def __init__(self):
        self.image_calls = 0
        self.text_calls = 0

    @staticmethod
    def preprocess(im):
        return torch.tensor(np.asarray(im, dtype=np.float32).mean() / 255.0)

    def encode_images(self, x):
        self.image_calls += 1
        v = torch.stack([x.float(), 1 - x.float()], dim=1)
        return torch.nn.functional.normalize(v, dim=-1)


def hf_set(values, labels, names=("cat", "dog")):
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    ims = [Image.fromarray(np.full((6, 6, 3), v, dtype=np.uint8)) for v in values]
    return datasets.Dataset.from_dict({"image": ims, "label": list(labels)}, features=feats)


# ------------------------------------------------------------------------------------------ cache keys
def test_hf_sets_differing_only_in_pixels_get_different_features(tmp_path):
    import datasets

    hf_set([10, 20, 30, 40], [0, 1, 0, 1]).save_to_disk(tmp_path / "a")
    hf_set([200, 210, 220, 230], [0, 1, 0, 1]).save_to_disk(tmp_path / "b")
    datasets.DatasetDict({"train": hf_set([10, 20, 30, 40], [0, 1, 0, 1]),
                          "test": hf_set([90, 80, 70, 60], [0, 1, 0, 1])}).save_to_disk(tmp_path / "dd")
    bb = PixelBackbone()
    cache = tmp_path / "cache"

    def feats(spec):
        ds = build_dataset(spec, transform=bb.preprocess)
        return extract_features(bb, ds, batch_size=2, cache_dir=cache, progress=False)["features"][:, 0]

    a = feats(HFDatasetSpec(str(tmp_path / "a"), from_disk=True))
    b = feats(HFDatasetSpec(str(tmp_path / "b"), from_disk=True))
    # the feature's first coordinate is a monotone function of the mean pixel: the values must order as the pixels
    assert torch.all(b > a)
    assert len(list(cache.glob("*.safetensors"))) == 2
    train = feats(HFDatasetSpec(str(tmp_path / "dd"), split="train", from_disk=True))
    test = feats(HFDatasetSpec(str(tmp_path / "dd"), split="test", from_disk=True))
    assert torch.allclose(train, a) and torch.all(test[:2] > train[:2]) and not torch.allclose(train, test)
    calls = bb.image_calls
    again = feats(HFDatasetSpec(str(tmp_path / "a"), from_disk=True))  # a rerun of the same data hits
    assert bb.image_calls == calls and torch.equal(again, a)
    # another column selection is another key (here: the label column dropped)
    ka = dataset_fingerprint(build_dataset(HFDatasetSpec(str(tmp_path / "a"), from_disk=True)))
    kn = dataset_fingerprint(build_dataset(HFDatasetSpec(str(tmp_path / "a"), from_disk=True, label_column=None)))
    assert ka != kn


def test_folder_key_follows_content_not_location(tmp_path):
    for root in ("x", "y"):
        for i in range(2):
            png(tmp_path / root / "c" / f"{i}.png", 10 * i)
    kx = dataset_fingerprint(build_dataset(ImageFolderSpec(str(tmp_path / "x"))))
    import shutil
    shutil.copytree(tmp_path / "x", tmp_path / "moved", copy_function=shutil.copy2)  # same sizes and mtimes
    assert dataset_fingerprint(build_dataset(ImageFolderSpec(str(tmp_path / "moved")))) == kx
    png(tmp_path / "x" / "c" / "1.png", 99, size=9)  # other pixels, other size
    assert dataset_fingerprint(build_dataset(ImageFolderSpec(str(tmp_path / "x")))) != kx


def test_save_to_disk_folder_is_detected(tmp_path, monkeypatch):
    hf_set([1, 2], [0, 1]).save_to_disk(tmp_path / "hf")
    monkeypatch.setenv("CLIPOOD_DATA", str(tmp_path))
    ds = build_dataset(spec_from_dict({"type": "hf", "path_or_name": "hf"}))  # no from_disk needed
    assert ds.classnames == ["cat", "dog"] and ds.labels == [0, 1]
    with pytest.raises(ClipoodError, match="save_to_disk folder.*type: hf.*from_disk: true"):
        build_dataset(ImageFolderSpec("hf"))
    with pytest.raises(ClipoodError, match="label_column: null"):
        build_dataset({"type": "hf", "path_or_name": "hf", "label_column": "fine_label"})


# ------------------------------------------------------------------------------------------ labels by name
def imagenet_tree(root, indices, per_class: int = 1):
    for i in indices:
        for j in range(per_class):
            png(root / IMAGENET.ids[i] / f"{j}.JPEG", (i * 7 + j) % 256)
    return root


def test_imagenet_tree_with_a_missing_class_folder_names_it(tmp_path):
    imagenet_tree(tmp_path / "val", [i for i in range(1000) if i != 1])
    with pytest.raises(ClipoodError) as err:
        build_dataset(ImageFolderSpec(str(tmp_path / "val"), label_set="imagenet"))
    msg = str(err.value)
    assert "n01443537 (goldfish)" in msg and "1 of the 1000 classes" in msg and "classes:" in msg


def test_full_imagenet_tree_labels_are_label_set_indices(tmp_path):
    imagenet_tree(tmp_path / "val", range(1000))
    ds = build_dataset(ImageFolderSpec(str(tmp_path / "val"), label_set="imagenet"))
    assert ds.classnames == IMAGENET.classnames
    assert all(IMAGENET.ids[y] == p.split("/")[-2] for p, y in ds.samples)


def test_classes_subset_evaluates_correct_labels(tmp_path):
    # a subset tree (3 classes present, including the 'later' ones whose labels used to shift)
    imagenet_tree(tmp_path / "val", [0, 2, 5], per_class=2)
    spec = ImageFolderSpec(str(tmp_path / "val"), label_set="imagenet", classes=["goldfish", "n01440764"])
    with pytest.raises(ClipoodError, match="n01443537 \\(goldfish\\)"):
        build_dataset(spec)  # goldfish (index 1) is not there
    spec = ImageFolderSpec(str(tmp_path / "val"), label_set="imagenet", classes=["great white shark", "n01440764"])
    ds = build_dataset(spec)
    assert ds.classnames == ["great white shark", "tench"]
    assert {p.split("/")[-2]: y for p, y in ds.samples} == {"n01484850": 0, "n01440764": 1}


def test_unexpected_folder_is_an_error(tmp_path):
    imagenet_tree(tmp_path / "val", range(1000))
    png(tmp_path / "val" / "n99999999" / "x.JPEG", 1)
    with pytest.raises(ClipoodError, match="1 class folder\\(s\\) are no class of label set imagenet: n99999999"):
        build_dataset(ImageFolderSpec(str(tmp_path / "val"), label_set="imagenet"))


def test_numeric_folders_map_by_index(tmp_path):
    for i in (0, 10, 2):
        png(tmp_path / "v2" / str(i) / "a.jpeg", i)
    ds = build_dataset(ImageFolderSpec(str(tmp_path / "v2"), label_set="imagenet", classes=["0", "2", "10"]))
    assert ds.classnames == [IMAGENET.classnames[i] for i in (0, 2, 10)]
    assert {p.split("/")[-2]: y for p, y in ds.samples} == {"0": 0, "2": 1, "10": 2}


# ------------------------------------------------------------------------------------------ up-front check
@pytest.fixture
def no_model(monkeypatch):
    """Make loading a backbone fail loudly and record that it was attempted."""
    import clipood.clip.backbone

    calls = []

    def boom(*a, **k):
        calls.append(a)
        raise AssertionError("a model was loaded before the data check")

    monkeypatch.setattr(clipood.clip.backbone, "load_clip", boom)
    return calls


def run_recipe(name, args):
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "recipes" / f"{name}.py"
    return runpy.run_path(str(script), run_name="recipe_under_test")["main"](args)


def colour_folder(root, classes, n=2):
    for k, c in enumerate(classes):
        for i in range(n):
            png(root / c / f"{i}.png", 30 * k + i)
    return root


def test_late_errors_fail_before_the_model(tmp_path, no_model):
    colour_folder(tmp_path / "id", ["cat", "dog"])
    (tmp_path / "empty_ood").mkdir()
    base = ["model=clipood-tiny", "progress=false", f"output_dir={tmp_path / 'out'}", f"data_root={tmp_path}"]
    with pytest.raises(ClipoodError, match="ood_data.empty: no images .* OOD folder"):
        run_recipe("zeroshot", base + ["benchmark=custom", "id_data.path=id", "ood_data.empty.path=empty_ood"])
    imagenet = tmp_path / "imagenet" / "val"
    for i in range(3):
        png(imagenet / f"ILSVRC2012_val_{i:08d}.JPEG", i)  # flat, as the archive ships it
    for o in ("iNaturalist", "SUN", "Places", "dtd/images"):
        png(tmp_path / o / "images" / "a.jpg", 5)
    with pytest.raises(ClipoodError) as err:
        run_recipe("krnft", base + ["benchmark=imagenet"])
    msg = str(err.value)
    assert "2 data problems" in msg and "no class sub-folders" in msg and "WordNet ID" in msg
    assert "no training data: set train_data" in msg
    assert not no_model


def test_all_problems_of_all_splits_in_one_message(tmp_path, no_model):
    colour_folder(tmp_path / "id", ["cat", "dog"])
    (tmp_path / "e1").mkdir()
    base = ["model=clipood-tiny", "progress=false", f"output_dir={tmp_path / 'out'}", f"data_root={tmp_path}",
            "benchmark=custom", "id_data.path=id", "ood_data.a.path=e1", "ood_data.b.path=e1",
            "ood_data.c.type=hf", "ood_data.c.path_or_name=nope", "ood_data.c.from_disk=true"]
    with pytest.raises(ClipoodError) as err:
        run_recipe("zeroshot", base)
    msg = str(err.value)
    assert msg.startswith("2 data problems") and msg.count("e1") == 1 and "nope" in msg  # the same folder once
    assert not no_model


def test_mismatched_training_classes_fail_before_the_model(tmp_path, no_model):
    colour_folder(tmp_path / "id", ["cat", "dog"])
    colour_folder(tmp_path / "ood", ["x"])
    colour_folder(tmp_path / "train", ["cow", "dog"], n=4)
    args = ["model=clipood-tiny", "progress=false", f"output_dir={tmp_path / 'out'}", f"data_root={tmp_path}",
            "benchmark=custom", "id_data.path=id", "ood_data.x.path=ood", "train_data.path=train"]
    with pytest.raises(ClipoodError, match="1 class\\(es\\) that are no ID class: cow"):
        run_recipe("krnft", args)
    assert not no_model


def test_unlabelled_hf_ood_set_is_accepted(tmp_path):
    import datasets

    from clipood.config.records import DataSettings
    from clipood.datasets.checks import check_data

    colour_folder(tmp_path / "id", ["cat", "dog"])
    ims = [Image.fromarray(np.full((6, 6, 3), v, dtype=np.uint8)) for v in (1, 2)]
    datasets.Dataset.from_dict({"image": ims}, features=datasets.Features({"image": datasets.Image()})) \
        .save_to_disk(tmp_path / "hf_ood")
    check_data(DataSettings(benchmark="custom", data_root=str(tmp_path), id_data={"path": "id"},
                            ood_data={"u": {"type": "hf", "path_or_name": "hf_ood", "from_disk": True}}))


def test_training_on_a_wordnet_tree_ranks_crops_with_class_names(tmp_path):
    from clipood.clip.backbone import load_clip
    from clipood.crops.cache import build_crop_cache
    from clipood.crops.sampling import CropConfig
    from clipood.datasets.checks import training_dataset

    imagenet_tree(tmp_path / "train", [0, 1, 2], per_class=1)
    names = [IMAGENET.classnames[i] for i in (0, 1, 2)]
    with pytest.raises(ClipoodError, match="997 of the 1000 classes"):
        training_dataset({"path": str(tmp_path / "train")}, IMAGENET.classnames, label_set="imagenet")
    ds = training_dataset({"path": str(tmp_path / "train")}, names, label_set="imagenet",
                          classes=["n01440764", "goldfish", "n01484850"])
    assert ds.classnames == ["tench", "goldfish", "great white shark"]
    bb = load_clip("clipood-tiny")
    seen = []
    orig = bb.encode_text
    bb.encode_text = lambda texts, **k: (seen.append((list(texts), k.get("templates"))), orig(texts, **k))[1]
    build_crop_cache(bb, ds, None, CropConfig(num_crops=2, num_selected=1), ds.classnames, progress=False)
    assert seen == [(["tench", "goldfish", "great white shark"], ["a photo of a {}."])]


# ------------------------------------------------------------------------------------------ second run
def test_second_run_encodes_nothing(tmp_path, monkeypatch):
    from clipood.clip.encoders import Backbone

    colour_folder(tmp_path / "id", ["cat", "dog"], n=3)
    colour_folder(tmp_path / "train", ["dog", "cat"], n=3)
    colour_folder(tmp_path / "ood", ["x"], n=3)
    words = tmp_path / "words.txt"
    words.write_text("".join(f"word{i}\n" for i in range(30)) + "".join(f"adj{i}\tadj\n" for i in range(10)))
    counts = {"images": 0, "texts": 0}
    real_images, real_text = Backbone.encode_images, Backbone.encode_text

    def count_images(self, *a, **k):
        counts["images"] += 1
        return real_images(self, *a, **k)

    def count_text(self, *a, **k):
        counts["texts"] += 1
        return real_text(self, *a, **k)

    monkeypatch.setattr(Backbone, "encode_images", count_images)
    monkeypatch.setattr(Backbone, "encode_text", count_text)
    monkeypatch.setenv("CLIPOOD_CACHE", str(tmp_path / "cache"))
    args = ["model=clipood-tiny", "progress=false", f"data_root={tmp_path}", "benchmark=custom", "id_data.path=id",
            "ood_data.x.path=ood", "train_data.path=train", f"negatives.corpus={words}", "shots=2",
            "crops.num_crops=4", "crops.num_selected=1", "train.epochs=1", "train.batch_size=2", "eval.plots=false"]
    run_recipe("krnft", args + [f"output_dir={tmp_path / 'run1'}"])
    assert counts["images"] > 0 and counts["texts"] > 0  # the first run encodes images, crops and prompts
    counts.update(images=0, texts=0)
    run_recipe("krnft", args + [f"output_dir={tmp_path / 'run2'}"])
    assert counts == {"images": 0, "texts": 0}
    import json

    r1, r2 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("run1", "run2"))
    assert r1 == r2


# ------------------------------------------------------------------------------------------ OpenOOD v1.5
def openood_tree(data):
    """A fake OpenOOD v1.5 ``data/`` folder: its list files and image folders, a few images each."""
    lists = data / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    id_lines = []
    for k, i in enumerate((0, 1, 2)):
        for j in range(3):
            rel = f"imagenet_1k/val/{IMAGENET.ids[i]}/ILSVRC2012_val_{k}{j}.JPEG"
            png(data / "images_largescale" / rel, 40 * k + 5 * j)
            id_lines.append(f"{rel} {i}")
    (lists / "test_imagenet.txt").write_text("\n".join(id_lines) + "\n")
    for n, folder in (("ssb_hard", "images_largescale"), ("ninco", "images_largescale"),
                      ("inaturalist", "images_largescale"), ("textures", "images_classic"),
                      ("openimage_o", "images_largescale")):
        sub = "texture" if n == "textures" else n
        lines = []
        for j in range(3):
            rel = f"{sub}/img_{j}.jpg"
            png(data / folder / rel, 200 - 9 * j + len(n))
            lines.append(f"{rel} -1" if n != "textures" else f"{rel} 0")
        (lists / f"test_{n}.txt").write_text("\n".join(lines) + "\n")
    return data


def test_openood_imagenet_reports_near_far_and_convention(tmp_path):
    import json

    data = openood_tree(tmp_path / "data")
    words = tmp_path / "words.txt"
    words.write_text("".join(f"thing{i}\n" for i in range(40)))
    out = tmp_path / "out"
    run_recipe("zeroshot", ["model=clipood-tiny", "progress=false", "benchmark=openood-imagenet", f"data_root={data}",
                            f"negatives.corpus={words}", "negatives.num=8", "eval.plots=false", f"output_dir={out}"])
    rows = [r for r in json.loads((out / "results.json").read_text()) if r["method"] == "NegLabel (zero-shot)"]
    by = {r["dataset"]: r for r in rows}
    assert list(by) == ["ssb_hard", "ninco", "inaturalist", "textures", "openimage_o", "near", "far", "average"]
    for group, members in (("near", ["ssb_hard", "ninco"]), ("far", ["inaturalist", "textures", "openimage_o"])):
        for k in ("auroc", "fpr95"):
            assert by[group][k] == pytest.approx(sum(by[m][k] for m in members) / len(members))
    five = ["ssb_hard", "ninco", "inaturalist", "textures", "openimage_o"]
    assert by["average"]["auroc"] == pytest.approx(sum(by[m]["auroc"] for m in five) / 5)  # groups not counted twice
    md = (out / "results.md").read_text()
    head = md.split("## Summary")[0]
    assert "openood convention" in head and "eval.convention=hendrycks" in head
    assert "near AUROC" in md and "far FPR95" in md


def test_imagenet_suite_subset_and_shipped_training_layout(tmp_path):
    """The shipped ImageNet config (train_data: imagenet/train with WordNet-ID folders) on a 3-class subset:
    evaluation labels, prompts and crop-ranking prompts all come from the class names."""
    from clipood.clip.backbone import load_clip
    from clipood.config.records import DataSettings
    from clipood.datasets.checks import check_data
    from clipood.datasets.dataset import build_dataset
    from clipood.crops.train_data import build_crop_data
    from clipood_recipes.configure import run_crops
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import TrainRunSettings
    from clipood.suites import get_suite, suite_classnames

    imagenet_tree(tmp_path / "imagenet" / "val", [0, 1, 2, 7], per_class=2)
    imagenet_tree(tmp_path / "imagenet" / "train", [7, 2, 0, 1], per_class=2)
    for o in ("iNaturalist", "SUN", "Places", "dtd/images"):
        png(tmp_path / o / "images" / "a.jpg", 5)
    subset = ["n01484850", "tench", "rooster"]  # indices 2, 0, 7 in this order
    suite = get_suite("imagenet", root=tmp_path, classes=subset)
    assert suite_classnames(suite) == ["great white shark", "tench", "rooster"]
    ds = build_dataset(suite.id)
    assert {p.split("/")[-2]: y for p, y in ds.samples} == {"n01484850": 0, "n01440764": 1, "n01514668": 2}
    import copy

    cfg = copy.deepcopy(compose_settings(TrainRunSettings, []))
    cfg.update(benchmark="imagenet", data_root=str(tmp_path), classes=subset, shots=1, progress=False,
               train_data={"type": "imagefolder", "path": "imagenet/train"}, cache_dir=str(tmp_path / "cache"))
    cfg["crops"].update(num_crops=2, num_selected=1)
    check_data(DataSettings.from_config(cfg))  # the subset is complete in val and train: no problem
    bb = load_clip("clipood-tiny")
    seen = []
    orig = bb.encode_text
    bb.encode_text = lambda texts, **k: (seen.append(list(texts)), orig(texts, **k))[1]

    class Bench:
        backbone, train_spec = bb, None

    class SF:
        class split:
            classnames = ["great white shark", "tench", "rooster"]

    crops = build_crop_data(Bench(), SF(), DataSettings.from_config(cfg), run_crops(cfg), None, shots=cfg["shots"],
                            seed=cfg["seed"])
    assert seen == [["great white shark", "tench", "rooster"]]
    # each training image keeps the label of its folder's class, by name
    assert crops.image_labels.tolist() == [0, 1, 2]
    cfg["classes"] = None
    with pytest.raises(ClipoodError, match="996 of the 1000 classes of label set imagenet"):
        check_data(DataSettings.from_config(cfg))


def test_openood_subset_selects_listed_labels(tmp_path):
    from clipood.datasets.dataset import build_dataset
    from clipood.suites import get_suite, suite_classnames

    data = openood_tree(tmp_path / "data")
    suite = get_suite("openood-imagenet", root=data, classes=["n01484850", "tench"])
    ds = build_dataset(suite.id)
    assert suite_classnames(suite) == ds.classnames == ["great white shark", "tench"]
    # list labels 2 → 0 and 0 → 1; label 1 (goldfish) dropped
    assert sorted({(p.split("/")[-2], y) for p, y in ds.samples}) == [("n01440764", 1), ("n01484850", 0)]


def test_label_set_lookup_by_id_name_and_index():
    # open_clip's ImageNet names hold 'missile' twice (two classes): only the WordNet ID can say which
    dup = [i for i, c in enumerate(IMAGENET.classnames) if c == "missile"]
    assert len(dup) == 2
    assert IMAGENET.resolve(["missile", IMAGENET.ids[dup[1]], "Great_White shark", "7", 7, "n00000000", "1000"]) \
        == ["ambiguous", dup[1], 2, 7, 7, "unknown", "unknown"]
    assert IMAGENET.describe(1) == "n01443537 (goldfish)"
    r = get_label_set("imagenet-r")
    assert len(r.ids) == 200 and r.classnames[r.resolve([r.ids[3]])[0]] == r.classnames[3]
