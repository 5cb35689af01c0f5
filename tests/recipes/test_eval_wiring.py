"""Evaluation plumbing: the scores written for a method are the score function of its cosines, scaled by
``eval.logit_scale`` and divided by the method's temperature — on the ID set and on every OOD set.

Written out (s = logit scale, T = temperature, l = s·cos over the N ID columns):
    MCM     S = max_i softmax(l / T)_i          (zero-shot MCM: T = s, i.e. T = 1 on raw cosines)
    energy  S = T · log Σ_i exp(l_i / T)
"""
from __future__ import annotations

import pytest
import torch

from training_probe import (crop_cache, eval_raw_scores, frozen_method, recipe_config, split_features,
                            train_and_score, zero_shot_methods)
from helpers import unit

K, N, D = 5, 2, 4


@pytest.fixture(scope="module")
def sf():
    return split_features(unit(K, D, seed=0), N, unit(6, D, seed=1), torch.tensor([0, 1] * 3),
                          {"o1": unit(5, D, seed=2), "o2": unit(3, D, seed=3)})


def sets(sf):
    return {"id/id": sf.id_feats["id"]["features"], **{f"ood/{k}": v["features"] for k, v in sf.ood_feats.items()}}


def mcm_by_hand(cos, s, t):
    return torch.softmax(s * cos.double()[:, :N] / t, dim=1).max(1).values


def energy_by_hand(cos, s, t):
    return t * torch.logsumexp(s * cos.double()[:, :N] / t, dim=1)


@pytest.mark.parametrize("score,by_hand", [("mcm", mcm_by_hand), ("energy", energy_by_hand)])
def test_method_temperature_reaches_the_score(sf, score, by_hand):
    s, t = 50.0, 7.0
    raw = eval_raw_scores([frozen_method(score, t)], sf, recipe_config(f"eval.logit_scale={s}"))["frozen"]
    assert set(raw) == set(sets(sf))
    for name, x in sets(sf).items():
        want = by_hand(x @ sf.text_features.T, s, t)
        assert torch.allclose(raw[name].double(), want, rtol=1e-5, atol=1e-6), name
        assert not torch.allclose(want, by_hand(x @ sf.text_features.T, s, 1.0), atol=1e-3)  # T matters here


def test_zero_shot_mcm_is_temperature_one_on_raw_cosines(sf):
    """eval.logit_scale = 50: the MCM row must score max softmax(cos) (paper T = 1), whatever the scale."""
    cfg = recipe_config("eval.logit_scale=50.0", "eval.mcm=true")
    raw = eval_raw_scores(zero_shot_methods(cfg), sf, cfg)
    mcm = raw["MCM (zero-shot)"]
    for name, x in sets(sf).items():
        want = torch.softmax((x @ sf.text_features.T).double()[:, :N], dim=1).max(1).values
        assert torch.allclose(mcm[name].double(), want, rtol=1e-5, atol=1e-6), name


def test_tuned_method_scored_with_mcm_uses_the_configured_temperature(sf, tmp_path, monkeypatch):
    """eval.score=mcm for a trained adapter: its scores are max softmax of its tuned cosines at T = 1 on raw
    cosines (T = eval.logit_scale on the scaled logits) — the recipe's train-then-evaluate step, 2 steps."""
    s = 20.0
    cfg = recipe_config("adapter.options.hidden_dim=2", "losses.kr=1.0", "train.epochs=1", "train.batch_size=2",
                        "train.max_steps=2", "train.lr=0.05", "eval.score=mcm", f"eval.logit_scale={s}")
    adapter, raw = train_and_score(cfg, sf, crop_cache(4, q=2, dim=D, num_id=N), tmp_path, monkeypatch)
    assert set(raw) == set(sets(sf))
    for name, x in sets(sf).items():
        with torch.no_grad():
            cos = adapter(x).logits
        want = mcm_by_hand(cos, s, s)
        assert torch.allclose(raw[name].double(), want, rtol=1e-5, atol=1e-6), name
        assert not torch.allclose(want, mcm_by_hand(cos, s, 1.0), atol=1e-3)
