"""Component ablation (paper Tab. 6): FT → CoFT → CoFT+KR → KR-NFT, one command, one combined table.

    accelerate launch recipes/ablation.py --config recipes/configs/ablation_mini.yaml

Each entry of ``variants`` is a set of overrides applied on top of the KR-NFT recipe's config; every variant
trains into ``output_dir/<variant>`` and reuses the same image-feature and crop-feature caches, so only the
first variant encodes images. The summary table reports Base / New FPR95 and their harmonic mean.
"""
import copy
import re

from clipood.recipe import run


def main(argv):
    import importlib.util
    from pathlib import Path

    from clipood.config import build_config, split_config_arg
    from clipood.pipeline import check_config, check_resume, start_run, train_and_evaluate, write_outputs
    from clipood.report import summary_table

    spec = importlib.util.spec_from_file_location("_krnft", Path(__file__).with_name("krnft.py"))
    krnft = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(krnft)
    defaults = {**krnft.DEFAULTS, "output_dir": "outputs/ablation", "variants": {}}
    path, rest = split_config_arg(argv)
    cfg = build_config(defaults, rest, presets=krnft.PRESETS, config_file=path)
    if not cfg["variants"]:
        from clipood.errors import ClipoodError

        raise ClipoodError("no variants: pass --config recipes/configs/ablation_mini.yaml or set variants")
    cfg["eval"]["mcm"] = False
    base = {k: v for k, v in cfg.items() if k != "variants"}
    variants = {}
    for name, overrides in cfg["variants"].items():  # check every variant before any work
        vcfg = copy.deepcopy(base)
        _merge(vcfg, overrides)
        vcfg["method_name"] = name
        vcfg["output_dir"] = str(Path(cfg["output_dir"]) / re.sub(r"[^A-Za-z0-9_.-]+", "_", name))
        check_config(vcfg)
        check_resume(vcfg)
        variants[name] = vcfg
    acc, bench, sfs, rows, raw = start_run(cfg)
    notes = list(bench.notes)
    for name, vcfg in variants.items():
        out = train_and_evaluate(vcfg, bench, sfs, acc, vcfg["output_dir"])
        rows += out["rows"]
        for split, by_method in out["raw"].items():
            raw[split].update(by_method)
        notes.append(f"{name}: {out['result'].steps} steps in {out['result'].seconds:.1f}s")
    if acc.is_main_process:
        md = write_outputs(rows, raw, cfg["output_dir"], "Component ablation (Tab. 6)", notes, cfg["eval"]["plots"])
        print(summary_table(rows))
        print(f"wrote {md}")


def _merge(dst, src):
    for k, v in (src or {}).items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and k != "options":
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


if __name__ == "__main__":
    run(main)
