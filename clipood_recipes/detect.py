"""A run's detector folder and the ``clipood detect`` command.

:func:`save_run_detector` turns an evaluated run into a :class:`clipood.detector.Detector` folder
(``<output_dir>/detector``): the Base split's label features and negatives, the trained adapter (or none for
zero-shot), the run's score, and a threshold calibrated on the run's held-out ID test images — the very scores
the evaluation computed, so a reloaded detector reproduces them.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from clipood.errors import ClipoodError

__all__ = ["save_run_detector", "detect_main", "DEFAULT_ID_RECALL"]

DEFAULT_ID_RECALL = 0.95


def save_run_detector(cfg: dict, bench, splits, raw: dict, method: str, adapter=None, *,
                      id_recall: float = DEFAULT_ID_RECALL) -> Path:
    """Write ``<output_dir>/detector`` for ``method`` (a trained ``adapter``, or zero-shot when None)."""
    from clipood.datasets.dataset import build_dataset
    from clipood.datasets.specs import spec_to_dict
    from clipood.detector import Detector

    from ._compat import import_adapters
    from .methods import label_context

    import_adapters()  # registers the adapter writer of clipood.Detector (and says so if another package took the name)
    sf = splits[0]
    id_name = next(iter(sf.split.id_sets))
    scores = raw[sf.split.name][method][f"id/{id_name}"]
    spec = sf.split.id_sets[id_name]
    ds = build_dataset(spec, root=cfg.get("data_root"))
    images = [str(p) for p, _ in ds.samples]
    ctx = label_context(sf, bench.backbone)
    score = cfg["eval"]["score"] if adapter is not None else "neglabel"
    from clipood.scores import score_temperature

    temperature = score_temperature(score, cfg["eval"]["logit_scale"])
    pretrained = cfg.get("pretrained")
    if pretrained and not str(pretrained).startswith("local-dir:") and Path(pretrained).is_file():
        pretrained = str(Path(pretrained).resolve())  # a weights file: found again from any folder
    det = Detector(bench.backbone, sf.text_features.cpu(), ctx.id_names, negatives=ctx.neg_names or [],
                   adapter=adapter, score=score, logit_scale=cfg["eval"]["logit_scale"], groups=cfg["eval"]["groups"],
                   temperature=temperature,
                   info={"model": cfg["model"], "pretrained": pretrained, "id_templates": ctx.id_templates,
                         "neg_templates": ctx.neg_templates, "batch_size": cfg["eval"]["batch_size"],
                         "source": {"method": method, "output_dir": str(cfg["output_dir"])}})
    try:
        spec_desc = spec_to_dict(spec)
    except Exception:  # noqa: BLE001 - a description only
        spec_desc = str(spec)
    det.calibrate(scores, id_recall, images=images,
                  data={"split": sf.split.name, "dataset": id_name, "spec": json.loads(json.dumps(spec_desc, default=str)),
                        "note": "the run's ID test images (held out from training)"})
    return det.save_pretrained(Path(cfg["output_dir"]) / "detector")


DETECT_USAGE = ("clipood detect <run or detector dir> <image files or folders> [--csv FILE | --json FILE] "
                "[--skip-unreadable]")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (as every clipood error)
        raise ClipoodError(f"clipood detect: {message}; usage: {DETECT_USAGE}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="clipood detect", description=(
        "Score images with a saved detector: per image the ID score (higher = more in-distribution), the OOD "
        "flag (score below the calibrated threshold) and the predicted ID class."), add_help=True)
    p.add_argument("detector", help="a trained run's output_dir, a detector folder, or a Hub repo id")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--csv", metavar="FILE", help="write the rows as CSV instead of printing a table")
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON instead of printing a table")
    p.add_argument("--threshold", type=float, default=None, help="override the calibrated threshold")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per encoding batch (default: the run's evaluation batch size)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="score the readable images and list the unreadable ones (default: stop at the first)")
    return p


def detect_main(argv: list[str]) -> None:
    """``clipood detect``: load the detector (checked), score the images, print a table or write CSV/JSON."""
    args = _parser().parse_args(argv)
    if args.csv and args.json:
        raise ClipoodError("clipood detect: give --csv or --json, not both")
    if args.batch_size is not None and args.batch_size < 1:
        raise ClipoodError(f"clipood detect: --batch-size must be >= 1, got {args.batch_size}")
    import math

    if args.threshold is not None and not math.isfinite(args.threshold):
        raise ClipoodError(f"clipood detect: --threshold must be a finite number, got {args.threshold}")
    from clipood.detector import Detector, image_files
    from clipood.detector_folder import resolve_detector_dir

    files = image_files(args.images)  # before the model loads: a wrong path fails at once
    det_dir = resolve_detector_dir(args.detector)
    for flag, out in (("--csv", args.csv), ("--json", args.json)):
        if not out:
            continue
        target = Path(out).resolve()
        if target.is_dir():
            raise ClipoodError(f"clipood detect: {flag} {out} is a folder; give a file name")
        if not target.parent.is_dir():
            raise ClipoodError(f"clipood detect: the folder of {out} does not exist; create it first")
        if target == det_dir.resolve() or det_dir.resolve() in target.parents:
            raise ClipoodError(f"clipood detect: {flag} {out} lies inside the detector folder {det_dir}, whose "
                               f"files it would overwrite; write it elsewhere")
    import torch

    from clipood.runtime.recipe import setup_logging, use_cpu_threads

    from ._compat import import_adapters

    setup_logging(True)
    use_cpu_threads()
    import_adapters()
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    det = Detector.from_pretrained(det_dir, device=device)
    if args.threshold is not None:
        det.threshold = args.threshold
    result = det([str(f) for f in files], batch_size=args.batch_size, skip_unreadable=args.skip_unreadable)
    rows = result.rows()
    skipped = (f"skipped {len(result.skipped)} unreadable image(s): {', '.join(result.skipped)}\n"
               if result.skipped else "")
    if args.csv or args.json:
        from clipood.io import atomic_write

        with atomic_write(args.csv or args.json) as f:
            if args.json:
                json.dump({"threshold": det.threshold, "rows": rows, "skipped": result.skipped}, f, indent=2)
                f.write("\n")
            else:
                w = csv.DictWriter(f, fieldnames=["image", "score", "ood", "class"])
                w.writeheader()
                w.writerows(rows)
        print(f"wrote {len(rows)} rows to {args.csv or args.json}")
        sys.stdout.write(skipped)
        return
    sys.stdout.write(format_table(rows, det.threshold) + skipped)


def format_table(rows: list[dict], threshold) -> str:
    buf = io.StringIO()
    width = max(len("image"), *(len(r["image"]) for r in rows))
    buf.write(f"{'image':<{width}}  {'score':>12}  {'OOD':<3}  class\n")
    for r in rows:
        buf.write(f"{r['image']:<{width}}  {r['score']:>12.6f}  {'yes' if r['ood'] else 'no':<3}  {r['class']}\n")
    n_ood = sum(r["ood"] for r in rows)
    thr = "none" if threshold is None else f"{threshold:.6f}"
    buf.write(f"{len(rows)} image(s), {n_ood} flagged OOD (score < threshold {thr})\n")
    return buf.getvalue()
