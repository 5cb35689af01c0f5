"""Zero-shot CLIP OOD detection (MCM and NegLabel) on the embedded mini world or a named benchmark suite.

    accelerate launch recipes/zeroshot.py                                   # mini world, shipped tiny CLIP
    accelerate launch recipes/zeroshot.py preset=imagenet data_root=/data   # = recipes/configs/zeroshot_imagenet.yaml
    python recipes/zeroshot.py mini.seed=3 output_dir=outputs/zs-seed3      # plain python works too

Writes results.json, results.md (tables like the paper's Tab. 1-3) and score-histogram / ROC plots to
``output_dir``. Any key can be overridden on the command line as key=value (``--help`` lists them).
"""
from pathlib import Path

from clipood.runtime.recipe import run

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv):
    from clipood_recipes.configure import load_settings
    from clipood_recipes.settings import ZeroShotSettings

    cfg = load_settings(ZeroShotSettings, argv, configs_dir=CONFIGS, recipe="zeroshot", doc=__doc__)
    from clipood_recipes.krnft import ZeroShotRecipe  # after the config: a config error exits before torch loads

    recipe = ZeroShotRecipe(cfg)
    recipe.setup()      # accelerator, benchmark + backbone, label features, image features, zero-shot rows
    recipe.save()       # results.json, results.md, plots


if __name__ == "__main__":
    run(main)
