"""The training loop's optimiser, learning-rate schedule and gradient clipping, against hand computations.

The model is ``LinearLoss``: loss = Σ_p ⟨p, g_p(t)⟩, so the gradient at step t is the chosen g_p(t) and every
optimiser step can be written out (torch's documented update rules, restated below). The loop is the real one
(8 synthetic images, milliseconds per step); see training_probe.py for the only internal names used.
"""
from __future__ import annotations

import math

import pytest
import torch

from training_probe import LinearLoss, fit_recording, train_settings

W0 = {"w": torch.tensor([1.0, -2.0, 0.5])}
G = {"w": torch.tensor([1.0, 2.0, -4.0])}


def plain_sgd(**train):
    """SGD without momentum or weight decay: w_{t+1} = w_t − lr_t·g_t, so lr_t = (w_t − w_{t+1}) / g_t."""
    return train_settings(optimizer="sgd", momentum=0.0, weight_decay=0.0, **train)


def effective_lrs(weights, grad):
    """The learning rate each step really applied, per coordinate (all equal for plain SGD)."""
    return [((a["w"] - b["w"]) / grad["w"]).tolist() for a, b in zip(weights, weights[1:])]


# ---------------------------------------------------------------------------------------------- schedule
def test_warmup_then_cosine_learning_rate_by_step(tmp_path):
    """8 images, batch 2, 2 epochs → T = 8 steps; warm-up W = 3. The schedule, written out:
    lr_s = lr·(s+1)/W for s < W (the first step already learns), then lr·½(1 + cos(π (s−W)/(T−W)))."""
    lr, W, T = 0.1, 3, 8
    logged, weights, groups = fit_recording(
        LinearLoss(W0, [G]), plain_sgd(lr=lr, warmup_steps=W, schedule="cosine", epochs=2, batch_size=2),
        tmp_path)
    want = [lr * 1 / 3, lr * 2 / 3, lr * 3 / 3,                            # warm-up: steps 0, 1, 2 (its end)
            lr * 0.5 * (1 + math.cos(0.0)),                                # step 3: cosine starts at lr
            lr * 0.5 * (1 + math.cos(math.pi / 5)), lr * 0.5 * (1 + math.cos(2 * math.pi / 5)),
            lr * 0.5 * (1 + math.cos(3 * math.pi / 5)),
            lr * 0.5 * (1 + math.cos(4 * math.pi / 5))]                    # step 7: the last
    assert len(want) == T
    assert logged == pytest.approx(want, rel=1e-12, abs=1e-15)
    for s, (row, w) in enumerate(zip(effective_lrs(weights, G), want)):
        assert row == pytest.approx([w] * 3, rel=1e-9), f"step {s}: applied lr {row[0]}, schedule says {w}"
    assert groups[0]["lr"] == pytest.approx(want[-1], rel=1e-12)          # what the optimiser holds at the end


def test_constant_schedule_with_warmup_and_cosine_without(tmp_path):
    lr = 0.05
    logged, weights, _ = fit_recording(
        LinearLoss(W0, [G]), plain_sgd(lr=lr, warmup_steps=2, schedule="constant", epochs=1, batch_size=2),
        tmp_path / "constant")
    want = [lr / 2, lr, lr, lr]
    assert logged == pytest.approx(want, rel=1e-12)
    assert [r[0] for r in effective_lrs(weights, G)] == pytest.approx(want, rel=1e-9)
    # no warm-up: the very first step runs at the full learning rate, the last at ½(1 + cos(3π/4))·lr
    logged, weights, _ = fit_recording(
        LinearLoss(W0, [G]), plain_sgd(lr=lr, warmup_steps=0, schedule="cosine", epochs=1, batch_size=2),
        tmp_path / "cosine")
    want = [lr * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert want[0] == lr
    assert [r[0] for r in effective_lrs(weights, G)] == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------------------------------------- clipping
@pytest.mark.parametrize("clip", [1.0, 4.5, 10.0, 0.0])
def test_gradient_clipping_scales_the_joint_norm(tmp_path, clip):
    """clip_grad_norm_ semantics: the gradients of all parameters together, g = (3, 0 | 0, 4) with ‖g‖ = 5,
    are scaled by min(1, c / (‖g‖ + 1e-6)); never clipped element-wise (by value) nor per parameter.
    One SGD step at lr 1 with no momentum makes w_1 = w_0 − clipped g. clip 0 = off."""
    init = {"a": torch.tensor([0.5, 0.5]), "b": torch.tensor([-1.0, 1.0])}
    g = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 4.0])}
    _, weights, _ = fit_recording(LinearLoss(init, [g]),
                                  plain_sgd(lr=1.0, schedule="constant", grad_clip=clip, epochs=1, batch_size=8),
                                  tmp_path)
    assert len(weights) == 2  # one step
    scale = min(1.0, clip / (5.0 + 1e-6)) if clip else 1.0
    for k in init:
        applied = (weights[0][k] - weights[1][k]).tolist()
        assert applied == pytest.approx((scale * g[k].double()).tolist(), rel=1e-9, abs=1e-12), (k, clip)
    total = math.sqrt(sum(float(((weights[0][k] - weights[1][k]) ** 2).sum()) for k in init))
    assert total == pytest.approx(min(5.0, clip) if clip else 5.0, rel=1e-6)


# --------------------------------------------------------------------------------------------- optimisers
GRADS = [{"w": torch.tensor([1.0, 2.0, -4.0])}, {"w": torch.tensor([-0.5, 1.0, 3.0])},
         {"w": torch.tensor([2.0, -1.0, 0.25])}]


def test_sgd_uses_the_configured_momentum_and_weight_decay(tmp_path):
    """torch.optim.SGD (dampening 0, not Nesterov): d_t = g_t + λ w_t; b_1 = d_1, b_t = μ b_{t−1} + d_t;
    w_{t+1} = w_t − lr·b_t. Three steps with different gradients, μ = 0.8, λ = 0.01, lr = 0.05 (constant)."""
    mu, wd, lr = 0.8, 0.01, 0.05
    _, weights, groups = fit_recording(
        LinearLoss(W0, GRADS),
        train_settings(optimizer="sgd", momentum=mu, weight_decay=wd, lr=lr, schedule="constant", epochs=1,
                       batch_size=2, max_steps=3), tmp_path)
    w, buf = W0["w"].double().clone(), None
    for t, g in enumerate(GRADS):
        assert weights[t]["w"].tolist() == pytest.approx(w.tolist(), rel=1e-12), f"before step {t}"
        d = g["w"].double() + wd * w
        buf = d if buf is None else mu * buf + d
        w = w - lr * buf
    assert weights[3]["w"].tolist() == pytest.approx(w.tolist(), rel=1e-12)
    (group,) = groups
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (lr, mu, wd)
    assert group["dampening"] == 0 and group["nesterov"] is False


def test_adamw_uses_the_configured_lr_and_weight_decay_and_default_betas(tmp_path):
    """torch.optim.AdamW (β = (0.9, 0.999), ε = 1e-8; the config sets lr and λ): w ← w·(1 − lr·λ), then
    m_t = β1 m + (1−β1) g, v_t = β2 v + (1−β2) g², w ← w − lr·m̂/(√v̂ + ε), m̂ = m/(1−β1^t), v̂ = v/(1−β2^t)."""
    lr, wd, (b1, b2), eps = 0.02, 0.3, (0.9, 0.999), 1e-8
    _, weights, groups = fit_recording(
        LinearLoss(W0, GRADS),
        train_settings(optimizer="adamw", weight_decay=wd, lr=lr, schedule="constant", epochs=1, batch_size=2,
                       max_steps=3), tmp_path)
    w = W0["w"].double().clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t, g in enumerate(GRADS, start=1):
        g = g["w"].double()
        w = w * (1 - lr * wd)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        assert weights[t]["w"].tolist() == pytest.approx(w.tolist(), rel=1e-10), f"after step {t}"
    (group,) = groups
    assert (group["lr"], group["weight_decay"], tuple(group["betas"]), group["eps"]) == (lr, wd, (b1, b2), eps)
    assert group["amsgrad"] is False and "momentum" not in group
