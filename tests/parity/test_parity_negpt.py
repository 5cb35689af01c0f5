"""NegPT against the released ``mala-lab/NegPrompt`` (``models/models.py``, ``osr_nega_prompt.py``,
``core/train_clip.py``, ``scripts/train_test_ood.py``), the tiny CLIP.

Result-changing item 5: the prompts are ``prompt_prefix + " " + name`` with no full stop (``PromptLearner``,
L272-273), and the ``negpt_imagenet`` optimiser is NegPrompt's: ``torch.optim.SGD(model.parameters(), lr=0.1)``
(no momentum, no weight decay), ``CosineAnnealingLR(optimizer, 50)`` stepped after every batch
(``train_nega_clip``), batch 64 (``train_test_ood.py``).
"""
from __future__ import annotations

import torch

import adapters
from _reference import TOL, clip, prompt_features, report  # noqa: F401 (clip: fixture)

ID = ["cat", "small red car", "tree"]
NEG = ["stone", "river", "cloud"]


def test_negpt_prompts_have_no_full_stop(clip):
    """``models/models.py`` ``PromptLearner.__init__`` (L272-273): ``negative_prompts = [prompt_prefix + " " + name]``
    with ``prompt_prefix`` = "a photo of a"; the context starts at that phrase's embeddings."""
    ctx = adapters.AdapterContext.from_backbone(clip, ID, NEG)
    torch.manual_seed(0)
    a = adapters.build_adapter("negpt", ctx)
    with torch.no_grad():
        a.neg_ctx.add_(0.3 * torch.randn_like(a.neg_ctx))
        got = a.negative_text_features()
        ref = prompt_features(clip.model, clip.tokenizer, NEG, a.neg_ctx.detach(), "a photo of a", end="")
        old = prompt_features(clip.model, clip.tokenizer, NEG, a.neg_ctx.detach(), "a photo of a", end=".")
    err = report("negpt prompt text", float((got - ref).abs().max()))
    assert err <= TOL and float((old - ref).abs().max()) > 1e-2


def test_negpt_imagenet_preset_uses_negprompts_optimiser():
    """``osr_nega_prompt.py`` L269-270 + ``core/train_clip.py`` ``train_nega_clip`` (``scheduler.step()`` per
    batch): the learning rate of 300 steps equals torch's ``CosineAnnealingLR(SGD(lr=0.1), T_max=50)``."""
    from clipood.training.loop import make_optimizer, make_scheduler
    from clipood_recipes.configure import compose_settings, train_config
    from clipood_recipes.settings import TrainRunSettings
    from helpers import ROOT

    cfg = compose_settings(TrainRunSettings, ["preset=negpt_imagenet"], configs_dir=ROOT / "recipes" / "configs",
                           recipe="krnft")
    tc = train_config(cfg)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = make_optimizer(tc, [p])
    sched = make_scheduler(tc, opt, total=300)
    q = torch.nn.Parameter(torch.zeros(2))
    ref_opt = torch.optim.SGD([q], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, 50)
    err = 0.0
    for _ in range(300):
        err = max(err, abs(opt.param_groups[0]["lr"] - ref_opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
        ref_opt.step()
        ref.step()
    g = opt.param_groups[0]
    report("negpt optimiser and schedule", err)
    assert err <= 1e-12
    assert isinstance(opt, torch.optim.SGD) and (g["momentum"], g["weight_decay"], g["nesterov"]) == (0.0, 0.0, False)
    assert tc.batch_size == 64 and cfg["adapter"]["options"]["full_stop"] is False
