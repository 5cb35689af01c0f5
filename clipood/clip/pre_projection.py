"""The image tower's features *before* its final projection, and that projection, for open_clip CLIPs.

ReAct, ASH, DICE, GradNorm and ViM act on a network's penultimate features and its last linear layer. On CLIP:

* ViT (``VisionTransformer``): h = the pooled token after the final norm — the CLS token after ``ln_post``
  (B×width; open_clip's ``_pool``, so attentional-pooler and ``final_ln_after_pool`` variants too); projection
  ``h @ proj`` (width×D), no bias.
* ModifiedResNet, ``resnet_point="attnpool"`` (default): h = the attention pool's output for its query (the mean
  token) *before* its output layer ``c_proj`` (B×C, C = 32·width); projection ``c_proj`` (C→D, with bias).
* ModifiedResNet, ``resnet_point="avgpool"``: h = the last stage's map averaged over positions (B×C; non-negative,
  post-ReLU: the torchvision ResNet-50 penultimate that OpenOOD's ReAct / ASH use); no projection — the
  attention pool is not linear in it.
* timm tower (``TimmModel``, e.g. ``clipood-mini``): h = the trunk's pooled features (B×F); projection the
  tower's linear ``head.proj``.

``image_projection(m)(pre_projection_features(m, x))`` equals ``m.encode_image(x)`` (tested to 1e-5) wherever a
projection exists. The functions keep autograd as it is (wrap calls in ``torch.no_grad()`` to encode); they
take a :class:`clipood.Backbone`, an open_clip CLIP, or its image tower.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ClipoodError

__all__ = ["ImageProjection", "image_encoder", "image_projection", "normalization_std", "pre_projection_features"]

RESNET_POINTS = ("attnpool", "avgpool")


@dataclass(frozen=True)
class ImageProjection:
    """The linear map from pre-projection features to the joint space: ``v = h @ weight.T + bias``.

    ``weight`` D×F, ``bias`` D or None. ``head(text_features)`` builds CLIP's logits from pre-projection
    features (:class:`clipood.posthoc.ProjectedHead`).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(features.dtype)
        v = features @ w.T
        return v if self.bias is None else v + self.bias.to(features.dtype)

    def head(self, text_features: torch.Tensor, logit_scale: float = 100.0):
        from ..posthoc.heads import ProjectedHead

        return ProjectedHead(self.weight, text_features, logit_scale=logit_scale, projection_bias=self.bias)


def _tower(model) -> torch.nn.Module:
    m = getattr(model, "model", model)  # a clipood Backbone holds the open_clip model in .model
    return getattr(m, "visual", m)


def _kind(visual) -> str:
    if hasattr(visual, "_embeds") and hasattr(visual, "transformer") and hasattr(visual, "_pool"):
        return "vit"
    if hasattr(visual, "attnpool") and hasattr(visual, "stem"):
        return "resnet"
    if hasattr(visual, "trunk") and hasattr(visual, "head"):
        return "timm"
    raise ClipoodError(f"pre-projection features are not available for the image tower {type(visual).__name__}; "
                       f"use an open_clip ViT, ModifiedResNet or timm tower")


def _point(resnet_point: str) -> str:
    if resnet_point not in RESNET_POINTS:
        raise ClipoodError(f"unknown resnet_point {resnet_point!r}; choose one of {', '.join(RESNET_POINTS)}")
    return resnet_point


def _attnpool_pre_output(ap, x: torch.Tensor) -> torch.Tensor:
    """open_clip ``AttentionPool2d.forward`` for the query (mean) token, stopping before ``c_proj``."""
    n, c = x.shape[0], x.shape[1]
    t = x.reshape(n, c, -1).permute(2, 0, 1)  # (HW)NC
    t = torch.cat([t.mean(dim=0, keepdim=True), t], dim=0) + ap.positional_embedding[:, None, :].to(t.dtype)
    heads = ap.num_heads
    d = c // heads
    q = ap.q_proj(t[:1]).reshape(1, n, heads, d).permute(1, 2, 0, 3)  # N h 1 d
    k = ap.k_proj(t).reshape(-1, n, heads, d).permute(1, 2, 0, 3)  # N h L d
    v = ap.v_proj(t).reshape(-1, n, heads, d).permute(1, 2, 0, 3)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (a @ v).permute(0, 2, 1, 3).reshape(n, c)


def pre_projection_features(model, images: torch.Tensor, *, resnet_point: str = "attnpool") -> torch.Tensor:
    """Preprocessed images (B×3×H×W) → the image tower's features before the final projection (B×F).

    See the module docstring for what F is per tower. Returned in float32 (float64 for a float64 model).
    """
    visual = _tower(model)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ClipoodError(f"images must be a (B, 3, H, W) tensor of preprocessed pixels, got {got}")
    if hasattr(model, "model") and hasattr(model, "device"):  # a Backbone: its device and dtype
        images = images.to(model.device, getattr(model, "dtype", images.dtype))
    kind = _kind(visual)
    if kind == "vit":
        h = visual._pool(visual.transformer(visual._embeds(images)))[0]
    elif kind == "resnet":
        x = visual.stem(images)
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = layer(x)
        h = x.mean(dim=(2, 3)) if _point(resnet_point) == "avgpool" else _attnpool_pre_output(visual.attnpool, x)
    else:
        h = visual.trunk(images)
        if h.dim() != 2:
            raise ClipoodError(f"the timm tower's trunk returns {h.dim()}-D features (its pooling is in the head); "
                               f"pre-projection features need a tower pooled in the trunk (timm_pool='avg')")
    return h if h.dtype == torch.float64 else h.float()


def image_projection(model, *, resnet_point: str = "attnpool") -> ImageProjection:
    """The image tower's final linear projection (pre-projection features → joint space), detached."""
    visual = _tower(model)
    kind = _kind(visual)
    if kind == "vit":
        proj = visual.proj
        if proj is None:  # no projection: the pooled token is the image feature
            width = visual.positional_embedding.shape[-1]
            return ImageProjection(torch.eye(width))
        return ImageProjection(proj.detach().T.contiguous())
    if kind == "resnet":
        if _point(resnet_point) == "avgpool":
            raise ClipoodError("resnet_point='avgpool' features have no linear map to the joint space (the attention "
                               "pool mixes all positions); use resnet_point='attnpool' for a projection")
        c = visual.attnpool.c_proj
        return ImageProjection(c.weight.detach().clone(), None if c.bias is None else c.bias.detach().clone())
    layers = dict(visual.head.named_children())
    if set(layers) - {"drop", "proj"} or not isinstance(layers.get("proj"), torch.nn.Linear):
        raise ClipoodError(f"the timm tower's head ({', '.join(layers) or 'empty'}) is not one linear projection; "
                           f"only timm_proj='linear' towers pooled in the trunk have a linear projection")
    p = layers["proj"]
    return ImageProjection(p.weight.detach().clone(), None if p.bias is None else p.bias.detach().clone())


def image_encoder(model, *, normalize: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """A pixels → joint-space image features callable *with* autograd (for ODIN): ``encode_image`` and, by
    default, L2 normalisation. The caller's model must be in eval mode (a Backbone's is)."""
    m = getattr(model, "model", model)
    if not hasattr(m, "encode_image"):
        raise ClipoodError(f"{type(m).__name__} has no encode_image; pass a clipood Backbone or an open_clip CLIP")

    def encode(x: torch.Tensor) -> torch.Tensor:
        f = m.encode_image(x)
        return F.normalize(f, dim=-1) if normalize else f

    return encode


def normalization_std(backbone) -> tuple[float, ...]:
    """The per-channel std of a Backbone's preprocessing (its ``Normalize`` transform), e.g. for ODIN."""
    for t in getattr(getattr(backbone, "preprocess", None), "transforms", []):
        if type(t).__name__ == "Normalize":
            return tuple(float(s) for s in t.std)
    raise ClipoodError("the backbone's preprocessing has no Normalize transform; pass ODIN's input_std yourself")
