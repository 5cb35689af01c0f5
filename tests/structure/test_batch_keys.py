"""Batch key names are defined once (``clipood.batch_keys``): the adapter contract's keys are the core's, the
training batch and the evaluation batches carry exactly the names written out here by hand."""
from __future__ import annotations

from types import SimpleNamespace

import torch


def _cache(n: int = 3, q: int = 2, d: int = 4, t: int = 5):
    g = torch.Generator().manual_seed(0)
    img = torch.arange(n).repeat_interleave(q)
    def r(*shape):
        return torch.randn(*shape, generator=g)

    return SimpleNamespace(image_labels=torch.zeros(n, dtype=torch.long), id_image=img, neg_image=img,
                           id_features=r(n * q, d), neg_features=r(n * q, d), top_features=r(n, d),
                           id_labels=torch.zeros(n * q, dtype=torch.long), id_local=r(n * q, t, d),
                           neg_local=r(n * q, t, d))


def test_the_adapter_contract_uses_the_cores_keys():
    import adapters.contract
    from clipood import batch_keys

    assert adapters.contract.BATCH_KEYS is batch_keys.ADAPTER_KEYS
    assert set(batch_keys.ADAPTER_KEYS) == {"image_features", "local_features", "condition_features",
                                            "pre_projection_features"}


def test_a_training_batch_carries_the_named_keys():
    from clipood.batch_keys import ADAPTER_KEYS, train_key
    from clipood.training.loop import CropTrainData
    from clipood.training.task import adapter_inputs

    cache = _cache()
    batch = CropTrainData(cache, condition="top_crop").collate([0, 2], "cpu")
    assert set(batch) == {"id_features", "neg_features", "id_labels", "id_condition", "neg_condition", "id_local",
                          "neg_local"}
    assert torch.equal(batch[train_key("neg")], cache.neg_features[[0, 1, 4, 5]])  # images 0 and 2, Q=2 each
    assert (train_key("id"), train_key("neg", "local_features")) == ("id_features", "neg_local")
    plain = CropTrainData(cache).collate([1], "cpu")
    assert "id_condition" not in plain and "neg_condition" not in plain
    neg = adapter_inputs(batch, "neg", frozenset({"image_features", "local_features"}))
    assert set(neg) == {"image_features", "condition_features", "local_features"} and set(neg) <= set(ADAPTER_KEYS)
    assert torch.equal(neg["condition_features"], cache.top_features[[0, 0, 2, 2]])
    assert set(adapter_inputs(batch, "id")) == {"image_features", "condition_features"}  # local only when required


def test_evaluation_batches_carry_adapter_keys():
    from clipood.batch_keys import ADAPTER_KEYS
    from clipood.evaluation.protocol import feature_batches

    feats = {"features": torch.randn(5, 4), "local": torch.randn(5, 3, 4), "labels": torch.arange(5)}
    batches = list(feature_batches(feats, batch_size=2))
    assert [set(b) for b in batches] == [{"image_features", "local_features"}] * 3
    assert set(batches[0]) <= set(ADAPTER_KEYS) and [b["image_features"].shape[0] for b in batches] == [2, 2, 1]
