"""Dataset specs, builders, corrupt-image handling and suites, on tiny generated images."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipood.datasets.dataset import build_dataset
from clipood.datasets.specs import (
    HFDatasetSpec, ImageFolderSpec, ImageListSpec, data_root, spec_from_dict, spec_to_dict,
)
from clipood.errors import ClipoodError
from clipood.suites import check_suite, get_suite, half_split, list_suites


def png(path: Path, value: int = 0, size: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for k, (cls, n) in enumerate(counts.items()):
        for i in range(n):
            png(root / cls / f"{i}.png", value=10 * k + i)
    return root


@pytest.fixture
def no_env_root(monkeypatch):
    monkeypatch.delenv("CLIPOOD_DATA", raising=False)


# ------------------------------------------------------------------------------------------------ data root
def test_data_root_order_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("CLIPOOD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_root() == tmp_path  # neither data_root= nor CLIPOOD_DATA: the current folder, as a shell user means
    monkeypatch.setenv("CLIPOOD_DATA", str(tmp_path))
    assert data_root() == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert data_root(other) == other  # the config value wins over the environment
    with pytest.raises(ClipoodError, match="nowhere"):
        data_root(tmp_path / "nowhere")


def test_relative_paths_resolve_against_env_root(tmp_path, monkeypatch):
    make_folder(tmp_path / "ds", {"a": 1, "b": 1})
    monkeypatch.setenv("CLIPOOD_DATA", str(tmp_path))
    ds = build_dataset(ImageFolderSpec("ds"))
    assert len(ds) == 2 and ds.name == "ds"
    assert all(Path(p).is_relative_to(tmp_path) for p, _ in ds.samples)


# ------------------------------------------------------------------------------------------------ folders
def test_image_folder_three_classes(tmp_path, no_env_root):
    root = make_folder(tmp_path / "folder", {"zebra": 2, "ant": 3, "moose": 1})
    png(root / "ant" / "sub" / "deep.PNG", 99)  # recursive, extension case-insensitive
    (root / "ant" / "notes.txt").write_text("not an image")
    ds = build_dataset(ImageFolderSpec(str(root)))
    assert ds.classnames == ["ant", "moose", "zebra"]
    assert sorted(ds.labels) == [0, 0, 0, 0, 1, 2, 2]
    names = {(Path(p).parent.name if Path(p).parent.name != "sub" else "ant", Path(p).name): y for p, y in ds.samples}
    assert names[("zebra", "1.png")] == 2 and names[("ant", "deep.PNG")] == 0 and names[("moose", "0.png")] == 1
    image, label = ds[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and label == 0
    ds_t = build_dataset(ImageFolderSpec(str(root)), transform=lambda im: np.asarray(im).mean())
    value, _ = ds_t[[i for i, (p, _) in enumerate(ds_t.samples) if p.endswith("deep.PNG")][0]]
    assert value == 99


def test_numeric_class_folders_sort_as_numbers(tmp_path):
    make_folder(tmp_path, {str(i): 1 for i in (0, 1, 2, 10)})
    ds = build_dataset(ImageFolderSpec(str(tmp_path)))
    assert ds.classnames == ["0", "1", "2", "10"]
    assert {Path(p).parent.name: y for p, y in ds.samples}["10"] == 3


def test_mos_single_pseudo_class(tmp_path):
    for i in range(3):
        png(tmp_path / "SUN" / "images" / f"sun_{i}.jpg")
    ds = build_dataset(ImageFolderSpec(str(tmp_path / "SUN"), ood=True))
    assert len(ds) == 3 and ds.labels == [0, 0, 0] and ds.classnames is None
    png(tmp_path / "flat" / "x.png")
    assert len(build_dataset(ImageFolderSpec(str(tmp_path / "flat"), ood=True))) == 1
    with pytest.raises(ClipoodError, match="ood: true"):
        build_dataset(ImageFolderSpec(str(tmp_path / "flat")))


def test_missing_folder_empty_class_and_no_images(tmp_path):
    with pytest.raises(ClipoodError, match="not found: .*missing_dir"):
        build_dataset(ImageFolderSpec(str(tmp_path / "missing_dir")))
    root = make_folder(tmp_path / "f", {"a": 1, "b": 1})
    (root / "empty_class").mkdir()
    (root / "empty_class" / "readme.txt").write_text("x")
    with pytest.raises(ClipoodError, match="empty_class"):
        build_dataset(ImageFolderSpec(str(root)))
    (tmp_path / "ood" / "images").mkdir(parents=True)
    with pytest.raises(ClipoodError, match="no images"):
        build_dataset(ImageFolderSpec(str(tmp_path / "ood"), ood=True))


# ------------------------------------------------------------------------------------------------ corrupt
@pytest.fixture
def corrupt_folder(tmp_path):
    root = make_folder(tmp_path / "c", {"a": 2, "b": 2})
    (root / "a" / "garbage.png").write_bytes(b"this is not a png" * 4)
    real = png(tmp_path / "real.png", size=32).read_bytes()
    (root / "b" / "truncated.png").write_bytes(real[: len(real) // 2])
    return root


def test_corrupt_images_error_mode(corrupt_folder):
    ds = build_dataset(ImageFolderSpec(str(corrupt_folder)))
    assert len(ds) == 6  # error mode does not read images while building
    bad = [i for i, (p, _) in enumerate(ds.samples) if "garbage" in p or "truncated" in p]
    assert len(bad) == 2
    for i in bad:
        with pytest.raises(ClipoodError, match=r"(garbage|truncated)\.png.*on_corrupt='skip'"):
            ds[i]


def test_corrupt_images_skip_mode(corrupt_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="clipood.datasets.dataset"):
        ds = build_dataset(ImageFolderSpec(str(corrupt_folder)), on_corrupt="skip")
    assert ds.skipped == 2 and len(ds) == 4
    assert sorted(Path(p).name for p in ds.skipped_items) == ["garbage.png", "truncated.png"]
    assert "garbage.png" in caplog.text
    assert sorted(ds.labels) == [0, 0, 1, 1]
    assert all(ds[i] is not None for i in range(len(ds)))


def test_skip_mode_late_failure_is_dropped_by_collate(tmp_path):
    import torch

    root = make_folder(tmp_path / "c", {"a": 3})
    ds = build_dataset(ImageFolderSpec(str(root)), transform=lambda im: torch.tensor(np.asarray(im)).float(),
                       on_corrupt="skip")
    Path(ds.samples[1][0]).write_bytes(b"broken after the check")
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=ds.collate_fn)
    images, labels = next(iter(loader))
    assert images.shape == (2, 4, 4, 3) and labels.tolist() == [0, 0] and ds.skipped == 1


def test_on_corrupt_must_be_known(tmp_path):
    make_folder(tmp_path, {"a": 1})
    with pytest.raises(ClipoodError, match="did you mean 'skip'"):
        build_dataset(ImageFolderSpec(str(tmp_path)), on_corrupt="skp")


# ------------------------------------------------------------------------------------------------ image lists
def test_image_list_parsing(tmp_path):
    png(tmp_path / "imgs" / "x" / "a.png")
    png(tmp_path / "imgs" / "y" / "with space.png")
    lst = tmp_path / "list.txt"
    lst.write_text("x/a.png 3\n\n# a comment\ny/with space.png -1\n")
    ds = build_dataset(ImageListSpec(str(tmp_path / "imgs"), str(lst)))
    assert [(Path(p).name, y) for p, y in ds.samples] == [("a.png", 3), ("with space.png", -1)]
    assert ds.name == "list" and ds.classnames is None


@pytest.mark.parametrize("bad", ["x/a.png three", "x/a.png", "x/a.png 1.5"])
def test_image_list_bad_line_names_file_and_line(tmp_path, bad):
    png(tmp_path / "imgs" / "x" / "a.png")
    lst = tmp_path / "bad_list.txt"
    lst.write_text(f"x/a.png 0\n\n{bad}\n")
    with pytest.raises(ClipoodError, match=r"bad_list\.txt:3: .*integer label"):
        build_dataset(ImageListSpec(str(tmp_path / "imgs"), str(lst)))


def test_image_list_missing_images_listed(tmp_path):
    png(tmp_path / "imgs" / "a.png")
    lst = tmp_path / "l.txt"
    lst.write_text("a.png 0\nb.png 1\nc.png 1\n")
    with pytest.raises(ClipoodError, match=r"2 of 3 images .* missing .*b\.png, c\.png"):
        build_dataset(ImageListSpec(str(tmp_path / "imgs"), str(lst)))


def test_coop_json_split_and_half_split(tmp_path):
    import json

    rows = [[f"{c}/{i}.png", k, c] for k, c in enumerate(["ant", "bee", "cat"]) for i in range(2)]
    for rel, k, _ in rows:
        png(tmp_path / "imgs" / rel, 10 * k)
    (tmp_path / "split.json").write_text(json.dumps({"train": [], "test": rows}))
    spec = ImageListSpec(str(tmp_path / "imgs"), str(tmp_path / "split.json"))
    assert build_dataset(spec).classnames == ["ant", "bee", "cat"]
    id_spec, ood_spec = half_split(spec)
    id_ds, ood_ds = build_dataset(id_spec), build_dataset(ood_spec)
    assert id_ds.classnames == ["ant", "bee"] and ood_ds.classnames == ["cat"]  # odd count: extra class is ID
    assert sorted(id_ds.labels) == [0, 0, 1, 1] and ood_ds.labels == [0, 0]
    assert {Path(p).parent.name for p, _ in ood_ds.samples} == {"cat"}


def test_half_split_image_folder(tmp_path):
    make_folder(tmp_path, {c: 1 for c in ["d", "a", "c", "b"]})
    id_spec, ood_spec = half_split(ImageFolderSpec(str(tmp_path)))
    id_ds, ood_ds = build_dataset(id_spec), build_dataset(ood_spec)
    assert id_ds.classnames == ["a", "b"] and ood_ds.classnames == ["c", "d"]
    assert {Path(p).parent.name: y for p, y in ood_ds.samples} == {"c": 0, "d": 1}
    with pytest.raises(ClipoodError, match="already has class_subset"):
        half_split(id_spec)


# ------------------------------------------------------------------------------------------------ HF
def test_hf_save_to_disk_roundtrip(tmp_path, monkeypatch):
    import datasets

    images = [Image.fromarray(np.full((4, 4, 3), v, dtype=np.uint8)) for v in (0, 50, 200)]
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["cat", "dog"])})
    datasets.Dataset.from_dict({"img": images, "y": [1, 0, 1]}, features=features).save_to_disk(tmp_path / "hf")
    monkeypatch.setenv("CLIPOOD_DATA", str(tmp_path))
    spec = spec_from_dict({"type": "hf", "path_or_name": "hf", "from_disk": True, "image_column": "img",
                           "label_column": "y"})
    ds = build_dataset(spec, transform=lambda im: np.asarray(im)[0, 0, 0])
    assert ds.classnames == ["cat", "dog"] and ds.samples == [(0, 1), (1, 0), (2, 1)]
    assert [ds[i] for i in range(3)] == [(0, 1), (50, 0), (200, 1)]
    assert len(build_dataset(spec, on_corrupt="skip")) == 3
    with pytest.raises(ClipoodError, match="did you mean 'img'"):
        build_dataset({"path_or_name": "hf", "from_disk": True, "image_column": "imgg", "label_column": "y"})


def test_hf_hub_name_offline_is_one_line_error(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(ClipoodError) as err:
        build_dataset(HFDatasetSpec("clipood-test/surely-not-cached-xyz"))
    msg = str(err.value)
    assert "\n" not in msg and "not cached" in msg and "save_to_disk" in msg and "surely-not-cached-xyz" in msg


def test_hf_missing_disk_folder(tmp_path):
    with pytest.raises(ClipoodError, match="not found: .*nope"):
        build_dataset(HFDatasetSpec(str(tmp_path / "nope"), from_disk=True))


# ------------------------------------------------------------------------------------------------ specs
def test_spec_from_dict_roundtrip_and_errors():
    spec = spec_from_dict({"list_file": "l.txt", "root": "r", "class_subset": [1, 2]})
    assert isinstance(spec, ImageListSpec) and spec.class_subset == (1, 2)
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert spec_from_dict("some/folder") == ImageFolderSpec("some/folder")
    with pytest.raises(ClipoodError, match="did you mean 'classnames'"):
        spec_from_dict({"path": "x", "classname": ["a"]})
    with pytest.raises(ClipoodError, match="did you mean 'imagelist'"):
        spec_from_dict({"type": "imagelst", "root": "r", "list_file": "l"})
    with pytest.raises(ClipoodError, match="class_subset"):
        ImageFolderSpec("x", class_subset=(2, 2))


# ------------------------------------------------------------------------------------------------ suites
def test_list_and_get_suites():
    names = list_suites()
    for n in ["imagenet", "openood-imagenet", "cifar10", "cifar100", "imagenet-r", "imagenet-a", "imagenet-v2",
              "imagenet-sketch", "cub", "stanford_cars", "food101", "oxford_pets"]:
        assert n in names
        get_suite(n)
    s = get_suite("imagenet")
    assert s.id.path == "imagenet/val" and set(s.ood) == {"iNaturalist", "SUN", "Places", "Textures"}
    assert s.ood["Textures"].path == "dtd/images" and s.label_set == "imagenet"
    assert get_suite("imagenet-r").label_set == "imagenet-r" and get_suite("imagenet-a").label_set == "imagenet-a"
    oo = get_suite("openood-imagenet")
    assert oo.groups == {"near": ["ssb_hard", "ninco"], "far": ["inaturalist", "textures", "openimage_o"]}
    assert oo.ood["ninco"].list_file == "benchmark_imglist/imagenet/test_ninco.txt"
    c100 = get_suite("cifar100")  # OpenOOD v1.5: near-OOD CIFAR-10 and TinyImageNet, far-OOD the classic four
    assert c100.groups == {"near": ["cifar10", "tin"], "far": ["mnist", "svhn", "texture", "places365"]}
    assert set(c100.ood) == {"cifar10", "tin", "mnist", "svhn", "places365", "texture"}
    assert get_suite("cifar10").ood["cifar100"].list_file == "benchmark_imglist/cifar10/test_cifar100.txt"
    assert get_suite("cifar10").groups["near"] == ["cifar100", "tin"]
    cub = get_suite("cub")
    assert cub.id.class_subset == (0, 2) and list(cub.ood.values())[0].class_subset == (1, 2)
    with pytest.raises(ClipoodError, match="did you mean 'imagenet-r'"):
        get_suite("imagenet_r")


def test_check_suite_lists_every_missing_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPOOD_DATA", str(tmp_path))
    (tmp_path / "imagenet" / "val").mkdir(parents=True)
    (tmp_path / "SUN").mkdir()
    with pytest.raises(ClipoodError) as err:
        check_suite(get_suite("imagenet"))
    msg = str(err.value)
    assert "3 path(s) missing" in msg and str(tmp_path) in msg and "CLIPOOD_DATA" in msg
    for name in ["iNaturalist", "Places", "dtd/images"]:
        assert name in msg
    assert "imagenet/val" not in msg and "SUN," not in msg and "\n" not in msg
    for name in ["iNaturalist", "Places", "dtd/images"]:
        (tmp_path / name).mkdir(parents=True)
    check_suite("imagenet")  # complete: no error


def test_check_suite_image_lists(tmp_path):
    lists = tmp_path / "benchmark_imglist" / "cifar10"
    lists.mkdir(parents=True)
    png(tmp_path / "images_classic" / "cifar10" / "a.png")
    (lists / "test_cifar10.txt").write_text("cifar10/a.png 0\ncifar10/gone.png 1\n")
    with pytest.raises(ClipoodError) as err:
        check_suite(get_suite("cifar10", root=tmp_path))
    msg = str(err.value)
    assert "data_root=" in msg and "1 of 2 images listed" in msg and "gone.png" in msg
    for name in ["test_mnist.txt", "test_svhn.txt", "test_places365.txt", "test_texture.txt"]:
        assert name in msg
    assert "test_cifar10.txt," not in msg
