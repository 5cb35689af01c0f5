"""What every recipe shares: the accelerator, the benchmark (mini world or a named suite), label features with
mined negatives, cached image features, evaluation of several methods, and the written outputs."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import get
from .errors import ClipoodError
from .evaluate import EvalSplit, SplitFeatures, evaluate_split, prepare_split

log = logging.getLogger("clipood")

#: defaults shared by all recipes (each recipe adds its own sections)
COMMON_DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/run",
    "model": "clipood-mini",
    "pretrained": None,
    "benchmark": "mini",
    "data_root": None,
    "cache_dir": None,
    "seed": 0,
    "cpu": None,
    "progress": True,
    "mini": {"seed": 0, "root": None},
    "negatives": {
        "num": 40, "fraction": 0.15, "quantile": 0.95, "corpus": None,
        "id_template": "a photo of a {}.", "noun_template": "a photo of a {}.", "adj_template": "a {} texture.",
    },
    "eval": {"score": "neglabel", "groups": 1, "logit_scale": 100.0, "batch_size": 256,
             "convention": "hendrycks", "plots": True, "mcm": True},
}


def cache_root(cfg) -> Path:
    c = get(cfg, "cache_dir")
    if c:
        return Path(c)
    env = os.environ.get("CLIPOOD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "clipood"


def make_accelerator(cfg):
    """An Accelerator on the GPU when there is one, else on the CPU (``cpu=True`` also enables multi-process
    CPU runs under ``accelerate launch --multi_gpu --num_processes N``)."""
    from accelerate import Accelerator

    cpu = get(cfg, "cpu")
    if cpu is None:
        cpu = not torch.cuda.is_available()
    return Accelerator(cpu=bool(cpu))


@dataclass
class Benchmark:
    backbone: Any
    splits: list[EvalSplit]
    corpus: Any
    train_spec: Any = None
    world_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def setup_benchmark(cfg, accelerator) -> Benchmark:
    """Load the backbone and the benchmark named by ``cfg['benchmark']`` (``mini`` = the embedded default)."""
    from .backbone import load_clip

    backbone = load_clip(cfg["model"], cfg.get("pretrained"), device=accelerator.device)
    notes = []
    if cfg["model"] == "clipood-tiny":
        notes.append("> **clipood-tiny has random weights: these numbers are meaningless (smoke test only).**")
    if cfg["benchmark"] == "mini":
        from .mini.build import MiniWorldConfig, build_world
        from .mini.protocol import mini_corpus, mini_splits, mini_train_spec

        mcfg = MiniWorldConfig(seed=int(get(cfg, "mini.seed", 0)))
        with accelerator.main_process_first():
            world = build_world(mcfg, root=get(cfg, "mini.root"), progress=accelerator.is_main_process and cfg["progress"])
        corpus = mini_corpus(world) if not get(cfg, "negatives.corpus") else _corpus(cfg)
        notes.append(f"Mini world seed {mcfg.seed} ({world.name}).")
        return Benchmark(backbone, mini_splits(world), corpus, mini_train_spec(world), world, notes)
    from .prompts import get_label_set
    from .suites import check_suite, get_suite

    suite = get_suite(cfg["benchmark"], root=cfg.get("data_root"))
    check_suite(suite, cfg.get("data_root"))
    if suite.label_set:
        classnames = get_label_set(suite.label_set).classnames
    else:
        from .datasets import build_dataset

        classnames = build_dataset(suite.id, root=cfg.get("data_root")).classnames
    split = EvalSplit("base", {suite.name: suite.id}, suite.ood, list(classnames), suite.description)
    return Benchmark(backbone, [split], _corpus(cfg), None, None, notes)


def _corpus(cfg):
    from .negatives import load_corpus, load_word_file

    path = get(cfg, "negatives.corpus")
    return load_word_file(path) if path else load_corpus()


def label_features(backbone, classnames, corpus, cfg, accelerator=None):
    """Frozen text features C (K×D) of the ID names then the mined negatives, and the NegativeSet.

    Mining runs on the main process first and is written to a file that the other ranks read, so every rank
    uses the same negatives."""
    import contextlib

    from .features import cache_key
    from .negatives import mine_or_load

    n = cfg["negatives"]
    path = cache_root(cfg) / "negatives" / f"{cache_key(backbone.identifier, sorted(classnames), corpus.digest(), n)}.tsv"
    ctx = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
    main = accelerator is None or accelerator.is_main_process
    with ctx:
        negs = mine_or_load(path, lambda t: backbone.encode_text(t), list(classnames), corpus,
                            backbone=backbone.identifier, num_negatives=n["num"], fraction=n["fraction"],
                            quantile=n["quantile"], id_template=n["id_template"], noun_template=n["noun_template"],
                            adj_template=n["adj_template"], progress=bool(cfg.get("progress")) and main)
    id_feats = backbone.encode_text(list(classnames), templates=[n["id_template"]])
    if len(negs) == 0:
        raise ClipoodError("no negative labels were mined; raise negatives.num or negatives.fraction")
    neg_feats = backbone.encode_text(negs.prompts())
    return torch.cat([id_feats, neg_feats]).float().cpu(), len(classnames), negs


def prepare_splits(bench: Benchmark, cfg, accelerator) -> list[SplitFeatures]:
    """Label features + cached image features for every split of the benchmark."""
    out = []
    for split in bench.splits:
        C, num_id, negs = label_features(bench.backbone, split.classnames, bench.corpus, cfg, accelerator)
        sf = prepare_split(split, bench.backbone, C, num_id, negatives=negs.words,
                           batch_size=get(cfg, "eval.batch_size", 256), accelerator=accelerator,
                           cache_dir=cache_root(cfg) / "features", progress=bool(cfg.get("progress")),
                           root=cfg.get("data_root"))
        out.append(sf)
    return out


@dataclass
class MethodSpec:
    """How to evaluate one method: cosine logits from features, and which score to apply."""

    name: str
    logits_fn: Callable[[torch.Tensor, SplitFeatures], torch.Tensor]
    score: str = "neglabel"
    temperature: float = 1.0


def evaluate_methods(methods: list[MethodSpec], sfs: list[SplitFeatures], cfg) -> tuple[list[dict], dict]:
    """Rows for every method × split, and raw scores ``{split: {method: {set: scores}}}`` for the plots."""
    e = cfg["eval"]
    rows, raw = [], {}
    for sf in sfs:
        raw[sf.split.name] = {}
        for m in methods:
            r, s = evaluate_split(m.name, m.logits_fn, sf, score=m.score, logit_scale=e["logit_scale"],
                                  groups=e["groups"], temperature=m.temperature, convention=e["convention"])
            rows += r
            raw[sf.split.name][m.name] = {k: v.numpy() for k, v in s.items()}
    return rows, raw


def write_outputs(rows, raw, out_dir, title: str, notes=(), plots: bool = True) -> Path:
    from .report import plot_histograms, plot_roc, write_results

    out = Path(out_dir)
    md = write_results(rows, out, title=title, notes=notes)
    if plots:
        for split, by_method in raw.items():
            plot_histograms(by_method, out / f"hist_{split}.png", title=f"{title}: {split}")
            plot_roc(by_method, out / f"roc_{split}.png", title=f"ROC: {split}")
    return md


def zero_shot_methods(cfg) -> list[MethodSpec]:
    from .evaluate import zero_shot_logits

    methods = [MethodSpec("NegLabel (zero-shot)", zero_shot_logits, "neglabel", 1.0)]
    if get(cfg, "eval.mcm", True):
        # MCM: max softmax over ID labels of cos / T with T = 1 (logits are 100·cos, so temperature 100)
        methods.insert(0, MethodSpec("MCM (zero-shot)", zero_shot_logits, "mcm", float(cfg["eval"]["logit_scale"])))
    return methods
