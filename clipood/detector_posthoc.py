"""A detector folder's post-hoc score (issue 22): ``detector.json``'s ``posthoc`` section and its statistics file.

    detector/
      detector.json            "posthoc": {"name": "knn", "params": {...}, "fit_params": {...},
                                           "stats_kind": "knn", "file": "scores/knn.safetensors"}
      scores/knn.safetensors   stats.<tensor> (the fitted statistics), envisioned (EOE's label features);
                               no file (``"file": null``) for a score without either (GEN, ASH, GradNorm)

The file is listed in ``checksums.json`` like every other file (:func:`clipood.detector_folder.verify_folder`
refuses a folder whose ``posthoc.file`` is not listed), so nothing unlisted is read. ODIN reads pixels, not
encoded features, and is not saved in a detector.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import ClipoodError

__all__ = ["SCORES_DIR", "check_posthoc_meta", "check_posthoc_score", "load_posthoc", "posthoc_scores", "save_posthoc"]

SCORES_DIR = "scores"


def _bad(path: Path, key: str, value: Any, want: str) -> ClipoodError:
    shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
    return ClipoodError(f"{path}: posthoc.{key} = {shown} is invalid ({want}); the file was altered — re-save the "
                        f"detector")


def _plain(v: Any) -> bool:
    return (isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                   and math.isfinite(v)))


def check_posthoc_meta(ph: Any, path: Path) -> dict:
    """The schema of ``detector.json``'s ``posthoc`` section."""
    from .posthoc.registry import _BY_NAME

    if not isinstance(ph, dict):
        raise _bad(path, "", ph, "an object or null")
    name = ph.get("name")
    if not isinstance(name, str) or name not in _BY_NAME or _BY_NAME[name].pixels:
        raise _bad(path, "name", name, "a post-hoc score of clipood.posthoc (not odin)")
    for key in ("params", "fit_params"):
        v = ph.get(key, {})
        if not isinstance(v, dict) or not all(isinstance(k, str) and _plain(x) for k, x in v.items()):
            raise _bad(path, key, v, "an object of finite numbers or strings")
    if ph.get("stats_kind") is not None and not isinstance(ph["stats_kind"], str):
        raise _bad(path, "stats_kind", ph["stats_kind"], "a statistics kind or null")
    info = _BY_NAME[name]
    want = f"{SCORES_DIR}/{info.name}.safetensors" if info.needs_fit or info.label_file else None
    if ph.get("file") != want:
        raise _bad(path, "file", ph.get("file"), want or "null (this score has no statistics)")
    return ph


def save_posthoc(score, folder: Path) -> dict:
    """Write ``score``'s statistics under ``folder/scores/``; returns the ``posthoc`` section of detector.json."""
    from .io import save_safetensors

    if score.info.pixels:
        raise ClipoodError("the 'odin' score reads pixels (input perturbation), not encoded features; a detector "
                           "cannot save it — use another score")
    if score.info.needs_fit and score.stats is None:
        raise ClipoodError(f"score '{score.name}' has no fitted statistics; fit it before saving the detector")
    tensors = score.stats_file_tensors()
    rel = None  # a score without statistics (GEN, ASH, ...) needs no file
    if tensors:
        rel = f"{SCORES_DIR}/{score.name}.safetensors"
        (folder / SCORES_DIR).mkdir(parents=True, exist_ok=True)
        save_safetensors(tensors, folder / rel)
    return {**score.describe(), "file": rel}


def load_posthoc(ph: dict, folder: Path, check_finite):
    """The :class:`~clipood.posthoc.scorer.PosthocScore` of a verified folder's ``posthoc`` section."""
    from .io import load_safetensors
    from .posthoc.scorer import PosthocScore

    path = folder / ph["file"] if ph.get("file") else folder
    tensors = check_finite(load_safetensors(path), path) if ph.get("file") else {}
    try:
        return PosthocScore.from_saved(ph, tensors, str(path))
    except ClipoodError as e:
        raise ClipoodError(f"{path}: {e}") from None


def check_posthoc_score(posthoc, adapter):
    """A post-hoc score for a detector: a PosthocScore on encoded features (not ODIN); with a trained adapter,
    only the scores of its logits (the others read CLIP's own features and head)."""
    if posthoc is None:
        return None
    from .posthoc.scorer import PosthocScore

    if not isinstance(posthoc, PosthocScore):
        raise ClipoodError(f"posthoc must be a clipood.posthoc.scorer.PosthocScore, got {type(posthoc).__name__}")
    if posthoc.info.pixels:
        raise ClipoodError("the 'odin' score reads pixels, not encoded features; a detector cannot use it")
    if adapter is not None and posthoc.info.inputs != ("logits",):
        raise ClipoodError(f"score '{posthoc.name}' reads CLIP's features and head, not a trained adapter's logits; "
                           f"use it on a zero-shot detector (adapter=None)")
    return posthoc


def posthoc_scores(det, batch):
    """(score, predicted ID class) of a detector's post-hoc score on an encoded batch."""
    logits = det.logit_scale * det.cosines(batch)[:, :det.num_id].double()
    proj = None
    if det.posthoc.info.pre_projection:
        from .clip.pre_projection import image_projection

        proj = image_projection(det.backbone)
    s = det.posthoc.score_batch(batch, logits, id_text=det.text_features[:det.num_id], logit_scale=det.logit_scale,
                                projection=proj)
    return s.double().cpu(), logits.argmax(1).cpu()
