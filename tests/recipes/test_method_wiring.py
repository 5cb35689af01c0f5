"""The training objective as a recipe builds it from its config, on a 2-crop batch, against Eq. 10 by hand.

One ID crop (label 1) and one negative crop go through an NFT adapter whose weights are moved off the
identity. Written out in float64 with K = 5 labels (N = 2 ID), logit scale s from ``eval.logit_scale``:

    c'_i(h)   = the tuned text features for meta-net input h (the adapter's explicit Eq. 6 form)
    l(x, h)   = s · cos(x, c'_i(h))                 x: the crop scored, h: the feature its meta-nets see
    L_p       = CE(l(v_id, h_id), y)                 Eq. 7, ID crops only, over all K columns
    L_n       = log Σ_{i≤N} softmax(l(v_neg, h_neg))_i   Eq. 8, negative crops only
    L_kr      = mean over both crops and all K rows of 1 − cos(c_i, c'_i(h))   Eq. 9, ID and negative crops
    L         = w_cls·L_p + w_ood·L_n + w_kr·L_kr    Eq. 10 with the configured weights

h is the crop itself unless the batch carries condition features; then ID crops use ``id_condition`` and
negative crops ``neg_condition``. Each test also checks that the plausible slip gives another number, so it
can fail.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training_probe import (adapter_of, collate_conditions, crop_cache, method_from_config, method_terms,
                            recipe_config)
from helpers import unit as unit32


def unit(*shape, seed):  # float64 draws: the hand formulas below are compared at 1e-12
    return unit32(*shape, seed=seed, dtype=torch.float64)


K, N, D, SCALE = 5, 2, 4, 10.0
WEIGHTS = {"cls": 1.0, "ood": 0.7, "kr": 3.0}


@pytest.fixture(scope="module")
def world():
    return {"C": unit(K, D, seed=1), "v_id": unit(1, D, seed=2), "v_neg": unit(1, D, seed=3),
            "h_id": unit(1, D, seed=4), "h_neg": unit(1, D, seed=5), "y": torch.tensor([1])}


def moved_method(C, losses):
    """Method from the config, every adapter weight moved by N(0, 0.3²) (a fresh NFT is the identity)."""
    cfg = recipe_config("adapter.name=nft", "adapter.options.hidden_dim=3", f"eval.logit_scale={SCALE}",
                        *(f"losses.{k}={losses.get(k, 0.0)}" for k in ("cls", "ood", "kr", "kr_logit", "kr_prob")))
    m = method_from_config(cfg, C, N)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


class ByHand:
    """Eq. 6–10 pieces for one crop x whose meta-nets see h (float64, explicit B×K×D tuned features)."""

    def __init__(self, method, C):
        self.adapter, self.C = adapter_of(method), C

    def tuned(self, h):
        with torch.no_grad():
            return self.adapter.tuned_text_features(h)[0].double()           # K×D for the one image h

    def logits(self, x, h):
        return SCALE * (F.normalize(x[0], dim=0) @ self.tuned(h).T)          # K

    def base_cos(self, h):
        return (self.C * self.tuned(h)).sum(1)                               # K: cos(c_i, c'_i), unit rows

    @staticmethod
    def ce(lg, y):
        return float(torch.logsumexp(lg, 0) - lg[y])

    @staticmethod
    def ood(lg):
        return float(torch.logsumexp(lg[:N], 0) - torch.logsumexp(lg, 0))


def eq10(hand, w, v_id, h_id, v_neg, h_neg, y):
    cls = hand.ce(hand.logits(v_id, h_id), int(y))
    ood = hand.ood(hand.logits(v_neg, h_neg))
    kr = float((1 - torch.cat([hand.base_cos(h_id), hand.base_cos(h_neg)])).mean())
    return {"cls_loss": cls, "ood_loss": ood, "kr_loss": kr,
            "loss": w["cls"] * cls + w["ood"] * ood + w["kr"] * kr}


def assert_terms(got, want):
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), (k, got[k], want[k])


def test_two_crop_batch_total_is_eq10_self_conditioned(world):
    """No condition features: each crop's meta-nets see the crop itself."""
    w = world
    m = moved_method(w["C"], WEIGHTS)
    hand = ByHand(m, w["C"])
    got = method_terms(m, w["v_id"], w["y"], w["v_neg"])
    want = eq10(hand, WEIGHTS, w["v_id"], w["v_id"], w["v_neg"], w["v_neg"], w["y"])
    assert_terms(got, want)
    # the slips this must catch give other numbers: KR from the ID crop only; a crop conditioned on the other
    kr_id_only = float((1 - hand.base_cos(w["v_id"])).mean())
    assert abs(WEIGHTS["kr"] * (kr_id_only - want["kr_loss"])) > 1e-3
    assert abs(hand.ood(hand.logits(w["v_neg"], w["v_id"])) - want["ood_loss"]) > 1e-3
    assert abs(hand.ce(hand.logits(w["v_id"], w["v_neg"]), 1) - want["cls_loss"]) > 1e-3


def test_two_crop_batch_uses_each_crops_own_condition(world):
    """With condition features (train.condition=top_crop): ID crops' meta-nets see id_condition, negative
    crops' see neg_condition — never the other one, never the crop itself."""
    w = world
    m = moved_method(w["C"], WEIGHTS)
    hand = ByHand(m, w["C"])
    got = method_terms(m, w["v_id"], w["y"], w["v_neg"], id_condition=w["h_id"], neg_condition=w["h_neg"])
    want = eq10(hand, WEIGHTS, w["v_id"], w["h_id"], w["v_neg"], w["h_neg"], w["y"])
    assert_terms(got, want)
    swapped = eq10(hand, WEIGHTS, w["v_id"], w["h_id"], w["v_neg"], w["h_id"], w["y"])   # neg sees id_condition
    assert abs(swapped["loss"] - want["loss"]) > 1e-3
    own = eq10(hand, WEIGHTS, w["v_id"], w["v_id"], w["v_neg"], w["v_neg"], w["y"])      # conditions ignored
    assert abs(own["loss"] - want["loss"]) > 1e-3


def test_configured_weights_scale_the_terms(world):
    """The total follows the config's weights (here another λ1, λ2), not constants."""
    w = world
    weights = {"cls": 0.5, "ood": 2.0, "kr": 40.0}
    m = moved_method(w["C"], weights)
    got = method_terms(m, w["v_id"], w["y"], w["v_neg"])
    want = eq10(ByHand(m, w["C"]), weights, w["v_id"], w["v_id"], w["v_neg"], w["v_neg"], w["y"])
    assert_terms(got, want)


def test_kr_prob_is_kl_of_frozen_to_tuned_softmax_on_both_crops(world):
    """KR on probabilities (Fig. 4c): mean over the crops of KL(p_frozen ‖ p_tuned) = Σ_k p_f (log p_f − log
    p_t), p_f = softmax(s·v·C), p_t = softmax(l(v, v)). The two directions differ on this pair."""
    w = world
    weights = {"cls": 1.0, "ood": 0.3, "kr_prob": 2.0}
    m = moved_method(w["C"], weights)
    hand = ByHand(m, w["C"])
    got = method_terms(m, w["v_id"], w["y"], w["v_neg"])

    def kl(p_log, q_log):
        return float((p_log.exp() * (p_log - q_log)).sum())

    fwd, rev = [], []
    for v in (w["v_id"], w["v_neg"]):
        log_f = torch.log_softmax(SCALE * v[0] @ w["C"].T, 0)
        log_t = torch.log_softmax(hand.logits(v, v), 0)
        fwd.append(kl(log_f, log_t))
        rev.append(kl(log_t, log_f))
    want = sum(fwd) / 2
    assert abs(sum(rev) / 2 - want) > 1e-3, "the pair must be asymmetric for the test to mean anything"
    assert got["kr_prob_loss"] == pytest.approx(want, rel=1e-9)
    cls = hand.ce(hand.logits(w["v_id"], w["v_id"]), 1)
    ood = hand.ood(hand.logits(w["v_neg"], w["v_neg"]))
    assert got["loss"] == pytest.approx(cls + 0.3 * ood + 2.0 * want, rel=1e-9)


def test_kr_prob_loss_direction_on_an_asymmetric_pair():
    """clipood.losses.kr_prob_loss(tuned, base) = KL(softmax(base) ‖ softmax(tuned)), batch mean, by hand:
    base rows (0, 0, 0) and (2, 2, 0); tuned rows (5, 0, 0) and (0, 1, 3)."""
    from clipood.losses import kr_prob_loss

    tuned = torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    base = torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 0.0]], dtype=torch.float64)

    def softmax(row):
        z = sum(math.exp(x) for x in row)
        return [math.exp(x) / z for x in row]

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    p = [softmax(r) for r in base.tolist()]
    q = [softmax(r) for r in tuned.tolist()]
    forward = (kl(p[0], q[0]) + kl(p[1], q[1])) / 2      # KL(p_base ‖ p_tuned)
    reverse = (kl(q[0], p[0]) + kl(q[1], p[1])) / 2
    assert abs(forward - reverse) > 0.1
    assert float(kr_prob_loss(tuned, base)) == pytest.approx(forward, rel=1e-12)
    # the tuned side gets the gradient, the frozen side is a constant target
    t = tuned.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    kr_prob_loss(t, b).backward()
    assert b.grad is None or float(b.grad.abs().max()) == 0.0
    # d KL(p ‖ softmax(t)) / dt = (q − p) / batch size
    want_grad = (torch.tensor(q, dtype=torch.float64) - torch.tensor(p, dtype=torch.float64)) / 2
    assert t.grad.tolist() == [pytest.approx(r, abs=1e-12) for r in want_grad.tolist()]


def test_top_crop_condition_is_the_own_images_top_crop():
    """train.condition=top_crop: every ID and negative crop of image i is conditioned on image i's top crop
    (rows follow the batch's image order); condition=self hands no condition features over."""
    cache = crop_cache(3, q=2, dim=4)
    idf, idc, ngf, ngc = collate_conditions(cache, [2, 0], "top_crop")
    own = cache.top_features[[2, 2, 0, 0]]
    assert torch.equal(idf, cache.id_features[[4, 5, 0, 1]]) and torch.equal(ngf, cache.neg_features[[4, 5, 0, 1]])
    assert torch.equal(idc, own) and torch.equal(ngc, own)
    _, idc, _, ngc = collate_conditions(cache, [2, 0], "self")
    assert idc is None and ngc is None
