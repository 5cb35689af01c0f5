"""Loss terms (Eq. 7–10) against hand formulas written here in numpy float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipood.errors import ClipoodError
from clipood.losses import (
    classification_loss,
    kr_cos_loss,
    kr_feature_loss,
    kr_logit_loss,
    kr_prob_loss,
    krnft_loss,
    ood_loss,
)

N, M, B = 4, 9, 5


def lse(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def ce(logits, labels):
    return float(np.mean([lse(row) - row[y] for row, y in zip(logits, labels)]))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    logits = 10 * torch.randn(B, N + M, generator=g, dtype=torch.float64)
    labels = torch.randint(0, N, (B,), generator=g)
    return logits, labels


def test_classification_loss_is_ce_over_all_columns(data):
    logits, labels = data
    got = classification_loss(logits, labels, num_id=N)
    assert got.item() == pytest.approx(ce(logits.numpy(), labels.numpy()), abs=1e-10)
    assert classification_loss(logits, labels).item() == pytest.approx(got.item(), abs=1e-12)


@pytest.mark.parametrize("groups, seed", [(2, 0), (3, 0), (4, 7), (9, 1)])
def test_grouped_classification_loss_matches_loop(groups, seed, data):
    logits, labels = data
    x, y = logits.numpy(), labels.numpy()
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(seed)).numpy()
    per_group = []
    for idx in np.array_split(perm, groups):  # near-equal sizes, larger groups first (as tensor_split)
        cols = list(range(N)) + [N + j for j in idx]
        per_group.append(ce(x[:, cols], y))
    got = classification_loss(logits, labels, num_id=N, groups=groups, seed=seed)
    assert got.item() == pytest.approx(np.mean(per_group), abs=1e-10)


def test_classification_loss_errors(data):
    logits, labels = data
    with pytest.raises(ClipoodError, match="needs num_id"):
        classification_loss(logits, labels, groups=2)
    with pytest.raises(ClipoodError, match="groups=10"):
        classification_loss(logits, labels, num_id=N, groups=10)
    with pytest.raises(ClipoodError, match=r"\[0, 4\)"):
        classification_loss(logits, torch.tensor([0, 1, 2, 3, 5]), num_id=N)
    with pytest.raises(ClipoodError, match="num_id=0"):
        classification_loss(logits, labels, num_id=0)
    with pytest.raises(ClipoodError, match="labels must be a 1-D tensor of 5"):
        classification_loss(logits, labels[:3])


def test_ood_loss_hand_formula(data):
    logits, _ = data
    x = logits.numpy()
    e = np.exp(x - x.max(axis=1, keepdims=True))
    expected = np.mean(np.log(e[:, :N].sum(1) / e.sum(1)))
    assert ood_loss(logits, N).item() == pytest.approx(expected, abs=1e-10)
    # the official form log(Σ_ID softmax + 1e-16) agrees at ordinary magnitudes
    official = torch.log(torch.softmax(logits, 1)[:, :N].sum(1) + 1e-16).mean()
    assert ood_loss(logits, N).item() == pytest.approx(official.item(), abs=1e-9)
    assert ood_loss(logits, N + M).item() == pytest.approx(0.0, abs=1e-12)  # all columns ID: log 1


def test_ood_loss_gradient_matches_analytic(data):
    logits, _ = data
    logits = logits.clone().requires_grad_(True)
    ood_loss(logits, N).backward()
    x = logits.detach().numpy()
    p_all = np.exp(x - lse(x)[:, None])
    p_id = np.exp(x[:, :N] - lse(x[:, :N])[:, None])
    expected = -p_all
    expected[:, :N] += p_id
    np.testing.assert_allclose(logits.grad.numpy(), expected / B, atol=1e-12)


def test_stability_with_large_logits():
    g = torch.Generator().manual_seed(1)
    logits = (1000 * torch.randn(B, N + M, generator=g)).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3, 0])
    x = logits.detach().double().numpy()
    cls = classification_loss(logits, labels, num_id=N, groups=3)
    ood = ood_loss(logits, N)
    assert torch.isfinite(cls) and torch.isfinite(ood)
    assert ood.item() == pytest.approx(np.mean(lse(x[:, :N]) - lse(x)), rel=1e-5)
    (cls + ood + kr_prob_loss(logits, logits.detach().flip(1))).backward()
    assert bool(torch.isfinite(logits.grad).all())


def test_kr_feature_loss_and_broadcasting():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(6, 8, generator=g, dtype=torch.float64)
    tuned = torch.randn(3, 6, 8, generator=g, dtype=torch.float64)
    bn, tn = base.numpy(), tuned.numpy()
    cos = (bn[None] * tn).sum(-1) / (np.linalg.norm(bn, axis=-1)[None] * np.linalg.norm(tn, axis=-1))
    assert kr_feature_loss(base, tuned).item() == pytest.approx(np.mean(1 - cos), abs=1e-12)
    assert kr_feature_loss(base, tuned[1]).item() == pytest.approx(np.mean(1 - cos[1]), abs=1e-12)
    same = tuned[1].expand(4, 6, 8)
    assert kr_feature_loss(base, same).item() == pytest.approx(kr_feature_loss(base, tuned[1]).item(), abs=1e-12)
    assert kr_feature_loss(base, 3 * base).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ClipoodError, match=r"\(6, 8\)"):
        kr_feature_loss(base, tuned[:, :5])


def test_kr_cos_loss():
    c = torch.tensor([[1.0, 0.5, -0.2], [0.9, 0.9, 0.9]])
    assert kr_cos_loss(c).item() == pytest.approx(np.mean(1 - c.numpy()), abs=1e-7)
    assert kr_cos_loss(c[0]).item() == pytest.approx(np.mean(1 - c[0].numpy()), abs=1e-7)
    with pytest.raises(ClipoodError, match="base_cos"):
        kr_cos_loss(torch.zeros(2, 2, 2))


def test_kr_logit_loss(data):
    tuned, _ = data
    base = tuned + torch.linspace(-1, 1, tuned.numel(), dtype=tuned.dtype).reshape(tuned.shape)
    diff = tuned.numpy() - base.numpy()
    assert kr_logit_loss(tuned, base).item() == pytest.approx(np.mean(diff**2), abs=1e-12)
    assert kr_logit_loss(tuned, base, p=1).item() == pytest.approx(np.mean(np.abs(diff)), abs=1e-12)
    t, b = tuned.clone().requires_grad_(True), base.clone().requires_grad_(True)
    kr_logit_loss(t, b).backward()
    assert b.grad is None  # the frozen target is detached
    np.testing.assert_allclose(t.grad.numpy(), 2 * diff / diff.size, atol=1e-12)


def test_kr_prob_loss(data):
    tuned, _ = data
    base = tuned.flip(0)
    t, b = tuned.numpy(), base.numpy()
    log_q = t - lse(t)[:, None]
    log_p = b - lse(b)[:, None]
    expected = np.mean((np.exp(log_p) * (log_p - log_q)).sum(1))
    assert kr_prob_loss(tuned, base).item() == pytest.approx(expected, abs=1e-10)
    assert kr_prob_loss(tuned, tuned).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ClipoodError, match="shape of tuned_logits"):
        kr_prob_loss(tuned, base[:, :3])


def test_krnft_loss_combines_terms(data):
    logits, labels = data
    neg = logits.flip(0)[:3]
    base_cos = torch.rand(B, N + M, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = krnft_loss(logits, labels, neg, N, base_cos, lambda1=0.3, lambda2=100.0, groups=3)
    assert set(out) == {"loss", "cls_loss", "ood_loss", "kr_loss"}
    x, nx = logits.numpy(), neg.numpy()
    cls = classification_loss(logits, labels, num_id=N, groups=3).item()
    ood = np.mean(lse(nx[:, :N]) - lse(nx))
    kr = np.mean(1 - base_cos.numpy())
    assert out["cls_loss"].item() == pytest.approx(cls, abs=1e-12)
    assert out["ood_loss"].item() == pytest.approx(ood, abs=1e-10)
    assert out["kr_loss"].item() == pytest.approx(kr, abs=1e-12)
    assert out["loss"].item() == pytest.approx(cls + 0.3 * ood + 100 * kr, abs=1e-9)
    assert out["cls_loss"].item() != pytest.approx(ce(x, labels.numpy()))  # grouping changed the value
    bare = krnft_loss(logits, labels, None, N, None)
    assert bare["ood_loss"].item() == 0 and bare["kr_loss"].item() == 0
    assert bare["loss"].item() == pytest.approx(ce(x, labels.numpy()), abs=1e-10)


def _finite_difference_check(fn, x, h=1e-6):
    """Autograd gradient of a scalar fn vs central differences (float64)."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(x), x)
    numeric = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x.numel()):
            e = torch.zeros_like(x).view(-1)
            e[i] = h
            e = e.view_as(x)
            numeric.view(-1)[i] = (fn(x + e) - fn(x - e)) / (2 * h)
    np.testing.assert_allclose(grad.numpy(), numeric.numpy(), atol=1e-7)


def test_losses_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    target = torch.randn(3, 6, generator=g, dtype=torch.float64)
    _finite_difference_check(lambda z: classification_loss(z, y, num_id=3, groups=2), x)
    _finite_difference_check(lambda z: ood_loss(z, 3), x)
    _finite_difference_check(lambda z: kr_prob_loss(z, target), x)
    _finite_difference_check(lambda z: kr_logit_loss(z, target), x)
