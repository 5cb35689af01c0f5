"""Explicit relabelling (``adapter.for_labels(context)``): feature tuners apply their learned transform to the
new base rows (checked against Eq. 4/6 written out here); weights tied to training labels raise, never fall back."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adapters
from adapters import AdapterContext
from clipood.errors import ClipoodError
from helpers import unit as unit_draw


def unit(*shape, seed=0):  # drawn in float64, used in float32 (the values these tests were written with)
    return unit_draw(*shape, seed=seed, dtype=torch.float64).float()

D = 12


def ctx(id_names, neg_names, seed):
    return AdapterContext(unit(len(id_names) + len(neg_names), D, seed=seed), id_names=id_names, neg_names=neg_names)


TRAIN = ctx(["cat", "dog", "car"], ["stone", "sky"], seed=1)
UNSEEN = ctx(["owl", "bus"], ["sand", "brick", "fog"], seed=2)        # other classes, other negatives
SAME_ID = ctx(["cat", "dog", "car"], ["sand", "brick", "fog"], seed=3)  # same classes, other negatives


def perturb(a, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return a


def test_ft_applies_its_transform_to_the_new_rows():
    ft = perturb(adapters.FT(TRAIN))
    moved = ft.for_labels(UNSEEN)
    assert moved is not ft and moved.num_id == 2 and moved.num_labels == 5
    c = UNSEEN.text_features
    expected = F.normalize(ft.alpha["all"].detach() * c + ft.beta["all"].detach(), dim=-1)  # Eq. 4
    torch.testing.assert_close(moved.tuned_text_features(), expected, atol=1e-6, rtol=0)


def test_nft_keeps_id_and_negative_transforms_apart_on_new_rows():
    nft = perturb(adapters.NFT(TRAIN, hidden_dim=4))
    moved = nft.for_labels(UNSEEN)
    v = unit(1, D, seed=9)
    c = UNSEEN.text_features

    def transform(g, rows):  # Eq. 6 for one image: (α_g + ĥα_g(v)) ⊙ c + (β_g + ĥβ_g(v))
        a = nft.alpha[g] + nft.meta_alpha[g](v)
        b = nft.beta[g] + nft.meta_beta[g](v)
        return F.normalize(a * rows + b, dim=-1)

    expected = torch.cat([transform("id", c[:2]), transform("neg", c[2:])]).detach()
    torch.testing.assert_close(moved.tuned_text_features(v)[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(moved(v).logits[0], expected @ v[0], atol=1e-6, rtol=0)


def test_same_labels_return_the_adapter_itself():
    nft = adapters.NFT(TRAIN, hidden_dim=4)
    assert nft.for_labels(ctx(["cat", "dog", "car"], ["stone", "sky"], seed=1)) is nft


@pytest.mark.parametrize("make, what", [
    (lambda c: adapters.FT(c, mode="class_specific"), "class_specific"),
    (lambda c: adapters.NFT(c, hidden_dim=4, mode="class_specific"), "class_specific"),
    (lambda c: adapters.TaskRes(c), "residual_rows='id'"),
    (lambda c: adapters.TaskRes(c, residual_rows="all"), "residual_rows='all'"),
])
def test_label_tied_weights_refuse_unseen_classes(make, what):
    with pytest.raises(ClipoodError, match=what) as e:
        make(TRAIN).for_labels(UNSEEN)
    assert "2 ID + 3 negatives" in str(e.value)


def test_taskres_id_residuals_move_to_other_negatives_of_the_same_classes():
    tr = perturb(adapters.TaskRes(TRAIN, mu=0.5))
    moved = tr.for_labels(SAME_ID)
    c = SAME_ID.text_features
    tuned_id = F.normalize(c[:3] + 0.5 * tr.residual.detach(), dim=-1)
    torch.testing.assert_close(moved.tuned_text_features(), torch.cat([tuned_id, c[3:]]), atol=1e-6, rtol=0)
    with pytest.raises(ClipoodError, match="residual_rows='all'"):
        adapters.TaskRes(TRAIN, residual_rows="all").for_labels(SAME_ID)


def test_unnamed_contexts_compare_by_features_and_bad_arguments_are_named():
    c = unit(5, D, seed=1)
    nft = adapters.NFT(c, 3, hidden_dim=4)
    assert nft.for_labels(AdapterContext.from_features(c.clone(), 3)) is nft
    with pytest.raises(ClipoodError, match="AdapterContext"):
        nft.for_labels(c)
    with pytest.raises(ClipoodError, match="feature dim 7"):
        nft.for_labels(AdapterContext.from_features(unit(5, 7), 3))
    with pytest.raises(ClipoodError, match="num_id=2 contradicts"):
        adapters.NFT(TRAIN, 2)


def test_same_labels_with_other_base_features_are_relabelled_even_when_label_tied():
    other = ctx(["cat", "dog", "car"], ["stone", "sky"], seed=8)  # same names, other features (templates)
    ft = perturb(adapters.FT(TRAIN, mode="class_specific"))
    moved = ft.for_labels(other)
    assert moved is not ft and torch.equal(moved.alpha["all"], ft.alpha["all"])
    expected = F.normalize(ft.alpha["all"].detach() * other.text_features + ft.beta["all"].detach(), dim=-1)
    torch.testing.assert_close(moved.tuned_text_features(), expected, atol=1e-6, rtol=0)
    tr = perturb(adapters.TaskRes(TRAIN, residual_rows="all"))
    assert torch.equal(tr.for_labels(other).residual, tr.residual)
