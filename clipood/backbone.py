"""Placeholder; replaced below."""
from __future__ import annotations

from pathlib import Path

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_model_configs() -> list[str]:
    """Register clipood's shipped open_clip configs (clipood-tiny, clipood-mini, ...). Idempotent."""
    global _registered
    import open_clip

    names = sorted(p.stem for p in _CONFIG_DIR.glob("*.json"))
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True
    return names
