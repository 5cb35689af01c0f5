"""TaskRes against the released ``geekyutao/TaskRes`` ``trainers/taskres.py`` (the tiny CLIP, weights shared).

Result-changing item 4: ``TaskResLearner.forward`` returns ``base_text_features + alpha * residuals`` where the
base is ``_get_base_text_features``: the mean over the templates of the **raw** ``text_encoder`` outputs, never
normalised; ``CustomCLIP.forward`` normalises only the sum.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import adapters
from _reference import TOL, clip, cross_entropy64, raw_text, report, unit  # noqa: F401 (clip: fixture)

ID = ["cat", "small red car", "tree", "dog"]
NEG = ["stone", "river"]
TEMPLATES = ["a photo of a {}.", "itap of a {}.", "a origami {}."]


def test_taskres_adds_the_residual_to_the_raw_template_mean(clip):
    """``trainers/taskres.py`` ``_get_base_text_features`` (L119-142), ``TaskResLearner.forward`` (L91-101) and
    ``CustomCLIP.forward`` (L199-212): logits = s · cos(v, L2(mean_t f(t(name)) + α·x)), α = 0.5; gradient on x."""
    ctx = adapters.AdapterContext.from_backbone(clip, ID, NEG, id_templates=TEMPLATES)
    a = adapters.build_adapter("taskres", ctx)
    with torch.no_grad():
        a.residual.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    v, y = unit(5, ctx.dim, seed=2), torch.tensor([0, 1, 2, 3, 0])
    out = a(v).logits
    loss = F.cross_entropy(100.0 * out[:, :4], y)
    (g,) = torch.autograd.grad(loss, a.residual)

    base = torch.stack([raw_text(clip.model, clip.tokenizer, [t.format(n) for t in TEMPLATES]).mean(0) for n in ID])
    x = a.residual.detach().clone().requires_grad_(True)
    tuned = F.normalize(base + 0.5 * x, dim=-1)
    ref_logits = v @ tuned.t()
    ref = cross_entropy64(100.0 * ref_logits, y)
    (g_ref,) = torch.autograd.grad(ref, x)
    err = report("taskres on the raw template mean", max(float((out[:, :4] - ref_logits).detach().abs().max()),
                                                         float((g - g_ref).abs().max())))
    assert err <= TOL
    assert float(base.norm(dim=-1).min()) > 1.5  # a real (not unit) scale, so the former rule is far off
    old = adapters.build_adapter("taskres", ctx, base="unit")
    with torch.no_grad():
        old.residual.copy_(a.residual)
    assert float((old(v).logits[:, :4] - ref_logits).detach().abs().max()) > 1e-2
