"""The post-hoc registry (clipood.posthoc.get_score / list_scores): every score is listed with its OpenOOD
defaults and what it needs, and the registry stays apart from clipood.scores."""
import pytest
import torch

from clipood import scores
from clipood.errors import ClipoodError
from clipood.posthoc import LinearHead, fit_statistics, get_score, list_scores

OPENOOD_DEFAULTS = {  # configs/postprocessors/*.yml of OpenOOD v1.5
    "msp": {"temperature": 1.0}, "max_logit": {}, "energy": {"temperature": 1.0}, "gen": {"gamma": 0.1, "M": 100},
    "odin": {"temperature": 1000.0, "noise": 0.0014}, "react": {}, "ash_b": {"percentile": 90.0},
    "ash_p": {"percentile": 90.0}, "ash_s": {"percentile": 90.0}, "dice": {"percentile": 90.0}, "vim": {},
    "knn": {"k": 50}, "mds": {}, "rmds": {}, "gradnorm": {}, "eoe": {"beta": 0.25, "temperature": 1.0},
}


def test_every_score_is_listed_with_openoods_defaults():
    listed = {s.name: s for s in list_scores()}
    assert set(listed) == set(OPENOOD_DEFAULTS)
    for name, want in OPENOOD_DEFAULTS.items():
        got = listed[name].params
        assert {k: got[k] for k in want} == want, name
    assert get_score("react").fit_params == {"percentile": 90.0}
    assert get_score("vim").fit_params["dim"] == 256


def test_what_each_score_needs():
    need = {s.name: s for s in list_scores()}
    assert {n for n, s in need.items() if s.needs_fit} == {"react", "dice", "vim", "knn", "mds", "rmds"}
    assert {n for n, s in need.items() if s.pixels} == {"odin"}
    assert {n for n, s in need.items() if s.label_file} == {"eoe"}
    assert {n for n, s in need.items() if s.pre_projection} == {"gradnorm", "react", "ash_p", "ash_b", "ash_s",
                                                               "dice", "vim"}
    assert {n for n, s in need.items() if s.linear_head} == {"gradnorm", "dice", "vim"}


def test_aliases_and_unknown_names():
    assert get_score("ash") is get_score("ash_b") and get_score("ebo") is get_score("energy")
    assert get_score("mls") is get_score("max_logit") and get_score("mahalanobis") is get_score("mds")
    with pytest.raises(ClipoodError, match="did you mean 'react'"):
        get_score("reac")


def test_fit_then_score_through_the_registry():
    """Each fitted score's statistics reach its function through ``stats_kwargs``."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 8, generator=g, dtype=torch.float64), torch.arange(60) % 3
    for name in ("react", "dice", "knn", "mds", "rmds", "vim"):
        info = get_score(name)
        head = LinearHead(torch.randn(3, 8, generator=g, dtype=torch.float64))
        fit = {"react": lambda: info.fit(), "dice": lambda: info.fit(), "knn": lambda: info.fit(),
               "mds": lambda: info.fit(3), "rmds": lambda: info.fit(3), "vim": lambda: info.fit(head, dim=4)}[name]()
        st = fit_statistics(fit, [(x, y)])
        args = [x] + ([head] if "head" in info.inputs else [])
        out = info(*args, **({"k": 5} if name == "knn" else {}), **info.stats_kwargs(st))
        assert out.shape == (60,) and torch.isfinite(out).all(), name


def test_the_evaluations_registry_is_unchanged():
    """Unifying with clipood.scores is left to the evaluation wiring: its names and get_score stay as they were."""
    assert set(scores.SCORES) == {"neglabel", "mcm", "energy", "max_logit", "glmcm"}
    with pytest.raises(ClipoodError):
        scores.get_score("gen")
