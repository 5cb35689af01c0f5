"""NegPrompt's stage-2 loss terms on NegPT / ConNegPT, against hand computations and torch's own
MultiLabelSoftMarginLoss (an independent implementation of L_msm)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import adapters
from adapters.negpt import NegPromptTask, multilabel_soft_margin, prompt_distance_loss, prompt_spread_loss
from clipood.errors import ClipoodError
from clipood.training.task import TrainingTask
from helpers import perturb as _perturb, unit

ID_NAMES = ["cat", "small red car", "tree", "dog"]
NEG_NAMES = ["stone", "river", "cloud"]
NEGPROMPT = {"msm_weight": 1.0, "np_weight": 0.1, "nn_weight": 0.05}


@pytest.fixture(scope="module")
def context():
    from clipood.clip.backbone import load_clip

    torch.manual_seed(1234)
    return adapters.AdapterContext.from_backbone(load_clip("clipood-tiny"), ID_NAMES, NEG_NAMES)


def perturb(module, seed=7, scale=0.3):  # larger than the prompt-method tests' default
    return _perturb(module, seed, scale)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# ------------------------------------------------------------------------------------------- L_msm
def test_msm_matches_a_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.0], [30.0, 25.0, -40.0]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 1]])
    rows = [[-_log_sigmoid(2.0), -_log_sigmoid(1.0), -_log_sigmoid(0.0)],          # y = 1: −log σ(x); y = 0: −log σ(−x)
            [-_log_sigmoid(-30.0), -_log_sigmoid(25.0), -_log_sigmoid(-40.0)]]
    hand = sum(sum(r) / 3 for r in rows) / 2
    assert multilabel_soft_margin(logits, targets).item() == pytest.approx(hand, rel=1e-6)
    assert hand == pytest.approx(((math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(2)) / 3
                                  + (30 + 1e-13 + 40) / 3) / 2, rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_msm_equals_torch_multilabel_soft_margin_loss(scale):
    logits = scale * torch.randn(6, 9, generator=torch.Generator().manual_seed(3))
    targets = (torch.rand(6, 9, generator=torch.Generator().manual_seed(4)) > 0.6).long()
    ref = torch.nn.MultiLabelSoftMarginLoss(reduction="mean")(logits, targets)
    torch.testing.assert_close(multilabel_soft_margin(logits, targets), ref, atol=1e-5, rtol=1e-6)


def test_msm_refuses_mismatched_targets():
    with pytest.raises(ClipoodError, match="shape"):
        multilabel_soft_margin(torch.zeros(2, 3), torch.zeros(2, 4))


# --------------------------------------------------------------------------------------- L_np, L_nn
def test_prompt_distance_matches_a_hand_computation():
    pos = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    neg = torch.tensor([[0.0, 3.0], [1.0, 1.0]])     # cos 0 and 1/√2 (norms do not matter)
    assert prompt_distance_loss(pos, neg).item() == pytest.approx(-((1 - 0) + (1 - 2 ** -0.5)) / 2, rel=1e-6)
    assert prompt_distance_loss(pos, pos).item() == pytest.approx(0.0, abs=1e-7)
    per_image = torch.stack([neg, pos])                 # B×M×D: image 1's negatives sit on their positives
    assert prompt_distance_loss(pos, per_image).item() == pytest.approx(-((1 - 0) + (1 - 2 ** -0.5)) / 4, rel=1e-6)


def test_prompt_spread_matches_a_hand_computation():
    neg = torch.tensor([[2.0, 0.0], [0.0, 1.0]])      # unit rows e1, e2: centre (1, 1)/√2, both at cos 1/√2
    assert prompt_spread_loss(neg).item() == pytest.approx(-(1 - 2 ** -0.5), rel=1e-6)
    three = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    n = F.normalize(three, dim=-1)
    mean_norm = n.mean(0).norm().item()                 # for unit rows L_nn = −(1 − ‖mean‖)
    centre = [(1 + 2 ** -0.5) / 3, (1 + 2 ** -0.5) / 3, 0.0]
    assert mean_norm == pytest.approx(math.sqrt(2) * (1 + 2 ** -0.5) / 3, rel=1e-6)
    cz = [c / math.sqrt(sum(x * x for x in centre)) for c in centre]
    hand = -sum(1 - sum(a * b for a, b in zip(row, cz)) for row in n.tolist()) / 3
    assert prompt_spread_loss(three).item() == pytest.approx(hand, rel=1e-6)
    assert hand == pytest.approx(-(1 - mean_norm), rel=1e-6)
    assert prompt_spread_loss(torch.ones(4, 3)).item() == pytest.approx(0.0, abs=1e-7)  # identical rows
    per_image = torch.stack([neg, torch.ones(2, 2)])                                     # B×M×D: per image
    assert prompt_spread_loss(per_image).item() == pytest.approx(-(1 - 2 ** -0.5) / 2, rel=1e-6)


# ------------------------------------------------------------------------------------ in the task
def _batch(d, seed=0):
    return {"id_features": unit(4, d, seed=seed), "id_labels": torch.tensor([0, 1, 2, 3]),
            "neg_features": unit(4, d, seed=seed + 100)}


@pytest.mark.parametrize("name", ["negpt", "connegpt"])
def test_task_adds_the_three_terms_at_their_weights(context, name):
    a = perturb(adapters.build_adapter(name, context, **NEGPROMPT))
    assert a.task_cls is NegPromptTask
    task = a.task_cls(a, {"cls": 1e-8, "ood": 0.0}, logit_scale=100.0)
    batch = _batch(a.dim)
    out = task(batch)
    assert set(out) == {"loss", "cls_loss", "msm_loss", "np_loss", "nn_loss"}
    # independent recomputation from the adapter's features
    v = batch["id_features"]
    c = context.text_features
    neg = (a.negative_text_features() if name == "negpt" else a.negative_text_features(v)).detach()
    id_logits = v @ c[:4].t()
    neg_logits = v @ neg.t() if neg.ndim == 2 else torch.einsum("bd,bmd->bm", v, neg)
    logits = 100.0 * torch.cat([id_logits, neg_logits], dim=1)
    msm = F.multilabel_soft_margin_loss(logits, F.one_hot(batch["id_labels"], 7).float())
    np_ = -(1 - F.cosine_similarity(c[4:].expand_as(neg), neg, dim=-1)).mean()
    centre = F.normalize(neg.mean(dim=-2, keepdim=True), dim=-1)
    nn_ = -(1 - F.cosine_similarity(neg, centre.expand_as(neg), dim=-1)).mean()
    # L_cls: NegPT over the ID prompts (NegPrompt's positive CE), ConNegPT over all K (KR-NFT's L_cls)
    cls = F.cross_entropy(logits[:, :4] if name == "negpt" else logits, batch["id_labels"])
    for key, ref in (("msm_loss", msm), ("np_loss", np_), ("nn_loss", nn_), ("cls_loss", cls)):
        torch.testing.assert_close(out[key], ref, atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(out["loss"], 1e-8 * cls + msm + 0.1 * np_ + 0.05 * nn_, atol=1e-5, rtol=1e-5)
    assert np_ < 0 and nn_ < 0  # perturbed: the negatives moved off their positives and apart


def test_task_with_zero_weights_is_the_configured_terms(context):
    a = adapters.build_adapter("negpt", context)  # defaults: the NegPrompt terms off
    out = a.task_cls(a, {"cls": 1.0, "ood": 0.3}, logit_scale=100.0)(_batch(a.dim))
    ref = TrainingTask(a, {"cls": 1.0, "ood": 0.3}, logit_scale=100.0)(_batch(a.dim))
    assert set(out) == set(ref) == {"loss", "cls_loss", "ood_loss"}
    torch.testing.assert_close(out["loss"], ref["loss"])


def test_regularisers_move_the_negative_context(context):
    a = adapters.build_adapter("negpt", context, msm_weight=0.0, np_weight=0.1, nn_weight=0.05)
    task = a.task_cls(a, {"cls": 1e-8}, logit_scale=100.0)
    task(_batch(a.dim))["loss"].backward()
    assert a.neg_ctx.grad is not None and a.neg_ctx.grad.abs().max() > 0


def test_stacked_negpt_on_coop_trains_with_the_terms(context):
    from clipood_recipes.methods import training_task

    coop = perturb(adapters.build_adapter("coop", context), scale=0.05).eval()
    s = adapters.stack(coop, "negpt", **NEGPROMPT)
    cfg = {"losses": {"cls": 1e-8, "ood": 0.0, "kr": 0.0}, "eval": {"logit_scale": 100.0}, "cls_groups": 1,
           "ood_groups": 1, "seed": 0}
    task = training_task(cfg, s)
    assert isinstance(task, NegPromptTask)
    out = task(_batch(s.dim))
    neg = s.tuner.negative_text_features().detach()
    ref = -(1 - F.cosine_similarity(coop.tuned_text_features()[4:].detach(), neg, dim=-1)).mean()
    torch.testing.assert_close(out["np_loss"], ref, atol=1e-6, rtol=1e-6)
    # a stack whose tuner brings no stack-aware task trains with the configured terms only
    assert type(training_task(cfg, adapters.stack(coop, "nft"))) is TrainingTask


@pytest.mark.parametrize("bad", [-0.1, "1", True, float("nan")])
def test_bad_weights_fail_with_the_option_name(context, bad):
    with pytest.raises(ClipoodError, match="np_weight"):
        adapters.build_adapter("negpt", context, np_weight=bad)


def test_negpt_presets_use_negprompts_loss():
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import TrainRunSettings
    from helpers import ROOT

    for preset in ("negpt_mini", "negpt_imagenet"):
        cfg = compose_settings(TrainRunSettings, [f"preset={preset}"], configs_dir=ROOT / "recipes" / "configs",
                               recipe="krnft")
        opts = cfg["adapter"]["options"]
        assert {k: opts[k] for k in NEGPROMPT} == NEGPROMPT, preset
        assert cfg["losses"]["cls"] == 1e-8 and cfg["losses"]["ood"] == 0 and cfg["losses"]["kr"] == 0, preset
