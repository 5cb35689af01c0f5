"""Scores of the logits alone: MSP, MaxLogit, Energy, GEN, and EOE (logits over ID + envisioned labels).

``logits`` are (B, K), already scaled as the caller wants them (clipood's CLIP logits are 100·cos); every score
returns (B,) with higher = more ID, float64 for float64 input and float32 otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from clipood.errors import ClipoodError
from clipood.scores import energy_score, max_logit_score, mcm_score

from ._checks import as_matrix, integer, non_negative, positive

__all__ = ["energy", "eoe", "gen", "load_envisioned_labels", "max_logit", "msp"]


def msp(logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017), OpenOOD ``base_postprocessor.py`` (``msp``).

        S = max_k softmax(z / T)_k

    OpenOOD has no temperature (T = 1); ``temperature`` is clipood's option (T = 100 on 100·cos logits is MCM).
    """
    return mcm_score(logits, temperature=temperature)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit (Hendrycks et al., 2022), OpenOOD ``maxlogit_postprocessor.py`` (``mls``): S = max_k z_k."""
    return max_logit_score(logits)


def energy(logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy (Liu et al., 2020), OpenOOD ``ebo_postprocessor.py`` (``ebo``, T = 1).

        S = T · log Σ_k exp(z_k / T)
    """
    return energy_score(logits, temperature=temperature)


def gen(logits: torch.Tensor, *, gamma: float = 0.1, M: int = 100) -> torch.Tensor:  # noqa: N803 (OpenOOD's name)
    """Generalized entropy (Liu et al., CVPR 2023), OpenOOD ``gen_postprocessor.py`` (γ = 0.1, M = 100).

        p = softmax(z);   S = − Σ_{k ∈ top-M(p)} p_k^γ (1 − p_k)^γ

    over the M largest probabilities (all K of them when K < M).
    """
    x = as_matrix(logits, "logits", shape="(B, K)")
    g = positive(gamma, "gamma")
    m = integer(M, "M", 1, hint="the number of largest probabilities summed (OpenOOD: 100)")
    p = torch.softmax(x, dim=1)
    top = torch.topk(p, min(m, p.shape[1]), dim=1).values
    return -(top.pow(g) * (1.0 - top).pow(g)).sum(dim=1)


def eoe(logits: torch.Tensor, num_id: int, *, beta: float = 0.25, temperature: float = 1.0) -> torch.Tensor:
    """EOE (Cao et al., ICML 2024, Eq. 3; release ``Aboriginer/EOE`` ``utils/detection_util.py``).

    ``logits`` holds the N ID columns first, then L envisioned outlier labels (from an LLM, see
    :func:`load_envisioned_labels`); with p = softmax(z / T) over all N + L columns,

        S = max_{i < N} p_i − β · max_{j ≥ N} p_j

    The release's defaults: β = 0.25 and T = 1 on raw cosines, which is ``temperature=100`` on clipood's
    100·cos logits.
    """
    x = as_matrix(logits, "logits", shape="(B, N + L)")
    k = x.shape[1]
    if isinstance(num_id, int) and not isinstance(num_id, bool) and num_id == k:
        raise ClipoodError(f"EOE needs envisioned outlier labels after the {k} ID columns, and logits has no "
                           f"more; append their logits or use the 'msp' score")
    n = integer(num_id, "num_id", 1, k - 1, f"logits has {k} columns (ID first, then envisioned labels)")
    b = non_negative(beta, "beta")
    p = torch.softmax(x / positive(temperature, "temperature"), dim=1)
    return p[:, :n].amax(dim=1) - b * p[:, n:].amax(dim=1)


def load_envisioned_labels(path: str | Path, *, id_names: Iterable[str] = (), remove_overlap: bool = False,
                           deduplicate: bool = False) -> list[str]:
    """The envisioned outlier labels of a user's file, in file order (stripped; empty lines dropped).

    Formats: a ``.json`` file as EOE writes it (``{"far": [...]}`` for far / fine-grained tasks; ``{"<ID class>":
    [...], ...}`` for the near task, one list per ID class, concatenated in file order; or a plain JSON list), or
    a text file with one label per line (``#`` starts a comment).

    ``remove_overlap=True`` is the release's near-OOD filter (``remove_overlap_class``): drop every label that
    shares a whitespace-separated word (case-sensitive, as released) with any name in ``id_names``.
    ``deduplicate=True`` (clipood's option; the release keeps repeats) drops repeated labels and labels equal to
    an ID name, case-insensitively. docs/methods.md gives the LLM prompts that make such a file.
    """
    from clipood.io import read_text_lines

    path = Path(path)
    lines = read_text_lines(path, "envisioned label file")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads("\n".join(lines))
        except json.JSONDecodeError as e:
            raise ClipoodError(f"envisioned label file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
        groups = list(data.values()) if isinstance(data, dict) else [data]
        if not all(isinstance(g, list) and all(isinstance(s, str) for s in g) for g in groups):
            raise ClipoodError(f"envisioned label file {path} must hold a list of strings or an object whose "
                               f"values are lists of strings (EOE's format)")
        raw = [s for g in groups for s in g]
    else:
        raw = [ln.split("#", 1)[0] for ln in lines]
    ids = [str(n) for n in id_names]
    id_words = {w for n in ids for w in n.split()}
    seen = {n.strip().lower() for n in ids}
    out = []
    for label in (s.strip() for s in raw):
        if not label or (remove_overlap and any(w in id_words for w in label.split())):
            continue
        if deduplicate:
            if label.lower() in seen:
                continue
            seen.add(label.lower())
        out.append(label)
    if not out:
        raise ClipoodError(f"envisioned label file {path} holds no label after filtering; write one outlier label "
                           f"per line (or check id_names / remove_overlap)")
    return out
