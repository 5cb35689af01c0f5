"""The embedded mini world: determinism, splits, corpus, render on demand, and the shipped tiny CLIP."""
import hashlib

import numpy as np
import torch
from PIL import Image

from clipood.mini.build import MiniWorldConfig, assign_shapes, build_world, load_manifest, render_label
from clipood.mini.shapes import SHAPE_NAMES
from clipood.mini.world import BACKGROUNDS, COLOURS, STYLES, caption, render, sample_scene

SMALL = dict(train_per_class=2, test_per_class=2, ood_per_set=3, style_per_class=1,
             distractor_nouns=20, distractor_adjectives=5)


def _digest(folder):
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*.png"))
    for p in files:
        h.update(str(p.relative_to(folder)).encode())
        h.update(p.read_bytes())
    return h.hexdigest(), len(files)


def test_world_size_meets_spec():
    assert len(SHAPE_NAMES) >= 30 and len(COLOURS) >= 8 and len(BACKGROUNDS) >= 8 and len(STYLES) >= 4


def test_render_is_deterministic_and_seed_dependent():
    a = render(sample_scene(np.random.default_rng(5), style="sketch"), 64)
    b = render(sample_scene(np.random.default_rng(5), style="sketch"), 64)
    c = render(sample_scene(np.random.default_rng(6), style="sketch"), 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_same_seed_builds_byte_identical_worlds(tmp_path):
    cfg = MiniWorldConfig(seed=3, **SMALL)
    w1 = build_world(cfg, root=tmp_path / "a", progress=False)
    w2 = build_world(cfg, root=tmp_path / "b", progress=False)
    d1, n1 = _digest(w1)
    d2, n2 = _digest(w2)
    expected = (10 * (2 + 2 + 3 * 1)) + 10 * 2 + 2 * 4 * 3  # base train/test/styles + new test + 2×4 OOD sets
    assert n1 == n2 == expected and d1 == d2
    assert (w1 / "corpus.tsv").read_bytes() == (w2 / "corpus.tsv").read_bytes()
    # reuse: a second build returns the same folder without rewriting it
    mtime = (w1 / "manifest.json").stat().st_mtime_ns
    assert build_world(cfg, root=tmp_path / "a", progress=False) == w1
    assert (w1 / "manifest.json").stat().st_mtime_ns == mtime


def test_other_seed_gives_other_world(tmp_path):
    a = assign_shapes(0)
    b = assign_shapes(1)
    assert a != b
    for s in (a, b):
        allv = s["base"] + s["new"] + s["ood"] + s["rare"]
        assert sorted(allv) == sorted(SHAPE_NAMES) and len(s["base"]) == 10 and len(s["new"]) == 10
    w0 = build_world(MiniWorldConfig(seed=0, **SMALL), root=tmp_path, progress=False)
    w1 = build_world(MiniWorldConfig(seed=1, **SMALL), root=tmp_path, progress=False)
    assert w0 != w1 and _digest(w0)[0] != _digest(w1)[0]
    m = load_manifest(w1)
    assert sorted(p.name for p in (w1 / "base" / "test").iterdir()) == m["shapes"]["base"]


def test_corpus_names_ood_shapes_but_not_rare_ones(tmp_path):
    w = build_world(MiniWorldConfig(seed=2, **SMALL), root=tmp_path, progress=False)
    m = load_manifest(w)
    words = {line.split("\t")[0] for line in (w / "corpus.tsv").read_text().splitlines() if not line.startswith("#")}
    assert set(m["shapes"]["ood"]) <= words
    assert not set(m["shapes"]["rare"]) & words
    assert {"red", "striped"} <= words and len(words) > 40


def test_captions_use_real_words():
    rng = np.random.default_rng(0)
    vocab = set(SHAPE_NAMES) | set(COLOURS) | set(BACKGROUNDS) | {
        "a", "an", "of", "on", "photo", "outline", "sketch", "painting", "drawing", "pencil", "line", "background",
        "texture", "pattern", "noise", "random", "blurry", "and", "many", "small", "shapes", "more"}
    for i in range(200):
        sc = sample_scene(rng, style=STYLES[i % 4], kind=["object", "texture", "clutter", "noise"][i % 4])
        for w in caption(sc, rng).replace(".", "").replace(",", "").split():
            assert w in vocab, w


def test_render_label_on_demand():
    imgs = render_label("a sketch of a red star", n=3, seed=1)
    assert len(imgs) == 3 and imgs[0].shape == (64, 64, 3)
    assert np.array_equal(imgs[0], render_label("a sketch of a red star", n=1, seed=1)[0])
    # a sketch is grey ink on paper (plus per-channel grain): channel means agree, unlike a red photo
    means = imgs[0].reshape(-1, 3).mean(0)
    assert np.ptp(means) < 3
    photo = render_label("a photo of a red star on a plain background", n=1, seed=1)[0]
    assert np.ptp(photo.reshape(-1, 3).mean(0)) > 3
    tex = render_label("striped", n=1)[0]
    assert tex.std() > 10  # a texture, not a blank image


@torch.no_grad()
def _zero_shot_acc(model_bb, shapes, n=12, seed=11):
    rng = np.random.default_rng(seed)
    x, y = [], []
    for ci, s in enumerate(shapes):
        for _ in range(n):
            img = Image.fromarray(render(sample_scene(rng, shape=s, style="photo"), 64))
            x.append(model_bb.preprocess(img))
            y.append(ci)
    f = model_bb.encode_images(torch.stack(x))
    t = model_bb.encode_text(shapes, templates=["a photo of a {}."])
    return float(((f @ t.T).argmax(1) == torch.tensor(y)).float().mean())


def test_shipped_weights_beat_chance_by_a_clear_margin():
    import open_clip

    from clipood.backbone import Backbone, load_clip

    bb = load_clip("clipood-mini")
    shapes = assign_shapes(0)["base"]
    acc = _zero_shot_acc(bb, shapes)
    # the same check with random weights stays near chance (0.1): the test can tell them apart
    torch.manual_seed(0)
    rand = open_clip.create_model("clipood-mini", pretrained=None).eval()
    rb = Backbone(rand, bb.preprocess, bb.tokenizer, "clipood-mini", None, "random")
    acc_rand = _zero_shot_acc(rb, shapes)
    assert acc_rand < 0.3
    assert acc > 0.6, f"shipped clipood-mini zero-shot accuracy {acc:.2f}"


def test_pretraining_script_is_deterministic(tmp_path):
    """Two short runs of the shipped pretraining script give byte-identical weights (the full run is the
    same script with --steps 3000 --pool 100000)."""
    from clipood.mini import pretrain

    args = ["--steps", "3", "--pool", "64", "--batch-size", "16", "--eval-every", "3", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        pretrain.main(args + ["--out", str(tmp_path / "a")])
        pretrain.main(args + ["--out", str(tmp_path / "b")])
    finally:
        torch.set_num_threads(threads)
    from safetensors.torch import load_file

    # tensors compared bit for bit (the file header's metadata order is not fixed by safetensors)
    a = load_file(str(tmp_path / "a" / "clipood-mini.safetensors"))
    b = load_file(str(tmp_path / "b" / "clipood-mini.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the shipped weights are not these three-step weights (the test compares real training output)
    from clipood.backbone import SHIPPED_WEIGHTS

    shipped = load_file(str(SHIPPED_WEIGHTS["clipood-mini"]))
    assert not all(torch.equal(shipped[k], a[k]) for k in a)
