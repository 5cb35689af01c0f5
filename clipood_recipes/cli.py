"""The ``clipood`` command line: ``clipood train`` / ``compare`` / ``ablation`` / ``zeroshot`` (the recipes of
``recipes/``, installed: they work from any folder), ``clipood eval``, ``clipood mine``, ``clipood build-mini``,
``clipood adapters``, ``clipood detect``, ``clipood bench-report``. ``python -m clipood_recipes <command>`` is the
same, so ``accelerate launch -m clipood_recipes train ...`` launches a recipe from any folder too.

Every subcommand takes ``--config FILE`` and ``key=value`` overrides like the recipes (``clipood eval
mini.seed=2``); ``--help`` after a subcommand prints the values it would use. Errors are one line on stderr
and exit status 2.
"""
from __future__ import annotations

import sys

USAGE = """usage: clipood <command> [--config FILE] [key=value ...]

commands:
  train       train and evaluate an adapter (KR-NFT by default) = accelerate launch recipes/krnft.py
  compare     the comparison table of methods = accelerate launch recipes/compare.py
  ablation    the component ablation (Tab. 6) = accelerate launch recipes/ablation.py
  zeroshot    zero-shot MCM + NegLabel = accelerate launch recipes/zeroshot.py
  eval        zero-shot OOD evaluation (MCM, NegLabel) → results.json, results.md, plots (output outputs/eval)
  mine        mine NegLabel negatives for a benchmark's ID classes and write them to a text file
  build-mini  build (or reuse) the mini-world benchmark on disk and print its folder
  adapters    list the registered adapters and their options
  scores      list the scores eval.scores takes, with their parameters and what each needs
  detect      score images with a saved detector (a trained run's output_dir or a detector folder)
  bench-report FILE.json  print the efficiency table (paper Tab. 7 layout) of a saved `pytest --benchmark` run
"""


#: installed command → recipe script (``recipes/<name>.py``, shipped in the package as ``clipood_recipes/scripts``)
RECIPES = {"train": "krnft", "compare": "compare", "ablation": "ablation", "zeroshot": "zeroshot"}


def recipe_path(name: str):
    """The file of recipe ``name`` (``krnft``, ``compare``, ...): the package's copy of ``recipes/``."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "scripts" / f"{name}.py"


def _recipe(command: str):
    def run(argv):
        import runpy

        from clipood.errors import ClipoodError

        path = recipe_path(RECIPES[command])
        if not path.is_file():
            raise ClipoodError(f"recipe file {path} is missing: reinstall clipood (pip install -e .)")
        from clipood.runtime.recipe import run as run_recipe

        main = runpy.run_path(str(path), run_name="clipood_recipe")["main"]  # the module, not its __main__ block
        run_recipe(lambda _: main(argv))  # exits as `python recipes/<name>.py` does (errors, interrupts)

    run.__doc__ = f"Run recipes/{RECIPES[command]}.py (any folder: paths are relative to the current one)."
    return run


def _eval(argv):
    """Same as recipes/zeroshot.py, installed as a command (output_dir defaults to outputs/eval)."""
    from .configure import load_settings
    from .krnft import ZeroShotRecipe
    from .settings import ZeroShotSettings

    recipe = ZeroShotRecipe(load_settings(ZeroShotSettings, argv, doc=_eval.__doc__, default_output_dir="outputs/eval"))
    recipe.setup()
    recipe.save()


def _mine(argv):
    """Mine NegLabel negatives (Eq. 1) for the Base split's ID classes and write them to ``output``. Only the
    class names are read: a named suite's label set (``benchmark=imagenet`` needs no ImageNet on disk), the class
    folders of ``id_data`` for ``benchmark=custom``, or the mini world."""
    from clipood.clip.backbone import load_clip
    from clipood.config.checks import cache_root
    from clipood.config.records import DataSettings
    from clipood.evaluation.benchmark import label_features, make_accelerator, mining_inputs
    from clipood.runtime.recipe import setup_logging, use_cpu_threads

    from .configure import load_settings
    from .settings import MineSettings

    cfg = load_settings(MineSettings, argv, doc=_mine.__doc__)
    use_cpu_threads()
    accelerator = make_accelerator(cfg.get("cpu"))
    setup_logging(accelerator.is_main_process)
    names, corpus = mining_inputs(DataSettings.from_config(cfg), accelerator, progress=bool(cfg.get("progress")))
    backbone = load_clip(cfg["model"], cfg.get("pretrained"), device=accelerator.device)
    _, _, negs = label_features(backbone, names, corpus, cfg["negatives"], cache_root(cfg), accelerator,
                                cfg.get("progress"))
    if accelerator.is_main_process:
        negs.save(cfg["output"])
        print(f"wrote {len(negs)} negatives for {len(names)} ID classes to {cfg['output']}")


def _build_mini(argv):
    """Build (or reuse) a mini world and print its folder."""
    from clipood.mini.build import MiniWorldConfig, build_world

    from .configure import load_settings
    from .settings import BuildMiniSettings

    cfg = load_settings(BuildMiniSettings, argv, doc=_build_mini.__doc__)
    print(build_world(MiniWorldConfig(seed=int(cfg["seed"])), root=cfg["root"]))


def _adapters(argv):
    """List the registered adapters (``adapter.name=NAME``) and the options of each (``adapter.options.KEY=V``)."""
    from ._compat import import_adapters

    if _wants_help(argv, "clipood adapters", _adapters.__doc__):
        return

    ad = import_adapters()
    for name in ad.list_adapters():
        spec = ad.get_adapter_spec(name)
        print(f"{name}: {spec.adapter_cls.__name__}")
        for field, text in spec.config_cls.field_help().items():
            print(f"    {field}: {text}")


def _scores(argv):
    """List the scores ``eval.scores=[...]`` takes: the evaluation's own (on a method's logits) and the post-hoc
    ones (``clipood.posthoc``), each with its parameters (OpenOOD v1.5's defaults; set them with
    ``eval.score_options.NAME.PARAM=V``) and what it needs."""
    if _wants_help(argv, "clipood scores", _scores.__doc__):
        return
    from clipood.evaluation.posthoc_eval import score_lines

    print("\n".join(score_lines()))


def _detect(argv):
    from .detect import detect_main

    detect_main(argv)


def _bench_report(argv):
    """Render the efficiency record that ``pytest --benchmark`` wrote (``--bench-json``) as Markdown again."""
    from clipood.efficiency.record import load_record, render_markdown
    from clipood.errors import ClipoodError

    if _wants_help(argv, "clipood bench-report FILE.json", _bench_report.__doc__):
        return
    if len(argv) != 1 or argv[0].startswith("-"):
        raise ClipoodError("usage: clipood bench-report FILE.json (the record `pytest --benchmark` wrote, by default "
                           "benchmark-results/efficiency.json)")
    print(render_markdown(load_record(argv[0])), end="")


def _wants_help(argv, usage: str, doc: str | None) -> bool:
    """Print ``usage`` and ``doc`` for ``-h`` / ``--help`` (commands without key=value settings)."""
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {usage}\n\n{(doc or '').strip()}")
        return True
    return False


COMMANDS = {**{c: _recipe(c) for c in RECIPES}, "eval": _eval, "mine": _mine, "build-mini": _build_mini, "adapters": _adapters, "scores": _scores,
            "bench-report": _bench_report, "detect": _detect}


def main(argv=None) -> None:
    from clipood.errors import ClipoodError, unknown

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    try:
        if argv[0] not in COMMANDS:
            raise unknown("command", argv[0], COMMANDS)
        COMMANDS[argv[0]](argv[1:])
    except ClipoodError as e:
        from clipood.runtime.run_lock import release_output_dirs

        release_output_dirs(failed=True)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:  # noqa: BLE001 - one line, the lock released (as recipes: clipood.runtime.recipe.run)
        import os

        from clipood.runtime.recipe import unexpected_error_line
        from clipood.runtime.run_lock import release_output_dirs

        release_output_dirs(failed=True)
        if os.environ.get("CLIPOOD_TRACEBACK"):
            raise
        print(f"error: {unexpected_error_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
