"""Two runs sharing one data root and cache directory at the same time do not corrupt each other."""
import json
import os
import subprocess
import sys

from helpers import ROOT

from clipood.io import load_safetensors
from clipood.runtime.run_lock import LOCK_NAME

SMALL = ["mini.train_per_class=4", "mini.test_per_class=6", "mini.ood_per_set=10", "mini.style_per_class=3",
         "mini.seed=5", "progress=false", "eval.mcm=false"]


def test_two_concurrent_runs_share_caches_safely(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPOOD_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = [f"mini.root={tmp_path / 'worlds'}", f"cache_dir={tmp_path / 'cache'}", *SMALL]
    procs = [subprocess.Popen([sys.executable, "recipes/zeroshot.py", *common, f"output_dir={tmp_path / f'o{i}'}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    r0 = json.loads((tmp_path / "o0" / "results.json").read_text())
    r1 = json.loads((tmp_path / "o1" / "results.json").read_text())
    assert r0 == r1
    # one complete world, no temporary folders or files left anywhere
    worlds = [p for p in (tmp_path / "worlds").iterdir()]
    assert len(worlds) == 1 and (worlds[0] / "manifest.json").is_file()
    leftovers = [p for p in tmp_path.rglob("*") if (p.name.startswith(".") or p.name.endswith(".tmp"))
                 and p.name != LOCK_NAME]  # each output folder keeps its (released) run lock
    assert not leftovers, leftovers
    # every cache file is complete and readable
    caches = list((tmp_path / "cache" / "features").glob("*.safetensors"))
    assert caches
    for c in caches:
        assert load_safetensors(c)["features"].ndim == 2
