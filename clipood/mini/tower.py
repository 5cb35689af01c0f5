"""The mini CLIP's image tower: a small timm ResNet whose last map is a 4×4 grid at 32 px.

open_clip's ``ModifiedResNet`` always down-samples by 32, so at 32 px it ends in a single cell and has no patch
features. This tower keeps timm's ResNet (BasicBlock stages of 32/64/128/256 channels) but runs its last two
stages dilated (``output_stride=8``), so a 32-px image ends in a 4×4×256 map. open_clip wraps it as a timm tower
(``timm_pool="avg"``, ``timm_proj="linear"``): the global feature is the linear projection of the average of the
16 cells, so each cell projected by the same matrix is a local feature in the joint space, and the global
feature is the mean of the (unnormalised) local ones.

The architecture is registered with timm under :data:`TOWER_NAME` by :func:`register_tower` (idempotent);
``clipood.clip.backbone.register_model_configs`` calls it before any ``clipood-mini`` model is built.
"""
from __future__ import annotations

TOWER_NAME = "clipood_mini_resnet"
#: channels per stage, blocks per stage, output stride
TOWER_SPEC = {"channels": (32, 64, 128, 256), "layers": (2, 2, 2, 2), "output_stride": 8, "stem_width": 16}


def _build(pretrained: bool = False, **kwargs):
    """timm entry point: a fresh tower (``pretrained`` must be False: the weights ship with the CLIP)."""
    from timm.models.resnet import BasicBlock, ResNet

    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(k, None)
    model = ResNet(block=BasicBlock, layers=list(TOWER_SPEC["layers"]), channels=TOWER_SPEC["channels"],
                   output_stride=TOWER_SPEC["output_stride"], stem_width=TOWER_SPEC["stem_width"], **kwargs)
    cfg = {"architecture": TOWER_NAME, "pool_size": (4, 4), "input_size": (3, 32, 32), "num_classes": 0}
    model.pretrained_cfg = model.default_cfg = cfg
    return model


def register_tower() -> None:
    """Register :data:`TOWER_NAME` with timm once per process."""
    from timm.models import is_model, register_model

    if not is_model(TOWER_NAME):
        _build.__name__ = TOWER_NAME  # timm registers a function under its own name
        register_model(_build)
