import logging
import threading
from dataclasses import asdict

import pytest
import torch
from PIL import Image, ImageDraw

from clipood.clip.backbone import load_clip
from clipood.crops.cache import CropCache, build_crop_cache, crop_cache_path
from clipood.crops.sampling import CropConfig, make_crops, preprocess_params, select_crops
from clipood.datasets.dataset import build_dataset
from clipood.datasets.specs import ImageFolderSpec
from clipood.errors import ClipoodError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def backbone():
    return load_clip("clipood-tiny")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for c, (name, rgb) in enumerate(COLOURS.items()):
        (root / name).mkdir()
        for i in range(3):
            img = Image.new("RGB", (96, 80), (200 - 40 * i, 180, 160 + 20 * c))
            ImageDraw.Draw(img).rectangle([10 + 8 * i, 12, 50 + 8 * i, 60], fill=rgb)
            img.save(root / name / f"{i}.png")
    return build_dataset(ImageFolderSpec(str(root)))


def _square_image():
    img = Image.new("RGB", (96, 96), (90, 140, 200))
    ImageDraw.Draw(img).ellipse([20, 10, 80, 70], fill=(250, 220, 10))
    return img


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("kwargs, message", [
    ({"num_crops": 8, "num_selected": 5}, r"num_selected Q=5 needs num_crops P >= 10"),
    ({"num_crops": 79, "num_selected": 40}, r"num_selected Q=40 needs num_crops P >= 80"),
    ({"num_selected": 0}, r"num_selected Q=0 must be >= 1"),
    ({"num_crops": 0, "num_selected": 1}, r"num_crops P=0 must be >= 1"),
    ({"scale": (0.0, 1.0)}, r"scale=\(0.0, 1.0\)"),
    ({"scale": (0.5, 1.2)}, r"scale"),
    ({"ratio": (2.0, 1.0)}, r"ratio"),
    ({"prompt": "a photo"}, r"prompt"),
    ({"grayscale_p": 1.5}, r"grayscale_p"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ClipoodError, match=message):
        CropConfig(**kwargs)


def test_config_presets():
    assert CropConfig(num_crops=8, num_selected=4).num_selected == 4  # 2Q == P is allowed
    assert CropConfig(scale=[0.2, 0.9]).scale == (0.2, 0.9)  # lists from YAML become tuples
    with pytest.raises(ClipoodError, match="num_crop"):
        CropConfig.from_dict({"num_crop": 4})


# ------------------------------------------------------------------ making crops
def test_crops_shape_and_determinism(backbone):
    img = _square_image()
    cfg = CropConfig(num_crops=6, num_selected=2, color_jitter=True, grayscale=True, grayscale_p=0.5)
    a = make_crops(img, cfg, 3, backbone)
    assert a.shape == (6, 3, backbone.image_size, backbone.image_size) and a.dtype == torch.float32
    torch.manual_seed(0)
    b = make_crops(img, cfg, 3, backbone)
    torch.manual_seed(999)  # the global RNG must not matter
    c = make_crops(img, cfg, 3, backbone)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.allclose(a, make_crops(img, cfg, 4, backbone), atol=1e-3)  # another image index
    assert not torch.allclose(a, make_crops(img, CropConfig(**{**asdict(cfg), "seed": 1}), 3, backbone), atol=1e-3)
    assert not torch.allclose(a[0], a[1], atol=1e-3)  # crops of one image differ from each other


def test_crops_use_global_rng_never(backbone):
    state = torch.random.get_rng_state()
    make_crops(_square_image(), CropConfig(num_crops=4, num_selected=2), 0, backbone)
    assert torch.equal(state, torch.random.get_rng_state())


def test_full_image_crop_matches_backbone_preprocess(backbone):
    img = _square_image()
    cfg = CropConfig(num_crops=2, num_selected=1, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    crops = make_crops(img, cfg, 0, backbone)
    ref = backbone.preprocess(img)
    assert ref.shape == crops.shape[1:]
    assert (crops - ref).abs().max() < 1e-2
    assert (crops[1] - ref).abs().max() < 1e-2
    p = preprocess_params(backbone)
    assert p["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    # a flipped full crop is the mirror image of the preprocessed image
    flipped = make_crops(img, CropConfig(**{**asdict(cfg), "flip": True, "num_crops": 8}), 0, backbone)
    mirrored = [(f - ref.flip(-1)).abs().max() < 1e-2 for f in flipped]
    straight = [(f - ref).abs().max() < 1e-2 for f in flipped]
    assert all(m or s for m, s in zip(mirrored, straight)) and any(mirrored) and any(straight)


def test_crop_boxes_respect_scale():
    # a white square on black: with scale (0.01, 0.02) most crops see only one colour
    img = Image.new("RGB", (100, 100), (0, 0, 0))
    ImageDraw.Draw(img).rectangle([0, 0, 49, 99], fill=(255, 255, 255))
    cfg = CropConfig(num_crops=8, num_selected=1, scale=(0.01, 0.02), flip=False)
    crops = make_crops(img, cfg, 0, size=16, mean=(0, 0, 0), std=(1, 1, 1))
    uniform = [(c.max() - c.min()) < 0.05 for c in crops]
    assert sum(uniform) >= 5


# ------------------------------------------------------------------ selection
def test_select_crops_hand_example():
    text = torch.tensor([1.0, 0.0])
    # cosines to text: [0.1, 0.9, 0.5, -0.3, 0.9, 0.0] (row x = cos, y = sin)
    cos = torch.tensor([0.1, 0.9, 0.5, -0.3, 0.9, 0.0])
    feats = torch.stack([cos, (1 - cos ** 2).sqrt()], 1)
    top, bottom = select_crops(feats, text, 2)
    assert top.tolist() == [1, 4]  # tie at 0.9: lower index first
    assert bottom.tolist() == [3, 5]  # least similar first
    top, bottom = select_crops(feats, text, 3)
    assert top.tolist() == [1, 4, 2] and bottom.tolist() == [3, 5, 0]
    # all tied: top and bottom still disjoint
    top, bottom = select_crops(torch.tensor([[1.0, 0.0]] * 4), text, 2)
    assert top.tolist() == [0, 1] and bottom.tolist() == [3, 2]
    with pytest.raises(ClipoodError, match="2q <= P"):
        select_crops(feats, text, 4)


# ------------------------------------------------------------------ cache
CFG = CropConfig(num_crops=6, num_selected=2, seed=1)


def _counting(monkeypatch, backbone):
    calls = []
    real = backbone.encode_images

    def wrapper(x, *a, **k):
        calls.append(x.shape[0])
        return real(x, *a, **k)

    monkeypatch.setattr(backbone, "encode_images", wrapper)
    return calls


def test_build_crop_cache_shapes_and_selection(backbone, dataset):
    indices = [0, 4, 8, 3]  # one or two images of each class, not in dataset order
    cache = build_crop_cache(backbone, dataset, indices, CFG, dataset.classnames, progress=False, batch_size=8)
    n, Q, D = 4, 2, backbone.embed_dim
    assert cache.id_features.shape == (n * Q, D) and cache.neg_features.shape == (n * Q, D)
    assert cache.top_features.shape == (n, D) and cache.image_features.shape == (n, D)
    labels = [dataset.samples[i][1] for i in indices]
    assert cache.image_labels.tolist() == labels
    assert cache.id_labels.tolist() == [y for y in labels for _ in range(Q)]
    assert cache.id_image.tolist() == cache.neg_image.tolist() == [p for p in range(n) for _ in range(Q)]
    assert cache.image_indices.tolist() == indices
    assert torch.allclose(cache.id_features.norm(dim=-1), torch.ones(n * Q), atol=1e-4)

    text = backbone.encode_text(dataset.classnames, templates=[CFG.prompt])
    id_sim = (cache.id_features * text[cache.id_labels]).sum(-1).view(n, Q)
    neg_sim = (cache.neg_features * text[cache.image_labels[cache.neg_image]]).sum(-1).view(n, Q)
    assert (id_sim.min(1).values >= neg_sim.max(1).values).all()
    assert torch.all(id_sim[:, :-1] >= id_sim[:, 1:] - 1e-6) and torch.all(neg_sim[:, :-1] <= neg_sim[:, 1:] + 1e-6)
    assert torch.allclose(cache.id_similarity, id_sim.flatten(), atol=1e-5)
    assert torch.allclose(cache.top_features, cache.id_features.view(n, Q, D)[:, 0])

    # independent recomputation for image position 1 (dataset index 4)
    crops = make_crops(dataset.load_image(4), CFG, 4, backbone)
    f = backbone.encode_images(crops)
    s = f @ text[labels[1]]
    top = s.argsort(descending=True)[:Q]
    bottom = s.argsort()[:Q]
    assert torch.allclose(cache.id_features[Q:2 * Q], f[top], atol=1e-5)
    assert torch.allclose(cache.neg_features[Q:2 * Q], f[bottom], atol=1e-5)
    whole = backbone.encode_images(backbone.preprocess(dataset.load_image(4))[None])[0]
    assert torch.allclose(cache.image_features[1], whole, atol=1e-5)
    st = cache.stats()
    assert st["images"] == 4 and st["id_crops"] == 8 and st["neg_crops"] == 8 and st["classes"] == 3
    assert st["mean_id_similarity"] > st["mean_neg_similarity"]


def test_cache_hit_encodes_nothing(backbone, dataset, tmp_path, monkeypatch, caplog):
    calls = _counting(monkeypatch, backbone)
    first = build_crop_cache(backbone, dataset, [0, 1, 2], CFG, dataset.classnames, cache_dir=tmp_path,
                             progress=False)
    assert sum(calls) == 3 * 6 + 3  # P crops + the whole image, per image
    files = list(tmp_path.glob("crops-*.safetensors"))
    assert len(files) == 1
    calls.clear()
    with caplog.at_level(logging.DEBUG, logger="clipood"):  # cache hits are debug lines (quiet by default)
        second = build_crop_cache(backbone, dataset, [0, 1, 2], CFG, dataset.classnames, cache_dir=tmp_path,
                                  progress=False)
    assert calls == []
    assert "crop-feature cache hit" in caplog.text and "no image re-encoded" in caplog.text
    for name in ("id_features", "neg_features", "top_features", "image_features", "id_labels", "neg_image"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    # another config or other indices → another file, encoded again
    build_crop_cache(backbone, dataset, [0, 1], CFG, dataset.classnames, cache_dir=tmp_path, progress=False)
    assert calls and len(list(tmp_path.glob("crops-*.safetensors"))) == 2


def test_corrupt_cache_is_rebuilt(backbone, dataset, tmp_path, monkeypatch, caplog):
    ref = build_crop_cache(backbone, dataset, [2, 5], CFG, dataset.classnames, progress=False)
    path = crop_cache_path(backbone, dataset, [2, 5], CFG, dataset.classnames, tmp_path)
    path.write_bytes(b"\x00garbage" * 50)
    calls = _counting(monkeypatch, backbone)
    with caplog.at_level(logging.WARNING, logger="clipood"):
        out = build_crop_cache(backbone, dataset, [2, 5], CFG, dataset.classnames, cache_dir=tmp_path,
                               progress=False)
    assert calls, "a corrupt cache must never be used"
    assert "unusable" in caplog.text and "cache hit" not in caplog.text
    assert torch.allclose(out.id_features, ref.id_features, atol=1e-6)
    assert torch.allclose(CropCache.load(path).id_features, ref.id_features, atol=1e-6)  # rewritten, readable


def test_wrong_shape_cache_is_rebuilt(backbone, dataset, tmp_path, monkeypatch, caplog):
    small = build_crop_cache(backbone, dataset, [0], CFG, dataset.classnames, progress=False)
    path = crop_cache_path(backbone, dataset, [0, 3], CFG, dataset.classnames, tmp_path)
    small.save(path)  # a valid file, but for one image instead of two
    calls = _counting(monkeypatch, backbone)
    with caplog.at_level(logging.WARNING, logger="clipood"):
        out = build_crop_cache(backbone, dataset, [0, 3], CFG, dataset.classnames, cache_dir=tmp_path,
                               progress=False)
    assert calls and out.num_images == 2 and "unusable" in caplog.text
    assert CropCache.load(path).num_images == 2


def test_save_load_roundtrip_and_errors(backbone, dataset, tmp_path):
    cache = build_crop_cache(backbone, dataset, [1, 7], CFG, progress=False)  # classnames from the dataset
    cache.save(tmp_path / "c.safetensors")
    back = CropCache.load(tmp_path / "c.safetensors")
    assert all(torch.equal(getattr(cache, k), getattr(back, k)) for k in ("id_features", "image_labels", "neg_image"))
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(ClipoodError, match="bad.safetensors"):
        CropCache.load(tmp_path / "bad.safetensors")
    with pytest.raises(ClipoodError, match="label 2 has no class name"):
        build_crop_cache(backbone, dataset, [8], CFG, ["a", "b"], progress=False)


class _ThreadAccelerator:
    """Just enough of Accelerate for build_crop_cache, with ranks as threads sharing a barrier."""

    def __init__(self, rank, world, store, barrier):
        self.process_index, self.num_processes = rank, world
        self.is_main_process = self.is_local_main_process = rank == 0
        self.device = torch.device("cpu")
        self._store, self._barrier = store, barrier

    def gather(self, t):
        self._barrier.wait()
        self._store[self.process_index] = t
        self._barrier.wait()
        out = torch.cat([self._store[r] for r in range(self.num_processes)])
        self._barrier.wait()
        return out

    def wait_for_everyone(self):
        self._barrier.wait()


def test_sharded_build_matches_single_process(backbone, dataset, tmp_path):
    indices = [8, 0, 4, 2, 6]  # 5 images over 2 ranks: uneven shards
    single = build_crop_cache(backbone, dataset, indices, CFG, progress=False)
    store, barrier, results = {}, threading.Barrier(2), {}

    def run(rank):
        acc = _ThreadAccelerator(rank, 2, store, barrier)
        results[rank] = build_crop_cache(backbone, dataset, indices, CFG, accelerator=acc, cache_dir=tmp_path,
                                         progress=False)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(results) == {0, 1}
    for r in (0, 1):
        for name in ("id_features", "neg_features", "top_features", "image_features", "id_labels", "image_indices"):
            assert torch.allclose(getattr(results[r], name).float(), getattr(single, name).float(), atol=1e-5), name
    assert len(list(tmp_path.glob("crops-*.safetensors"))) == 1
