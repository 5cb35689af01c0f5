"""The CLIPN, ZOC and fine-tuned-encoder recipes end to end, in process, on clipood-tiny and generated folders:
CLIPN trains a few steps on a caption folder and its saved 'no' encoder, loaded back as clipn.checkpoint, gives the
same CTW / ATD rows; ZOC and the fine-tuned encoder add their rows next to zero-shot MCM / NegLabel."""
import json
import runpy

import pytest
from helpers import ROOT, make_image_folder
from PIL import Image

WORDS = ["apple\tnoun", "river\tnoun", "stone\tnoun", "cloud\tnoun", "table\tnoun", "quick\tadj", "shiny\tadj"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed")
    make_image_folder(root / "id", {"red": (220, 30, 30), "green": (30, 200, 30)}, n=3, size=32)
    make_image_folder(root / "train", {"red": (220, 30, 30), "green": (30, 200, 30)}, n=3, size=32, seed=4)
    make_image_folder(root / "ood", {"x": (30, 30, 220)}, n=3, size=32, pseudo=True)
    (root / "words.txt").write_text("\n".join(WORDS) + "\n")
    pairs = root / "pairs"
    pairs.mkdir()
    lines = []
    for i, (name, colour) in enumerate([("red", (220, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 220)),
                                        ("yellow", (200, 200, 30))]):
        Image.new("RGB", (32, 32), colour).save(pairs / f"{i}.png")
        lines.append(f"{i}.png\ta {name} square")
    (pairs / "captions.tsv").write_text("\n".join(lines) + "\n")
    return root


def _base(root, out):
    return ["model=clipood-tiny", "benchmark=custom", f"id_data.path={root / 'id'}", f"ood_data.o.path={root / 'ood'}",
            f"negatives.corpus={root / 'words.txt'}", "negatives.num=2", "eval.plots=false", "progress=false",
            f"cache_dir={root / 'cache'}", f"output_dir={root / out}"]


def _run(name, args, monkeypatch):
    monkeypatch.setenv("CLIPOOD_THREADS", "1")
    runpy.run_path(str(ROOT / "recipes" / f"{name}.py"), run_name="seed_recipe")["main"](args)


def _rows(root, out):
    return {(r["method"], r["dataset"]): r for r in json.loads((root / out / "results.json").read_text())}


def test_clipn_trains_saves_and_reloads_to_the_same_rows(world, monkeypatch):
    train = ["clipn.pairs.kind=folder", f"clipn.pairs.path={world / 'pairs'}", "clipn.steps=3", "clipn.batch_size=3"]
    _run("clipn", _base(world, "clipn") + train, monkeypatch)
    rows = _rows(world, "clipn")
    assert {("CLIPN-CTW", "o"), ("CLIPN-ATD", "o"), ("MCM (zero-shot)", "o")} <= set(rows)
    ckpt = world / "clipn" / "no_encoder.safetensors"
    assert ckpt.is_file() and not list((world / "clipn").glob("*.tmp*"))
    _run("clipn", _base(world, "clipn-loaded") + [f"clipn.checkpoint={ckpt}"], monkeypatch)
    again = _rows(world, "clipn-loaded")
    for key in (("CLIPN-CTW", "o"), ("CLIPN-ATD", "o")):
        assert again[key]["auroc"] == pytest.approx(rows[key]["auroc"], abs=1e-9)
        assert again[key]["fpr95"] == pytest.approx(rows[key]["fpr95"], abs=1e-9)


def test_zoc_row(world, monkeypatch):
    _run("zoc", _base(world, "zoc") + ["zoc.k=2"], monkeypatch)
    rows = _rows(world, "zoc")
    assert ("ZOC (retrieval, k=2)", "o") in rows and ("NegLabel (zero-shot)", "o") in rows


def test_finetune_rows(world, monkeypatch):
    args = [f"train_data.path={world / 'train'}", "finetune.steps=2", "finetune.batch_size=4", "finetune.knn_k=2",
            "finetune.vim_dim=4", "finetune.scores=[msp,energy,knn,vim]"]
    _run("finetune", _base(world, "ft") + args, monkeypatch)
    rows = _rows(world, "ft")
    for m in ("MSP", "Energy", "KNN", "ViM"):
        assert (f"{m} (fine-tuned)", "o") in rows
    assert (world / "ft" / "finetuned_head.safetensors").is_file()
