"""Prompt learners run the text encoder once per learned context in a training step (ID crops, negative crops
and the method's own terms share one encoding), counted on the tiny CLIP's text path."""
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
            assert len(calls) == 2 * contexts  # the backward recomputes each checkpointed chunk once
    finally:
        del tp.encode_embeddings
    assert sorted(calls[:contexts]) == sorted([len(ID), len(NEG)][:contexts] if name != "negpt" else [len(NEG)])
