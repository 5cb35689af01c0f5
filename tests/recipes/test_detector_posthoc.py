"""A detector saved with a fitted post-hoc score: its statistics in scores/<name>.safetensors, listed in
checksums.json and detector.json; a fresh process reloads it and gives the same scores (1e-6)."""
import json
import textwrap

import pytest
import torch

from clipood.errors import ClipoodError
from helpers import make_image_folder, run_script

SAVED = ["gen", "msp", "knn", "mds", "rmds", "vim", "react", "dice", "ash_s", "gradnorm"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Detectors on clipood-mini (shipped weights), one per score, fitted on encoded images of 2 classes."""
    from PIL import Image

    from clipood import load_clip
    from clipood.clip.pre_projection import image_projection, pre_projection_features
    from clipood.detector import Detector
    from clipood.posthoc.fit import fit_statistics
    from clipood.posthoc.scorer import PosthocScore

    root = tmp_path_factory.mktemp("dposthoc")
    bb = load_clip("clipood-mini")
    make_image_folder(root / "fit", {"red": (220, 20, 20), "green": (20, 200, 30)}, n=6, size=32)
    make_image_folder(root / "test", {"a": (200, 40, 10), "b": (10, 10, 230)}, n=3, size=32)
    files = sorted((root / "fit").rglob("*.png"))
    x = torch.stack([bb.preprocess(Image.open(f).convert("RGB")) for f in files])
    labels = torch.tensor([0 if "red" in str(f) else 1 for f in files])
    with torch.no_grad():
        batch = {"image_features": bb.encode_images(x).float(), "pre_projection_features":
                 pre_projection_features(bb, x).float(), "labels": labels}
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(5, bb.embed_dim), dim=-1)
    proj = image_projection(bb)
    dets = {}
    for name in SAVED:
        score = PosthocScore(name, {"k": 3} if name == "knn" else {},
                             {"dim": 8} if name == "vim" else {})
        head = score.head(text[:2], 100.0, proj) if name == "vim" else None
        fit = score.new_fit(num_classes=2, head=head)
        if fit is not None:
            score = PosthocScore(name, score.params, score.fit_params, fit_statistics(fit, [batch]))
        det = Detector(bb, text, ["red", "green"], negatives=["w0", "w1", "w2"], info={"model": "clipood-mini"},
                       posthoc=score)
        dets[name] = (det, det.save_pretrained(root / "det" / name))
    return root, dets


def test_reloaded_in_a_fresh_process_gives_the_same_scores(fitted, tmp_path):
    root, dets = fitted
    here = {name: det(root / "test").scores.tolist() for name, (det, _) in dets.items()}
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import clipood
        out = {{}}
        for name in {SAVED!r}:
            det = clipood.Detector.from_pretrained({str(root / 'det')!r} + "/" + name)
            out[name] = det({str(root / 'test')!r}).scores.tolist()
        json.dump(out, sys.stdout)
    """))
    r = run_script([str(script)])
    assert r.returncode == 0, r.stderr[-3000:]
    there = json.loads(r.stdout)
    for name in SAVED:
        assert torch.allclose(torch.tensor(there[name], dtype=torch.float64),
                              torch.tensor(here[name], dtype=torch.float64), atol=1e-6, rtol=0), name
    assert len(set(map(tuple, here.values()))) == len(SAVED)  # the scores differ from each other


def test_folder_lists_the_statistics_and_mds_matches_a_hand_formula(fitted):
    from PIL import Image

    from clipood.detector import Detector
    from clipood.io import load_safetensors

    root, dets = fitted
    folder = dets["mds"][1]
    meta = json.loads((folder / "detector.json").read_text())
    assert meta["posthoc"]["file"] == "scores/mds.safetensors" and meta["posthoc"]["stats_kind"] == "gaussian"
    assert "scores/mds.safetensors" in json.loads((folder / "checksums.json").read_text())
    st = load_safetensors(folder / "scores/mds.safetensors")
    det = Detector.from_pretrained(folder)
    files = sorted((root / "test").rglob("*.png"))
    x = torch.stack([det.backbone.preprocess(Image.open(f).convert("RGB")) for f in files])
    v = torch.nn.functional.normalize(det.backbone.model.encode_image(x).double(), dim=-1)
    d = torch.stack([((v - m) @ st["stats.precision"].double() * (v - m)).sum(1)
                     for m in st["stats.class_means"].double()], dim=1)
    assert torch.allclose(det(root / "test").scores.double(), -d.min(1).values, atol=1e-5)


def test_unlisted_or_altered_statistics_are_refused(fitted, tmp_path):
    import shutil

    from clipood.detector import Detector

    _, dets = fitted
    bad = tmp_path / "bad"
    shutil.copytree(dets["knn"][1], bad)
    sums = json.loads((bad / "checksums.json").read_text())
    del sums["scores/knn.safetensors"]
    (bad / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(ClipoodError, match="not listed"):
        Detector.from_pretrained(bad)
    bad2 = tmp_path / "bad2"
    shutil.copytree(dets["knn"][1], bad2)
    meta = json.loads((bad2 / "detector.json").read_text())
    meta["posthoc"]["file"] = "../elsewhere.safetensors"
    (bad2 / "detector.json").write_text(json.dumps(meta))
    sums = json.loads((bad2 / "checksums.json").read_text())
    import hashlib

    sums["detector.json"] = hashlib.sha256((bad2 / "detector.json").read_bytes()).hexdigest()
    (bad2 / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(ClipoodError, match="posthoc.file"):
        Detector.from_pretrained(bad2)


def test_odin_is_refused_in_a_detector(fitted):
    from clipood.detector import Detector
    from clipood.posthoc.scorer import PosthocScore

    det = fitted[1]["gen"][0]
    with pytest.raises(ClipoodError, match="odin"):
        Detector(det.backbone, det.text_features, det.id_names, negatives=det.negatives,
                 posthoc=PosthocScore("odin"))
