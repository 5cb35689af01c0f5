"""The fine-tuned-encoder core (clipood.training.finetune): the split reproduces each tower's encode_image, the trunk is cached
once, and one step on the cached trunk outputs equals a hand-rolled step through the whole open_clip tower with
only the last blocks trainable (autograd through ``visual(x)``, SGD written out)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError
from clipood.training.finetune import FinetunedClassifier, finetune_step, split_image_tower, trunk_features


@pytest.fixture(scope="module")
def resnet():
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(0)
    return ModifiedResNet(layers=(1, 1, 2, 1), output_dim=16, heads=2, image_size=64, width=8).eval()


def _pixels(size, n=4, seed=5):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,k", [("tiny", 1), ("tiny", 2), ("mini", 1), ("mini", 3), ("resnet", 2)])
def test_head_of_trunk_is_encode_image(name, k, request):
    model = request.getfixturevalue(name)
    visual = getattr(getattr(model, "model", model), "visual", model)
    size = getattr(model, "image_size", 64)
    x = _pixels(size)
    split = split_image_tower(model, k)
    with torch.no_grad():
        ref = visual(x)
        got = split.head.eval()(trunk_features(split, x, batch_size=3))
    assert split.trainable_blocks == k and got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert all(p.requires_grad for p in split.head.parameters())  # train_projection=True by default
    assert not any(p.requires_grad for p in split.trunk.parameters())
    ids = {id(p) for p in visual.parameters()}
    assert not any(id(p) in ids for p in split.head.parameters())  # a copy: training never touches the backbone


def test_trunk_cache_is_batch_independent(tiny):
    split = split_image_tower(tiny, 1)
    x = _pixels(tiny.image_size, n=5)
    a = trunk_features(split, x, batch_size=2)
    b = trunk_features(split, [x[:3], x[3:]])
    assert a.shape == (5, 1 + (tiny.image_size // 16) ** 2, 64)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert trunk_features(split, x, dtype=torch.float16).dtype == torch.float16


def _hand_rolled_step(visual, trainable, x, labels, text, lr, scale=100.0):
    """The whole tower with only ``trainable`` parameters requiring grad: logits = s·L2(visual(x))·L2(T)ᵀ, CE,
    autograd, then p ← p − lr·∂L/∂p."""
    for p in visual.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    logits = scale * F.normalize(visual(x), dim=-1) @ F.normalize(text, dim=-1).T
    loss = F.cross_entropy(logits, labels)
    grads = torch.autograd.grad(loss, trainable)
    with torch.no_grad():
        return float(loss), [p - lr * g for p, g in zip(trainable, grads)]


@pytest.mark.parametrize("name", ["tiny", "mini"])
def test_one_step_matches_a_hand_rolled_step_through_the_whole_tower(name, request):
    model = request.getfixturevalue(name)
    visual = copy.deepcopy(model.model.visual).eval()
    x = _pixels(model.image_size, n=6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    text = torch.randn(3, model.embed_dim, generator=torch.Generator().manual_seed(7))
    lr = 0.5
    if name == "tiny":  # the last ViT block, ln_post and proj
        blk = visual.transformer.resblocks[-1]
        trainable = [*blk.parameters(), *visual.ln_post.parameters(), visual.proj]
    else:  # the last BasicBlock and the linear projection (batch norm in eval mode: running statistics)
        blk = visual.trunk.layer4[-1]
        trainable = [*blk.parameters(), *visual.head.parameters()]
    ref_loss, ref_params = _hand_rolled_step(visual, trainable, x, labels, text, lr)

    split = split_image_tower(model, 1)
    clf = FinetunedClassifier(split.head, text, logit_scale=100.0)
    h = trunk_features(split, x)
    loss = finetune_step(clf, h, labels, torch.optim.SGD(clf.parameters(), lr=lr))
    assert abs(loss - ref_loss) < 1e-6
    if name == "tiny":
        got = [*split.head.blocks.blocks[-1].parameters(), *split.head.ln_post.parameters(), split.head.proj]
    else:
        got = [*split.head.blocks.blocks[-1].parameters(), *split.head.proj_head.parameters()]
    assert len(got) == len(ref_params)
    moved = 0.0
    for g, r, p0 in zip(got, ref_params, trainable):
        torch.testing.assert_close(g.detach(), r, atol=1e-6, rtol=1e-6)
        moved = max(moved, float((r - p0.detach()).abs().max()))
    assert moved > 1e-4  # the step moved the weights: the comparison is not between two copies of the start


def test_norm_statistics_stay_frozen_unless_asked(mini):
    split = split_image_tower(mini, 2)
    text = torch.randn(3, mini.embed_dim, generator=torch.Generator().manual_seed(1))
    clf = FinetunedClassifier(split.head, text)
    h = trunk_features(split, _pixels(mini.image_size, n=4))
    bn = next(m for m in split.head.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    finetune_step(clf, h, torch.tensor([0, 1, 2, 0]), torch.optim.SGD(clf.parameters(), lr=0.0))
    assert torch.equal(bn.running_mean, before)
    finetune_step(clf, h, torch.tensor([0, 1, 2, 0]), torch.optim.SGD(clf.parameters(), lr=0.0),
                  freeze_norm_stats=False)
    assert not torch.equal(bn.running_mean, before)


def test_learned_classifier_and_frozen_projection_options(tiny):
    split = split_image_tower(tiny, 1, train_projection=False)
    assert split.head.proj.requires_grad is False
    text = torch.randn(4, tiny.embed_dim, generator=torch.Generator().manual_seed(2))
    frozen = FinetunedClassifier(split.head, text)
    learned = FinetunedClassifier(split.head, text, learn_classifier=True)
    assert "weight" not in dict(frozen.named_parameters()) and "weight" in dict(learned.named_parameters())
    h = trunk_features(split, _pixels(tiny.image_size, n=2))
    with torch.no_grad():
        torch.testing.assert_close(frozen(h), learned(h))
        torch.testing.assert_close(frozen(h), 100.0 * frozen.features(h) @ F.normalize(text, dim=-1).T)


def test_bad_inputs_are_one_line_errors(tiny):
    with pytest.raises(ClipoodError, match=r"trainable_blocks must be an integer in \[1, 2\]"):
        split_image_tower(tiny, 3)
    with pytest.raises(ClipoodError, match="ViT and ModifiedResNet"):
        split_image_tower(torch.nn.Linear(2, 2), 1)
    with pytest.raises(ClipoodError, match="B×3×H×W"):
        trunk_features(split_image_tower(tiny, 1), [torch.zeros(3, 64, 64)])
