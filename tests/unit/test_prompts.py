import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from clipood.errors import ClipoodError
from clipood.labels.prompts import (
    CIFAR100_CLASSNAMES,
    TEMPLATES,
    LabelSet,
    format_prompts,
    get_label_set,
    get_templates,
    load_label_file,
)

ROOT = Path(__file__).resolve().parents[2]


def test_import_does_not_load_open_clip():
    code = "import sys, clipood.labels.prompts; assert 'open_clip' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})


def test_imagenet_keeps_duplicate_names_as_separate_classes():
    ls = get_label_set("imagenet")
    assert isinstance(ls, LabelSet) and ls.name == "imagenet"
    assert len(ls.classnames) == 1000
    assert ls.classnames[:3] == ["tench", "goldfish", "great white shark"]
    dups = {k: v for k, v in Counter(ls.classnames).items() if v > 1}
    assert dups == {"missile": 2, "sunglasses": 2}
    assert [i for i, c in enumerate(ls.classnames) if c == "sunglasses"] == [836, 837]
    assert len(ls.templates) == 80 and ls.templates[0] == "a bad photo of a {}."
    assert all(t.count("{}") == 1 for t in ls.templates)


@pytest.mark.parametrize("name,first,count", [
    ("imagenet-r", ["goldfish", "great white shark", "hammerhead shark"], 200),
    ("imagenet-a", ["stingray", "goldfinch", "junco"], 200),
])
def test_imagenet_subsets(name, first, count):
    ls = get_label_set(name)
    imagenet = get_label_set("imagenet").classnames
    assert len(ls.classnames) == count == len(set(ls.classnames))
    assert ls.classnames[:3] == first
    idx = [imagenet.index(c) for c in ls.classnames]
    assert idx == sorted(idx)  # subset keeps ImageNet label order


def test_cifar():
    c10 = get_label_set("cifar10").classnames
    assert c10 == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    c100 = get_label_set("CIFAR100").classnames
    assert len(c100) == 100 == len(set(c100))
    raw = [c.replace(" ", "_") for c in CIFAR100_CLASSNAMES]
    assert raw == sorted(raw)  # CIFAR-100 fine labels are indexed alphabetically
    assert {"aquarium fish", "lawn mower", "sweet pepper", "willow tree", "worm"} <= set(c100)


def test_unknown_label_set_message():
    with pytest.raises(ClipoodError, match=r"unknown label set 'imagnet' \(did you mean 'imagenet'\?\).*cifar100"):
        get_label_set("imagnet")


def test_templates():
    assert set(TEMPLATES) == {"openai80", "simple", "select7", "neglabel"}
    assert len(TEMPLATES["openai80"]) == 80 and len(set(TEMPLATES["openai80"])) == 80
    assert TEMPLATES["simple"] == ("a photo of a {}.",)
    assert len(TEMPLATES["select7"]) == 7 and "a {} in a video game." in TEMPLATES["select7"]
    assert TEMPLATES["neglabel"] == ("the nice {}.",)
    assert get_templates("select7") == list(TEMPLATES["select7"])
    with pytest.raises(ClipoodError, match="did you mean 'simple'"):
        get_templates("simpel")


def test_format_prompts():
    out = format_prompts(["cat", "dog"], ["a photo of a {}.", "art of the {}."])
    assert out == [["a photo of a cat.", "art of the cat."], ["a photo of a dog.", "art of the dog."]]
    assert format_prompts(["x {y}"], "a {}.") == [["a x {y}."]]
    with pytest.raises(ClipoodError, match="placeholder"):
        format_prompts(["cat"], ["no placeholder"])


def test_load_label_file(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("# my classes\ncat\n  dog \n#comment\nsea lion\n")
    assert load_label_file(f) == ["cat", "dog", "sea lion"]


def test_label_file_blank_line(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("cat\ndog\n\nfox\n")
    with pytest.raises(ClipoodError, match=r"labels\.txt:3: blank line"):
        load_label_file(f)


def test_label_file_duplicate(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("cat\ndog\n# x\nCat\n")
    with pytest.raises(ClipoodError, match=r"labels\.txt:4: duplicate class name 'Cat' \(first on line 1\)"):
        load_label_file(f)


def test_label_file_missing_or_empty(tmp_path):
    with pytest.raises(ClipoodError, match="not found"):
        load_label_file(tmp_path / "nope.txt")
    f = tmp_path / "empty.txt"
    f.write_text("# only a comment\n")
    with pytest.raises(ClipoodError, match="no class names"):
        load_label_file(f)
