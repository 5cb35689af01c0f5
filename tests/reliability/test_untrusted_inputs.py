"""The red team's bad outcomes that need more than a one-line refusal to show: values of environment variables
never reach outputs, literal ``${`` and layered config files work, names the text encoder would cut or merge are
refused, links do not count images twice, method terms cannot be switched off by a range, a full disk is the
documented warning, EXIF orientation is applied."""
from __future__ import annotations

import json
import logging
import os
import types
from pathlib import Path

import pytest
import torch
from helpers import ROOT, make_image_folder, run_script

from clipood.errors import ClipoodError

CONFIGS = ROOT / "recipes" / "configs"
SECRET = "s3cr3t-value-0f-the-planted-variable"


# ------------------------------------------------------------------------------------------------ config
def _compose(argv):
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import TrainRunSettings

    return compose_settings(TrainRunSettings, argv, configs_dir=CONFIGS, recipe="krnft")


def test_interpolations_are_text_and_a_literal_dollar_brace_works(monkeypatch):
    """Bad outcomes: ${oc.env:X} copied an environment variable into the config; a literal ${ could not be
    written. Both are plain text now, in every layer."""
    monkeypatch.setenv("CLIPOOD_PLANTED", SECRET)
    cfg = _compose(["method_name=${oc.env:CLIPOOD_PLANTED}", "train_data={path: 'cost ${ x', name: '${x}'}"])
    assert cfg["method_name"] == "${oc.env:CLIPOOD_PLANTED}"
    assert cfg["train_data"] == {"path": "cost ${ x", "name": "${x}"}
    assert SECRET not in json.dumps(cfg)


def test_several_config_files_are_layered_in_order(tmp_path):
    """Bad outcome: with two --config files the first was silently dropped."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("seed: 3\nlosses:\n  kr: 5\n  ood: 0.1\n")
    b.write_text("losses:\n  kr: 7\n")
    cfg = _compose(["--config", str(a), f"--config={b}", "losses.ood=0.2"])
    assert (cfg["seed"], cfg["losses"]["kr"], cfg["losses"]["ood"]) == (3, 7.0, 0.2)  # a, then b, then the line
    cfg = _compose([f"--config={b}", "--config", str(a)])
    assert cfg["losses"]["kr"] == 5.0


@pytest.mark.parametrize("text, needle", [
    ("a: &x 1\nb: *x\n", "line 1"), ("a: 1\nb: 2\na: 3\n", "line 3"), ("a:\n  b: 1\n  b: 1\n", "line 3")])
def test_strict_yaml_refuses_aliases_and_duplicates_with_the_line(text, needle, tmp_path):
    from clipood.config.compose import load_yaml

    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ClipoodError, match=needle):
        load_yaml(p)


def test_the_alias_bomb_is_refused_before_it_expands(tmp_path, monkeypatch):
    """Bad outcome: a 448-byte alias bomb grew memory without bound before any check. Nothing is constructed:
    the composer stops at the first anchor (construct_object is never reached)."""
    import yaml

    from clipood.config.compose import load_yaml

    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(levels) + "\n")
    assert len(p.read_bytes()) < 600
    constructed = []
    real = yaml.SafeLoader.construct_object
    monkeypatch.setattr(yaml.SafeLoader, "construct_object", lambda self, *a, **k: constructed.append(1) or
                        real(self, *a, **k))
    with pytest.raises(ClipoodError, match="anchor"):
        load_yaml(p)
    assert constructed == []


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """`clipood eval` on own folders with the shipped mini CLIP (it writes a detector), with values that name a
    planted environment variable on the command line and in a --config file."""
    root = tmp_path_factory.mktemp("planted")
    make_image_folder(root / "test", {"red": (220, 30, 30), "blue": (30, 30, 220)}, n=4, seed=2)
    make_image_folder(root / "ood", {"x": (200, 200, 30)}, n=4, seed=3, pseudo=True)
    (root / "words.txt").write_text("apple\nriver\nstone\ncloud\ntable\n")
    (root / "extra.yaml").write_text("ood_data:\n  mine:\n    path: %s\n    name: '${oc.env:CLIPOOD_PLANTED}'\n"
                                     % (root / "ood"))
    out = root / "run"
    r = run_script(["-m", "clipood_recipes.cli", "eval", "--config", str(root / "extra.yaml"), "benchmark=custom",
                    f"id_data.path={root / 'test'}", "id_data.name=${oc.env:CLIPOOD_PLANTED}",
                    f"negatives.corpus={root / 'words.txt'}", "negatives.num=3", f"output_dir={out}",
                    f"cache_dir={root / 'cache'}", "progress=false", "eval.plots=false"],
                   env_extra={"CLIPOOD_PLANTED": SECRET})
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_a_planted_environment_variable_reaches_no_output(planted_run):
    """No value of the variable in config.json, results or any file of the detector folder; the text that named
    it is kept as written."""
    out, r = planted_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert (out / "detector" / "detector.json").is_file() and (out / "config.json").is_file()
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    assert SECRET not in r.stdout + r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id_data"]["name"] == "${oc.env:CLIPOOD_PLANTED}"
    assert cfg["ood_data"]["mine"]["name"] == "${oc.env:CLIPOOD_PLANTED}"


# ------------------------------------------------------------------------------------------------ names
@pytest.fixture(scope="module")
def mini():
    import clipood

    return clipood.load_clip("clipood-mini")  # a 20-token text context: long names are easy to reach


def test_names_cut_at_the_context_would_be_identical_and_are_refused(mini):
    """Bad outcome: two class names cut at the context length gave bit-identical rows. The check refuses them
    before any text is encoded."""
    from clipood.labels.label_features import label_text_features
    from clipood.negatives import Corpus

    common = "very " * 16
    names = [common + "red circle", common + "blue circle"]
    tok = mini.tokenizer([f"a photo of a {n}." for n in names])
    assert torch.equal(tok[0], tok[1])  # what the encoder would have seen: one text for two classes
    settings = {"num": 2, "fraction": 0.15, "quantile": 0.95, "id_template": "a photo of a {}.",
                "noun_template": "a photo of a {}.", "adj_template": "a {} texture."}
    with pytest.raises(ClipoodError, match=r"has 2\d tokens, more than the text encoder's context of 20"):
        label_text_features(mini, names, Corpus(nouns=["apple", "river"]), settings, None, progress=False)


def test_corpus_words_that_do_not_fit_are_left_out_of_mining(mini, caplog):
    from clipood.labels.label_features import _fitting_names
    from clipood.negatives import Corpus

    settings = {"id_template": "a photo of a {}.", "noun_template": "a photo of a {}.", "adj_template": "a {} texture."}
    long_word = "pneumono" * 12
    with caplog.at_level(logging.INFO, logger="clipood"):
        c = _fitting_names(mini, ["star", "heart"], Corpus(nouns=["apple", long_word], adjectives=["red"]), settings)
    assert c.nouns == ["apple"] and c.adjectives == ["red"] and "left out 1 corpus nouns" in caplog.text


def test_a_long_learned_context_is_refused_not_cut(mini):
    """Bad outcome: a long ctx_init cut every class name (ID accuracy 50 %). The prompt learner's tokenizer
    refuses instead."""
    import adapters
    from clipood_recipes.methods import label_context

    from clipood.labels.label_set import LabelSet

    C = torch.nn.functional.normalize(torch.randn(5, 128), dim=-1)
    labels = LabelSet(("star", "heart"), C, "a photo of a {}.", ("apple", "river", "stone"), ("noun",) * 3,
                      {"noun": "a photo of a {}.", "adj": "a {} texture."})
    ctx = label_context(types.SimpleNamespace(label_set=labels), mini)
    adapters.CoOp(ctx, ctx_init="a photo of a")  # fits
    with pytest.raises(ClipoodError, match="ctx_init"):
        adapters.CoOp(ctx, ctx_init="a " + "very " * 16 + "nice photo of a")


def test_links_in_a_class_folder_count_every_image_once(tmp_path):
    """Bad outcome: a symlink loop in a class folder counted one class 41 times. Links are still followed (a
    folder of images kept elsewhere), but never back into the class folder or above it, and once each."""
    from clipood.datasets.dataset import build_dataset

    make_image_folder(tmp_path / "data", {"cat": (200, 0, 0), "dog": (0, 200, 0)}, n=2, size=16)
    make_image_folder(tmp_path / "elsewhere", {"more": (90, 0, 0)}, n=1, size=16)
    cat = tmp_path / "data" / "cat"
    os.symlink("..", cat / "up")                                  # above the class folder (the dog/ folder too)
    os.symlink(".", cat / "self")                                 # a loop
    os.symlink(tmp_path / "elsewhere" / "more", cat / "more-1")   # images kept elsewhere ...
    os.symlink(tmp_path / "elsewhere" / "more", cat / "more-2")   # ... reached by two links
    ds = build_dataset({"path": str(tmp_path / "data")})
    by_class = {}
    for p, y in ds.samples:
        by_class.setdefault(ds.classnames[y], []).append(Path(p).name)
    assert sorted(by_class["cat"]) == ["cat_0.png", "cat_1.png", "more_0.png"]
    assert sorted(by_class["dog"]) == ["dog_0.png", "dog_1.png"]


def test_locoop_top_k_at_or_above_the_classes_is_refused(mini):
    """Bad outcome: LoCoOp top_k >= N turned its entropy term off silently (no patch is ever OOD)."""
    import adapters
    from adapters.locoop import LoCoOpTask, ood_patch_mask

    names = ["star", "heart", "circle"]
    ctx = adapters.AdapterContext.from_backbone(mini, names, ["apple", "river"])
    ll = torch.randn(2, 4, 3)
    assert not ood_patch_mask(ll, torch.tensor([0, 1]), 3).any()  # why: with K = N every patch is "ID"
    for k in (3, 7):
        with pytest.raises(ClipoodError, match=f"top_k={k} is not below the 3 ID classes"):
            LoCoOpTask(adapters.LoCoOp(ctx, top_k=k), {"cls": 1.0})
    LoCoOpTask(adapters.LoCoOp(ctx, top_k=2), {"cls": 1.0})
    with pytest.raises(ClipoodError, match="entropy_weight"):
        adapters.LoCoOp(ctx, entropy_weight=float("inf"))


# ------------------------------------------------------------------------------------------------ disk and images
def test_a_full_disk_under_the_cache_is_the_documented_warning(tmp_path):
    """Weak outcome: safetensors raises its own error type when the disk is full, so a cache write failed the
    run where the docs promise a warning. A file-size limit (RLIMIT_FSIZE) makes the real write fail the way a
    full disk does, through safetensors' own writer, in a child process."""
    import textwrap

    script = tmp_path / "full.py"
    script.write_text(textwrap.dedent(f"""
        import logging, resource, signal, sys
        import torch
        from clipood import io as cio
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # the write returns EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        big = {{"x": torch.ones(100_000)}}
        try:
            cio.save_safetensors(big, {str(tmp_path / 'plain.safetensors')!r})
        except Exception as e:
            print("direct:", type(e).__name__, isinstance(e, OSError))
        path = {str(tmp_path / 'cache' / 'f.safetensors')!r}
        print("cache_write:", cio.cache_write(lambda: cio.save_safetensors(big, path), path))
    """))
    r = run_script([str(script)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "direct: SafetensorError False" in r.stdout  # not an OSError: what the caches used to let through
    assert "cache_write: False" in r.stdout and "cache not written" in r.stderr and "File too large" in r.stderr
    assert not list((tmp_path / "cache").iterdir()) and not (tmp_path / "plain.safetensors").exists()


def test_exif_orientation_is_applied(tmp_path):
    """Weak outcome: EXIF orientation was ignored (a phone photo stored sideways was encoded sideways)."""
    from PIL import Image

    from clipood.datasets.dataset import _pil_rgb

    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    shown = _pil_rgb(str(tmp_path / "phone.jpg"))
    assert shown.size == (20, 40)
    r, g, b = shown.getpixel((10, 3))  # after the rotation the red band is on top
    assert r > 200 and g < 60
