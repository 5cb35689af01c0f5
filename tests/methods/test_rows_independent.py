"""The ``rows_independent`` hook: a task scores the ID and negative crops of a step in one adapter call when the
adapter declares it, and the loss and gradients are what two calls give (float32 summation order aside)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adapters
from adapters.contract import AdapterOutput
from clipood.training.task import TrainingTask, split_rows

WEIGHTS = {"cls": 1.0, "ood": 0.3, "kr": 100.0}


def _context(k=9, d=16, seed=0):
    return F.normalize(torch.randn(k, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _batch(n=6, m=5, d=16, seed=1, condition=False):
    g = torch.Generator().manual_seed(seed)
    b = {"id_features": F.normalize(torch.randn(n, d, generator=g), dim=-1),
         "id_labels": torch.randint(0, 4, (n,), generator=g),
         "neg_features": F.normalize(torch.randn(m, d, generator=g), dim=-1)}
    if condition:
        b["id_condition"] = F.normalize(torch.randn(n, d, generator=g), dim=-1)
        b["neg_condition"] = F.normalize(torch.randn(m, d, generator=g), dim=-1)
    return b


def _perturb(adapter, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return adapter


def _two_calls_by_hand(adapter, batch):
    """The loss as two separate adapter calls give it (ID crops, then negative crops), written out here."""
    def inputs(prefix):
        x = {"image_features": batch[f"{prefix}_features"]}
        if f"{prefix}_condition" in batch:
            x["condition_features"] = batch[f"{prefix}_condition"]
        return x

    io, no = adapter(inputs("id")), adapter(inputs("neg"))
    lg_id, lg_neg = 100.0 * io.logits, 100.0 * no.logits
    cls = F.cross_entropy(lg_id, batch["id_labels"])
    ood = (torch.logsumexp(lg_neg[:, :4], 1) - torch.logsumexp(lg_neg, 1)).mean()
    kr = 1 - torch.cat([io.base_cos.reshape(-1), no.base_cos.reshape(-1)]).mean()
    return cls + 0.3 * ood + 100.0 * kr


@pytest.mark.parametrize("name,options,condition", [
    ("nft", {"hidden_dim": 8}, False), ("nft", {"hidden_dim": 8}, True), ("coft", {"hidden_dim": 8}, False),
    ("ft", {}, False), ("nft", {"hidden_dim": 8, "mode": "class_specific"}, False)])
def test_one_call_gives_the_loss_and_gradients_of_two(name, options, condition):
    torch.manual_seed(0)  # the meta-nets' initialisation
    adapter = _perturb(adapters.build_adapter(name, _context(), 4, **options))
    assert adapter.rows_independent
    batch = _batch(condition=condition)
    calls = []
    adapter.register_forward_hook(lambda m, i, o: calls.append(i[0]["image_features"].shape[0]))
    task = TrainingTask(adapter, WEIGHTS)
    loss = task(batch)["loss"]
    assert calls == [11]  # 6 ID + 5 negative crops in one call
    grads = torch.autograd.grad(loss, list(adapter.parameters()))
    ref = _two_calls_by_hand(adapter, batch)
    ref_grads = torch.autograd.grad(ref, list(adapter.parameters()))
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_an_adapter_that_does_not_declare_it_is_called_twice():
    adapter = adapters.build_adapter("taskres", _context(), 4)
    assert not adapter.rows_independent
    calls = []
    adapter.register_forward_hook(lambda m, i, o: calls.append(i[0]["image_features"].shape[0]))
    TrainingTask(adapter, WEIGHTS)(_batch())
    assert calls == [6, 5]


def test_split_rows_cuts_row_tensors_and_shares_label_tensors():
    logits = torch.arange(12.0).reshape(4, 3)
    per_label = torch.tensor([1.0, 2.0, 3.0])
    out = AdapterOutput(logits, per_label, {"local": torch.arange(8.0).reshape(4, 2), "scale": torch.tensor(2.0)})
    a, b = split_rows(out, 1)
    assert a.logits.tolist() == [[0.0, 1.0, 2.0]] and b.logits.shape == (3, 3)
    assert a.base_cos is per_label and b.base_cos is per_label
    assert a.extras["local"].tolist() == [[0.0, 1.0]] and b.extras["local"].shape == (3, 2)
    assert a.extras["scale"] is out.extras["scale"]
    per_row = split_rows(AdapterOutput(logits, None, {"score": torch.arange(4.0)}), 2)
    assert per_row[0].extras["score"].tolist() == [0.0, 1.0] and per_row[1].base_cos is None
    rows = AdapterOutput(logits, torch.ones(4, 3))
    assert split_rows(rows, 3)[1].base_cos.shape == (1, 3)
