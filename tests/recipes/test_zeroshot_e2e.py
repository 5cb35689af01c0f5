"""Zero-shot evaluation end to end, offline, on generated ImageFolders (issue: foundation acceptance)."""
import json

from helpers import make_image_folder, run_script


def test_zeroshot_recipe_on_generated_imagefolder(tmp_path):
    make_image_folder(tmp_path / "id", {"red": (220, 30, 30), "green": (30, 200, 30)}, n=4)
    make_image_folder(tmp_path / "ood_a", {"x": (30, 30, 220)}, n=5, pseudo=True)
    make_image_folder(tmp_path / "ood_b", {"y": (200, 200, 30)}, n=3, pseudo=True)
    words = tmp_path / "words.txt"
    words.write_text("\n".join(["apple\tnoun", "river\tnoun", "stone\tnoun", "cloud\tnoun", "quick\tadj",
                                "shiny\tadj", "bright\tadj", "table\tnoun"]) + "\n")
    out = tmp_path / "out"
    r = run_script(["recipes/zeroshot.py", "model=clipood-tiny", "benchmark=custom",
                    f"id_data.path={tmp_path / 'id'}", f"ood_data.a.path={tmp_path / 'ood_a'}",
                    f"ood_data.b.path={tmp_path / 'ood_b'}", f"negatives.corpus={words}", "negatives.num=4",
                    f"cache_dir={tmp_path / 'cache'}", f"output_dir={out}", "progress=false"])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((out / "results.json").read_text())
    keys = {"method", "split", "dataset", "auroc", "fpr95", "aupr_in", "aupr_out", "id_acc"}
    assert rows and all(keys <= set(row) for row in rows)
    datasets = {(row["method"], row["dataset"]) for row in rows}
    for m in ("MCM (zero-shot)", "NegLabel (zero-shot)"):
        assert {(m, "a"), (m, "b"), (m, "average")} <= datasets
    for row in rows:
        assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["fpr95"] <= 1.0 and 0.0 <= row["id_acc"] <= 1.0
    avg = [row for row in rows if row["dataset"] == "average" and row["method"].startswith("NegLabel")][0]
    per = [row for row in rows if row["dataset"] in ("a", "b") and row["method"].startswith("NegLabel")]
    assert abs(avg["auroc"] - sum(p["auroc"] for p in per) / 2) < 1e-12
    md = (out / "results.md").read_text()
    assert "NegLabel (zero-shot)" in md and "AUROC" in md
    for png in ("hist_base.png", "roc_base.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recipe_bad_input_is_one_line(tmp_path):
    r = run_script(["recipes/zeroshot.py", "model=clipood-tiny", "benchmark=custom",
                    f"id_data.path={tmp_path / 'missing'}", f"ood_data.a.path={tmp_path / 'also-missing'}",
                    f"output_dir={tmp_path / 'o'}"])
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0], r.stderr
    r = run_script(["recipes/zeroshot.py", "eval.scor=mcm"])
    assert r.returncode == 2 and "did you mean 'eval.score'" in r.stderr
    r = run_script(["recipes/zeroshot.py", "model=clipood-tiny", "benchmark=imagenett", f"data_root={tmp_path}"])
    assert r.returncode == 2 and "did you mean 'imagenet'" in r.stderr and "Traceback" not in r.stderr
