"""ODIN on a tiny CLIP (``clipood-tiny``, float64): the input gradient against finite differences, and the score
against an independent step-by-step version of OpenOOD v1.5's ``openood/postprocessors/odin_postprocessor.py``
(``data.requires_grad``, ``loss.backward()``, ``torch.ge(data.grad, 0)``, channel-wise division by the input std,
``tempInputs = data − noise · gradient``, max softmax of ``net(tempInputs) / T``).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from parity_check import check

from clipood.clip.backbone import load_clip
from clipood.errors import ClipoodError
from clipood.posthoc import CLIP_STD, LinearHead, odin, odin_gradient, odin_perturbation
from clipood.clip.pre_projection import image_encoder, normalization_std

T = 1000.0


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    bb = load_clip("clipood-tiny")
    model = copy.deepcopy(bb.model).double().eval()
    g = torch.Generator().manual_seed(1)
    text = torch.randn(5, bb.embed_dim, generator=g, dtype=torch.float64)
    pixels = torch.randn(2, 3, bb.image_size, bb.image_size, generator=g, dtype=torch.float64)
    return bb, image_encoder(model), LinearHead.from_text_features(text, 100.0), pixels


def _per_image_loss(encoder, head, x, labels, temperature):
    """The ODIN loss of each image on its own (OpenOOD's batch loss is the mean of these)."""
    return F.cross_entropy(head(encoder(x)) / temperature, labels, reduction="none")


def test_odin_gradient_matches_finite_differences(clip):
    """∂L/∂x against central differences: along 3 random directions, and on 48 single pixels per image."""
    _, enc, head, x = clip
    g = odin_gradient(x, enc, head, temperature=T)
    with torch.no_grad():
        labels = head(enc(x)).argmax(dim=1)
    b, h = x.shape[0], 1e-4
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(3):
            d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            fd = (_per_image_loss(enc, head, x + h * d, labels, T).mean()
                  - _per_image_loss(enc, head, x - h * d, labels, T).mean()) / (2 * h)
            assert abs(float(fd) - float((g * d).sum())) <= 1e-6 * abs(float(fd)), "directional derivative"
        flat = x.reshape(b, -1)
        idx = torch.randint(0, flat.shape[1], (48,), generator=gen)
        plus, minus = flat.repeat_interleave(48, 0), flat.repeat_interleave(48, 0)
        rows = torch.arange(b * 48)
        cols = idx.repeat(b)
        plus[rows, cols] += h
        minus[rows, cols] -= h
        lab = labels.repeat_interleave(48)
        fd = (_per_image_loss(enc, head, plus.view(-1, *x.shape[1:]), lab, T)
              - _per_image_loss(enc, head, minus.view(-1, *x.shape[1:]), lab, T)) / (2 * h) / b
    auto = g.reshape(b, -1)[:, idx].reshape(-1)
    scale = float(g.abs().max())
    check("odin_gradient_fd", auto / scale, fd / scale)
    big = fd.abs() > 1e-3 * scale
    assert big.sum() > 20 and bool((torch.sign(auto[big]) == torch.sign(fd[big])).all())


def _openood_odin(net, data, temperature, noise, std):
    """odin_postprocessor.py ``postprocess``, step by step."""
    data = data.clone().detach()
    data.requires_grad = True
    output = net(data)
    labels = output.detach().argmax(axis=1)
    loss = torch.nn.CrossEntropyLoss()(output / temperature, labels)
    loss.backward()
    gradient = torch.ge(data.grad.detach(), 0)
    gradient = (gradient.float() - 0.5) * 2
    for c in range(3):
        gradient[:, c] = gradient[:, c] / std[c]
    temp_inputs = torch.add(data.detach(), gradient.to(data.dtype), alpha=-noise)
    out = (net(temp_inputs) / temperature).detach()
    out = out - out.max(dim=1, keepdims=True).values
    out = out.exp() / out.exp().sum(dim=1, keepdims=True)
    return out.max(dim=1).values


@pytest.mark.parametrize("t,noise", [(1000.0, 0.0014), (1.0, 0.0028), (100.0, 0.0)])
def test_odin_score_is_odin_postprocessor(clip, t, noise):
    _, enc, head, x = clip
    ref = _openood_odin(lambda d: head(enc(d)), x, t, noise, CLIP_STD)
    check(f"odin_T{t:g}_eps{noise:g}", odin(x, enc, head, temperature=t, noise=noise), ref.detach())


def test_odin_perturbation_moves_every_pixel_by_eps_over_std(clip):
    """|x̃ − x| = ε / σ_c on every pixel (a zero gradient counts as +1, as torch.ge(grad, 0) does)."""
    _, enc, head, x = clip
    step = (odin_perturbation(x, enc, head, noise=0.01) - x).abs()
    for c in range(3):
        assert torch.allclose(step[:, c], torch.full_like(step[:, c], 0.01 / CLIP_STD[c]), rtol=1e-9, atol=0)

    def corner(p):  # an encoder blind outside the top-left corner: zero gradient there
        return F.normalize(p[:, :, :8, :8].reshape(p.shape[0], -1)[:, :64], dim=-1)

    g = odin_gradient(x, corner, head)
    assert bool((g[:, :, 8:, :] == 0).all())
    moved = odin_perturbation(x, corner, head, noise=0.01) - x
    expected = -0.01 / torch.tensor(CLIP_STD, dtype=x.dtype)[None, :, None, None]  # sign(0) = +1, step −ε/σ
    assert torch.allclose(moved[:, :, 8:, :], expected.expand_as(moved[:, :, 8:, :]), rtol=1e-9, atol=0)


def test_odin_leaves_no_parameter_gradient(clip):
    bb, enc, head, x = clip
    model = copy.deepcopy(bb.model).double().eval()
    odin(x, image_encoder(model), head)
    assert all(p.grad is None for p in model.parameters())


def test_odin_input_checks(clip):
    bb, enc, head, x = clip
    assert normalization_std(bb) == pytest.approx(CLIP_STD)
    with pytest.raises(ClipoodError, match="input_std"):
        odin(x, enc, head, input_std=(0.5, 0.5))
    with pytest.raises(ClipoodError, match="pixels"):
        odin(x[0], enc, head)
