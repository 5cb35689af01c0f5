"""LoCoOp against the released ``AtsuMiyai/LoCoOp`` ``trainers/locoop.py`` (weights shared, the tiny CLIP).

Result-changing item 1: CoOp's cross-entropy over the N ID columns (``LoCoOp.forward_backward``: ``loss_id =
F.cross_entropy(output, label)``) plus λ · the OOD-patch term of ``entropy_select_topk`` (its ε = 1e-5 inside the
log). Minor item: the preset holds the learning rate at 1e-5 for the first epoch (Dassl's constant warm-up).
"""
from __future__ import annotations

import pytest
import torch

import adapters
from _reference import TOL, clip, cross_entropy64, prompt_features, report, unit  # noqa: F401 (clip: fixture)
from clipood.training.task import TrainingTask

ID = ["cat", "small red car", "tree", "dog", "bird"]
NEG = ["stone", "river", "cloud"]


def _entropy_select_topk(p_logits: torch.Tensor, top_k: int, labels: torch.Tensor, t: int) -> torch.Tensor:
    """``trainers/locoop.py`` ``entropy_select_topk`` (L24-36) in float64: p = softmax over the ID classes of
    each (image, patch); patches whose top-K excludes the image's label; −mean Σ p log(p + 1e-5) over them."""
    labels_rep = labels.repeat_interleave(t)
    p = torch.softmax(p_logits.double(), dim=-1)
    top = torch.topk(p, k=top_k, dim=1).indices
    keep = ~(top == labels_rep[:, None]).any(dim=1)
    sel = p[keep]
    if sel.shape[0] == 0:
        return p.new_zeros(())
    return -(sel * torch.log(sel + 1e-5)).sum(1).mean()


def test_locoop_total_loss_follows_forward_backward(clip):
    """``trainers/locoop.py`` ``LoCoOp.forward_backward`` (L296, L314-317): loss = CE(output, label) −
    λ·entropy_select_topk(output_local, top_k, label), λ = 0.25, on the ID columns; gradient on the context."""
    ctx = adapters.AdapterContext.from_backbone(clip, ID, NEG)
    torch.manual_seed(0)
    a = adapters.build_adapter("locoop", ctx, top_k=2)
    with torch.no_grad():
        a.ctx.add_(0.3 * torch.randn_like(a.ctx))
    n, t, d = 4, 6, ctx.dim
    batch = {"id_features": unit(n, d, seed=1), "id_labels": torch.tensor([0, 2, 4, 1]),
             "id_local": unit(n, t, d, seed=2), "neg_features": unit(n, d, seed=3)}
    loss = a.task_cls(a, {"cls": 1.0}, logit_scale=100.0)(batch)["loss"]
    (g,) = torch.autograd.grad(loss, a.ctx)

    c = a.ctx.detach().clone().requires_grad_(True)
    tf = prompt_features(clip.model, clip.tokenizer, ID, c, "a photo of a")
    out = 100.0 * batch["id_features"] @ tf.t()
    out_local = (100.0 * batch["id_local"] @ tf.t()).reshape(n * t, -1)
    ref = cross_entropy64(out, batch["id_labels"]) - 0.25 * _entropy_select_topk(out_local, 2, batch["id_labels"], t)
    (g_ref,) = torch.autograd.grad(ref, c)
    err = report("locoop total loss", max(abs(float(loss.detach()) - float(ref.detach())),
                                          float((g - g_ref).abs().max())))
    assert err <= TOL
    # the former rule (CE over ID + frozen negatives, exact entropy) differs on these inputs
    old = a.task_cls(a, {"cls": 1.0}, logit_scale=100.0, options={"cls_columns": "all"})(batch)["loss"]
    assert abs(float(old.detach()) - float(ref.detach())) > 1e-2


def test_locoop_preset_holds_the_warmup_rate_for_one_epoch():
    """Dassl ``ConstantWarmupScheduler`` (``configs/trainers/LoCoOp/vit_b16_ep50.yaml``: WARMUP_EPOCH 1,
    WARMUP_TYPE constant, WARMUP_CONS_LR 1e-5, LR 0.002): the first epoch (4,000 images / 32 = 125 steps) runs at
    1e-5, the next step at the full 0.002."""
    from clipood.training.loop import lr_factor
    from clipood_recipes.configure import compose_settings, train_config
    from clipood_recipes.settings import TrainRunSettings
    from helpers import ROOT

    cfg = compose_settings(TrainRunSettings, ["preset=locoop_imagenet"], configs_dir=ROOT / "recipes" / "configs",
                           recipe="krnft")
    tc = train_config(cfg)
    total = 125 * 50
    lrs = [tc.lr * lr_factor(tc, s, total) for s in range(total)]
    err = report("locoop constant warm-up", max(max(abs(x - 1e-5) for x in lrs[:125]), abs(lrs[125] - 0.002)))
    assert err <= 1e-12 and lrs[-1] < 1e-5 and (tc.weight_decay, tc.momentum) == (5e-4, 0.9)
    assert cfg["adapter"]["options"]["cls_columns"] == "id" and cfg["adapter"]["options"]["entropy_eps"] == 1e-5
