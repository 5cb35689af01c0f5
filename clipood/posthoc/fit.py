"""The fit step: statistics of ID training features, computed in streaming form over batches.

Each fit is a plain object with ``update(features, labels=None)`` per batch, ``end_pass() -> bool`` (True when
it needs another pass over the same batches) and ``result()`` (a :mod:`clipood.posthoc.stats` object).
:func:`fit_statistics` runs one or several fits over one stream, sharing the passes, so 1.28 M × 768 features
never need to be in memory at once:

| fit | statistics | passes | memory besides one batch |
|---|---|---|---|
| :class:`GaussianFit` (MDS, RMDS) | class means, within-class and background precision | 1 | C×F + F×F (float64) |
| :class:`ViMFit` | origin, null space, α | 2 | F×F (float64) |
| :class:`KNNFit` | the normalised bank | 1 | the bank itself (N×F in ``dtype``) |
| :class:`ReActFit` | the exact percentile of all activations | 3 typically | 1.5 MB + ``collect_limit`` values |
| :class:`MeanFit` (DICE) | the mean feature | 1 | F |

Sums are float64 and taken about a shift (the first batch's mean), so the covariances do not lose digits to
cancellation. A batch is a tensor of features, a ``(features, labels)`` pair, or a mapping with the fit's
``features_key`` (default ``"features"``) and ``"labels"``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError

from ._checks import as_matrix, integer, labels_vector, same_width
from .heads import LinearHead, require_linear
from .quantile import StreamingPercentile
from .stats import GaussianStats, KNNStats, MeanStats, ReActStats, Statistics, ViMStats

__all__ = ["GaussianFit", "KNNFit", "MeanFit", "ReActFit", "ViMFit", "fit_statistics"]


class _Moments:
    """Σ(x − s), Σ(x − s)(x − s)ᵀ (unless ``second=False``) and n in float64 about a shift s (the first batch's
    mean)."""

    def __init__(self, second: bool = True):
        self.second = second
        self.n, self.shift, self.sum, self.scatter = 0, None, None, None

    def add(self, x: torch.Tensor) -> torch.Tensor:
        xd = x.double()
        if self.shift is None:
            f = xd.shape[1]
            self.shift = xd.mean(0)
            self.sum = xd.new_zeros(f)
            self.scatter = xd.new_zeros(f, f) if self.second else None
        same_width(xd, self.shift.shape[0], "features", "the earlier batches")
        c = xd - self.shift
        self.n += c.shape[0]
        self.sum += c.sum(0)
        if self.second:
            self.scatter += c.T @ c
        return c

    def require(self, what: str) -> None:
        if self.n == 0:
            raise ClipoodError(f"{what}: the feature stream held no rows; pass at least one non-empty batch")


def _pinvh(cov: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse of a symmetric matrix (scipy's ``pinvh`` cutoff, as sklearn's ``precision_``)."""
    return torch.linalg.pinv((cov + cov.T) / 2, hermitian=True)


class GaussianFit:
    """Class means, the shared within-class covariance and the background (all-feature) covariance, streamed.

    Σ = (1/N) Σ_c Σ_{i∈c} (x_i − μ_c)(x_i − μ_c)ᵀ (sklearn ``EmpiricalCovariance`` of the class-centred
    features, as OpenOOD's MDS / RMDS), Σ₀ = the covariance of all features; precisions by pseudo-inverse.
    """

    max_passes = 1

    def __init__(self, num_classes: int, *, features_key: str = "features"):
        self.num_classes = integer(num_classes, "num_classes", 1)
        self.features_key = features_key
        self._m = _Moments()
        self._class_sums: torch.Tensor | None = None
        self._counts = torch.zeros(self.num_classes, dtype=torch.long)

    def update(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        x = as_matrix(features, "features")
        if labels is None:
            raise ClipoodError("GaussianFit needs the class label of every feature; pass batches as "
                               "(features, labels) or {'features': ..., 'labels': ...}")
        y = labels_vector(labels.to("cpu"), x.shape[0], self.num_classes)
        c = self._m.add(x.to("cpu"))
        if self._class_sums is None:
            self._class_sums = c.new_zeros(self.num_classes, c.shape[1])
        self._class_sums.index_add_(0, y, c)
        self._counts += torch.bincount(y, minlength=self.num_classes)

    def end_pass(self) -> bool:
        return False

    def result(self) -> GaussianStats:
        m = self._m
        m.require("GaussianFit")
        empty = (self._counts == 0).nonzero().flatten().tolist()
        if empty:
            raise ClipoodError(f"GaussianFit: class(es) {empty[:5]}{'...' if len(empty) > 5 else ''} have no "
                               f"training feature; give every class at least one, or set num_classes to the "
                               f"classes present")
        n = self._counts.double()
        means_c = self._class_sums / n[:, None]  # shifted class means
        within = (m.scatter - (means_c * n[:, None]).T @ means_c) / m.n
        mean_c = m.sum / m.n
        background = m.scatter / m.n - torch.outer(mean_c, mean_c)
        return GaussianStats(class_means=means_c + m.shift, precision=_pinvh(within),
                             background_mean=mean_c + m.shift, background_precision=_pinvh(background),
                             class_counts=self._counts.clone())


class ViMFit:
    """ViM's statistics for a linear head (OpenOOD ``vim_postprocessor.py``; principal dim 256).

    Pass 1: u = −W⁺b, the covariance (1/N) Σ (x − u)(x − u)ᵀ (sklearn ``EmpiricalCovariance(assume_centered=
    True)``), its eigenvectors (the F − dim of the smallest eigenvalues span R) and the mean max logit. Pass 2:
    the mean ‖(x − u) R‖; α = mean max logit / mean ‖(x − u) R‖.
    """

    max_passes = 2

    def __init__(self, head: LinearHead, *, dim: int = 256, features_key: str = "features"):
        self.head = require_linear(head, "vim")
        f = self.head.in_features
        self.dim = integer(dim, "dim", 1, f - 1, f"ViM keeps dim principal directions of the {f}-d features and "
                                                 f"needs at least one residual one (OpenOOD: 256)")
        self.features_key = features_key
        w = self.head.weight.double().cpu()
        self.origin = (-(torch.linalg.pinv(w) @ self.head.bias_or_zeros(torch.float64).cpu())
                       if self.head.bias is not None else w.new_zeros(f))
        self._pass, self._n, self._scatter = 0, 0, w.new_zeros(f, f)
        self._max_logit, self._residual = 0.0, 0.0
        self._null: torch.Tensor | None = None

    def update(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        x = as_matrix(features, "features").to("cpu")
        same_width(x, self.head.in_features, "features", "the head's weight")
        if self._pass == 0:  # the covariance in float64; logits and norms in the features' precision
            c = x.double() - self.origin
            self._n += c.shape[0]
            self._scatter += c.T @ c
            self._max_logit += float(self.head(x).amax(dim=1).double().sum())
        else:
            c = x - self.origin.to(x.dtype)
            self._residual += float(torch.linalg.vector_norm(c @ self._null.to(x.dtype), dim=1).double().sum())

    def end_pass(self) -> bool:
        self._pass += 1
        if self._pass == 1:
            if self._n == 0:
                raise ClipoodError("ViMFit: the feature stream held no rows; pass at least one non-empty batch")
            cov = self._scatter / self._n
            vals, vecs = torch.linalg.eigh((cov + cov.T) / 2)
            order = torch.argsort(vals, descending=True)
            self._null = vecs[:, order[self.dim:]].contiguous()
            return True
        return False

    def result(self) -> ViMStats:
        if self._pass < 2:
            raise ClipoodError("ViMFit.result() before its second pass; run it through fit_statistics")
        if self._residual <= 0.0:
            raise ClipoodError(f"ViMFit: the ID features have no component outside the principal space of dim="
                               f"{self.dim}; use a smaller dim")
        alpha = (self._max_logit / self._n) / (self._residual / self._n)
        return ViMStats(origin=self.origin, null_space=self._null, alpha=torch.tensor(alpha, dtype=torch.float64))


class KNNFit:
    """KNN's bank: every ID feature L2-normalised (OpenOOD ``knn_postprocessor.py``: the whole training set).

    ``dtype`` stores the bank (float32 as OpenOOD; float16 halves it: 1.28 M × 768 is 3.9 GB in float32, 2.0 GB
    in float16, with distance errors of ~1e-3). ``fraction`` < 1 keeps each feature with that probability
    (the KNN paper's sampling ratio α), drawn from a generator seeded ``seed``. Rows are written into blocks of
    at most 64 MiB, and ``result()`` moves them into one tensor block by block, freeing each (separately mapped blocks
    go back to the OS): the peak is the bank plus one block, not twice the bank.
    """

    max_passes = 1
    BLOCK_BYTES = 64 << 20

    def __init__(self, *, dtype: torch.dtype = torch.float32, fraction: float = 1.0, seed: int = 0,
                 features_key: str = "features"):
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ClipoodError(f"KNNFit dtype must be a floating dtype, got {dtype}")
        if not 0.0 < float(fraction) <= 1.0:
            raise ClipoodError(f"KNNFit fraction={fraction!r} must be in (0, 1] (the share of ID features kept)")
        self.dtype, self.fraction, self.features_key = dtype, float(fraction), features_key
        self._gen = torch.Generator().manual_seed(int(seed))
        self._blocks: list[torch.Tensor] = []
        self._fill = 0  # rows written into the last block

    def update(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        x = as_matrix(features, "features").to("cpu")
        if self._blocks:
            same_width(x, self._blocks[0].shape[1], "features", "the earlier batches")
        if self.fraction < 1.0:
            x = x[torch.rand(x.shape[0], generator=self._gen) < self.fraction]
        rows = F.normalize(x, dim=-1).to(self.dtype)
        while rows.shape[0]:
            if not self._blocks or self._fill == self._blocks[-1].shape[0]:
                # blocks double from the first batch's size up to BLOCK_BYTES
                cap = max(1, self.BLOCK_BYTES // (rows.shape[1] * rows.element_size()))
                grow = 2 * self._blocks[-1].shape[0] if self._blocks else rows.shape[0]
                self._blocks.append(torch.empty(min(cap, max(grow, 1)), rows.shape[1], dtype=self.dtype))
                self._fill = 0
            take = min(rows.shape[0], self._blocks[-1].shape[0] - self._fill)
            self._blocks[-1][self._fill:self._fill + take] = rows[:take]
            self._fill += take
            rows = rows[take:]

    def end_pass(self) -> bool:
        return False

    def result(self) -> KNNStats:
        if not self._blocks or (len(self._blocks) == 1 and self._fill == 0):
            raise ClipoodError("KNNFit: no ID feature was kept; pass features (or a larger fraction)")
        n = sum(b.shape[0] for b in self._blocks[:-1]) + self._fill
        bank = torch.empty(n, self._blocks[0].shape[1], dtype=self.dtype)
        at = 0
        while self._blocks:
            block = self._blocks.pop(0)
            rows = block if self._blocks else block[:self._fill]
            bank[at:at + rows.shape[0]] = rows
            at += rows.shape[0]
            del block, rows
        self._blocks, self._fill = [bank], n
        return KNNStats(bank=bank)


class ReActFit:
    """ReAct's threshold: the exact ``percentile`` (OpenOOD: 90) of all entries of the ID features
    (:class:`clipood.posthoc.quantile.StreamingPercentile`)."""

    max_passes = None  # several, data-dependent

    def __init__(self, percentile: float = 90.0, *, features_key: str = "features", **kwargs: Any):
        self._q = StreamingPercentile(percentile, **kwargs)
        self.features_key = features_key

    def update(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self._q.update(as_matrix(features, "features"))

    def end_pass(self) -> bool:
        return self._q.end_pass()

    def result(self) -> ReActStats:
        return ReActStats(threshold=torch.tensor(self._q.result(), dtype=torch.float64),
                          percentile=torch.tensor(self._q.q, dtype=torch.float64))


class MeanFit:
    """The mean ID feature (DICE's ū, OpenOOD ``dice_postprocessor.py``), in float64."""

    max_passes = 1

    def __init__(self, *, features_key: str = "features"):
        self.features_key = features_key
        self._m = _Moments(second=False)

    def update(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self._m.add(as_matrix(features, "features").to("cpu"))

    def end_pass(self) -> bool:
        return False

    def result(self) -> MeanStats:
        self._m.require("MeanFit")
        return MeanStats(mean=self._m.sum / self._m.n + self._m.shift, count=torch.tensor(self._m.n))


def _as_batch(batch: Any) -> Mapping[str, Any]:
    if isinstance(batch, torch.Tensor):
        return {"features": batch}
    if isinstance(batch, Mapping):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return {"features": batch[0], "labels": batch[1]}
    raise ClipoodError(f"a fit batch must be a features tensor, a (features, labels) pair or a mapping with "
                       f"'features', got {type(batch).__name__}")


def fit_statistics(fits, batches: Iterable | Callable[[], Iterable]):
    """Run one fit, or a mapping ``{name: fit}``, over ``batches``; returns the statistics (or ``{name: stats}``).

    ``batches`` must be re-iterable when a fit needs several passes (ViM, ReAct): a list, a ``DataLoader``, or a
    function returning a fresh iterator; a one-shot iterator is refused up front for them.
    """
    single = not isinstance(fits, Mapping)
    todo = {"fit": fits} if single else dict(fits)
    if not todo:
        raise ClipoodError("fit_statistics got no fits to run")
    for name, f in todo.items():
        if not all(callable(getattr(f, m, None)) for m in ("update", "end_pass", "result")):
            raise ClipoodError(f"fit '{name}' ({type(f).__name__}) lacks update / end_pass / result")
    source = batches if callable(batches) else (lambda: batches)
    one_shot = not callable(batches) and iter(batches) is batches
    if one_shot and any(getattr(f, "max_passes", None) != 1 for f in todo.values()):
        raise ClipoodError("these fits need several passes over the ID features, but batches is a one-shot "
                           "iterator; pass a list, a DataLoader or a function returning a fresh iterator")
    done: dict[str, Statistics] = {}
    active = dict(todo)
    while active:
        for batch in source():
            b = _as_batch(batch)
            for name, f in active.items():
                key = getattr(f, "features_key", "features")
                if key not in b:
                    raise ClipoodError(f"fit '{name}' reads batch key '{key}', which the batches lack (keys: "
                                       f"{', '.join(map(str, b))})")
                f.update(b[key], b.get("labels"))
        still = {}
        for name, f in active.items():
            if f.end_pass():
                still[name] = f
            else:
                done[name] = f.result()
        active = still
    return done["fit"] if single else {n: done[n] for n in todo}
