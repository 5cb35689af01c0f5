"""CoOp against the released ``KaiyangZhou/CoOp`` ``trainers/coop.py``, on the random tiny CLIP (weights shared).

Result-changing item 1: the training cross-entropy runs over the N ID columns only (``CoOp.forward_backward``:
``F.cross_entropy(output, label)`` on the ID classes' logits), not over ID + mined negatives. Minor item: the
context length of ``ctx_init`` is its word count (``PromptLearner.__init__``: ``n_ctx = len(ctx_init.split(" "))``).
"""
from __future__ import annotations

import pytest
import torch

import adapters
from _reference import TOL, clip, cross_entropy64, prompt_features, report, unit  # noqa: F401 (clip: fixture)
from clipood.training.task import TrainingTask

ID = ["cat", "small red car", "tree", "dog"]
NEG = ["stone", "river", "cloud", "sand", "wave"]


@pytest.fixture(scope="module")
def context(clip):
    return adapters.AdapterContext.from_backbone(clip, ID, NEG)


def _batch(d):
    return {"id_features": unit(6, d, seed=1), "id_labels": torch.tensor([0, 1, 2, 3, 1, 0]),
            "neg_features": unit(6, d, seed=2)}


def test_coop_loss_and_gradient_follow_forward_backward(clip, context):
    """``trainers/coop.py`` ``CoOp.forward_backward`` (L272-273) with ``PromptLearner.forward`` / ``TextEncoder``:
    loss = CE(logit_scale · cos(v, t_i), y) over the N ID classes; gradient on the shared context."""
    torch.manual_seed(0)
    a = adapters.build_adapter("coop", context)
    with torch.no_grad():
        a.ctx.add_(0.3 * torch.randn_like(a.ctx))
    batch = _batch(context.dim)
    task = TrainingTask(a, {"cls": 1.0}, logit_scale=100.0)
    loss = task(batch)["loss"]
    (g,) = torch.autograd.grad(loss, a.ctx)

    ctx = a.ctx.detach().clone().requires_grad_(True)
    t = prompt_features(clip.model, clip.tokenizer, ID, ctx, "a photo of a")
    ref = cross_entropy64(100.0 * batch["id_features"] @ t.t(), batch["id_labels"])
    (g_ref,) = torch.autograd.grad(ref, ctx)
    err = report("coop L_cls over ID columns", max(abs(float(loss.detach()) - float(ref.detach())), float((g - g_ref).abs().max())))
    assert err <= TOL
    # the former rule (frozen negatives in the softmax) is measurably different on these inputs
    c = context.text_features
    old = cross_entropy64(100.0 * batch["id_features"] @ torch.cat([t, c[4:]]).t(), batch["id_labels"])
    assert abs(float(old.detach()) - float(ref.detach())) > 1e-2
    all_cols = TrainingTask(a, {"cls": 1.0}, logit_scale=100.0, options={"cls_columns": "all"})(batch)["loss"]
    assert abs(float(all_cols.detach()) - float(old.detach())) <= TOL  # the named option keeps KR-NFT's Eq. 7


def test_coop_counts_the_init_phrase_in_words(clip):
    """``trainers/coop.py`` ``PromptLearner.__init__`` (L72-101): ``n_ctx = len(ctx_init.split(" "))`` and
    ``ctx = embedding[0, 1:1 + n_ctx]``; the remaining tokens of a multi-token word stay in the frozen suffix."""
    phrase = "itap of a"  # 3 words, 4 tokens ("itap" is two)
    ctx = adapters.AdapterContext.from_backbone(clip, ID, NEG)
    a = adapters.build_adapter("coop", ctx, ctx_init=phrase).eval()
    tokens = clip.tokenizer([phrase])
    with torch.no_grad():
        want_ctx = clip.model.token_embedding(tokens)[0, 1:4].float()
        ref = prompt_features(clip.model, clip.tokenizer, ID, want_ctx, phrase, n_ctx=3)
        got = a.id_text_features()
    err = report("coop ctx_init counted in words",
                 max(float((a.ctx.detach() - want_ctx).abs().max()), float((got - ref).abs().max())))
    assert a.n_ctx == 3 and tuple(a.ctx.shape) == (3, clip.text_path.width)
    assert err <= TOL
    assert adapters.build_adapter("coop", ctx, ctx_init=phrase, ctx_count="tokens").n_ctx == 4  # the option
