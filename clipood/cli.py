"""The ``clipood`` command line: ``clipood eval``, ``clipood mine``, ``clipood build-mini``, ``clipood adapters``.

Every subcommand takes ``key=value`` overrides like the recipes (``clipood eval mini.seed=2``); ``--help``
prints the defaults. Errors are one line on stderr and exit status 2.
"""
from __future__ import annotations

import sys

USAGE = """usage: clipood <command> [--config FILE] [key=value ...]

commands:
  eval        zero-shot OOD evaluation (MCM, NegLabel) → results.json, results.md, plots
  mine        mine NegLabel negatives for a benchmark's ID classes and write them to a text file
  build-mini  build (or reuse) the mini-world benchmark on disk and print its folder
  adapters    list the registered adapters and their options
"""


def _eval(argv):
    """Same as recipes/zeroshot.py, installed as a command."""
    from .pipeline import COMMON_DEFAULTS, start_run, write_outputs
    from .recipe import config_from_argv
    from .report import summary_table

    cfg = config_from_argv({**COMMON_DEFAULTS, "output_dir": "outputs/eval"}, argv)
    acc, bench, _, rows, raw = start_run(cfg)
    if acc.is_main_process:
        md = write_outputs(rows, raw, cfg["output_dir"], "Zero-shot OOD detection", bench.notes, cfg["eval"]["plots"])
        print(summary_table(rows))
        print(f"wrote {md}")


def _mine(argv):
    from .pipeline import COMMON_DEFAULTS, label_features, make_accelerator, setup_benchmark
    from .recipe import config_from_argv, setup_logging

    cfg = config_from_argv({**COMMON_DEFAULTS, "output": "negatives.tsv"}, argv)
    acc = make_accelerator(cfg)
    setup_logging(acc.is_main_process)
    bench = setup_benchmark(cfg, acc)
    split = bench.splits[0]
    _, _, negs = label_features(bench.backbone, split.classnames, bench.corpus, cfg, acc)
    if acc.is_main_process:
        negs.save(cfg["output"])
        print(f"wrote {len(negs)} negatives for {len(split.classnames)} ID classes to {cfg['output']}")


def _build_mini(argv):
    from .config import build_config
    from .mini.build import MiniWorldConfig, build_world

    cfg = build_config({"seed": 0, "root": None}, argv)
    print(build_world(MiniWorldConfig(seed=int(cfg["seed"])), root=cfg["root"]))


def _adapters(argv):
    from ._compat import import_adapters

    ad = import_adapters()
    for name in ad.list_adapters():
        spec = ad.get_adapter_spec(name)
        print(f"{name}: {spec.adapter_cls.__name__}")
        for field, text in spec.config_cls.field_help().items():
            print(f"    {field}: {text}")


COMMANDS = {"eval": _eval, "mine": _mine, "build-mini": _build_mini, "adapters": _adapters}


def main(argv=None) -> None:
    from .errors import ClipoodError, unknown

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    try:
        if argv[0] not in COMMANDS:
            raise unknown("command", argv[0], COMMANDS)
        COMMANDS[argv[0]](argv[1:])
    except ClipoodError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
