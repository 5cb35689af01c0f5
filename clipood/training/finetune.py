"""Fine-tuning the last blocks of CLIP's image encoder on cached inputs of the frozen blocks — the computational
core of the "fine-tuned visual encoder" baselines (KR-NFT Tab. 1's traditional rows: MSP, Energy, ViM, KNN, ... on
a CLIP image encoder fine-tuned with CE on ID data, as NegLabel and NPOS do; NPOS fine-tunes the last blocks and
caches the frozen part).

:func:`split_image_tower` cuts an open_clip image tower after its first blocks: ``trunk`` (the frozen backbone's
own modules, run under ``no_grad``) and ``head`` (a **trainable copy** of the last ``trainable_blocks`` blocks and
everything after them: pooling, final norm, projection), so that ``head(trunk(x)) == encode_image(x)`` and
training the head never touches the backbone. Towers:

* open_clip ``VisionTransformer``: trunk = patch embedding, class and positional embeddings, ``ln_pre`` and the
  first L − k residual blocks (tokens B×(1+P)×W); head = the last k blocks, ``ln_post`` + pooling (``tok`` /
  ``avg`` / none, ``final_ln_after_pool``), ``proj``. Attentional-pooler towers are refused.
* open_clip ``ModifiedResNet``: trunk = stem + the first bottleneck blocks (over layer1–4 in order); head = the
  remaining blocks + the attention pool.
* timm ResNet towers (``TimmModel`` with a timm ``ResNet`` trunk, e.g. ``clipood-mini``): trunk = stem + the first
  residual blocks; head = the remaining blocks, timm's global pool (and dropout, fc) and the tower's head
  (``proj``).

:func:`trunk_features` encodes images once through the trunk (the cache the training reads);
:class:`FinetunedClassifier` turns head features into logits s·cos(head(h), w_c) against the zero-shot text
classifier (frozen, or learned with ``learn_classifier``); :func:`finetune_step` is one CE step. A ViT-B/16 trunk
output is 197×768 values per image (0.3 MB in float16): a recipe decides where the cache lives.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClipoodError

__all__ = ["FinetunedClassifier", "TowerSplit", "finetune_step", "split_image_tower", "trunk_features"]


def _visual(model) -> nn.Module:
    m = getattr(model, "model", model)
    return getattr(m, "visual", m)


def _check_k(k: int, total: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= total:
        raise ClipoodError(f"trainable_blocks must be an integer in [1, {total}] (the tower has {total} blocks), "
                           f"got {k!r}")
    return k


class _Blocks(nn.Module):
    """Run a list of blocks in order (ViT blocks take batch-first tokens)."""

    def __init__(self, blocks: Iterable[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class _ViTTrunk(nn.Module):
    def __init__(self, visual, split: int):
        super().__init__()
        self.visual_ = visual  # the frozen tower (embeddings), shared
        self.blocks = _Blocks(list(visual.transformer.resblocks)[:split])
        self.batch_first = getattr(visual.transformer, "batch_first", True)

    def forward(self, images):
        x = self.visual_._embeds(images)
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.blocks(x)
        return x if self.batch_first else x.transpose(0, 1)


class _ViTHead(nn.Module):
    def __init__(self, visual, split: int):
        super().__init__()
        self.blocks = _Blocks(copy.deepcopy(list(visual.transformer.resblocks)[split:]))
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.ln_post = copy.deepcopy(visual.ln_post)
        self.pool_type, self.final_ln_after_pool = visual.pool_type, bool(visual.final_ln_after_pool)
        proj = visual.proj
        self.proj = None if proj is None else nn.Parameter(proj.detach().clone())

    def projection_parameters(self):
        return [] if self.proj is None else [self.proj]

    def forward(self, x):
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.blocks(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        if not self.final_ln_after_pool:
            x = self.ln_post(x)
        pooled = x[:, 1:].mean(dim=1) if self.pool_type == "avg" else x[:, 0] if self.pool_type == "tok" else x
        if self.final_ln_after_pool:
            pooled = self.ln_post(pooled)
        return pooled if self.proj is None else pooled @ self.proj


class _StemTrunk(nn.Module):
    def __init__(self, stem, blocks):
        super().__init__()
        self.stem = stem
        self.blocks = _Blocks(blocks)

    def forward(self, images):
        return self.blocks(self.stem(images))


class _TimmStem(nn.Module):
    def __init__(self, trunk):
        super().__init__()
        self.conv1, self.bn1, self.act1, self.maxpool = trunk.conv1, trunk.bn1, trunk.act1, trunk.maxpool

    def forward(self, x):
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))


class _ResNetStem(nn.Module):
    def __init__(self, visual):
        super().__init__()
        self.visual_ = visual

    def forward(self, x):
        return self.visual_.stem(x)


class _TimmHead(nn.Module):
    def __init__(self, visual, blocks):
        super().__init__()
        t = visual.trunk
        self.blocks = _Blocks(copy.deepcopy(blocks))
        self.global_pool, self.fc = copy.deepcopy(t.global_pool), copy.deepcopy(t.fc)
        self.drop_rate = float(getattr(t, "drop_rate", 0.0) or 0.0)
        self.proj_head = copy.deepcopy(visual.head)

    def projection_parameters(self):
        return list(self.proj_head.parameters())

    def forward(self, x):
        x = self.global_pool(self.blocks(x))
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.proj_head(self.fc(x))


class _ResNetHead(nn.Module):
    def __init__(self, visual, blocks):
        super().__init__()
        self.blocks = _Blocks(copy.deepcopy(blocks))
        self.attnpool = copy.deepcopy(visual.attnpool)

    def projection_parameters(self):
        return list(self.attnpool.c_proj.parameters())

    def forward(self, x):
        return self.attnpool(self.blocks(x))


@dataclass
class TowerSplit:
    """``head(trunk(images))`` = the tower's ``encode_image``. ``trunk`` shares the frozen backbone's modules;
    ``head`` is a trainable copy. ``kind``: ``vit`` / ``resnet`` / ``timm_resnet``."""

    trunk: nn.Module
    head: nn.Module
    kind: str
    num_blocks: int
    trainable_blocks: int


def split_image_tower(model, trainable_blocks: int = 1, *, train_projection: bool = True) -> TowerSplit:
    """Split a Backbone's / open_clip CLIP's image tower before its last ``trainable_blocks`` blocks."""
    visual = _visual(model)
    if hasattr(visual, "_embeds") and hasattr(visual, "transformer"):
        if getattr(visual, "attn_pool", None) is not None:
            raise ClipoodError("image towers with an attentional pooler (CoCa-style) are not supported; use a "
                               "CLIP ViT")
        blocks = list(visual.transformer.resblocks)
        s = len(blocks) - _check_k(trainable_blocks, len(blocks))
        trunk, head, kind = _ViTTrunk(visual, s), _ViTHead(visual, s), "vit"
    elif hasattr(visual, "attnpool") and hasattr(visual, "stem"):
        blocks = [b for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4) for b in layer]
        s = len(blocks) - _check_k(trainable_blocks, len(blocks))
        trunk = _StemTrunk(_ResNetStem(visual), blocks[:s])
        head, kind = _ResNetHead(visual, blocks[s:]), "resnet"
    elif hasattr(visual, "trunk") and all(hasattr(visual.trunk, f"layer{i}") for i in range(1, 5)):
        t = visual.trunk
        blocks = [b for layer in (t.layer1, t.layer2, t.layer3, t.layer4) for b in layer]
        s = len(blocks) - _check_k(trainable_blocks, len(blocks))
        trunk = _StemTrunk(_TimmStem(t), blocks[:s])
        head, kind = _TimmHead(visual, blocks[s:]), "timm_resnet"
    else:
        raise ClipoodError(f"fine-tuning splits open_clip ViT and ModifiedResNet towers and timm ResNet towers; "
                           f"{type(visual).__name__} is none of them")
    for p in trunk.parameters():
        p.requires_grad_(False)
    trunk.eval()
    for p in head.parameters():  # the copies of frozen modules: trainable
        p.requires_grad_(True)
    if not train_projection:
        for p in head.projection_parameters():
            p.requires_grad_(False)
    return TowerSplit(trunk, head, kind, len(blocks), int(trainable_blocks))


@torch.no_grad()
def trunk_features(split: TowerSplit, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """The trunk's outputs for preprocessed images (a B×3×H×W tensor, or an iterable of such batches), on the CPU
    in ``dtype`` (default: the trunk's). Computed once: training the head reads these."""
    split.trunk.eval()
    try:
        dev = next(split.trunk.parameters()).device
    except StopIteration:
        dev = torch.device("cpu")
    chunks = images.split(batch_size) if torch.is_tensor(images) else images
    out = []
    for x in chunks:
        if not torch.is_tensor(x) or x.ndim != 4:
            raise ClipoodError(f"images must be B×3×H×W tensors of preprocessed pixels, got "
                               f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
        h = split.trunk(x.to(dev))
        out.append(h.to("cpu", dtype or h.dtype))
    if not out:
        raise ClipoodError("trunk_features got no images")
    return torch.cat(out)


class FinetunedClassifier(nn.Module):
    """logits = s · L2(head(h)) · L2(W)ᵀ over the N ID classes, with W the zero-shot text classifier (N×D):
    frozen (a buffer) or learned (``learn_classifier``). ``features(h)`` = L2(head(h)), for post-hoc scores."""

    def __init__(self, head: nn.Module, text_features: torch.Tensor, logit_scale: float = 100.0,
                 learn_classifier: bool = False):
        super().__init__()
        self.head = head
        w = F.normalize(text_features.detach().float(), dim=-1).clone()
        if learn_classifier:
            self.weight = nn.Parameter(w)
        else:
            self.register_buffer("weight", w)
        self.logit_scale = float(logit_scale)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(h), dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.features(h) @ F.normalize(self.weight, dim=-1).T


def _freeze_norm_stats(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def finetune_step(model: FinetunedClassifier, inputs: torch.Tensor, labels: torch.Tensor,
                  optimizer: torch.optim.Optimizer, *, freeze_norm_stats: bool = True) -> float:
    """One CE step on cached trunk outputs: train mode (batch-norm statistics frozen unless
    ``freeze_norm_stats=False``), CE(model(inputs), labels), backward, ``optimizer.step()``. Returns the loss."""
    model.train()
    if freeze_norm_stats:
        _freeze_norm_stats(model)
    logits = model(inputs)
    loss = F.cross_entropy(logits, labels.long().to(logits.device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
