"""CLIPN (Wang et al., ICCV 2023): train the 'no' text encoder on image–text pairs, evaluate CTW / ATD beside MCM.

    accelerate launch recipes/clipn.py                                   # mini world: its pretraining captions
    accelerate launch recipes/clipn.py clipn.checkpoint=no_encoder.safetensors   # evaluate a CLIPN checkpoint
    accelerate launch recipes/clipn.py clipn.pairs.kind=folder clipn.pairs.path=/data/pairs model=ViT-B-16 ...

Steps: encode the pairs' images and captions with the frozen CLIP → train the 'no' path (a copy of the text
tower + 16 additive prompts) with 0.5·(L_bin_yes + L_bin_no + L_tso) → ``no_encoder.safetensors`` → zero-shot
MCM / NegLabel and CLIPN-CTW / CLIPN-ATD on every split → results.json, results.md, plots.
"""
from pathlib import Path

from clipood.runtime.recipe import run

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv):
    from clipood_recipes.configure import load_settings
    from clipood_recipes.seed_settings import CLIPNRunSettings

    cfg = load_settings(CLIPNRunSettings, argv, configs_dir=CONFIGS, recipe="clipn", doc=__doc__)
    from clipood_recipes.clipn import CLIPNRecipe  # after the config: a config error exits before torch loads

    recipe = CLIPNRecipe(cfg)
    recipe.setup()      # accelerator, benchmark + backbone, label features, image features, zero-shot rows
    recipe.train()      # pairs → frozen features → the 'no' encoder through Accelerate (or clipn.checkpoint)
    recipe.evaluate()   # CTW / ATD rows on every split
    recipe.save()       # results.json, results.md, plots, config.json


if __name__ == "__main__":
    run(main)
