"""Prompt learners run the text encoder once per learned context in a training step (ID crops, negative crops
and the method's own terms share one encoding), counted on the tiny CLIP's text path; the backward recomputes a
chunk (activation checkpointing) only when the prompts take more than one chunk."""
from __future__ import annotations

import pytest
import torch

import adapters
from clipood.training.task import TrainingTask
from helpers import unit

ID = ["cat", "small red car", "tree", "dog"]
NEG = ["stone", "river", "cloud"]


@pytest.fixture(scope="module")
def context():
    from clipood.clip.backbone import load_clip

    torch.manual_seed(0)
    return adapters.AdapterContext.from_backbone(load_clip("clipood-tiny"), ID, NEG)


@pytest.mark.parametrize("name, contexts", [("coop", 1), ("locoop", 1), ("negpt", 1), ("lapt", 2)])
def test_one_text_encoder_pass_per_context_and_step(context, name, contexts):
    a = adapters.build_adapter(name, context).train()
    task = (getattr(a, "task_cls", None) or TrainingTask)(a, {"cls": 1.0, "ood": 0.3, "kr": 1.0}, logit_scale=100.0)
    d = context.dim
    batch = {"id_features": unit(4, d, seed=1), "id_labels": torch.tensor([0, 1, 2, 3]),
             "neg_features": unit(4, d, seed=2), "id_local": unit(4, 3, d, seed=3), "neg_local": unit(4, 3, d, seed=4)}
    if hasattr(task, "set_negative_images"):
        task.set_negative_images(unit(3, d, seed=5), torch.tensor([4, 5, 6]))
    tp = context.text_path
    calls, real = [], tp.encode_embeddings
    tp.encode_embeddings = lambda x, pos: calls.append(x.shape[0]) or real(x, pos)
    try:
        for _ in range(2):  # two steps: the features of one step are not reused by the next
            calls.clear()
            out = task(batch)
            assert len(calls) == contexts, calls  # every label fits one chunk: one call per context
            out["loss"].backward()
            assert len(calls) == contexts  # one chunk each: nothing to checkpoint, nothing recomputed
    finally:
        del tp.encode_embeddings
    assert sorted(calls[:contexts]) == sorted([len(ID), len(NEG)][:contexts] if name != "negpt" else [len(NEG)])


def _count_calls(context, adapter, batch, steps=1):
    task = TrainingTask(adapter, {"cls": 1.0, "ood": 0.3, "kr": 1.0}, logit_scale=100.0)
    tp = context.text_path
    calls, real = [], tp.encode_embeddings
    tp.encode_embeddings = lambda x, pos: calls.append(x.shape[0]) or real(x, pos)
    try:
        out = task(batch)
        forward = list(calls)
        out["loss"].backward()
    finally:
        del tp.encode_embeddings
    return forward, calls[len(forward):]


def test_more_than_one_chunk_is_checkpointed_and_recomputed_once(context):
    """NegPT with 2 prompts per chunk: 3 negatives = chunks of 2 and 1, each recomputed once by the backward."""
    a = adapters.build_adapter("negpt", context, chunk_size=2).train()
    d = context.dim
    batch = {"id_features": unit(4, d, seed=1), "id_labels": torch.tensor([0, 1, 2, 3]),
             "neg_features": unit(4, d, seed=2)}
    forward, backward = _count_calls(context, a, batch)
    assert forward == [2, 1] and sorted(backward) == [1, 2]


def test_connegpt_encodes_shared_conditions_once_per_step(context):
    """ConNegPT: the ID and negative crops of the same images (one condition each, ``train.condition=top_crop``)
    share one encoding of the 2 distinct conditions × 3 negatives; different conditions encode again."""
    a = adapters.build_adapter("connegpt", context).train()
    d = context.dim
    cond = unit(2, d, seed=7)[torch.tensor([0, 0, 1, 1])]
    batch = {"id_features": unit(4, d, seed=1), "id_labels": torch.tensor([0, 1, 2, 3]),
             "neg_features": unit(4, d, seed=2), "id_condition": cond, "neg_condition": cond}
    forward, backward = _count_calls(context, a, batch)
    assert forward == [2 * len(NEG)] and backward == []
    other = dict(batch, neg_condition=unit(4, d, seed=8))
    forward, _ = _count_calls(context, a, other)
    assert forward == [2 * len(NEG), 4 * len(NEG)]


def test_connegpt_shared_encoding_gives_the_gradients_of_two_encodings(context):
    """The reuse changes no value: loss and gradients equal those of a step where each crop set encodes its own
    prompts (the reuse switched off by a fresh scope per call), to float32 rounding."""
    torch.manual_seed(3)
    a = adapters.build_adapter("connegpt", context).train()
    d = context.dim
    cond = unit(2, d, seed=7)[torch.tensor([0, 0, 1, 1])]
    batch = {"id_features": unit(4, d, seed=1), "id_labels": torch.tensor([0, 1, 2, 3]),
             "neg_features": unit(4, d, seed=2), "id_condition": cond, "neg_condition": cond}
    task = TrainingTask(a, {"cls": 1.0, "ood": 0.3, "kr": 1.0}, logit_scale=100.0)
    shared = task(batch)["loss"]
    g_shared = torch.autograd.grad(shared, [p for p in a.parameters() if p.requires_grad])
    separate = task._forward(batch)["loss"]   # no scope: every call encodes its own prompts
    g_sep = torch.autograd.grad(separate, [p for p in a.parameters() if p.requires_grad])
    assert torch.allclose(shared, separate, atol=1e-6)
    for x, y in zip(g_shared, g_sep):
        assert torch.allclose(x, y, atol=1e-6, rtol=1e-5)
