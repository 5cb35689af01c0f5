"""Parity of the fitted-statistics scores with OpenOOD v1.5's definitions (numpy / sklearn float64), with the
statistics fitted by clipood's streaming fits (in uneven batches).

OpenOOD files: ``openood/postprocessors/knn_postprocessor.py`` (faiss ``IndexFlatL2``: squared distances; its
``normalizer`` adds 1e-10, kept in the reference), ``mds_postprocessor.py``, ``rmds_postprocessor.py``,
``vim_postprocessor.py`` (sklearn ``EmpiricalCovariance``, ``np.linalg.eig``, ``np.linalg.pinv``).
"""
import numpy as np
import pytest
import sklearn.covariance
import torch
from parity_check import check, uneven_batches
from scipy.special import logsumexp

from clipood.errors import ClipoodError
from clipood.posthoc import (GaussianFit, KNNFit, LinearHead, ViMFit, fit_statistics, knn, mahalanobis, rmds,
                             vim)

RNG = np.random.default_rng(7)
C, FEAT, N = 4, 16, 240
CENTRES = RNG.normal(0.0, 2.0, size=(C, FEAT))
LABELS = np.repeat(np.arange(C), N // C)
MIX = RNG.normal(0.0, 1.0, size=(FEAT, FEAT)) / 4  # correlated, anisotropic features
TRAIN = CENTRES[LABELS] + RNG.normal(0.0, 1.0, size=(N, FEAT)) @ MIX + 0.3 * RNG.normal(size=(N, FEAT))
TEST = np.concatenate([CENTRES[[0, 2]] + RNG.normal(0.0, 0.5, size=(2, FEAT)), RNG.normal(0, 3, size=(5, FEAT))])
W = RNG.normal(0.0, 0.5, size=(6, FEAT))
BIAS = RNG.normal(0.0, 1.0, size=6)


def _batches(x, y=None, sizes=(37, 1, 90, 200)):
    return uneven_batches(x, y, sizes)


def _openood_normalizer(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True) + 1e-10


@pytest.mark.parametrize("k", [1, 50, N])
def test_knn_is_the_kth_squared_distance(k):
    """knn_postprocessor.py: D = IndexFlatL2(normalised train).search(normalised x, K); score = −D[:, -1]."""
    bank = _openood_normalizer(TRAIN)
    q = _openood_normalizer(TEST)
    d = ((q[:, None, :] - bank[None, :, :]) ** 2).sum(-1)
    ref = -np.sort(d, axis=1)[:, k - 1]
    stats = fit_statistics(KNNFit(), _batches(TRAIN))
    check(f"knn_k{k}", knn(torch.tensor(TEST), stats, k=k), ref)
    check(f"knn_k{k}_chunked", knn(torch.tensor(TEST), stats, k=k, chunk_size=7), ref)


def test_knn_refuses_k_above_the_bank():
    stats = fit_statistics(KNNFit(), _batches(TRAIN))
    with pytest.raises(ClipoodError, match="bank holds"):
        knn(torch.tensor(TEST), stats, k=N + 1)


def _class_stats(train, labels):
    means = np.stack([train[labels == c].mean(0) for c in range(C)])
    centred = np.concatenate([train[labels == c] - means[c] for c in range(C)])
    prec = sklearn.covariance.EmpiricalCovariance(assume_centered=False).fit(centred).precision_
    return means, prec


def _maha(x, mean, prec):
    t = x - mean
    return np.einsum("bi,ij,bj->b", t, prec, t)


@pytest.mark.parametrize("rows", [N, 10], ids=["full", "few_shot_singular"])
def test_mahalanobis_is_mds_postprocessor(rows):
    """mds_postprocessor.py: class means; precision = EmpiricalCovariance(assume_centered=False) of the
    class-centred features; score = max_c −(x − μ_c) P (x − μ_c)ᵀ. With 10 rows for 16 dims the covariance is
    singular and both sides use the pseudo-inverse."""
    idx = np.concatenate([np.flatnonzero(LABELS == c)[: max(1, rows // C)] for c in range(C)])
    train, labels = TRAIN[idx], LABELS[idx]
    means, prec = _class_stats(train, labels)
    ref = np.max(np.stack([-_maha(TEST, means[c], prec) for c in range(C)], 1), axis=1)
    stats = fit_statistics(GaussianFit(C), _batches(train, labels, sizes=(3, 5)))
    check(f"mds_{rows}", mahalanobis(torch.tensor(TEST), stats), ref)


def test_rmds_is_rmds_postprocessor():
    """rmds_postprocessor.py: background = −(x − μ₀) P₀ (x − μ₀)ᵀ with μ₀ the mean of all train features and P₀
    the precision of their centred copy; score = max_c [class score_c − background]."""
    means, prec = _class_stats(TRAIN, LABELS)
    mu0 = TRAIN.mean(0)
    prec0 = sklearn.covariance.EmpiricalCovariance(assume_centered=False).fit(TRAIN - mu0).precision_
    bg = -_maha(TEST, mu0, prec0)
    ref = np.max(np.stack([-_maha(TEST, means[c], prec) - bg for c in range(C)], 1), axis=1)
    stats = fit_statistics(GaussianFit(C), _batches(TRAIN, LABELS))
    check("rmds", rmds(torch.tensor(TEST), stats), ref)
    assert np.abs(ref - np.max(np.stack([-_maha(TEST, means[c], prec) for c in range(C)], 1), axis=1)).max() > 1e-3


def _vim_ref(train, x, w, b, dim):
    u = -np.matmul(np.linalg.pinv(w), b)
    ec = sklearn.covariance.EmpiricalCovariance(assume_centered=True).fit(train - u)
    vals, vecs = np.linalg.eig(ec.covariance_)
    vals, vecs = np.real_if_close(vals), np.real_if_close(vecs)
    ns = np.ascontiguousarray((vecs.T[np.argsort(vals * -1)[dim:]]).T)
    alpha = (train @ w.T + b).max(axis=-1).mean() / np.linalg.norm((train - u) @ ns, axis=-1).mean()
    return -alpha * np.linalg.norm((x - u) @ ns, axis=-1) + logsumexp(x @ w.T + b, axis=-1)


@pytest.mark.parametrize("dim", [8, 3])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "clip_no_bias"])
def test_vim_is_vim_postprocessor(dim, bias):
    """vim_postprocessor.py: u = −pinv(W)·b; eig of EmpiricalCovariance(assume_centered=True) of train − u; NS =
    eigenvectors past the ``dim`` largest; α = mean max train logit / mean ‖(train − u)·NS‖; score = energy −
    α‖(x − u)·NS‖ (dim 256 in configs/postprocessors/vim.yml; 8 and 3 of 16 here)."""
    b = BIAS if bias else np.zeros(len(W))
    head = LinearHead(torch.tensor(W), torch.tensor(b) if bias else None)
    stats = fit_statistics(ViMFit(head, dim=dim), _batches(TRAIN))
    check(f"vim_dim{dim}_{'bias' if bias else 'nobias'}", vim(torch.tensor(TEST), head, stats),
          _vim_ref(TRAIN, TEST, W, b, dim))


def test_vim_dim_must_leave_a_residual():
    with pytest.raises(ClipoodError, match="dim"):
        ViMFit(LinearHead(torch.tensor(W)), dim=FEAT)
