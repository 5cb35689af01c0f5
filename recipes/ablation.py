"""Component ablation (paper Tab. 6): FT → CoFT → CoFT+KR → KR-NFT, one command, one combined table.

    accelerate launch recipes/ablation.py                # = --config recipes/configs/ablation_mini.yaml

Each entry of ``variants`` is a set of overrides of the KR-NFT config (checked like a command line before
any work); every variant trains into ``output_dir/<variant>`` with the KR-NFT recipe and reuses the same
image-feature and crop-feature caches, so only the first variant encodes images. The summary table reports
Base / New FPR95 and their harmonic mean.
"""
import re
from pathlib import Path

from clipood.runtime.recipe import run

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv):
    from clipood.errors import ClipoodError
    from clipood_recipes.configure import compose_variant, load_settings
    from clipood_recipes.settings import AblationSettings, TrainRunSettings

    argv = argv if any(a.startswith(("--config", "config=", "preset=")) for a in argv) else ["preset=mini", *argv]
    cfg = load_settings(AblationSettings, argv, configs_dir=CONFIGS, recipe="ablation", doc=__doc__)
    if not cfg["variants"]:
        raise ClipoodError("no variants: pass --config recipes/configs/ablation_mini.yaml or set variants")
    from clipood_recipes.krnft import KRNFTRecipe  # after the config (fast config errors)

    variants = {}
    for name, overrides in cfg["variants"].items():  # every variant checked before any work
        out = str(Path(cfg["output_dir"]) / re.sub(r"[^A-Za-z0-9_.-]+", "_", name))
        v = compose_variant(TrainRunSettings, cfg, {**overrides, "method_name": name, "output_dir": out},
                            f"variant '{name}'")
        variants[name] = v
    recipe = KRNFTRecipe(cfg)
    recipe.title = "Component ablation (Tab. 6)"
    recipe.setup(also=tuple(variants.values()))  # once: benchmark, labels, cached image features, zero-shot rows
    for v in variants.values():
        recipe.train(v)     # the KR-NFT recipe's training with this variant's adapter and loss weights
        recipe.evaluate(v)
    recipe.save()


if __name__ == "__main__":
    run(main)
