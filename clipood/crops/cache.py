"""The crop-feature cache (KR-NFT §3.4): crop, encode once, select Q ID and Q negative crops per image, and keep
the features as safetensors, keyed by backbone, dataset content (`clipood.clip.image_features.dataset_fingerprint`), the
selected images, the crop config and the class names that rank the crops."""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..clip.image_features import cache_key, dataset_fingerprint
from ..errors import ClipoodError
from ..io import cache_write, load_safetensors, save_safetensors
from .sampling import CropConfig, make_crops, preprocess_params, select_crops

log = logging.getLogger("clipood")
_FORMAT = "clipood-crops-v1"


# --------------------------------------------------------------------------------------------- cache
_TENSORS = ("id_features", "id_labels", "id_image", "id_similarity", "neg_features", "neg_image", "neg_similarity",
            "top_features", "image_features", "image_labels", "image_indices")
_LOCAL = ("id_local", "neg_local")  # optional: patch features of the selected crops (build with local=True)


@dataclass
class CropCache:
    """Features of selected crops for n images (Q ID and Q negative crops each; D = embedding size).

    id_features (n·Q×D, unit) with id_labels (n·Q) and id_image (n·Q: position of the source image in the
    ``indices`` passed to ``build_crop_cache``); id_similarity (n·Q) their cosine to the label prompt.
    neg_features (n·Q×D), neg_image (n·Q), neg_similarity (n·Q). top_features (n×D): each image's single most
    class-like crop (the official code conditions the meta-nets on it). image_features (n×D): the whole image
    through ``backbone.preprocess``; image_labels (n); image_indices (n): dataset index of each image.
    Rows of image i are i·Q … i·Q+Q−1, most (ID) resp. least (negative) similar first.
    id_local / neg_local (n·Q×T×D, unit rows; only when built with ``local=True``, for adapters whose
    ``requires`` names ``local_features``): the T patch features of the same crops in the joint space.
    """

    id_features: torch.Tensor
    id_labels: torch.Tensor
    id_image: torch.Tensor
    id_similarity: torch.Tensor
    neg_features: torch.Tensor
    neg_image: torch.Tensor
    neg_similarity: torch.Tensor
    top_features: torch.Tensor
    image_features: torch.Tensor
    image_labels: torch.Tensor
    image_indices: torch.Tensor
    id_local: torch.Tensor | None = None
    neg_local: torch.Tensor | None = None

    @property
    def has_local(self) -> bool:
        return self.id_local is not None and self.neg_local is not None

    @property
    def num_images(self) -> int:
        return int(self.image_features.shape[0])

    @property
    def num_selected(self) -> int:
        n = self.num_images
        return int(self.id_features.shape[0] // n) if n else 0

    def validate(self, num_images: int | None = None, num_selected: int | None = None) -> None:
        """Raise ClipoodError unless all shapes agree (and match the expected n, Q when given)."""
        n = self.num_images if num_images is None else num_images
        q = self.num_selected if num_selected is None else num_selected
        d = self.image_features.shape[-1] if self.image_features.ndim == 2 else -1
        want = {"id_features": (n * q, d), "neg_features": (n * q, d), "top_features": (n, d),
                "image_features": (n, d), "id_labels": (n * q,), "id_image": (n * q,), "id_similarity": (n * q,),
                "neg_image": (n * q,), "neg_similarity": (n * q,), "image_labels": (n,), "image_indices": (n,)}
        for name in _LOCAL:
            t = getattr(self, name)
            if t is not None:
                want[name] = (n * q, t.shape[1] if t.ndim == 3 else -1, d)
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ClipoodError(f"crop cache field {name} has shape {got}, expected {shape}")

    def stats(self) -> dict:
        """Counts and mean similarities (a quick look at how separated ID and negative crops are)."""
        return {"images": self.num_images, "classes": int(self.image_labels.unique().numel()),
                "selected_per_image": self.num_selected, "id_crops": int(self.id_features.shape[0]),
                "neg_crops": int(self.neg_features.shape[0]), "dim": int(self.image_features.shape[-1]),
                "mean_id_similarity": float(self.id_similarity.mean()) if self.id_similarity.numel() else float("nan"),
                "mean_neg_similarity": float(self.neg_similarity.mean()) if self.neg_similarity.numel() else float("nan")}

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write all tensors to one safetensors file (atomically)."""
        meta = {"format": _FORMAT, **({k: json.dumps(v) for k, v in metadata.items()} if metadata else {})}
        names = _TENSORS + (_LOCAL if self.has_local else ())
        save_safetensors({k: getattr(self, k) for k in names}, path, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CropCache":
        """Read a file written by ``save``; a corrupt or incomplete file raises ClipoodError naming it."""
        t = load_safetensors(path)
        missing = [k for k in _TENSORS if k not in t]
        if missing:
            raise ClipoodError(f"crop cache {path} lacks {', '.join(missing)}; delete it and rebuild")
        cache = cls(**{k: t[k] for k in _TENSORS + _LOCAL if k in t})
        try:
            cache.validate()
        except ClipoodError as e:
            raise ClipoodError(f"crop cache {path}: {e}; delete it and rebuild") from None
        return cache


def crop_cache_path(backbone, dataset, indices: Sequence[int], cfg: CropConfig, classnames: Sequence[str],
                    cache_dir: str | os.PathLike, local: bool = False) -> Path:
    """``<cache_dir>/crops-<key>.safetensors``; the key covers backbone, dataset files, indices, config, names
    (and ``local``, only when set: caches without patch features keep their keys)."""
    key = cache_key(_FORMAT, backbone.identifier, dataset_fingerprint(dataset), [int(i) for i in indices],
                    asdict(cfg), list(classnames),
                    *([getattr(backbone, "local_key", "local")] if local else []))
    return Path(cache_dir) / f"crops-{key}.safetensors"


class _CropImages(torch.utils.data.Dataset):
    """Position p of this shard → (p, P crops, the whole preprocessed image, label)."""

    def __init__(self, backbone, dataset, indices: Sequence[int], positions: Sequence[int], cfg: CropConfig):
        self.dataset, self.indices, self.positions, self.cfg = dataset, indices, positions, cfg
        self.preprocess = backbone.preprocess
        self.params = preprocess_params(backbone)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        pos = self.positions[i]
        idx = int(self.indices[pos])
        image = self.dataset.load_image(idx)
        crops = make_crops(image, self.cfg, idx, **self.params)
        return pos, crops, self.preprocess(image), int(self.dataset.samples[idx][1])


def _collate(items):
    pos, crops, full, labels = zip(*items)
    return list(pos), torch.stack(crops), torch.stack(full), list(labels)


@torch.no_grad()
def build_crop_cache(backbone, dataset, indices: Sequence[int] | None, cfg: CropConfig,
                     classnames: Sequence[str] | None = None, *, accelerator=None,
                     cache_dir: str | os.PathLike | None = None, batch_size: int = 256, num_workers: int = 0,
                     progress: bool = True, local: bool = False) -> CropCache:
    """Crop, encode and select: P crops per image of ``dataset[indices]`` → Q ID and Q negative crop features.

    Crops are ranked by cosine to ``backbone.encode_text(classnames, templates=[cfg.prompt])[label]``.
    With an Accelerate ``accelerator``, rank r encodes positions p with p % world_size == r; results are
    gathered and put back in position order, so every rank returns identical tensors (and, crops being seeded
    by dataset index, the same tensors as a single process). With ``cache_dir`` the result is read from / written
    to ``crops-<key>.safetensors`` there (main process writes, atomically; a corrupt file is deleted and rebuilt).
    ``batch_size`` counts images sent to the encoder at once (crops + whole images); ``num_workers`` DataLoader
    workers make the crops. ``local=True`` also keeps the selected crops' patch features (``id_local`` /
    ``neg_local``, n·Q×T×D) for adapters that require ``local_features``; they cost T times the global ones.
    """
    from tqdm.auto import tqdm

    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not indices:
        raise ClipoodError(f"build_crop_cache: no images selected from dataset {getattr(dataset, 'name', '?')}")
    classnames = list(classnames if classnames is not None else (getattr(dataset, "classnames", None) or []))
    if not classnames:
        raise ClipoodError(f"build_crop_cache: dataset {getattr(dataset, 'name', '?')} has no class names; pass "
                           f"classnames= to rank crops by their label prompt")
    n, Q = len(indices), cfg.num_selected
    labels = [int(dataset.samples[i][1]) for i in indices]
    bad = [y for y in labels if not 0 <= y < len(classnames)]
    if bad:
        raise ClipoodError(f"build_crop_cache: label {bad[0]} has no class name ({len(classnames)} names given)")
    main = accelerator is None or accelerator.is_main_process

    path = None
    if cache_dir is not None:
        path = crop_cache_path(backbone, dataset, indices, cfg, classnames, cache_dir, local)
        cached = _try_load(path, n, Q, local)
        if accelerator is not None and accelerator.num_processes > 1:
            # every rank must take the same branch (the build below is collective)
            flags = accelerator.gather(torch.tensor([int(cached is not None)], device=accelerator.device))
            if not bool(flags.all()):
                cached = None
        if cached is not None:
            log.debug("crop-feature cache hit (%s): no image re-encoded", path)
            return cached
        if main and path.exists():
            path.unlink(missing_ok=True)

    world = 1 if accelerator is None else accelerator.num_processes
    rank = 0 if accelerator is None else accelerator.process_index
    positions = list(range(rank, n, world))
    text = backbone.encode_text(classnames, templates=[cfg.prompt]).float().cpu()
    per_batch = max(1, batch_size // (cfg.num_crops + 1))
    loader = torch.utils.data.DataLoader(_CropImages(backbone, dataset, indices, positions, cfg),
                                         batch_size=per_batch, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate)
    P, m = cfg.num_crops, len(positions)
    rows: list[torch.Tensor] = []  # per image: (2Q + 2)×D  [ID crops | negative crops | top crop | whole image]
    sims: list[torch.Tensor] = []  # per image: 2Q
    locs: list[torch.Tensor] = []  # per image (local=True): 2Q×T×D patch features of the selected crops
    bar = tqdm(total=m, desc="crops", disable=not (progress and main), mininterval=2, leave=False)
    for pos, crops, full, labs in loader:
        b = len(pos)
        x = torch.cat([crops.flatten(0, 1), full])  # b·P crops then b whole images
        if local:
            enc = [backbone.encode_images(x[s:s + batch_size], local=True) for s in range(0, x.shape[0], batch_size)]
            feats = torch.cat([g.float().cpu() for g, _ in enc])
            crop_locs = torch.cat([loc.float().cpu() for _, loc in enc])[:b * P].view(b, P, *enc[0][1].shape[1:])
        else:
            feats = torch.cat([backbone.encode_images(x[s:s + batch_size]).float().cpu()
                               for s in range(0, x.shape[0], batch_size)])
        crop_feats, full_feats = feats[:b * P].view(b, P, -1), feats[b * P:]
        for j in range(b):
            t = text[labs[j]]
            top, bottom = select_crops(crop_feats[j], t, Q)
            sel = torch.cat([crop_feats[j][top], crop_feats[j][bottom]])
            rows.append(torch.cat([sel, crop_feats[j][top[:1]], full_feats[j:j + 1]]))
            sims.append(sel @ t)
            if local:
                locs.append(torch.cat([crop_locs[j][top], crop_locs[j][bottom]]))
        bar.update(b)
    bar.close()
    D = int(text.shape[1])
    packed = torch.stack(rows) if rows else torch.empty(0, 2 * Q + 2, D)
    sim = torch.stack(sims) if sims else torch.empty(0, 2 * Q)
    loc_t = torch.stack(locs) if locs else None  # m×2Q×T×D
    pos_t = torch.tensor(positions, dtype=torch.long)
    if world > 1:
        packed, sim, pos_t, loc_t = _gather_padded(accelerator, packed, sim, pos_t, math.ceil(n / world), loc_t)
    order = torch.argsort(pos_t)
    packed, sim, pos_t = packed[order], sim[order], pos_t[order]
    if loc_t is not None:
        loc_t = loc_t[order]
    if not torch.equal(pos_t, torch.arange(n)):
        raise ClipoodError(f"build_crop_cache: gathered {pos_t.numel()} images, expected positions 0..{n - 1}")

    lab = torch.tensor(labels, dtype=torch.long)
    img = torch.arange(n).repeat_interleave(Q)
    cache = CropCache(
        id_features=packed[:, :Q].reshape(n * Q, D).contiguous(), id_labels=lab.repeat_interleave(Q),
        id_image=img, id_similarity=sim[:, :Q].reshape(-1).contiguous(),
        neg_features=packed[:, Q:2 * Q].reshape(n * Q, D).contiguous(), neg_image=img.clone(),
        neg_similarity=sim[:, Q:].reshape(-1).contiguous(),
        top_features=packed[:, 2 * Q].contiguous(), image_features=packed[:, 2 * Q + 1].contiguous(),
        image_labels=lab, image_indices=torch.tensor(indices, dtype=torch.long))
    if loc_t is not None:
        t_ = loc_t.shape[2]
        cache.id_local = loc_t[:, :Q].reshape(n * Q, t_, D).contiguous()
        cache.neg_local = loc_t[:, Q:].reshape(n * Q, t_, D).contiguous()
    cache.validate(n, Q)
    if path is not None and main:
        meta = {"backbone": backbone.identifier, "config": asdict(cfg), "images": n}
        cache_write(lambda: cache.save(path, metadata=meta), path)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return cache


def _try_load(path: Path, n: int, q: int, local: bool = False) -> CropCache | None:
    if not path.is_file():
        return None
    try:
        cache = CropCache.load(path)
        cache.validate(n, q)
        if local and not cache.has_local:
            raise ClipoodError("it holds no patch features")
        return cache
    except ClipoodError as e:
        log.warning("crop-feature cache %s is unusable (%s); rebuilding it", path, e)
        return None


def _gather_padded(accelerator, packed, sim, pos, rows_per_rank: int, loc=None):
    """All-gather per-rank results padded to the same row count (padding rows carry position −1)."""
    pad = rows_per_rank - packed.shape[0]
    if pad:
        packed = torch.cat([packed, packed.new_zeros(pad, *packed.shape[1:])])
        sim = torch.cat([sim, sim.new_zeros(pad, *sim.shape[1:])])
        pos = torch.cat([pos, pos.new_full((pad,), -1)])
        if loc is not None:
            loc = torch.cat([loc, loc.new_zeros(pad, *loc.shape[1:])])
    dev = accelerator.device
    packed, sim, pos = (accelerator.gather(t.to(dev)).cpu() for t in (packed, sim, pos))
    keep = pos >= 0
    if loc is not None:
        loc = accelerator.gather(loc.to(dev)).cpu()[keep]
    return packed[keep], sim[keep], pos[keep], loc
