"""Parity of the activation-shaping scores with formulas written from OpenOOD v1.5 (numpy float64 unless said).

OpenOOD files: ``openood/postprocessors/react_postprocessor.py`` + ``openood/networks/react_net.py`` (ReAct),
``ash_postprocessor.py`` + ``openood/networks/ash_net.py`` (ASH-P / -B / -S), ``dice_postprocessor.py`` (DICE),
``gradnorm_postprocessor.py`` (GradNorm: per-sample backward through an ``nn.Linear``, reproduced with autograd).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity_check import check
from scipy.special import logsumexp

from clipood.errors import ClipoodError
from clipood.posthoc import (LinearHead, ProjectedHead, ash_b, ash_p, ash_s, ash_transform, dice, gradnorm, react)

RNG = np.random.default_rng(2022)
B, FEAT, K, D = 7, 24, 5, 6
RELU = np.maximum(RNG.normal(0.3, 1.0, size=(B, FEAT)), 0.0) + RNG.uniform(0, 1e-3, size=(B, FEAT))  # distinct
SIGNED = RNG.normal(0.0, 1.0, size=(B, FEAT))  # CLIP ViT's CLS after ln_post is signed
W = RNG.normal(0.0, 0.5, size=(K, FEAT))
BIAS = RNG.normal(0.0, 0.5, size=K)
HEAD = LinearHead(torch.tensor(W), torch.tensor(BIAS))
PROJ = RNG.normal(0.0, 0.3, size=(D, FEAT))
TEXT = RNG.normal(0.0, 1.0, size=(K, D))


def _fc(x):
    return x @ W.T + BIAS


def _clip_logits(h, s=100.0):
    v = h @ PROJ.T
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    t = TEXT / np.linalg.norm(TEXT, axis=1, keepdims=True)
    return s * v @ t.T


@pytest.mark.parametrize("x", [RELU, SIGNED], ids=["relu", "signed"])
def test_react_is_clip_then_energy(x):
    """react_net.py ``forward_threshold``: feature.clip(max=threshold) → fc; react_postprocessor.py: energy =
    logsumexp(output); threshold = np.percentile(ID activations.flatten(), 90)."""
    thr = float(np.percentile(RELU.flatten(), 90))
    check("react", react(torch.tensor(x), HEAD, threshold=thr), logsumexp(_fc(np.minimum(x, thr)), axis=1))


def test_react_through_clips_projection():
    """On CLIP the penultimate features are mapped by the projection, normalised, and compared with the text
    features: the clipped features take that exact path (ProjectedHead)."""
    head = ProjectedHead(torch.tensor(PROJ), torch.tensor(TEXT), logit_scale=100.0)
    thr = float(np.percentile(SIGNED.flatten(), 90))
    ref = logsumexp(_clip_logits(np.minimum(SIGNED, thr)), axis=1)
    check("react_projected", react(torch.tensor(SIGNED), head, threshold=thr), ref)
    assert np.abs(ref - logsumexp(_clip_logits(SIGNED), axis=1)).max() > 1e-3  # the clip changes the score


def test_react_threshold_must_be_a_number():
    with pytest.raises(ClipoodError, match="threshold"):
        react(torch.tensor(RELU), HEAD, threshold="high")
    with pytest.raises(ClipoodError, match="NaN"):
        react(torch.tensor(RELU), HEAD, threshold=float("nan"))


def _ash_ref(x, p, variant):
    out = np.zeros_like(x)
    n = x.shape[1]
    k = n - int(np.round(n * p / 100.0))
    for i, row in enumerate(x):
        idx = np.argsort(-row)[:k]
        s1 = row.sum()
        if variant == "b":
            out[i, idx] = s1 / k
        else:
            out[i, idx] = row[idx]
            if variant == "s":
                out[i] *= np.exp(s1 / out[i].sum())
    return out


@pytest.mark.parametrize("variant", ["p", "b", "s"])
@pytest.mark.parametrize("p", [90, 65, 50])
def test_ash_shaping_is_ash_nets(variant, p):
    """ash_net.py ``ash_p`` / ``ash_b`` / ``ash_s``: k = n − round(n·p/100) largest kept (np.round: half to
    even); b fills them with s1/k; s multiplies the pruned row by exp(s1/s2)."""
    got = ash_transform(torch.tensor(RELU), percentile=p, variant=variant)
    check(f"ash_{variant}_transform_p{p}", got, _ash_ref(RELU, p, variant))


def test_ash_rounds_half_to_even_like_numpy():
    """n = 10, p = 65: n·p/100 = 6.5 → np.round gives 6, so k = 4 activations are kept (not 3)."""
    x = torch.tensor(RELU[:, :10])
    kept = (ash_transform(x, percentile=65, variant="p") != 0).sum(dim=1)
    assert kept.tolist() == [4] * B
    check("ash_p_half_even", ash_transform(x, percentile=65, variant="p"), _ash_ref(RELU[:, :10], 65, "p"))


@pytest.mark.parametrize("fn,variant", [(ash_p, "p"), (ash_b, "b"), (ash_s, "s")])
def test_ash_scores_are_energy_of_the_shaped_features(fn, variant):
    """ash_postprocessor.py: energyconf = logsumexp(fc(ash(feature))), percentile 90 (configs/postprocessors/
    ash.yml); OpenOOD's ``ash`` is ASH-B (ASHNet.forward_threshold calls ash_b)."""
    ref = logsumexp(_fc(_ash_ref(RELU, 90, variant)), axis=1)
    check(f"ash_{variant}", fn(torch.tensor(RELU), HEAD), ref)


def test_ash_refuses_a_percentile_that_keeps_nothing():
    with pytest.raises(ClipoodError, match="keeps no activation"):
        ash_b(torch.tensor(RELU), HEAD, percentile=100)


@pytest.mark.parametrize("p", [90, 70])
def test_dice_is_dice_postprocessor(p):
    """dice_postprocessor.py: contrib = mean_act[None, :] · W; thresh = np.percentile(contrib, p); masked_w =
    W · (contrib > thresh); output = Σ_j feature_j · masked_w + b; energyconf = logsumexp(output)."""
    mean_act = RELU.mean(axis=0)
    contrib = mean_act[None, :] * W
    masked = W * (contrib > np.percentile(contrib, p))
    ref = logsumexp((RELU[:, None, :] * masked).sum(2) + BIAS, axis=1)
    check(f"dice_p{p}", dice(torch.tensor(RELU), HEAD, mean_activation=torch.tensor(mean_act), percentile=p), ref)


def _gradnorm_autograd(x, w, b):
    """gradnorm_postprocessor.py, sample by sample: targets = ones(1, C); loss = mean(Σ −targets ·
    log_softmax(fc(x))); score = Σ |∂loss/∂fc.weight|."""
    fc = torch.nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        fc.weight.copy_(torch.tensor(w))
        fc.bias.copy_(torch.tensor(b))
    targets = torch.ones(1, w.shape[0], dtype=torch.float64)
    out = []
    for row in torch.tensor(x):
        fc.zero_grad()
        loss = torch.mean(torch.sum(-targets * F.log_softmax(fc(row[None]), dim=-1), dim=-1))
        loss.backward()
        out.append(float(fc.weight.grad.abs().sum()))
    return np.array(out)


@pytest.mark.parametrize("x", [RELU, SIGNED], ids=["relu", "signed"])
def test_gradnorm_closed_form_is_openoods_backward(x):
    check("gradnorm", gradnorm(torch.tensor(x), HEAD), _gradnorm_autograd(x, W, BIAS))


def test_gradnorm_on_clips_joint_space():
    """On CLIP in the joint space the last layer is W = s·T̂ on the normalised image feature (no bias)."""
    v = SIGNED[:, :D] / np.linalg.norm(SIGNED[:, :D], axis=1, keepdims=True)
    head = LinearHead.from_text_features(torch.tensor(TEXT), 100.0)
    w = 100.0 * TEXT / np.linalg.norm(TEXT, axis=1, keepdims=True)
    check("gradnorm_joint", gradnorm(torch.tensor(v), head), _gradnorm_autograd(v, w, np.zeros(K)))


def test_linear_scores_refuse_a_nonlinear_head():
    head = ProjectedHead(torch.tensor(PROJ), torch.tensor(TEXT))
    with pytest.raises(ClipoodError, match="linear head"):
        gradnorm(torch.tensor(SIGNED), head)
    lin = head.linearised()  # W = s·T̂·P drops the normalisation
    t = TEXT / np.linalg.norm(TEXT, axis=1, keepdims=True)
    check("linearised_head", lin(torch.tensor(SIGNED)), 100.0 * SIGNED @ PROJ.T @ t.T)
