"""clipood: CLIP out-of-distribution detection methods behind one adapter interface."""
__version__ = "0.1.0"


def __getattr__(name: str):
    # ``clipood.load_clip`` (documented API) without importing torch / open_clip at ``import clipood``
    if name in ("load_clip", "Backbone"):
        from . import backbone

        return getattr(backbone, name)
    if name == "Detector":  # the deployable detector (clipood.detector); not clipood.detectors.Detector
        from .detector import Detector

        return Detector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
