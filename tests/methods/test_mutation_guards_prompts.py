"""Guards for the prompt methods (issue 25): behaviours a planted bug once changed without any test failing.

Each test reaches the adapters only through their public API (build from a context on the random-weight
``clipood-tiny``, call, train with an optimiser, ``tuned_text_features``) and compares with something computed
apart: open_clip's own ``encode_text``, an entropy written out here, a freshly built adapter that never cached
anything. The table in docs/testing.md lists the bug each test was seen to catch.
"""
from __future__ import annotations

import math

import pytest
import torch

import adapters
from clipood.training.task import TrainingTask
from helpers import open_clip_features, perturb, phrase_embeddings, unit

ID_NAMES = ["cat", "dog", "tree", "car", "boat", "bird", "house", "stone", "lamp"]   # N = 9: round(9/5) != 9//5
NEG_NAMES = ["river", "cloud", "sand"]
SCALE = 100.0


@pytest.fixture(scope="module")
def tiny():
    from clipood.clip.backbone import load_clip

    torch.manual_seed(2025)
    return load_clip("clipood-tiny")


@pytest.fixture(scope="module")
def context(tiny):
    return adapters.AdapterContext.from_backbone(tiny, ID_NAMES, NEG_NAMES)


def trainable(adapter):
    return [p for p in adapter.parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------------------ LoCoOp
def _entropy_term(patch_cos: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """LoCoOp Eq. 6 by hand: −mean entropy of softmax(s·cos) over the patches whose label is not in their
    top-k classes (float64, loops), with the released code's −Σ p log(p + 1e-5) (LoCoOp's default
    ``entropy_eps``)."""
    ents = []
    for b in range(patch_cos.shape[0]):
        for p in range(patch_cos.shape[1]):
            row = SCALE * patch_cos[b, p].double()
            top = sorted(range(row.numel()), key=lambda i: -float(row[i]))[:k]
            if int(labels[b]) not in top:
                q = torch.softmax(row, 0)
                ents.append(-float((q * (q + 1e-5).log()).sum()))
    assert ents, "no OOD patch in the fixture"
    return -sum(ents) / len(ents)


def test_locoop_defaults_are_k_round_n_over_5_and_entropy_weight_a_quarter(context, tiny):
    """With its defaults, LoCoOp's training total is L_cls + 0.25·L_ent, L_ent over the patches whose label is
    outside their top-K classes, K = round(N/5) = 2 for N = 9 (200 of 1,000 on ImageNet)."""
    a = adapters.build_adapter("locoop", context, ctx_init="a photo of a")  # a fresh context: zero-shot rows
    task = a.task_cls(a, {"cls": 1.0}, logit_scale=SCALE)
    b, t, d = 4, 8, context.dim
    labels = torch.tensor([0, 3, 5, 8])
    batch = {"id_features": unit(b, d, seed=1), "id_labels": labels, "id_local": unit(b, t, d, seed=2),
             "neg_features": unit(b, d, seed=3)}
    out = task(batch)
    tid = open_clip_features(tiny, [f"a photo of a {n}." for n in ID_NAMES])                # the learned rows at init
    cos = torch.einsum("btd,nd->btn", batch["id_local"].double(), tid.double())
    want = _entropy_term(cos, labels, k=2)
    got = float((out["loss"] - out["cls_loss"]).detach())
    assert got == pytest.approx(0.25 * want, abs=1e-5)
    # the fixture separates the slips: K = N // 5 = 1, or another weight
    assert abs(0.25 * _entropy_term(cos, labels, k=1) - got) > 1e-3
    assert abs(0.5 * want - got) > 1e-3


def test_locoop_default_k_is_round_n_over_5_at_least_1():
    from adapters.locoop import scaled_top_k

    for n, k in [(1000, 200), (9, 2), (13, 3), (14, 3), (19, 4), (12, 2), (4, 1), (2, 1), (1, 1)]:
        assert scaled_top_k(0, n) == k, (n, scaled_top_k(0, n), k)
    assert scaled_top_k(3, 9) == 3  # a set top_k is kept


# ------------------------------------------------------------------------------------------ eval caches
@pytest.mark.parametrize("name", ["negpt", "coop", "locoop", "connegpt"])
def test_eval_logits_follow_every_optimiser_step(context, name):
    """A trained prompt learner evaluated between steps scores with its current context: after another
    optimiser step (or loading other weights) its eval logits equal those of a freshly built adapter with the
    same weights, which never cached anything."""
    torch.manual_seed(0)
    a = adapters.build_adapter(name, context, ctx_init="a photo of a")
    task = (getattr(a, "task_cls", None) or TrainingTask)(a, {"cls": 1.0, "ood": 0.3}, logit_scale=SCALE)
    opt = torch.optim.AdamW(trainable(a), lr=0.05)
    v = unit(3, context.dim, seed=9)
    d = context.dim

    def fresh_logits():
        f = adapters.build_adapter(name, context, ctx_init="a photo of a")
        f.load_state_dict(a.state_dict())
        with torch.no_grad():
            return f.eval()(v).logits

    for step in range(2):
        a.train()
        opt.zero_grad()
        batch = {"id_features": unit(4, d, seed=10 + step), "id_labels": torch.tensor([0, 2, 4, 6]),
                 "neg_features": unit(4, d, seed=20 + step), "id_local": unit(4, 3, d, seed=30 + step)}
        task(batch)["loss"].backward()
        a.eval()
        with torch.no_grad():
            before = a(v).logits            # evaluated after the backward, before the step (a logging hook)
        opt.step()
        with torch.no_grad():
            after = a(v).logits
        assert float((after - before).abs().max()) > 1e-4, f"step {step} did not change the eval logits"
        torch.testing.assert_close(after, fresh_logits(), atol=1e-5, rtol=0)
    # loading other weights into an evaluated adapter (resuming, a checkpoint) changes what it scores with too
    other = perturb(adapters.build_adapter(name, context, ctx_init="a photo of a"), seed=3, scale=0.2)
    a.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(v).logits, other.eval()(v).logits, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- ConNegPT
def test_connegpt_conditions_on_the_batchs_condition_not_on_the_crop(context):
    """The negative prompts of a crop are conditioned on the ``condition_features`` its batch carries (the top
    crop of its image): the same crop under two conditions gets two sets of negative logits, each the crop's
    cosines with the explicit tuned features of that condition."""
    a = perturb(adapters.build_adapter("connegpt", context, ctx_init="a photo of a"), seed=5, scale=0.3).eval()
    n, d = len(ID_NAMES), context.dim
    v = unit(1, d, seed=40).expand(2, d).contiguous()          # one crop, twice
    cond = unit(2, d, seed=41)                                 # two conditions
    with torch.no_grad():
        got = a({"image_features": v, "condition_features": cond}).logits
        want = torch.einsum("bd,bkd->bk", v, a.tuned_text_features(cond))
        own = a(v).logits                                       # conditioned on the crop itself
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[0, :n], got[1, :n], atol=1e-6, rtol=0)      # ID rows are frozen
    assert float((got[0, n:] - got[1, n:]).abs().max()) > 1e-4                # two conditions, two outputs
    assert float((got[0, n:] - own[0, n:]).abs().max()) > 1e-4                # not the crop's own features


# -------------------------------------------------------------------------------------------------- CoOp
PHRASES = ["a photo of a", "a drawing of a", "a picture of the", "an image of my", "a sketch of one",
           "one photo of the", "a photo of the", "a drawing of the", "a picture of a"]


@pytest.mark.parametrize("chunk", [2, 256])
def test_class_specific_context_gives_each_class_its_own_prompt(context, tiny, chunk):
    """CoOp's CSC: class i's text feature is encode_text of "<its own 4 context words> <name_i>." (open_clip
    on the tokens), whatever the chunking; no class sees another class's context."""
    a = adapters.build_adapter("coop", context, ctx_init="a photo of a", class_specific=True, chunk_size=chunk)
    (p,) = trainable(a)
    assert tuple(p.shape) == (len(ID_NAMES), 4, tiny.text_path.width)
    with torch.no_grad():
        for i, phrase in enumerate(PHRASES):
            p[i] = phrase_embeddings(tiny, phrase, 4)
    want = open_clip_features(tiny, [f"{ph} {n}." for ph, n in zip(PHRASES, ID_NAMES)])
    v = unit(3, context.dim, seed=50)
    with torch.no_grad():
        got = a.eval().tuned_text_features()[: len(ID_NAMES)]
        logits = a(v).logits[:, : len(ID_NAMES)]
    assert float((got - want).abs().max()) <= 1e-5
    torch.testing.assert_close(logits, v @ want.t(), atol=1e-5, rtol=0)
    shared = open_clip_features(tiny, [f"{PHRASES[0]} {n}." for n in ID_NAMES])     # what one shared context gives
    assert float((want - shared)[1:].abs().max()) > 1e-3
    # a gradient on class 0's logit alone reaches only class 0's context
    a.train()
    with torch.no_grad():
        p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    (a(v).logits[:, 0].sum()).backward()
    assert float(p.grad[0].abs().sum()) > 0 and float(p.grad[1:].abs().max()) == 0.0
    assert not math.isnan(float(p.grad.sum()))
