"""Methods wired to data: the adapter of a config built over a split's label features, the loss terms around
it, the trained adapter as an OOD detector on every split (relabelled explicitly to each split's labels)."""
from __future__ import annotations

import logging

import torch

from clipood.errors import ClipoodError
from clipood.evaluation.runner import ScoredMethod
from clipood.training.task import PrepareInputs, TrainingTask

from ._compat import import_adapters

log = logging.getLogger("clipood")

__all__ = ["adapter_requires", "label_context", "build_adapter_for", "build_training_task", "training_task",
           "adapter_detector", "save_trained_adapter"]


def adapter_requires(cfg: dict) -> frozenset[str]:
    """What the config's adapter needs in its batches (``image_features``, ``local_features``, ...), so that the
    evaluation features and the crop cache carry it; read from the class (or the saved adapter) before any work."""
    adapters = import_adapters()
    name = cfg["adapter"]["name"]
    if cfg.get("init_adapter"):
        import json
        from pathlib import Path

        path = Path(cfg["init_adapter"]) / "adapter_config.json"
        try:
            name = json.loads(path.read_text(encoding="utf-8"))["adapter"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            from clipood.errors import ClipoodError

            raise ClipoodError(f"init_adapter={cfg['init_adapter']}: {path} is not a saved adapter's config; give "
                               f"the adapter/ folder of a trained run") from None
    return frozenset(adapters.get_adapter_spec(name).adapter_cls.requires)


def label_context(sf, backbone, device=None):
    """The :class:`adapters.AdapterContext` of one split, built from its label set (ID names and mined negatives
    with the templates their rows were encoded with, those frozen rows: no re-encoding) and the backbone's text
    path; prompt learners' prompts are refused, not cut, when too long."""
    return import_adapters().AdapterContext.from_label_set(
        sf.label_set, backbone, device=device, tokenizer=_fitting(getattr(backbone, "tokenizer", None)))


def _fitting(tokenizer):
    """Prompt learners tokenise "<context> <name>.": refused, not cut, when it does not fit the text encoder."""
    from clipood.labels.prompts import FittingTokenizer

    return None if tokenizer is None else FittingTokenizer(
        tokenizer, "a prompt learner's prompt (adapter.options.ctx_init or n_ctx, then the label name)",
        "shorten adapter.options.ctx_init (or n_ctx) or the class name")


def build_adapter_for(cfg: dict, sf, bench, device):
    """The config's adapter (by registry name, seeded by the run's seed) on the Base split's label context,
    or the saved adapter of ``init_adapter`` on that context."""
    adapters = import_adapters()
    torch.manual_seed(cfg["seed"])
    context = label_context(sf, bench.backbone, device)
    if cfg.get("init_adapter"):
        return adapters.load_adapter(cfg["init_adapter"], context=context).to(device)
    if cfg.get("base_checkpoint"):  # stacking: the adapter trains on a trained prompt adapter's features
        from .stacking import stacked_adapter

        return stacked_adapter(cfg, context, device)
    a = cfg["adapter"]
    return adapters.build_adapter(a["name"], context, **dict(a["options"]))


def build_training_task(cfg: dict, sf, bench, accelerator) -> TrainingTask:
    """Adapter + the weighted loss terms of Eq. 10 (with the configured L_cls / L_ood grouping)."""
    adapter = build_adapter_for(cfg, sf, bench, accelerator.device)
    task = training_task(cfg, adapter)
    # the method's own data preparation (LAPT's negative-label images); a no-op for most tasks
    task.prepare(PrepareInputs(backbone=bench.backbone, device=accelerator.device, seed=int(cfg["seed"]),
                               world_dir=bench.world_dir, progress=bool(cfg["progress"])))
    return task


def training_task(cfg: dict, adapter) -> TrainingTask:
    """``adapter`` trained with the config's loss weights (Eq. 10), logit scale and negative grouping
    (``cls_groups`` / ``ood_groups``: 10 in the released code, seeded by the run's seed). An adapter class may
    name its own task (``task_cls``: a TrainingTask subclass adding its method's terms, e.g. LoCoOp, LAPT)."""
    return adapter.task_cls(adapter, cfg["losses"], logit_scale=cfg["eval"]["logit_scale"],
                    options={"cls_groups": cfg["cls_groups"], "ood_groups": cfg["ood_groups"], "seed": cfg["seed"]})


def save_trained_adapter(adapter, directory) -> None:
    import_adapters().save_adapter(adapter, directory, include_base=True)


def adapter_detector(cfg: dict, adapter, splits, bench) -> tuple[ScoredMethod, list, list[str]]:
    """The trained adapter scored on its tuned features (NegLabel by default, paper §3.5), the splits it can
    be evaluated on, and a note for each split it cannot move to (weights tied to the training labels) —
    those are left out of the tables, never scored with frozen features in its name. MCM's temperature 1 on
    raw cosines is ``logit_scale`` on the scaled logits (``clipood.scores.score_temperature``)."""
    from clipood.evaluation.scoring import adapter_logits
    from clipood.scores import score_temperature

    score = cfg["eval"]["score"]
    moved, usable, notes = {}, [], []
    for sf in splits:
        try:
            moved[id(sf)] = adapter.for_labels(label_context(sf, bench.backbone, adapter.base_text_features.device))
            usable.append(sf)
        except ClipoodError as e:
            notes.append(f"{cfg['method_name']}: not evaluated on {sf.split.name}: {e}")
            log.warning("%s", notes[-1])

    def logits_fn(batch, sf):  # GL-MCM needs the patch cosines too (LoCoOp returns them as local_logits);
        # eval.score=adapter: the method's own released test score (LSN, NegPrompt), computed by the adapter
        return adapter_logits(moved[id(sf)], batch, local=score == "glmcm", own_score=score == "adapter")

    return ScoredMethod(cfg["method_name"], logits_fn, score, score_temperature(score, cfg["eval"]["logit_scale"])), \
        usable, notes


def trains_text_encoder(adapter) -> bool:
    """True when the trainable part of ``adapter`` runs the text encoder in every step (prompt learners; a stack
    trains its tuner only): such steps are encoder-sized and get the encoders' thread policy."""
    return bool(getattr(getattr(adapter, "tuner", adapter), "uses_text_encoder", False))
