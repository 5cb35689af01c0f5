"""Guards for the core (issue 25): the detector folder check, the FLOP counter's per-operator breakdown, the
training-class check and relabelling, the feature caches' keys and the epoch's last short batch.

Each of these behaviours once survived a planted one-line bug; the table in docs/testing.md names the bug each
test was seen to catch. Expectations come from hand counts, hand-built folders and batches, and properties that
must hold whatever the implementation (two backbones, or two feature settings, never share a cache entry).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError
from helpers import make_image_folder

# ---------------------------------------------------------------------------------------------- detector


@pytest.fixture(scope="module")
def mini():
    from clipood import load_clip

    return load_clip("clipood-mini")  # shipped weights: a detector on random weights cannot be saved


@pytest.mark.parametrize("dropped", ["calibration.json", "label_features.safetensors"])
def test_detector_folder_without_a_required_file_is_refused_at_load(mini, tmp_path, dropped):
    """A folder whose required file is gone *and* unlisted (checksums.json rewritten to match) is an altered
    detector: load refuses it in one line naming the file, not with a FileNotFoundError from deep inside."""
    from clipood.detector import Detector

    torch.manual_seed(0)
    det = Detector(mini, F.normalize(torch.randn(4, mini.embed_dim), dim=-1), ["red", "green"],
                   negatives=["w0", "w1"], info={"model": "clipood-mini"})
    det.calibrate([0.1, 0.2, 0.3, 0.4], id_recall=0.75)
    d = det.save_pretrained(tmp_path / "d")
    Detector.from_pretrained(d)  # the intact folder loads
    (d / dropped).unlink()
    sums = json.loads((d / "checksums.json").read_text())
    del sums[dropped]
    (d / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(ClipoodError, match=dropped.replace(".", r"\.")):
        Detector.from_pretrained(d)


# ------------------------------------------------------------------------------------------ FLOP counter
def test_per_operator_breakdown_holds_forward_and_backward():
    """``by_op`` is the forward + backward total per operator: on a 2-layer MLP, by hand, mm/addmm hold both
    passes (forward 2·m·k·n per linear; backward: weight gradients of both, input gradient of the second)."""
    from clipood.efficiency import measure as bench

    b, i, h, o = 3, 5, 7, 2
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(i, h), torch.nn.ReLU(), torch.nn.Linear(h, o))
    x = torch.randn(b, i)
    c = bench.count_flops(lambda: m(x).sum(), lambda out: torch.autograd.grad(out, list(m.parameters())))
    fwd = 2 * b * i * h + 2 * b * h * o
    bwd = 2 * b * i * h + 2 * (2 * b * h * o)    # first layer: weight grad only (x needs none); second: both
    assert (c.forward, c.backward) == (fwd, bwd)
    assert sum(c.by_op.values()) == fwd + bwd == c.total
    assert c.by_op.get("aten.mm", 0) >= bwd     # every backward product is an mm; the forward linears addmm


def test_per_operator_breakdown_counts_attention_backward():
    from clipood.efficiency import measure as bench

    bsz, heads, length, e = 2, 2, 5, 4
    q, k, v = (torch.randn(bsz, heads, length, e, requires_grad=True) for _ in range(3))
    c = bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum(),
                          lambda out: torch.autograd.grad(out, [q, k, v]))
    fwd = 4 * bsz * heads * length * length * e
    assert c.by_op == {"aten._scaled_dot_product_flash_attention_for_cpu": fwd,
                       "aten._scaled_dot_product_flash_attention_for_cpu_backward": fwd * 5 // 2}


# ----------------------------------------------------------------------------------------- training data
ID_ORDER = ["dog", "bird", "cat"]  # folder order is cat, dog (alphabetical): ID order differs


@pytest.fixture()
def two_class_train(tmp_path):
    return make_image_folder(tmp_path / "train", {"cat": (200, 30, 30), "dog": (30, 200, 30)}, n=2, size=12)


def test_train_classes_exact_needs_every_id_class_and_subset_does_not(two_class_train):
    from clipood.datasets.checks import training_dataset

    spec = {"path": str(two_class_train)}
    with pytest.raises(ClipoodError, match="no images of 1 ID class.*bird"):
        training_dataset(spec, ID_ORDER, mode="exact")
    with pytest.raises(ClipoodError, match="no images of 1 ID class.*bird"):
        training_dataset(spec, ID_ORDER)  # exact is the default
    assert training_dataset(spec, ID_ORDER, mode="subset").classnames == ID_ORDER
    assert training_dataset(spec, ["dog", "cat"], mode="exact").classnames == ["dog", "cat"]


def test_training_samples_are_relabelled_to_the_id_order(two_class_train):
    """Labels are ID indices by name: a cat image is ID class 2 ("cat" in dog, bird, cat), not folder 0."""
    from pathlib import Path

    from clipood.datasets.checks import training_dataset

    for names, mode in ((ID_ORDER, "subset"), (["dog", "cat"], "exact")):
        ds = training_dataset({"path": str(two_class_train)}, names, mode=mode)
        got = [(Path(item).parent.name, lab) for item, lab in ds.samples]
        assert sorted(got) == sorted((Path(item).parent.name, names.index(Path(item).parent.name))
                                     for item, _ in ds.samples)
        assert {lab for _, lab in got} == {names.index("cat"), names.index("dog")}


def test_up_front_check_reads_the_train_classes_mode(tmp_path, two_class_train):
    from clipood.config.records import DataSettings
    from clipood.datasets.checks import check_data

    make_image_folder(tmp_path / "id", {n: (10 * i, 0, 0) for i, n in enumerate(ID_ORDER)}, n=1, size=12)
    make_image_folder(tmp_path / "ood", {"x": (0, 0, 200)}, n=1, size=12, pseudo=True)
    cfg = {"benchmark": "custom", "id_data": {"path": str(tmp_path / "id")},
           "ood_data": {"x": {"path": str(tmp_path / "ood")}}, "train_data": {"path": str(two_class_train)},
           "losses": {"cls": 1.0}}
    with pytest.raises(ClipoodError, match="train_data: .*no images of 1 ID class.*bird"):
        check_data(DataSettings.from_config(cfg))
    check_data(DataSettings.from_config({**cfg, "train_classes": "subset"}))


# ------------------------------------------------------------------------------------------------ caches
NEG_SETTINGS = {"num": 1, "fraction": 0.15, "quantile": 0.95, "id_template": "a photo of a {}.",
                "noun_template": "a photo of a {}.", "adj_template": "a {} texture."}


def test_two_backbones_never_share_cached_label_features(tmp_path):
    """With a one-word corpus both backbones mine the same negative; each still gets its own text features
    (what it encodes itself), and the cache holds one feature file per backbone."""
    from clipood.clip.backbone import load_clip
    from clipood.labels.label_features import label_text_features
    from clipood.negatives import Corpus

    names, corpus = ["cat", "dog"], Corpus(nouns=["stone"], adjectives=[])
    backbones = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        backbones.append(load_clip("clipood-tiny"))
    assert backbones[0].identifier != backbones[1].identifier
    for bb in backbones:
        c, n, negs = label_text_features(bb, names, corpus, NEG_SETTINGS, tmp_path, progress=False)
        assert n == 2 and negs.words == ["stone"]
        with torch.no_grad():
            want = bb.encode_text(["a photo of a cat.", "a photo of a dog.", "a photo of a stone."]).float()
        torch.testing.assert_close(c, want, atol=1e-6, rtol=0)
    assert len(list((tmp_path / "negatives").glob("*.features.safetensors"))) == 2


class _Vectors(torch.utils.data.Dataset):
    """Images that are D-vectors already (label = index % 2); ``samples`` as ImageDataset has them."""

    def __init__(self, x):
        self.x, self.samples = x, [(f"img{i}", i % 2) for i in range(len(x))]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 2


class _Encoder:
    """A frozen 'backbone': global feature = the unit vector; its 2 patch features = unit(x) and unit(x²)."""

    identifier = "fake-encoder|v1"

    def encode_images(self, images, local=False):
        g = F.normalize(images, dim=-1)
        if not local:
            return g
        return g, torch.stack([g, F.normalize(images ** 2, dim=-1)], dim=1)


@pytest.mark.parametrize("first", [False, True])
def test_image_features_with_and_without_patches_never_share_a_cache_file(tmp_path, first):
    from clipood.clip.image_features import extract_features

    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    ds, enc = _Vectors(x), _Encoder()
    want_local = torch.stack([F.normalize(x, dim=-1), F.normalize(x ** 2, dim=-1)], dim=1)
    for local in (first, not first, first):  # the third call reads the cache the first one wrote
        out = extract_features(enc, ds, batch_size=2, local=local, cache_dir=tmp_path, progress=False)
        torch.testing.assert_close(out["features"], F.normalize(x, dim=-1))
        assert ("local" in out) == local
        if local:
            torch.testing.assert_close(out["local"], want_local)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_crop_caches_with_and_without_patches_have_other_paths(tmp_path):
    from clipood.crops.sampling import CropConfig
    from clipood.crops.cache import crop_cache_path

    args = (_Encoder(), _Vectors(torch.ones(3, 4)), [0, 1], CropConfig(num_crops=2, num_selected=1), ["a", "b"],
            tmp_path)
    assert crop_cache_path(*args, local=True) != crop_cache_path(*args, local=False)


# ------------------------------------------------------------------------------------------------ engine
def _train_data(n: int):
    from clipood.training.loop import CropTrainData

    img = torch.arange(n)
    return CropTrainData(SimpleNamespace(image_labels=torch.zeros(n, dtype=torch.long), id_image=img, neg_image=img))


@pytest.mark.parametrize("n, bs, world, sizes", [
    (10, 4, 1, [4, 4, 2]),   # short last batch, 1 process: kept
    (10, 4, 2, [4, 4, 2]),   # 2 images split over 2 processes: kept
    (10, 4, 4, [4, 4]),      # 2 images cannot split over 4 processes: dropped
    (9, 4, 2, [4, 4]),       # 1 image over 2 processes: dropped
    (9, 3, 1, [3, 3, 3]),    # no short batch
    (7, 6, 1, [6, 1]),       # a short batch of one image, 1 process: kept
])
def test_epoch_keeps_a_short_last_batch_that_splits_over_the_processes(n, bs, world, sizes):
    from clipood.training.loop import check_schedule

    data = _train_data(n)
    batches = data.epoch_batches(epoch=0, seed=3, batch_size=bs, world=world)
    assert [len(b) for b in batches] == sizes
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat) == sum(sizes) and set(flat) <= set(range(n))  # a permutation's prefix
    assert check_schedule({"batch_size": bs, "epochs": 2}, n, world) == 2 * len(sizes)


def test_one_process_run_steps_on_the_short_last_batch(tmp_path):
    """Through the real loop: 10 images in batches of 4 over 1 process and 2 epochs are 6 optimiser steps."""
    from training_probe import LinearLoss, fit_recording, train_settings

    grads = [{"w": torch.ones(2)} for _ in range(8)]
    lrs, weights, _ = fit_recording(LinearLoss({"w": torch.zeros(2)}, grads),
                                    train_settings(batch_size=4, epochs=2, lr=0.1, warmup_steps=0,
                                                   schedule="constant", optimizer="sgd", momentum=0.0,
                                                   weight_decay=0.0, grad_clip=0.0),
                                    tmp_path, n_images=10)
    assert len(lrs) == 6
    torch.testing.assert_close(weights[-1]["w"], torch.full((2,), -0.6, dtype=torch.float64))  # six SGD steps of lr 0.1 on gradient 1
