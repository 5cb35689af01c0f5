"""Grouped L_n (Eq. 8 over negative groups, as the released KR-NFT trainer) against a numpy hand computation,
and the training task's use of it (``ood_groups``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipood.errors import ClipoodError
from clipood.losses import krnft_loss, negative_groups, ood_loss

N, M, B = 3, 23, 5  # 23 negatives: with 10 groups the last 3 columns are dropped, groups of 2


def hand_grouped_eq8(logits: np.ndarray, num_id: int, groups: int, seed: int) -> float:
    """Released rule, written out: drop the last M mod G negative columns, permute the rest with
    torch.randperm(M', seed), cut into G equal groups; per group log Σ_ID softmax([ID | group]); mean."""
    m = logits.shape[1] - num_id
    kept = m - m % groups
    perm = torch.randperm(kept, generator=torch.Generator().manual_seed(seed)).numpy()
    size = kept // groups
    values = []
    for row in logits:
        for g in range(groups):
            cols = np.concatenate([np.arange(num_id), num_id + perm[g * size:(g + 1) * size]])
            z = row[cols] - row[cols].max()
            p = np.exp(z) / np.exp(z).sum()
            values.append(np.log(p[:num_id].sum()))
    return float(np.mean(values))


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return 5 * torch.randn(B, N + M, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("groups, seed", [(10, 0), (4, 0), (5, 3), (2, 1)])
def test_grouped_ood_loss_matches_hand_computation(logits, groups, seed):
    got = ood_loss(logits, N, groups=groups, seed=seed).item()
    assert got == pytest.approx(hand_grouped_eq8(logits.numpy(), N, groups, seed), abs=1e-10)


def test_ten_groups_differ_from_ungrouped_and_ignore_the_dropped_tail(logits):
    ten = ood_loss(logits, N, groups=10)
    assert ten.item() != pytest.approx(ood_loss(logits, N).item(), abs=1e-3)
    changed = logits.clone()
    changed[:, -3:] += 50.0  # the M mod G = 3 last negatives are not in any group
    assert ood_loss(changed, N, groups=10).item() == pytest.approx(ten.item(), abs=1e-12)


def test_grouped_ood_loss_matches_the_official_epsilon_form(logits):
    """log(Σ softmax + 1e-16) per group, as the released trainer writes it (no saturation at these logits)."""
    kept = M - M % 10
    perm = torch.randperm(kept, generator=torch.Generator().manual_seed(0))
    groups = logits[:, N:][:, perm.view(10, -1)]                                    # B×10×2
    full = torch.cat([logits[:, None, :N].expand(B, 10, N), groups], dim=2).softmax(-1)
    official = torch.log(full[..., :N].sum(-1) + 1e-16).mean()
    assert ood_loss(logits, N, groups=10).item() == pytest.approx(official.item(), abs=1e-9)


def test_grouped_ood_loss_gradient_matches_finite_differences(logits):
    x = logits[:2].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ood_loss(x, N, groups=4), x)
    h = 1e-6
    numeric = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x.numel()):
            e = torch.zeros(x.numel(), dtype=x.dtype)
            e[i] = h
            e = e.view_as(x)
            numeric.view(-1)[i] = (ood_loss(x + e, N, groups=4) - ood_loss(x - e, N, groups=4)) / (2 * h)
    np.testing.assert_allclose(grad.numpy(), numeric.numpy(), atol=1e-7)
    assert float(grad[:, -(M % 4):].abs().max()) == 0.0  # dropped columns get no gradient


def test_group_rules():
    assert [len(g) for g in negative_groups(23, 10, drop_remainder=True)] == [2] * 10
    assert sorted(torch.cat(negative_groups(23, 10, drop_remainder=True)).tolist()) == list(range(20))
    assert [len(g) for g in negative_groups(23, 10)] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    # when G divides M the two rules give the same groups (the official M = 10,500 and the mini world's 40)
    for a, b in zip(negative_groups(40, 10), negative_groups(40, 10, drop_remainder=True)):
        assert torch.equal(a, b)
    with pytest.raises(ClipoodError, match="groups=30"):
        ood_loss(torch.zeros(2, N + M), N, groups=30)


def test_krnft_loss_and_training_task_pass_ood_groups(logits):
    labels = torch.tensor([0, 1, 2, 0, 1])
    out = krnft_loss(logits, labels, logits, N, None, ood_groups=10)
    assert out["ood_loss"].item() == pytest.approx(hand_grouped_eq8(logits.numpy(), N, 10, 0), abs=1e-10)

    from clipood.training.task import TrainingTask

    class Fixed(torch.nn.Module):  # an adapter that returns given cosines (logit_scale 1 below)
        requires = frozenset({"image_features"})
        num_id = N

        def __init__(self):
            super().__init__()
            self.register_buffer("base_text_features", torch.zeros(N + M, 4))
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, batch):
            from types import SimpleNamespace

            return SimpleNamespace(logits=self.w * batch["image_features"], base_cos=None)

    task = TrainingTask(Fixed(), {"ood": 1.0}, logit_scale=1.0, options={"ood_groups": 10, "seed": 0})
    got = task({"id_features": logits, "id_labels": labels, "neg_features": logits})["ood_loss"]
    assert got.item() == pytest.approx(hand_grouped_eq8(logits.numpy(), N, 10, 0), abs=1e-10)
