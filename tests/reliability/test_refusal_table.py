"""The bad-input battery (issue "From research runs to a detector people can use"): one table of bad settings,
environment variables and paths, each driven through a real entry point in-process (``recipes/krnft.py``,
``recipes/zeroshot.py`` or the ``clipood`` command line, through the same ``run`` / ``main`` wrappers that turn an
error into one line and exit status 2).

Every case asserts: exit status 2; stderr is exactly one ``error: ...`` line; that line names the key, the
variable or the file (the needles); no traceback; nothing half-written (the run's output folder does not exist
afterwards, or holds only what was there before; no temporary file anywhere under the test folder). Loading a
model or building the mini world would be expensive work: both are replaced by a function that fails the test,
so each case also shows that its check comes before any of it.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, make_image_folder

#: (id, entry point, argv, environment, needles); ``{t}`` in argv / env is the test's folder, ``{out}`` its
#: output folder (passed as output_dir unless the case gives its own)
K, Z, C = "krnft", "zeroshot", "cli"
CASES = [
    # ---------------------------------------------------------------- eval.*
    ("eval.logit_scale=abc", K, ["eval.logit_scale=abc"], {}, ["eval.logit_scale", "abc"]),
    ("eval.logit_scale negative", K, ["eval.logit_scale=-1"], {}, ["eval.logit_scale", "positive"]),
    ("eval.logit_scale zero", Z, ["eval.logit_scale=0"], {}, ["eval.logit_scale"]),
    ("eval.batch_size=0", K, ["eval.batch_size=0"], {}, ["eval.batch_size", ">= 1"]),
    ("eval.batch_size text", Z, ["eval.batch_size=many"], {}, ["eval.batch_size"]),
    ("eval.groups=0", K, ["eval.groups=0"], {}, ["eval.groups"]),
    ("eval.groups > negatives", K, ["eval.groups=41"], {}, ["eval.groups", "negatives.num"]),
    ("eval.score unknown", K, ["eval.score=neglable"], {}, ["neglable", "neglabel"]),
    ("eval.convention unknown", Z, ["eval.convention=imagenet"], {}, ["eval.convention"]),
    ("eval.plots not a bool", Z, ["eval.plots=maybe"], {}, ["eval.plots"]),
    ("eval unknown key", K, ["eval.logit_scal=50"], {}, ["eval.logit_scal", "did you mean 'eval.logit_scale'"]),
    # ---------------------------------------------------------------- grouping, shots, seed, losses
    ("cls_groups=abc", K, ["cls_groups=abc"], {}, ["cls_groups", "abc"]),
    ("cls_groups=0", K, ["cls_groups=0"], {}, ["cls_groups"]),
    ("ood_groups negative", K, ["ood_groups=-2"], {}, ["ood_groups"]),
    ("shots negative", K, ["shots=-1"], {}, ["shots"]),
    ("seed negative", K, ["seed=-1"], {}, ["seed=-1"]),
    ("seed text", Z, ["seed=abc"], {}, ["'seed'"]),
    ("losses.kr negative", K, ["losses.kr=-1"], {}, ["losses.kr"]),
    ("losses.cls text", K, ["losses.cls=abc"], {}, ["losses.cls"]),
    ("all loss weights 0", K, ["losses.cls=0", "losses.ood=0", "losses.kr=0"], {}, ["losses.cls"]),
    # ---------------------------------------------------------------- negatives.*
    ("negatives.num=0", K, ["negatives.num=0"], {}, ["negatives.num"]),
    ("negatives.num negative", Z, ["negatives.num=-5"], {}, ["negatives.num"]),
    ("negatives.num text", K, ["negatives.num=lots"], {}, ["negatives.num"]),
    ("negatives.fraction=0", Z, ["negatives.fraction=0"], {}, ["negatives.fraction"]),
    ("negatives.fraction > 1", K, ["negatives.fraction=1.5"], {}, ["negatives.fraction"]),
    ("negatives.quantile > 1", K, ["negatives.quantile=2"], {}, ["negatives.quantile"]),
    ("negatives.quantile < 0", Z, ["negatives.quantile=-0.1"], {}, ["negatives.quantile"]),
    ("id_template unknown field", K, ["negatives.id_template=a photo of {foo}"], {},
     ["negatives.id_template", "{foo}"]),
    ("noun_template no placeholder", Z, ["negatives.noun_template=a photo"], {}, ["negatives.noun_template"]),
    ("adj_template two placeholders", K, ["negatives.adj_template=a {} {} thing"], {}, ["negatives.adj_template"]),
    ("id_template lone brace", Z, ["negatives.id_template=a {} {"], {}, ["negatives.id_template"]),
    ("negatives.corpus missing file", K, ["negatives.corpus={t}/words.txt"], {}, ["negatives.corpus", "words.txt"]),
    # ---------------------------------------------------------------- mini.*
    ("mini.seed negative", K, ["mini.seed=-1"], {}, ["mini.seed"]),
    ("mini.seed text", Z, ["mini.seed=first"], {}, ["mini.seed"]),
    ("mini.train_per_class=0", K, ["mini.train_per_class=0"], {}, ["mini.train_per_class"]),
    ("mini.test_per_class negative", Z, ["mini.test_per_class=-3"], {}, ["mini.test_per_class"]),
    ("mini.ood_per_set text", K, ["mini.ood_per_set=abc"], {}, ["mini.ood_per_set"]),
    ("mini.style_per_class=0", Z, ["mini.style_per_class=0"], {}, ["mini.style_per_class"]),
    ("mini.root is a file", K, ["mini.root={t}/a-file"], {}, ["mini.root", "a-file"]),
    ("mini unknown key", K, ["mini.sede=1"], {}, ["mini.sede", "did you mean 'mini.seed'"]),
    # ---------------------------------------------------------------- crops.* and train.*
    ("crops.prompt unknown field", K, ["crops.prompt=a {} of {bar}"], {}, ["crops.prompt", "{bar}"]),
    ("crops.num_crops=0", K, ["crops.num_crops=0"], {}, ["num_crops"]),
    ("crops 2Q > P", K, ["crops.num_crops=8", "crops.num_selected=5"], {}, ["num_selected"]),
    ("crops.scale reversed", K, ["crops.scale=[0.9,0.1]"], {}, ["scale"]),
    ("crops.grayscale_p > 1", K, ["crops.grayscale_p=2"], {}, ["grayscale_p"]),
    ("train.lr negative", K, ["train.lr=-0.1"], {}, ["train.lr"]),
    ("train.lr text", K, ["train.lr=fast"], {}, ["train.lr"]),
    ("train.epochs=0", K, ["train.epochs=0"], {}, ["train.epochs"]),
    ("train.batch_size=0", K, ["train.batch_size=0"], {}, ["train.batch_size"]),
    ("train.warmup_steps negative", K, ["train.warmup_steps=-1"], {}, ["train.warmup_steps"]),
    ("warm-up longer than training", K, ["train.max_steps=5", "train.warmup_steps=10"], {},
     ["train.warmup_steps=10", "train.max_steps=5"]),
    ("train.optimizer unknown", K, ["train.optimizer=adam"], {}, ["train.optimizer"]),
    ("train.schedule unknown", K, ["train.schedule=linear"], {}, ["train.schedule"]),
    ("train.keep_checkpoints=0", K, ["train.keep_checkpoints=0"], {}, ["train.keep_checkpoints"]),
    ("train.grad_clip negative", K, ["train.grad_clip=-1"], {}, ["train.grad_clip"]),
    ("adapter.name unknown", K, ["adapter.name=nfft"], {}, ["nfft", "nft"]),
    # ---------------------------------------------------------------- config files and command lines
    ("preset unknown", K, ["preset=papr"], {}, ["papr", "paper"]),
    ("--config missing", K, ["--config", "{t}/missing.yaml"], {}, ["missing.yaml"]),
    ("--config bad YAML", K, ["--config", "{t}/bad.yaml"], {}, ["bad.yaml", "line"]),
    ("argument without =", K, ["lr0.1"], {}, ["lr0.1", "key=value"]),
    ("benchmark unknown", Z, ["benchmark=imagenett"], {}, ["imagenett", "imagenet"]),
    # ---------------------------------------------------------------- environment variables
    ("CLIPOOD_THREADS text", K, [], {"CLIPOOD_THREADS": "many"}, ["CLIPOOD_THREADS", "many"]),
    ("CLIPOOD_THREADS=0", Z, [], {"CLIPOOD_THREADS": "0"}, ["CLIPOOD_THREADS"]),
    ("OMP_NUM_THREADS garbage", K, [], {"OMP_NUM_THREADS": "4x"}, ["OMP_NUM_THREADS", "4x"]),
    ("CLIPOOD_DATA is a file", K, [], {"CLIPOOD_DATA": "{t}/a-file"}, ["CLIPOOD_DATA", "a-file"]),
    ("CLIPOOD_CACHE is a file", Z, [], {"CLIPOOD_CACHE": "{t}/a-file"}, ["CLIPOOD_CACHE", "a-file"]),
    ("cache_dir is a file", K, ["cache_dir={t}/a-file"], {}, ["cache_dir", "a-file"]),
    # ---------------------------------------------------------------- output folders
    ("output_dir is a file", K, ["output_dir={t}/a-file"], {}, ["output_dir", "a-file", "is a file"]),
    ("output_dir below a file", Z, ["output_dir={t}/a-file/run"], {}, ["output_dir", "lies below", "a-file"]),
    ("output_dir not writable", K, ["output_dir=/proc/clipood-battery/run"], {}, ["output_dir", "not writable"]),
    ("output_dir of a running run", K, ["output_dir={t}/busy"], {}, ["another run", "busy", "output_dir"]),
    # ---------------------------------------------------------------- data (custom folders, data roots, labels)
    ("custom: ID folder missing", Z, ["benchmark=custom", "id_data.path={t}/nope", "ood_data.o.path={t}/ood"], {},
     ["nope"]),
    ("custom: no ood_data", Z, ["benchmark=custom", "id_data.path={t}/id"], {}, ["ood_data"]),
    ("custom: flat ID folder", Z, ["benchmark=custom", "id_data.path={t}/ood/images", "ood_data.o.path={t}/ood"],
     {}, ["images", "class sub-folders"]),
    ("custom: unknown WordNet IDs", Z, ["benchmark=custom", "id_data.path={t}/wnid", "ood_data.o.path={t}/ood"],
     {}, ["WordNet IDs", "n99999991", "id_data.classnames"]),
    ("ID label below 0", Z, ["benchmark=custom", "id_data.type=imagelist", "id_data.list_file={t}/list.txt",
                             "id_data.root={t}/id", "ood_data.o.path={t}/ood"], {}, ["id_data", "label -1 in", "list.txt is below 0"]),
    ("data_root is a file", Z, ["benchmark=imagenet", "data_root={t}/a-file"], {}, ["data root", "a-file"]),
    ("no data root", Z, ["benchmark=imagenet"], {"CLIPOOD_DATA": ""}, ["the current folder", "CLIPOOD_DATA"]),
    ("suite data missing", K, ["preset=paper", "data_root={t}/data"], {}, ["imagenet", "missing"]),
    ("classes empty", Z, ["benchmark=imagenet", "data_root={t}/data", "classes=[]"], {}, ["classes"]),
    ("init_adapter missing", K, ["init_adapter={t}/no-adapter"], {}, ["no-adapter"]),
    # ---------------------------------------------------------------- the clipood command line
    ("clipood eval logit scale", C, ["eval", "eval.logit_scale=-5"], {}, ["eval.logit_scale"]),
    ("clipood eval template", C, ["eval", "negatives.id_template=the {name}"], {}, ["negatives.id_template"]),
    ("clipood mine quantile", C, ["mine", "negatives.quantile=5"], {}, ["negatives.quantile"]),
    ("clipood mine CLIPOOD_THREADS", C, ["mine"], {"CLIPOOD_THREADS": "-1"}, ["CLIPOOD_THREADS"]),
    ("clipood build-mini seed", C, ["build-mini", "seed=abc"], {}, ["seed"]),
    ("clipood detect missing images", C, ["detect", "{t}/no-detector", "{t}/no-images"], {}, ["no-images"]),
    ("clipood unknown command", C, ["evaluate"], {}, ["evaluate", "eval"]),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files the cases point at: a plain file, a bad YAML file, small image folders, an image list."""
    t = tmp_path_factory.mktemp("battery")
    (t / "a-file").write_text("not a folder\n")
    (t / "bad.yaml").write_text("train:\n  lr: [1, 2\n")
    make_image_folder(t / "id", {"a": (200, 0, 0), "b": (0, 200, 0)}, n=2, size=16)
    make_image_folder(t / "ood", {"x": (0, 0, 200)}, n=2, size=16, pseudo=True)
    make_image_folder(t / "wnid", {"n99999991": (200, 0, 0), "n99999992": (0, 200, 0)}, n=1, size=16)
    (t / "list.txt").write_text("a/a_0.png 0\nb/b_0.png -1\n")
    (t / "data").mkdir()
    return t


def _fill(v: str, t: Path, out: Path) -> str:
    return v.replace("{t}", str(t)).replace("{out}", str(out))


def _temps(folder: Path) -> list[Path]:
    from clipood.io import _TEMP

    return [p for p in folder.rglob("*") if _TEMP.match(p.name) or p.name.endswith(".tmp")]


def _expensive(*args, **kwargs):
    raise AssertionError("expensive work reached (model loading or the mini world build) before the error")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, world, tmp_path, monkeypatch, capsys):
    run_case(case, world, tmp_path, monkeypatch, capsys)


def run_case(case, world: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Drive one case through its entry point and check the battery's contract (the module docstring)."""
    import clipood.clip.backbone
    import clipood.mini.build
    from clipood.runtime.recipe import run

    name, entry, argv, env, needles = case
    out = tmp_path / "out"
    argv = [_fill(a, world, out) for a in argv]
    for k, v in {"CLIPOOD_THREADS": "1", "CLIPOOD_CACHE": str(tmp_path / "cache"),
                 "CLIPOOD_DATA": str(tmp_path / "data"), **env}.items():
        monkeypatch.setenv(k, _fill(v, world, out))
    monkeypatch.setattr(clipood.clip.backbone, "load_clip", _expensive)
    monkeypatch.setattr(clipood.mini.build, "build_world", _expensive)
    holder = None
    if name == "output_dir of a running run":  # another process holds the run lock of that folder
        holder = _hold_lock(world / "busy")
    before = sorted(p.name for p in (world / "busy").iterdir()) if holder else None
    if entry != C or argv[0] in ("eval", "mine"):  # a run: into the test's folder, no progress bars (put first:
        head = 1 if entry == C else 0            # a case may end on a bare --config)
        extra = ([] if any(a.startswith("output_dir=") for a in argv) else [f"output_dir={out}"]) + ["progress=false"]
        argv = argv[:head] + extra + argv[head:]
    t0 = time.process_time()
    try:
        with pytest.raises(SystemExit) as e:
            if entry == C:
                from clipood_recipes.cli import main

                main(argv)
            else:
                main = _recipe_main(entry)
                monkeypatch.setattr(sys, "argv", [f"recipes/{entry}.py", *argv])
                run(main)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    assert not out.exists(), f"{out} was created by a run that failed: {list(out.rglob('*'))}"
    if before is not None:
        assert sorted(p.name for p in (world / "busy").iterdir()) == before
    assert not _temps(tmp_path) and not _temps(world)
    assert time.process_time() - t0 < 30  # a check, not a run


_MAINS: dict = {}


def _recipe_main(entry: str):
    """``main`` of ``recipes/<entry>.py`` (a script, not a module: read with runpy, not run as __main__)."""
    import runpy

    if entry not in _MAINS:
        _MAINS[entry] = runpy.run_path(str(ROOT / "recipes" / f"{entry}.py"), run_name="battery")["main"]
    return _MAINS[entry]


def _hold_lock(folder: Path) -> subprocess.Popen:
    from clipood.runtime.run_lock import LOCK_NAME

    folder.mkdir(exist_ok=True)
    code = ("import sys; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder / LOCK_NAME)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_battery_is_big_enough():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


def test_config_key_of_every_section_is_covered():
    """Every section the issue names (mini, negatives, eval, train) and the environment have cases."""
    keys = " ".join(a for c in CASES for a in c[2]) + " " + " ".join(k for c in CASES for k in c[3])
    for part in ("mini.", "negatives.", "eval.", "train.", "CLIPOOD_DATA", "CLIPOOD_CACHE", "CLIPOOD_THREADS",
                 "output_dir="):
        assert part in keys, part
