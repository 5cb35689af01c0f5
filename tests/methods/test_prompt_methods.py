"""Prompt methods (LoCoOp, NegPT, ConNegPT, LAPT) and stacking, against hand computations.

The registry-wide contract tests (tests/methods/test_adapters.py) cover shapes, gradients, checkpoints and bad inputs
of every adapter; here: LoCoOp's OOD-patch rule and entropy term on hand-worked numbers, ConNegPT's batching,
LAPT's mixing targets, and stacking KR-NFT on a trained LoCoOp (reload in a fresh process, unseen classes).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import adapters
from adapters.lapt import LAPTTask, soft_cross_entropy
from adapters.locoop import LoCoOpTask, locoop_entropy_loss, ood_patch_mask, patch_entropy, scaled_top_k
from clipood.errors import ClipoodError
from helpers import ROOT, perturb, unit

ID_NAMES = ["cat", "small red car", "tree", "dog"]
NEG_NAMES = ["stone", "river", "cloud"]
NEW_NAMES = ["boat", "yellow house", "bird"]


@pytest.fixture(scope="module")
def tiny():
    """The random-weight tiny CLIP, seeded: a fresh process rebuilds the same weights (reload test)."""
    from clipood.clip.backbone import load_clip

    torch.manual_seed(1234)
    return load_clip("clipood-tiny")


@pytest.fixture(scope="module")
def context(tiny):
    return adapters.AdapterContext.from_backbone(tiny, ID_NAMES, NEG_NAMES)


# ------------------------------------------------------------------------------------------------ LoCoOp
# Two images, three patches, N = 4 ID classes, K = 2. Patch logits are log-probabilities, so the softmax of
# each patch is the probability row written here.
P = [[[0.4, 0.3, 0.2, 0.1],     # image 0 (label 3): top-2 = {0, 1} → 3 not in it → OOD
      [0.1, 0.2, 0.3, 0.4],     #                    top-2 = {3, 2} → ID
      [0.5, 0.3, 0.15, 0.05]],  #                    top-2 = {0, 1} → OOD
     [[0.6, 0.2, 0.1, 0.1],     # image 1 (label 1): top-2 = {0, 1} → ID
      [0.1, 0.7, 0.15, 0.05],   #                    top-2 = {1, 2} → ID
      [0.05, 0.1, 0.25, 0.6]]]  #                    top-2 = {3, 2} → OOD
LABELS = torch.tensor([3, 1])


def _h(p):  # entropy by hand
    return -sum(x * math.log(x) for x in p)


def test_locoop_ood_patch_selection_matches_the_hand_worked_example():
    logits = torch.tensor(P).log()
    mask = ood_patch_mask(logits, LABELS, top_k=2)
    assert mask.tolist() == [[True, False, True], [False, False, True]]
    # K = 1: a patch is ID only when the label is its arg-max
    assert ood_patch_mask(logits, LABELS, top_k=1).tolist() == [[True, False, True], [True, False, True]]
    # K = N: the label is always in the top-K, no patch is OOD
    assert not ood_patch_mask(logits, LABELS, top_k=4).any()


def test_locoop_entropy_term_matches_a_hand_computation():
    logits = torch.tensor(P).log().requires_grad_(True)
    loss = locoop_entropy_loss(logits, LABELS, top_k=2)
    want = -(_h(P[0][0]) + _h(P[0][2]) + _h(P[1][2])) / 3        # −mean entropy of the three OOD patches
    assert float(loss) == pytest.approx(want, abs=1e-6)
    assert float(patch_entropy(torch.zeros(1, 1, 4))[0, 0]) == pytest.approx(math.log(4), abs=1e-6)
    loss.backward()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0  # ID patches get nothing
    none = locoop_entropy_loss(torch.tensor(P).log(), LABELS, top_k=4)
    assert float(none) == 0.0


def test_locoop_top_k_scales_with_the_label_count():
    assert scaled_top_k(0, 1000) == 200 and scaled_top_k(0, 10) == 2 and scaled_top_k(0, 3) == 1
    assert scaled_top_k(7, 10) == 7


def test_locoop_task_adds_the_weighted_entropy_of_the_adapters_local_logits(context):
    torch.manual_seed(0)
    a = perturb(adapters.build_adapter("locoop", context, top_k=2, entropy_weight=0.25))
    n, t, d = 3, 5, context.dim
    batch = {"id_features": unit(n, d, seed=1), "id_labels": torch.tensor([0, 2, 3]),
             "id_local": unit(n, t, d, seed=2), "neg_features": unit(n, d, seed=3)}
    task = a.task_cls(a, {"cls": 1.0}, logit_scale=100.0)
    assert isinstance(task, LoCoOpTask)
    out = task(batch)
    # independent: cosines of the patches with the learned ID features, top-2 rule and entropies by formula
    with torch.no_grad():
        tid = a.id_text_features()
        s = 100 * torch.einsum("btd,nd->btn", batch["id_local"], tid)
        ent, picked = [], 0
        for b in range(n):
            for p in range(t):
                top2 = set(torch.argsort(s[b, p], descending=True)[:2].tolist())
                if int(batch["id_labels"][b]) not in top2:
                    q = torch.softmax(s[b, p].double(), 0)
                    ent.append(float(-(q * (q + 1e-5).log()).sum()))  # the released ε = 1e-5
                    picked += 1
        want_ent = -sum(ent) / picked
        ce = F.cross_entropy(100 * batch["id_features"] @ tid.t(), batch["id_labels"])  # ID columns (release)
    assert picked > 0
    assert float(out["entropy_loss"]) == pytest.approx(want_ent, abs=1e-4)
    assert float(out["loss"]) == pytest.approx(float(ce) + 0.25 * want_ent, abs=1e-4)
    out["loss"].backward()
    assert a.ctx.grad is not None and a.ctx.grad.abs().sum() > 0
    with pytest.raises(ClipoodError, match="id_local"):
        task({k: v for k, v in batch.items() if k != "id_local"})


def test_locoop_local_logits_and_glmcm(context):
    from clipood.scores import compute_score

    a = adapters.build_adapter("locoop", context)
    v, loc = unit(2, context.dim, seed=4), unit(2, 3, context.dim, seed=5)
    out = a({"image_features": v, "local_features": loc})
    want = torch.einsum("btd,nd->btn", loc, a.id_text_features())
    torch.testing.assert_close(out.extras["local_logits"], want, atol=1e-6, rtol=0)
    g = compute_score("glmcm", 100 * out.logits.double(), 4, temperature=100.0,
                      local_logits=100 * out.extras["local_logits"].double())
    mcm = torch.softmax(out.logits[:, :4].double(), 1).amax(1) + torch.softmax(want.double(), 2).amax(2).amax(1)
    torch.testing.assert_close(g, mcm, atol=1e-6, rtol=0)
    assert "local_logits" not in a(v).extras  # without patch features it is CoOp


# ------------------------------------------------------------------------------------------------ NegPT
def test_negpt_encodes_the_negative_names_with_its_context(context, tiny):
    a = adapters.build_adapter("negpt", context)
    # initial context = the token embeddings of "a photo of a": the negative rows are encode_text of that prompt
    # (NegPrompt's prompts have no full stop)
    want = F.normalize(tiny.encode_text([f"a photo of a {n}" for n in NEG_NAMES]).float(), dim=-1)
    torch.testing.assert_close(a.negative_text_features(), want, atol=1e-5, rtol=0)
    v = unit(3, context.dim, seed=1)
    torch.testing.assert_close(a(v).logits[:, :4], v @ context.text_features[:4].t(), atol=1e-6, rtol=0)
    assert a.num_trainable_parameters() == 4 * tiny.text_path.width


def test_negpt_moves_to_new_negatives_and_new_classes(context, tiny):
    a = perturb(adapters.build_adapter("negpt", context))
    new = adapters.AdapterContext.from_backbone(tiny, NEW_NAMES, ["sand", "wave"])
    moved = a.for_labels(new)
    assert moved.num_labels == 5 and torch.equal(moved.neg_ctx, a.neg_ctx)
    other = adapters.build_adapter("negpt", new)
    with torch.no_grad():
        other.neg_ctx.copy_(a.neg_ctx)
    v = unit(2, new.dim, seed=3)
    torch.testing.assert_close(moved(v).logits, other(v).logits, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- ConNegPT
@pytest.mark.parametrize("chunk", [2, 512])
def test_connegpt_batch_of_images_equals_single_image_calls(context, chunk):
    torch.manual_seed(0)
    a = perturb(adapters.build_adapter("connegpt", context, chunk_size=chunk), scale=0.3).eval()
    v = unit(5, context.dim, seed=11)
    with torch.no_grad():
        batched = a(v).logits
        single = torch.cat([a(v[i:i + 1]).logits for i in range(5)])
        feats = a.negative_text_features(v)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    assert (feats[0] - feats[1]).abs().max() > 1e-4  # the negatives really depend on the image
    # crops that share one condition feature are encoded once and get the same negatives
    cond = torch.cat([v[:1]] * 3 + [v[1:2]])
    out = a({"image_features": unit(4, context.dim, seed=12), "condition_features": cond})
    assert out.logits.shape == (4, context.num_labels)


def test_connegpt_starts_as_negpt(context):
    torch.manual_seed(0)
    c = adapters.build_adapter("connegpt", context, meta_init="zero")
    n = adapters.build_adapter("negpt", context, full_stop=True)  # ConNegPT's prompts end in "." as CoCoOp's
    v = unit(3, context.dim, seed=2)
    torch.testing.assert_close(c(v).logits, n(v).logits, atol=1e-5, rtol=0)


# -------------------------------------------------------------------------------------------------- LAPT
def test_lapt_encodes_id_and_negative_rows_through_their_contexts(context, tiny):
    a = adapters.build_adapter("lapt", context)
    want = F.normalize(tiny.encode_text([f"a photo of a {n}." for n in ID_NAMES + NEG_NAMES]).float(), dim=-1)
    torch.testing.assert_close(a.tuned_text_features(), want, atol=1e-5, rtol=0)
    assert a.num_trainable_parameters() == 2 * 4 * tiny.text_path.width


def test_soft_cross_entropy_is_a_mixture_of_hard_ones():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    y, k, lam = torch.tensor([0, 2, 4]), torch.tensor([1, 2, 3]), torch.tensor([[0.2], [0.5], [0.9]])
    target = lam * F.one_hot(y, 5) + (1 - lam) * F.one_hot(k, 5)
    want = (lam[:, 0] * F.cross_entropy(logits, y, reduction="none")
            + (1 - lam[:, 0]) * F.cross_entropy(logits, k, reduction="none")).mean()
    assert float(soft_cross_entropy(logits, target)) == pytest.approx(float(want), abs=1e-6)


def test_lapt_task_trains_both_contexts_on_negative_label_images(context):
    torch.manual_seed(0)
    a = adapters.build_adapter("lapt", context, mix_rule="clipood", cross_dist_weight=0.3)
    task = a.task_cls(a, {"cls": 1.0}, logit_scale=100.0)
    assert isinstance(task, LAPTTask)
    batch = {"id_features": unit(4, context.dim, seed=1), "id_labels": torch.tensor([0, 1, 2, 3]),
             "neg_features": unit(4, context.dim, seed=2)}
    with pytest.raises(ClipoodError, match="negative labels"):
        task(batch)
    task.set_negative_images(unit(6, context.dim, seed=3), torch.tensor([4, 4, 5, 5, 6, 6]))
    out = task(batch)
    assert {"cls_loss", "neg_images_loss", "mix_loss", "cross_dist_loss"} <= set(out)
    out["loss"].backward()
    assert a.ctx.grad.abs().sum() > 0 and a.ood_ctx.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- stacking
def _train_steps(adapter, steps=3, local=False, seed=0):
    task = adapter.task_cls(adapter, {"cls": 1.0, "ood": 0.3, "kr": 1.0}, logit_scale=100.0)
    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=0.05)
    d = adapter.dim
    for s in range(steps):
        batch = {"id_features": unit(4, d, seed=seed + s), "id_labels": torch.tensor([0, 1, 2, 3]),
                 "neg_features": unit(4, d, seed=seed + 100 + s)}
        if local:
            batch["id_local"] = unit(4, 3, d, seed=seed + 200 + s)
        opt.zero_grad()
        task(batch)["loss"].backward()
        opt.step()
    return adapter.eval()


RELOAD = """
import sys, torch
import adapters
from clipood.clip.backbone import load_clip
torch.manual_seed(1234)  # the same random tiny CLIP as the test's fixture
a = adapters.load_adapter(sys.argv[1], backbone=load_clip("clipood-tiny"))
v = torch.load(sys.argv[2])
torch.save({"logits": a(v).logits.detach(), "name": a.name, "base": a.base.name}, sys.argv[3])
"""


def test_stack_krnft_on_locoop_save_and_reload_in_a_fresh_process(context, tiny, tmp_path):
    torch.manual_seed(0)
    locoop = _train_steps(adapters.build_adapter("locoop", context), local=True)
    stacked = adapters.stack(locoop, "nft", hidden_dim=8)
    # the tuner's frozen base rows are LoCoOp's learned text features for this label set
    torch.testing.assert_close(stacked.tuner.base_text_features, locoop.tuned_text_features().detach(),
                               atol=1e-6, rtol=0)
    assert {n for n, p in stacked.named_parameters() if p.requires_grad} == \
        {f"tuner.{n}" for n, _ in stacked.tuner.named_parameters()}
    before = locoop.ctx.detach().clone()
    _train_steps(stacked, seed=50)
    assert torch.equal(locoop.ctx, before)  # the prompt part stays frozen
    v = unit(3, context.dim, seed=9)
    want = stacked(v).logits.detach()
    adapters.save_adapter(stacked, tmp_path / "stacked", include_base=True)
    assert (tmp_path / "stacked" / "base" / "adapter.safetensors").is_file()
    torch.save(v, tmp_path / "v.pt")
    r = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "stacked"), str(tmp_path / "v.pt"),
                        str(tmp_path / "out.pt")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["name"] == "stacked" and got["base"] == "locoop"
    torch.testing.assert_close(got["logits"], want, atol=1e-6, rtol=0)


def test_stacked_model_on_unseen_classes_uses_the_prompt_parts_encoding(context, tiny):
    torch.manual_seed(0)
    locoop = _train_steps(adapters.build_adapter("locoop", context), local=True)
    stacked = _train_steps(adapters.stack(locoop, "nft", hidden_dim=8), seed=50)
    new = adapters.AdapterContext.from_backbone(tiny, NEW_NAMES, NEG_NAMES)
    moved = stacked.for_labels(new)
    prompt_new = locoop.for_labels(new).tuned_text_features().detach()
    # base rows of the moved tuner = LoCoOp's context applied to the new names, not the frozen zero-shot rows
    torch.testing.assert_close(moved.tuner.base_text_features, prompt_new, atol=1e-6, rtol=0)
    assert (prompt_new[:3] - new.text_features[:3]).abs().max() > 1e-3
    # and the tuner's learned transform is applied on top of them: NFT on those rows with the trained weights
    ref = adapters.build_adapter("nft", new.with_features(prompt_new), hidden_dim=8)
    ref.load_state_dict(stacked.tuner.state_dict())
    v = unit(2, new.dim, seed=5)
    torch.testing.assert_close(moved(v).logits, ref(v).logits, atol=1e-6, rtol=0)


def test_negpt_stacked_on_coop_starts_from_the_trained_positive_context(context):
    torch.manual_seed(0)
    coop = _train_steps(adapters.build_adapter("coop", context))
    s = adapters.stack(coop, "negpt")
    assert (s.tuner.neg_ctx - coop.ctx).abs().max() <= 1e-5 + 1e-7
    torch.testing.assert_close(s.tuner.base_text_features[:4], coop.id_text_features().detach(), atol=1e-6, rtol=0)


def test_stacking_refuses_image_conditional_bases(context):
    c = adapters.build_adapter("connegpt", context)
    with pytest.raises(ClipoodError, match="depend on the image"):
        adapters.stack(c, "nft")


def test_recipe_settings_for_stacking_are_checked_before_work(tmp_path):
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import TrainRunSettings

    def cfg(*args):
        return compose_settings(TrainRunSettings, list(args), configs_dir=ROOT / "recipes" / "configs",
                                recipe="krnft")

    with pytest.raises(ClipoodError, match="needs base_checkpoint"):
        cfg("base=locoop")
    with pytest.raises(ClipoodError, match="no adapter_config.json"):
        cfg(f"base_checkpoint={tmp_path}")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"adapter": "lapt"}))
    with pytest.raises(ClipoodError, match="holds a trained 'lapt'"):
        cfg("base=locoop", f"base_checkpoint={tmp_path}")
    ok = cfg(f"base_checkpoint={tmp_path}")
    assert ok["base"] == "lapt" and ok["method_name"] == "LAPT+KR-NFT"


# ---------------------------------------------------------------------------------- through the recipes
from test_recipes import recipe_run, world  # noqa: E402,F401  (the tiny mini world and the recipe runner)


def test_recipe_trains_locoop_then_stacks_krnft_on_it(world):
    """`recipes/krnft.py preset=locoop_mini`, then `base=locoop base_checkpoint=<run>`: one stacked artefact."""
    first = world / "locoop-run"
    r = recipe_run(world, first, "preset=locoop_mini")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((first / "results.json").read_text())
    assert {("LoCoOp", "new_class"), ("GL-MCM (zero-shot)", "base")} <= {(x["method"], x["split"]) for x in rows}
    out = world / "stacked-run"
    r = recipe_run(world, out, "base=locoop", f"base_checkpoint={first}")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    assert ("LoCoOp+KR-NFT", "new_class") in {(x["method"], x["split"]) for x in rows}
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert saved["adapter"] == "stacked" and saved["config"]["base"] == "locoop" and saved["config"]["tuner"] == "nft"
    assert (out / "adapter" / "base" / "adapter.safetensors").is_file()
