"""Typed schemas of the recipes: the shared run settings (:mod:`clipood.config.settings`) plus the training sections
(adapter, loss weights, shots, crops, optimisation). Defaults are the default run's (the mini world);
``recipes/configs/<recipe>_<preset>.yaml`` carry every value of each reported setting."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from clipood.config.settings import TrainConfig
from clipood.config.settings import CropSettings, EvalSettings, RunSettings, opt, section

from .seed_settings import CLIPNSettings, FinetuneSettings, ZOCSettings

__all__ = ["AdapterSettings", "LossWeights", "TrainRunSettings", "AblationSettings", "ZeroShotSettings",
           "MineSettings", "BuildMiniSettings", "CompareSettings", "RECIPE_SETTINGS"]


@dataclass
class AdapterSettings:
    name: str = opt("nft", "registered adapter (`clipood adapters` lists them and their options)")
    options: Dict[str, Any] = opt({}, "options of that adapter's config; choosing another adapter resets them "
                                      "to its defaults")


@dataclass
class LossWeights:
    """Eq. 10: L = cls·L_cls + ood·L_ood + kr·L_kr (+ the Fig. 4c KR variants); 0 turns a term off."""

    cls: float = opt(1.0, "weight of L_cls (Eq. 7)")
    ood: float = opt(0.3, "λ1, weight of L_ood (Eq. 8)")
    kr: float = opt(1000.0, "λ2, weight of L_kr (Eq. 9): 1000 on the mini world, 100 in the paper")
    kr_logit: float = opt(0.0, "KR on logits (Fig. 4c)")
    kr_prob: float = opt(0.0, "KR on probabilities (Fig. 4c)")


@dataclass
class TrainRunSettings(RunSettings):
    """A training recipe: shared settings + few-shot crops, adapter, loss terms, optimisation."""

    output_dir: str = opt("outputs/krnft", "folder for results, plots, the adapter and checkpoints")
    preset: Optional[str] = opt("mini", "name of the complete setting this run starts from (recipes/configs)")
    eval: EvalSettings = section(EvalSettings, "evaluation", mcm=False)
    method_name: Optional[str] = opt(None, "the tuned method's row name (None = its table name: KR-NFT for nft, "
                                           "CoOp for coop, LoCoOp+KR-NFT for nft on base=locoop)")
    adapter: AdapterSettings = section(AdapterSettings, "the adapter trained", options={"hidden_dim": 32})
    losses: LossWeights = section(LossWeights, "loss weights (Eq. 10)")
    cls_groups: int = opt(1, "L_cls over this many random groups of negatives (released code: 10)")
    ood_groups: int = opt(1, "L_ood over this many random groups of negatives (released code: 10)")
    shots: int = opt(4, "training images per ID class (0 = all)")
    crops: CropSettings = section(CropSettings, "training crops (paper §3.4)")
    train: TrainConfig = section(TrainConfig, "optimisation and checkpoints")
    resume: bool = opt(True, "resume from output_dir/checkpoints when they belong to this configuration")
    init_adapter: Optional[str] = opt(None, "start from a saved adapter folder instead of a new adapter")
    base: Optional[str] = opt(None, "stack the adapter on a trained prompt adapter (coop, locoop, lapt, negpt): "
                                    "its text features become the frozen base; needs base_checkpoint")
    base_checkpoint: Optional[str] = opt(None, "run folder (or its adapter/ folder) of that trained prompt adapter")
    train_data: Dict[str, Any] = opt({}, "dataset spec of the training pool (real benchmarks)")
    train_classes: str = opt("exact", "the training data's classes (by name) must be the ID classes: exact | "
                                      "subset (some of them)")


@dataclass
class AblationSettings(TrainRunSettings):
    output_dir: str = opt("outputs/ablation", "folder of the combined table; variants train in sub-folders")
    variants: Dict[str, Any] = opt({}, "name: overrides of this config, one trained method each (Tab. 6)")


@dataclass
class ZeroShotSettings(RunSettings):
    output_dir: str = opt("outputs/zeroshot", "folder for results.json, results.md and plots")
    preset: Optional[str] = opt("mini", "name of the complete setting this run starts from (recipes/configs)")


@dataclass
class MineSettings(RunSettings):
    output: str = opt("negatives.tsv", "text file the mined negatives are written to")


@dataclass
class BuildMiniSettings:
    seed: int = opt(0, "which mini world to build")
    root: Optional[str] = opt(None, "where to build it (None = $CLIPOOD_DATA/mini or ~/.cache/clipood/mini)")


#: the schema of each recipe, by the prefix of its YAML files (``recipes/configs/<recipe>_<preset>.yaml``);
#: a YAML file with another prefix is a KR-NFT run config (e.g. an adapter's own, see docs/adding-an-adapter.md)
@dataclass
class CompareSettings(AblationSettings):
    """recipes/compare.py: variants as in the ablation, some stacked on the trained adapter of an earlier one."""

    output_dir: str = opt("outputs/compare", "folder of the combined table; variants train in sub-folders")
    stack_on: Dict[str, Any] = opt({}, "variant: the earlier variant whose trained adapter it stacks on")
    detector: str = opt("KR-NFT", "the variant (or NegLabel (zero-shot)) saved as output_dir/detector/")
    extra: List[str] = opt([], "seed methods with recipes of their own, evaluated after the variants on the same "
                               "setup (their rows in the same tables): clipn (CLIPN-CTW, CLIPN-ATD), zoc, finetune "
                               "(post-hoc scores on the fine-tuned encoder); [] = none (each adds more time than a "
                               "variant: README)")
    clipn: CLIPNSettings = section(CLIPNSettings, "CLIPN (extra: clipn), as recipes/clipn.py")
    zoc: ZOCSettings = section(ZOCSettings, "ZOC (extra: zoc), as recipes/zoc.py")
    finetune: FinetuneSettings = section(FinetuneSettings, "the fine-tuned encoder (extra: finetune), as "
                                                           "recipes/finetune.py")


RECIPE_SETTINGS: dict[str, type] = {"krnft": TrainRunSettings, "ablation": AblationSettings,
                                    "zeroshot": ZeroShotSettings, "compare": CompareSettings}
# the seed methods with recipes of their own (CLIPN, ZOC, the fine-tuned encoder): clipood_recipes/seed_settings.py
from .seed_settings import SEED_RECIPE_SETTINGS  # noqa: E402  (they extend ZeroShotSettings above)

RECIPE_SETTINGS.update(SEED_RECIPE_SETTINGS)
