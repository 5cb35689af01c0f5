"""The efficiency suite behind ``pytest --benchmark`` (paper Tab. 7): one :class:`Scale` (backbone, label set,
batch; built in ``benchmarks/efficiency_scale.py`` with each method) and one :func:`measure_method` per method — every registered adapter plus zero-shot NegLabel and MCM, and the
seed methods with recipes of their own (CLIPN, ZOC, the fine-tuned encoder: ``benchmarks/efficiency_seed.py``).

What is measured, per method, on the same backbone and label set:

- **train step** on a batch of cached crop features (``BATCH_ID`` ID crops + ``BATCH_NEG`` negative crops; each
  crop is its own image, so image-conditional methods condition on every crop): the adapter's own training task
  with L_cls + 0.3·L_ood (+ 100·L_kr where the adapter reports ``base_cos``); FLOPs of the forward and of the
  backward counted apart, exactly, on fake tensors (prompt learners: their text-encoder forward, activation
  recomputation and backward); wall time and peak memory of the real step when its predicted time fits the
  scale's budget, else an estimate from the FLOPs and the throughput measured on the backbone in the same run.
- **one-off encoding**: the crops of that batch through the image encoder (cached, paid once: KR-NFT's crop
  encoding) and, for prompt learners whose text features do not depend on the image, their label prompts
  (encoded once per label set, then cached).
- **test time per image** = image encoder + method part (adapter + score on the image features, measured per
  method; ConNegPT's per-image text encoding is the method part).
- **timing**: every time is the minimum over ``rounds`` calls, and the methods of a scale are timed in
  interleaved rounds (round r times each method once, in turn; the image encoder among them), test parts first,
  then training steps: on a machine that other processes load, a burst hits every method alike and the
  least-disturbed call is what the load distorts least. Medians are kept in each ``timing``. The suite runs at
  ``CLIPOOD_THREADS`` torch threads, else 1 on a CPU (conftest), and records the count and the load; at one
  CPU thread the clock is the process's CPU time (the time other processes held the core does not count).
- **learnable parameters**, exactly.

Values of features do not change costs: the large scale uses random weights (open_clip ViT-B-16) and random unit
text features for the frozen rows (encoding 11,000 prompts would take minutes on a CPU and change no cost).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from clipood.efficiency import measure as bench
from clipood.scores import mcm_score, neglabel_score

from efficiency_scale import (BATCH_ID, BATCH_NEG, DISPLAY, LOGIT_SCALE, MIN_TOTAL_S, OPTIONS, PAPER, TEST_BATCH,
                              ZERO_SHOT, Scale, _fake_friendly, _no_grad, _one_chunk, _reset_caches,
                              _stub_text_encoder, build, train_batch, training_task)


# ------------------------------------------------------------------------------------------ measuring
def _test_fn(sc: Scale, name: str, adapter) -> Callable[[torch.Tensor], torch.Tensor]:
    """Image features → OOD scores (the method part of test time)."""
    c = sc.text_features.to(sc.device)
    n = sc.num_id
    if name == "neglabel":
        return lambda v: neglabel_score(LOGIT_SCALE * (v @ c.t()), n)
    if name == "mcm":
        return lambda v: mcm_score(LOGIT_SCALE * (v @ c[:n].t()), temperature=LOGIT_SCALE)
    return lambda v: neglabel_score(LOGIT_SCALE * adapter(v).logits, n)


def measure_method(sc: Scale, name: str) -> dict[str, Any]:
    """Every cost of one method at one scale (see the module docstring); a JSON-ready row. Timed alone:
    :func:`measure_methods` times several methods in interleaved rounds."""
    return measure_methods(sc, [name])[name]


def measure_methods(sc: Scale, names: list[str]) -> dict[str, dict[str, Any]]:
    """The rows of ``names`` at ``sc``, timed in interleaved rounds (:class:`clipood.efficiency.measure.InterleavedTimer`):
    first every method's test part together with the image encoder (adapters in eval mode), then every
    training step (train mode). A burst of load from other processes then falls on every method alike, and
    each time is the minimum over the rounds (the least disturbed call; medians are kept in ``timing``). On a
    CPU at one thread the clock is the process's CPU time (:attr:`Scale.clock`), which preemption does not
    inflate."""
    from efficiency_seed import SEED, measure_seed_test, measure_seed_train

    timer = bench.InterleavedTimer(sc.device, clock=sc.clock)
    sc.time_backbone(timer)
    started = [(name, *(measure_seed_test if name in SEED else _measure_test)(sc, name, timer)) for name in names]
    timer.run()
    for name, row, adapter in started:
        if name in SEED:                           # CLIPN, ZOC, the fine-tuned encoder: benchmarks/efficiency_seed.py
            measure_seed_train(sc, row, adapter, timer)
        elif adapter is None:
            row["train"] = None
        else:
            _measure_train(sc, name, row, adapter, timer)
    timer.run()
    return {name: row for name, row, _ in started}


def _measure_test(sc: Scale, name: str, timer: bench.InterleavedTimer) -> tuple[dict[str, Any], Any]:
    """The row with its parameters and test-time FLOPs; the test-time timing is added to ``timer``."""
    row: dict[str, Any] = {"scale": sc.name, "method": name, "display": DISPLAY.get(name, name), "notes": []}
    adapter = None if name in ZERO_SHOT else build(sc, name)
    row["options"] = OPTIONS.get(sc.name, {}).get(name, {})
    row["params"] = 0 if adapter is None else bench.count_parameters(adapter)
    if name in PAPER:
        row["paper"] = PAPER[name]
    modules = [sc.backbone.model] + ([adapter] if adapter is not None else [])

    # ---- test time: method part on image features (after any one-off label encoding)
    v = F.normalize(torch.randn(TEST_BATCH, sc.dim, generator=torch.Generator().manual_seed(2)), dim=-1).to(sc.device)
    fn = _test_fn(sc, name, adapter)
    if adapter is not None:
        adapter.eval()
    with torch.no_grad():
        one_off = _one_off_labels(adapter)
        if one_off is not None:                    # encoded once per label set, then cached
            _reset_caches(adapter)
            with _one_chunk(adapter):
                lc = bench.count_flops(one_off, modules=modules, fake=True)
            row["one_off_label_encoding_tflops"] = lc.forward / 1e12
            _reset_caches(adapter)
            with _stub_text_encoder(adapter, sc.dim):
                fn(v[:1])                          # fills the cache with stand-in features
        with _fake_friendly(), _one_chunk(adapter):
            c = bench.count_flops(lambda: fn(v[:1]), modules=modules, fake=True)
    row["test_method_flops_per_image"] = c.forward
    nimg = TEST_BATCH
    predicted = c.forward / max(sc.throughput, 1.0)
    if predicted > 5.0:                        # ConNegPT at ViT-B/16 on a CPU: one image, one round
        nimg = 1
    m = len(sc.neg_names)
    sub = None
    if predicted > sc.test_budget_s and adapter is not None and m > 1:
        # too slow to time in full here: time the same method on the first m' negatives (a measured lower
        # bound: fewer prompts per image) and scale that to all m negatives (an estimate)
        keep = max(1, int(m * sc.test_budget_s / predicted))
        sub = build(sc, name, num_neg=keep).eval()
        fn_t, predicted_t = _test_fn(sc, name, sub), predicted * keep / m
    else:
        keep, fn_t, predicted_t = m, fn, predicted
    rounds = sc.rounds if predicted_t * nimg * sc.rounds < 60 else 1

    def done(t: bench.Timing) -> None:
        measured_s = t.minimum / nimg
        method_s = measured_s * m / keep
        row["test"] = {"backbone_ms_per_image": 1e3 * sc.backbone_s_per_image,
                       "method_ms_per_image": 1e3 * method_s,
                       "ms_per_image": 1e3 * (sc.backbone_s_per_image + method_s), "images_timed": nimg,
                       "timing": t.to_dict(), "method_gflops_per_image": c.forward / 1e9,
                       "backbone_gflops_per_image": sc.backbone_flops_per_image / 1e9, "estimated": sub is not None}
        if sub is not None:
            row["test"].update(timed_num_neg=keep,
                               lower_bound_ms_per_image=1e3 * (sc.backbone_s_per_image + measured_s))
            row["notes"].append(f"test time: the method part was timed on the first {keep:,} of {m:,} negatives "
                                f"(measured lower bound {1e3 * (sc.backbone_s_per_image + measured_s):,.0f} ms/img) "
                                f"and scaled by {m / keep:.1f}; predicted {predicted:.0f} s for all > budget "
                                f"{sc.test_budget_s:.0f} s")

    timer.add(_no_grad(lambda: fn_t(v[:nimg])), rounds=rounds, warmup=1 if predicted_t * nimg < 30 else 0,
              min_total=MIN_TOTAL_S, then=done)
    return row, adapter


def _measure_train(sc: Scale, name: str, row: dict[str, Any], adapter, timer: bench.InterleavedTimer) -> None:
    """Training-step FLOPs and peak memory into ``row``; the step's timing is added to ``timer``."""
    modules = [sc.backbone.model, adapter]
    # ---- training step on cached crop features
    adapter.train()
    task = training_task(sc, adapter)
    batch = train_batch(sc)
    params = [p for p in adapter.parameters() if p.requires_grad]
    # the configured chunks (not _one_chunk): with more than one chunk a prompt bank checkpoints, and its backward
    # recomputes each chunk's forward (adapters/prompting.py); in one chunk it does not
    with _fake_friendly():
        fl = bench.count_flops(lambda: task(batch)["loss"], lambda out: torch.autograd.grad(out, params),
                               modules=modules, fake=True)
    if sc.name == "mini":                          # small enough to count for real too: the fake count must agree
        real = bench.count_flops(lambda: task(batch)["loss"], lambda out: torch.autograd.grad(out, params),
                                 modules=modules)
        row["fake_count_matches_real"] = (real.forward, real.backward) == (fl.forward, fl.backward)
    row["train"] = {"flops_forward": fl.forward, "flops_backward": fl.backward, "tflops": fl.total / 1e12,
                    "text_encoder_calls": text_encoder_calls(task, batch, adapter) if sc.name == "mini" else None,
                    "one_off_crop_encoding_tflops": (BATCH_ID + BATCH_NEG) * sc.backbone_flops_per_image / 1e12,
                    "one_off_crop_encoding_s": (BATCH_ID + BATCH_NEG) * sc.backbone_s_per_image}
    predicted = fl.total / max(sc.throughput, 1.0)

    def step():
        adapter.zero_grad(set_to_none=True)
        task(batch)["loss"].backward()

    if predicted <= sc.train_budget_s:
        rounds = sc.rounds if predicted * sc.rounds < 60 else 1
        row["train"].update(estimated=False, peak_memory_bytes=bench.peak_memory(step, sc.device))
        timer.add(step, rounds=rounds, warmup=1, min_total=MIN_TOTAL_S,
                  then=lambda t: row["train"].update(time_s=t.minimum, timing=t.to_dict()))
    else:
        row["train"].update(time_s=predicted, estimated=True, peak_memory_bytes=None)
        row["notes"].append(f"train step not run: {predicted:.0f} s predicted from its FLOPs at the backbone's "
                            f"{sc.throughput / 1e9:.1f} GFLOP/s > budget {sc.train_budget_s:.0f} s")


def text_encoder_calls(task, batch, adapter) -> int:
    """Text-encoder calls in the forward of one training step (a prompt learner: one per learned context when
    its labels fit one chunk; the backward recomputes each checkpointed chunk once more); 0 without a text path."""
    tp = getattr(getattr(adapter, "context", None), "text_path", None)
    if tp is None:
        return 0
    calls, real = [], tp.encode_embeddings
    tp.encode_embeddings = lambda x, pos: calls.append(1) or real(x, pos)
    try:
        task(batch)  # with gradients, as in training (no evaluation cache)
    finally:
        del tp.encode_embeddings
    return len(calls)


def _image_conditional(adapter) -> bool:
    """True when the tuned text features depend on the image (nothing to cache per label set)."""
    a = getattr(adapter, "tuner", adapter)       # a stacked adapter conditions like its tuner
    v = F.normalize(torch.ones(1, a.dim, device=a.base_text_features.device), dim=-1)
    try:
        with torch.no_grad(), _stub_text_encoder(a, a.dim):
            t = a.tuned_text_features(v)
    except (NotImplementedError, ValueError, TypeError):
        return True
    finally:
        _reset_caches(a)
    return t.ndim == 3


def _one_off_labels(adapter) -> Callable[[], Any] | None:
    """What a prompt learner encodes once per label set: its K×D text features (a stacked adapter: its prompt
    adapter's, at build time); None for feature tuners, zero-shot scores and image-conditional prompts."""
    if adapter is None or not getattr(adapter, "uses_text_encoder", False):
        return None
    base = getattr(adapter, "base", None)
    if base is not None and hasattr(adapter, "tuner"):
        return base.tuned_text_features
    if _image_conditional(adapter):
        return None
    return adapter.tuned_text_features


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
