"""The embedded mini world: determinism, splits, corpus, render on demand, and the shipped tiny CLIP."""
import hashlib

import numpy as np
import torch
from PIL import Image

from clipood.mini.build import MiniWorldConfig, assign_shapes, build_world, load_manifest, render_label
from clipood.mini.build import OOD_SETS
from clipood.mini.patterns import PATTERNS, pattern_map
from clipood.mini.shapes import DIGIT_NAMES, SHAPE_NAMES
from clipood.mini.world import BACKGROUNDS, COLOURS, STYLES, caption, render, sample_scene, vocabulary

SMALL = dict(train_per_class=2, test_per_class=2, ood_per_set=3, style_per_class=1)


def _digest(folder):
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*.png"))
    for p in files:
        h.update(str(p.relative_to(folder)).encode())
        h.update(p.read_bytes())
    return h.hexdigest(), len(files)


def test_world_size_meets_spec():
    assert len(SHAPE_NAMES) >= 30 and len(COLOURS) >= 8 and len(BACKGROUNDS) >= 16 and len(STYLES) >= 4
    assert len(DIGIT_NAMES) == 10 and not set(DIGIT_NAMES) & set(SHAPE_NAMES)
    assert len(vocabulary()) >= 100


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
    # base train/test/styles + new test + 2 splits × 5 OOD sets
    expected = (10 * (2 + 2 + 3 * 1)) + 10 * 2 + 2 * len(OOD_SETS) * 3
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
    assert {"red", "striped", "brick", "seven"} <= words and len(words) > 90
    # the corpus is the captions' whole vocabulary minus the rare shapes: the clutter scenes' name ("shapes")
    # and the digit family's ("digit", "number") can be mined, as WordNet holds scene and family names
    pos = dict(line.split("\t")[:2] for line in (w / "corpus.tsv").read_text().splitlines() if not line.startswith("#"))
    assert words == set(vocabulary()) - set(m["shapes"]["rare"])
    assert all(pos[x] == "noun" for x in ("shapes", "digit", "number", "background", "sketch", "seven"))
    assert all(pos[x] == "adj" for x in ("small", "many", "red", "striped"))


def test_corpus_is_grounded_in_pretraining_captions(tmp_path):
    """Every corpus word occurs in pretraining captions (of images that show it): no untrained tokens."""
    from clipood.mini.pretrain import _scene_for

    w = build_world(MiniWorldConfig(seed=0, **SMALL), root=tmp_path, progress=False)
    words = {line.split("\t")[0] for line in (w / "corpus.tsv").read_text().splitlines() if not line.startswith("#")}
    rng = np.random.default_rng(0)
    seen: dict[str, int] = {}
    for i in range(6000):
        for t in caption(_scene_for(i, 1234), rng).replace(".", " ").replace(",", " ").split():
            seen[t] = seen.get(t, 0) + 1
    rare = {x: seen.get(x, 0) for x in words if seen.get(x, 0) < 5}
    assert not rare, f"corpus words (almost) never in captions: {rare}"
    # and optional WordNet distractors are off by default but still available
    wd = build_world(MiniWorldConfig(seed=0, distractor_nouns=7, **SMALL), root=tmp_path, progress=False)
    assert len((wd / "corpus.tsv").read_text().splitlines()) == len((w / "corpus.tsv").read_text().splitlines()) + 7


def test_scenes_hold_extra_objects_and_occlusion():
    rng = np.random.default_rng(3)
    assert len(sample_scene(rng, shape="star", extras=(0, 0, 1)).objects) == 3
    assert len(sample_scene(rng, shape="star", extras=None).objects) == 1
    counts = [len(sample_scene(np.random.default_rng(i), shape="star").objects) for i in range(400)]
    share = np.bincount(counts, minlength=4)[1:4] / 400  # default (0.4, 0.35, 0.25) extras
    assert np.allclose(share, [0.4, 0.35, 0.25], atol=0.07), share
    sc = sample_scene(rng, shape="heart", extras=(0, 1), extra_pool=["seven"])
    assert sc.objects[0]["shape"] == "heart" and sc.objects[1]["shape"] == "seven"
    assert sc.objects[1]["r"] < sc.objects[0]["r"]  # extras are small
    # the extra is painted over the main object: a render without it differs
    alone = type(sc)(**{**sc.to_dict(), "objects": sc.objects[:1]})
    assert not np.array_equal(render(sc, 64), render(alone, 64))


def test_patterns_are_distinct_and_deterministic():
    maps = {}
    for k in PATTERNS:
        a = pattern_map(k, 32, np.random.default_rng(1))
        assert np.array_equal(a, pattern_map(k, 32, np.random.default_rng(1)))
        assert a.shape == (32, 32) and 0 <= a.min() and a.max() <= 1
        if k != "plain":
            assert a.std() > 0.05, k
        maps[k] = a
    keys = list(maps)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not np.array_equal(maps[a], maps[b]), (a, b)


def test_tower_has_4x4_local_features_whose_mean_is_the_global_feature():
    """clipood-mini's image tower ends in a 4×4 map; each cell goes through the tower's linear head, so the
    unnormalised global feature is the mean of the 16 local ones (the head is linear, pooling is the mean)."""
    from clipood.clip.backbone import load_clip

    bb = load_clip("clipood-mini")
    x = torch.randn(3, 3, 32, 32)
    g, loc = bb.encode_images(x, local=True, normalize=False)
    assert loc.shape == (3, 16, bb.embed_dim) and g.shape == (3, bb.embed_dim)
    assert torch.allclose(loc.mean(1), g, atol=1e-4)
    assert torch.allclose(bb.encode_images(x, normalize=False), g, atol=1e-4)
    assert (loc - loc.mean(1, keepdim=True)).abs().max() > 1e-3  # cells differ: local information


def test_captions_use_real_words():
    rng = np.random.default_rng(0)
    plurals = {w + "s" for w in SHAPE_NAMES} | {w + "es" for w in SHAPE_NAMES}
    vocab = set(vocabulary()) | plurals | {
        "a", "an", "the", "of", "on", "in", "pencil", "line", "random", "blurry", "and", "more"}
    for i in range(300):
        kind = ["object", "texture", "clutter", "noise", "row", "pair"][i % 6]
        sc = sample_scene(rng, style=STYLES[i % 4], kind=kind)
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

    from clipood.clip.backbone import load_clip
    from clipood.clip.encoders import Backbone

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
    same script with its default --steps and --pool)."""
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
    from clipood.clip.backbone import SHIPPED_WEIGHTS

    shipped = load_file(str(SHIPPED_WEIGHTS["clipood-mini"]))
    assert not all(torch.equal(shipped[k], a[k]) for k in a)


def test_pretraining_stop_after_equals_the_snapshot_of_the_full_schedule(tmp_path):
    """--stop-after N saves exactly the step-N weights of the --steps schedule (what --snapshot-dir keeps)."""
    from safetensors.torch import load_file

    from clipood.mini import pretrain

    args = ["--steps", "4", "--pool", "64", "--batch-size", "16", "--eval-every", "2", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        pretrain.main(args + ["--out", str(tmp_path / "full"), "--snapshot-dir", str(tmp_path / "snap")])
        pretrain.main(args + ["--out", str(tmp_path / "cut"), "--stop-after", "2"])
    finally:
        torch.set_num_threads(threads)
    snap = load_file(str(tmp_path / "snap" / "step00002.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "clipood-mini.safetensors"))
    full = load_file(str(tmp_path / "full" / "clipood-mini.safetensors"))
    assert snap.keys() == cut.keys() and all(torch.equal(snap[k], cut[k]) for k in snap)
    assert not all(torch.equal(full[k], cut[k]) for k in full)  # two more steps change the weights
