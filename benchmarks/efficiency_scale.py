"""The efficiency suite's scale and methods (see ``benchmarks/efficiency.py``, which measures them): one
:class:`Scale` (backbone, label set, batch), the training batch every method trains on, each method built on the
scale's label set with its own training task, and the stand-ins that let FLOPs be counted on fake tensors."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from clipood.efficiency import measure as bench
from clipood.training.task import TrainingTask

BATCH_ID, BATCH_NEG = 16, 16       # crops per training step (same batch for every method)
TEST_BATCH = 8                     # images per test-time call
LOGIT_SCALE = 100.0
ZERO_SHOT = ("neglabel", "mcm")
MIN_TOTAL_S = 0.25                 # a timed call of a few ms gets more rounds (up to 50): an undisturbed minimum

#: per-scale adapter options: paper settings where the paper gives them (CoOp/LoCoOp n_ctx 16)
OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "mini": {"nft": {"hidden_dim": 32}, "coop": {"ctx_init": "", "n_ctx": 16}, "locoop": {"ctx_init": "", "n_ctx": 16},
             "sct": {"ctx_init": "", "n_ctx": 16}, "stacked": {"tuner_options": {"hidden_dim": 32}}},
    "vit-b-16": {"nft": {"hidden_dim": 64}, "coop": {"ctx_init": "", "n_ctx": 16},
                 "locoop": {"ctx_init": "", "n_ctx": 16}, "sct": {"ctx_init": "", "n_ctx": 16}},
}
#: per-scale negative columns of methods whose own setting fixes them (ID-like's M = 100 OOD prompts fill the
#: negative columns at ImageNet size, not the 10,000 mined negatives of the scale)
NUM_NEG: dict[str, dict[str, int]] = {"vit-b-16": {"idlike": 100}}

#: paper Tab. 7 (RTX 3090, ImageNet-1k, 4-shot): train hours, test ms / image, training TFLOPs, parameters
PAPER = {
    "nft": {"method": "KR-NFT", "train_h": 0.25, "test_ms": 21.6, "tflops": 0.11, "params": "6K"},
    "locoop": {"method": "LoCoOp", "train_h": 0.33, "test_ms": 10.9, "tflops": 38.25, "params": "8K"},
    "negpt": {"method": "NegPT*", "train_h": 1.60, "test_ms": 21.5, "tflops": 193.76, "params": "2K"},
    "connegpt": {"method": "ConNegPT*", "train_h": 1.65, "test_ms": 936.1, "tflops": 194.53, "params": "3K"},
}

def _display() -> dict[str, str]:
    """Row names: the registry's (one naming everywhere), zero-shot scores as the recipes name them."""
    from adapters import DISPLAY_NAMES, display_name

    return {**DISPLAY_NAMES, "neglabel": "NegLabel (zero-shot)", "mcm": "MCM (zero-shot)",
            "stacked": display_name("nft", "coop")}


DISPLAY = _display()


# ------------------------------------------------------------------------------------------------ scale
@dataclass
class Scale:
    """A backbone, its label set and the measured cost of its image encoder."""

    name: str
    backbone: Any
    id_names: list[str]
    neg_names: list[str]
    text_features: torch.Tensor
    device: torch.device
    rounds: int
    train_budget_s: float
    test_budget_s: float = math.inf
    image: torch.Tensor = field(init=False)
    local_tokens: int = field(init=False, default=0)
    backbone_s_per_image: float = field(init=False, default=0.0)
    backbone_flops_per_image: int = field(init=False, default=0)
    throughput: float = field(init=False, default=0.0)   # FLOP/s of the backbone forward, this run
    notes: list[str] = field(default_factory=list)

    @property
    def clock(self) -> str:
        """``cpu`` (process CPU time: single-threaded CPU work, robust to other processes) or ``wall``."""
        return "cpu" if self.device.type == "cpu" and torch.get_num_threads() == 1 else "wall"

    @property
    def num_id(self) -> int:
        return len(self.id_names)

    @property
    def dim(self) -> int:
        return int(self.text_features.shape[1])

    def context(self, num_neg: int | None = None):
        """The adapter context; ``num_neg`` keeps only the first negatives (a lower-bound measurement)."""
        import adapters

        bb = self.backbone
        m = len(self.neg_names) if num_neg is None else int(num_neg)
        return adapters.AdapterContext.from_backbone(
            bb, self.id_names, self.neg_names[:m], id_templates=["a photo of a {}."],
            neg_templates=["a photo of a {}."], text_features=self.text_features[: self.num_id + m].to(self.device))

    def measure_backbone(self) -> None:
        """Image-encoder cost per image: FLOPs (exact) and time (minimum of ``rounds`` batches; timed again among
        the methods by :meth:`time_backbone`)."""
        bb = self.backbone
        size = bb.image_size
        self.image = torch.randn(TEST_BATCH, 3, size, size, device=self.device)
        c = bench.count_flops(lambda: bb.model.encode_image(self.image[:1]), modules=[bb.model], fake=True)
        self.backbone_flops_per_image = c.forward
        timer = bench.InterleavedTimer(self.device, clock=self.clock)
        timer.add(_no_grad(lambda: bb.encode_images(self.image)), rounds=self.rounds, warmup=1)
        (t,) = timer.run()
        with torch.no_grad():
            _, loc = bb.encode_images(self.image[:1], local=True)
        self.local_tokens = int(loc.shape[1])
        self.backbone_s_per_image = t.minimum / TEST_BATCH
        self.throughput = self.backbone_flops_per_image / max(self.backbone_s_per_image, 1e-12)
        self.backbone_timing = t.to_dict()

    def time_backbone(self, timer: bench.InterleavedTimer) -> None:
        """Time the image encoder again among the methods' test parts (interleaved rounds; the minimum per image
        becomes the backbone's share of every test time measured in that run). Not where one batch takes
        seconds (ViT-B/16 on a CPU): the measurement of :meth:`measure_backbone` stands."""
        if self.backbone_s_per_image * TEST_BATCH * (self.rounds + 1) > 10.0:
            return

        def done(t: bench.Timing) -> None:
            self.backbone_s_per_image = t.minimum / TEST_BATCH
            self.backbone_timing = t.to_dict()

        timer.add(_no_grad(lambda: self.backbone.encode_images(self.image)), rounds=self.rounds, warmup=1,
                  min_total=MIN_TOTAL_S, then=done)

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.backbone.model_name, "num_id": self.num_id, "num_neg": len(self.neg_names),
                "dim": self.dim, "batch_id_crops": BATCH_ID, "batch_neg_crops": BATCH_NEG, "test_batch": TEST_BATCH,
                "local_tokens": self.local_tokens, "rounds": self.rounds,
                "timing": f"minimum of {self.rounds}+ interleaved rounds, "
                          + ("process CPU time" if self.clock == "cpu" else "wall clock"),
                "train_budget_s": self.train_budget_s, "test_budget_s": self.test_budget_s,
                "backbone_ms_per_image": 1e3 * self.backbone_s_per_image,
                "backbone_gflops_per_image": self.backbone_flops_per_image / 1e9,
                "throughput_gflops": self.throughput / 1e9, "backbone_timing": self.backbone_timing,
                "notes": self.notes}


def _negative_words(n: int) -> list[str]:
    """n distinct WordNet nouns (letters and spaces only), spread over the shipped list."""
    from importlib.resources import files

    lines = files("clipood").joinpath("data/wordnet_nouns.txt").read_text(encoding="utf-8").splitlines()
    words = [w.replace("_", " ") for w in lines if w and not w.startswith("#") and w.replace("_", "").isalpha()]
    step = max(1, len(words) // n)
    out = list(dict.fromkeys(words[::step]))[:n]
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} usable nouns for {n} negatives")
    return out


def make_scale(name: str, *, rounds: int | None = None, device: str | None = None,
               train_budget_s: float | None = None) -> Scale:
    """``mini``: the shipped clipood-mini CLIP, 10 Base shapes + 40 negatives (the default run's counts), real
    text features. ``vit-b-16``: open_clip ViT-B-16 with random weights, 1,000 ImageNet names + 10,000 nouns."""
    import clipood

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = dev.type == "cuda"
    if name == "mini":
        from clipood.mini.shapes import SHAPE_NAMES

        bb = clipood.load_clip("clipood-mini", device=dev)
        ids, negs = list(SHAPE_NAMES[:10]), _negative_words(40)
        with torch.no_grad():
            feats = torch.cat([bb.encode_text(ids, templates=["a photo of a {}."]),
                               bb.encode_text([f"a photo of a {w}." for w in negs])]).float()
        sc = Scale(name, bb, ids, negs, feats, dev, rounds or 5, train_budget_s or math.inf)
    elif name == "vit-b-16":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        bb = clipood.load_clip("ViT-B-16", device=dev, dtype=torch.bfloat16 if gpu else None)
        ids, negs = list(IMAGENET_CLASSNAMES), _negative_words(10_000)
        g = torch.Generator().manual_seed(0)
        feats = F.normalize(torch.randn(len(ids) + len(negs), bb.embed_dim, generator=g), dim=-1)
        sc = Scale(name, bb, ids, negs, feats, dev, rounds or (5 if gpu else 2),
                   train_budget_s or (math.inf if gpu else 30.0))
        sc.notes.append("random weights and random unit text features (costs do not depend on values)")
    else:
        raise ValueError(f"unknown benchmark scale {name!r}; choose mini or vit-b-16")
    sc.measure_backbone()
    if name == "vit-b-16" and not gpu:
        # long enough that a method timed on a part of its negatives shows a ratio of ~30 image encodings
        sc.test_budget_s = max(60.0, 30 * sc.backbone_s_per_image)
    return sc


# --------------------------------------------------------------------------------------------- batches
def train_batch(sc: Scale, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d = sc.dim

    def unit(*shape):
        return F.normalize(torch.randn(*shape, d, generator=g), dim=-1).to(sc.device)

    return {"id_features": unit(BATCH_ID), "id_labels": torch.randint(0, sc.num_id, (BATCH_ID,), generator=g).to(
        sc.device), "neg_features": unit(BATCH_NEG), "id_local": unit(BATCH_ID, sc.local_tokens),
        "neg_local": unit(BATCH_NEG, sc.local_tokens)}


def build(sc: Scale, name: str, num_neg: int | None = None):
    """The adapter ``name`` (default options, except the scale's :data:`OPTIONS`) on the scale's labels."""
    import adapters

    torch.manual_seed(0)
    ctx = sc.context(num_neg if num_neg is not None else NUM_NEG.get(sc.name, {}).get(name))
    opts = OPTIONS.get(sc.name, {}).get(name, {})
    if sc.name == "mini":
        return adapters.build_adapter(name, ctx, **opts).to(sc.device)
    # a stacked adapter encodes its prompt adapter's labels at build time: counted as its one-off, not paid here
    holder = type("_Holder", (), {"context": ctx})()
    with _stub_text_encoder(holder, sc.dim):
        return adapters.build_adapter(name, ctx, **opts).to(sc.device)


def training_task(sc: Scale, adapter) -> TrainingTask:
    with torch.no_grad(), _stub_text_encoder(adapter, sc.dim):
        has_base_cos = adapter(sc.text_features[:1].to(sc.device)).base_cos is not None
    _reset_caches(adapter)
    weights = {"cls": 1.0, "ood": 0.3, **({"kr": 100.0} if has_base_cos else {})}
    task = (getattr(adapter, "task_cls", None) or TrainingTask)(adapter, weights, logit_scale=LOGIT_SCALE)
    if hasattr(task, "set_negative_images"):  # LAPT trains on images of its negative labels too
        g = torch.Generator().manual_seed(1)
        k = adapter.num_labels
        # stand-in frozen label features for the mixing (a one-off encoding, not a per-step cost)
        mix = F.normalize(torch.randn(k, 1, sc.dim, generator=g), dim=-1).to(sc.device)
        task.set_negative_images(torch.randn(BATCH_NEG, sc.dim, generator=g).to(sc.device),
                                 torch.randint(sc.num_id, k, (BATCH_NEG,), generator=g).to(sc.device),
                                 mix_features=mix)
    return task


# (both used here and by benchmarks/efficiency.py, which imports them: the split at the scale/measure seam
# had left them on the other side)
def _no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    def call():
        with torch.no_grad():
            return fn()
    return call


def _reset_caches(adapter) -> None:
    """Drop cached label features (those made on fake or stand-in tensors) by re-setting the mode."""
    if adapter is None:
        return
    adapter.train(adapter.training)
    base = getattr(adapter, "base", None)
    if base is not None:
        base.train(base.training)


@contextlib.contextmanager
def _fake_friendly():
    """Fake tensors have no values: give the two value-dependent steps of the methods a shape-only twin.

    ``torch.unique(rows, dim=0)`` (ConNegPT: encode each distinct condition once) → every row distinct, which is
    exact for this suite's random conditions; LoCoOp's and SCT's "any OOD patch?" branch → always taken (their
    entropies are element-wise work, which FLOP counts do not include); ConNegPT's ``torch.equal`` of a step's
    conditions with the first call's → False (the ID and negative crops here are different random features).
    """
    import adapters.locoop as locoop
    import adapters.sct as sct

    real_unique, real_entropy, real_sct = torch.unique, locoop.locoop_entropy_loss, sct.sct_entropy_loss

    def unique(x, *args, dim=None, return_inverse=False, **kwargs):
        if dim == 0 and return_inverse:
            return x, torch.arange(x.shape[0], device=x.device)
        return real_unique(x, *args, dim=dim, return_inverse=return_inverse, **kwargs)

    def entropy(scaled, labels, top_k, eps=0.0):
        mask = locoop.ood_patch_mask(scaled.detach(), labels, top_k).float()
        return -(locoop.patch_entropy(scaled) * mask).sum() / mask.numel()

    def sct_entropy(scaled, labels, top_k, confidence, eps=1e-7, log_eps=1e-5):  # SCT's weighted twin
        mask = locoop.ood_patch_mask(scaled.detach(), labels, top_k).float()
        return -(locoop.patch_entropy(scaled, log_eps) * (eps + confidence)[:, None] * mask).sum() / mask.numel()

    def equal(a, b):  # ConNegPT's "same conditions as the step's first call?": never, for these random crops
        from torch._subclasses.fake_tensor import FakeTensor

        return False if isinstance(a, FakeTensor) or isinstance(b, FakeTensor) else real_equal(a, b)

    real_equal = torch.equal
    torch.unique, locoop.locoop_entropy_loss, sct.sct_entropy_loss = unique, entropy, sct_entropy
    torch.equal = equal
    try:
        yield
    finally:
        torch.unique, locoop.locoop_entropy_loss, sct.sct_entropy_loss = real_unique, real_entropy, real_sct
        torch.equal = real_equal


@contextlib.contextmanager
def _one_chunk(adapter):
    """Encode all prompts in one chunk while counting test-time FLOPs on fake tensors (fewer fake calls, the same
    FLOPs without gradients: every sequence costs the same in any chunk; the real runs keep the configured chunk
    size). Not for training steps: there the chunking decides whether the backward recomputes (checkpointing)."""
    from adapters.prompting import PromptBank

    if adapter is None:
        yield
        return
    mods = [adapter] + [m for m in (getattr(adapter, "base", None), getattr(adapter, "tuner", None)) if m is not None]
    saved = []
    for mod in mods:
        for sub in mod.modules():
            if isinstance(sub, PromptBank):
                saved.append((sub, "chunk_size", sub.chunk_size))
                sub.chunk_size = 1 << 40
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "chunk_size"):
            saved.append((cfg, "chunk_size", cfg.chunk_size))
            cfg.chunk_size = 1 << 40
    try:
        yield
    finally:
        for obj, attr, val in reversed(saved):
            setattr(obj, attr, val)


@contextlib.contextmanager
def _stub_text_encoder(adapter, dim: int):
    """Replace the frozen text encoder by random unit rows for a while: fills a prompt learner's once-per-label-
    set feature cache without paying for it (the one-off is counted and, when it fits, timed apart)."""
    tp = getattr(getattr(adapter, "context", None), "text_path", None)
    if tp is None:
        yield
        return
    tp.encode_embeddings = lambda x, pos: torch.randn(x.shape[0], dim, device=x.device)
    try:
        yield
    finally:
        del tp.encode_embeddings
