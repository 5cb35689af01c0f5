"""Cost of the prompt methods at ViT-B/16 size (OpenAI ViT-B/16 architecture, random weights), built through
the registry: trainable parameters, one training step, and the per-image test cost.

Run with ``pytest --benchmark benchmarks/test_prompt_cost.py``. Prompt learners run the text encoder, so their
costs grow with the label count: measured here at N = 100 ID + M = 100 negative labels, a batch of 8 images with
one crop each (KR-NFT's NFT is measured at the full 1,000 + 10,000 in test_adapter_cost.py). Reported in
``extra_info``: ``params``, ``labels``; the benchmark time of the train-step test is one optimiser step, that of
the test-cost test one batch of 8 test images (divide by 8 for per-image).
"""
import pytest
import torch
import torch.nn.functional as F

import adapters
from clipood.method import TrainingTask

N, M, B = 100, 100, 8
#: trainable parameters at ViT-B/16 (W = D = 512) with each method's mini defaults (4-token contexts)
PARAMS = {"coop": 2_048, "locoop": 2_048, "negpt": 2_048, "lapt": 4_096, "connegpt": 2_048 + 33_312,
          "stacked": 266_496}
METHODS = list(PARAMS)


@pytest.fixture(scope="module")
def context():
    from clipood.backbone import load_clip

    torch.manual_seed(0)
    bb = load_clip("ViT-B-16")  # random weights: the architecture is what costs
    ids, negs = [f"class {i}" for i in range(N)], [f"word {i}" for i in range(M)]
    return adapters.AdapterContext.from_backbone(bb, ids, negs)


def _build(name, context):
    torch.manual_seed(0)
    opts = {"tuner_options": {"hidden_dim": 64}} if name == "stacked" else {}
    return adapters.build_adapter(name, context, **opts)


def _batch(d):
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(B, d, generator=g), dim=-1)
    return {"id_features": v, "id_labels": torch.arange(B) % N, "neg_features": v.flip(0),
            "id_local": F.normalize(torch.randn(B, 196, d, generator=g), dim=-1)}


@pytest.mark.parametrize("name", METHODS)
def test_prompt_method_train_step(benchmark, name, context):
    a = _build(name, context)
    task_cls = getattr(a, "task_cls", None) or TrainingTask
    task = task_cls(a, {"cls": 1.0, "ood": 0.3}, logit_scale=100.0)
    if hasattr(task, "set_negative_images"):
        task.set_negative_images(_batch(context.dim)["id_features"], torch.arange(B) % M + N)
    opt = torch.optim.SGD([p for p in a.parameters() if p.requires_grad], lr=1e-3)
    batch = _batch(context.dim)

    def step():
        opt.zero_grad()
        task(batch)["loss"].backward()
        opt.step()

    benchmark.pedantic(step, rounds=2, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(params=a.num_trainable_parameters(), labels=N + M)
    assert a.num_trainable_parameters() == PARAMS[name]


@pytest.mark.parametrize("name", METHODS)
def test_prompt_method_test_cost(benchmark, name, context):
    a = _build(name, context).eval()
    b = _batch(context.dim)
    batch = {"image_features": b["id_features"], "local_features": b["id_local"]}
    with torch.no_grad():
        a(batch)  # text features of image-independent methods are computed once and cached
        benchmark.pedantic(lambda: a(batch), rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(params=a.num_trainable_parameters(), images=B, labels=N + M)
