"""Training data of LAPT's negative labels: the negatives it trains on (``train_negatives``) and their images —
a user folder (one sub-folder per negative label) or images rendered by the mini world for each negative name,
encoded once with the frozen backbone (no cache: a few hundred small images)."""
from __future__ import annotations

from pathlib import Path

import torch

from clipood.errors import ClipoodError

__all__ = ["negative_label_images", "render_negative_images", "training_context", "training_negative_indices"]


def training_negative_indices(num_neg: int, count: int, pos=None) -> list[int]:
    """Which of the ``num_neg`` mined negatives (in mining order: adjectives, then nouns, each by ascending
    affinity) LAPT trains on: the first ``int(count · A / M)`` adjectives and the first nouns for the rest, as
    the release selects its 1,000 of the same ranking (``get_selected_ood_text_list``); without parts of speech,
    the first ``count``."""
    count = min(int(count), num_neg)
    if pos is None or len(pos) != num_neg:
        return list(range(count))
    adj = [i for i, p in enumerate(pos) if p == "adj"]
    noun = [i for i, p in enumerate(pos) if p != "adj"]
    k_adj = min(len(adj), int(count * len(adj) / max(1, num_neg)))
    k_noun = min(len(noun), count - k_adj)
    return sorted(adj[:k_adj] + noun[:k_noun])


def training_context(context, count: int, pos=None):
    """The context restricted to LAPT's training negatives (same ID rows, text path and templates)."""
    from .context import AdapterContext

    n = context.num_id
    keep = training_negative_indices(context.num_neg, count, pos)
    rows = torch.tensor(list(range(n)) + [n + i for i in keep], dtype=torch.long)
    templates = context.neg_templates
    if len(templates) == context.num_neg:
        templates = [templates[i] for i in keep]
    return AdapterContext(text_features=context.text_features[rows.to(context.text_features.device)],
                          id_names=context.id_names, neg_names=[context.neg_names[i] for i in keep],
                          id_templates=context.id_templates, neg_templates=templates, num_id=n,
                          text_path=context.text_path, tokenizer=context.tokenizer, backbone=context.backbone)


def _encode(backbone, images, device, batch_size: int = 256) -> torch.Tensor:
    feats = []
    for s in range(0, len(images), batch_size):
        x = torch.stack([backbone.preprocess(im) for im in images[s:s + batch_size]])
        feats.append(backbone.encode_images(x).float())
    return torch.cat(feats).to(device)


def render_negative_images(names, per_label: int, seed: int):
    """PIL images rendered for each negative name by the mini world, and their label offsets (0..M-1)."""
    from PIL import Image

    from clipood.mini.build import render_label

    images, offsets = [], []
    for m, name in enumerate(names):
        for arr in render_label(name, n=per_label, seed=seed):
            images.append(Image.fromarray(arr))
            offsets.append(m)
    return images, offsets


def _folder_images(folder: Path, names, per_label: int):
    from PIL import Image

    if not folder.is_dir():
        raise ClipoodError(f"lapt: neg_image_dir {folder} is not a folder; give one sub-folder of images per "
                           "negative label, or '' to render them on the mini world")
    index = {n: m for m, n in enumerate(names)}
    images, offsets = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        m = index.get(sub.name.replace("_", " ")) if sub.name not in index else index[sub.name]
        if m is None:
            continue
        files = sorted(f for f in sub.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
        for f in files[:per_label]:
            images.append(Image.open(f).convert("RGB"))
            offsets.append(m)
    if not images:
        raise ClipoodError(f"lapt: no sub-folder of {folder} is named after one of the {len(names)} negative labels "
                           f"(e.g. {', '.join(names[:3])}); name each sub-folder as its negative label")
    return images, offsets


def negative_label_images(adapter, bench, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit features (n×D) and labels (N + m, m the negative's index) of the negative labels' training images."""
    ctx = adapter.context
    if not ctx.neg_names:
        raise ClipoodError("lapt needs negative labels (mine negatives first)")
    opts = adapter.config
    if opts.neg_image_dir:
        images, offsets = _folder_images(Path(opts.neg_image_dir), ctx.neg_names, opts.neg_images_per_label)
    elif getattr(bench, "world_dir", None) is not None:
        images, offsets = render_negative_images(ctx.neg_names, opts.neg_images_per_label, int(seed))
    else:
        raise ClipoodError("lapt: set adapter.options.neg_image_dir (one sub-folder of images per negative label); "
                           "images are rendered only on the mini world")
    feats = _encode(bench.backbone, images, device)
    labels = torch.tensor(offsets, dtype=torch.long, device=device) + ctx.num_id
    return feats, labels
