"""Outlier samples by cropping (KR-NFT §3.4, after ID-like): P random crops per few-shot image, ranked by cosine
similarity to the text feature of the image's label; the Q most similar are ID crops (D_p, labelled y), the Q least
similar are negative crops (D_n: background, no object of interest).

Unlike the official code (which re-crops and re-encodes every step), the frozen image encoder runs once: crop
features are cached as safetensors and training reads the cache. Crops are seeded per image from
``(cfg.seed, dataset index)`` with a private ``torch.Generator``, so the result depends neither on the global RNG
nor on the number of processes.

Settings (``CropConfig``): the released code uses P=128, Q=32, flip, no colour augmentation; §4.1 says P=256,
Q=32 with colour jitter 0.4/0.4/0.4/0.1 and grayscale p=0.2 (the complete settings are the recipes' YAML files).

The crop cache (``CropCache``, ``build_crop_cache``, ``crop_cache_path``) lives in `clipood.crops.cache`.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch

from ..config.settings import CropSettings
from ..errors import ClipoodError

log = logging.getLogger("clipood")


# --------------------------------------------------------------------------------------------- config
@dataclass
class CropConfig(CropSettings):
    """The recipe's crop settings (:class:`clipood.config.settings.CropSettings`, its defaults and checks) with the
    seed the crops are drawn from: crops of image i depend only on (seed, i)."""

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ClipoodError(f"crop config: seed must be an integer, got {self.seed!r}")
        if self.seed < 0:
            raise ClipoodError(f"crop config: seed={self.seed} must be >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> "CropConfig":
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            from ..errors import unknown

            raise unknown("crop config field", extra[0], known)
        return cls(**d)


# --------------------------------------------------------------------------------------------- making crops
def crop_seed(seed: int, key: Any) -> int:
    """63-bit generator seed for one image from (config seed, seed key), stable across runs and machines."""
    digest = hashlib.sha256(f"clipood-crops|{int(seed)}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(torch.empty(1, dtype=torch.float64).uniform_(lo, hi, generator=g))


def _randint(g: torch.Generator, lo: int, hi_inclusive: int) -> int:
    return int(torch.randint(lo, hi_inclusive + 1, (1,), generator=g))


def sample_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               g: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w) — torchvision's algorithm, drawn from ``g``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(g, scale[0], scale[1])
        aspect = math.exp(_uniform(g, log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(g, 0, height - h), _randint(g, 0, width - w), h, w
    in_ratio = width / height  # fallback: central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def preprocess_params(backbone) -> dict:
    """Output size, resize interpolation and Normalize mean/std of ``backbone.preprocess``."""
    from torchvision.transforms import InterpolationMode

    mean = std = None
    interpolation = InterpolationMode.BICUBIC
    for t in getattr(backbone.preprocess, "transforms", []):
        if type(t).__name__ == "Normalize" and hasattr(t, "mean"):
            mean, std = tuple(float(x) for x in t.mean), tuple(float(x) for x in t.std)
        elif type(t).__name__ == "Resize" and hasattr(t, "interpolation"):
            interpolation = t.interpolation
    if mean is None:
        raise ClipoodError(f"backbone {backbone.identifier}: no Normalize found in its preprocess "
                           f"({backbone.preprocess}); crops need the model's mean/std")
    return {"size": int(backbone.image_size), "mean": mean, "std": std, "interpolation": interpolation}


def make_crops(image, cfg: CropConfig, seed_key: Any, backbone=None, *, size: int | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               interpolation=None) -> torch.Tensor:
    """P augmented crops of one PIL image → P×3×S×S, normalised like ``backbone.preprocess``.

    Each crop: RandomResizedCrop(S, cfg.scale, cfg.ratio) resized with the backbone's interpolation (bicubic,
    antialiased, on the PIL image as open_clip's Resize does), then optional flip, colour jitter (random order of
    brightness / contrast / saturation / hue, as torchvision's ColorJitter) and grayscale, then Normalize.
    Randomness comes from a private generator seeded by ``crop_seed(cfg.seed, seed_key)`` (seed_key = the image's
    index in its dataset). Pass ``backbone`` or explicit ``size`` / ``mean`` / ``std``.
    """
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    if backbone is not None:
        p = preprocess_params(backbone)
        size = size or p["size"]
        mean, std = mean or p["mean"], std or p["std"]
        interpolation = interpolation or p["interpolation"]
    if size is None or mean is None or std is None:
        raise ClipoodError("make_crops needs a backbone or explicit size, mean and std")
    interpolation = interpolation or InterpolationMode.BICUBIC
    image = image.convert("RGB") if image.mode != "RGB" else image
    width, height = image.size
    g = torch.Generator().manual_seed(crop_seed(cfg.seed, seed_key))
    b, c, s, h = cfg.jitter
    out = torch.empty(cfg.num_crops, 3, size, size)
    for k in range(cfg.num_crops):
        top, left, ch, cw = sample_box(height, width, cfg.scale, cfg.ratio, g)
        crop = TF.resized_crop(image, top, left, ch, cw, [size, size], interpolation=interpolation, antialias=True)
        if cfg.flip and _uniform(g, 0.0, 1.0) < 0.5:
            crop = TF.hflip(crop)
        if cfg.color_jitter:
            crop = _jitter(crop, b, c, s, h, g)
        if cfg.grayscale and _uniform(g, 0.0, 1.0) < cfg.grayscale_p:
            crop = TF.rgb_to_grayscale(crop, num_output_channels=3)
        out[k] = TF.normalize(TF.to_tensor(crop), mean, std)
    return out


def _jitter(img, brightness: float, contrast: float, saturation: float, hue: float, g: torch.Generator):
    import torchvision.transforms.functional as TF

    order = torch.randperm(4, generator=g).tolist()
    factors = [_uniform(g, max(0.0, 1 - v), 1 + v) if v > 0 else None for v in (brightness, contrast, saturation)]
    factors.append(_uniform(g, -hue, hue) if hue > 0 else None)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in order:
        if factors[i] is not None:
            img = ops[i](img, factors[i])
    return img


# --------------------------------------------------------------------------------------------- selection
def select_crops(crop_features: torch.Tensor, text_feature: torch.Tensor, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank P crops (P×D, unit rows) by cosine to the label's text feature (D, unit) → (top Q, bottom Q) indices.

    One ordering is used: similarity descending, ties by ascending crop index. ``top`` is its first Q (most
    similar first); ``bottom`` is its last Q reversed (least similar first), so the two never overlap when 2Q ≤ P.
    """
    P = crop_features.shape[0]
    if not 1 <= q or 2 * q > P:
        raise ClipoodError(f"select_crops: q={q} needs 1 <= q and 2q <= P={P}")
    sims = crop_features.float() @ text_feature.float().reshape(-1)
    order = torch.sort(sims, descending=True, stable=True).indices
    return order[:q], order[P - q:].flip(0)
