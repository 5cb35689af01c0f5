"""eval.scores: every score through one zero-shot command on a fake OpenOOD v1.5 tree; the second identical run
encodes nothing and refits nothing (counted); rows per score with near / far groups; the default adds no row."""
import json

import pytest
import torch

from clipood.errors import ClipoodError
from test_real_data import IMAGENET, no_model, openood_tree, png, run_recipe  # noqa: F401 (no_model: a fixture)

ALL = ["neglabel", "mcm", "msp", "max_logit", "energy", "gen", "eoe", "odin", "gradnorm", "react", "ash_p", "ash_b",
       "ash_s", "dice", "vim", "knn", "mds", "rmds"]


def _fit_tree(root):
    """ImageNet-style training folders (WordNet IDs) of the three ID classes the fake tree holds."""
    for k in range(3):
        for j in range(4):
            png(root / IMAGENET.ids[k] / f"t{j}.png", 17 * k + 3 * j + 1)
    return root


@pytest.fixture
def counted(monkeypatch):
    import clipood.clip.pre_projection as pp
    import clipood.posthoc.fit as fit
    from clipood.clip.encoders import Backbone

    counts = {"images": 0, "pre_projection": 0, "texts": 0, "fit_updates": 0}
    real = {"images": Backbone.encode_images, "texts": Backbone.encode_text, "pre": pp.pre_projection_features}

    def images(self, *a, **k):
        counts["images"] += 1
        return real["images"](self, *a, **k)

    def texts(self, *a, **k):
        counts["texts"] += 1
        return real["texts"](self, *a, **k)

    def pre(*a, **k):
        counts["pre_projection"] += 1
        return real["pre"](*a, **k)

    monkeypatch.setattr(Backbone, "encode_images", images)
    monkeypatch.setattr(Backbone, "encode_text", texts)
    monkeypatch.setattr(pp, "pre_projection_features", pre)
    for cls in (fit.GaussianFit, fit.ViMFit, fit.KNNFit, fit.ReActFit, fit.MeanFit):
        upd = cls.update

        def counting(self, *a, _upd=upd, **k):
            counts["fit_updates"] += 1
            return _upd(self, *a, **k)

        monkeypatch.setattr(cls, "update", counting)
    return counts


def test_all_scores_on_an_openood_tree_in_one_command_and_a_second_run_does_nothing_again(tmp_path, counted,
                                                                                           monkeypatch):
    data = openood_tree(tmp_path / "data")
    fit = _fit_tree(tmp_path / "fit")
    words = tmp_path / "words.txt"
    words.write_text("".join(f"thing{i}\n" for i in range(40)))
    envisioned = tmp_path / "envisioned.txt"
    envisioned.write_text("rock\nriver\ncloud\n")
    monkeypatch.setenv("CLIPOOD_CACHE", str(tmp_path / "cache"))
    args = ["model=clipood-tiny", "progress=false", "benchmark=openood-imagenet", f"data_root={data}",
            f"classes=[{','.join(IMAGENET.ids[:3])}]", f"negatives.corpus={words}", "negatives.num=8",
            "eval.plots=false", f"eval.scores=[{','.join(ALL)}]", f"eval.fit_data.path={fit}", "eval.fit_shots=0",
            f"eval.score_options.eoe.label_file={envisioned}", "eval.score_options.react.percentile=85"]
    from clipood_recipes.cli import main as clipood

    clipood(["eval"] + args + [f"output_dir={tmp_path / 'run1'}"])  # `clipood eval ...`
    assert counted["images"] > 0 and counted["pre_projection"] > 0 and counted["fit_updates"] > 0
    counted.update(images=0, pre_projection=0, texts=0, fit_updates=0)
    clipood(["eval"] + args + [f"output_dir={tmp_path / 'run2'}"])
    # ODIN reads pixels through open_clip's encode_image (not Backbone.encode_images): the only re-encoding
    assert counted == {"images": 0, "pre_projection": 0, "texts": 0, "fit_updates": 0}
    r1, r2 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("run1", "run2"))
    assert r1 == r2
    methods = list(dict.fromkeys(r["method"] for r in r1))
    from clipood.evaluation.posthoc_eval import DISPLAY

    for name in ALL:  # one row set per score (neglabel / mcm are the default rows, not repeated)
        assert f"{DISPLAY[name]} (zero-shot)" in methods, name
    assert len(methods) == len(ALL)
    rows = [r for r in r1 if r["method"] == "KNN (zero-shot)"]
    by = {r["dataset"]: r for r in rows}
    assert list(by) == ["ssb_hard", "ninco", "inaturalist", "textures", "openimage_o", "near", "far", "average"]
    assert by["near"]["auroc"] == pytest.approx((by["ssb_hard"]["auroc"] + by["ninco"]["auroc"]) / 2)
    md = (tmp_path / "run1" / "results.md").read_text()
    assert "ODIN reads the images" in md and "| ReAct (zero-shot) |" in md
    assert len(list((tmp_path / "cache" / "posthoc").glob("*.safetensors"))) >= 6  # 5 fits (+ EOE's labels)


def test_rows_match_gen_computed_by_hand(tmp_path):
    """GEN rows (per set, the near group, the average) against sklearn's AUROC of the formula written here."""
    from types import SimpleNamespace

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from clipood.evaluation.posthoc_eval import evaluate_scores
    from clipood.config.settings import EvalSettings, typed
    from clipood.evaluation.posthoc_run import PosthocRun, PosthocSources
    from clipood.evaluation.protocol import EvalSplit, SplitFeatures

    g = torch.Generator().manual_seed(0)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)  # noqa: E731
    text = unit(5)  # 3 ID labels + 2 negatives
    feats = {"id": {"features": unit(20), "labels": torch.randint(0, 3, (20,), generator=g)},
             "a": {"features": unit(9), "labels": torch.zeros(9, dtype=torch.long)},
             "b": {"features": unit(11), "labels": torch.zeros(11, dtype=torch.long)}}
    split = EvalSplit("base", {"id": None}, {"a": None, "b": None}, ["x", "y", "z"], groups={"near": ["a"]})
    sf = SplitFeatures(split, {"id": feats["id"]}, {"a": feats["a"], "b": feats["b"]}, text, 3)
    cfg = {"eval": {"scores": ["gen"], "logit_scale": 100.0, "convention": "hendrycks", "batch_size": 7},
           "cache_dir": None}
    ev = typed(EvalSettings, cfg["eval"])
    run = PosthocRun(ev, PosthocSources(cache_dir=tmp_path), SimpleNamespace(backbone=None), None, [sf])
    rows, _ = evaluate_scores(run, None, [sf], ev, set())

    def gen(v):  # p = softmax(100·cos over the ID labels); S = −Σ_{top M=100} p^0.1 (1 − p)^0.1
        z = 100.0 * v.double().numpy() @ text[:3].double().numpy().T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return -(p ** 0.1 * (1 - p) ** 0.1).sum(1)

    by = {r["dataset"]: r for r in rows}
    assert [r["method"] for r in rows] == ["GEN (zero-shot)"] * 4 and list(by) == ["a", "b", "near", "average"]
    sid = gen(feats["id"]["features"])
    auc = {o: roc_auc_score([1] * 20 + [0] * len(gen(feats[o]["features"])),
                            np.concatenate([sid, gen(feats[o]["features"])])) for o in ("a", "b")}
    assert by["a"]["auroc"] == pytest.approx(auc["a"], abs=1e-9)
    assert by["near"]["auroc"] == pytest.approx(auc["a"], abs=1e-9)
    assert by["average"]["auroc"] == pytest.approx((auc["a"] + auc["b"]) / 2, abs=1e-9)
    acc = float((feats["id"]["features"] @ text[:3].T).argmax(1).eq(feats["id"]["labels"]).double().mean())
    assert by["a"]["id_acc"] == pytest.approx(acc)


def test_unknown_score_and_missing_label_file_fail_before_the_model(tmp_path, no_model):
    base = ["model=clipood-tiny", "progress=false", f"output_dir={tmp_path / 'o'}"]
    with pytest.raises(ClipoodError, match="score in eval.scores"):
        run_recipe("zeroshot", base + ["eval.scores=[gen,nosuch]"])
    with pytest.raises(ClipoodError, match="label_file"):
        run_recipe("zeroshot", base + ["eval.scores=[eoe]"])
    with pytest.raises(ClipoodError, match="has no params"):
        run_recipe("zeroshot", base + ["eval.scores=[gen]", "eval.score_options.gen.gama=0.2"])
    assert no_model == []


def test_two_id_datasets_in_one_split_are_collapsed_as_the_evaluation_does(tmp_path):
    """Two ID datasets under one split name: a row per ID dataset (its own OOD average), then their mean."""
    from types import SimpleNamespace

    from clipood.evaluation.posthoc_eval import evaluate_scores
    from clipood.config.settings import EvalSettings, typed
    from clipood.evaluation.posthoc_run import PosthocRun, PosthocSources
    from clipood.evaluation.protocol import EvalSplit, SplitFeatures

    g = torch.Generator().manual_seed(1)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, 6, generator=g), dim=1)  # noqa: E731
    sfs = []
    for ident in ("c10", "c100"):
        split = EvalSplit("new_class", {ident: None}, {"o": None}, ["p", "q"])
        sfs.append(SplitFeatures(split, {ident: {"features": unit(10), "labels": torch.zeros(10, dtype=torch.long)}},
                                 {"o": {"features": unit(8), "labels": torch.zeros(8, dtype=torch.long)}}, unit(3), 2))
    cfg = {"eval": {"scores": ["msp"], "logit_scale": 100.0, "convention": "hendrycks", "batch_size": 4},
           "cache_dir": None}
    ev = typed(EvalSettings, cfg["eval"])
    run = PosthocRun(ev, PosthocSources(cache_dir=tmp_path), SimpleNamespace(backbone=None), None, sfs)
    rows, _ = evaluate_scores(run, None, sfs, ev, set())
    alone = [evaluate_scores(run, None, [sf], ev, set())[0] for sf in sfs]
    assert [r["dataset"] for r in rows] == ["c10", "c100", "average"]
    for r, a in zip(rows, alone):
        assert r["auroc"] == pytest.approx(a[-1]["auroc"]) and r["fpr95"] == pytest.approx(a[-1]["fpr95"])
    assert rows[-1]["auroc"] == pytest.approx((alone[0][-1]["auroc"] + alone[1][-1]["auroc"]) / 2)


def test_clipood_scores_lists_every_score_with_its_defaults(capsys):
    from clipood.posthoc.registry import list_scores
    from clipood.scores import SCORES
    from clipood_recipes.cli import main as clipood

    clipood(["scores"])
    out = capsys.readouterr().out
    for name in SCORES:
        assert f"\n  {name}: " in out
    for s in list_scores():
        assert f"\n  {s.name}" in out, s.name
    assert "gen: gamma=0.1, M=100" in out and "react: percentile=90.0" in out and "k=50" in out
    assert "odin: temperature=1000.0, noise=0.0014" in out and "the images (not the feature cache)" in out
