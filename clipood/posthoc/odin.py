"""ODIN: temperature scaling plus an input perturbation through the frozen image encoder.

The one score that needs pixels: it back-propagates to the (normalised) input image, so it reads images, not
the feature cache. ``encoder`` maps preprocessed pixels (B×3×H×W) to features with autograd enabled (for CLIP:
:func:`clipood.clip.pre_projection.image_encoder`), ``head`` maps features to logits (e.g.
``LinearHead.from_text_features(text_features, 100)``). Nothing here updates or stores a parameter gradient.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError

from ._checks import as_matrix, non_negative, positive
from .heads import Head, apply_head

__all__ = ["CLIP_STD", "odin", "odin_gradient", "odin_perturbation"]

#: the per-channel std of CLIP's preprocessing (open_clip ``OPENAI_DATASET_STD``)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _pixels(pixels: object) -> torch.Tensor:
    x = as_matrix(pixels, "pixels", ndim=4, shape="(B, C, H, W)")
    if x.shape[0] == 0:
        raise ClipoodError("pixels holds no image (B = 0)")
    return x


def odin_gradient(pixels: torch.Tensor, encoder: Callable[[torch.Tensor], torch.Tensor], head: Head, *,
                  temperature: float = 1000.0) -> torch.Tensor:
    """∂L/∂x of OpenOOD's ODIN loss L = CE(z(x) / T, argmax z(x)) (mean over the batch), z = head(encoder(x)).

    Returns a tensor shaped like ``pixels``; the encoder's parameters get no gradient.
    """
    x0 = _pixels(pixels)
    t = positive(temperature, "temperature")
    x = x0.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = apply_head(head, encoder(x))
        loss = F.cross_entropy(z / t, z.detach().argmax(dim=1))
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def odin_perturbation(pixels: torch.Tensor, encoder: Callable[[torch.Tensor], torch.Tensor], head: Head, *,
                      temperature: float = 1000.0, noise: float = 0.0014,
                      input_std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """The perturbed input x̃ = x − ε · sign(∂L/∂x) / σ_c (OpenOOD ``odin_postprocessor.py``).

    ``sign`` is OpenOOD's (a zero gradient counts as +1); dividing by each channel's preprocessing std σ_c turns
    an ε step in [0, 1] pixel units into a step on the normalised input the encoder reads.
    """
    x = _pixels(pixels)
    std = torch.as_tensor([float(s) for s in input_std], dtype=x.dtype, device=x.device)
    if std.numel() != x.shape[1] or not bool((std > 0).all()):
        raise ClipoodError(f"input_std must give one positive std per channel ({x.shape[1]}), got "
                           f"{tuple(input_std)}")
    eps = non_negative(noise, "noise")
    g = odin_gradient(x, encoder, head, temperature=temperature)
    sign = torch.where(g >= 0, 1.0, -1.0).to(x.dtype)
    return x.detach() - eps * sign / std[None, :, None, None]


def odin(pixels: torch.Tensor, encoder: Callable[[torch.Tensor], torch.Tensor], head: Head, *,
         temperature: float = 1000.0, noise: float = 0.0014, input_std: Sequence[float] = CLIP_STD
         ) -> torch.Tensor:
    """ODIN (Liang et al., ICLR 2018), OpenOOD ``odin_postprocessor.py`` (T = 1000, ε = 0.0014).

        x̃ = x − ε · sign(∇_x CE(z(x)/T, ŷ)) / σ,   S = max_k softmax(z(x̃) / T)_k

    ``input_std``: the std the pixels were normalised with. OpenOOD reads its dataset's (ImageNet's
    (0.229, 0.224, 0.225) for its ResNets; 0.5 when unknown); for CLIP the right one is CLIP's own
    (:data:`CLIP_STD`, the default here; ``clipood.clip.pre_projection.normalization_std(backbone)`` reads a
    backbone's). Returns (B,) in the pixels' float dtype (float32 or float64).
    """
    x_adv = odin_perturbation(pixels, encoder, head, temperature=temperature, noise=noise, input_std=input_std)
    t = positive(temperature, "temperature")
    with torch.no_grad():
        z = apply_head(head, encoder(x_adv)) / t
    return torch.softmax(z, dim=1).amax(dim=1).to(x_adv.dtype)
