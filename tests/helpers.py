"""Small shared test utilities: generated image folders, a recipe runner, seeded tensors and perturbations."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_image_folder(root: Path, classes: dict[str, tuple[int, int, int]], n: int = 4, size: int = 64,
                      seed: int = 0, pseudo: bool = False) -> Path:
    """Class folders of noisy coloured squares (or one pseudo-class ``images/`` folder when ``pseudo``)."""
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        d = root / ("images" if pseudo else name)
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            a, b = rng.integers(4, size // 2, 2)
            arr[a:a + size // 3, b:b + size // 3] = colour
            Image.fromarray(arr).save(d / f"{name}_{i}.png")
    return root


def run_script(args: list[str], env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CLIPOOD_THREADS": "1",
           "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def unit(*shape, seed: int = 0, dtype=None):
    """Seeded random unit vectors along the last dimension (drawn in ``dtype``, default float32)."""
    import torch
    import torch.nn.functional as F

    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def perturb(module, seed: int = 7, scale: float = 0.05):
    """Add seeded Gaussian noise (std ``scale``) to every trainable parameter, so a fresh adapter is not at its
    identity initialisation."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def open_clip_features(backbone, prompts):
    """Reference text features: open_clip's ``model.encode_text`` on the full token sequence (not clipood's
    TextPath), unit rows."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        return F.normalize(backbone.model.encode_text(backbone.tokenizer(prompts)).float(), dim=-1)


def phrase_embeddings(backbone, phrase: str, n: int):
    """Token embeddings of a phrase's n word tokens (positions 1..n after the start token)."""
    import torch

    with torch.no_grad():
        return backbone.model.token_embedding(backbone.tokenizer([phrase]))[0, 1:1 + n].float()
