"""The README's "Your own data" commands as a new user pastes them: into a shell, in a folder outside the
repository that holds ``mydata/``, through the installed ``clipood`` command, with no data root set.

The commands are read from README.md, not copied here, so a README edit that breaks them fails this test. Each
training / evaluation command gets a few ``key=value`` pairs appended (a later value wins): the README's
``model=ViT-B-16 pretrained=openai`` cannot be downloaded on an offline test machine, so the run uses the shipped
``clipood-mini`` and a tiny word list and a few steps instead; everything else, paths included, is as printed.
The ``clipood detect`` commands run exactly as printed.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import ROOT, make_image_folder
from PIL import Image

#: appended to the pasted eval / train commands: offline and seconds long (see the module docstring)
OFFLINE = ["model=clipood-mini", "pretrained=null", "negatives.corpus=words.txt", "negatives.num=4",
           "progress=false"]
FEW_STEPS = ["shots=2", "crops.num_crops=4", "crops.num_selected=2", "train.batch_size=2", "train.max_steps=2"]
CLASSES = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def readme_commands(section: str = "## Your own data") -> list[str]:
    """Every shell command of the README section's ```bash blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    part = text.split(section, 1)[1].split("\n## ", 1)[0]
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", part, flags=re.S):
        cmds += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return cmds


def _flat(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(folder / f"img{i}.png")


def _shell(cmd: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_readme_own_data_commands_run_as_pasted_outside_the_repository(tmp_path):
    cmds = readme_commands()
    kinds = [c.split()[:2] for c in cmds]
    assert kinds == [["clipood", "eval"], ["clipood", "train"], ["clipood", "detect"], ["clipood", "detect"]], cmds
    work = tmp_path / "work"          # not below the repository: nothing resolves against it by accident
    assert ROOT not in work.parents
    make_image_folder(work / "mydata" / "train", CLASSES, n=3, size=32, seed=1)
    make_image_folder(work / "mydata" / "test", CLASSES, n=3, size=32, seed=2)
    _flat(work / "mydata" / "ood", 4, seed=3)       # flat, as the README's layout shows
    _flat(work / "new_photos", 2, seed=4)
    Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(work / "one_more.jpg")
    (work / "words.txt").write_text("apple\nriver\nstone\ncloud\ntable\nshiny\n")

    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "clipood").is_file(), f"no clipood command next to {sys.executable}: pip install -e ."
    env = {k: v for k, v in os.environ.items() if k not in ("CLIPOOD_DATA", "PYTHONPATH")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               CLIPOOD_THREADS="1", CLIPOOD_CACHE=str(tmp_path / "cache"))

    zs, train, detect_table, detect_csv = cmds
    r = _shell(" ".join([zs, *OFFLINE]), work, env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = work / "outputs" / "mydata-zeroshot"          # output_dir relative to the current folder
    md = (out / "results.md").read_text()
    assert "clipood-mini is the tiny CLIP of the embedded mini world" in md      # said, not silent
    assert "custom data: ID mydata/test" in md and "2 ID classes" in md
    rows = json.loads((out / "results.json").read_text())
    assert {r_["dataset"] for r_ in rows} >= {"ood", "average"}

    r = _shell(" ".join([train, *OFFLINE, *FEW_STEPS]), work, env)
    assert r.returncode == 0, r.stderr[-3000:]
    run = work / "outputs" / "mydata-krnft"
    assert (run / "detector" / "detector.json").is_file() and "CPU threads: " in (run / "results.md").read_text()

    r = _shell(detect_table, work, env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == ["new_photos/img0.png", "new_photos/img1.png",
                                                         "one_more.jpg"], r.stdout
    assert lines[-1].startswith("3 image(s)"), r.stdout
    r = _shell(detect_csv, work, env)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(work / "scores.csv") as f:
        scored = list(csv.DictReader(f))
    assert len(scored) == 2 and all(row["class"] in CLASSES for row in scored)
