"""A detector folder edited in any way that loading would trust is refused with one line naming the file: a listed
file changed, a manifest line deleted, an unlisted file that loading would read, a path leaving the folder, a
non-finite number, malformed JSON. A killed save is restored; the adapter loader is found without `import adapters`;
``clipood detect`` can skip unreadable images and never writes into the detector folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import ROOT, make_image_folder, perturb, run_script

from clipood.errors import ClipoodError

NAMES = ["circle", "star", "heart"]
NEGS = ["river", "stone", "cloud", "table"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A detector with a trained-looking NFT adapter on the shipped mini CLIP, saved once."""
    import adapters
    import clipood

    root = tmp_path_factory.mktemp("det")
    bb = clipood.load_clip("clipood-mini")
    C = torch.cat([bb.encode_text(NAMES, templates=["a photo of a {}."]), bb.encode_text(NEGS)]).float()
    torch.manual_seed(0)
    nft = perturb(adapters.NFT(C, len(NAMES), hidden_dim=8), scale=0.2)
    det = clipood.Detector(bb, C, NAMES, negatives=NEGS, adapter=nft, info={"model": "clipood-mini"})
    images = make_image_folder(root / "images", {"a": (220, 30, 30), "b": (30, 30, 220)}, n=2, size=32)
    det.calibrate(det(str(images)).scores, 0.5)
    det.save_pretrained(root / "detector")
    return root


@pytest.fixture
def folder(saved, tmp_path):
    d = tmp_path / "detector"
    shutil.copytree(saved / "detector", d)
    return d


def _rehash(folder: Path, drop: tuple = ()) -> None:
    """Recompute checksums.json for its listed files (an edit made by someone who knows the format)."""
    from clipood.detector_folder import sha256_file

    sums = json.loads((folder / "checksums.json").read_text())
    sums = {rel: sha256_file(folder / rel) for rel in sums if rel not in drop}
    (folder / "checksums.json").write_text(json.dumps(sums))


def _edit_meta(folder: Path, edit) -> None:
    meta = json.loads((folder / "detector.json").read_text())
    edit(meta)
    (folder / "detector.json").write_text(json.dumps(meta))
    _rehash(folder)


def _refused(folder: Path, *needles: str) -> str:
    import clipood

    with pytest.raises(ClipoodError) as e:
        clipood.Detector.from_pretrained(folder)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_the_saved_folder_loads_and_scores(saved, folder):
    import clipood

    det = clipood.Detector.from_pretrained(folder)
    assert det.adapter is not None and det.threshold is not None
    r = det(str(saved / "images"))
    assert len(r.scores) == 4 and torch.isfinite(r.scores).all()


def test_zeroed_adapter_weights_with_their_line_deleted_are_refused(folder):
    """Bad outcome: zeroing the adapter weights and deleting their checksums line flipped scores, exit 0."""
    from safetensors.torch import load_file, save_file

    w = folder / "adapter" / "adapter.safetensors"
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(w)).items()}, str(w))
    _rehash(folder, drop=("adapter/adapter.safetensors",))
    _refused(folder, "adapter.safetensors", "not listed", "checksums.json")


def test_a_listed_file_changed_is_refused(folder):
    p = folder / "label_features.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    _refused(folder, "label_features.safetensors", "sha256")


def test_an_unlisted_file_that_loading_would_read_is_refused(folder):
    shutil.copy(folder / "adapter" / "adapter.safetensors", folder / "adapter" / "extra.safetensors")
    _refused(folder, "extra.safetensors", "not listed")


@pytest.mark.parametrize("entry", ["/etc/hostname", "../outside.txt", "adapter/../../outside.txt", "~/x"])
def test_manifest_entries_outside_the_folder_are_refused_before_hashing(entry, folder, monkeypatch):
    """Bad outcome: absolute or ../ entries were read and hashed (a hash oracle over the machine)."""
    import clipood.detector_folder as df

    (folder.parent / "outside.txt").write_text("secret")
    sums = json.loads((folder / "checksums.json").read_text())
    sums[entry] = "0" * 64
    (folder / "checksums.json").write_text(json.dumps(sums))
    hashed = []
    real = df.sha256_file
    monkeypatch.setattr(df, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    _refused(folder, "checksums.json", repr(entry))
    assert hashed == []  # nothing hashed at all: the entries are checked before any file is read


def test_a_symlinked_entry_leaving_the_folder_is_refused(folder):
    (folder.parent / "outside.bin").write_bytes(b"x")
    os.symlink(folder.parent / "outside.bin", folder / "adapter" / "linked.bin")
    sums = json.loads((folder / "checksums.json").read_text())
    sums["adapter/linked.bin"] = "0" * 64
    (folder / "checksums.json").write_text(json.dumps(sums))
    _refused(folder, "leads outside the detector folder")


@pytest.mark.parametrize("where", ["../adapter-elsewhere", "/tmp", "adapter/../.."])
def test_an_adapter_folder_outside_the_detector_is_refused(where, folder):
    """Bad outcome: detector.json could point the adapter folder outside the detector (loaded without hash)."""
    shutil.copytree(folder / "adapter", folder.parent / "adapter-elsewhere")
    _edit_meta(folder, lambda m: m["adapter"].update(folder=where))
    _refused(folder, "detector.json", "adapter.folder")


NON_FINITE = [
    ("threshold NaN", lambda m: m.update(threshold=float("nan")), "threshold"),
    ("threshold +inf", lambda m: m.update(threshold=float("inf")), "threshold"),
    ("threshold -inf", lambda m: m.update(threshold=float("-inf")), "threshold"),
    ("logit_scale NaN", lambda m: m["score"].update(logit_scale=float("nan")), "logit_scale"),
    ("logit_scale inf", lambda m: m["score"].update(logit_scale=float("inf")), "logit_scale"),
    ("logit_scale 0", lambda m: m["score"].update(logit_scale=0), "logit_scale"),
    ("temperature NaN", lambda m: m["score"].update(temperature=float("nan")), "temperature"),
]
MALFORMED = [
    ("score not an object", lambda m: m.update(score="neglabel"), "score"),
    ("score unknown", lambda m: m["score"].update(name="neglable"), "neglabel"),
    ("groups text", lambda m: m["score"].update(groups="2"), "groups"),
    ("groups above the negatives", lambda m: m["score"].update(groups=5), "groups"),
    ("groups 0", lambda m: m["score"].update(groups=0), "groups"),
    ("batch_size 0", lambda m: m.update(batch_size=0), "batch_size"),
    ("batch_size float", lambda m: m.update(batch_size=2.5), "batch_size"),
    ("id_names missing", lambda m: m["labels"].pop("id_names"), "id_names"),
    ("id_names empty name", lambda m: m["labels"].update(id_names=["circle", "", "heart"]), "id_names"),
    ("id_names duplicate", lambda m: m["labels"].update(id_names=["circle", "Circle", "heart"]), "unique"),
    ("negatives not a list", lambda m: m["labels"].update(negatives="river"), "negatives"),
    ("labels missing", lambda m: m.pop("labels"), "labels"),
    ("backbone model missing", lambda m: m["backbone"].pop("model"), "model"),
    ("embed_dim text", lambda m: m["backbone"].update(embed_dim="128"), "embed_dim"),
    ("adapter folder a number", lambda m: m["adapter"].update(folder=3), "folder"),
    ("adapter a list", lambda m: m.update(adapter=["adapter"]), "adapter"),
    ("format_version text", lambda m: m.update(format_version="1"), "format version"),
    ("calibration a list", lambda m: m.update(calibration=[1]), "calibration"),
    ("not an object", lambda m: (m.clear(), m.update(x=1)), "format"),
]


@pytest.mark.parametrize("case", NON_FINITE + MALFORMED, ids=[c[0] for c in NON_FINITE + MALFORMED])
def test_detector_json_schema(case, folder):
    """Bad outcomes: a NaN / inf threshold or scale loaded and scored; malformed JSON gave TypeError / KeyError /
    AttributeError tracebacks. Now each is one line naming detector.json and the key."""
    _, edit, needle = case
    _edit_meta(folder, edit)
    _refused(folder, "detector.json", needle)


@pytest.mark.parametrize("text, needle", [
    ("[1, 2]", "checksums.json"), ('{"detector.json": "abc"}', "checksums.json"), ("{not json", "not valid JSON"),
    ("", "not valid JSON")])
def test_malformed_checksums_json(text, needle, folder):
    (folder / "checksums.json").write_text(text)
    _refused(folder, needle)


@pytest.mark.parametrize("data, needle", [
    ({"images": [], "scores": ["a"]}, "scores"), ({"images": ["a.png"], "scores": [1.0, 2.0]}, "2 scores"),
    ([1, 2], "object"), ({"images": "a.png", "scores": []}, "images"), ({"images": [], "scores": [float("nan")]},
                                                                        "scores")])
def test_malformed_calibration_json(data, needle, folder):
    (folder / "calibration.json").write_text(json.dumps(data))
    _rehash(folder)
    _refused(folder, "calibration.json", needle)


def test_a_label_list_that_does_not_match_the_features_is_refused(folder):
    _edit_meta(folder, lambda m: m["labels"].update(negatives=NEGS[:-1], id_names=NAMES))
    _refused(folder, "label_features.safetensors", "labels")


def test_a_save_killed_between_its_two_renames_is_restored(saved, tmp_path):
    """The first rename moved the old folder aside, the process died before the second: the next load puts the
    old folder back (and a completed save's leftover is removed)."""
    import clipood

    target = tmp_path / "detector"
    shutil.copytree(saved / "detector", target)
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal
        import clipood
        det = clipood.Detector.from_pretrained({str(target)!r})
        calls = []
        real = os.replace
        def replace(a, b):
            calls.append(b)
            if str(a) == {str(target)!r}:
                real(a, b)
                os.kill(os.getpid(), signal.SIGKILL)   # killed between moving the old folder aside and the new in
            return real(a, b)
        os.replace = replace
        det.save_pretrained({str(target)!r})
    """))
    r = run_script([str(script)])
    assert r.returncode == -9, r.stderr[-2000:]
    assert not target.exists() and list(tmp_path.glob(".detector.old-*"))
    det = clipood.Detector.from_pretrained(target)  # restored, and loads
    assert det.adapter is not None and target.is_dir() and not list(tmp_path.glob(".detector.old-*"))
    stale = tmp_path / ".detector.old-999999999"  # a completed save's leftover of a dead writer
    shutil.copytree(target, stale)
    clipood.Detector.from_pretrained(target)
    assert not stale.exists()


def test_from_pretrained_needs_no_import_of_adapters(folder):
    """Bad outcome: loading a detector with an adapter stopped with "run `import adapters` before ...". The
    installed entry point (group clipood.detector_io) registers the loader; the core names no method package."""
    code = textwrap.dedent(f"""
        import sys
        import clipood
        assert "adapters" not in sys.modules
        det = clipood.Detector.from_pretrained({str(folder)!r})
        print(type(det.adapter).__name__)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "NFT"


def test_detect_skips_unreadable_images_when_asked(saved, folder, tmp_path, capsys):
    """Weak outcome: one bad file of 11 stopped `clipood detect`. Now the error names the option, and with it the
    other 10 are scored and the bad one is listed."""
    from clipood_recipes.cli import main

    imgs = tmp_path / "imgs"
    make_image_folder(imgs, {"x": (200, 100, 30)}, n=10, size=32)
    (imgs / "x" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(SystemExit) as e:
        main(["detect", str(folder), str(imgs)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "broken.png" in err[0] and "--skip-unreadable" in err[0]
    out_json = tmp_path / "scores.json"
    main(["detect", str(folder), str(imgs), "--skip-unreadable", "--json", str(out_json)])
    data = json.loads(out_json.read_text())
    assert len(data["rows"]) == 10 and [Path(p).name for p in data["skipped"]] == ["broken.png"]
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().out


@pytest.mark.parametrize("target", ["detector.json", "adapter/new.json", "."])
def test_detect_never_writes_into_the_detector_folder(target, saved, folder, capsys):
    from clipood_recipes.cli import main

    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as e:
        main(["detect", str(folder), str(saved / "images"), "--json", str(folder / target)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and ("inside the detector folder" in err or "is a folder" in err), err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
