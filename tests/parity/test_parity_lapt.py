"""LAPT against the released ``YBZh/OpenOOD-VLM`` (``openood/trainers/oodmixup_trainer.py``,
``openood/networks/clip_coop_negprompt.py``, ``scripts/ood/lapt/train.sh`` / ``test.sh``), the tiny CLIP.

Result-changing item 3: the released training loss (``OodMixupTrainer_idood.train_epoch`` with
``mix_strategy=wccm``, ``loss_components=multice``) is the only term — the cross-entropy over all K prompts of
L2(λ x + (1 − λ) T[y, r]), each image (ID and negative-label) mixed with a frozen zero-shot text feature of its
own label (a random one of the templates), one λ ~ Beta(1, 1) per batch, target its own label. Cross-distribution
mixing (``mixup_data(..., 'cross_dis')`` in ``wccm_cd``) pairs ID and negative-label images both ways. Training
negatives: 1,000 of the ranking (``OOD_NUM``), chosen per part of speech as ``get_selected_ood_text_list``.
Also here: the LAPT checks of issue 25 (each fails under one planted bug, see the test names).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adapters
from _reference import TOL, clip, cross_entropy64, prompt_features, raw_text, report, unit  # noqa: F401 (clip: fixture)

ID = ["cat", "small red car", "tree", "dog"]
NEG = ["stone", "river", "cloud", "sand"]


@pytest.fixture(scope="module")
def context(clip):
    return adapters.AdapterContext.from_backbone(clip, ID, NEG)


NEG_IMAGES = (unit(6, 64, seed=5), torch.tensor([4, 5, 5, 6, 7, 7]))


def _lapt(context, **kw):
    torch.manual_seed(0)
    a = adapters.build_adapter("lapt", context, **kw)
    with torch.no_grad():
        a.ctx.add_(0.3 * torch.randn_like(a.ctx))
        a.ood_ctx.add_(0.3 * torch.randn_like(a.ood_ctx))
    return a


def _task(context, **kw):
    """A perturbed LAPT in its training task, with the fixed negative-label images."""
    a = _lapt(context, **kw)
    task = a.task_cls(a, {"cls": 1e-12 if kw.get("mix_rule") == "clipood" else 1.0}, logit_scale=100.0)
    task.set_negative_images(*NEG_IMAGES)
    return a, task


def _tuned(clip, a, ctx=None, ood_ctx=None):
    """``CustomCLIP.forward``: ID prompts with ``ctx``, negative prompts with ``ood_ctx``, unit rows."""
    ctx = a.ctx.detach() if ctx is None else ctx
    ood_ctx = a.ood_ctx.detach() if ood_ctx is None else ood_ctx
    return torch.cat([prompt_features(clip.model, clip.tokenizer, ID, ctx, "a photo of a"),
                      prompt_features(clip.model, clip.tokenizer, NEG, ood_ctx, "a photo of a")])


def _frozen_templates(clip):
    """``get_text_features_neg`` with ``text_prompt=tip`` (text_center off): K×7×D unit rows of encode_text."""
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES as T

    names = ID + NEG
    return torch.stack([F.normalize(raw_text(clip.model, clip.tokenizer, [t(n) for n in names]), dim=-1)
                        for t in T], dim=1)


def _batch(d, n=4):
    return {"id_features": unit(n, d, seed=1), "id_labels": torch.tensor([0, 1, 2, 3, 1, 2][:n]),
            "neg_features": unit(n, d, seed=2)}


def _replay(seed, n_img, n, b, r):
    """The task's random draws in its documented order: negative-label images, λ, templates."""
    torch.manual_seed(seed)
    pick = torch.randint(0, n_img, (n,))
    lam = float(torch.rand(()))
    return {"pick": pick, "lam": lam, "template": torch.randint(0, r, (b,))}


def test_lapt_loss_is_the_released_cross_modal_mixing(clip, context):
    """``oodmixup_trainer.py`` ``mixup_data(..., 'wccm')`` (L258-268) and ``OodMixupTrainer_idood.train_epoch``
    (L744-753, L861-863): ``soft_cross_entropy(logit_scale · mixed @ text_features.t(), soft_y)``, the only loss."""
    a, task = _task(context)
    feats, labels = NEG_IMAGES
    batch = _batch(context.dim)
    torch.manual_seed(11)
    out = task(batch)
    loss = out["loss"]
    g_ctx, g_ood = torch.autograd.grad(loss, [a.ctx, a.ood_ctx])

    d = _replay(11, 6, 4, 8, 7)
    x = torch.cat([batch["id_features"], F.normalize(feats, dim=-1)[d["pick"]]])
    y = torch.cat([batch["id_labels"], labels[d["pick"]]])
    T = _frozen_templates(clip)
    c, o = a.ctx.detach().clone().requires_grad_(True), a.ood_ctx.detach().clone().requires_grad_(True)
    t = _tuned(clip, a, c, o)
    mixed = F.normalize(d["lam"] * x + (1 - d["lam"]) * T[y, d["template"]], dim=-1)
    ref = cross_entropy64(100.0 * mixed @ t.t(), y)
    r_ctx, r_ood = torch.autograd.grad(ref, [c, o])
    err = report("lapt released wccm loss", max(abs(float(loss.detach()) - float(ref.detach())),
                                                float((g_ctx - r_ctx).abs().max()), float((g_ood - r_ood).abs().max())))
    assert set(out) == {"loss", "cls_loss"} and err <= TOL
    # clipood's former rule (clean CE + negative-image CE + random-label tuned mixing) is another number
    _, old = _task(context, mix_rule="clipood", cross_dist_weight=0.3)
    torch.manual_seed(11)
    assert abs(float(old(batch)["loss"].detach()) - float(ref.detach())) > 1e-1


def test_lapt_negative_label_images_are_in_the_mixed_batch(clip, context):
    """Issue 25: dropping the negative-label images from the batch changes the released loss (``train_epoch``
    mixes every image of the batch: ID images and the images of the negative labels)."""
    a, task = _task(context)
    feats, labels = NEG_IMAGES
    batch = _batch(context.dim)
    torch.manual_seed(3)
    loss = float(task(batch)["loss"].detach())
    d = _replay(3, 6, 4, 8, 7)
    T, t = _frozen_templates(clip), _tuned(clip, a)
    x_id, y_id = batch["id_features"], batch["id_labels"]
    only_id = cross_entropy64(100.0 * F.normalize(d["lam"] * x_id + (1 - d["lam"]) * T[y_id, d["template"][:4]],
                                                  dim=-1) @ t.t(), y_id)
    assert abs(loss - float(only_id)) > 1e-2
    assert torch.equal(task.neg_image_labels, labels) and int(task.neg_image_labels.min()) >= a.num_id


def test_lapt_cross_distribution_mixing_pairs_both_ways(clip, context):
    """``oodmixup_trainer.py`` ``create_mixed_indices`` (L180-203) and ``mixup_data(..., 'cross_dis')`` (L248-256):
    every ID image mixed with a random negative-label image and every negative-label image with a random ID
    image, target λ'·e_y + (1 − λ')·e_y' (β = 0). Issue 25: λ' and 1 − λ' swapped gives another number."""
    a, task = _task(context, cross_dist_weight=1.0)
    feats, labels = NEG_IMAGES
    batch = _batch(context.dim)
    torch.manual_seed(5)
    out = task(batch)
    torch.manual_seed(5)
    pick = torch.randint(0, 6, (4,))
    lam, template = float(torch.rand(())), torch.randint(0, 7, (8,))
    lam_cd = float(torch.rand(()))
    x = torch.cat([batch["id_features"], F.normalize(feats, dim=-1)[pick]])
    y = torch.cat([batch["id_labels"], labels[pick]])
    ids, negs = torch.arange(4), torch.arange(4, 8)
    partner = torch.arange(8)
    partner[ids] = negs[torch.randint(4, (4,))]
    partner[negs] = ids[torch.randint(4, (4,))]
    t = _tuned(clip, a)
    k = t.shape[0]

    def cd(lw):
        mixed = F.normalize(lw * x + (1 - lw) * x[partner], dim=-1)
        tgt = lw * F.one_hot(y, k).double() + (1 - lw) * F.one_hot(y[partner], k).double()
        return float(-(tgt * torch.log_softmax((100.0 * mixed @ t.t()).double(), 1)).sum(1).mean())

    err = report("lapt cross-distribution mixing", abs(float(out["cross_dist_loss"]) - cd(lam_cd)))
    assert err <= TOL
    assert bool((y[partner[:4]] >= 4).all()) and bool((y[partner[4:]] < 4).all())
    assert abs(cd(1 - lam_cd) - cd(lam_cd)) > 1e-3  # a swapped target is caught


def test_lapt_clipood_rule_mixes_with_detached_tuned_features(clip, context):
    """Issue 25 (the kept ``mix_rule="clipood"``): loss = 1e-12·CE(clean) + CE(negative-label images) +
    soft-CE(s·cos(L2(λx + (1−λ)·sg(t_k)), t), λe_y + (1−λ)e_k) with the mixed-in tuned feature t_k detached and
    λ on the image's own label; checked on the value and on the gradient of the context."""
    a, task = _task(context, mix_rule="clipood")
    feats, labels = NEG_IMAGES
    batch = _batch(context.dim)
    torch.manual_seed(7)
    loss = task(batch)["loss"]
    (g,) = torch.autograd.grad(loss, a.ctx)
    # replay: negative images, then λ per sample and the random labels of the mixing
    torch.manual_seed(7)
    pick = torch.randint(0, 6, (4,))
    x_neg, y_neg = F.normalize(feats, dim=-1)[pick], labels[pick]
    x, y = torch.cat([batch["id_features"], x_neg]), torch.cat([batch["id_labels"], y_neg])
    lam, other = torch.rand(8, 1), torch.randint(0, 8, (8,))
    c = a.ctx.detach().clone().requires_grad_(True)
    t = _tuned(clip, a, ctx=c)

    def total(tk, lw):
        mixed = F.normalize(lw * x + (1 - lw) * tk[other], dim=-1)
        tgt = lw * F.one_hot(y, 8).double() + (1 - lw) * F.one_hot(other, 8).double()
        mix = -(tgt * torch.log_softmax((100.0 * mixed @ t.t()).double(), 1)).sum(1).mean()
        return (1e-12 * cross_entropy64(100.0 * batch["id_features"] @ t.t(), batch["id_labels"])
                + cross_entropy64(100.0 * x_neg @ t.t(), y_neg) + mix)

    ref = total(t.detach(), lam)
    (g_ref,) = torch.autograd.grad(ref, c, retain_graph=True)
    err = report("lapt clipood-rule mixing", max(abs(float(loss.detach()) - float(ref.detach())),
                                                 float((g - g_ref).abs().max())))
    assert err <= TOL
    (g_live,) = torch.autograd.grad(total(t, lam), c, retain_graph=True)
    assert float((g_live - g_ref).abs().max()) > 1e-4  # a non-detached mix is caught
    assert abs(float(total(t.detach(), 1 - lam).detach()) - float(ref.detach())) > 1e-3  # a swapped target is caught


def test_lapt_trains_the_negative_context(clip, context):
    """Issue 25: ``ood_ctx`` is a trainable parameter (``PromptLearner.__init__``: ``self.ood_ctx =
    nn.Parameter``) and the released loss reaches it (its prompts are columns of the cross-entropy)."""
    a, task = _task(context)
    assert "ood_ctx" in a.trainable_state_dict() and a.ood_ctx.requires_grad
    params = [p for p in task.parameters() if p.requires_grad]
    assert any(p is a.ood_ctx for p in params)
    task(_batch(context.dim))["loss"].backward()
    assert float(a.ood_ctx.grad.abs().sum()) > 0


def test_lapt_training_negatives_follow_the_release_selection(clip, context, tmp_path):
    """``clip_fixed_ood_prompt_openclip.py`` ``get_selected_ood_text_list``: ``adj_num = int(total · A / (A + N))``
    adjectives and the rest nouns, each the first of its ranking; negative-label image labels are N + m
    (issue 25: an off-by-one label below N fails here)."""
    from types import SimpleNamespace

    from PIL import Image

    from adapters.lapt_data import training_negative_indices

    pos = ["adj"] * 3 + ["noun"] * 7
    assert training_negative_indices(10, 4, pos) == [0, 3, 4, 5]          # int(4·3/10) = 1 adjective
    assert training_negative_indices(10, 10, pos) == list(range(10))
    words = ["red", "blue", "soft", "stone", "river", "cloud", "sand", "wave", "leaf", "rock"]
    ctx = adapters.AdapterContext.from_backbone(clip, ID, words)
    a = adapters.build_adapter("lapt", ctx, train_negatives=4, neg_image_dir=str(tmp_path), mix_templates="base")
    for w, col in (("red", (200, 0, 0)), ("stone", (90, 90, 90)), ("sand", (200, 180, 120))):
        (tmp_path / w).mkdir()
        Image.new("RGB", (64, 64), col).save(tmp_path / w / "0.png")
    bench = SimpleNamespace(backbone=clip, world_dir=None)
    sf = SimpleNamespace(split=SimpleNamespace(classnames=ID),
                         label_set=SimpleNamespace(neg_names=tuple(words), neg_pos=tuple(pos)))
    task = a.task_cls(a, {"cls": 1.0}, logit_scale=100.0)
    task.prepare(sf, bench, SimpleNamespace(device=torch.device("cpu")), seed=0)
    assert task.adapter.context.neg_names == ["red", "stone", "river", "cloud"]
    # "sand" is not a training negative: only red (N + 0) and stone (N + 1) have images
    assert task.neg_image_labels.tolist() == [4, 5]
    assert task.adapter.num_labels == 8 and torch.equal(task.adapter.ctx, a.ctx)
