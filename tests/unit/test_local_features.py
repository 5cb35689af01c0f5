"""Patch (local) features travel when an adapter's ``requires`` asks: crop cache, training batches, evaluation."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from clipood.clip.backbone import load_clip
from clipood.crops.cache import CropCache, build_crop_cache, crop_cache_path
from clipood.crops.sampling import CropConfig, make_crops, preprocess_params
from clipood.datasets.dataset import build_dataset
from clipood.datasets.specs import ImageFolderSpec
from clipood.training.loop import CropTrainData
from clipood.errors import ClipoodError
from clipood.evaluation.protocol import EvalSplit, SplitFeatures, evaluate_split, feature_batches
from clipood.training.task import TrainingTask
from test_crops import _ThreadAccelerator  # Accelerate stand-in with ranks as threads

CFG = CropConfig(num_crops=6, num_selected=2, seed=0)


@pytest.fixture(scope="module")
def backbone():
    return load_clip("clipood-tiny")  # ViT, 64 px, patch 16: T = 16 patch tokens


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for c, (name, rgb) in enumerate({"red": (220, 30, 30), "blue": (30, 40, 220)}.items()):
        (root / name).mkdir()
        for i in range(2):
            img = Image.new("RGB", (96, 80), (200 - 40 * i, 180, 160 + 20 * c))
            ImageDraw.Draw(img).rectangle([10 + 8 * i, 12, 50 + 8 * i, 60], fill=rgb)
            img.save(root / name / f"{i}.png")
    return build_dataset(ImageFolderSpec(str(root)))


def test_crop_cache_keeps_patch_features_of_the_selected_crops(backbone, dataset, tmp_path):
    plain = build_crop_cache(backbone, dataset, None, CFG, progress=False)
    local = build_crop_cache(backbone, dataset, None, CFG, progress=False, cache_dir=tmp_path, local=True)
    assert plain.id_local is None and not plain.has_local
    n, q, d = 4, 2, backbone.embed_dim
    assert local.id_local.shape == (n * q, 16, d) and local.neg_local.shape == (n * q, 16, d)
    for name in ("id_features", "neg_features", "top_features", "image_features", "id_labels"):
        assert torch.equal(getattr(local, name), getattr(plain, name)), name  # same selection as without
    # independent check for image 1: encode its crops with local=True and find the selected ones by feature
    crops = make_crops(dataset.load_image(1), CFG, 1, **preprocess_params(backbone))
    g, loc = backbone.encode_images(crops, local=True)
    for rows, feats in ((local.id_local, local.id_features), (local.neg_local, local.neg_features)):
        for r in (2, 3):  # image 1 owns rows 2, 3
            j = int((g @ feats[r]).argmax())
            torch.testing.assert_close(rows[r], loc[j], atol=1e-5, rtol=0)
    # its own cache file (the key of global-only caches does not change) and a faithful round trip
    assert crop_cache_path(backbone, dataset, range(4), CFG, dataset.classnames, tmp_path) != \
        crop_cache_path(backbone, dataset, range(4), CFG, dataset.classnames, tmp_path, local=True)
    (path,) = tmp_path.glob("crops-*.safetensors")
    again = CropCache.load(path)
    assert torch.equal(again.id_local, local.id_local) and torch.equal(again.neg_local, local.neg_local)


def test_sharded_local_build_matches_single_process(backbone, dataset):
    indices = [3, 0, 2]  # uneven shards over 2 ranks
    single = build_crop_cache(backbone, dataset, indices, CFG, progress=False, local=True)
    store, barrier, results = {}, threading.Barrier(2), {}

    def run(rank):
        results[rank] = build_crop_cache(backbone, dataset, indices, CFG, progress=False, local=True,
                                         accelerator=_ThreadAccelerator(rank, 2, store, barrier))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in (0, 1):
        torch.testing.assert_close(results[r].id_local, single.id_local, atol=1e-5, rtol=0)
        torch.testing.assert_close(results[r].neg_local, single.neg_local, atol=1e-5, rtol=0)


class LocalProbe(torch.nn.Module):
    """An adapter that requires local features: logits = mean over patches of cos(patch, c_i)."""

    requires = frozenset({"image_features", "local_features"})

    def __init__(self, text):
        super().__init__()
        self.num_id = 2
        self.register_buffer("base_text_features", text)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, batch):
        from types import SimpleNamespace

        missing = self.requires - set(batch)
        if missing:
            raise ClipoodError(f"batch lacks {sorted(missing)}")
        self.seen.append(tuple(batch["local_features"].shape))
        logits = self.scale * (batch["local_features"] @ self.base_text_features.T).mean(1)
        return SimpleNamespace(logits=logits, base_cos=None)


def test_training_batches_carry_patch_features_to_adapters_that_require_them(backbone, dataset):
    cache = build_crop_cache(backbone, dataset, None, CFG, progress=False, local=True)
    data = CropTrainData(cache)
    batch = data.collate([0, 3], torch.device("cpu"))
    assert batch["id_local"].shape == (4, 16, backbone.embed_dim)
    torch.testing.assert_close(batch["neg_local"][2:], cache.neg_local[6:8])  # image 3 owns rows 6, 7
    probe = LocalProbe(F.normalize(torch.randn(5, backbone.embed_dim), dim=-1))
    out = TrainingTask(probe, {"cls": 1.0, "ood": 0.3})(batch)
    assert torch.isfinite(out["loss"]) and probe.seen == [(4, 16, backbone.embed_dim)] * 2
    plain = CropTrainData(build_crop_cache(backbone, dataset, None, CFG, progress=False)).collate([0], "cpu")
    assert "id_local" not in plain
    with pytest.raises(ClipoodError, match="local_features"):
        TrainingTask(probe, {"cls": 1.0})(plain)


def test_evaluation_hands_stored_patch_features_to_the_method():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(5, 8, generator=g), dim=-1)

    def feats(n, labels):
        return {"features": F.normalize(torch.randn(n, 8, generator=g), dim=-1),
                "local": F.normalize(torch.randn(n, 3, 8, generator=g), dim=-1), "labels": torch.tensor(labels)}

    sf = SplitFeatures(EvalSplit("base", {"id": None}, {"o": None}, ["a", "b"]),
                       {"id": feats(6, [0, 1] * 3)}, {"o": feats(4, [0] * 4)}, text, 2)
    probe = LocalProbe(text)
    rows, raw = evaluate_split("probe", lambda batch, _sf: probe(batch).logits, sf)
    assert sorted(probe.seen) == [(4, 3, 8), (6, 3, 8)]
    by_hand = (100 * (sf.id_feats["id"]["local"] @ text.T).mean(1)).double()
    expected = torch.logsumexp(by_hand[:, :2], 1) - torch.logsumexp(by_hand[:, 2:], 1)  # NegLabel log-odds
    torch.testing.assert_close(raw["id/id"], expected, atol=1e-4, rtol=0)
    chunks = list(feature_batches(sf.id_feats["id"], batch_size=4))
    assert [tuple(c) for c in chunks] == [("image_features", "local_features")] * 2
    assert [c["local_features"].shape[0] for c in chunks] == [4, 2]
