"""clipood.scores against formulas written out in numpy float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipood.errors import ClipoodError
from clipood.scores import (
    SCORES,
    compute_score,
    energy_score,
    get_score,
    glmcm_score,
    max_logit_score,
    mcm_score,
    neglabel_score,
)


def _logits(b=6, k=13, scale=5.0, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g, dtype=torch.float64) * scale + offset


def ref_neglabel(x, n):
    """Eq. 2 with plain exp sums; rows shifted by their max so large logits stay finite."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e[:, :n].sum(1) / e.sum(1)


def ref_neglabel_grouped(x, n, groups, seed, remainder="drop"):
    """Documented rules. drop (NegLabel's code): keep the first M' = M - M mod G columns, perm = randperm(M',
    Generator().manual_seed(seed)), G equal groups. spread: perm = randperm(M, ...); array_split(perm, G)."""
    x = np.asarray(x, np.float64)
    m = x.shape[1] - n
    kept = m - m % groups if remainder == "drop" else m
    perm = torch.randperm(kept, generator=torch.Generator().manual_seed(seed)).numpy()
    per_group = []
    for grp in np.array_split(perm, groups):
        cols = np.r_[np.arange(n), n + grp]
        per_group.append(ref_neglabel(x[:, cols], n))
    return np.mean(per_group, axis=0)


def ref_max_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).max(axis=axis)


# ---------------------------------------------------------------- NegLabel


def test_neglabel_matches_eq2():
    x = _logits()
    got = neglabel_score(x, num_id=4)
    assert got.shape == (6,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref_neglabel(x.numpy(), 4), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("remainder", ["drop", "spread"])
@pytest.mark.parametrize("m,groups,seed", [(9, 2, 0), (9, 3, 7), (10, 3, 1), (10, 4, 0), (9, 9, 3), (23, 5, 11)])
def test_neglabel_groups_match_reference(m, groups, seed, remainder):
    x = _logits(b=5, k=4 + m, seed=seed)
    got = neglabel_score(x, num_id=4, groups=groups, seed=seed, remainder=remainder)
    np.testing.assert_allclose(got.numpy(), ref_neglabel_grouped(x.numpy(), 4, groups, seed, remainder), rtol=1e-12)
    if m % groups:  # the rules differ only when G does not divide M
        other = ref_neglabel_grouped(x.numpy(), 4, groups, seed, "spread" if remainder == "drop" else "drop")
        assert not np.allclose(got.numpy(), other)
    assert not np.allclose(got.numpy(), ref_neglabel(x.numpy(), 4))  # grouping really changes the score


def test_neglabel_groups_ignore_global_rng_and_depend_on_seed():
    x = _logits(k=20, seed=3)
    torch.manual_seed(1)
    a = neglabel_score(x, 5, groups=4, seed=0)
    torch.manual_seed(2)
    torch.rand(10)
    b = neglabel_score(x, 5, groups=4, seed=0)
    c = neglabel_score(x, 5, groups=4, seed=1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_neglabel_id_column_order_invariance():
    x = _logits(k=15, seed=5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    x2 = torch.cat([x[:, :5][:, perm], x[:, 5:]], dim=1)
    for groups in (1, 3):
        torch.testing.assert_close(neglabel_score(x2, 5, groups), neglabel_score(x, 5, groups), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_neglabel_stable_with_large_logits(dtype):
    x = _logits(scale=20.0, offset=3000.0, seed=2).to(dtype)
    for groups in (1, 4):
        got = neglabel_score(x, 4, groups=groups)
        assert torch.isfinite(got).all()
        xd = x.double().numpy()
        ref = ref_neglabel_grouped(xd, 4, groups, 0) if groups > 1 else ref_neglabel(xd, 4)
        np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-4 if dtype == torch.float32 else 1e-10)


def test_neglabel_half_input_computed_in_float32():
    x = _logits(scale=2.0).to(torch.bfloat16)
    got = neglabel_score(x, 4)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref_neglabel(x.double().numpy(), 4), rtol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_id": 13}, "NegLabel needs negative labels"),
    ({"num_id": 0}, r"num_id=0 is out of range \[1, 12\]"),
    ({"num_id": 4, "groups": 10}, r"groups=10 is out of range \[1, 9\]"),
    ({"num_id": 4, "groups": 0}, "groups=0 is out of range"),
    ({"num_id": 4.0}, "num_id must be an integer"),
])
def test_neglabel_validation(kwargs, message):
    with pytest.raises(ClipoodError, match=message):
        neglabel_score(_logits(), **kwargs)


def test_logits_must_be_2d_tensor():
    with pytest.raises(ClipoodError, match="must be 2-D"):
        neglabel_score(torch.zeros(5), 1)
    with pytest.raises(ClipoodError, match="must be a torch.Tensor"):
        mcm_score(np.zeros((2, 3)))


# ---------------------------------------------------------------- ID-only scores


@pytest.mark.parametrize("t", [1.0, 0.5, 100.0])
def test_mcm_matches_formula(t):
    x = _logits(k=7)
    np.testing.assert_allclose(mcm_score(x, temperature=t).numpy(), ref_max_softmax(x.numpy() / t), rtol=1e-12)


@pytest.mark.parametrize("t", [1.0, 0.5, 100.0])
def test_energy_matches_formula(t):
    x = _logits(k=7, offset=1000.0)  # the shifted formula keeps large logits finite
    xs = x.numpy() / t
    mx = xs.max(1)
    ref = t * (mx + np.log(np.exp(xs - mx[:, None]).sum(1)))
    np.testing.assert_allclose(energy_score(x, temperature=t).numpy(), ref, rtol=1e-12)


def test_max_logit():
    x = _logits(k=7)
    np.testing.assert_array_equal(max_logit_score(x).numpy(), x.numpy().max(1))


@pytest.mark.parametrize("t", [1.0, 100.0])
def test_glmcm_matches_formula(t):
    x = _logits(b=4, k=6, seed=1)
    loc = torch.randn(4, 9, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 5
    ref = ref_max_softmax(x.numpy() / t) + ref_max_softmax(loc.numpy() / t, axis=2).max(axis=1)
    np.testing.assert_allclose(glmcm_score(x, loc, temperature=t).numpy(), ref, rtol=1e-12)


def test_glmcm_shape_mismatch():
    with pytest.raises(ClipoodError, match=r"expected \(B, P, N\) = \(4, P, 6\)"):
        glmcm_score(_logits(b=4, k=6), torch.zeros(4, 3, 5, dtype=torch.float64))


def test_temperature_validation():
    with pytest.raises(ClipoodError, match="temperature must be a finite number > 0"):
        mcm_score(_logits(), temperature=0.0)


# ---------------------------------------------------------------- registry and uniform wrapper


def test_registry_names():
    assert set(SCORES) == {"neglabel", "mcm", "energy", "max_logit", "glmcm"}
    assert get_score("mcm") is mcm_score


def test_unknown_score_did_you_mean():
    with pytest.raises(ClipoodError) as e:
        get_score("neglable")
    msg = str(e.value)
    assert "unknown score 'neglable'" in msg and "did you mean 'neglabel'" in msg and "max_logit" in msg
    with pytest.raises(ClipoodError, match="did you mean 'glmcm'"):
        compute_score("gl_mcm", _logits(), 4)


def test_compute_score_slices_id_columns():
    x = _logits(k=13)
    n = 4
    np.testing.assert_allclose(compute_score("mcm", x, n, temperature=2.0).numpy(),
                               ref_max_softmax(x.numpy()[:, :n] / 2.0), rtol=1e-12)
    np.testing.assert_array_equal(compute_score("max_logit", x, n).numpy(), x.numpy()[:, :n].max(1))
    torch.testing.assert_close(compute_score("energy", x, n), energy_score(x[:, :n]))
    np.testing.assert_allclose(compute_score("neglabel", x, n, groups=3, seed=5).numpy(),
                               ref_neglabel_grouped(x.numpy(), n, 3, 5), rtol=1e-12)
    np.testing.assert_allclose(compute_score("neglabel", x, n, temperature=2.0).numpy(),
                               ref_neglabel(x.numpy() / 2.0, n), rtol=1e-12)
    loc = torch.randn(6, 5, 13, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = ref_max_softmax(x.numpy()[:, :n]) + ref_max_softmax(loc.numpy()[..., :n], axis=2).max(axis=1)
    np.testing.assert_allclose(compute_score("glmcm", x, n, local_logits=loc).numpy(), ref, rtol=1e-12)
    with pytest.raises(ClipoodError, match="needs local_logits"):
        compute_score("glmcm", x, n)


def test_neglabel_log_odds_ranks_like_eq2_without_saturation():
    from clipood.scores import neglabel_log_odds, neglabel_score

    g = torch.Generator().manual_seed(3)
    logits = 100 * torch.nn.functional.normalize(torch.randn(200, 30, generator=g), dim=1)
    lo = neglabel_log_odds(logits, 10)
    # exact formula in float64: log Σ_ID e^l − log Σ_neg e^l
    x = logits.double().numpy()
    ref = np.log(np.exp(x[:, :10]).sum(1)) - np.log(np.exp(x[:, 10:]).sum(1))
    assert np.allclose(lo.numpy(), ref, atol=1e-9)
    # strictly increasing in S where S is representable: same order as the float64 score
    s64 = neglabel_score(logits.double(), 10)
    ok = (s64 > 1e-12) & (s64 < 1 - 1e-12)
    assert torch.equal(torch.argsort(lo[ok]), torch.argsort(s64[ok]))
    # where float32 S saturates to exactly 1.0 the log-odds still tell images apart
    big = torch.tensor([[60.0, 0.0, 0.0], [40.0, 0.0, 0.0]])
    assert neglabel_score(big, 1)[0] == neglabel_score(big, 1)[1] == 1.0
    assert neglabel_log_odds(big, 1)[0] > neglabel_log_odds(big, 1)[1]
