"""LSN (Nie et al., ICLR 2024; release junz-debug/lsn, ``main_feature_100_upload.py``): the losses and the score of
``adapters.lsn`` against the release's expressions written out with explicit loops in numpy float64 — on cosines,
as the release computes them: ``F.cross_entropy(F.softmax(100·cos), y)``, ``F.cross_entropy(F.softmax((1 − cos)·20),
y)``, ``loss_m`` = mean over classes of the mean cosine to the other sets' class-i features, and the test score
``max softmax(cos) + mean_k max softmax((1 − cos_k)/5)``. The named options are checked against their own forms."""
import numpy as np
import pytest
import torch
from parity_check import check

from adapters.lsn import (LSN_DEFAULTS, lsn_loss, lsn_negative_loss, lsn_negative_probs, lsn_orthogonality_loss,
                          lsn_positive_loss, lsn_score)
from clipood.errors import ClipoodError

RNG = np.random.default_rng(24)
B, N, K, D = 5, 6, 3, 10
POS_COS = RNG.uniform(-0.2, 0.4, size=(B, N))
NEG_COS = RNG.uniform(-0.2, 0.4, size=(B, N, K))
POS, NEG = 100 * POS_COS, 100 * NEG_COS          # clipood's scaled logits
LABELS = RNG.integers(0, N, size=B)
NEG_F = RNG.normal(size=(N, K, D))


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _ce(logits, y):  # torch's cross_entropy on one row: −log softmax(logits)_y
    return -np.log(_softmax(logits)[y])


def test_defaults_are_the_release():
    assert LSN_DEFAULTS["n_neg_prompts"] == 3 and LSN_DEFAULTS["n_ctx"] == 16 and LSN_DEFAULTS["orth_weight"] == 1.0
    assert (LSN_DEFAULTS["pos_lr"], LSN_DEFAULTS["neg_lr"], LSN_DEFAULTS["batch_size"]) == (1e-3, 2e-3, 8)


def test_positive_loss_is_cross_entropy_of_the_softmax():
    ref = np.mean([_ce(_softmax(100 * POS_COS[b]), LABELS[b]) for b in range(B)])
    check("lsn_pos_release", lsn_positive_loss(torch.tensor(POS), torch.tensor(LABELS)), ref, tol=1e-10)
    plain = np.mean([_ce(POS[b], LABELS[b]) for b in range(B)])
    check("lsn_pos_plain", lsn_positive_loss(torch.tensor(POS), torch.tensor(LABELS), on_probs=False), plain,
          tol=1e-10)


def test_negative_loss_is_each_sets_release_loss_summed():
    # each of the release's three models: F.cross_entropy(F.softmax((1 - similarity) * 20), labels), batch mean
    per_set = [np.mean([_ce(_softmax((1 - NEG_COS[b, :, k]) * 20), LABELS[b]) for b in range(B)]) for k in range(K)]
    check("lsn_neg_release", lsn_negative_loss(torch.tensor(NEG), torch.tensor(LABELS)), sum(per_set), tol=1e-10)
    comp = sum(np.mean([-np.log(1 - _softmax(NEG[b, :, k])[LABELS[b]]) for b in range(B)]) for k in range(K))
    check("lsn_neg_complementary", lsn_negative_loss(torch.tensor(NEG), torch.tensor(LABELS), "complementary"),
          comp, tol=1e-8)


def test_orthogonality_is_loss_m_of_each_set_summed_with_the_others_constant():
    t = NEG_F / np.linalg.norm(NEG_F, axis=-1, keepdims=True)
    loss_m = [np.mean([np.mean([t[i, k] @ t[i, l] for l in range(K) if l != k]) for i in range(N)]) for k in range(K)]
    x = torch.tensor(NEG_F, requires_grad=True)
    got = lsn_orthogonality_loss(x)
    check("lsn_orth_release", got, sum(loss_m), tol=1e-10)
    # gradient: set k's own term only (the other sets are computed without gradient in the release)
    got.backward()
    xs = torch.tensor(NEG_F, requires_grad=True)
    tt = torch.nn.functional.normalize(xs, dim=-1)
    ref = sum(torch.stack([torch.stack([(tt[i, k] * tt[i, l].detach()).sum() for l in range(K) if l != k]).mean()
                           for i in range(N)]).mean() for k in range(K))
    ref.backward()
    check("lsn_orth_grad", x.grad, xs.grad.numpy(), tol=1e-10)
    sq = sum(np.mean([np.mean([(t[i, k] @ t[i, l]) ** 2 for l in range(K) if l != k]) for i in range(N)])
             for k in range(K))
    check("lsn_orth_p2", lsn_orthogonality_loss(torch.tensor(NEG_F), 2), sq, tol=1e-10)
    assert float(lsn_orthogonality_loss(torch.tensor(NEG_F[:, :1]))) == 0.0


def test_total_is_the_weighted_sum():
    out = lsn_loss(torch.tensor(POS), torch.tensor(NEG), torch.tensor(LABELS), torch.tensor(NEG_F),
                   pos_weight=0.5, neg_weight=2.0, orth_weight=0.3)
    check("lsn_total", out["loss"], 0.5 * float(out["pos_loss"]) + 2.0 * float(out["neg_loss"])
          + 0.3 * float(out["orth_loss"]), tol=1e-10)


@pytest.mark.parametrize("w", [1.0, 0.5])
def test_score_is_the_release_test(w):
    ref, alt = [], []
    for b in range(B):
        yes = _softmax(POS_COS[b]).max()                                   # F.softmax(outputs_yes), T = 1
        no = [_softmax((1 - NEG_COS[b, :, k]) / 5).max() for k in range(K)]
        ref.append(yes + w * np.mean(no))
        alt.append(yes + w * np.mean([_softmax((1 - NEG_COS[b, :, k]) / 5) for k in range(K)], axis=0).max())
    check(f"lsn_score_w{w:g}", lsn_score(torch.tensor(POS), torch.tensor(NEG), neg_weight=w), np.array(ref),
          tol=1e-10)
    check(f"lsn_score_max_of_mean_w{w:g}", lsn_score(torch.tensor(POS), torch.tensor(NEG), neg_weight=w,
                                                     neg_reduce="max_of_mean"), np.array(alt), tol=1e-10)
    check("lsn_negprob_rows", lsn_negative_probs(torch.tensor(NEG)).sum(1), np.ones((B, K)), tol=1e-12)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ClipoodError, match="B×N×K"):
        lsn_score(torch.tensor(POS), torch.tensor(NEG[:, :, 0]))
    with pytest.raises(ClipoodError, match="neg_rule"):
        lsn_negative_loss(torch.tensor(NEG), torch.tensor(LABELS), "sigmoid")
    with pytest.raises(ClipoodError, match="N×K×D"):
        lsn_loss(torch.tensor(POS), torch.tensor(NEG), torch.tensor(LABELS), torch.tensor(NEG_F[:, :2]))
    with pytest.raises(ClipoodError, match="neg_reduce"):
        lsn_score(torch.tensor(POS), torch.tensor(NEG), neg_reduce="sum")
