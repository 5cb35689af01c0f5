"""The deployable detector (issue 12): a trained run on one's own folders writes a detector folder that a fresh
process reloads and scores new images with — the run's own evaluation scores, accuracy and AUROC come back —
and a damaged folder is refused with one clear line."""
from __future__ import annotations

import csv
import json
import math
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import make_image_folder, run_script
from sklearn.metrics import roc_auc_score

WORDS = ["apple\tnoun", "river\tnoun", "stone\tnoun", "cloud\tnoun", "quick\tadj", "shiny\tadj", "bright\tadj",
         "table\tnoun"]
CLASSES = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def own_data(root):
    """The README's "Your own data" layout: train/<class>/, test/<class>/, ood/ (flat) and new images."""
    make_image_folder(root / "train", CLASSES, n=6, seed=1)
    make_image_folder(root / "test", CLASSES, n=5, seed=2)
    make_image_folder(root / "ood", {"x": (200, 200, 30)}, n=6, seed=3, pseudo=True)
    make_image_folder(root / "new", {"a": (220, 30, 30), "b": (200, 30, 200)}, n=2, seed=4)
    (root / "words.txt").write_text("\n".join(WORDS) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """KR-NFT trained on generated folders through the documented own-data command (a few steps)."""
    root = tmp_path_factory.mktemp("own")
    own_data(root)
    out = root / "run"
    r = run_script(["recipes/krnft.py", "benchmark=custom", f"train_data.path={root / 'train'}",
                    f"id_data.path={root / 'test'}", f"ood_data.mine.path={root / 'ood'}",
                    f"negatives.corpus={root / 'words.txt'}", "negatives.num=4", f"output_dir={out}",
                    f"cache_dir={root / 'cache'}", "progress=false", "shots=4", "train.epochs=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    return root, out


def _fresh_process_scores(det_path, images, tmp_path):
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import torch
        torch.set_num_threads(1)  # as the run (CLIPOOD_THREADS=1): same float32 reduction order
        import adapters, clipood
        det = clipood.Detector.from_pretrained({str(det_path)!r})
        out = {{"scores": [], "pred": [], "ood": [], "threshold": det.threshold}}
        for group in json.load(open({str(tmp_path / 'images.json')!r})):  # batched as the run's evaluation
            r = det(group)
            out["scores"] += r.scores.tolist(); out["pred"] += r.pred.tolist(); out["ood"] += r.is_ood.tolist()
        json.dump(out, sys.stdout)
    """))
    (tmp_path / "images.json").write_text(json.dumps([[str(p) for p in g] for g in images]))
    r = run_script([str(script)])
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_reloaded_detector_reproduces_the_runs_evaluation(trained, tmp_path):
    root, out = trained
    det_dir = out / "detector"
    meta = json.loads((det_dir / "detector.json").read_text())
    assert meta["backbone"]["model"] == "clipood-mini" and meta["adapter"]["name"] == "nft"
    assert meta["labels"]["id_names"] == sorted(CLASSES) and len(meta["labels"]["negatives"]) == 4
    assert meta["calibration"]["id_recall"] == 0.95 and meta["calibration"]["num_images"] == 15
    calib = json.loads((det_dir / "calibration.json").read_text())
    id_images = sorted((root / "test").rglob("*.png"))
    assert sorted(calib["images"]) == [str(p) for p in id_images]
    ood_images = sorted((root / "ood").rglob("*.png"))
    got = _fresh_process_scores(out, [calib["images"], ood_images], tmp_path)  # a run's output_dir works too
    n = len(calib["images"])
    # the scores the run's evaluation computed from its cached features, recomputed from the image files.
    # Both processes use one thread and the same batches, so float32 sums run in the same order (another thread
    # count moves the log-odds by a few ulps of 100·cos: 5.4e-6 was seen with 2 threads).
    assert max(abs(a - b) for a, b in zip(got["scores"][:n], calib["scores"])) < 1e-6
    # the threshold keeps 95 % of the ID scores: with 15 images, ceil(0.95 * 15) = 15 → the lowest ID score
    assert got["threshold"] == pytest.approx(min(calib["scores"]), abs=1e-12)
    assert sum(s >= got["threshold"] for s in calib["scores"]) >= math.ceil(0.95 * n)
    # an image is flagged OOD exactly when its score is below the threshold
    assert got["ood"] == [s < got["threshold"] for s in got["scores"]]
    # accuracy and AUROC of the run's results.json, from the reloaded detector's outputs (sklearn)
    rows = json.loads((out / "results.json").read_text())
    row = next(r for r in rows if r["method"] == "KR-NFT" and r["dataset"] == "mine")
    truth = [sorted(CLASSES).index(p.parent.name) for p in map(Path, calib["images"])]
    acc = sum(int(p == t) for p, t in zip(got["pred"][:n], truth)) / n
    assert acc == pytest.approx(row["id_acc"], abs=1e-6)  # results.json keeps a float32 mean
    auroc = roc_auc_score([1] * n + [0] * len(ood_images), got["scores"])
    assert auroc == pytest.approx(row["auroc"], abs=1e-9)


def test_clipood_detect_on_a_folder_and_single_files(trained, tmp_path):
    root, out = trained
    r = run_script(["-m", "clipood_recipes.cli", "detect", str(out / "detector"), str(root / "new"),
                    "--csv", str(tmp_path / "s.csv")])
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / "s.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r_["image"] for r_ in rows] == [str(p) for p in sorted((root / "new").rglob("*.png"))]
    assert all(r_["class"] in CLASSES and r_["ood"] in ("True", "False") for r_ in rows)
    single = sorted((root / "new").rglob("*.png"))[:2]
    r = run_script(["-m", "clipood_recipes.cli", "detect", str(out), *map(str, single)])
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["image", "score", "OOD", "class"] and len(lines) == 4
    assert "2 image(s)" in lines[-1]
    for line, row in zip(lines[1:3], rows[:2]):  # the same scores as the CSV of the folder
        assert line.split()[0] == row["image"] and float(line.split()[1]) == pytest.approx(float(row["score"]), abs=1e-5)
    r = run_script(["-m", "clipood_recipes.cli", "detect", str(out), str(root / "new"), "--json", str(tmp_path / "s.json")])
    assert r.returncode == 0 and len(json.loads((tmp_path / "s.json").read_text())["rows"]) == len(rows)


def test_tampered_detector_file_is_refused(trained, tmp_path):
    _, out = trained
    det = tmp_path / "det"
    shutil.copytree(out / "detector", det)
    weights = det / "adapter" / "adapter.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    r = run_script(["-m", "clipood_recipes.cli", "detect", str(det), str(out.parent / "new")])
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "adapter.safetensors" in err[0] and "sha256" in err[0], r.stderr
    assert "Traceback" not in r.stderr


def _zero_shot(mini, k_neg=3):
    from clipood.detector import Detector

    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(2 + k_neg, mini.embed_dim), dim=-1)
    return Detector(mini, feats, ["red", "green"], negatives=[f"w{i}" for i in range(k_neg)],
                    info={"model": "clipood-mini"})


def test_threshold_is_the_recall_quantile_by_hand():
    from clipood.detector import calibrate_threshold

    s = [0.1 * i for i in range(20)]  # 20 scores 0.0 .. 1.9: keeping 19 of them puts the cut at 0.1
    assert calibrate_threshold(s, 0.95) == pytest.approx(0.1)
    assert calibrate_threshold(s, 0.5) == pytest.approx(1.0)  # the 10th highest
    assert calibrate_threshold([3.0], 0.95) == 3.0
    with pytest.raises(ValueError, match="id_recall"):
        calibrate_threshold(s, 1.5)


def test_zero_shot_detector_scores_by_an_independent_formula(mini, tmp_path):
    from clipood.detector import Detector

    make_image_folder(tmp_path / "imgs", {"a": (200, 10, 10)}, n=3)
    det = _zero_shot(mini)
    det.calibrate(torch.tensor([0.5, 1.0, 2.0]), 0.95, data={"what": "hand"})
    det.save_pretrained(tmp_path / "det")
    again = Detector.from_pretrained(tmp_path / "det")
    files = sorted((tmp_path / "imgs").rglob("*.png"))
    r = again(tmp_path / "imgs")
    from PIL import Image

    x = torch.stack([mini.preprocess(Image.open(f).convert("RGB")) for f in files])
    v = torch.nn.functional.normalize(mini.model.encode_image(x).float(), dim=-1).double()
    logits = 100 * v @ det.text_features.double().T
    expected = torch.log(torch.exp(logits[:, :2]).sum(1)) - torch.log(torch.exp(logits[:, 2:]).sum(1))
    assert torch.allclose(r.scores, expected, atol=1e-4)
    assert r.pred.tolist() == logits[:, :2].argmax(1).tolist()
    assert again.threshold == 0.5 and r.is_ood.tolist() == (r.scores < 0.5).tolist()
    assert r.paths == [str(f) for f in files]


def test_unknown_format_version_and_nan_weights_are_refused(mini, tmp_path):
    from clipood.detector import Detector
    from clipood.errors import ClipoodError

    det = _zero_shot(mini)
    det.save_pretrained(tmp_path / "ok")
    meta_path = tmp_path / "ok" / "detector.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    sums = json.loads((tmp_path / "ok" / "checksums.json").read_text())
    import hashlib

    sums["detector.json"] = hashlib.sha256(meta_path.read_bytes()).hexdigest()
    (tmp_path / "ok" / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(ClipoodError, match="format version 99"):
        Detector.from_pretrained(tmp_path / "ok")
    det.text_features[0, 0] = float("nan")
    det.save_pretrained(tmp_path / "nan")
    with pytest.raises(ClipoodError, match=r"label_features.safetensors.*NaN"):
        Detector.from_pretrained(tmp_path / "nan")


def test_missing_file_missing_folder_and_offline_hub_id(mini, tmp_path, monkeypatch):
    from clipood.detector import Detector
    from clipood.errors import ClipoodError

    _zero_shot(mini).save_pretrained(tmp_path / "d")
    (tmp_path / "d" / "calibration.json").unlink()
    with pytest.raises(ClipoodError, match="calibration.json is missing"):
        Detector.from_pretrained(tmp_path / "d")
    with pytest.raises(ClipoodError, match="not a detector folder"):
        Detector.from_pretrained(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipoodError, match="'someone/no-such-detector'.*HF_HUB_OFFLINE"):
        Detector.from_pretrained("someone/no-such-detector")


def test_random_weights_are_not_saved_as_a_detector(tmp_path):
    from clipood import load_clip
    from clipood.detector import Detector
    from clipood.errors import ClipoodError

    bb = load_clip("clipood-tiny")
    det = Detector(bb, torch.nn.functional.normalize(torch.randn(3, bb.embed_dim), dim=-1), ["a", "b"], negatives=["c"])
    with pytest.raises(ClipoodError, match="random weights"):
        det.save_pretrained(tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_resaving_replaces_the_folder_and_leaves_no_temp(mini, tmp_path):
    det = _zero_shot(mini)
    det.save_pretrained(tmp_path / "d")
    (tmp_path / "d" / "stale.txt").write_text("x")
    det.save_pretrained(tmp_path / "d")
    assert not (tmp_path / "d" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_detect_cli_bad_inputs_are_one_line(trained, tmp_path):
    _, out = trained
    for args, needle in ([[str(out), str(tmp_path / "nope.png")], "nope.png"],
                         [[str(tmp_path), str(out)], "not a detector folder"],
                         [[str(out)], "the following arguments are required"]):
        r = run_script(["-m", "clipood_recipes.cli", "detect", *args])
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1 and needle in err[0], r.stderr
    r = run_script(["-m", "clipood_recipes.cli", "detect", "--help"])
    assert r.returncode == 0 and "--csv" in r.stdout
