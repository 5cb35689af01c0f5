"""CoOp against open_clip's own ``encode_text`` (an independent path), its checkpoints, relabelling and chunks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adapters
from adapters import AdapterContext, CoOp, build_adapter, load_adapter, save_adapter
from clipood.clip.backbone import load_clip
from clipood.errors import ClipoodError
from helpers import open_clip_features, phrase_embeddings, unit

ID_NAMES = ["cat", "small red car", "tree", "dog", "wooden chair"]
NEG_NAMES = ["stone", "river", "cloud"]
NEW_NAMES = ["bicycle", "garden snail", "lamp"]


@pytest.fixture(scope="module", params=["clipood-tiny", "clipood-mini"])
def backbone(request):
    return load_clip(request.param)


def context_for(backbone, id_names=ID_NAMES, neg_names=NEG_NAMES):
    return AdapterContext.from_backbone(backbone, id_names, neg_names, neg_templates=["a {} texture."])


def test_context_of_a_photo_of_a_gives_clip_features(backbone):
    coop = build_adapter("coop", context_for(backbone), ctx_init="")  # random init, 4 vectors
    assert coop.ctx.shape == (4, backbone.text_path.width)
    with torch.no_grad():
        coop.ctx.copy_(phrase_embeddings(backbone, "a photo of a", 4))
    ref = open_clip_features(backbone, [f"a photo of a {c}." for c in ID_NAMES])
    with torch.no_grad():
        got = coop.id_text_features()
    assert float((got - ref).abs().max()) <= 1e-5
    # the default init is that phrase: a fresh adapter already reproduces the zero-shot rows
    fresh = build_adapter("coop", context_for(backbone)).eval()
    with torch.no_grad():
        assert float((fresh.id_text_features() - ref).abs().max()) <= 1e-5


def test_logits_rows_and_frozen_negatives(backbone):
    ctx = context_for(backbone)
    coop = build_adapter("coop", ctx)
    with torch.no_grad():
        coop.ctx.add_(0.1 * torch.randn(coop.ctx.shape, generator=torch.Generator().manual_seed(1)))
    v = unit(3, ctx.dim, seed=2)
    out = coop(v)
    tuned = coop.id_text_features()
    c = F.normalize(ctx.text_features, dim=-1)
    torch.testing.assert_close(out.logits[:, :5], v @ tuned.T, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logits[:, 5:], v @ c[5:].T, atol=1e-6, rtol=0)  # negatives: frozen rows
    torch.testing.assert_close(out.base_cos[:5], (c[:5] * tuned).sum(-1), atol=1e-6, rtol=0)
    assert torch.equal(out.base_cos[5:], torch.ones(3))


def test_gradients_only_into_the_context(backbone):
    coop = build_adapter("coop", context_for(backbone), class_specific=True)
    assert coop.ctx.shape == (5, 4, backbone.text_path.width)
    assert [n for n, _ in coop.named_parameters()] == ["ctx"]
    out = coop(unit(4, backbone.embed_dim))
    F.cross_entropy(100 * out.logits, torch.tensor([0, 1, 2, 4])).backward()
    assert coop.ctx.grad is not None and float(coop.ctx.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in backbone.model.parameters())


def test_chunks_and_checkpointing_are_exact(backbone):
    ctx = context_for(backbone)
    torch.manual_seed(0)
    whole = build_adapter("coop", ctx, ctx_init="", chunk_size=256)
    torch.manual_seed(0)
    chunked = build_adapter("coop", ctx, ctx_init="", chunk_size=2)
    assert torch.equal(whole.ctx, chunked.ctx)
    v = unit(3, ctx.dim, seed=4)
    grads = []
    for a in (whole, chunked):
        out = a(v)
        (out.logits.square().sum() + out.base_cos.sum()).backward()
        grads.append(a.ctx.grad.clone())
    torch.testing.assert_close(chunked(v).logits, whole(v).logits, atol=1e-6, rtol=0)
    scale = float(grads[0].abs().max())  # fp32 sums in another order: compare relative to the gradient's size
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5 * scale, rtol=0)


def test_thousand_classes_train_step():
    """1,000 ID labels through the text encoder in chunks, forward and backward (tiny CLIP, CPU)."""
    bb = load_clip("clipood-tiny")
    names = [f"class {i}" for i in range(1000)]
    ctx = AdapterContext.from_backbone(bb, names, ["stone"])
    coop = build_adapter("coop", ctx, chunk_size=250)
    out = coop(unit(2, ctx.dim))
    F.cross_entropy(100 * out.logits, torch.tensor([3, 999])).backward()
    assert out.logits.shape == (2, 1001) and float(coop.ctx.grad.abs().sum()) > 0


def test_save_holds_the_context_only_and_reloads_to_identical_logits(backbone, tmp_path):
    ctx = context_for(backbone)
    coop = build_adapter("coop", ctx)
    with torch.no_grad():
        coop.ctx.add_(0.05 * torch.randn(coop.ctx.shape, generator=torch.Generator().manual_seed(3)))
    save_adapter(coop, tmp_path / "a")
    size = (tmp_path / "a" / "adapter.safetensors").stat().st_size
    payload = coop.ctx.numel() * 4  # fp32
    assert payload <= size <= payload + 512, (size, payload)  # + the safetensors header, no encoder weights
    v = unit(3, ctx.dim, seed=5)
    for loaded in (load_adapter(tmp_path / "a", backbone=backbone), load_adapter(tmp_path / "a", context=ctx)):
        assert isinstance(loaded, CoOp)
        assert torch.equal(loaded(v).logits, coop(v).logits)
    with pytest.raises(ClipoodError, match="lacks text_path, tokenizer.*backbone=backbone"):
        load_adapter(tmp_path / "a", text_features=ctx.text_features)  # features alone cannot run a prompt


def test_for_labels_re_encodes_new_names_with_the_learned_context(backbone):
    coop = build_adapter("coop", context_for(backbone))
    assert int(backbone.tokenizer(["a drawing of the"]).argmax(-1)[0]) == 5  # 4 word tokens
    with torch.no_grad():  # a "learned" context that is another phrase, so open_clip gives the reference
        coop.ctx.copy_(phrase_embeddings(backbone, "a drawing of the", 4))
    new_ctx = context_for(backbone, NEW_NAMES, ["sand", "brick"])
    moved = coop.for_labels(new_ctx)
    assert moved is not coop and moved.context.id_names == NEW_NAMES and moved.num_labels == 5
    ref = open_clip_features(backbone, [f"a drawing of the {c}." for c in NEW_NAMES])
    got = moved.id_text_features().detach()
    assert float((got - ref).abs().max()) <= 1e-5
    frozen = F.normalize(new_ctx.text_features[:3], dim=-1)  # not a fall-back to the frozen features
    assert float((got - frozen).abs().max()) > 1e-3
    assert coop.for_labels(context_for(backbone)) is coop  # same labels: the adapter itself


def test_class_specific_context_refuses_unseen_classes(backbone):
    coop = build_adapter("coop", context_for(backbone), class_specific=True)
    with pytest.raises(ClipoodError, match="class_specific=True"):
        coop.for_labels(context_for(backbone, NEW_NAMES, ["sand"]))
    other_negs = coop.for_labels(context_for(backbone, ID_NAMES, ["sand", "brick"]))  # same classes: fine
    assert torch.equal(other_negs.ctx, coop.ctx)


def test_coop_needs_a_text_path_and_checks_its_options(backbone):
    ctx = context_for(backbone)
    with pytest.raises(ClipoodError, match="from_backbone"):
        adapters.CoOp(ctx.text_features, 5)
    with pytest.raises(ClipoodError, match="n_ctx must be >= 1"):
        build_adapter("coop", ctx, ctx_init="", n_ctx=0)
    with pytest.raises(ClipoodError, match="did you mean 'ctx_init'"):
        build_adapter("coop", ctx, ctx_int="a photo of")


def test_eval_cache_follows_the_weights(backbone):
    coop = build_adapter("coop", context_for(backbone)).eval()
    v = unit(2, backbone.embed_dim)
    with torch.no_grad():
        before = coop(v).logits
        coop.ctx.add_(torch.randn(coop.ctx.shape, generator=torch.Generator().manual_seed(7)))  # not a constant: LayerNorm removes those
        after = coop(v).logits
    assert float((after - before).abs().max()) > 1e-4
