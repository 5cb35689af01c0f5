"""The comparison table on the mini world (paper Tab. 2-4 layout): zero-shot NegLabel, CoOp, LoCoOp, NegPT,
ConNegPT, LAPT, KR-NFT, LoCoOp + KR-NFT, LAPT + KR-NFT, SCT, SCT + KR-NFT, ID-like, LSN and NegPrompt (as released)
on base / new_class / new_style, one command.

    accelerate launch recipes/compare.py                      # = --config recipes/configs/compare_mini.yaml
    accelerate launch recipes/compare.py mini.seed=1 output_dir=outputs/compare-w1
    clipood compare ...                                       # the same, installed: from any folder

Each variant (``variants`` in the YAML) trains into ``output_dir/<variant>`` with the training recipe and reuses
the same image-feature and crop caches; ``stack_on`` makes a variant train on an earlier one's trained adapter
(``base_checkpoint``). Writes results.json (every row of every method), results.md (per-split tables and the
summary: AUROC / FPR95 / ID accuracy per split and the Base / New harmonic mean of FPR95) and plots.

``extra=[clipn,zoc,finetune]`` (any of them; none by default: each costs more than a variant) adds the rows of
CLIPN (CTW, ATD), ZOC and the fine-tuned encoder's post-hoc scores after the variants, each its own recipe
(recipes/clipn.py, zoc.py, finetune.py) on this setup, with the ``clipn`` / ``zoc`` / ``finetune`` sections here.
"""
import time
from pathlib import Path

from clipood.runtime.recipe import run

CONFIGS = Path(__file__).resolve().parent / "configs"
EXTRA_KEYS = ("extra", "clipn", "zoc", "finetune")   # the extras' settings (clipood_recipes/compare_extra.py)


def main(argv):
    from clipood_recipes.compare import ZERO_SHOT, CompareSettings, plan_variants
    from clipood_recipes.compare_extra import plan_extras
    from clipood_recipes.configure import compose_variant, load_settings
    from clipood_recipes.settings import TrainRunSettings

    argv = argv if any(a.startswith(("--config", "config=", "preset=")) for a in argv) else ["preset=mini", *argv]
    cfg = load_settings(CompareSettings, argv, configs_dir=CONFIGS, recipe="compare", doc=__doc__)
    plan = plan_variants(cfg)
    extras = plan_extras(cfg)   # extra=[clipn, zoc, finetune]: their own recipes' settings, checked
    from clipood_recipes.krnft import KRNFTRecipe, check_resume  # after the config (fast config errors)

    def compose(name, overrides):
        return compose_variant(TrainRunSettings, cfg, overrides, f"variant '{name}'")

    ready = {n: compose(n, o) for n, o in plan if "base_checkpoint" not in o}  # checked before any work
    for v in ready.values():
        check_resume(v)
    from clipood_recipes.compare_extra import run_extras, start_extras

    started = start_extras(extras)   # before any work, like the variants
    recipe = KRNFTRecipe({k: v for k, v in cfg.items() if k not in ("stack_on", "detector", *EXTRA_KEYS)})
    recipe.title = "Comparison (zero-shot NegLabel, prompt tuning, KR-NFT and stacking)"
    recipe.setup(also=tuple(ready.values()))   # once: benchmark, label features, image features, zero-shot rows
    trained = {}
    for i, (name, overrides) in enumerate(plan, 1):
        v = ready.get(name) or compose(name, overrides)   # a stacked variant: its base has trained by now
        if recipe.accelerator.is_main_process:
            print(f"[{i}/{len(plan) + len(started)}] {name}: training into {v['output_dir']}", flush=True)
        start = time.time()
        trained[name] = (recipe.train(v), v)
        recipe.evaluate(v)
        recipe.notes.append(f"{name}: trained and evaluated in {time.time() - start:.0f}s")
    run_extras(recipe, started, len(plan), len(plan) + len(started))   # their rows after the variants' (none by default)
    # output_dir/detector/ is the variant the settings name (not whichever trained last); each variant's trained
    # adapter is in output_dir/<variant>/adapter
    recipe.detector_method = cfg["detector"]
    recipe.detector_adapter, recipe.detector_cfg = trained.get(cfg["detector"], (None, None))
    recipe.save()


if __name__ == "__main__":
    run(main)
