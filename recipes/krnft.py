"""KR-NFT: Knowledge Regularized Negative Feature Tuning (ACM MM 2025) — train and evaluate.

    accelerate launch recipes/krnft.py                                # mini world (offline default)
    accelerate launch recipes/krnft.py losses.kr=10 output_dir=outputs/krnft-l10
    accelerate launch recipes/krnft.py adapter.name=taskres           # any registered adapter, its own defaults
    accelerate launch recipes/krnft.py preset=paper data_root=/data   # = --config recipes/configs/krnft_paper.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/krnft.py cpu=true   # 2 CPU processes
    clipood train ...                                                 # the same, installed: from any folder

Steps: mine NegLabel negatives → encode evaluation images once (cached) → k-shot training images → P random
crops each, ranked by similarity to "a photo of a <class>" → Q ID + Q negative crops encoded once (cached) →
train the adapter with L = L_cls + λ1·L_ood + λ2·L_kr (Eq. 10) → evaluate zero-shot NegLabel and the tuned
adapter on Base / unseen classes / unseen styles → results.json, results.md, plots, adapter, checkpoints.

Presets (``preset=NAME``, complete files in recipes/configs/krnft_NAME.yaml): ``mini`` (the default),
``paper`` (§4.1 on ImageNet) and ``official`` (the released code's settings). ``preset=clipn_mini``,
``zoc_mini`` and ``finetune_mini`` hand the command line over to recipes/clipn.py, zoc.py and finetune.py (their
own ``preset=mini``, recipes/configs/<method>_mini.yaml): CLIPN, ZOC and the fine-tuned encoder train and evaluate
through this entry point too.
"""
from pathlib import Path

from clipood.runtime.recipe import run

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv):
    from clipood_recipes.seed_settings import seed_hand_over

    handed = seed_hand_over(argv)   # preset=clipn_mini / zoc_mini / finetune_mini: that method's own recipe
    if handed is not None:
        name, rest = handed
        import runpy

        return runpy.run_path(str(Path(__file__).resolve().parent / f"{name}.py"), run_name="clipood_recipe")[
            "main"](rest)
    from clipood_recipes.configure import load_settings
    from clipood_recipes.settings import TrainRunSettings

    cfg = load_settings(TrainRunSettings, argv, configs_dir=CONFIGS, recipe="krnft", doc=__doc__)
    from clipood_recipes.krnft import KRNFTRecipe  # after the config: a config error exits before torch loads

    recipe = KRNFTRecipe(cfg)
    recipe.setup()      # accelerator, benchmark + backbone, label features with mined negatives, image features
    recipe.train()      # few-shot crops (cached), adapter + loss terms, the Accelerate loop, checkpoints
    recipe.evaluate()   # the tuned adapter on every split, next to zero-shot NegLabel
    recipe.save()       # results.json, results.md, plots, config.json


if __name__ == "__main__":
    run(main)
