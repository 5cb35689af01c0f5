"""ConNegPT against CoCoOp's released ``KaiyangZhou/CoOp`` ``trainers/cocoop.py`` and its config
(``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml``), the rule the KR-NFT paper's ConNegPT* follows.

Minor items: the meta-net keeps PyTorch's default ``nn.Linear`` initialisation (``PromptLearner.__init__``,
L95-99: no zero init), and the ImageNet preset has Dassl's weight decay 5e-4 and one constant warm-up epoch at
1e-5 (``WARMUP_EPOCH: 1``, ``WARMUP_TYPE: constant``, ``WARMUP_CONS_LR: 1e-5``).
"""
from __future__ import annotations

import math

import torch

import adapters
from _reference import clip, report, unit  # noqa: F401 (clip: fixture)

ID = ["cat", "small red car", "tree"]
NEG = ["stone", "river", "cloud"]


def test_connegpt_meta_net_has_the_default_linear_init(clip):
    """``trainers/cocoop.py`` L95-99: ``nn.Sequential(Linear(vis_dim, vis_dim // 16), ReLU, Linear(.., ctx_dim))``
    with ``nn.Linear``'s own init, drawn after the context (initialised from "a photo of a", no random draw):
    from the same seed the two layers are the reference's ``nn.Linear(D, D/16)``, ``nn.Linear(D/16, W)``."""
    ctx = adapters.AdapterContext.from_backbone(clip, ID, NEG)
    torch.manual_seed(0)
    a = adapters.build_adapter("connegpt", ctx)
    torch.manual_seed(0)
    d, w = ctx.dim, clip.text_path.width
    ref = torch.nn.Sequential(torch.nn.Linear(d, d // 16), torch.nn.ReLU(), torch.nn.Linear(d // 16, w))
    err = report("connegpt meta-net init", max(float((p - q).detach().abs().max())
                                               for p, q in zip(a.meta.parameters(), ref.parameters())))
    assert err <= 1e-12
    for lin in (a.meta[0], a.meta[2]):  # PyTorch's rule: U(−1/√fan_in, 1/√fan_in), not zero
        assert 0 < float(lin.weight.detach().abs().max()) <= 1 / math.sqrt(lin.in_features)
    zero = adapters.build_adapter("connegpt", ctx, meta_init="zero")  # the former rule, a named option
    assert float(zero.meta[2].weight.detach().abs().max()) == 0.0
    v = unit(2, ctx.dim, seed=1)
    with torch.no_grad():
        assert float((a(v).logits - zero(v).logits).abs().max()) > 1e-4


def test_connegpt_imagenet_preset_warms_up_like_cocoop():
    """Dassl ``ConstantWarmupScheduler`` with CoCoOp's config: lr 1e-5 through the first epoch (batch 1: 4,000
    steps on 4-shot ImageNet), then 0.002 with cosine decay; SGD momentum 0.9, weight decay 5e-4."""
    from clipood.training.loop import lr_factor
    from clipood_recipes.configure import compose_settings, train_config
    from clipood_recipes.settings import TrainRunSettings
    from helpers import ROOT

    cfg = compose_settings(TrainRunSettings, ["preset=connegpt_imagenet"], configs_dir=ROOT / "recipes" / "configs",
                           recipe="krnft")
    tc = train_config(cfg)
    total = 4000 * 10
    err = max(max(abs(tc.lr * lr_factor(tc, s, total) - 1e-5) for s in range(0, 4000, 97)),
              abs(tc.lr * lr_factor(tc, 4000, total) - 0.002), abs(tc.lr * lr_factor(tc, 3999, total) - 1e-5))
    report("connegpt constant warm-up", err)
    assert err <= 1e-12
    assert (tc.optimizer, tc.lr, tc.momentum, tc.weight_decay, tc.batch_size) == ("sgd", 0.002, 0.9, 5e-4, 1)
    assert cfg["adapter"]["options"]["meta_init"] == "default"
