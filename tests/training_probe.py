"""The one place where tests of the training path touch its internals (see docs/testing.md).

The tests in test_training_optimiser.py, test_method_wiring.py and test_eval_wiring.py read like "given this
config and these tiny tensors, the learning rate / gradient / loss / score must equal this hand-computed
number". They reach the code under test only through the functions below, so a refactor of the method, the
engine, the evaluation wiring or the config moves these few lines and no test.

What each function promises (its contract with the tests), whatever the code behind it becomes:
- ``recipe_config(*overrides)``: the KR-NFT recipe's config with ``key=value`` overrides (validated).
- ``train_settings(**train)``: the validated ``train`` section of that config with ``train.*`` overrides.
- ``fit_recording(module, settings, out_dir)``: run the real training loop on ``module`` (a
  :class:`LinearLoss`) and return ``(logged_lr, weights, param_groups)``: the learning rate logged for every
  step, the module's weights before every step and after the last, and the optimiser's param groups as
  checkpointed at the end.
- ``method_from_config(cfg, text_features, num_id)``: adapter + weighted loss terms, as a recipe builds them.
- ``method_terms(method, id_features, id_labels, neg_features, id_condition, neg_condition)``: one forward on
  a batch of ID crops and negative crops; ``{"loss": total, "<term>_loss": ...}`` as floats.
- ``collate_conditions(...)``: the condition features the training data hand to the meta-nets.
- ``eval_raw_scores(methods, split_features, cfg)``: raw evaluation scores ``{method: {"id/<set>" |
  "ood/<set>": 1-D array}}`` for one split, of method specs from ``frozen_method(score, temperature)`` (frozen
  cosines) or ``zero_shot_methods(cfg)`` (the recipe's zero-shot rows).
- ``train_and_score(cfg, split_features, crops, out_dir)``: the recipe's train-then-evaluate step on a
  given crop cache; returns ``(trained adapter, raw scores as above)``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from clipood.evaluation.benchmark import make_accelerator
from clipood.crops.cache import CropCache
from clipood.evaluation.runner import ScoredMethod, evaluate_detectors, zero_shot_detectors
from clipood.training.checkpoints import latest_checkpoint
from clipood.training.loop import CropTrainData, fit
from clipood.evaluation.protocol import EvalSplit, SplitFeatures
from clipood_recipes.configure import compose_settings, train_config
from clipood_recipes.methods import training_task
from clipood_recipes.settings import TrainRunSettings

__all__ = [
    "LinearLoss", "recipe_config", "train_settings", "fit_recording", "crop_cache", "method_from_config",
    "adapter_of", "method_terms", "collate_conditions", "split_features", "frozen_method", "zero_shot_methods",
    "eval_raw_scores", "train_and_score",
]

_ACCELERATOR = None


def accelerator():
    """One CPU accelerator for the whole test session (Accelerate keeps a process-wide state anyway)."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        _ACCELERATOR = make_accelerator(cpu=True)
    return _ACCELERATOR


# ----------------------------------------------------------------------------------------------- training
class LinearLoss(nn.Module):
    """loss_t = Σ_p ⟨p, g_p(t)⟩, so the gradient of parameter p at step t is exactly g_p(t) (no data involved).

    ``init``: name → initial value; ``grads``: one {name → gradient} per step (the last repeats). The module
    records its weights before every forward, so the test sees what each optimiser step did.
    """

    def __init__(self, init: dict[str, torch.Tensor], grads: Sequence[dict[str, torch.Tensor]]):
        super().__init__()
        self.adapter = nn.ParameterDict({k: nn.Parameter(v.clone().double()) for k, v in init.items()})
        self.grads = [{k: v.double() for k, v in g.items()} for g in grads]
        self.seen: list[dict[str, torch.Tensor]] = []

    def forward(self, batch) -> dict[str, torch.Tensor]:
        self.seen.append(self.weights())
        g = self.grads[min(len(self.seen) - 1, len(self.grads) - 1)]
        loss = sum((p * g[k]).sum() for k, p in self.adapter.items())
        return {"loss": loss}

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.adapter.items()}


def recipe_config(*overrides: str) -> dict:
    """The KR-NFT recipe's config (its defaults, the ``mini`` setting) with ``key=value`` overrides, built and
    checked the way the recipe builds it from its command line."""
    configs = Path(__file__).resolve().parents[1] / "recipes" / "configs"
    return compose_settings(TrainRunSettings, list(overrides), configs_dir=configs, recipe="krnft")


def train_settings(**train):
    """The recipe's ``train`` section with ``train.<key>=<value>`` overrides, validated as a recipe does."""
    return train_config(recipe_config(*(f"train.{k}={v!r}" if isinstance(v, float) else f"train.{k}={v}"
                                        for k, v in train.items())))


def crop_cache(n_images: int, q: int = 1, dim: int = 4, num_id: int = 2, seed: int = 0) -> CropCache:
    """A synthetic crop cache: n images with q ID and q negative crops each (unit random features)."""
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)

    labels = torch.arange(n_images) % num_id
    img = torch.arange(n_images).repeat_interleave(q)
    return CropCache(id_features=unit(n_images * q, dim), id_labels=labels.repeat_interleave(q), id_image=img,
                     id_similarity=torch.zeros(n_images * q), neg_features=unit(n_images * q, dim),
                     neg_image=img.clone(), neg_similarity=torch.zeros(n_images * q),
                     top_features=unit(n_images, dim), image_features=unit(n_images, dim), image_labels=labels,
                     image_indices=torch.arange(n_images))


def fit_recording(module: LinearLoss, settings, out_dir: Path, n_images: int = 8):
    """Train ``module`` with the real loop on a synthetic crop cache of ``n_images`` images.

    Returns (logged learning rate per step, weights before each step and after the last, param groups of the
    optimiser as checkpointed at the end).
    """
    result = fit(module, CropTrainData(crop_cache(n_images)), settings, accelerator(), out_dir, resume=False,
                 progress=False)
    weights = [*module.seen, module.weights()]
    ck = latest_checkpoint(Path(out_dir) / "checkpoints")
    groups = json.loads((ck / "optimizer.json").read_text())["param_groups"]
    return [h["lr"] for h in result.history], weights, groups


# ------------------------------------------------------------------------------------------------- method
def method_from_config(cfg: dict, text_features: torch.Tensor, num_id: int):
    """Adapter (registry name and options from ``cfg['adapter']``) + weighted loss terms (``cfg['losses']``),
    ``cfg`` from :func:`recipe_config`."""
    import adapters

    torch.manual_seed(cfg["seed"])
    a = cfg["adapter"]
    return training_task(cfg, adapters.build_adapter(a["name"], text_features, num_id, **a["options"]))


def adapter_of(method):
    return method.adapter


def method_terms(method, id_features, id_labels, neg_features=None, id_condition=None,
                 neg_condition=None) -> dict[str, float]:
    """One training forward on ID crops (with labels) and negative crops, optionally with the condition
    features each crop's meta-nets see; every output as a float."""
    batch = {"id_features": id_features, "id_labels": id_labels}
    if neg_features is not None:
        batch["neg_features"] = neg_features
    if id_condition is not None:
        batch["id_condition"] = id_condition
    if neg_condition is not None:
        batch["neg_condition"] = neg_condition
    return {k: float(v.detach()) for k, v in method(batch).items()}


def collate_conditions(cache: CropCache, positions: list[int], condition: str):
    """The batch the training data build for the images at ``positions`` → (id_features, id_condition,
    neg_features, neg_condition); conditions are None when crops condition on themselves."""
    b = CropTrainData(cache, condition=condition).collate(positions, "cpu")
    return b["id_features"], b.get("id_condition"), b["neg_features"], b.get("neg_condition")


# --------------------------------------------------------------------------------------------- evaluation
def split_features(text_features, num_id, id_features, id_labels, ood: dict[str, torch.Tensor],
                   name: str = "base", id_name: str = "id") -> SplitFeatures:
    split = EvalSplit(name, {id_name: None}, {k: None for k in ood}, [f"c{i}" for i in range(num_id)])
    return SplitFeatures(split, {id_name: {"features": id_features, "labels": id_labels}},
                         {k: {"features": v, "labels": torch.zeros(len(v), dtype=torch.long)}
                          for k, v in ood.items()}, text_features, num_id)


def frozen_method(score: str, temperature: float, name: str = "frozen"):
    """Frozen CLIP cosines scored with ``score`` at ``temperature`` (an evaluation method spec)."""
    from clipood.evaluation.protocol import zero_shot_logits

    return ScoredMethod(name, zero_shot_logits, score, temperature)


def zero_shot_methods(cfg: dict):
    from clipood.config.settings import EvalSettings, typed

    return zero_shot_detectors(typed(EvalSettings, cfg["eval"]))


def eval_raw_scores(methods, sf: SplitFeatures, cfg: dict) -> dict[str, dict[str, torch.Tensor]]:
    from clipood.config.settings import EvalSettings, typed

    _, raw = evaluate_detectors(list(methods), [sf], typed(EvalSettings, cfg["eval"]))
    return {m: {k: torch.as_tensor(v) for k, v in d.items()} for m, d in raw[sf.split.name].items()}


def train_and_score(cfg: dict, sf: SplitFeatures, crops: CropCache, out_dir: Path, monkeypatch):
    """The recipe's train → save → evaluate step (``cfg`` from :func:`recipe_config`) on a given crop cache
    instead of crops cut from images. Returns (trained adapter, raw scores of the tuned method)."""
    from clipood.config.records import DataSettings
    from clipood.config.settings import EvalSettings, typed
    from clipood.evaluation.benchmark import Benchmark
    from clipood_recipes import krnft

    cfg = {**cfg, "progress": False, "resume": False, "output_dir": str(out_dir)}
    monkeypatch.setattr(krnft, "build_crop_data", lambda *a, **k: crops)
    monkeypatch.setattr(krnft, "plot_loss", lambda *a, **k: None)
    recipe = krnft.KRNFTRecipe(cfg)
    recipe.accelerator, recipe.splits = accelerator(), [sf]
    recipe.bench = Benchmark(backbone=None, splits=[sf.split], corpus=None)
    recipe.data, recipe.ev = DataSettings.from_config(cfg), typed(EvalSettings, cfg["eval"])  # what setup builds
    recipe.rows, recipe.raw = [], {sf.split.name: {}}
    adapter = recipe.train()
    recipe.evaluate()
    raw = recipe.raw[sf.split.name][cfg["method_name"]]
    return adapter, {k: torch.as_tensor(v) for k, v in raw.items()}
