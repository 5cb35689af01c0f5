"""The per-run state of ``eval.scores`` (:mod:`clipood.evaluation.posthoc_eval`): the fit data and their cached
features, the fitted statistics (cached by content key), the pre-projection features of every evaluated set, and
scoring one split with one post-hoc score."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..config.settings import EvalSettings
from ..errors import ClipoodError
from ..io import cache_write, load_safetensors, save_safetensors
from .protocol import SplitFeatures

log = logging.getLogger("clipood")

__all__ = ["PosthocRun", "PosthocSources", "make_score", "score_options"]

#: options of a score that are not function parameters
_FILE_OPTIONS = ("label_file", "remove_overlap", "deduplicate")

DEFAULT_FIT_SHOTS = 16  #: fit-data images per class of a zero-shot run (a training run uses its own ``shots``)


def tensor_key(*tensors: torch.Tensor) -> str:
    """sha256 of the dtypes, shapes and bytes of ``tensors`` (16 hex digits)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class PosthocSources:
    """What the post-hoc scores read besides the ``eval`` section: where caches and data live, the ID template
    the envisioned labels are encoded with, and the training pool the fit data default to (the recipe builds it
    from the run's settings)."""

    cache_dir: Path
    data_root: str | None = None
    id_template: str = "a photo of a {}."
    train_data: Any = None           #: the run's ``train_data`` spec (custom benchmarks)
    benchmark: str = "mini"
    classes: Any = None
    train_classes: str | None = None
    shots: int | None = None         #: the run's shots (None: a zero-shot run, DEFAULT_FIT_SHOTS)
    seed: int = 0
    progress: bool = False


class PosthocRun:
    """What the post-hoc scores of one run share: made once per run, used for zero-shot and trained rows."""

    def __init__(self, ev: EvalSettings, sources: PosthocSources, bench, accelerator, splits: list[SplitFeatures]):
        self.ev, self.src, self.bench, self.accelerator, self.splits = ev, sources, bench, accelerator, splits
        self.backbone = bench.backbone
        self.logit_scale = float(ev.logit_scale)
        self.cache = Path(sources.cache_dir)
        self.notes: list[str] = []
        self._fit_ds = None
        self._feats: dict[tuple, dict] = {}
        self._stats: dict[str, object] = {}
        self._scores: dict[str, object] = {}
        self._projection = None
        #: what this run did, for tests and results.md: fits computed / loaded from the cache
        self.fits_computed: list[str] = []
        self.fits_loaded: list[str] = []

    # ------------------------------------------------------------------------------------------ inputs
    def projection(self):
        if self._projection is None:
            from ..clip.pre_projection import image_projection

            self._projection = image_projection(self.backbone)
        return self._projection

    def score(self, name: str):
        """The (unfitted) :class:`~clipood.posthoc.scorer.PosthocScore` of ``name`` with the run's options."""
        if name not in self._scores:
            opts = score_options(self.ev, name)
            envisioned = self._envisioned(opts) if opts.get("label_file") else None
            self._scores[name] = make_score(name, opts, envisioned)
        return self._scores[name]

    def _envisioned(self, opts) -> torch.Tensor:
        """EOE's envisioned labels, encoded like the ID labels (the run's ID template), cached by content."""
        from ..clip.image_features import cache_key
        from ..posthoc.logit_scores import load_envisioned_labels

        labels = load_envisioned_labels(opts["label_file"], id_names=self.splits[0].split.classnames,
                                        remove_overlap=bool(opts.get("remove_overlap", False)),
                                        deduplicate=bool(opts.get("deduplicate", False)))
        template = self.src.id_template or "a photo of a {}."
        path = self.cache / "posthoc" / f"text-{cache_key(self.backbone.identifier, template, labels)}.safetensors"
        if path.is_file():
            return load_safetensors(path)["features"]
        with torch.no_grad():
            feats = self.backbone.encode_text(labels, templates=[template]).float().cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        cache_write(lambda: save_safetensors({"features": feats}, path), path)
        self.notes.append(f"EOE: {len(labels)} envisioned labels from {opts['label_file']}")
        return feats

    def _dataset(self, spec):
        from ..datasets.dataset import build_dataset

        return build_dataset(spec, transform=self.backbone.preprocess, root=self.src.data_root)

    def _encode(self, key: tuple, ds, pre_projection: bool) -> dict:
        if key not in self._feats:
            from ..clip.image_features import extract_features

            self._feats[key] = extract_features(
                self.backbone, ds, batch_size=self.ev.batch_size, accelerator=self.accelerator,
                cache_dir=self.cache / "features", progress=bool(self.src.progress),
                desc=f"{'/'.join(map(str, key))}", pre_projection=pre_projection)
        return self._feats[key]

    def fit_dataset(self):
        """The fit data: ``eval.fit_data`` or the benchmark's training pool, relabelled to the Base split's ID
        classes by name, ``eval.fit_shots`` images per class (sampled with the run's seed)."""
        if self._fit_ds is not None:
            return self._fit_ds
        from ..datasets.checks import training_dataset
        from ..datasets.fewshot import sample_few_shot

        ev, src = self.ev, self.src
        spec = ev.fit_data or self.bench.train_spec or src.train_data
        if not spec:
            raise ClipoodError("eval.scores has fitted scores but this benchmark has no training pool: name the ID "
                               "features to fit on with eval.fit_data (a dataset spec, e.g. eval.fit_data.path=DIR)")
        label_set = None
        if src.benchmark not in ("mini", "custom"):
            from ..suites import get_suite

            label_set = get_suite(src.benchmark).label_set
        base = self.splits[0].split
        ds = training_dataset(spec, base.classnames, label_set=label_set, classes=src.classes,
                              mode=src.train_classes or "exact", root=src.data_root)
        shots = ev.fit_shots
        shots = (DEFAULT_FIT_SHOTS if src.shots is None else src.shots) if shots is None else shots
        try:
            idx = sample_few_shot([y for _, y in ds.samples], shots, seed=src.seed, classnames=ds.classnames)
        except ClipoodError as e:
            raise ClipoodError(f"fit data of the fitted scores: {e} (set eval.fit_shots; 0 = every image)") from None
        ds.samples = [ds.samples[i] for i in idx]
        ds.transform = self.backbone.preprocess
        self._fit_ds = ds
        self.notes.append(f"fitted scores: fitted on {len(ds)} ID training images ({shots or 'all'} per class"
                          f"{', eval.fit_data' if ev.fit_data else ', the training pool'})")
        return ds

    def fit_batches(self, key: str) -> list[dict]:
        ds = self.fit_dataset()
        f = self._encode(("fit", key), ds, key == "pre_projection_features")
        bs = max(1, int(self.ev.batch_size))
        return [{key: f["features"][s:s + bs], "labels": f["labels"][s:s + bs]}
                for s in range(0, f["features"].shape[0], bs)]

    def set_features(self, sf: SplitFeatures, kind: str, name: str, pre_projection: bool) -> dict:
        spec = (sf.split.id_sets if kind == "id" else sf.split.ood_sets)[name]
        return self._encode((sf.split.name, kind, name, "pre" if pre_projection else "img"), self._dataset(spec),
                            pre_projection)

    # ------------------------------------------------------------------------------------------ fitting
    def fitted(self, score, sf: SplitFeatures):
        """``score`` with statistics fitted on the fit data (cached by content key; ViM's per label set)."""
        info = score.info
        if info.fit is None:
            return score
        from ..clip.image_features import cache_key, dataset_fingerprint
        from ..posthoc.fit import fit_statistics
        from ..posthoc.scorer import STATS_OF_FIT
        from ..posthoc.stats import fit_key

        batches = self.fit_batches(score.key)
        width = batches[0][score.key].shape[1]
        self.notes += [n for n in score.adjust_to(width, sum(b["labels"].numel() for b in batches))
                       if n not in self.notes]
        id_text = sf.text_features[:sf.num_id].cpu()
        head = score.head(id_text, self.logit_scale, self.projection()) if info.name == "vim" else None
        num_classes = len(self.splits[0].split.classnames)
        params = {**score.fit_params, "num_classes": num_classes,
                  "head": tensor_key(head.weight, head.bias_or_zeros()) if head is not None else None}
        source = cache_key(self.backbone.identifier, dataset_fingerprint(self.fit_dataset()),
                           repr(self.fit_dataset().transform), score.key)
        key = fit_key(info.fit.__name__, params, source)
        if key not in self._stats:
            path = self.cache / "posthoc" / f"{key}.safetensors"
            stats = None
            if path.is_file():
                try:
                    stats = STATS_OF_FIT[info.fit].from_state_dict(load_safetensors(path))
                    self.fits_loaded.append(info.fit.__name__)
                except ClipoodError as e:
                    log.warning("post-hoc statistics %s unusable (%s); refitting", path, e)
            if stats is None:
                stats = fit_statistics(score.new_fit(num_classes=num_classes, head=head), batches)
                self.fits_computed.append(info.fit.__name__)
                if self.accelerator is None or self.accelerator.is_main_process:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    cache_write(lambda: save_safetensors(stats.state_dict(), path), path)
            self._stats[key] = stats
        from ..posthoc.scorer import PosthocScore

        return PosthocScore(score.name, score.params, score.fit_params, self._stats[key], score.envisioned)

    # ------------------------------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score_split(self, score, sf: SplitFeatures, logits_fn) -> dict:
        """{"id/<set>": (scores, predicted class), "ood/<set>": (scores, None)} of one split."""
        score = self.fitted(score, sf)
        info = score.info
        id_text = sf.text_features[:sf.num_id].cpu()
        projection = self.projection() if info.pre_projection else None
        out = {}
        for kind, sets in (("id", sf.id_feats), ("ood", sf.ood_feats)):
            for name, f in sets.items():
                pre = self.set_features(sf, kind, name, True)["features"] if info.pre_projection else None
                scores, preds = [], []
                bs = max(1, int(self.ev.batch_size))
                for s in range(0, f["features"].shape[0], bs):
                    batch = {"image_features": f["features"][s:s + bs]}
                    if "local" in f:
                        batch["local_features"] = f["local"][s:s + bs]
                    cos = logits_fn(batch, sf)
                    cos = cos[0] if isinstance(cos, tuple) else cos
                    logits = self.logit_scale * cos[:, :sf.num_id].double()
                    if pre is not None:
                        batch["pre_projection_features"] = pre[s:s + bs]
                    if not info.pixels:
                        scores.append(score.score_batch(batch, logits, id_text=id_text, logit_scale=self.logit_scale,
                                                        projection=projection).double().cpu())
                    preds.append(logits.argmax(1).cpu())
                if info.pixels:
                    scores = [self._odin(score, sf, kind, name, id_text)]
                out[f"{kind}/{name}"] = (torch.cat(scores), torch.cat(preds))
        return out

    def _odin(self, score, sf, kind: str, name: str, id_text) -> torch.Tensor:
        """ODIN reads the images of the set (not the feature cache) and perturbs them through the encoder."""
        from torch.utils.data import DataLoader

        from ..clip.pre_projection import image_encoder, normalization_std

        spec = (sf.split.id_sets if kind == "id" else sf.split.ood_sets)[name]
        ds = self._dataset(spec)
        note = "ODIN reads the images of every set (input perturbation through the image encoder): it encodes on every run"
        if note not in self.notes:
            self.notes.append(note)
        enc = image_encoder(self.backbone)
        std = normalization_std(self.backbone)
        dev = getattr(self.backbone, "device", "cpu")
        out = []
        loader = DataLoader(ds, batch_size=max(1, int(self.ev.batch_size)), shuffle=False,
                            collate_fn=getattr(ds, "collate_fn", None))
        for images, _ in loader:
            x = images.to(dev, getattr(self.backbone, "dtype", images.dtype))
            out.append(score.score_batch({"pixels": x}, None, id_text=id_text.to(dev), logit_scale=self.logit_scale,
                                         encoder=enc, input_std=std).double().cpu())
        return torch.cat(out)


def score_options(ev: EvalSettings, name: str) -> dict[str, Any]:
    """``eval.score_options.<name>`` as a dict (checked to be a mapping)."""
    opts = (ev.score_options or {}).get(name) or {}
    if not isinstance(opts, Mapping):
        raise ClipoodError(f"eval.score_options.{name} must be a mapping of parameters, got {opts!r}")
    return dict(opts)


def make_score(name: str, opts: Mapping[str, Any], envisioned=None):
    """The unfitted PosthocScore of ``name``: ``opts`` split into the score's and its fit's parameters."""
    from ..posthoc.registry import get_score
    from ..posthoc.scorer import PosthocScore

    info = get_score(name)
    fit_names = set(info.fit_params)
    params = {k: v for k, v in opts.items() if k not in fit_names and k not in _FILE_OPTIONS}
    fit_params = {k: v for k, v in opts.items() if k in fit_names}
    if not info.label_file:
        envisioned = None
    return PosthocScore(name, params, fit_params, envisioned=envisioned)
