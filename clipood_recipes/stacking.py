"""Stacking in recipes: ``base=<prompt adapter> base_checkpoint=<its run dir>`` trains the configured adapter
(KR-NFT's ``nft`` by default) on the trained prompt adapter's text features (``adapters.stacked``).

Checked before any work: the checkpoint folder exists and holds the named adapter. The run's adapter is then
``adapters.stack(trained_base, cfg.adapter.name, **cfg.adapter.options)``; its checkpoint is one folder
(``adapter/`` with the prompt part under ``adapter/base/``) that reloads with ``load_adapter(folder, backbone=...)``.
"""
from __future__ import annotations

import json
from pathlib import Path

from clipood.errors import ClipoodError

__all__ = ["base_folder", "check_stacking", "stacked_adapter"]


def base_folder(path: str) -> Path:
    """The adapter folder of ``path``: the folder itself, or its ``adapter/`` sub-folder (a run directory)."""
    p = Path(path)
    for cand in (p / "adapter", p):
        if (cand / "adapter_config.json").is_file():
            return cand
    raise ClipoodError(f"base_checkpoint={path}: no adapter_config.json there or in {p / 'adapter'}; give the run "
                       f"folder of a trained prompt adapter (e.g. the output_dir of a locoop run)")


def check_stacking(cfg: dict) -> str | None:
    """Validate ``base`` / ``base_checkpoint``; returns the base adapter's name (read from the checkpoint when
    ``base`` is unset; the config is not written into)."""
    base, ck = cfg.get("base"), cfg.get("base_checkpoint")
    if not base and not ck:
        return base
    if not ck:
        raise ClipoodError(f"base={base} needs base_checkpoint=<run folder of a trained {base}> (train it first, "
                           f"e.g. recipes/krnft.py adapter.name={base} output_dir=outputs/{base})")
    if cfg.get("init_adapter"):
        raise ClipoodError("base_checkpoint and init_adapter exclude each other: stack on a base, or resume an adapter")
    meta_path = base_folder(ck) / "adapter_config.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        saved = meta["adapter"]
        if not isinstance(saved, str):
            raise TypeError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ClipoodError(f"base_checkpoint={ck}: {meta_path} is not a saved adapter's config (no adapter name); "
                           f"give the run folder of a trained prompt adapter") from None
    if base and base != saved:
        raise ClipoodError(f"base={base} but base_checkpoint={ck} holds a trained '{saved}'; fix one of them")
    if saved == "stacked" or cfg["adapter"]["name"] == "stacked":
        raise ClipoodError("stack one prompt adapter and one tuner (nested stacks are not supported)")
    from ._compat import import_adapters

    spec = import_adapters().get_adapter_spec(saved)
    if not spec.adapter_cls.uses_text_encoder:
        raise ClipoodError(f"base_checkpoint={ck} holds a trained '{saved}', which is not a prompt adapter (stacking "
                           f"trains a tuner on a prompt learner's text features: coop, locoop, lapt, negpt, ...)")
    trained_on = (meta.get("context") or {}).get("backbone") if isinstance(meta.get("context"), dict) else None
    if trained_on and cfg.get("model") and trained_on != cfg["model"]:
        raise ClipoodError(f"base_checkpoint={ck} was trained on backbone {trained_on}, this run uses "
                           f"model={cfg['model']}; train the base on {cfg['model']} or set model={trained_on}")
    return saved


def stacked_adapter(cfg: dict, context, device):
    """The configured adapter stacked on the trained base of ``base_checkpoint``, on ``context``'s labels."""
    from ._compat import import_adapters

    adapters = import_adapters()
    base = adapters.load_adapter(base_folder(cfg["base_checkpoint"]), context=context).to(device)
    a = cfg["adapter"]
    return adapters.stack(base, a["name"], **dict(a["options"])).to(device)
