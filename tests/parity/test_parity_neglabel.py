"""NegLabel's grouped score against the released ``XueJiang16/NegLabel`` ``mmcls/models/ood/clip_ood.py``
``ScalableClassifier.grouping`` (L25-49), and LAPT's test-time copy of it (OpenOOD-VLM
``openood/postprocessors/oneoodprompt_postprocessor.py``).

Minor item: with G groups the last M mod G negative columns are dropped, the remaining M' permuted with
``torch.randperm(M')`` after ``torch.manual_seed(0)`` and reshaped into G equal groups; the score is the mean
over groups of Σ_ID softmax([ID | group]). (The release draws the permutation on CUDA; this reference draws it
on the CPU, as clipood does.)
"""
from __future__ import annotations

import pytest
import torch

from _reference import TOL, report
from clipood.scores import neglabel_score


def _release_grouping(pos, neg, ngroup, seed=0):
    """``ScalableClassifier.grouping`` with ``random_permute=True`` and t = 1, in float64 on the CPU."""
    drop = neg.shape[1] % ngroup
    if drop > 0:
        neg = neg[:, :-drop]
    torch.manual_seed(seed)
    idx = torch.randperm(neg.shape[1])
    negs = neg.T[idx].T.reshape(pos.shape[0], ngroup, -1)
    scores = []
    for i in range(ngroup):
        full = torch.cat([pos, negs[:, i, :]], dim=-1).softmax(dim=-1)
        scores.append(full[:, : pos.shape[1]].sum(dim=-1, keepdim=True))
    return torch.cat(scores, dim=-1).mean(dim=-1)


@pytest.mark.parametrize("m,groups", [(23, 5), (40, 3), (10000, 100)])
def test_neglabel_groups_drop_the_remainder_as_released(m, groups):
    g = torch.Generator().manual_seed(m)
    n = 6
    logits = 5 * torch.randn(4, n + m, generator=g, dtype=torch.float64)
    got = neglabel_score(logits, n, groups=groups, seed=0)
    ref = _release_grouping(logits[:, :n], logits[:, n:], groups)
    err = report(f"NegLabel groups (M={m}, G={groups})", float((got - ref).abs().max()))
    assert err <= TOL
    if m % groups:  # the former rule (every negative kept) is another score
        old = neglabel_score(logits, n, groups=groups, seed=0, remainder="spread")
        assert float((old - ref).abs().max()) > 1e-6
