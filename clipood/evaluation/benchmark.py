"""The benchmark a run evaluates on, and what every run prepares before any method: the accelerator, the
backbone, the evaluation splits (embedded mini world, a named suite, or custom datasets), the frozen label
features of each split (ID names then mined NegLabel negatives, Eq. 1) and the cached image features."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ClipoodError

if TYPE_CHECKING:
    from ..config.records import DataSettings
    from .protocol import EvalSplit, SplitFeatures

log = logging.getLogger("clipood")

__all__ = ["Benchmark", "make_accelerator", "setup_benchmark", "label_features",
           "prepare_splits"]


def make_accelerator(cpu: bool | None = None, log_with: str | None = None, output_dir: str | None = None):
    """An Accelerator on the GPU when there is one, else on the CPU (``cpu=True`` also enables multi-process
    CPU runs under ``accelerate launch --multi_gpu --num_processes N``); ``log_with``: a tracker writing under
    ``output_dir``."""
    import torch
    from accelerate import Accelerator

    if cpu is None:
        cpu = not torch.cuda.is_available()
    from ..training.trackers import BUILTIN_TRACKERS

    kwargs = {"log_with": log_with, "project_dir": output_dir} if log_with else {}
    if log_with in BUILTIN_TRACKERS:  # clipood's own (log_with=jsonl): the recipe adds the instance per run
        kwargs = {"project_dir": output_dir}
    try:
        return Accelerator(cpu=bool(cpu), **kwargs)
    except (ValueError, ImportError) as e:
        raise ClipoodError(f"log_with={log_with!r} is not available ({e}); install that tracker, use the "
                           f"built-in log_with=jsonl, or drop log_with") from None


@dataclass(frozen=True)
class Benchmark:
    """What a run evaluates on (made once by :func:`setup_benchmark`, never changed): the backbone, the
    evaluation splits, the mining corpus, the training pool's spec (None: the config's ``train_data``), the
    mini world's folder and the notes results.md carries."""

    backbone: Any
    splits: tuple[EvalSplit, ...]
    corpus: Any
    train_spec: Any = None
    world_dir: Path | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", tuple(self.splits))
        object.__setattr__(self, "notes", tuple(self.notes))


@dataclass
class _Data:
    """The data half of a benchmark (no backbone yet): what :func:`_setup_data` finds."""

    splits: list
    corpus: Any
    train_spec: Any = None
    world_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def setup_benchmark(data: DataSettings, accelerator, *, model: str, pretrained: str | None = None,
                    convention: str = "hendrycks", progress: bool = False) -> Benchmark:
    """The benchmark ``data`` names (``benchmark='mini'`` = the embedded default) and the backbone ``model`` /
    ``pretrained``; ``convention``: the metric convention results.md states. Data are checked first (a missing
    file is reported before minutes of weight loading)."""
    from ..clip.backbone import load_clip
    from ..datasets.checks import check_data
    from .report import convention_note

    # the records are the recipe's: built once from the config it composed, resolved and checked
    # (clipood_recipes.configure), its folders and environment checked before torch was imported (load_settings)
    check_data(data)  # every data problem of every split, before any model work
    found = _setup_data(data, accelerator, tiny=model == "clipood-tiny", progress=progress)
    from ..labels.prompts import check_class_names

    for split in found.splits if data.benchmark == "custom" else ():
        # the user's names (folders, classnames), before the model loads: names the text encoder could not tell
        # apart. Named suites keep their label sets as published (ImageNet-1k has two 'missile' classes)
        check_class_names(split.classnames, f"the ID classes of split {split.name}")
    notes = list(found.notes)
    if model == "clipood-mini" and data.benchmark != "mini":
        notes.append(MINI_ELSEWHERE)
    notes.append(convention_note(convention))
    backbone = load_clip(model, pretrained, device=accelerator.device)
    if str(backbone.identifier).split("|", 1)[-1].startswith("random"):
        # any model without pretrained weights (not only clipood-tiny): said in results.md and the printed
        # summary (not in the log: an error line after it must stay the only line on stderr)
        notes = [n for n in notes if n != TINY_NOTE] + [
            f"> **{model} has random weights (no pretrained tag or weights file): these numbers are "
            f"meaningless.**"]
    return Benchmark(backbone, found.splits, found.corpus, found.train_spec, found.world_dir, notes)


TINY_NOTE = "> **clipood-tiny has random weights: these numbers are meaningless (smoke test only).**"


MINI_ELSEWHERE = ("> **Warning: clipood-mini is the tiny CLIP of the embedded mini world (32-px rendered shapes, 98 "
                  "words); on other images it sees little, and these numbers say little about a method. Use a real "
                  "CLIP for your data (e.g. model=ViT-B-16 pretrained=openai).**")


def _setup_data(data: DataSettings, accelerator, *, tiny: bool = False, progress: bool = False) -> _Data:
    """The splits, corpus, training pool and notes (the backbone is loaded by setup_benchmark once the data are
    known to be there); ``tiny``: the backbone is clipood-tiny (a note says its numbers are meaningless)."""
    from .protocol import EvalSplit

    notes = []
    if tiny:
        notes.append(TINY_NOTE)
    if data.benchmark == "mini":
        from ..mini.build import MiniWorldConfig, build_world
        from ..mini.protocol import mini_corpus, mini_splits, mini_train_spec

        mcfg = MiniWorldConfig.from_settings(data.mini)
        with accelerator.main_process_first():
            world = build_world(mcfg, progress=accelerator.is_main_process and progress)
        corpus = mini_corpus(world) if not data.corpus else _corpus(data.corpus)
        notes.append(f"Mini world seed {mcfg.seed} ({world.name}).")
        return _Data(mini_splits(world), corpus, mini_train_spec(world), world, notes)
    from ..suites import check_suite, get_suite

    if data.benchmark == "custom":
        # any dataset specs: id_data (one spec) and ood_data (name → spec), e.g. generated ImageFolders
        from ..datasets.dataset import build_dataset
        from ..datasets.specs import spec_from_dict

        if not data.id_data or not data.ood_data:
            raise ClipoodError("benchmark=custom needs id_data (a dataset spec) and ood_data (name: spec, ...)")
        id_spec = spec_from_dict(data.id_data)
        names = build_dataset(id_spec, root=data.data_root).classnames
        from ..datasets.folders import looks_like_wordnet_ids

        if looks_like_wordnet_ids(names):  # IDs the ImageNet-1k list does not know (known ones are named already)
            raise ClipoodError(f"benchmark=custom: the ID class folders are WordNet IDs ({', '.join(names[:3])}"
                               f"{', ...' if len(names) > 3 else ''}) that the shipped ImageNet list does not name; "
                               f"pass the class names in folder order as id_data.classnames=[name, ...]")
        if not names:
            raise ClipoodError("benchmark=custom: the ID dataset has no class names (use an ImageFolder with one "
                               "folder per class, or set classnames in id_data)")
        from ..datasets.specs import as_ood_spec

        ood = {k: as_ood_spec(spec_from_dict(v)) for k, v in data.ood_data.items()}
        split = EvalSplit("base", {"id": id_spec}, ood, list(names), "custom datasets")
        return _Data([split], _corpus(data.corpus), None, None, notes)

    root = data.data_root
    suite = get_suite(data.benchmark, root=root, classes=data.classes)
    extra = [("new_class", n) for n in data.new_class_suites]
    extra += [("new_style", n) for n in data.new_style_suites]
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
        from ..suites import suite_classnames

        return suite_classnames(s_, root)

    splits = []
    for kind, s_ in suites:
        # unseen styles keep the Base OOD sets (paper §4.1); unseen classes bring their own
        ood = suite.ood if kind == "new_style" else s_.ood
        groups = suite.groups if kind == "new_style" else s_.groups
        splits.append(EvalSplit(kind, {s_.name: s_.id}, ood, names(s_), s_.description, groups=groups))
    return _Data(splits, _corpus(data.corpus), None, None, notes)


def mining_inputs(data: DataSettings, accelerator=None, *, progress: bool = False) -> tuple[list[str], Any]:
    """The Base split's ID class names and the mining corpus, reading only what names the classes: a named
    suite's label set (no dataset at all; a half-split suite scans its ID folder), a custom ``id_data``'s class
    folders, the mini world (built with ``accelerator`` if needed: its corpus is its captions' words). For
    ``clipood mine``."""
    if data.benchmark == "mini":
        found = _setup_data(data, accelerator, progress=progress)
        return list(found.splits[0].classnames), found.corpus
    if data.benchmark == "custom":
        from ..datasets.dataset import build_dataset
        from ..datasets.specs import spec_from_dict
        from ..datasets.folders import looks_like_wordnet_ids

        if not data.id_data:
            raise ClipoodError("benchmark=custom needs id_data (a dataset spec) to name the ID classes")
        names = list(build_dataset(spec_from_dict(data.id_data), root=data.data_root).classnames)
        if not names or looks_like_wordnet_ids(names):
            raise ClipoodError("benchmark=custom: the ID dataset names no classes (or only unknown WordNet IDs); "
                               "use one folder per class, or pass id_data.classnames=[name, ...]")
        return names, _corpus(data.corpus)
    from ..suites import get_suite, suite_classnames

    suite = get_suite(data.benchmark, root=data.data_root if not _has_label_set(data.benchmark) else None,
                      classes=data.classes)
    return suite_classnames(suite, data.data_root), _corpus(data.corpus)


def _has_label_set(benchmark: str) -> bool:
    from ..suites import get_suite

    return bool(get_suite(benchmark).label_set)


def backbone_label(model: str, pretrained: str | None = None) -> str:
    """``ViT-B-16 (openai)``, ``clipood-mini (shipped weights)``: the backbone as results.md names it."""
    if pretrained:
        return f"{model} ({Path(str(pretrained)).name if os.sep in str(pretrained) else pretrained})"
    return f"{model} ({'shipped weights' if model == 'clipood-mini' else 'no pretrained weights'})"


def data_label(benchmark: str, split, *, mini_seed: int | None = None, id_data: dict | None = None) -> str:
    """What a split's images are, for its results.md heading: the mini world and its seed, the custom ID path,
    or the suite's description."""
    if benchmark == "mini":
        return f"mini world seed {mini_seed}: {split.description}"
    if benchmark == "custom":
        spec = id_data or {}
        where = spec.get("path") or spec.get("list_file") or spec.get("path_or_name") or "id_data"
        return f"custom data: ID {where}, OOD {', '.join(split.ood_sets)}"
    return f"{benchmark}: {split.description}" if split.description else str(benchmark)


def _corpus(path: str | None):
    """The mining corpus: the word file ``path`` (``negatives.corpus``), else the shipped WordNet lists."""
    from ..negatives import load_corpus, load_word_file

    return load_word_file(path) if path else load_corpus()


def label_features(backbone, classnames, corpus, negatives: dict, cache_dir, accelerator=None, progress=False):
    """Frozen text features C (K×D) of the ID names then the mined negatives, and the NegativeSet; mined and
    encoded once per backbone, corpus and ``negatives`` settings (cached under ``cache_dir``; see
    `clipood.labels.label_features`)."""
    from ..labels.label_features import label_text_features

    return label_text_features(backbone, classnames, corpus, negatives, cache_dir, accelerator=accelerator,
                               progress=bool(progress))


def prepare_splits(bench: Benchmark, negatives: dict, accelerator, *, batch_size: int, cache_dir, data_root=None,
                   progress: bool = False, local: bool = False) -> list[SplitFeatures]:
    """One label set per ID set (the ``negatives`` settings) + cached image features (encoded ``batch_size`` at a
    time, cached under ``cache_dir``) for every split of the benchmark (with ``local``, patch features too, for a
    method whose adapter requires ``local_features``)."""
    from ..labels.label_set import LabelSet
    from .protocol import prepare_split

    out = []
    labels = {}  # splits with the same ID classes (Base and unseen styles) share one label set
    for split in bench.splits:
        key = tuple(split.classnames)
        if key not in labels:
            C, num_id, negs = label_features(bench.backbone, split.classnames, bench.corpus, negatives, cache_dir,
                                             accelerator, progress)
            labels[key] = LabelSet.from_mined(split.classnames, C, negs, negatives)
        ls = labels[key]
        sf = prepare_split(split, bench.backbone, ls.features, ls.num_id, negatives=ls.neg_names,
                           batch_size=batch_size, accelerator=accelerator, cache_dir=Path(cache_dir) / "features",
                           progress=bool(progress), root=data_root, local=local, label_set=ls)
        out.append(sf)
    return out
