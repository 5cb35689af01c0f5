"""LSN (Nie et al., ICLR 2024; no public code): the losses and score of ``adapters.lsn`` against the formulas of its
module docstring (clipood's reading of the paper: negative classifier softmax(−s̄/T), CE on it or negative learning
−log(1 − p_y), mean |cos|^p over the K negative prompts of each class, max positive softmax + max negative
probability), written out with explicit loops in numpy float64."""
import numpy as np
import pytest
import torch
from parity_check import check

from adapters.lsn import (LSN_DEFAULTS, lsn_loss, lsn_negative_loss, lsn_negative_probs, lsn_orthogonality_loss,
                          lsn_score)
from clipood.errors import ClipoodError

RNG = np.random.default_rng(24)
B, N, K, D = 5, 6, 3, 10
POS = RNG.normal(20.0, 4.0, size=(B, N))
NEG = RNG.normal(20.0, 4.0, size=(B, N, K))
LABELS = RNG.integers(0, N, size=B)
NEG_F = RNG.normal(size=(N, K, D))


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_defaults():
    assert LSN_DEFAULTS["n_neg_prompts"] == 3 and LSN_DEFAULTS["neg_rule"] == "dissimilarity"


@pytest.mark.parametrize("rule", ["dissimilarity", "complementary"])
def test_negative_loss_per_image_and_prompt_set(rule):
    total = 0.0
    for b in range(B):
        for k in range(K):
            if rule == "dissimilarity":
                total += -np.log(_softmax(-NEG[b, :, k])[LABELS[b]])
            else:
                total += -np.log(1.0 - _softmax(NEG[b, :, k])[LABELS[b]])
    check(f"lsn_neg_{rule}", lsn_negative_loss(torch.tensor(NEG), torch.tensor(LABELS), rule), total / (B * K),
          tol=1e-10)


def test_the_two_rules_differ_and_both_push_the_own_class_negative_prompts_away():
    y = torch.tensor(LABELS)
    neg = torch.tensor(NEG, requires_grad=True)
    a = lsn_negative_loss(neg, y, "dissimilarity")
    a.backward()
    g_own = neg.grad[torch.arange(B), y]
    assert bool((g_own > 0).all())  # gradient descent lowers the own-class negative similarity
    assert abs(float(a.detach() - lsn_negative_loss(torch.tensor(NEG), y, "complementary"))) > 1e-3


@pytest.mark.parametrize("power", [1, 2])
def test_orthogonality_over_the_prompts_of_each_class(power):
    t = NEG_F / np.linalg.norm(NEG_F, axis=-1, keepdims=True)
    vals = [abs(t[i, a] @ t[i, b]) ** power for i in range(N) for a in range(K) for b in range(K) if a != b]
    check(f"lsn_orth_p{power}", lsn_orthogonality_loss(torch.tensor(NEG_F), power), np.mean(vals), tol=1e-10)
    assert float(lsn_orthogonality_loss(torch.tensor(NEG_F[:, :1]))) == 0.0


def test_total_is_the_weighted_sum():
    out = lsn_loss(torch.tensor(POS), torch.tensor(NEG), torch.tensor(LABELS), torch.tensor(NEG_F),
                   pos_weight=0.5, neg_weight=2.0, orth_weight=0.3)
    lpos = np.mean([-np.log(_softmax(POS[b])[LABELS[b]]) for b in range(B)])
    check("lsn_pos", out["pos_loss"], lpos, tol=1e-10)
    check("lsn_total", out["loss"], 0.5 * lpos + 2.0 * float(out["neg_loss"]) + 0.3 * float(out["orth_loss"]),
          tol=1e-10)


@pytest.mark.parametrize("t,w", [(100.0, 1.0), (1.0, 0.5)])
def test_score_adds_positive_mcm_and_negative_classifier_maxima(t, w):
    ref = []
    for b in range(B):
        pbar = np.mean([_softmax(-NEG[b, :, k] / t) for k in range(K)], axis=0)
        ref.append(_softmax(POS[b] / t).max() + w * pbar.max())
    check(f"lsn_score_T{t:g}", lsn_score(torch.tensor(POS), torch.tensor(NEG), t, w), np.array(ref), tol=1e-10)
    p = lsn_negative_probs(torch.tensor(NEG), t)
    check(f"lsn_negprob_rows_T{t:g}", p.sum(1), np.ones(B), tol=1e-12)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ClipoodError, match="B×N×K"):
        lsn_score(torch.tensor(POS), torch.tensor(NEG[:, :, 0]))
    with pytest.raises(ClipoodError, match="neg_rule"):
        lsn_negative_loss(torch.tensor(NEG), torch.tensor(LABELS), "sigmoid")
    with pytest.raises(ClipoodError, match="N×K×D"):
        lsn_loss(torch.tensor(POS), torch.tensor(NEG), torch.tensor(LABELS), torch.tensor(NEG_F[:, :2]))
