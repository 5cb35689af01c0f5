"""The seed methods registered in issue 23 (sct, idlike, lsn, negprompt): each training task's total against the
method's loss written out by hand on the tiny CLIP (cosines from the adapter's tuned features, every term in plain
torch), the label rules (LSN refuses new labels in one line), the adapters' own test scores (``eval.score=adapter``)
and SCT + KR-NFT as one saved artefact."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adapters
from adapters import build_adapter, load_adapter, save_adapter, stack
from clipood.errors import ClipoodError

ID_NAMES = ["cat", "small red car", "tree", "dog"]
NEG_NAMES = ["stone", "river", "cloud"]
N, M, S = 4, 3, 100.0


@pytest.fixture(scope="module")
def tiny():
    from clipood.clip.backbone import load_clip

    return load_clip("clipood-tiny")


@pytest.fixture(scope="module")
def context(tiny):
    return adapters.AdapterContext.from_backbone(tiny, ID_NAMES, NEG_NAMES)


def perturb(adapter, seed=7, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return adapter


def batch(dim, n=6, t=5, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {"id_features": torch.randn(n, dim, generator=g), "id_labels": torch.tensor([0, 1, 2, 3, 1, 0])[:n],
            "neg_features": torch.randn(n, dim, generator=g), "id_local": torch.randn(n, t, dim, generator=g),
            "neg_local": torch.randn(n, t, dim, generator=g)}


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def task_of(adapter, weights):
    return adapter.task_cls(adapter, weights, logit_scale=S)


def grads(adapter, loss):
    adapter.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in adapter.named_parameters()}


# ----------------------------------------------------------------------------------------------------- SCT
def test_sct_task_is_the_released_loss_with_gradient_through_the_confidence(context):
    a = perturb(build_adapter("sct", context))
    b = batch(context.dim)
    got = task_of(a, {"cls": 1.0})(b)
    t = a.id_text_features()
    z = S * unit(b["id_features"]) @ t.T
    loc = S * unit(b["id_local"]) @ t.T
    y = b["id_labels"]
    p_y = z.softmax(1)[torch.arange(len(y)), y]                                    # not detached (the release)
    ce = -z.log_softmax(1)[torch.arange(len(y)), y]
    l_ce = ((1.0000001 - p_y) * ce).mean()
    k = max(1, round(N / 5))
    ood = ~(loc.topk(k, dim=-1).indices == y[:, None, None]).any(-1)
    q = loc.softmax(-1)
    h = -(q * torch.log(q + 1e-5)).sum(-1)
    l_ent = -((1e-7 + p_y)[:, None].expand_as(h)[ood] * h[ood]).mean()
    ref = l_ce + 0.25 * l_ent
    assert bool(ood.any()) and not bool(ood.all())
    torch.testing.assert_close(got["loss"], ref, atol=1e-5, rtol=1e-5)
    g_got, g_ref = grads(a, got["loss"]), grads(a, ref)
    torch.testing.assert_close(g_got["ctx"], g_ref["ctx"], atol=1e-6, rtol=1e-4)


def test_sct_stacked_with_krnft_saves_and_reloads_as_one_artefact(context, tiny, tmp_path):
    base = perturb(build_adapter("sct", context)).eval()
    stacked = perturb(stack(base, "nft", hidden_dim=8), seed=11)
    v = unit(torch.randn(5, context.dim, generator=torch.Generator().manual_seed(1)))
    save_adapter(stacked, tmp_path / "a")
    assert (tmp_path / "a" / "base" / "adapter.safetensors").is_file()
    again = load_adapter(tmp_path / "a", backbone=tiny)
    assert again.name == "stacked" and again.base.name == "sct" and again.tuner.name == "nft"
    with torch.no_grad():
        torch.testing.assert_close(again(v).logits, stacked(v).logits, atol=1e-6, rtol=0)
        # the tuner sits on SCT's learned rows, not on the zero-shot ones
        assert float((stacked.base_features() - context.text_features).abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------------- ID-like
def test_idlike_task_is_ce_over_all_prompts_plus_outlier_and_diversity_terms(context):
    a = perturb(build_adapter("idlike", context, ctx_init="a photo of a", ood_n_ctx=2))
    b = batch(context.dim)
    got = task_of(a, {"cls": 1.0, "ood": 0.3})(b)
    t = a.tuned_text_features()
    assert t.shape[0] == N + M
    z_id, z_out = S * unit(b["id_features"]) @ t.T, S * unit(b["neg_features"]) @ t.T
    l_in = F.cross_entropy(z_id, b["id_labels"])
    l_out = torch.log(z_out.softmax(1)[:, :N].sum(1)).mean()
    o = unit(t[N:])
    l_div = torch.stack([(o[j] @ o[k]).clamp(min=0) for j in range(M) for k in range(j + 1, M)]).mean()
    torch.testing.assert_close(got["loss"], l_in + 0.3 * l_out + 0.2 * l_div, atol=1e-5, rtol=1e-5)


def test_idlike_moves_to_new_names_but_not_to_another_number_of_ood_columns(context, tiny):
    a = perturb(build_adapter("idlike", context))
    other = adapters.AdapterContext.from_backbone(tiny, ["bird", "boat"], ["sand", "leaf", "wind"])
    moved = a.for_labels(other)
    torch.testing.assert_close(moved.ood_words, a.ood_words)
    fewer = adapters.AdapterContext.from_backbone(tiny, ID_NAMES, ["sand"])
    with pytest.raises(ClipoodError, match="negatives.num=3") as e:
        a.for_labels(fewer)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------------ LSN
def test_lsn_task_is_the_released_losses(context):
    a = perturb(build_adapter("lsn", context))
    b = batch(context.dim)
    got = task_of(a, {"cls": 1.0})(b)
    v, y = unit(b["id_features"]), b["id_labels"]
    pos = v @ a.id_text_features().T
    neg = a.negative_text_features()                                               # N×K×D
    l_pos = F.cross_entropy(F.softmax(pos * 100, dim=1), y)                        # the release's double softmax
    l_neg = sum(F.cross_entropy(F.softmax((1 - v @ neg[:, k].T) * 20, dim=1), y) for k in range(3))
    l_m = sum(torch.stack([(F.cosine_similarity(neg[:, k], neg[:, l].detach(), dim=-1)) for l in range(3) if l != k])
              .mean(0).mean() for k in range(3))
    torch.testing.assert_close(got["loss"], l_pos + l_neg + l_m, atol=1e-5, rtol=1e-5)


def test_lsn_own_score_is_the_released_test_score(context):
    a = perturb(build_adapter("lsn", context)).eval()
    v = unit(torch.randn(5, context.dim, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        out = a(v)
        yes = (v @ a.id_text_features().T).softmax(1).amax(1)
        no = torch.stack([((1 - v @ a.negative_text_features()[:, k].T) / 5).softmax(1).amax(1) for k in range(3)])
    torch.testing.assert_close(out.extras["ood_score"], yes + no.mean(0), atol=1e-6, rtol=0)


def test_lsn_refuses_new_labels_in_one_line_and_keeps_its_own(context, tiny):
    a = perturb(build_adapter("lsn", context))
    other = adapters.AdapterContext.from_backbone(tiny, ["bird", "boat", "tree", "dog"], NEG_NAMES)
    with pytest.raises(ClipoodError, match="class-specific negative prompts") as e:
        a.for_labels(other)
    assert "\n" not in str(e.value)
    same_ids = adapters.AdapterContext.from_backbone(tiny, ID_NAMES, ["sand", "leaf"])
    torch.testing.assert_close(a.for_labels(same_ids).neg_ctx, a.neg_ctx)


# ------------------------------------------------------------------------------------------------ NegPrompt
def test_negprompt_task_is_the_released_stage_two_loss(context):
    a = perturb(build_adapter("negprompt", context), scale=0.05)
    b = batch(context.dim)
    got = task_of(a, {"cls": 1e-8})(b)
    v, y = unit(b["id_features"]), b["id_labels"]
    c = unit(context.text_features[:N])
    u = a.negative_text_features()                                                 # N×2×D
    cols = torch.cat([torch.stack([c[i], u[i, 0], u[i, 1]]) for i in range(N)])   # class-major, as models.py
    x = S * v @ cols.T
    target = torch.zeros_like(x)
    for r, yy in enumerate(y):
        target[r, 3 * yy:3 * yy + 3] = 1
    msm = torch.nn.MultiLabelSoftMarginLoss()(x, target)
    l_np = -(1 - (c[:, None] * u).sum(-1)).mean()
    mean = u.mean(1, keepdim=True)
    l_nn = -(1 - (u * mean).sum(-1) / (u.norm(dim=-1) * mean.norm(dim=-1))).mean()
    ce = F.cross_entropy(S * v @ c.T, y)
    torch.testing.assert_close(got["loss"], 1e-8 * ce + msm + 0.1 * l_np + 0.05 * l_nn, atol=1e-5, rtol=1e-5)


def test_negprompt_stacked_on_coop_starts_at_its_context_and_scores_with_its_positives(context):
    coop = perturb(build_adapter("coop", context)).eval()
    s = stack(coop, "negprompt")
    assert float((s.tuner.neg_ctx - coop.ctx[None]).detach().abs().max()) <= 1.1e-5  # U(±1e-5), float32 rounding
    v = unit(torch.randn(4, context.dim, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        out = s(v)
        p, q = coop.id_text_features(), s.tuner.negative_text_features()
        probs = torch.cat([v @ p.T, (v @ q.reshape(-1, q.shape[-1]).T)], dim=1).softmax(1)   # T = 1 on cosines
    torch.testing.assert_close(out.extras["ood_score"], probs[:, :N].amax(1), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------- eval.score=adapter
def test_adapter_score_passes_through_evaluation_and_is_refused_for_adapters_without_one(context):
    from clipood.config.checks import check_run_settings
    from clipood.evaluation.protocol import score_cosines
    from clipood.evaluation.scoring import own_scores

    check_run_settings({"eval": {"score": "adapter"}})
    with pytest.raises(ClipoodError, match="score"):
        check_run_settings({"eval": {"score": "adaptor"}})
    cos, own = torch.rand(3, N + M), torch.tensor([0.3, -1.0, 2.0])
    s, pred = score_cosines((cos, own), N, "adapter")
    assert torch.equal(s, own.double()) and torch.equal(pred, cos[:, :N].argmax(1))
    coop = build_adapter("coop", context)
    with pytest.raises(ClipoodError, match="eval.score=adapter needs an adapter with its own test score") as e:
        own_scores(coop, coop(torch.randn(2, context.dim)))
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------------- presets
def test_imagenet_presets_hold_the_released_values():
    """Values written out from the releases (SCT's train.sh / CoOp's config, ID-like's script, LSN's
    main_feature_100_upload.py, NegPrompt's train_test_ood.py), not read back from the code."""
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import TrainRunSettings
    from helpers import ROOT

    def cfg(name):
        return compose_settings(TrainRunSettings, [f"preset={name}"], configs_dir=ROOT / "recipes" / "configs",
                                recipe="krnft")

    def train(c, *keys):
        return tuple(c["train"][k] for k in keys)

    sct = cfg("sct_imagenet")
    o = sct["adapter"]["options"]
    assert (sct["adapter"]["name"], o["n_ctx"], o["ctx_init"], o["top_k"], o["entropy_weight"],
            o["detach_confidence"], sct["eval"]["score"]) == ("sct", 16, "", 200, 0.25, False, "glmcm")
    assert train(sct, "optimizer", "lr", "epochs", "batch_size", "warmup_lr") == ("sgd", 0.002, 25, 32, 1e-5)
    idl = cfg("idlike_imagenet")
    o = idl["adapter"]["options"]
    assert (idl["negatives"]["num"], o["n_ctx"], o["ood_n_ctx"], o["div_weight"], idl["losses"]["ood"],
            idl["losses"]["cls"], o["cls_columns"]) == (100, 16, 16, 0.2, 0.3, 1.0, "all")
    assert (idl["crops"]["num_crops"], idl["crops"]["num_selected"], idl["shots"]) == (256, 32, 4)
    assert train(idl, "optimizer", "lr", "epochs", "batch_size") == ("adamw", 0.005, 3, 1)
    lsn = cfg("lsn_imagenet")
    o = lsn["adapter"]["options"]
    assert (o["n_ctx"], o["n_neg_prompts"], o["neg_temperature"], o["orth_weight"], o["score_neg_temperature"],
            o["on_probs"], lsn["eval"]["score"]) == (16, 3, 5.0, 1.0, 5.0, True, "adapter")
    assert train(lsn, "optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs") == \
        ("sgd", 0.001, 0.9, 0.0005, 8, 50)
    neg = cfg("negprompt_imagenet")
    o = neg["adapter"]["options"]
    assert (o["n_neg"], o["msm_weight"], o["np_weight"], o["nn_weight"], o["full_stop"], neg["losses"]["cls"],
            neg["eval"]["score"]) == (2, 1.0, 0.1, 0.05, False, 1e-8, "adapter")
    assert train(neg, "optimizer", "lr", "momentum", "batch_size", "cosine_period", "epochs") == \
        ("sgd", 0.1, 0.0, 64, 50, 15)
