"""The efficiency suite's rows of the seed methods with recipes of their own (issue 23): CLIPN, ZOC and the
fine-tuned visual encoder. They are not adapters, so each is built here from the module its recipe trains, on the
scale's backbone (random weights at ViT-B/16 size), and measured like the adapters (``benchmarks/efficiency.py``):

- **CLIPN** (``recipes/clipn.py``): trainable = the "no" text path, :class:`adapters.clipn.NoTextEncoder` — a copy
  of the whole text tower (token and positional embeddings, every block, final norm, projection) + 16 additive
  prompts of L×W. Test part: CTW on the cached "yes" and "no" class features (the "no" ones are one pass of the
  ID prompts through the "no" path per label set, cached; not counted here). Train step: ``BATCH_ID + BATCH_NEG``
  image–caption pairs (frozen image and caption features cached, the captions "a photo of a <ID name>.") through
  the "no" path with the released loss; FLOPs counted on real tensors (the path reads the captions' end
  positions).
- **ZOC** (``recipes/zoc.py``, offline retrieval): nothing is trained (0 parameters, no train step). Test part:
  the k = 5 nearest vocabulary words per image (the scale's negative words stand in for the vocabulary) and the
  ZOC score over [seen ∪ candidates].
- **Fine-tuned encoder** (``recipes/finetune.py``, ``finetune.trainable_blocks=1``): trainable = a copy of the
  image tower's last block, its final norm and projection (the text classifier stays frozen). At test time the
  image encoder is the frozen trunk + that copy (the backbone's FLOPs); the test part is MSP on its logits.
  Train step: CE on ``BATCH_ID + BATCH_NEG`` cached trunk outputs, as the recipe trains.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clipood.efficiency import measure as bench

SEED = ("clipn", "zoc", "finetune")
SEED_DISPLAY = {"clipn": "CLIPN (CTW)", "zoc": "ZOC (retrieval, k=5)", "finetune": "Fine-tuned encoder (MSP)"}
ZOC_K = 5


class SeedCost:
    """One seed method at one scale: ``module`` (trainable parameters; None for ZOC), ``test(v)`` (image
    features → scores), ``loss()`` (one training step's loss; None: nothing trains) and whether its FLOPs may be
    counted on fake tensors."""

    def __init__(self, module, test, loss=None, fake: bool = True, notes: list[str] | None = None):
        self.module, self.test, self.loss, self.fake, self.notes = module, test, loss, fake, notes or []

    def params(self) -> list[torch.nn.Parameter]:
        return [] if self.module is None else [p for p in self.module.parameters() if p.requires_grad]


def build_seed(sc, name: str) -> SeedCost:
    torch.manual_seed(0)
    bb, n, g = sc.backbone, sc.num_id, torch.Generator().manual_seed(3)
    text = sc.text_features.to(sc.device)
    b = _batch()
    if name == "clipn":
        from adapters.clipn import NoTextEncoder, clipn_loss, ctw_score

        enc = NoTextEncoder(bb, num_prompts=16).to(sc.device)
        no = F.normalize(torch.randn(n, sc.dim, generator=g), dim=-1).to(sc.device)  # stand-in cached features
        tokens = bb.tokenize([f"a photo of a {c}." for c in (sc.id_names * b)[:b]]).to(sc.device)
        v = F.normalize(torch.randn(b, sc.dim, generator=g), dim=-1).to(sc.device)
        t = F.normalize(torch.randn(b, sc.dim, generator=g), dim=-1).to(sc.device)
        prompt = torch.randint(0, enc.num_prompts + 1, (b,), generator=g).to(sc.device)

        def loss():
            return clipn_loss(v, t, F.normalize(enc(tokens, prompt).float(), dim=-1), 100.0)["loss"]

        return SeedCost(enc, lambda x: ctw_score(100.0 * x @ text[:n].T, 100.0 * x @ no.T), loss, fake=False,
                        notes=[f"train step: {b} image–caption pairs through the 'no' text path (frozen features "
                               f"cached); its 'no' class features: one pass of the ID prompts per label set "
                               f"(cached, not counted)"])
    if name == "zoc":
        from adapters.zoc import RetrievalCandidates, zoc_score

        vocab = text[n:]
        gen = RetrievalCandidates(list(sc.neg_names), vocab, k=min(ZOC_K, len(sc.neg_names)), seen=sc.id_names)

        def test(x):
            return zoc_score(100.0 * x @ text[:n].T, 100.0 * x @ vocab.T, gen(x))

        return SeedCost(None, test, None, fake=False,
                        notes=[f"the scale's {len(sc.neg_names):,} negative words stand in for ZOC's vocabulary"])
    if name == "finetune":
        from clipood.training.finetune import FinetunedClassifier, split_image_tower

        split = split_image_tower(bb, 1)
        with torch.no_grad():
            h1 = split.trunk(sc.image[:1].to(sc.device))
        model = FinetunedClassifier(split.head, text[:n], 100.0).to(sc.device)
        h = torch.randn(b, *h1.shape[1:], generator=g).to(sc.device, h1.dtype)
        y = torch.randint(0, n, (b,), generator=g).to(sc.device)

        def loss():
            return F.cross_entropy(model(h), y)

        def test(x):
            return F.softmax(100.0 * x @ model.weight.T, dim=1).amax(1)

        return SeedCost(model, test, loss, notes=[f"train step: CE on {b} cached trunk outputs; image encoder at "
                                                  f"test time: the frozen trunk + the fine-tuned copy of the last "
                                                  f"block (the backbone's FLOPs)"])
    raise ValueError(f"unknown seed method {name!r}; choose one of {', '.join(SEED)}")


def _batch() -> int:
    from efficiency_scale import BATCH_ID, BATCH_NEG

    return BATCH_ID + BATCH_NEG


def measure_seed_test(sc, name: str, timer) -> tuple[dict[str, Any], SeedCost]:
    """The row (parameters, test-time FLOPs; the test-time timing added to ``timer``), as ``_measure_test``."""
    from efficiency_scale import MIN_TOTAL_S, TEST_BATCH

    m = build_seed(sc, name)
    row: dict[str, Any] = {"scale": sc.name, "method": name, "display": SEED_DISPLAY[name], "notes": list(m.notes),
                           "options": {}, "params": 0 if m.module is None else bench.count_parameters(m.module)}
    v = F.normalize(torch.randn(TEST_BATCH, sc.dim, generator=torch.Generator().manual_seed(2)), dim=-1).to(sc.device)
    if m.module is not None:
        m.module.eval()
    with torch.no_grad():
        c = bench.count_flops(lambda: m.test(v[:1]), modules=[sc.backbone.model], fake=False)

    def done(t: bench.Timing) -> None:
        s = t.minimum / TEST_BATCH
        row["test"] = {"backbone_ms_per_image": 1e3 * sc.backbone_s_per_image, "method_ms_per_image": 1e3 * s,
                       "ms_per_image": 1e3 * (sc.backbone_s_per_image + s), "images_timed": TEST_BATCH,
                       "timing": t.to_dict(), "method_gflops_per_image": c.forward / 1e9,
                       "backbone_gflops_per_image": sc.backbone_flops_per_image / 1e9, "estimated": False}

    def call():
        with torch.no_grad():
            return m.test(v)

    timer.add(call, rounds=sc.rounds, warmup=1, min_total=MIN_TOTAL_S, then=done)
    return row, m


def measure_seed_train(sc, row: dict[str, Any], m: SeedCost, timer) -> None:
    """Training-step FLOPs, peak memory and timing (or an estimate beyond the scale's budget), as
    ``_measure_train``; ``row["train"] = None`` when nothing trains."""
    from efficiency_scale import MIN_TOTAL_S

    if m.loss is None:
        row["train"] = None
        return
    m.module.train()
    params = m.params()
    fl = bench.count_flops(m.loss, lambda out: torch.autograd.grad(out, params), modules=[sc.backbone.model, m.module],
                           fake=m.fake)
    row["train"] = {"flops_forward": fl.forward, "flops_backward": fl.backward, "tflops": fl.total / 1e12,
                    "text_encoder_calls": None, "batch": _batch()}

    def step():
        m.module.zero_grad(set_to_none=True)
        m.loss().backward()

    predicted = fl.total / max(sc.throughput, 1.0)
    if predicted <= sc.train_budget_s:
        rounds = sc.rounds if predicted * sc.rounds < 60 else 1
        row["train"].update(estimated=False, peak_memory_bytes=bench.peak_memory(step, sc.device))
        timer.add(step, rounds=rounds, warmup=1, min_total=MIN_TOTAL_S,
                  then=lambda t: row["train"].update(time_s=t.minimum, timing=t.to_dict()))
    else:
        row["train"].update(time_s=predicted, estimated=True, peak_memory_bytes=None)
        row["notes"].append(f"train step not run: {predicted:.0f} s predicted from its FLOPs at the backbone's "
                            f"{sc.throughput / 1e9:.1f} GFLOP/s > budget {sc.train_budget_s:.0f} s")
