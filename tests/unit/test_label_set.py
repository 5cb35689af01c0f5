"""One label set per split: names, templates, negatives with part of speech and features, made once; the adapter
context is built from it in one place; the benchmark is never changed after it is made."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import adapters
from clipood.errors import ClipoodError
from clipood.evaluation.benchmark import Benchmark
from clipood.labels.label_set import LabelSet
from helpers import unit

TEMPLATES = {"noun": "a photo of a {}.", "adj": "a {} texture."}


def _labels(k_neg=3):
    words, pos = ("stone", "soft", "river")[:k_neg], ("noun", "adj", "noun")[:k_neg]
    return LabelSet(("cat", "dog"), unit(2 + k_neg, 6, seed=1), "the nice {}.", words, pos, TEMPLATES)


def test_context_from_a_label_set_keeps_names_templates_by_part_of_speech_and_rows():
    ls = _labels()
    ctx = adapters.AdapterContext.from_label_set(ls)
    assert ctx.id_names == ["cat", "dog"] and ctx.neg_names == ["stone", "soft", "river"] and ctx.num_id == 2
    assert ctx.id_templates == ["the nice {}."]
    assert ctx.neg_templates == ["a photo of a {}.", "a {} texture.", "a photo of a {}."]  # by part of speech
    assert ctx.neg_prompts() == ["a photo of a stone.", "a soft texture.", "a photo of a river."]
    assert torch.equal(ctx.text_features, ls.features)  # the frozen rows, not re-encoded


def test_a_label_set_refuses_rows_that_do_not_match_its_names():
    with pytest.raises(ClipoodError, match="2 ID \\+ 3 negative rows"):
        LabelSet(("cat", "dog"), unit(4, 6), neg_names=("a", "b", "c"))
    with pytest.raises(ClipoodError, match="part of speech 'verb'"):
        LabelSet(("cat",), unit(2, 6), neg_names=("run",), neg_pos=("verb",))
    bare = LabelSet(("cat", "dog"), unit(5, 6))  # unnamed negatives: rows after the ID rows, as given
    assert bare.num_id == 2 and bare.neg_templates == ["a photo of a {}."]


def test_the_benchmark_and_the_label_set_are_never_changed():
    bench = Benchmark(backbone=None, splits=[], corpus=None, notes=["a note"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        bench.backbone = object()
    assert bench.notes == ("a note",) and not hasattr(bench, "negatives")
    with pytest.raises(dataclasses.FrozenInstanceError):
        _labels().neg_names = ()
