"""A deployable OOD detector: one folder that holds everything needed to score new images.

``Detector`` = frozen CLIP (model name + pretrained tag or weights file) → image features → cosine logits over
K = N ID + M mined negative labels (the frozen label features, or a trained adapter's tuned ones) → the score
(NegLabel Eq. 2 by default, as in evaluation) → an OOD flag from a threshold calibrated on held-out ID images
(the ``id_recall`` share of them, 95 % by default, scores at or above it). Layout of a saved detector::

    <dir>/detector.json               format + version, backbone, preprocessing, ID names and prompts, negatives
                                      and their prompts, score, threshold and what it was calibrated on
    <dir>/label_features.safetensors  the frozen K×D label features (ID rows first), never re-encoded
    <dir>/calibration.json            the calibration images and their scores
    <dir>/adapter/...                 a trained adapter (trainable weights + config), when there is one
    <dir>/checksums.json              sha256 of every file above, checked on load

The core knows no method: a folder with an adapter is written and read through callables that a method
package registers (:func:`register_adapter_io`), or ones passed explicitly. Installing clipood declares its
method package in the entry-point group :data:`ADAPTER_IO_GROUP`, so ``Detector.from_pretrained`` finds the
loader without the caller importing anything first. What is checked before a folder is read, and how a killed
save is recovered: :mod:`clipood.detector_folder`.
"""
from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from .detector_folder import (
    ADAPTER_DIR, CALIBRATION_FILE, CHECKSUMS_FILE, FEATURES_FILE, FORMAT, FORMAT_VERSION, META_FILE,
    check_label_counts, recover_interrupted_save, resolve_detector_dir, sha256_file, verify_folder,
)
from .errors import ClipoodError
from .io import load_safetensors, make_temp_dir, save_safetensors, write_json

__all__ = ["Detector", "Detections", "calibrate_threshold", "register_adapter_io",
           "image_files", "has_random_weights", "ADAPTER_IO_GROUP"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: entry-point group of packages that save and rebuild trained adapters for detectors (installing clipood
#: registers its method package there, so ``Detector.from_pretrained`` needs no import first)
ADAPTER_IO_GROUP = "clipood.detector_io"

_ADAPTER_IO: dict[str, Callable] = {}


def register_adapter_io(save: Callable[[Any, Path], Any], load: Callable[..., Any]) -> None:
    """Called by the ``adapters`` package on import: ``save(adapter, dir)`` writes a trained adapter with its
    base label features, ``load(dir, backbone)`` rebuilds it (on CPU; prompt learners use the backbone's
    text path)."""
    _ADAPTER_IO.update(save=save, load=load)


def _load_io_plugins() -> None:
    """Import the entry points of :data:`ADAPTER_IO_GROUP` (each registers its callables on import, or is a
    callable that does)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ADAPTER_IO_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin is named, not a deep traceback
            raise ClipoodError(f"cannot load the detector plugin {ep.name} = {ep.value} ({type(e).__name__}: {e}); "
                               f"reinstall it (pip install -e . for clipood's own)") from None
        if callable(obj) and not isinstance(obj, type) and not hasattr(obj, "__path__"):
            obj()
        if "load" in _ADAPTER_IO:
            return


def _adapter_io(which: str, given: Callable | None, where: Path) -> Callable:
    if given is not None:
        return given
    if which not in _ADAPTER_IO:
        _load_io_plugins()
    if which not in _ADAPTER_IO:
        raise ClipoodError(f"detector {where} holds a trained adapter but no installed package registers an adapter "
                           f"{which}er (entry-point group {ADAPTER_IO_GROUP}); reinstall clipood (pip install -e .), "
                           f"or pass adapter_{which}er=")
    return _ADAPTER_IO[which]


def calibrate_threshold(id_scores: torch.Tensor | Sequence[float], id_recall: float = 0.95) -> float:
    """The largest threshold t such that at least ``id_recall`` of the ID scores are >= t (an image is flagged
    OOD when its score < t): the ⌈recall·n⌉-th highest ID score."""
    s = torch.as_tensor(id_scores, dtype=torch.float64).flatten()
    if s.numel() == 0 or not bool(torch.isfinite(s).all()):
        raise ClipoodError(f"cannot calibrate a threshold on {s.numel()} ID scores (need at least one, all finite)")
    if not (0.0 < float(id_recall) <= 1.0):
        raise ClipoodError(f"id_recall must be in (0, 1], got {id_recall}")
    k = max(1, math.ceil(float(id_recall) * s.numel() - 1e-9))
    return float(torch.sort(s, descending=True).values[k - 1])


def image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files of ``inputs`` (files, or folders searched recursively, sorted); a missing path or a folder
    without images is a ClipoodError naming it."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ClipoodError(f"no image files ({', '.join(IMAGE_SUFFIXES[:4])} ...) in folder {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ClipoodError(f"image file or folder not found: {p}")
    if not out:
        raise ClipoodError("no images given; pass image files or folders")
    return out


def _describe_transform(t: Any) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(t))


@dataclass
class Detections:
    """Per-image results of :meth:`Detector.__call__`: ``scores`` (higher = more ID), ``is_ood``
    (score < threshold), ``pred`` (predicted ID class index) and ``labels`` (its name); ``paths`` for files."""

    scores: torch.Tensor
    is_ood: torch.Tensor
    pred: torch.Tensor
    labels: list[str]
    paths: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  #: unreadable images left out (``skip_unreadable``)

    def rows(self) -> list[dict]:
        names = self.paths or [str(i) for i in range(len(self.labels))]
        return [{"image": n, "score": float(s), "ood": bool(o), "class": c}
                for n, s, o, c in zip(names, self.scores.tolist(), self.is_ood.tolist(), self.labels)]


class Detector:
    """A CLIP OOD detector ready for new images (see the module docstring for the saved layout).

    Args:
        backbone: a loaded :class:`clipood.Backbone`.
        text_features: the frozen K×D label features (ID rows first, then negatives).
        id_names: the N ID class names; ``negatives`` the M negative words.
        adapter: a trained adapter (``forward(batch).logits`` = B×K cosines) or None (zero-shot).
        score, logit_scale, groups, temperature: the score as in evaluation (logits = scale · cos).
        threshold: OOD when score < threshold (None: no flag until :meth:`calibrate`).
        info: recorded metadata (prompts, backbone spec, calibration data, ...).
    """

    def __init__(self, backbone, text_features: torch.Tensor, id_names: Sequence[str], *, negatives=(),
                 adapter=None, score: str = "neglabel", logit_scale: float = 100.0, groups: int = 1,
                 temperature: float = 1.0, threshold: float | None = None, info: dict | None = None,
                 posthoc=None):
        self.backbone = backbone
        self.text_features = text_features.float()
        self.id_names = list(id_names)
        self.negatives = list(negatives)
        if self.text_features.ndim != 2 or self.text_features.shape[0] != len(self.id_names) + len(self.negatives):
            raise ClipoodError(f"text_features of shape {tuple(self.text_features.shape)} do not hold "
                               f"{len(self.id_names)} ID + {len(self.negatives)} negative rows")
        self.adapter = adapter.eval() if adapter is not None else None
        self.score, self.logit_scale, self.groups, self.temperature = score, float(logit_scale), int(groups), \
            float(temperature)
        self.threshold = threshold
        self.info = dict(info or {})
        from .detector_posthoc import check_posthoc_score

        self.posthoc = check_posthoc_score(posthoc, self.adapter)  # issue 22: a fitted post-hoc score, or None

    @property
    def num_id(self) -> int:
        return len(self.id_names)

    # ------------------------------------------------------------------------------------------ scoring
    @torch.no_grad()
    def cosines(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cosine logits B×K of a batch (``image_features``, ``local_features`` where the adapter needs them): the
        scoring path of evaluation (:mod:`clipood.evaluation.scoring`)."""
        from .evaluation.scoring import adapter_logits, frozen_logits

        if self.adapter is None:
            return frozen_logits(batch, self.text_features)
        if self.score == "adapter":  # the adapter's own test score beside the cosines (score_cosines reads both)
            return adapter_logits(self.adapter, batch, own_score=True)
        return adapter_logits(self.adapter, batch)

    @torch.no_grad()
    def score_features(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(score, predicted ID class) of encoded features; the scoring step evaluation uses."""
        from .evaluation.protocol import score_cosines

        if self.posthoc is not None:  # issue 22: the post-hoc score on the ID logits and the batch's features
            from .detector_posthoc import posthoc_scores

            return posthoc_scores(self, batch)
        return score_cosines(self.cosines(batch), self.num_id, self.score, self.logit_scale, self.groups,
                             self.temperature)

    def _preprocess(self, images: Sequence, skip: bool) -> tuple[list[torch.Tensor], list[int], list[str]]:
        """Preprocessed tensors of the readable images, their positions, and the unreadable ones (with ``skip``;
        otherwise the first unreadable image is a ClipoodError naming it)."""
        from .datasets.dataset import _pil_rgb

        tensors, kept, skipped = [], [], []
        for i, im in enumerate(images):
            try:
                tensors.append(self.backbone.preprocess(_pil_rgb(im)))
                kept.append(i)
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
                if not skip:
                    raise ClipoodError(f"cannot read image {im} ({type(e).__name__}: {e}); fix or remove it, or "
                                       f"skip unreadable images (clipood detect --skip-unreadable)") from None
                skipped.append(str(im))
        return tensors, kept, skipped

    @torch.no_grad()
    def _encode_tensors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.posthoc is not None and self.posthoc.info.pre_projection:  # issue 22: ReAct, ASH, DICE, ViM, ...
            from .clip.pre_projection import pre_projection_features

            return {"image_features": self.backbone.encode_images(x).cpu().float(),
                    "pre_projection_features": pre_projection_features(self.backbone, x).cpu().float()}
        if "local_features" in getattr(self.adapter, "requires", ()):
            g, loc = self.backbone.encode_images(x, local=True)
            return {"image_features": g.cpu().float(), "local_features": loc.cpu().float()}
        return {"image_features": self.backbone.encode_images(x).cpu().float()}

    @torch.no_grad()
    def encode(self, images: Sequence) -> dict[str, torch.Tensor]:
        """Images (paths or PIL images) → the batch an adapter reads, through the backbone's preprocessing."""
        tensors, _, _ = self._preprocess(images, skip=False)
        return self._encode_tensors(torch.stack(tensors))

    def __call__(self, images, batch_size: int | None = None, skip_unreadable: bool = False) -> Detections:
        """Score images: a path, a folder, a PIL image, or a list of them → :class:`Detections`.

        ``batch_size`` (None = the run's evaluation batch size): float32 encoding is not exactly batch-invariant,
        so the run's evaluation scores are reproduced to 1e-6 when images are batched as in evaluation, and to
        about 1e-5 (100·cos logits amplify float rounding) otherwise. ``skip_unreadable``: score the readable
        images and list the others in ``Detections.skipped`` (default: the first unreadable image stops)."""
        batch_size = int(batch_size or self.info.get("batch_size") or 256)
        if batch_size < 1:
            raise ClipoodError(f"batch_size must be >= 1, got {batch_size}")
        items = images if isinstance(images, (list, tuple)) else [images]
        paths: list[str] = []
        if all(isinstance(i, (str, os.PathLike)) for i in items):
            files = image_files(items)
            paths, items = [str(f) for f in files], files
        scores, preds, kept_paths, skipped = [], [], [], []
        for s in range(0, len(items), batch_size):
            tensors, kept, bad = self._preprocess(items[s:s + batch_size], skip=skip_unreadable)
            skipped += bad
            if not tensors:
                continue
            sc, pr = self.score_features(self._encode_tensors(torch.stack(tensors)))
            scores.append(sc)
            preds.append(pr)
            kept_paths += [paths[s + i] for i in kept] if paths else []
        if not scores:
            raise ClipoodError(f"none of the {len(items)} images could be read (first: {skipped[0]})")
        sc, pr = torch.cat(scores), torch.cat(preds)
        flag = sc < self.threshold if self.threshold is not None else torch.zeros_like(sc, dtype=torch.bool)
        return Detections(sc, flag, pr, [self.id_names[i] for i in pr.tolist()], kept_paths, skipped)

    def calibrate(self, id_scores, id_recall: float = 0.95, data: dict | None = None,
                  images: Sequence[str] | None = None) -> float:
        """Set the threshold so that ``id_recall`` of the held-out ID scores pass; record the data used."""
        s = torch.as_tensor(id_scores, dtype=torch.float64).flatten()
        self.threshold = calibrate_threshold(s, id_recall)
        self.info["calibration"] = {"id_recall": float(id_recall), "num_images": int(s.numel()),
                                    "data": data or {}, "threshold": self.threshold}
        self._calibration = {"images": list(images or []), "scores": s.tolist()}
        return self.threshold

    # ------------------------------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | os.PathLike, *, adapter_saver: Callable | None = None) -> Path:
        """Write the detector folder (built in a temporary sibling folder, then renamed over ``directory``)."""
        directory = Path(directory)
        bb = self.backbone
        if has_random_weights(bb):
            raise ClipoodError(f"cannot save a detector to {directory}: backbone {bb.model_name} has random weights "
                               f"(no pretrained tag or weights file), which no later process can rebuild; load "
                               f"it with pretrained weights")
        directory.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted_save(directory)  # a killed earlier save: its old folder back before replacing it
        if self.threshold is not None and not math.isfinite(float(self.threshold)):
            raise ClipoodError(f"cannot save a detector to {directory}: its threshold is {self.threshold}; "
                               f"calibrate it on finite ID scores")
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "backbone": {"model": self.info.get("model", bb.model_name), "pretrained": self.info.get("pretrained"),
                         "identifier": bb.identifier, "embed_dim": int(self.text_features.shape[1])},
            "preprocessing": {"image_size": bb.image_size, "transform": _describe_transform(bb.preprocess)},
            "labels": {"id_names": self.id_names, "id_templates": self.info.get("id_templates"),
                       "negatives": self.negatives, "neg_templates": self.info.get("neg_templates")},
            "score": {"name": self.score, "logit_scale": self.logit_scale, "groups": self.groups,
                      "temperature": self.temperature},
            "threshold": self.threshold, "calibration": self.info.get("calibration"),
            "batch_size": int(self.info.get("batch_size") or 256),
            "adapter": None, "source": self.info.get("source"),
        }
        tmp = make_temp_dir(directory.parent, f".{directory.name}.tmp-")
        try:
            save_safetensors({"text_features": self.text_features.cpu()}, tmp / FEATURES_FILE)
            if self.adapter is not None:
                _adapter_io("save", adapter_saver, directory)(self.adapter, tmp / ADAPTER_DIR)
                meta["adapter"] = {"folder": ADAPTER_DIR, "name": getattr(self.adapter, "name", None),
                                   "requires": sorted(getattr(self.adapter, "requires", ()))}
            if self.posthoc is not None:  # issue 22: scores/<name>.safetensors, listed in checksums.json below
                from .detector_posthoc import save_posthoc

                meta["posthoc"] = save_posthoc(self.posthoc, tmp)
            write_json(tmp / CALIBRATION_FILE, getattr(self, "_calibration", {"images": [], "scores": []}))
            write_json(tmp / META_FILE, meta)
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            write_json(tmp / CHECKSUMS_FILE, {p.relative_to(tmp).as_posix(): sha256_file(p) for p in files})
            # two renames: a kill between them leaves the complete old folder as .<name>.old-<pid>, which
            # the next save or load puts back (recover_interrupted_save); the old one goes only after the new
            # one is in place
            old = None
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
                os.replace(directory, old)
            os.replace(tmp, directory)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        adapter_loader: Callable | None = None) -> "Detector":
        """Load a detector folder (a run's ``output_dir`` finds its ``detector/``), or a Hugging Face Hub
        repo id (``user/name``, downloaded through ``huggingface_hub``). Every file is checked against its
        sha256; unknown formats and non-finite weights are refused."""
        from .clip.backbone import load_clip

        directory = resolve_detector_dir(path)
        meta, calibration = verify_folder(directory)  # manifest, hashes, paths and every JSON file's schema
        bb_spec = meta["backbone"]
        backbone = load_clip(bb_spec["model"], bb_spec.get("pretrained"), device=device)
        if backbone.identifier != bb_spec.get("identifier"):
            raise ClipoodError(f"{directory / META_FILE}: the backbone loads as {backbone.identifier!r} but the "
                               f"detector was built on {bb_spec.get('identifier')!r}; restore those weights")
        tensors = _finite(load_safetensors(directory / FEATURES_FILE), directory / FEATURES_FILE)
        if "text_features" not in tensors:
            raise ClipoodError(f"{directory / FEATURES_FILE} holds no 'text_features'; re-save the detector")
        feats = tensors["text_features"]
        check_label_counts(feats, meta, directory / FEATURES_FILE)
        adapter = None
        if meta.get("adapter"):
            adir = directory / meta["adapter"]["folder"]
            for f in sorted(adir.rglob("*.safetensors")):
                _finite(load_safetensors(f), f)
            loader = _adapter_io("load", adapter_loader, directory)
            try:
                adapter = loader(adir, backbone).to(device)
            except ClipoodError:
                raise
            except Exception as e:  # noqa: BLE001 - a malformed adapter folder is named, not a deep traceback
                raise ClipoodError(f"cannot rebuild the adapter in {adir} ({type(e).__name__}: {e}); re-save the "
                                   f"detector") from None
        posthoc = None
        if meta.get("posthoc"):  # issue 22: checked and listed by verify_folder
            from .detector_posthoc import load_posthoc

            posthoc = load_posthoc(meta["posthoc"], directory, _finite)
        lab, sc = meta["labels"], meta["score"]
        info = {"model": bb_spec["model"], "pretrained": bb_spec.get("pretrained"), "source": meta.get("source"),
                "id_templates": lab.get("id_templates"), "neg_templates": lab.get("neg_templates"),
                "calibration": meta.get("calibration"), "path": str(directory), "batch_size": meta.get("batch_size")}
        det = cls(backbone, feats, lab["id_names"], negatives=lab.get("negatives") or [], adapter=adapter,
                  score=sc["name"], logit_scale=sc["logit_scale"], groups=sc["groups"],
                  temperature=sc["temperature"], threshold=meta.get("threshold"), info=info, posthoc=posthoc)
        det._calibration = calibration
        return det


def has_random_weights(backbone) -> bool:
    """True when the backbone was built without pretrained weights (its identifier says ``|random``)."""
    return str(getattr(backbone, "identifier", "")).split("|", 1)[-1].startswith("random")


def _finite(tensors: dict, path: Path) -> dict:
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ClipoodError(f"{path}: tensor '{k}' holds NaN or infinite values; this detector is broken — "
                               f"re-save it from a good run")
    return tensors

