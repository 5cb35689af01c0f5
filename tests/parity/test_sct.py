"""SCT's loss terms against its release, tmlr-group/SCT ``trainers/sct.py``: ``forward_backward`` (fp32 branch) and
``entropy_select_topk``, written out again here in numpy float64 (values) and in the release's torch order of
operations (gradients: ``true_probs`` is not detached there)."""
import numpy as np
import pytest
import torch
from parity_check import check

from adapters.sct import SCT_DEFAULTS, sct_ce_loss, sct_entropy_loss, sct_loss, true_class_probs
from clipood.errors import ClipoodError

RNG = np.random.default_rng(23)
B, T, N, K = 5, 7, 12, 4
LOGITS = RNG.normal(0.0, 4.0, size=(B, N))
LOCAL = RNG.normal(0.0, 4.0, size=(B, T, N))
LABELS = RNG.integers(0, N, size=B)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _release_terms(z, local, y, k, lam):
    """forward_backward: loss_id = mean(−Σ onehot·log_softmax(output) · (1.0000001 − true_probs)); entropy_select_topk
    on softmax(local) with its top-k test, −mean(Σ p log(p + 1e-5) · (1e-7 + true_probs)); loss_en = −that."""
    p = _softmax(z)
    py = p[np.arange(len(y)), y]
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    loss_id = np.mean(-logp[np.arange(len(y)), y] * (1.0000001 - py))
    flat = _softmax(local.reshape(-1, local.shape[-1]))
    lab = np.repeat(y, local.shape[1])
    w = np.repeat(py, local.shape[1])
    top = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    sel = ~(top == lab[:, None]).any(1)
    if not sel.any():
        ent = 0.0
    else:
        q = flat[sel]
        ent = -np.mean(np.sum(q * np.log(q + 1e-5), 1) * (0.0000001 + w[sel]))
    loss_en = -ent
    return loss_id, loss_en, loss_id + lam * loss_en, int(sel.sum())


def test_defaults_are_the_releases():
    assert SCT_DEFAULTS == {"entropy_weight": 0.25, "top_k": 200, "ce_eps": 1e-7, "weight_eps": 1e-7, "log_eps": 1e-5}


@pytest.mark.parametrize("k", [1, K, N - 1])
def test_sct_loss_values_match_the_release(k):
    ref_id, ref_en, ref_total, n_sel = _release_terms(LOGITS, LOCAL, LABELS, k, 0.25)
    assert 0 < n_sel < B * T  # some, not all, patches are OOD: both branches of the rule are exercised
    out = sct_loss(torch.tensor(LOGITS), torch.tensor(LOCAL), torch.tensor(LABELS), top_k=k, entropy_weight=0.25)
    check(f"sct_ce_k{k}", out["ce_loss"], ref_id, tol=1e-10)
    check(f"sct_entropy_k{k}", out["entropy_loss"], ref_en, tol=1e-10)
    check(f"sct_total_k{k}", out["loss"], ref_total, tol=1e-10)


def test_no_ood_patch_gives_zero_entropy_term_as_released():
    """entropy_select_topk returns 0 when no patch is selected (top_k = N: the label is in every top-K)."""
    _, ref_en, _, n_sel = _release_terms(LOGITS, LOCAL, LABELS, N, 0.25)
    assert n_sel == 0 and ref_en == 0
    local = torch.tensor(LOCAL, requires_grad=True)
    conf = true_class_probs(torch.tensor(LOGITS), torch.tensor(LABELS))
    ent = sct_entropy_loss(local, torch.tensor(LABELS), N, conf)
    assert float(ent.detach()) == 0.0
    ent.backward()
    assert torch.count_nonzero(local.grad) == 0


def _release_torch_loss(z, local, y, k, lam):
    """The release's fp32 branch in torch, statement by statement (for autograd)."""
    import torch.nn.functional as F

    label_onehot = F.one_hot(y, num_classes=z.shape[1])
    probs = F.softmax(z, dim=1)
    true_probs = torch.gather(probs, 1, y.unsqueeze(1).long()).squeeze()
    loss_id = (-torch.sum(label_onehot * F.log_softmax(z, dim=1), dim=1) * (1.0000001 - true_probs)).mean()
    b, t = local.shape[0], local.shape[1]
    p = F.softmax(local.reshape(b * t, -1), dim=-1)
    tp = true_probs.repeat_interleave(t)
    lab = y.repeat_interleave(t)
    contains = torch.topk(p, k=k, dim=1)[1].eq(lab.unsqueeze(1)).any(dim=1)
    sp, stp = p[~contains], tp[~contains]
    r = -torch.mean(torch.sum(sp * torch.log(sp + 1e-5), 1) * (0.0000001 + stp))
    return loss_id + lam * (-r)


@pytest.mark.parametrize("detach", [False, True])
def test_gradients_flow_through_the_confidence_weights_as_released(detach):
    """The release does not detach ``true_probs``: the gradient w.r.t. the global logits includes the weights'
    derivative. ``detach_confidence=True`` must differ from it (and match a detached reference)."""
    z_ref = torch.tensor(LOGITS, requires_grad=True)
    loc_ref = torch.tensor(LOCAL, requires_grad=True)
    y = torch.tensor(LABELS)
    if detach:
        import torch.nn.functional as F

        def ref(z, loc):  # the release's expressions with true_probs detached
            probs = F.softmax(z, dim=1)
            tp = probs.gather(1, y[:, None])[:, 0].detach()
            lid = (F.cross_entropy(z, y, reduction="none") * (1.0000001 - tp)).mean()
            p = F.softmax(loc.reshape(B * T, -1), -1)
            sel = ~torch.topk(p, K, 1)[1].eq(y.repeat_interleave(T)[:, None]).any(1)
            w = 1e-7 + tp.repeat_interleave(T)[sel]
            return lid - 0.25 * (-(torch.sum(p[sel] * torch.log(p[sel] + 1e-5), 1) * w).mean())
        ref(z_ref, loc_ref).backward()
    else:
        _release_torch_loss(z_ref, loc_ref, y, K, 0.25).backward()
    z = torch.tensor(LOGITS, requires_grad=True)
    loc = torch.tensor(LOCAL, requires_grad=True)
    sct_loss(z, loc, y, top_k=K, detach_confidence=detach)["loss"].backward()
    check(f"sct_grad_global_detach{detach}", z.grad, z_ref.grad.numpy(), tol=1e-10)
    check(f"sct_grad_local_detach{detach}", loc.grad, loc_ref.grad.numpy(), tol=1e-10)
    z2 = torch.tensor(LOGITS, requires_grad=True)
    sct_loss(z2, torch.tensor(LOCAL), y, top_k=K, detach_confidence=not detach)["loss"].backward()
    assert float((z2.grad - z.grad).abs().max()) > 1e-4  # the option changes the gradient: a test that can fail


def test_exact_entropy_option_differs_from_the_releases_epsilon():
    conf = true_class_probs(torch.tensor(LOGITS), torch.tensor(LABELS))
    a = sct_entropy_loss(torch.tensor(LOCAL), torch.tensor(LABELS), K, conf, log_eps=1e-5)
    b = sct_entropy_loss(torch.tensor(LOCAL), torch.tensor(LABELS), K, conf, log_eps=0.0)
    assert 0 < abs(float(a - b)) < 1e-2


def test_ce_weight_is_one_minus_confidence():
    """On one image: (1 + 1e-7 − p_y)·CE written by hand."""
    z = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.float64)
    y = torch.tensor([1])
    p = torch.softmax(z, 1)[0]
    check("sct_ce_hand", sct_ce_loss(z, y), float((1 + 1e-7 - p[1]) * -torch.log(p[1])), tol=1e-12)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ClipoodError, match="B×T×N"):
        sct_entropy_loss(torch.zeros(2, 3), torch.tensor([0, 1]), 1, torch.zeros(2))
    with pytest.raises(ClipoodError, match="class indices"):
        sct_ce_loss(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ClipoodError, match="top_k"):
        sct_entropy_loss(torch.zeros(2, 1, 3), torch.tensor([0, 1]), 0, torch.zeros(2))
