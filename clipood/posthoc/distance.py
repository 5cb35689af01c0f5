"""Scores from fitted ID feature statistics: KNN, Mahalanobis (MDS), Relative Mahalanobis (RMDS) and ViM.

``features`` are (B, F) in the space the statistics were fitted on (CLIP: the normalised image features, or the
pre-projection features). Statistics come from :mod:`clipood.posthoc.fit`. Every score is computed in float64
and returned as float64 for float64 input, float32 otherwise; higher = more ID.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError

from ._checks import as_matrix, integer, out_dtype, same_width
from .heads import Head, require_linear
from .stats import GaussianStats, KNNStats, ViMStats

__all__ = ["knn", "mahalanobis", "rmds", "vim"]


def _stats(stats: object, cls: type, score: str):
    if not isinstance(stats, cls):
        raise ClipoodError(f"the '{score}' score needs {cls.__name__} (from clipood.posthoc.fit), got "
                           f"{type(stats).__name__}")
    return stats


def knn(features: torch.Tensor, stats: KNNStats, *, k: int = 50, chunk_size: int = 65536) -> torch.Tensor:
    """KNN (Sun et al., ICML 2022), OpenOOD ``knn_postprocessor.py`` (K = 50).

        S = − ‖ẑ − ẑ_(k)‖²,   ẑ = z / ‖z‖

    the negative *squared* Euclidean distance (faiss ``IndexFlatL2`` returns squared distances) from the
    normalised feature to its k-th nearest normalised ID training feature (``stats.bank``). The ranking is the
    paper's (unsquared) distance's. The bank is searched ``chunk_size`` rows at a time (exact, never B×N at once).
    OpenOOD normalises as ``z / ‖z‖ + 1e-10`` (the constant added to every entry); clipood divides only (the
    difference in S is below 1e-9).
    """
    x = as_matrix(features, "features")
    st = _stats(stats, KNNStats, "knn")
    n = st.bank.shape[0]
    kk = integer(k, "k", 1, n, f"the bank holds {n} ID features (OpenOOD: K = 50)")
    step = integer(chunk_size, "chunk_size", 1)
    same_width(x, st.bank.shape[1], "features", "the KNN bank")
    dt = out_dtype(x)
    q = F.normalize(x.to(dt), dim=-1)
    qq = (q * q).sum(dim=1, keepdim=True)
    best = None
    for s in range(0, n, step):
        y = st.bank[s:s + step].to(dt)
        d = qq + (y * y).sum(dim=1)[None, :] - 2.0 * q @ y.T
        if best is not None:
            d = torch.cat([best, d], dim=1)
        best = torch.topk(d, min(kk, d.shape[1]), dim=1, largest=False).values
    return -best[:, kk - 1]


def _class_distances(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(x − μ_c)ᵀ P (x − μ_c) for every row of x and every class c: (B, C), float64."""
    p = precision.double()
    m = means.double()
    xp = x @ p
    mp = m @ p
    return (xp * x).sum(1)[:, None] - 2.0 * x @ mp.T + (mp * m).sum(1)[None, :]


def _gauss_inputs(features: torch.Tensor, stats: object, score: str) -> tuple[torch.Tensor, GaussianStats]:
    x = as_matrix(features, "features")
    st = _stats(stats, GaussianStats, score)
    same_width(x, st.class_means.shape[1], "features", "the fitted class means")
    return x, st


def mahalanobis(features: torch.Tensor, stats: GaussianStats) -> torch.Tensor:
    """Mahalanobis (Lee et al., NeurIPS 2018), OpenOOD ``mds_postprocessor.py`` (no input pre-processing):

        S = max_c − (z − μ_c)ᵀ Σ⁻¹ (z − μ_c)

    μ_c the class means of the ID training features, Σ their shared (within-class) covariance, Σ⁻¹ its
    pseudo-inverse (sklearn's ``EmpiricalCovariance.precision_``).
    """
    x, st = _gauss_inputs(features, stats, "mds")
    d = _class_distances(x.double(), st.class_means, st.precision)
    return (-d).amax(dim=1).to(out_dtype(x))


def rmds(features: torch.Tensor, stats: GaussianStats) -> torch.Tensor:
    """Relative Mahalanobis (Ren et al., 2021), OpenOOD ``rmds_postprocessor.py``:

        S = max_c [ − (z − μ_c)ᵀ Σ⁻¹ (z − μ_c) + (z − μ₀)ᵀ Σ₀⁻¹ (z − μ₀) ]

    μ₀, Σ₀ the mean and covariance of all ID training features (the background Gaussian).
    """
    x, st = _gauss_inputs(features, stats, "rmds")
    xd = x.double()
    d = _class_distances(xd, st.class_means, st.precision)
    bg = _class_distances(xd, st.background_mean[None, :], st.background_precision)
    return (bg - d).amax(dim=1).to(out_dtype(x))


def vim(features: torch.Tensor, head: Head, stats: ViMStats) -> torch.Tensor:
    """ViM (Wang et al., CVPR 2022), OpenOOD ``vim_postprocessor.py`` (principal dim 256):

        S = log Σ_k exp(z_k) − α ‖(h − u) R‖,   z = W h + b

    with u = −W⁺b, R the eigenvectors of the F − dim smallest eigenvalues of the ID covariance about u, and
    α = mean_ID max_k z_k / mean_ID ‖(h − u) R‖ (all from :class:`clipood.posthoc.fit.ViMFit`).
    ``head`` must be the :class:`LinearHead` the statistics were fitted with.
    """
    x = as_matrix(features, "features")
    lin = require_linear(head, "vim")
    st = _stats(stats, ViMStats, "vim")
    same_width(x, st.origin.shape[0], "features", "the fitted ViM origin")
    xd = x.double()
    z = lin(xd)  # float64: the head's weight is promoted
    residual = torch.linalg.vector_norm((xd - st.origin.double()) @ st.null_space.double(), dim=1)
    return (torch.logsumexp(z, dim=1) - st.alpha.double() * residual).to(out_dtype(x))

