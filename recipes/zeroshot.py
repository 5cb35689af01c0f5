"""Zero-shot CLIP OOD detection (MCM and NegLabel) on the embedded mini world or a named benchmark suite.

    accelerate launch recipes/zeroshot.py                                   # mini world, shipped tiny CLIP
    accelerate launch recipes/zeroshot.py --config recipes/configs/zeroshot_imagenet.yaml data_root=/data
    python recipes/zeroshot.py mini.seed=3 output_dir=outputs/zs-seed3      # plain python works too

Writes results.json, results.md (tables like the paper's Tab. 1-3) and score-histogram / ROC plots to
``output_dir``. Any key below can be overridden on the command line as key=value.
"""
from clipood.pipeline import COMMON_DEFAULTS
from clipood.recipe import run

DEFAULTS = {**COMMON_DEFAULTS, "output_dir": "outputs/zeroshot"}


def main(argv):
    from clipood.pipeline import start_run, write_outputs
    from clipood.recipe import config_from_argv
    from clipood.report import summary_table

    cfg = config_from_argv(DEFAULTS, argv)
    acc, bench, _, rows, raw = start_run(cfg)
    if acc.is_main_process:
        md = write_outputs(rows, raw, cfg["output_dir"], "Zero-shot OOD detection", bench.notes,
                           plots=cfg["eval"]["plots"])
        print("\n".join(bench.notes))
        print(summary_table(rows))
        print(f"wrote {md} and results.json, plots in {cfg['output_dir']}")


if __name__ == "__main__":
    run(main)
