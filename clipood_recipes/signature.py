"""The run signature: what decides a training run's weights, derived from the schema (never a list kept by hand).

Every leaf key of the recipe's schema is in the signature unless :data:`NOT_WEIGHTS` names it with the reason it
cannot change the trained weights (where data lie, how a run reports, evaluation-only settings). A new setting
added to a schema is therefore in the signature by default: forgetting it can only refuse a resume, never
resume another setting's weights (``tests/reliability/test_run_signature.py`` changes every key of the schema in turn).

Folders the weights are trained from count by **content**, not by path: ``base_checkpoint`` and
``init_adapter`` enter as the sha256 of every file of the adapter folder (a retrained base refuses the resume; a
moved one does not).
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from clipood.config.compose import get

__all__ = ["NOT_WEIGHTS", "SIGNATURE_VERSION", "weight_keys", "run_signature", "check_resume",
           "check_output_dir_apart"]

SIGNATURE_VERSION = 2

#: schema keys that cannot change the trained weights, each with the reason (everything else is signed)
NOT_WEIGHTS: dict[str, str] = {
    "output_dir": "where the run writes",
    "data_root": "where the data lie (their content decides, not the folder's name)",
    "cache_dir": "where caches lie",
    "mini.root": "where mini worlds are built (the world is decided by mini.seed and the sizes)",
    "progress": "progress bars",
    "resume": "whether to resume",
    "log_with": "where training curves are sent",
    "cpu": "the device (float rounding only)",
    "preset": "a name; the values it sets are signed one by one",
    "method_name": "the name of the tuned method's row",
    "eval.score": "the test-time score (training uses eval.logit_scale only)",
    "eval.groups": "test-time NegLabel grouping (training groups are cls_groups / ood_groups)",
    "eval.batch_size": "the evaluation encoding batch (training crops are encoded on their own)",
    "eval.convention": "the metric convention",
    "eval.plots": "plots",
    "eval.mcm": "the zero-shot MCM row",
    "eval.scores": "extra test-time score rows (issue 22)",
    "eval.score_options": "parameters of those test-time scores",
    "eval.fit_data": "the ID features the test-time scores are fitted on (after training)",
    "eval.fit_shots": "how many of them",
    "ood_data": "OOD sets are evaluated, never trained on",
    "new_class_suites": "evaluation splits",
    "new_style_suites": "evaluation splits",
    "variants": "the runner's list of variants (each variant is signed as its own run)",
    "stack_on": "the runner's stacking plan (a stacked variant signs its base_checkpoint's content)",
}

#: keys whose value is a folder the weights are trained from: signed by content
CONTENT_KEYS = ("base_checkpoint", "init_adapter")


def _leaves(schema: type, prefix: str = "") -> list[str]:
    """Dotted leaf keys of a schema tree (a free-form ``Dict`` field is one leaf)."""
    out = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out += _leaves(t, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def weight_keys(schema: type) -> list[str]:
    """The schema's leaf keys that decide the weights (every leaf not in :data:`NOT_WEIGHTS`)."""
    return [k for k in _leaves(schema) if k not in NOT_WEIGHTS and k.split(".")[0] not in NOT_WEIGHTS]


def _schema_of(cfg: dict) -> type:
    from .settings import AblationSettings, CompareSettings, TrainRunSettings

    if "stack_on" in cfg:
        return CompareSettings
    return AblationSettings if "variants" in cfg else TrainRunSettings


def _content(path: Any) -> dict | None:
    """``{"sha256": ...}`` of an adapter folder (a run folder's ``adapter/``), or None when it is not set."""
    if not path:
        return None
    from clipood.training.checkpoints import folder_digest

    from .stacking import base_folder

    try:
        folder = base_folder(str(path))
    except Exception:  # noqa: BLE001 - a missing folder is refused by the checks with its own message
        folder = Path(str(path))
    return {"sha256": folder_digest(folder)}


def run_signature(cfg: dict, schema: type | None = None) -> dict:
    """``{dotted key: value}`` of every key that decides the weights (folders by content), plus the version."""
    schema = schema or _schema_of(cfg)
    sig: dict[str, Any] = {"signature_version": SIGNATURE_VERSION}
    for key in weight_keys(schema):
        sig[key] = _content(get(cfg, key)) if key in CONTENT_KEYS else get(cfg, key)
    return sig


def check_resume(cfg: dict, output_dir: str | None = None) -> None:
    """Fail at once (before any model or data is loaded) when ``output_dir`` holds another run's checkpoints,
    or would overwrite the folder a run stacks on or starts from."""
    from clipood.training.checkpoints import check_resumable

    check_output_dir_apart(cfg, output_dir)
    if cfg["resume"]:
        check_resumable(output_dir or cfg["output_dir"], run_signature(cfg))


def _inside(a: Path, b: Path) -> bool:
    a, b = a.expanduser().resolve(), b.expanduser().resolve()
    return a == b or b in a.parents


def check_output_dir_apart(cfg: dict, output_dir: str | None = None) -> None:
    """``output_dir`` must not be, or lie inside, the run folder of ``base_checkpoint`` / ``init_adapter``,
    nor hold it: the run would overwrite the results, detector and adapter it is trained from."""
    from clipood.errors import ClipoodError

    out = Path(output_dir or cfg["output_dir"])
    for key in CONTENT_KEYS:
        src = cfg.get(key)
        if not src:
            continue
        run_dir = Path(src).parent if Path(src).name == "adapter" else Path(src)
        if _inside(out, run_dir) or _inside(Path(src), out):
            raise ClipoodError(f"output_dir={out} would overwrite {key}={src} (the folder this run is trained "
                               f"from); set output_dir to another folder (e.g. {run_dir}-stacked)")
