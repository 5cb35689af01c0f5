"""ZOC (Esmaeilpour et al., AAAI 2022): candidate labels per image, score = the softmax mass on the seen labels.

    accelerate launch recipes/zoc.py                                   # mini world, offline retrieval candidates
    accelerate launch recipes/zoc.py zoc.k=10
    accelerate launch recipes/zoc.py zoc.generator=captioner zoc.decoder_dir=/models/zoc-decoder \\
        zoc.decoder_weights=/models/zoc/model.pt                        # the release's caption decoder, local

Steps: encode the evaluation images once (cached) → zero-shot MCM / NegLabel → the vocabulary's and the seen
labels' features in "This is a photo of a {}" → per image the candidate labels (the k nearest unseen words, or the
decoder's greedy top-k tokens) → ZOC on every split → results.json, results.md, plots.
"""
from pathlib import Path

from clipood.runtime.recipe import run

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv):
    from clipood_recipes.configure import load_settings
    from clipood_recipes.seed_settings import ZOCRunSettings

    cfg = load_settings(ZOCRunSettings, argv, configs_dir=CONFIGS, recipe="zoc", doc=__doc__)
    from clipood_recipes.zoc import ZOCRecipe  # after the config: a config error exits before torch loads

    recipe = ZOCRecipe(cfg)
    recipe.setup()      # accelerator, benchmark + backbone, label features, image features, zero-shot rows
    recipe.evaluate()   # candidate labels per image, the ZOC score on every split
    recipe.save()       # results.json, results.md, plots, config.json


if __name__ == "__main__":
    run(main)
