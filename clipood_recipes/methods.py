"""Methods wired to data: the adapter of a config built over a split's label features, the loss terms around
it, the trained adapter as an OOD detector on every split (relabelled explicitly to each split's labels)."""
from __future__ import annotations

import logging

import torch

from clipood.detectors import Detector
from clipood.errors import ClipoodError
from clipood.method import Method

from ._compat import import_adapters

log = logging.getLogger("clipood")

__all__ = ["build_adapter_for", "build_method", "adapter_detector", "save_trained_adapter", "relabel"]


def build_adapter_for(cfg: dict, sf, bench, device):
    """The config's adapter (by registry name, seeded by the run's seed) over the Base split's label features,
    or the saved adapter of ``init_adapter``."""
    adapters = import_adapters()
    torch.manual_seed(cfg["seed"])
    text_features = sf.text_features.to(device)
    if cfg.get("init_adapter"):
        return adapters.load_adapter(cfg["init_adapter"], text_features=text_features)
    a = cfg["adapter"]
    return adapters.build_adapter(a["name"], text_features, sf.num_id, **dict(a["options"]))


def build_method(cfg: dict, sf, bench, accelerator) -> Method:
    """Adapter + the weighted loss terms of Eq. 10 (with the configured L_cls / L_ood grouping)."""
    adapter = build_adapter_for(cfg, sf, bench, accelerator.device)
    return Method(adapter, cfg["losses"], logit_scale=cfg["eval"]["logit_scale"],
                  options={"cls_groups": cfg["cls_groups"], "ood_groups": cfg["ood_groups"], "seed": cfg["seed"]})


def save_trained_adapter(adapter, directory) -> None:
    import_adapters().save_adapter(adapter, directory, include_base=True)


def relabel(adapter, sf):
    """The same trained adapter on another split's label features (unseen classes bring their own ID names
    and mined negatives). Raises ClipoodError when the adapter's weights are tied to its training rows."""
    base = adapter.base_text_features
    if base.shape == sf.text_features.shape and torch.equal(base.cpu(), sf.text_features.cpu()) \
            and adapter.num_id == sf.num_id:
        return adapter
    try:
        new = type(adapter)(sf.text_features.to(base.device), sf.num_id, config=adapter.config)
        new.load_state_dict(adapter.state_dict(), strict=True)
    except (RuntimeError, ClipoodError) as e:
        raise ClipoodError(f"adapter '{adapter.name}' cannot move to the labels of split {sf.split.name} "
                           f"({str(e).splitlines()[0]})") from None
    return new.eval()


def adapter_detector(cfg: dict, adapter, splits) -> tuple[Detector, list, list[str]]:
    """The trained adapter scored on its tuned features (NegLabel by default, paper §3.5), the splits it can
    be evaluated on, and a note for each split it cannot move to (weights tied to the training labels) —
    those are left out of the tables, never scored with frozen features in its name. MCM's temperature 1 on
    raw cosines is ``logit_scale`` on the scaled logits; other scores take the logits as they are."""
    score = cfg["eval"]["score"]
    temperature = float(cfg["eval"]["logit_scale"]) if score in ("mcm", "glmcm") else 1.0
    moved, usable, notes = {}, [], []
    for sf in splits:
        try:
            moved[id(sf)] = relabel(adapter, sf)
            usable.append(sf)
        except ClipoodError as e:
            notes.append(f"{cfg['method_name']}: not evaluated on {sf.split.name}: {e}")
            log.warning("%s", notes[-1])

    def logits_fn(feats, sf):
        a = moved[id(sf)]
        return a(feats.to(a.base_text_features.device)).logits.cpu()

    return Detector(cfg["method_name"], logits_fn, score, temperature), usable, notes
