"""The bad-input battery, part 2 (issue "Nothing a config, a checkpoint or a detector folder holds can leak, hang,
escape or silently change a result"): config files as an attack surface, stacking and resume, class names,
detector folders and the weak outcomes of the red team, by kind. Same contract as part 1
(``tests/reliability/test_refusal_table.py``): each case goes through a real entry point in-process and gets exit status
2, exactly one ``error: ...`` line naming the key or the file, no traceback, nothing written (the test folder is
byte-for-byte as before: no half-written file, no temporary file, no lock file), and no model or mini world is
loaded first (both are replaced by a function that fails the test).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from helpers import make_image_folder

import test_refusal_table as part1

K, Z, C = "krnft", "zeroshot", "cli"
CUSTOM = ["benchmark=custom", "id_data.path={t}/id", "ood_data.o.path={t}/ood"]
CASES = [
    # ---------------------------------------------------------------- YAML files: nothing expands, nothing is lost
    ("--config alias bomb", K, ["--config", "{t}/bomb.yaml"], {}, ["bomb.yaml", "line 1", "anchor"]),
    ("--config merge key", K, ["--config", "{t}/merge.yaml"], {}, ["merge.yaml", "anchor"]),
    ("--config duplicate key", K, ["--config", "{t}/dup.yaml"], {}, ["dup.yaml", "line 2", "'seed' twice"]),
    ("--config duplicate nested key", K, ["--config", "{t}/dup_nested.yaml"], {}, ["dup_nested.yaml", "line 3", "'lr'"]),
    ("--config over the size limit", K, ["--config", "{t}/big.yaml"], {}, ["big.yaml", "larger than"]),
    ("--config nested 200 deep", K, ["--config", "{t}/deep.yaml"], {}, ["deep.yaml", "nesting deeper"]),
    ("--config binary file", Z, ["--config", "{t}/binary.yaml"], {}, ["binary.yaml", "NUL"]),
    ("--config not UTF-8", Z, ["--config", "{t}/latin1.yaml"], {}, ["latin1.yaml", "UTF-8"]),
    ("--config is a folder", K, ["--config", "{t}/id"], {}, ["config file not found", "folder"]),
    ("--config holds a list", K, ["--config", "{t}/list.yaml"], {}, ["list.yaml", "mapping"]),
    ("--config without a path", K, ["--config"], {}, ["--config needs a file path"]),
    ("config= empty", Z, ["config="], {}, ["needs a file path"]),
    ("second --config read", K, ["--config", "{t}/c-ok.yaml", "--config", "{t}/c2-unknown.yaml"], {},
     ["c2-unknown.yaml", "unknown config key 'sede'"]),
    ("first --config still read", K, ["--config", "{t}/c1-bad.yaml", "--config", "{t}/c-ok2.yaml"], {},
     ["c1-bad.yaml", "'train.lr'"]),
    ("alias on the command line", K, ["adapter.options={hidden_dim: &x 8, conditional: *x}"], {},
     ["command line", "anchor"]),
    ("duplicate key on the command line", K, ["adapter.options={hidden_dim: 8, hidden_dim: 16}"], {},
     ["command line", "'hidden_dim' twice"]),
    # ---------------------------------------------------------------- interpolations are text, never resolved
    ("oc.env in an int", K, ["seed=${oc.env:HOME}"], {}, ["'seed'", "${oc.env:HOME}"]),
    ("oc.env of a missing variable", K, ["eval.logit_scale=${oc.env:CLIPOOD_BATTERY_MISSING}"], {},
     ["eval.logit_scale", "${oc.env:CLIPOOD_BATTERY_MISSING}"]),
    ("oc.env in a template", Z, ["negatives.id_template=${oc.env:HOME} {}"], {}, ["negatives.id_template"]),
    ("oc.decode resolver", K, ["mini.seed=${oc.decode:'1'}"], {}, ["mini.seed", "oc.decode"]),
    ("interpolation to another key", K, ["shots=${seed}"], {}, ["'shots'", "${seed}"]),
    ("oc.env in a --config file", K, ["--config", "{t}/interp.yaml"], {}, ["interp.yaml", "'seed'", "${oc.env"]),
    # ---------------------------------------------------------------- stacking and resume
    ("output_dir = base_checkpoint", K, ["base_checkpoint={t}/locoop-run", "output_dir={t}/locoop-run",
                                         "resume=false"], {}, ["would overwrite base_checkpoint", "locoop-run"]),
    ("output_dir inside base_checkpoint", K, ["base_checkpoint={t}/locoop-run", "output_dir={t}/locoop-run/sub"], {},
     ["would overwrite base_checkpoint"]),
    ("output_dir holds init_adapter", K, ["init_adapter={t}/own-run/adapter", "output_dir={t}/own-run"], {},
     ["would overwrite init_adapter"]),
    ("checkpoint of another logit scale", K, ["eval.logit_scale=50", "output_dir={t}/ckpt-run"], {},
     ["another configuration", "eval.logit_scale", "ckpt-run"]),
    ("base_checkpoint config corrupt", K, ["base_checkpoint={t}/bad-run"], {}, ["adapter_config.json", "not a saved"]),
    ("base is not a prompt adapter", K, ["base_checkpoint={t}/nft-run"], {}, ["'nft'", "not a prompt adapter"]),
    ("base on another backbone", K, ["base_checkpoint={t}/other-bb-run"], {}, ["ViT-B-16", "model=clipood-mini"]),
    ("base without base_checkpoint", K, ["base=locoop"], {}, ["base=locoop", "base_checkpoint"]),
    ("base_checkpoint and init_adapter", K, ["base_checkpoint={t}/locoop-run", "init_adapter={t}/own-run/adapter"],
     {}, ["exclude each other"]),
    ("init_adapter config corrupt", K, ["init_adapter={t}/bad-run/adapter"], {}, ["init_adapter", "adapter_config.json"]),
    # ---------------------------------------------------------------- class names the text encoder cannot tell apart
    ("class folders differing in case", Z, ["benchmark=custom", "id_data.path={t}/cases", "ood_data.o.path={t}/ood"],
     {}, ["'Cat'", "'cat'", "lowercases"]),
    ("classnames twice", Z, [*CUSTOM, "id_data.classnames=[dog, dog]"], {}, ["'dog'", "same name"]),
    ("classnames differing in spacing", Z, [*CUSTOM, "id_data.classnames=[big dog, 'big  dog']"], {},
     ["'big dog'", "spacing"]),
    ("classnames empty", Z, [*CUSTOM, "id_data.classnames=['', b]"], {}, ["class 0", "empty name"]),
    ("classnames blank", Z, [*CUSTOM, "id_data.classnames=[a, '  ']"], {}, ["class 1", "empty name"]),
    ("classes= on the mini world", K, ["classes=[circle]"], {}, ["classes=", "named suites", "mini"]),
    ("classes= on custom data", Z, [*CUSTOM, "classes=[a]"], {}, ["classes=", "id_data.classes"]),
    # ---------------------------------------------------------------- option ranges that turn a term off
    ("locoop entropy_weight negative", K, ["adapter.name=locoop", "adapter.options={entropy_weight: -1}"], {},
     ["entropy_weight"]),
    ("locoop entropy_weight infinite", K, ["adapter.name=locoop", "adapter.options={entropy_weight: .inf}"], {},
     ["entropy_weight", "finite"]),
    ("lapt mix_weight negative", K, ["adapter.name=lapt", "adapter.options={mix_weight: -0.5}"], {},
     ["adapter.options.mix_weight"]),
    ("lapt neg_image_dir missing", K, ["adapter.name=lapt", "adapter.options={neg_image_dir: '{t}/no-such-dir'}"], {},
     ["adapter.options.neg_image_dir", "no-such-dir"]),
    ("losses.kr infinite", K, ["losses.kr=.inf"], {}, ["losses.kr"]),
    ("train.lr NaN", K, ["train.lr=.nan"], {}, ["train.lr"]),
    ("eval.logit_scale infinite", Z, ["eval.logit_scale=.inf"], {}, ["eval.logit_scale"]),
    ("negatives.fraction NaN", Z, ["negatives.fraction=.nan"], {}, ["negatives.fraction"]),
    # ---------------------------------------------------------------- checks that used to come after encoding
    ("shots above the mini pool", K, ["shots=20"], {}, ["shots=20", "mini.train_per_class=16"]),
    ("cls_groups above the negatives", K, ["cls_groups=41"], {}, ["cls_groups=41", "negatives.num=40"]),
    ("ood_groups above the negatives", K, ["negatives.num=5", "ood_groups=6"], {}, ["ood_groups=6"]),
    ("glmcm without patch features", K, ["eval.score=glmcm"], {}, ["eval.score=glmcm", "patch"]),
    ("empty corpus", Z, ["negatives.corpus={t}/empty.txt"], {}, ["negatives.corpus", "no words"]),
    ("mine output is a folder", C, ["mine", "output={t}/id"], {}, ["output=", "is a folder"]),
    ("mine output below a file", C, ["mine", "output={t}/a-file/neg.tsv"], {}, ["output=", "a-file"]),
    # ---------------------------------------------------------------- data files
    ("image list not UTF-8", Z, ["benchmark=custom", "id_data.list_file={t}/list-latin1.txt", "id_data.root={t}/id",
                                 "ood_data.o.path={t}/ood"], {}, ["list-latin1.txt", "UTF-8"]),
    ("HF labels fractional", Z, ["benchmark=custom", "id_data.type=hf", "id_data.path_or_name={t}/hf-float",
                                 "id_data.from_disk=true", "ood_data.o.path={t}/ood"], {},
     ["label_column 'label'", "0.5"]),
    ("HF labels mixed", Z, ["benchmark=custom", "id_data.type=hf", "id_data.path_or_name={t}/hf-mixed",
                            "id_data.from_disk=true", "ood_data.o.path={t}/ood"], {}, ["label_column", "mixed"]),
    # ---------------------------------------------------------------- detector folders and clipood detect
    ("detect: no checksums.json", C, ["detect", "{t}/det-nosums", "{t}/id"], {}, ["checksums.json", "missing"]),
    ("detect: checksums.json a list", C, ["detect", "{t}/det-list", "{t}/id"], {}, ["checksums.json", "corrupt"]),
    ("detect: entry ../", C, ["detect", "{t}/det-dotdot", "{t}/id"], {}, ["checksums.json", "'../secret.txt'"]),
    ("detect: absolute entry", C, ["detect", "{t}/det-abs", "{t}/id"], {}, ["checksums.json", "'/etc/hostname'"]),
    ("detect: adapter folder outside", C, ["detect", "{t}/det-adapter-out", "{t}/id"], {},
     ["detector.json", "adapter.folder"]),
    ("detect: NaN threshold", C, ["detect", "{t}/det-nan", "{t}/id"], {}, ["detector.json", "threshold"]),
    ("detect: inf logit_scale", C, ["detect", "{t}/det-inf-scale", "{t}/id"], {}, ["detector.json", "logit_scale"]),
    ("detect: unknown score", C, ["detect", "{t}/det-score", "{t}/id"], {}, ["detector.json", "neglable"]),
    ("detect: score not an object", C, ["detect", "{t}/det-score-str", "{t}/id"], {}, ["detector.json", "score"]),
    ("detect: detector.json not JSON", C, ["detect", "{t}/det-badjson", "{t}/id"], {}, ["detector.json", "JSON"]),
    ("detect: unlisted adapter file", C, ["detect", "{t}/det-unlisted", "{t}/id"], {},
     ["extra.safetensors", "not listed"]),
    ("detect: listed file changed", C, ["detect", "{t}/det-changed", "{t}/id"], {}, ["calibration.json", "sha256"]),
    ("detect: --json inside the folder", C, ["detect", "{t}/det-nan", "{t}/id", "--json", "{t}/det-nan/x.json"], {},
     ["--json", "inside the detector folder"]),
    ("detect: --csv onto a folder", C, ["detect", "{t}/det-nan", "{t}/id", "--csv", "{t}/id"], {},
     ["--csv", "is a folder"]),
    ("detect: --threshold nan", C, ["detect", "{t}/det-nan", "{t}/id", "--threshold", "nan"], {}, ["--threshold"]),
    ("detect: --threshold inf", C, ["detect", "{t}/det-nan", "{t}/id", "--threshold", "inf"], {}, ["--threshold"]),
    ("detect: not a detector folder", C, ["detect", "{t}/id", "{t}/id"], {}, ["not a detector folder"]),
    ("detect: hub id offline", C, ["detect", "nobody/no-such-detector", "{t}/id"], {"HF_HUB_OFFLINE": "1"},
     ["nobody/no-such-detector", "HF_HUB_OFFLINE"]),
]


def _write(p: Path, text: str | bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)


def _fake_detector(folder: Path, edit=None, extra: dict | None = None) -> None:
    """A detector folder whose manifest is consistent (the model is never loaded: every case fails before)."""
    meta = {"format": "clipood-detector", "format_version": 1,
            "backbone": {"model": "clipood-mini", "pretrained": None, "identifier": "clipood-mini|x", "embed_dim": 4},
            "preprocessing": {}, "labels": {"id_names": ["a", "b"], "negatives": ["x"], "id_templates": None,
                                            "neg_templates": None},
            "score": {"name": "neglabel", "logit_scale": 100.0, "groups": 1, "temperature": 1.0},
            "threshold": 0.5, "calibration": {}, "batch_size": 8, "adapter": {"folder": "adapter", "requires": []}}
    if edit:
        edit(meta)
    files = {"detector.json": json.dumps(meta), "label_features.safetensors": b"x" * 8,
             "calibration.json": json.dumps({"images": [], "scores": []}),
             "adapter/adapter_config.json": json.dumps({"adapter": "nft"}), "adapter/adapter.safetensors": b"w"}
    for rel, text in files.items():
        _write(folder / rel, text)
    sums = {rel: hashlib.sha256((folder / rel).read_bytes()).hexdigest() for rel in files}
    sums.update(extra or {})
    _write(folder / "checksums.json", json.dumps(sums))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import TrainRunSettings
    from clipood_recipes.signature import run_signature

    t = tmp_path_factory.mktemp("untrusted")
    (t / "a-file").write_text("not a folder\n")
    make_image_folder(t / "id", {"a": (200, 0, 0), "b": (0, 200, 0)}, n=2, size=16)
    make_image_folder(t / "ood", {"x": (0, 0, 200)}, n=2, size=16, pseudo=True)
    make_image_folder(t / "cases", {"Cat": (200, 0, 0), "cat": (0, 200, 0)}, n=1, size=16)
    _write(t / "bomb.yaml", "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                            "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n")
    _write(t / "merge.yaml", "base: &b {seed: 1}\ntrain:\n  <<: *b\n")
    _write(t / "dup.yaml", "seed: 1\nseed: 2\n")
    _write(t / "dup_nested.yaml", "train:\n  lr: 0.1\n  lr: 0.2\n")
    _write(t / "big.yaml", "# " + "x" * (2 << 20) + "\nseed: 1\n")
    _write(t / "deep.yaml", "seed: " + "[" * 200 + "]" * 200 + "\n")
    _write(t / "binary.yaml", b"seed: 1\n\x00\x01\x02")
    _write(t / "latin1.yaml", "method_name: caf\u00e9\n".encode("latin-1"))
    _write(t / "list.yaml", "- seed\n- 1\n")
    _write(t / "c-ok.yaml", "seed: 3\n")
    _write(t / "c-ok2.yaml", "losses:\n  kr: 5\n")
    _write(t / "c1-bad.yaml", "train:\n  lr: fast\n")
    _write(t / "c2-unknown.yaml", "sede: 1\n")
    _write(t / "interp.yaml", "seed: ${oc.env:HOME}\n")
    _write(t / "empty.txt", "# no words here\n\n")
    _write(t / "list-latin1.txt", b"a/a_0.png 0\n\xe9t\xe9/b_0.png 1\n")
    for run, meta in (("locoop-run", {"adapter": "locoop", "context": {"backbone": "clipood-mini"}}),
                      ("nft-run", {"adapter": "nft"}), ("own-run", {"adapter": "nft"}),
                      ("other-bb-run", {"adapter": "coop", "context": {"backbone": "ViT-B-16"}})):
        _write(t / run / "adapter" / "adapter_config.json", json.dumps(meta))
    _write(t / "bad-run" / "adapter" / "adapter_config.json", "{broken")
    step = t / "ckpt-run" / "checkpoints" / "step-000010"
    default = compose_settings(TrainRunSettings, [f"output_dir={t / 'ckpt-run'}", "progress=false"],
                               configs_dir=part1.ROOT / "recipes" / "configs", recipe="krnft")
    for f in ("adapter.safetensors", "optimizer.safetensors", "optimizer.json"):
        _write(step / f, "{}")
    _write(step / "trainer_state.json", json.dumps({"step": 10, "signature": json.loads(json.dumps(
        run_signature(default)))}))
    _write(t / "secret.txt", "secret")
    _fake_detector(t / "det-nosums")
    (t / "det-nosums" / "checksums.json").unlink()
    _fake_detector(t / "det-list")
    _write(t / "det-list" / "checksums.json", "[1, 2]")
    _fake_detector(t / "det-dotdot", extra={"../secret.txt": "0" * 64})
    _fake_detector(t / "det-abs", extra={"/etc/hostname": "0" * 64})
    _fake_detector(t / "det-adapter-out", lambda m: m["adapter"].update(folder="../locoop-run/adapter"))
    _fake_detector(t / "det-nan", lambda m: m.update(threshold=float("nan")))
    _fake_detector(t / "det-inf-scale", lambda m: m["score"].update(logit_scale=float("inf")))
    _fake_detector(t / "det-score", lambda m: m["score"].update(name="neglable"))
    _fake_detector(t / "det-score-str", lambda m: m.update(score="neglabel"))
    _fake_detector(t / "det-badjson")
    _write(t / "det-badjson" / "detector.json", "{not json")
    sums = json.loads((t / "det-badjson" / "checksums.json").read_text())
    sums["detector.json"] = hashlib.sha256(b"{not json").hexdigest()
    _write(t / "det-badjson" / "checksums.json", json.dumps(sums))
    _fake_detector(t / "det-unlisted")
    _write(t / "det-unlisted" / "adapter" / "extra.safetensors", b"y")
    _fake_detector(t / "det-changed")
    _write(t / "det-changed" / "calibration.json", json.dumps({"images": [], "scores": [1.0]}))
    _hf(t)
    return t


def _hf(t: Path) -> None:
    import datasets
    from PIL import Image

    ims = [Image.new("RGB", (8, 8), c) for c in ((200, 0, 0), (0, 200, 0))]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("float32")})
    datasets.Dataset.from_dict({"image": ims, "label": [0.5, 1.0]}, features=feats).save_to_disk(str(t / "hf-float"))
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": ims, "label": ["cat", "dog"]}, features=feats).save_to_disk(str(t / "hf-names"))
    # a label column that is neither names nor integers (no label, then a boolean)
    ds = datasets.Dataset.from_dict({"image": ims, "label": [1.0, 2.5]}, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.Value("float64")}))
    ds = ds.map(lambda r, i: {"label2": [None, True][i]}, with_indices=True).remove_columns("label")
    ds.rename_column("label2", "label").save_to_disk(str(t / "hf-mixed"))


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if not p.is_symlink()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, world, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CLIPOOD_BATTERY_MISSING", raising=False)
    before = _snapshot(world)
    part1.run_case(case, world, tmp_path, monkeypatch, capsys)
    assert _snapshot(world) == before, "the failed run changed the test folder"
    assert not list(tmp_path.rglob(".clipood.lock"))


def test_the_battery_has_at_least_140_cases_in_all():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    assert len(CASES) + len(part1.CASES) >= 140
    assert not {c[0] for c in CASES} & {c[0] for c in part1.CASES}


def test_hf_string_labels_become_class_names_and_bom_lists_read(world, tmp_path):
    """Weak outcomes turned into the right result: an HF label column of names, and image lists saved as UTF-8
    with a byte-order mark or as UTF-16 (Windows tools) are read, labels as written."""
    from clipood.datasets.dataset import build_dataset

    ds = build_dataset({"type": "hf", "path_or_name": str(world / "hf-names"), "from_disk": True})
    assert ds.classnames == ["cat", "dog"] and ds.labels == [0, 1]
    text = "a/a_0.png 0\nb/b_0.png 1\n"
    for enc, bom in (("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff")):
        lst = tmp_path / f"list-{enc}.txt"
        lst.write_bytes(bom + text.encode(enc))
        ds = build_dataset({"type": "imagelist", "root": str(world / "id"), "list_file": str(lst)})
        assert [Path(p).name for p, _ in ds.samples] == ["a_0.png", "b_0.png"] and ds.labels == [0, 1], enc


def test_config_errors_exit_before_torch_is_imported(world):
    """"One line, exit 2, before torch is imported": every config-file and interpolation case above, in one fresh
    interpreter that checks sys.modules after each."""
    import subprocess

    config_cases = [c for c in CASES if c[2] and (c[2][0].startswith(("--config", "config=")) or "${" in " ".join(c[2])
                                                   or "command line" in c[0])]
    assert len(config_cases) >= 20
    script = (
        "import runpy, sys\n"
        "main = runpy.run_path(sys.argv[1], run_name='battery')['main']\n"
        "import json\n"
        "from clipood.errors import ClipoodError\n"
        "out = []\n"
        "for argv in json.loads(sys.argv[2]):\n"
        "    try:\n"
        "        main(argv)\n"
        "        out.append('no error')\n"
        "    except ClipoodError as e:\n"
        "        out.append(('torch' in sys.modules, str(e)))\n"
        "print(json.dumps(out))\n")
    argvs = [[part1._fill(a, world, world / "never") for a in c[2]] + ["progress=false"] for c in config_cases]
    r = subprocess.run([sys.executable, "-c", script, str(part1.ROOT / "recipes" / "krnft.py"), json.dumps(argvs)],
                       capture_output=True, text=True, timeout=300, cwd=part1.ROOT,
                       env={**os.environ, "PYTHONPATH": str(part1.ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout)
    for (name, *_), got in zip(config_cases, results):
        assert got != "no error", name
        assert got[0] is False, f"{name}: torch was imported before the error {got[1]!r}"


@pytest.mark.parametrize("existing", [False, True])
def test_an_unexpected_exception_is_one_line_and_leaves_no_lock(existing, tmp_path, monkeypatch, capsys):
    """Weak outcome: a non-ClipoodError exception gave a traceback and left .clipood.lock behind. Now any
    exception is one line (exit 1: a bug or an unchecked input, not a bad setting), the lock is released and
    removed, and a folder the run created is removed again."""
    import clipood_recipes.krnft
    from clipood.runtime.recipe import run

    def planted(*args, **kwargs):
        raise RuntimeError("planted failure\nsecond line")

    monkeypatch.setattr(clipood_recipes.krnft, "make_accelerator", planted)  # after the folder is claimed
    monkeypatch.delenv("CLIPOOD_TRACEBACK", raising=False)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "results.md").write_text("an earlier run's results\n")
    monkeypatch.setattr(sys, "argv", ["recipes/zeroshot.py", f"output_dir={out}", "progress=false",
                                      f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(SystemExit) as e:
        run(part1._recipe_main(Z))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 1 and len(err) == 1, err
    assert err[0].startswith("error: unexpected RuntimeError at test_refusal_table_untrusted.py:")  # the innermost frame
    assert "planted failure" in err[0]
    assert "CLIPOOD_TRACEBACK=1" in err[0] and "second line" not in err[0]
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["results.md"]
    else:
        assert not out.exists()


def test_the_config_check_knows_every_score():
    """run_checks names the scores without importing torch; they must be clipood.scores' own."""
    from clipood.config.checks import SCORE_NAMES
    from clipood.scores import SCORES

    assert tuple(SCORES) == SCORE_NAMES
