"""NegPrompt as released (mala-lab/NegPrompt): the stage-2 loss of ``core/train_clip.py`` ``train_nega_clip``
(``stage > 1``, ``open_set_method == 'MSP'``: ``nn.MultiLabelSoftMarginLoss`` on the class-major N·(1+n) logits with
``soft_target[idx, labels, :] = 1``, the per-class ``loss_nega_to_nega`` / ``all_class_dis`` loops, weights of
``scripts/train_test_ood.py``) and the test score of ``core/test_clip.py`` ``get_ood_score`` + ``np.max(_, axis=1)``,
written out again in numpy float64 with the release's loops."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity_check import check

from adapters.negprompt import (NEGPROMPT_DEFAULTS, negative_context_init, negprompt_score, negprompt_stage2_loss,
                                negprompt_targets, negprompt_text_features, release_layout, split_release_layout)
from clipood.errors import ClipoodError

RNG = np.random.default_rng(230)
B, N, NNEG, D = 6, 5, 2, 8


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


IMG = _unit(RNG.normal(size=(B, D)))
POS_F = _unit(RNG.normal(size=(N, D)))
NEG_F = _unit(POS_F[:, None, :] + 0.6 * RNG.normal(size=(N, NNEG, D)))
LABELS = RNG.integers(0, N, size=B)
SCALE = 100.0


def _release_text_features():
    """The release's text_features: class-major [t_c, u_c1, .., u_cn] rows (unit, as NegaPromptCLIP normalises)."""
    return np.concatenate([POS_F[:, None, :], NEG_F], axis=1).reshape(N * (1 + NNEG), D)


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _release_stage2(weights=(1.0, 0.1, 0.05)):
    neg_w, dist_w, nn_w = weights
    tf = _release_text_features()
    output = SCALE * IMG @ tf.T  # B × N(1+n), class-major
    output_posi = output.reshape(B, N, 1 + NNEG)[:, :, 0]
    ens = tf.reshape(N, 1 + NNEG, D)
    positive, negative = ens[:, 0], ens[:, 1:]
    lp = output_posi - output_posi.max(1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
    loss_positive = -lp[np.arange(B), LABELS].mean() * 1e-8
    nn_loss = 0.0
    for i in range(N):  # loss_nega_to_nega: norms of the features times the norm of their mean
        feats = negative[i]
        mean = feats.mean(0, keepdims=True)
        dot = np.linalg.norm(feats, axis=-1, keepdims=True) @ np.linalg.norm(mean, axis=-1, keepdims=True).T
        nn_loss += -np.mean(1 - dot)
    nn_loss /= N
    target = np.zeros((B, N, 1 + NNEG))
    target[np.arange(B), LABELS, :] = 1
    target = target.reshape(B, -1)
    msm = np.mean(-np.mean(target * _log_sigmoid(output) + (1 - target) * _log_sigmoid(-output), axis=1))
    dis = 0.0
    for i in range(N):  # all_class_dis
        p = positive[i:i + 1] / np.linalg.norm(positive[i:i + 1], axis=-1, keepdims=True)
        q = negative[i] / np.linalg.norm(negative[i], axis=-1, keepdims=True)
        dis += (1 - p @ q.T).mean()
    np_loss = -dis / N
    total = loss_positive + neg_w * msm + dist_w * np_loss + nn_w * nn_loss
    return {"loss": total, "ce_loss": loss_positive / 1e-8, "msm_loss": msm, "np_loss": np_loss, "nn_loss": nn_loss}


def _ours_logits():
    pos = SCALE * torch.tensor(IMG) @ torch.tensor(POS_F).T
    neg = SCALE * torch.einsum("bd,nkd->bnk", torch.tensor(IMG), torch.tensor(NEG_F))
    return pos, neg


def test_defaults_are_the_releases():
    d = NEGPROMPT_DEFAULTS
    assert (d["n_neg"], d["msm_weight"], d["np_weight"], d["nn_weight"], d["ce_weight"]) == (2, 1.0, 0.1, 0.05, 1e-8)
    assert (d["lr"], d["batch_size"], d["shots"], d["stage2_epochs"], d["score"]) == (0.1, 64, 16, 15, "msp")


def test_stage2_loss_matches_the_release():
    ref = _release_stage2()
    pos, neg = _ours_logits()
    out = negprompt_stage2_loss(pos, neg, torch.tensor(LABELS), torch.tensor(POS_F), torch.tensor(NEG_F))
    for k in ("loss", "msm_loss", "np_loss", "nn_loss"):
        check(f"negprompt_{k}", out[k], ref[k], tol=2e-6)  # the negpt terms normalise in float32
    check("negprompt_ce_loss", out["ce_loss"], ref["ce_loss"], tol=1e-9)
    assert abs(ref["nn_loss"]) > 1e-3 and abs(ref["np_loss"]) > 1e-3  # the fixture is not degenerate


def test_msm_is_torch_multilabel_soft_margin_on_the_release_targets():
    pos, neg = _ours_logits()
    x = release_layout(pos, neg)
    y = negprompt_targets(torch.tensor(LABELS), N, NNEG).reshape(B, -1)
    assert int(y.sum()) == B * (1 + NNEG)  # every prompt of the true class, nothing else
    ref = torch.nn.MultiLabelSoftMarginLoss()(x, y)
    out = negprompt_stage2_loss(pos, neg, torch.tensor(LABELS), torch.tensor(POS_F), torch.tensor(NEG_F))
    check("negprompt_msm_torch", out["msm_loss"], float(ref), tol=2e-6)


def test_layout_round_trip_is_class_major():
    pos = torch.arange(6.0).reshape(1, 2, 3)[..., 0]  # [[0, 3]]
    neg = torch.tensor([[[1.0, 2.0], [4.0, 5.0]]])
    assert release_layout(pos, neg).tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
    p, q = split_release_layout(release_layout(pos, neg), 2)
    assert torch.equal(p, pos) and torch.equal(q, neg)


def _release_scores(rule):
    output = (SCALE * IMG @ _release_text_features().T) / SCALE  # test_nega_clip: logits /= logit_scale.exp()
    sm = np.exp(output - output.max(1, keepdims=True))
    sm = (sm / sm.sum(1, keepdims=True)).reshape(B, N, 1 + NNEG)
    lg = output.reshape(B, N, 1 + NNEG)
    sp, sn, lp = sm[:, :, 0], sm[:, :, 1:], lg[:, :, 0]
    pred = sp.argmax(1)
    if rule == "msp":
        s = sp
    elif rule == "maxlogit":
        s = lp
    elif rule == "energy_oe":
        s = np.log(np.exp(lp).sum(1))[:, None]
    else:  # posi_nega
        s = sp - np.array([sn[i, pred[i], :].max() for i in range(B)])[:, None]
    return s.max(axis=1)  # x1 = np.max(_pred_k, axis=1)


@pytest.mark.parametrize("rule", ["msp", "posi_nega", "maxlogit", "energy_oe"])
def test_scores_match_the_release(rule):
    pos, neg = _ours_logits()
    check(f"negprompt_score_{rule}", negprompt_score(pos, neg, rule=rule), _release_scores(rule), tol=1e-10)


def test_negative_context_init_is_positive_plus_small_uniform_noise():
    ctx = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    neg = negative_context_init(ctx, 2, generator=torch.Generator().manual_seed(1))
    assert neg.shape == (2, 4, 16)
    d = neg - ctx[None]
    assert 1e-7 < float(d.abs().max()) <= 1.1e-5  # float32 rounding of ctx + u
    assert not torch.equal(neg[0], neg[1])  # each negative gets its own noise


def test_text_features_are_one_bank_pass_per_context(tiny):
    """With every context at the phrase's own token embeddings, each of the N·(1+n) prompts is the plain
    sentence through open_clip's encode_text."""
    from adapters.prompting import PromptBank

    names = ["cat", "red apple", "ship"]
    bank = PromptBank(tiny.text_path, tiny.tokenizer, names, 4, "a photo of a")
    ctx = bank.init_ctx.clone()
    pos, neg = negprompt_text_features(bank, ctx, torch.stack([ctx, ctx]))
    ref = F.normalize(tiny.model.encode_text(tiny.tokenize([f"a photo of a {n}." for n in names])).float(), dim=-1)
    check("negprompt_bank_pos", pos, ref.detach().numpy(), tol=1e-5)
    check("negprompt_bank_neg", neg, ref[:, None].expand(-1, 2, -1).detach().numpy(), tol=1e-5)


def test_bad_inputs_are_one_line_errors():
    pos, neg = _ours_logits()
    with pytest.raises(ClipoodError, match="B×N×n"):
        negprompt_score(pos, neg[:, :, 0])
    with pytest.raises(ClipoodError, match="unknown NegPrompt score"):
        negprompt_score(pos, neg, rule="OE")
    with pytest.raises(ClipoodError, match="N·"):
        split_release_layout(torch.zeros(2, 7), 2)
