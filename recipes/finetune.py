"""Fine-tuned visual encoder baselines (KR-NFT Tab. 1 "traditional methods"; NegLabel's and NPOS's protocol):
fine-tune the last blocks of the CLIP image encoder with CE on the ID training images, then post-hoc scores.

    accelerate launch recipes/finetune.py                                  # mini world (offline default)
    accelerate launch recipes/finetune.py finetune.trainable_blocks=2 finetune.scores=[msp,energy,knn]

Steps: encode the evaluation images once (cached) → zero-shot MCM / NegLabel → the frozen trunk's outputs for the
training and evaluation images (cached) → CE fine-tuning of a copy of the last blocks, pooling and projection
against the zero-shot text classifier (Accelerate) → MSP, MaxLogit, Energy, GEN, KNN, ViM, MDS on the fine-tuned
features → results.json, results.md, plots, finetuned_head.safetensors.
"""
from pathlib import Path

from clipood.runtime.recipe import run

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv):
    from clipood_recipes.configure import load_settings
    from clipood_recipes.seed_settings import FinetuneRunSettings

    cfg = load_settings(FinetuneRunSettings, argv, configs_dir=CONFIGS, recipe="finetune", doc=__doc__)
    from clipood_recipes.finetune import FinetuneRecipe  # after the config: a config error exits before torch loads

    recipe = FinetuneRecipe(cfg)
    recipe.setup()      # accelerator, benchmark + backbone, label features, image features, zero-shot rows
    recipe.train()      # trunk outputs of the ID training images (cached), CE on the head copy, saved
    recipe.evaluate()   # post-hoc scores on the fine-tuned encoder, every split
    recipe.save()       # results.json, results.md, plots, config.json


if __name__ == "__main__":
    run(main)
