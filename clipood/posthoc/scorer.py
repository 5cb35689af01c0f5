"""A post-hoc score ready to apply to CLIP batches: the registry entry, its parameters and its fitted statistics.

:class:`PosthocScore` is what evaluation (:mod:`clipood.evaluation.posthoc_eval`) and a saved
:class:`clipood.Detector` share. It reads, per batch,

* ``logits`` — the scaled ID logits (B×N: ``logit_scale·cos`` of zero-shot CLIP or of a trained adapter);
* ``image_features`` — the unit joint-space image features (KNN, MDS, RMDS are fitted and scored there; EOE's
  envisioned labels are scored against them);
* ``pre_projection_features`` — the image tower's features before the projection (ReAct, ASH, DICE, GradNorm,
  ViM), mapped to logits by CLIP's own head ``ProjectedHead(projection, ID text features, logit_scale)`` (its
  ``linearised()`` form where the score needs a linear layer);
* ``pixels`` — preprocessed images, for ODIN only (it runs the frozen image encoder itself).

Statistics are a :class:`clipood.posthoc.stats.Statistics`; :meth:`PosthocScore.stats_file_tensors` /
:meth:`PosthocScore.from_saved` turn score + statistics into one safetensors dict and back (a detector folder's
``scores/<name>.safetensors``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from clipood.errors import ClipoodError

from .fit import GaussianFit, KNNFit, MeanFit, ReActFit, ViMFit
from .heads import LinearHead
from .registry import ScoreInfo, get_score
from .stats import GaussianStats, KNNStats, MeanStats, ReActStats, Statistics, ViMStats

__all__ = ["PosthocScore", "STATS_OF_FIT", "batch_key", "eval_defaults"]

#: the statistics class each fit makes
STATS_OF_FIT: dict[type, type] = {GaussianFit: GaussianStats, ViMFit: ViMStats, KNNFit: KNNStats,
                                  ReActFit: ReActStats, MeanFit: MeanStats}

#: eval-time defaults that differ from the function's (OpenOOD's) defaults, each a documented choice
_LOGIT_SCALE_T = ("eoe",)
KNN_FULL_BANK = 50_000  #: OpenOOD's K = 50 on CIFAR's 50,000 training features; smaller banks keep k/N  # T = 1 on raw cosines (the release) is T = logit_scale on scaled logits


def eval_defaults(name: str, logit_scale: float) -> dict[str, Any]:
    """Parameters clipood's evaluation passes unless the user sets them: EOE's T = logit_scale (the release's
    T = 1 on raw cosines, docs/methods.md); every other score keeps OpenOOD's defaults."""
    return {"temperature": float(logit_scale)} if get_score(name).name in _LOGIT_SCALE_T else {}


def batch_key(info: ScoreInfo) -> str:
    """The batch key a score's features come from."""
    if info.pixels:
        return "pixels"
    return "pre_projection_features" if info.pre_projection else "image_features"


def _number(v: Any, where: str) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)) or (isinstance(v, float) and not math.isfinite(v)):
        raise ClipoodError(f"{where} = {v!r} must be a finite number or a string")
    return v


class PosthocScore:
    """One post-hoc score: ``name`` (a registry name or alias), keyword ``params`` for the score function,
    ``fit_params`` for its fit, and ``stats`` once fitted (None for scores without a fit). ``envisioned`` is EOE's
    L×D envisioned-label text features."""

    def __init__(self, name: str, params: Mapping[str, Any] | None = None,
                 fit_params: Mapping[str, Any] | None = None, stats: Statistics | None = None,
                 envisioned: torch.Tensor | None = None):
        self.info = get_score(name)
        self.name = self.info.name
        self.params = dict(params or {})
        self.fit_params = dict(fit_params or {})
        for what, given, known in (("params", self.params, self.info.params),
                                   ("fit_params", self.fit_params, self.info.fit_params)):
            odd = sorted(set(given) - set(known))
            if odd:
                raise ClipoodError(f"score '{self.name}' has no {what} {', '.join(odd)}; it takes "
                                   f"{', '.join(known) or 'none'} (clipood scores lists them)")
            for k, v in given.items():
                _number(v, f"score '{self.name}' {what}.{k}")
        self.stats = stats
        self.envisioned = envisioned
        if self.info.label_file and envisioned is None:
            raise ClipoodError(f"score '{self.name}' needs the envisioned-label features (a label file: "
                               f"eval.score_options.{self.name}.label_file=FILE)")

    @property
    def key(self) -> str:
        return batch_key(self.info)

    # ------------------------------------------------------------------------------------------ heads and fits
    def head(self, id_text: torch.Tensor, logit_scale: float, projection=None):
        """CLIP's head for this score: on pre-projection features ``ProjectedHead`` (linearised where the
        score needs a linear layer); on joint features (ODIN) ``LinearHead.from_text_features``."""
        if self.info.pre_projection:
            if projection is None:
                raise ClipoodError(f"score '{self.name}' reads pre-projection features and needs the image "
                                   f"projection (clipood.clip.pre_projection.image_projection)")
            h = projection.head(id_text, logit_scale)
            return h.linearised() if self.info.linear_head else h
        return LinearHead.from_text_features(id_text, logit_scale)

    def new_fit(self, *, num_classes: int, head=None):
        """A fresh fit object for this score (None without a fit)."""
        fit = self.info.fit
        if fit is None:
            return None
        key = batch_key(self.info)
        if fit is GaussianFit:
            return GaussianFit(num_classes, features_key=key)
        if fit is ViMFit:
            return ViMFit(head, features_key=key, **self.fit_params)
        return fit(features_key=key, **self.fit_params)

    def adjust_to(self, features_width: int, bank_size: int) -> list[str]:
        """Fit the defaults to the data, each a documented choice (returned as notes for results.md): ViM's
        dim = 256 needs features wider than 256, so narrower features use dim = width // 2; KNN's k = 50 is for
        banks of at least 50,000 features (CIFAR's training set), smaller banks keep its ratio k/N = 1/1000 (at
        least 1: a few-shot pool's k is its nearest neighbour). Values the user set are kept (and checked by the score)."""
        notes = []
        if self.name == "vim" and "dim" not in self.fit_params and features_width <= 256:
            self.fit_params["dim"] = max(1, features_width // 2)
            notes.append(f"vim: dim = {self.fit_params['dim']} (features of width {features_width}; OpenOOD's 256 "
                         f"needs wider ones)")
        if self.name == "knn" and "k" not in self.params and bank_size < KNN_FULL_BANK:
            self.params["k"] = max(1, round(50 * bank_size / KNN_FULL_BANK))
            notes.append(f"knn: k = {self.params['k']} (OpenOOD's k/N = 50/50,000 on {bank_size} ID features; "
                         f"OpenOOD: k = 50)")
        return notes

    # ------------------------------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score_batch(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor | None, *,
                    id_text: torch.Tensor, logit_scale: float, projection=None, encoder=None,
                    input_std=None) -> torch.Tensor:
        """Scores (B,) of one batch; ``logits`` the scaled ID logits (B×N) for the logit scores."""
        info = self.info
        if info.needs_fit and self.stats is None:
            raise ClipoodError(f"score '{self.name}' needs fitted statistics; fit them first")
        kw = {**self.params, **(info.stats_kwargs(self.stats) if self.stats is not None else {})}
        if info.inputs == ("logits",):
            return info.fn(logits, **kw)
        if info.label_file:
            v = batch["image_features"].float()
            full = torch.cat([logits.float(), logit_scale * v @ self.envisioned.float().T.to(v.device)], dim=1)
            return info.fn(full, logits.shape[1], **kw)
        if info.pixels:
            from .odin import CLIP_STD

            if encoder is None:
                raise ClipoodError("the 'odin' score reads images and needs the frozen image encoder")
            with torch.enable_grad():
                return info.fn(batch["pixels"], encoder, self.head(id_text, logit_scale),
                               input_std=input_std or CLIP_STD, **kw)
        x = batch[self.key]
        if "head" in info.inputs:
            return info.fn(x, self.head(id_text, logit_scale, projection), **kw)
        return info.fn(x, **kw)

    # ------------------------------------------------------------------------------------------ saving
    def stats_file_tensors(self) -> dict[str, torch.Tensor]:
        """The statistics (``stats.<name>``) and EOE's envisioned features (``envisioned``) as one dict."""
        out = {f"stats.{k}": v.detach().cpu().contiguous() for k, v in
               (self.stats.state_dict().items() if self.stats is not None else ())}
        if self.envisioned is not None:
            out["envisioned"] = self.envisioned.detach().cpu().float().contiguous()
        return out

    def describe(self) -> dict[str, Any]:
        """The JSON description a detector folder records (name, params, fit params, statistics kind)."""
        return {"name": self.name, "params": dict(self.params), "fit_params": dict(self.fit_params),
                "stats_kind": self.stats.KIND if self.stats is not None else None}

    @classmethod
    def from_saved(cls, desc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], where: str) -> "PosthocScore":
        """Rebuild from :meth:`describe` and :meth:`stats_file_tensors`; a missing or odd tensor is refused."""
        info = get_score(desc["name"])
        stats = None
        if info.fit is not None:
            cls_ = STATS_OF_FIT[info.fit]
            if desc.get("stats_kind") != cls_.KIND:
                raise ClipoodError(f"{where}: score '{info.name}' needs {cls_.KIND} statistics, the folder records "
                                   f"{desc.get('stats_kind')!r}; re-save the detector")
            stats = cls_.from_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("stats.")})
        elif any(k.startswith("stats.") for k in tensors):
            raise ClipoodError(f"{where}: score '{info.name}' takes no statistics but the file holds some")
        return cls(info.name, desc.get("params"), desc.get("fit_params"), stats, tensors.get("envisioned"))
