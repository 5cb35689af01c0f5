"""The streaming fits (clipood.posthoc.fit) against one-shot numpy / sklearn computations on all rows at once,
and the statistics' plain-tensor round trip.

The statistics are those of OpenOOD v1.5's ``setup`` methods: ``mds_postprocessor.py`` / ``rmds_postprocessor.py``
(class means, EmpiricalCovariance precisions), ``vim_postprocessor.py`` (u, principal space, α),
``knn_postprocessor.py`` (the normalised bank), ``react_postprocessor.py`` (``np.percentile`` of all ID
activations), ``dice_postprocessor.py`` (the mean activation).
"""
import numpy as np
import pytest
import sklearn.covariance
import torch
from parity_check import check, uneven_batches

from clipood.errors import ClipoodError
from clipood.io import load_safetensors, save_safetensors
from clipood.posthoc import (GaussianFit, GaussianStats, KNNFit, KNNStats, LinearHead, MeanFit, MeanStats, ReActFit,
                             ReActStats, StreamingPercentile, ViMFit, ViMStats, fit_key, fit_statistics, knn,
                             mahalanobis, rmds, vim)

RNG = np.random.default_rng(11)
C, FEAT, N = 5, 12, 400
LABELS = RNG.permutation(np.arange(N) % C)
X = 1e3 + RNG.normal(0, 2, size=(C, FEAT))[LABELS] + RNG.normal(size=(N, FEAT)) @ RNG.normal(size=(FEAT, FEAT)) / 3
W = RNG.normal(0, 0.3, size=(7, FEAT))
BIAS = RNG.normal(0, 1, size=7)


def _stream(x, y=None):
    return uneven_batches(x, y, as_dict=True)


@pytest.mark.parametrize("offset", [0.0, 1e6], ids=["as_is", "far_from_origin"])
def test_gaussian_fit_is_the_one_shot_statistics(offset):
    """Far from the origin (X ≈ 1000, and 10^6 more) the shifted float64 sums keep the covariances exact; plain
    Σxxᵀ − Nμμᵀ would lose ~12 digits at 10^6."""
    x = X + offset
    mean_tol = 1e-9 * max(1.0, offset / 1e3)  # float64 rounding of values ≈ offset
    st = fit_statistics(GaussianFit(C), _stream(x, LABELS))
    means = np.stack([x[LABELS == c].mean(0) for c in range(C)])
    centred = x - means[LABELS]
    check("fit_class_means", st.class_means, means, tol=mean_tol)
    prec = sklearn.covariance.EmpiricalCovariance(assume_centered=False).fit(centred).precision_
    check("fit_precision", st.precision, prec, tol=1e-6 * np.abs(prec).max())
    check("fit_background_mean", st.background_mean, x.mean(0), tol=mean_tol)
    prec0 = sklearn.covariance.EmpiricalCovariance().fit(x).precision_
    check("fit_background_precision", st.background_precision, prec0, tol=1e-6 * np.abs(prec0).max())
    assert st.class_counts.tolist() == np.bincount(LABELS).tolist()


def test_gaussian_fit_needs_every_class_and_labels():
    with pytest.raises(ClipoodError, match="no training feature"):
        fit_statistics(GaussianFit(C + 1), _stream(X, LABELS))
    with pytest.raises(ClipoodError, match="class label"):
        fit_statistics(GaussianFit(C), _stream(X))


def test_vim_fit_is_the_one_shot_statistics():
    head = LinearHead(torch.tensor(W), torch.tensor(BIAS))
    st = fit_statistics(ViMFit(head, dim=5), _stream(X))
    u = -np.linalg.pinv(W) @ BIAS
    cov = (X - u).T @ (X - u) / N
    vals, vecs = np.linalg.eigh(cov)
    ns = vecs[:, np.argsort(-vals)[5:]]
    check("fit_vim_origin", st.origin, u, tol=1e-9)
    # the basis of the residual space is arbitrary up to rotation: compare the projector onto it
    check("fit_vim_projector", st.null_space @ st.null_space.T, ns @ ns.T, tol=1e-8)
    alpha = (X @ W.T + BIAS).max(1).mean() / np.linalg.norm((X - u) @ ns, axis=1).mean()
    check("fit_vim_alpha", st.alpha, alpha, tol=1e-9 * alpha)


def test_mean_and_knn_fits():
    m = fit_statistics(MeanFit(), _stream(X))
    check("fit_mean", m.mean, X.mean(0), tol=1e-9)
    assert int(m.count) == N
    bank = fit_statistics(KNNFit(), _stream(X)).bank
    check("fit_knn_bank", bank, X / np.linalg.norm(X, axis=1, keepdims=True))
    small = KNNFit()
    small.BLOCK_BYTES = 7 * FEAT * 8  # 14-row float32 blocks: many full blocks, the last one part-filled
    assert torch.equal(fit_statistics(small, _stream(X)).bank, bank)
    half = fit_statistics(KNNFit(dtype=torch.float16), _stream(X)).bank
    assert half.dtype == torch.float16 and float((half.double() - bank.double()).abs().max()) < 1e-3
    sub = fit_statistics(KNNFit(fraction=0.25, seed=3), _stream(X)).bank
    again = fit_statistics(KNNFit(fraction=0.25, seed=3), _stream(X)).bank
    assert torch.equal(sub, again) and 60 < sub.shape[0] < 140


@pytest.mark.parametrize("q", [0.0, 37.5, 90.0, 99.9, 100.0])
def test_streaming_percentile_is_numpys(q):
    """ReAct's threshold: np.percentile over all N×F activations, here streamed in uneven batches."""
    vals = RNG.normal(size=(N, FEAT)) ** 3
    st = fit_statistics(ReActFit(q), _stream(vals))
    assert float(st.threshold) == pytest.approx(np.percentile(vals.flatten(), q), abs=1e-12, rel=1e-13)
    assert float(st.percentile) == q


def test_streaming_percentile_with_ties_and_many_refinements():
    """Integers with heavy ties, and 4 bins with room for 10 values: several histogram passes, still exact."""
    ties = RNG.integers(0, 6, size=(300, 7)).astype(np.float64)
    for q in (10.0, 50.0, 90.0):
        assert fit_statistics(ReActFit(q), _stream(ties)).threshold.item() == np.percentile(ties, q)
    vals = RNG.uniform(-5, 5, size=(50, 200))
    passes = []

    def source():
        passes.append(1)
        return _stream(vals)

    sp = StreamingPercentile(73.0, bins=4, collect_limit=10)
    while True:
        for b in source():
            sp.update(b)
        if not sp.end_pass():
            break
    assert len(passes) >= 5
    assert sp.result() == pytest.approx(np.percentile(vals, 73.0), abs=1e-12)
    constant = fit_statistics(ReActFit(90.0), [torch.full((4, 3), 2.5)] * 2)
    assert float(constant.threshold) == 2.5


def test_percentile_refuses_a_stream_that_changes_between_passes():
    vals, calls = RNG.normal(size=(40, 5)), []

    def source():
        calls.append(1)
        return _stream(vals * len(calls))  # other values (same count) in every pass

    with pytest.raises(ClipoodError, match="changed between passes"):
        fit_statistics(ReActFit(50.0), source)


def test_fits_share_passes_and_refuse_one_shot_iterators():
    passes = []

    def source():
        passes.append(1)
        return _stream(X, LABELS)

    head = LinearHead(torch.tensor(W), torch.tensor(BIAS))
    fits = {"g": GaussianFit(C), "v": ViMFit(head, dim=5), "r": ReActFit(90.0, bins=16, collect_limit=1000)}
    out = fit_statistics(fits, source)
    assert set(out) == {"g", "v", "r"} and len(passes) == 3  # ReAct's 3 passes carry ViM's 2 and the Gaussian's 1
    assert float(out["r"].threshold) == pytest.approx(np.percentile(X, 90.0), abs=1e-12)
    one = fit_statistics(GaussianFit(C), iter(_stream(X, LABELS)))  # a single-pass fit takes an iterator
    assert torch.equal(one.class_counts, out["g"].class_counts)
    with pytest.raises(ClipoodError, match="one-shot iterator"):
        fit_statistics(ViMFit(head, dim=5), iter(_stream(X)))


def _all_stats():
    head = LinearHead(torch.tensor(W), torch.tensor(BIAS))
    return head, fit_statistics({"g": GaussianFit(C), "v": ViMFit(head, dim=5), "k": KNNFit(),
                                 "r": ReActFit(90.0), "m": MeanFit()}, _stream(X, LABELS))


def test_statistics_round_trip_through_safetensors(tmp_path):
    head, stats = _all_stats()
    classes = {"g": GaussianStats, "v": ViMStats, "k": KNNStats, "r": ReActStats, "m": MeanStats}
    q = torch.tensor(X[:9] + RNG.normal(size=(9, FEAT)))
    for name, st in stats.items():
        path = tmp_path / f"{name}.safetensors"
        save_safetensors(st.state_dict(), path)
        back = classes[name].from_state_dict(load_safetensors(path))
        assert back.content_key() == st.content_key()
        for key, t in st.state_dict().items():
            assert torch.equal(back.state_dict()[key], t), (name, key)
    back = GaussianStats.from_state_dict(load_safetensors(tmp_path / "g.safetensors"))
    assert torch.equal(mahalanobis(q, back), mahalanobis(q, stats["g"]))
    assert torch.equal(rmds(q, back), rmds(q, stats["g"]))
    assert torch.equal(vim(q, head, ViMStats.from_state_dict(load_safetensors(tmp_path / "v.safetensors"))),
                       vim(q, head, stats["v"]))
    assert torch.equal(knn(q, KNNStats.from_state_dict(load_safetensors(tmp_path / "k.safetensors")), k=5),
                       knn(q, stats["k"], k=5))


def test_content_keys_and_fit_keys():
    _, stats = _all_stats()
    g = stats["g"]
    changed = GaussianStats(**{**g.state_dict(), "class_means": g.class_means + 1e-12})
    assert changed.content_key() != g.content_key()
    assert len({s.content_key() for s in stats.values()}) == len(stats)
    assert fit_key("gaussian", {}, "feat-a") == fit_key("gaussian", {}, "feat-a")
    assert len({fit_key("vim", {"dim": 5}, "feat-a"), fit_key("vim", {"dim": 6}, "feat-a"),
                fit_key("vim", {"dim": 5}, "feat-b"), fit_key("gaussian", {"dim": 5}, "feat-a")}) == 4


def test_from_state_dict_names_what_is_wrong():
    _, stats = _all_stats()
    sd = stats["v"].state_dict()
    with pytest.raises(ClipoodError, match="missing alpha"):
        ViMStats.from_state_dict({k: v for k, v in sd.items() if k != "alpha"})
    with pytest.raises(ClipoodError, match="null_space"):
        ViMStats.from_state_dict({**sd, "null_space": sd["null_space"][:-1]})
    with pytest.raises(ClipoodError, match="not gaussian statistics"):
        GaussianStats.from_state_dict(sd)
