"""clipood: CLIP out-of-distribution detection methods behind one adapter interface.

The top-level names of the stable API (``clipood.load_clip``, ``clipood.Backbone``, ``clipood.Detector``) are
resolved here, lazily, so that ``import clipood`` imports neither torch nor open_clip."""
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_clip":
        from .clip.backbone import load_clip

        return load_clip
    if name == "Backbone":
        from .clip.encoders import Backbone

        return Backbone
    if name == "Detector":  # the deployable detector folder (clipood.detector)
        from .detector import Detector

        return Detector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
