"""What every recipe shares: the accelerator, the benchmark (mini world or a named suite), label features with
mined negatives, cached image features, evaluation of several methods, and the written outputs."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import flat_leaves, get
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
    "log_with": None,  # an Accelerate tracker for training logs: tensorboard, wandb, ... (must be installed)
    "mini": {"seed": 0, "root": None, "train_per_class": 16, "test_per_class": 50, "ood_per_set": 250,
             "style_per_class": 30},
    "id_data": {},
    "ood_data": {},
    "classes": None,  # a subset of the suite's ID classes (names or WordNet IDs), labelled in list order
    # real benchmarks: more evaluation splits (paper Tab. 2 and 3), suite names from clipood.suites
    "new_class_suites": [],
    "new_style_suites": [],
    # None = the benchmark's default: the mini world uses 40 negatives and "a photo of a {}." prompts; real
    # benchmarks NegLabel's rule (lowest 15 % per part of speech) and its prompts ("the nice {}.", ...)
    "negatives": {
        "num": None, "fraction": 0.15, "quantile": 0.95, "corpus": None,
        "id_template": None, "noun_template": None, "adj_template": None,
    },
    # score: what tuned methods are scored with (zero-shot rows are always NegLabel, plus MCM where enabled)
    "eval": {"score": "neglabel", "groups": 1, "logit_scale": 100.0, "batch_size": 256,
             "convention": None, "plots": True, "mcm": True},  # convention None: openood for openood-* suites
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
    log_with = cfg.get("log_with")
    kwargs = {"log_with": log_with, "project_dir": cfg.get("output_dir")} if log_with else {}
    try:
        return Accelerator(cpu=bool(cpu), **kwargs)
    except (ValueError, ImportError) as e:
        raise ClipoodError(f"log_with={log_with!r} is not available ({e}); install that tracker or drop "
                           f"log_with") from None


@dataclass
class Benchmark:
    backbone: Any
    splits: list[EvalSplit]
    corpus: Any
    train_spec: Any = None
    world_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def check_config(cfg) -> None:
    """Validate the cheap settings before any model, image or cache is touched, so that a typo or an
    out-of-range value fails in seconds instead of after the features are encoded."""
    from .metrics import CONVENTIONS
    from .scores import get_score

    e = cfg.get("eval") or {}
    if e.get("score") is not None:
        get_score(e["score"])
    if e.get("convention") is not None and e["convention"] not in CONVENTIONS:
        from .errors import unknown

        raise unknown("metric convention (eval.convention)", e["convention"], CONVENTIONS)
    if "losses" not in cfg:  # not a training recipe
        return
    from ._compat import import_adapters
    from .crops import CropConfig
    from .method import check_loss_weights

    check_loss_weights(cfg["losses"])
    train_config(cfg)
    c = dict(cfg.get("crops") or {})
    for k in ("scale", "ratio"):
        if isinstance(c.get(k), list):
            c[k] = tuple(c[k])
    CropConfig(**c, seed=cfg["seed"])
    shots = cfg.get("shots")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 0):
        raise ClipoodError(f"shots={shots!r} is invalid; use an integer >= 1 (or 0 for every training image)")
    a = cfg.get("adapter") or {}
    if not cfg.get("init_adapter"):
        spec = import_adapters().get_adapter_spec(a.get("name"))
        spec.config_cls.from_dict(dict(a.get("options") or {}), source="adapter.options")


def setup_benchmark(cfg, accelerator) -> Benchmark:
    """The benchmark named by ``cfg['benchmark']`` (``mini`` = the embedded default) and the backbone. Data are
    checked first (a missing file is reported before minutes of weight loading)."""
    from .backbone import load_clip

    from .data_checks import check_data

    check_config(cfg)
    _fill_negative_defaults(cfg)
    check_data(cfg)  # every data problem of every split, before any model work
    bench = _setup_data(cfg, accelerator)
    from .report import convention_note
    from .suites import default_convention

    if cfg["eval"].get("convention") is None:
        cfg["eval"]["convention"] = default_convention(cfg["benchmark"])
    bench.notes.append(convention_note(cfg["eval"]["convention"]))
    bench.backbone = load_clip(cfg["model"], cfg.get("pretrained"), device=accelerator.device)
    return bench


def _setup_data(cfg, accelerator) -> Benchmark:
    backbone = None  # loaded by setup_benchmark once the data are known to be there
    notes = []
    if cfg["model"] == "clipood-tiny":
        notes.append("> **clipood-tiny has random weights: these numbers are meaningless (smoke test only).**")
    if cfg["benchmark"] == "mini":
        from .mini.build import MiniWorldConfig, build_world
        from .mini.protocol import mini_corpus, mini_splits, mini_train_spec

        m = cfg["mini"]
        mcfg = MiniWorldConfig(seed=int(m["seed"]), train_per_class=int(m["train_per_class"]),
                               test_per_class=int(m["test_per_class"]), ood_per_set=int(m["ood_per_set"]),
                               style_per_class=int(m["style_per_class"]))
        with accelerator.main_process_first():
            world = build_world(mcfg, root=get(cfg, "mini.root"), progress=accelerator.is_main_process and cfg["progress"])
        corpus = mini_corpus(world) if not get(cfg, "negatives.corpus") else _corpus(cfg)
        notes.append(f"Mini world seed {mcfg.seed} ({world.name}).")
        return Benchmark(backbone, mini_splits(world), corpus, mini_train_spec(world), world, notes)
    from .suites import check_suite, get_suite

    if cfg["benchmark"] == "custom":
        # any dataset specs: id_data (one spec) and ood_data (name → spec), e.g. generated ImageFolders
        from .datasets import build_dataset, spec_from_dict

        if not cfg.get("id_data") or not cfg.get("ood_data"):
            raise ClipoodError("benchmark=custom needs id_data (a dataset spec) and ood_data (name: spec, ...)")
        id_spec = spec_from_dict(cfg["id_data"])
        names = build_dataset(id_spec, root=cfg.get("data_root")).classnames
        if not names:
            raise ClipoodError("benchmark=custom: the ID dataset has no class names (use an ImageFolder with one "
                               "folder per class, or set classnames in id_data)")
        from .datasets import as_ood_spec

        ood = {k: as_ood_spec(spec_from_dict(v)) for k, v in cfg["ood_data"].items()}
        split = EvalSplit("base", {"id": id_spec}, ood, list(names), "custom datasets")
        return Benchmark(backbone, [split], _corpus(cfg), None, None, notes)

    root = cfg.get("data_root")
    suite = get_suite(cfg["benchmark"], root=root, classes=cfg.get("classes"))
    extra = [("new_class", n) for n in cfg.get("new_class_suites") or []]
    extra += [("new_style", n) for n in cfg.get("new_style_suites") or []]
    suites = [("base", suite)] + [(k, get_suite(n, root=root)) for k, n in extra]
    problems = []
    for _, s_ in suites:  # report every missing file of every suite at once
        try:
            check_suite(s_, root)
        except ClipoodError as e:
            problems.append(str(e))
    if problems:
        raise ClipoodError(" | ".join(problems))

    def names(s_):
        from .suites import suite_classnames

        return suite_classnames(s_, root)

    splits = []
    for kind, s_ in suites:
        # unseen styles keep the Base OOD sets (paper §4.1); unseen classes bring their own
        ood = suite.ood if kind == "new_style" else s_.ood
        groups = suite.groups if kind == "new_style" else s_.groups
        splits.append(EvalSplit(kind, {s_.name: s_.id}, ood, names(s_), s_.description, groups=groups))
    return Benchmark(backbone, splits, _corpus(cfg), None, None, notes)


MINI_NEGATIVES = {"num": 40, "id_template": "a photo of a {}.", "noun_template": "a photo of a {}.",
                  "adj_template": "a {} texture."}
NEGLABEL_NEGATIVES = {"num": None, "id_template": "the nice {}.", "noun_template": "the nice {}.",
                      "adj_template": "This is a {} photo."}


def _fill_negative_defaults(cfg) -> None:
    """Resolve ``None`` negative-label settings to the benchmark's defaults (in place)."""
    src = MINI_NEGATIVES if cfg["benchmark"] == "mini" else NEGLABEL_NEGATIVES
    for k, v in src.items():
        if cfg["negatives"].get(k) is None:
            cfg["negatives"][k] = v


def _corpus(cfg):
    from .negatives import load_corpus, load_word_file

    path = get(cfg, "negatives.corpus")
    return load_word_file(path) if path else load_corpus()


def label_features(backbone, classnames, corpus, cfg, accelerator=None):
    """Frozen text features C (K×D) of the ID names then the mined negatives, and the NegativeSet; mined and
    encoded once per backbone, corpus and settings (cached; see `clipood.label_features`)."""
    from .label_features import label_text_features

    return label_text_features(backbone, classnames, corpus, cfg["negatives"], cache_root(cfg),
                               accelerator=accelerator, progress=bool(cfg.get("progress")))


def prepare_splits(bench: Benchmark, cfg, accelerator) -> list[SplitFeatures]:
    """Label features + cached image features for every split of the benchmark."""
    out = []
    labels = {}  # splits with the same ID classes (Base and unseen styles) share their label features
    for split in bench.splits:
        key = tuple(split.classnames)
        if key not in labels:
            labels[key] = label_features(bench.backbone, split.classnames, bench.corpus, cfg, accelerator)
        C, num_id, negs = labels[key]
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
    logits_fn: Callable[[dict, SplitFeatures], torch.Tensor]
    score: str = "neglabel"
    temperature: float = 1.0


def evaluate_methods(methods: list[MethodSpec], sfs: list[SplitFeatures], cfg) -> tuple[list[dict], dict]:
    """Rows for every method × split, and raw scores ``{split: {method: {set: scores}}}`` for the plots."""
    from .evaluate import METRIC_KEYS

    e = cfg["eval"]
    rows, raw = [], {}
    groups: dict[str, list[SplitFeatures]] = {}
    for sf in sfs:
        groups.setdefault(sf.split.name, []).append(sf)
    for split, members in groups.items():
        raw[split] = {m.name: {} for m in methods}
        for m in methods:
            collapsed = []
            for sf in members:
                r, sc = evaluate_split(m.name, m.logits_fn, sf, score=m.score, logit_scale=e["logit_scale"],
                                       groups=e["groups"], temperature=m.temperature,
                                       convention=e.get("convention") or "hendrycks")
                if len(members) == 1:
                    rows += r
                    raw[split][m.name].update({k: v.numpy() for k, v in sc.items()})
                else:
                    # several ID datasets in one split (CIFAR-10, CIFAR-100, ... as in Tab. 2): one row each,
                    # averaged over that dataset's own OOD sets, then the average over datasets
                    ident = next(iter(sf.split.id_sets))
                    avg = dict(r[-1], dataset=ident)
                    collapsed.append(avg)
                    raw[split][m.name].update({k if k.startswith("id/") else f"ood/{ident}:{k[4:]}": v.numpy()
                                               for k, v in sc.items()})
            if collapsed:
                mean = {k: sum(c[k] for c in collapsed) / len(collapsed) for k in (*METRIC_KEYS, "id_acc")}
                rows += collapsed + [{"method": m.name, "split": split, "dataset": "average", **mean}]
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
    score = get(cfg, "eval.score", "neglabel")
    if score not in ("neglabel", "mcm"):  # the tuned methods' score gets its zero-shot baseline too
        methods.append(MethodSpec(f"{score} (zero-shot)", zero_shot_logits, score, 1.0))
    if get(cfg, "eval.mcm", True):
        # MCM: max softmax over ID labels of cos / T with T = 1 (logits are 100·cos, so temperature 100)
        methods.insert(0, MethodSpec("MCM (zero-shot)", zero_shot_logits, "mcm", float(cfg["eval"]["logit_scale"])))
    return methods


# ------------------------------------------------------------------------------------------------ training
TRAIN_DEFAULTS: dict[str, Any] = {
    "method_name": "KR-NFT",
    "adapter": {"name": "nft", "options": {}},
    "losses": {"cls": 1.0, "ood": 0.3, "kr": 100.0, "kr_logit": 0.0, "kr_prob": 0.0},
    "cls_groups": 1,
    "shots": 4,
    "crops": {"num_crops": 32, "num_selected": 8, "scale": [0.08, 1.0], "ratio": [0.75, 1.3333333],
              "flip": True, "color_jitter": False, "grayscale": False, "prompt": "a photo of a {}."},
    "train": {},
    "resume": True,
    "init_adapter": None,
    "train_data": {},
    "train_classes": "exact",  # the training data's classes (by name) must be the ID classes; "subset": some of them
}


def train_config(cfg):
    from dataclasses import fields

    from .engine import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    extra = sorted(set(cfg.get("train", {})) - names)
    if extra:
        from .errors import did_you_mean

        raise ClipoodError(f"unknown config key 'train.{extra[0]}'{did_you_mean(extra[0], names)}; "
                           f"valid train keys: {', '.join(sorted(names))}")
    return TrainConfig(**{**cfg.get("train", {}), "seed": cfg["train"].get("seed", cfg["seed"])})


def get_suite_label_set(name: str) -> str | None:
    from .suites import get_suite

    return get_suite(name).label_set


def build_crop_data(bench: Benchmark, base_sf: SplitFeatures, cfg, accelerator):
    """Few-shot sample of the training pool → P crops per image → Q ID + Q negative crops, encoded once and
    cached (a second run with other loss weights re-encodes nothing)."""
    from .crops import CropConfig, build_crop_cache
    from .data_checks import training_dataset
    from .fewshot import sample_few_shot

    if bench.train_spec is None:
        spec = cfg.get("train_data")
        if not spec:
            raise ClipoodError("no training data: set train_data (a dataset spec) for this benchmark")
        bench.train_spec = spec
    suite_set = None if cfg["benchmark"] in ("mini", "custom") else get_suite_label_set(cfg["benchmark"])
    # labels by name: the training classes are matched to the ID classes, whose names rank the crops
    ds = training_dataset(bench.train_spec, base_sf.split.classnames, label_set=suite_set, classes=cfg.get("classes"),
                          mode=cfg.get("train_classes") or "exact", root=cfg.get("data_root"))
    labels = [lab for _, lab in ds.samples]
    idx = sample_few_shot(labels, cfg["shots"], seed=cfg["seed"], classnames=ds.classnames)
    c = dict(cfg["crops"])
    c["scale"], c["ratio"] = tuple(c["scale"]), tuple(c["ratio"])
    crop_cfg = CropConfig(**c, seed=cfg["seed"])
    return build_crop_cache(bench.backbone, ds, idx, crop_cfg, ds.classnames, accelerator=accelerator,
                            cache_dir=cache_root(cfg) / "crops", progress=bool(cfg.get("progress")))


def build_method(cfg, text_features, num_id):
    """Adapter (by registry name, seeded) + weighted loss terms from the config."""
    from ._compat import import_adapters
    from .method import Method

    adapters = import_adapters()
    torch.manual_seed(cfg["seed"])
    a = cfg["adapter"]
    if cfg.get("init_adapter"):
        adapter = adapters.load_adapter(cfg["init_adapter"], text_features=text_features)
    else:
        adapter = adapters.build_adapter(a["name"], text_features, num_id, **dict(a.get("options") or {}))
    return Method(adapter, cfg["losses"], logit_scale=cfg["eval"]["logit_scale"],
                  options={"cls_groups": cfg["cls_groups"], "seed": cfg["seed"]})


def transfer_adapter(adapter, text_features: torch.Tensor, num_id: int):
    """The same trained transform on other label features (unseen classes get their own ID names and mined
    negatives). Returns None when the adapter's weights are tied to the training rows (class-specific)."""
    base = adapter.base_text_features
    if base.shape == text_features.shape and torch.equal(base.cpu(), text_features.cpu()) and adapter.num_id == num_id:
        return adapter
    try:
        new = type(adapter)(text_features.to(base.device), num_id, config=adapter.config)
        new.load_state_dict(adapter.state_dict(), strict=True)
    except (RuntimeError, ClipoodError):
        return None
    return new.eval()


def adapter_method(name: str, adapter, score: str = "neglabel", temperature: float = 1.0) -> MethodSpec:
    """Evaluate a trained adapter with a score on its tuned features (NegLabel by default, paper §3.5)."""
    cache: dict[int, Any] = {}

    def logits_fn(batch, sf):
        key = id(sf)
        if key not in cache:
            cache[key] = transfer_adapter(adapter, sf.text_features, sf.num_id)
            if cache[key] is None:
                log.warning("%s cannot transfer to split %s (class-specific weights): frozen features used",
                            name, sf.split.name)
        a = cache[key]
        if a is None:
            return batch["image_features"] @ sf.text_features.T
        dev = a.base_text_features.device
        return a({k: v.to(dev) for k, v in batch.items()}).logits.cpu()

    return MethodSpec(name, logits_fn, score, temperature)


def plot_loss(history, path) -> None:
    if not history:
        return
    from .io import atomic_path
    from .report import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    steps = [h["step"] for h in history]
    for k in sorted(k for k in history[0] if k.endswith("loss")):
        ax.plot(steps, [h[k] for h in history], label=k)
    ax.set_xlabel("step")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def train_and_evaluate(cfg, bench: Benchmark, sfs: list[SplitFeatures], accelerator, out_dir) -> dict:
    """Crop cache → adapter → fit → checkpoint → evaluation rows for this method on every split."""
    from ._compat import import_adapters
    from .engine import CropTrainData, fit

    out = Path(out_dir)
    tcfg = train_config(cfg)
    crops = build_crop_data(bench, sfs[0], cfg, accelerator)
    method = build_method(cfg, sfs[0].text_features.to(accelerator.device), sfs[0].num_id)
    data = CropTrainData(crops, condition=tcfg.condition)
    if cfg.get("log_with"):
        import json as _json

        flat = {k: v for k, v in flat_leaves(cfg).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(cfg["method_name"].replace(" ", "_"), config=_json.loads(_json.dumps(flat)))
    result = fit(method, data, tcfg, accelerator, out, resume=bool(cfg.get("resume", True)),
                 progress=bool(cfg.get("progress")), signature=run_signature(cfg))
    if cfg.get("log_with"):
        accelerator.end_training()
    adapter = accelerator.unwrap_model(method).adapter.eval()
    if accelerator.is_main_process:
        import_adapters().save_adapter(adapter, out / "adapter", include_base=True)
        plot_loss(result.history, out / "loss.png")
    accelerator.wait_for_everyone()
    score = cfg["eval"]["score"]
    # MCM's temperature 1 on raw cosine = logit_scale on the scaled logits; other scores take the logits as is
    temp = float(cfg["eval"]["logit_scale"]) if score in ("mcm", "glmcm") else 1.0
    rows, raw = evaluate_methods([adapter_method(cfg["method_name"], adapter, score, temp)], sfs, cfg)
    return {"rows": rows, "raw": raw, "result": result, "adapter": adapter, "crops": crops}


#: the config keys that decide a training run's weights: a checkpoint resumes only when they match
SIGNATURE_KEYS = ("model", "pretrained", "benchmark", "mini", "seed", "negatives", "adapter", "losses",
                  "cls_groups", "shots", "crops", "train", "init_adapter", "train_data", "classes", "train_classes")


def run_signature(cfg) -> dict:
    _fill_negative_defaults(cfg)
    return {k: cfg.get(k) for k in SIGNATURE_KEYS}


def check_resume(cfg, output_dir=None) -> None:
    """Fail at once (before any model or data is loaded) when ``output_dir`` holds another run's checkpoints."""
    from .engine import check_resumable

    if cfg.get("resume", True):
        check_resumable(output_dir or cfg["output_dir"], run_signature(cfg))


def start_run(cfg):
    """Accelerator, logging, seed, benchmark, cached split features and the zero-shot rows: what every recipe
    does first. Returns ``(accelerator, benchmark, split_features, rows, raw_scores)``."""
    from .recipe import seed_everything, setup_logging

    acc = make_accelerator(cfg)
    setup_logging(acc.is_main_process)
    seed_everything(cfg["seed"])
    bench = setup_benchmark(cfg, acc)
    sfs = prepare_splits(bench, cfg, acc)
    rows, raw = evaluate_methods(zero_shot_methods(cfg), sfs, cfg)
    return acc, bench, sfs, rows, raw
