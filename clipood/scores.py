"""OOD scores from CLIP logits — higher = more in-distribution, everywhere.

Inputs are torch tensors of logits that are already scaled (e.g. ``100·cos``), ID columns first and then,
for NegLabel, the M negative-label columns:

* ``logits``: (B, K) with K = N ID + M negatives; ``logits_id``: (B, N) (ID columns only);
* ``local_logits_id``: (B, P, N) for P patch (local) features.

Every score returns a 1-D floating tensor of shape (B,) on the logits' device (float64 for float64 input,
float32 otherwise; half-precision inputs are computed in float32).

Temperatures divide the logits as passed. MCM (Ming et al., 2022) and GL-MCM as evaluated in LoCoOp use
T = 1 on *raw* cosines (LoCoOp divides its 100·cos logits by 100 first), so with clipood's 100·cos logits the
papers' setting is ``temperature=100``.
"""
from __future__ import annotations

from typing import Callable

import torch

from clipood.errors import ClipoodError, unknown

__all__ = [
    "GROUP_REMAINDERS",
    "SCORES",
    "compute_score",
    "energy_score",
    "get_score",
    "glmcm_score",
    "max_logit_score",
    "mcm_score",
    "neglabel_score",
    "score_temperature",
]


def score_temperature(score: str, logit_scale: float) -> float:
    """The temperature a score is evaluated with on ``logit_scale``·cos logits: MCM and GL-MCM use T = 1 on raw
    cosines (Ming et al.; LoCoOp's test), which is ``logit_scale`` here; every other score takes the logits as
    they are (T = 1). The one place this rule is written (evaluation, the saved detector, zero-shot rows)."""
    return float(logit_scale) if score in ("mcm", "glmcm") else 1.0


def _check_logits(x: object, name: str, ndim: int = 2) -> torch.Tensor:
    """A real tensor with ``ndim`` dims and at least one column; half precision is upcast to float32."""
    if not isinstance(x, torch.Tensor):
        raise ClipoodError(f"{name} must be a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor")
    if x.dim() != ndim:
        shape = "(B, K)" if ndim == 2 else "(B, P, N)"
        raise ClipoodError(f"{name} must be {ndim}-D {shape}, got shape {tuple(x.shape)}")
    if x.shape[-1] == 0:
        raise ClipoodError(f"{name} has no label columns (shape {tuple(x.shape)})")
    if x.is_complex() or x.dtype == torch.bool:
        raise ClipoodError(f"{name} must hold real logits, got dtype {x.dtype}")
    if x.dtype != torch.float64 and x.dtype != torch.float32:
        x = x.float()  # integers and float16/bfloat16: softmax sums want float32 at least
    return x


def _check_int(value: object, name: str, low: int, high: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClipoodError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ClipoodError(f"{name}={value} is out of range [{low}, {high}]; {hint}")
    return value


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (t > 0.0 and t != float("inf")):
        raise ClipoodError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def _max_softmax(z: torch.Tensor) -> torch.Tensor:
    """max_i softmax(z)_i over the last dim, computed as exp(max z − logsumexp z) (stable for large z)."""
    return torch.exp(z.amax(dim=-1) - torch.logsumexp(z, dim=-1))


def neglabel_log_odds(logits: torch.Tensor, num_id: int) -> torch.Tensor:
    """log(S / (1 − S)) = LSE(l_ID) − LSE(l_neg) of the one-group NegLabel score, in float64.

    A strictly increasing function of Eq. 2, so every ranking metric (AUROC, FPR@95, AUPR) is the same as for
    S in exact arithmetic — but it never saturates: in float32, S rounds to exactly 1.0 once the log-odds pass
    ≈ 17 (common with 100·cos logits), which turns confident ID and OOD images into ties. Evaluation uses it.
    """
    x = _check_logits(logits, "logits").double()
    k = x.shape[1]
    n = _check_int(num_id, "num_id", 1, k - 1, f"logits has {k} columns (ID first, then negatives)")
    return torch.logsumexp(x[:, :n], dim=1) - torch.logsumexp(x[:, n:], dim=1)


#: what grouping does with the last M mod G negatives: "drop" (NegLabel's and LAPT's code) | "spread"
from .config.checks import GROUP_REMAINDERS  # noqa: E402 (the one list; config checks read it without torch)


def negative_group_columns(m: int, groups: int, seed: int, remainder: str = "drop") -> list[torch.Tensor]:
    """The G groups of negative columns (0-based in M) of the grouped NegLabel score.

    ``"drop"`` (the released ``ScalableClassifier.grouping``): leave out the last M mod G columns, permute the
    other M' by ``torch.randperm(M', generator=torch.Generator().manual_seed(seed))`` and cut it into G equal
    groups. ``"spread"``: permute all M the same way and ``torch.tensor_split`` them (the first M mod G groups
    are one column longer). The two agree whenever G divides M.
    """
    if remainder not in GROUP_REMAINDERS:
        raise unknown("group remainder", str(remainder), GROUP_REMAINDERS)
    if remainder == "drop":
        kept = m - m % groups
        return list(torch.randperm(kept, generator=torch.Generator().manual_seed(seed)).view(groups, -1))
    return list(torch.tensor_split(torch.randperm(m, generator=torch.Generator().manual_seed(seed)), groups))


def neglabel_score(logits: torch.Tensor, num_id: int, groups: int = 1, seed: int = 0,
                   remainder: str = "drop") -> torch.Tensor:
    """NegLabel score (Jiang et al., ICLR 2024), Eq. 2, with the grouping strategy of their code.

    With ``groups == 1`` (Eq. 2), for one image with scaled logits l over N ID and M negative labels:

        S = Σ_{i<N} e^{l_i} / (Σ_{i<N} e^{l_i} + Σ_{j<M} e^{l_{N+j}}) = σ(LSE(l_ID) − LSE(l_neg)),

    computed with log-sum-exp, so logits in the thousands are fine.

    With ``groups = G > 1``: S = (1/G) Σ_g Σ_{i<N} softmax([l_ID | l_{group g}])_i over the groups of
    :func:`negative_group_columns`: as the reference code, the last ``M % G`` negatives are dropped and the
    rest permuted by ``torch.randperm(M', generator=torch.Generator().manual_seed(seed))`` (independent of the
    global RNG; the reference draws it on CUDA, another permutation) and cut into G equal groups;
    ``remainder="spread"`` keeps every negative (near-equal groups, the first ``M % G`` one column longer).

    Args:
        logits: (B, K) scaled logits, K = num_id + M, ID columns first.
        num_id: N, the number of ID columns (1 ≤ N < K).
        groups: G, number of negative groups (1 ≤ G ≤ M).
        seed: seed of the permutation used when G > 1.
        remainder: "drop" (the reference code) or "spread" (see above).

    Returns:
        (B,) scores in [0, 1]; higher = more ID.
    """
    x = _check_logits(logits, "logits")
    k = x.shape[1]
    if remainder not in GROUP_REMAINDERS:
        raise unknown("group remainder", str(remainder), GROUP_REMAINDERS)
    if isinstance(num_id, int) and not isinstance(num_id, bool) and num_id == k:
        raise ClipoodError(f"NegLabel needs negative labels: logits has {k} columns and num_id={num_id}, so "
                           f"there are none; append mined negatives (clipood.negatives) or use the 'mcm' score")
    n = _check_int(num_id, "num_id", 1, k - 1, f"logits has {k} columns (ID first, then negatives)")
    m = k - n
    g = _check_int(groups, "groups", 1, m, f"there are {m} negative columns to split into groups")
    seed = _check_int(seed, "seed", -(2**63), 2**64 - 1, "use a 64-bit seed")

    lse_id = torch.logsumexp(x[:, :n], dim=1)
    if g == 1:
        return torch.sigmoid(lse_id - torch.logsumexp(x[:, n:], dim=1))
    # Gather one group at a time so no permuted (B, M) copy of the logits is ever held.
    per_group = [
        torch.sigmoid(lse_id - torch.logsumexp(x[:, (idx + n).to(x.device)], dim=1))
        for idx in negative_group_columns(m, g, seed, remainder)
    ]
    return torch.stack(per_group, dim=1).mean(dim=1)


def mcm_score(logits_id: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """MCM (Ming et al., NeurIPS 2022): S = max_i softmax(l / T)_i over the N ID columns.

    Args:
        logits_id: (B, N) logits of the ID labels only.
        temperature: T > 0 (the paper's T = 1 on raw cosines is ``temperature=100`` on 100·cos logits).

    Returns:
        (B,) scores in [1/N, 1].
    """
    x = _check_logits(logits_id, "logits_id")
    return _max_softmax(x / _check_temperature(temperature))


def energy_score(logits_id: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy (Liu et al., 2020): S = T · logsumexp_i(l_i / T) over the N ID columns.

    Args:
        logits_id: (B, N) logits of the ID labels only.
        temperature: T > 0.

    Returns:
        (B,) scores.
    """
    x = _check_logits(logits_id, "logits_id")
    t = _check_temperature(temperature)
    return t * torch.logsumexp(x / t, dim=1)


def max_logit_score(logits_id: torch.Tensor) -> torch.Tensor:
    """Maximum logit: S = max_i l_i over the N ID columns; ``logits_id`` is (B, N), the result (B,)."""
    return _check_logits(logits_id, "logits_id").amax(dim=1)


def glmcm_score(
    logits_id: torch.Tensor, local_logits_id: torch.Tensor, temperature: float = 1.0, lambda_local: float = 1.0
) -> torch.Tensor:
    """GL-MCM (Miyai et al., 2023; the test score of LoCoOp): global MCM plus λ times the best local MCM.

        S = max_i softmax(l / T)_i + λ · max_p max_i softmax(l^{(p)} / T)_i

    where l is the global (image) logit vector and l^{(p)} that of patch p.

    Args:
        logits_id: (B, N) global logits of the ID labels.
        local_logits_id: (B, P, N) per-patch logits of the ID labels.
        temperature: T > 0 (LoCoOp: T = 1 on raw cosines, i.e. ``temperature=100`` on 100·cos logits).
        lambda_local: λ ≥ 0, the weight of the local term (GL-MCM's ``--lambda_local``: 1 by default, 0.5 in its
            ImageNet script; LoCoOp's test: 1).

    Returns:
        (B,) scores in [(1 + λ)/N, 1 + λ].
    """
    x = _check_logits(logits_id, "logits_id")
    loc = _check_logits(local_logits_id, "local_logits_id", ndim=3)
    if loc.shape[0] != x.shape[0] or loc.shape[2] != x.shape[1]:
        raise ClipoodError(f"local_logits_id has shape {tuple(loc.shape)} but logits_id has shape "
                           f"{tuple(x.shape)}; expected (B, P, N) = ({x.shape[0]}, P, {x.shape[1]})")
    if loc.shape[1] == 0:
        raise ClipoodError("local_logits_id has no patches (P = 0); pass local features or use the 'mcm' score")
    t = _check_temperature(temperature)
    lam = float(lambda_local)
    if not (lam >= 0.0 and lam != float("inf")):
        raise ClipoodError(f"lambda_local must be a finite number >= 0, got {lambda_local!r}")
    dtype = torch.promote_types(x.dtype, loc.dtype)
    return _max_softmax(x.to(dtype) / t) + lam * _max_softmax(loc.to(dtype) / t).amax(dim=1)


SCORES: dict[str, Callable[..., torch.Tensor]] = {
    "neglabel": neglabel_score,
    "mcm": mcm_score,
    "energy": energy_score,
    "max_logit": max_logit_score,
    "glmcm": glmcm_score,
}


def get_score(name: str) -> Callable[..., torch.Tensor]:
    """The score function registered under ``name`` (one of ``SCORES``); its own signature applies."""
    if not isinstance(name, str) or name not in SCORES:
        raise unknown("score", str(name), SCORES)
    return SCORES[name]


def compute_score(
    name: str,
    logits: torch.Tensor,
    num_id: int,
    *,
    groups: int = 1,
    temperature: float = 1.0,
    local_logits: torch.Tensor | None = None,
    seed: int = 0,
    remainder: str = "drop",
    lambda_local: float = 1.0,
) -> torch.Tensor:
    """Any registered score from full logits, with one signature.

    Args:
        name: a key of ``SCORES``.
        logits: (B, K) scaled logits, the first ``num_id`` columns ID (then negatives, if any).
        num_id: N, the number of ID columns; ID-only scores use ``logits[:, :N]``.
        groups: NegLabel groups (other scores ignore it).
        temperature: divides the logits for "neglabel", "mcm", "energy" and "glmcm"; "max_logit" ignores it
            (its ranking does not depend on T).
        local_logits: (B, P, K') patch logits with K' ≥ N, required by "glmcm" (which uses ``[..., :N]``).
        seed: NegLabel's group permutation seed.
        remainder: NegLabel's rule for the last M mod G negatives ("drop" | "spread").
        lambda_local: GL-MCM's weight of the local term.

    Returns:
        (B,) scores, higher = more ID.
    """
    fn = get_score(name)
    x = _check_logits(logits, "logits")
    k = x.shape[1]
    if name == "neglabel":
        t = _check_temperature(temperature)
        return neglabel_score(x if t == 1.0 else x / t, num_id, groups=groups, seed=seed, remainder=remainder)
    n = _check_int(num_id, "num_id", 1, k, f"logits has {k} columns (ID first)")
    x_id = x[:, :n]
    if name == "max_logit":
        return max_logit_score(x_id)
    if name == "glmcm":
        if local_logits is None:
            raise ClipoodError("the 'glmcm' score needs local_logits (B, P, K) from patch features; pass "
                               "local_logits or use the 'mcm' score")
        loc = _check_logits(local_logits, "local_logits", ndim=3)
        if loc.shape[2] < n:
            raise ClipoodError(f"local_logits has {loc.shape[2]} label columns but num_id={n}; its first "
                               f"num_id columns must be the ID labels")
        return glmcm_score(x_id, loc[..., :n], temperature=temperature, lambda_local=lambda_local)
    return fn(x_id, temperature=temperature)
