"""Post-hoc OOD scores of the field, with the statistics they need, on CLIP or any classifier.

Pure torch: every score is a function of tensors with keyword parameters whose defaults are OpenOOD v1.5's
(``openood/postprocessors/*_postprocessor.py`` and ``configs/postprocessors/*.yml``). Higher = more ID.

* logits only — :func:`msp`, :func:`max_logit`, :func:`energy`, :func:`gen`, :func:`eoe` (ID + envisioned labels);
* features + a head — :func:`react`, :func:`ash_p`, :func:`ash_b`, :func:`ash_s`, :func:`dice`, :func:`gradnorm`;
* features + fitted statistics — :func:`knn`, :func:`mahalanobis` (MDS), :func:`rmds`, :func:`vim`;
* pixels — :func:`odin` (through a frozen image encoder).

Statistics are fitted in streaming form (:mod:`clipood.posthoc.fit`) and stored as plain tensors
(:mod:`clipood.posthoc.stats`). :func:`get_score` / :func:`list_scores` say what each score needs.
docs/methods.md ("Post-hoc scores") gives every formula, default and deviation.
"""
from .activation import ash_b, ash_p, ash_s, ash_transform, dice, dice_mask, gradnorm, react
from .distance import knn, mahalanobis, rmds, vim
from .fit import GaussianFit, KNNFit, MeanFit, ReActFit, ViMFit, fit_statistics
from .heads import LinearHead, ProjectedHead
from .logit_scores import energy, eoe, gen, load_envisioned_labels, max_logit, msp
from .odin import CLIP_STD, odin, odin_gradient, odin_perturbation
from .quantile import StreamingPercentile, linear_percentile
from .registry import ScoreInfo, get_score, list_scores
from .stats import GaussianStats, KNNStats, MeanStats, ReActStats, Statistics, ViMStats, fit_key

__all__ = [
    "CLIP_STD", "GaussianFit", "GaussianStats", "KNNFit", "KNNStats", "LinearHead", "MeanFit", "MeanStats",
    "ProjectedHead", "ReActFit", "ReActStats", "ScoreInfo", "Statistics", "StreamingPercentile", "ViMFit",
    "ViMStats", "ash_b", "ash_p", "ash_s", "ash_transform", "dice", "dice_mask", "energy", "eoe", "fit_key",
    "fit_statistics", "gen", "get_score", "gradnorm", "knn", "linear_percentile", "list_scores",
    "load_envisioned_labels", "mahalanobis", "max_logit", "msp", "odin", "odin_gradient", "odin_perturbation",
    "react", "rmds", "vim",
]
