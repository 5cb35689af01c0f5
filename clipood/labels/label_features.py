"""Label features C (K×D): the ID class names, then the mined NegLabel negatives, computed once and cached.

Both parts are cached per backbone, corpus and settings, so a second run encodes no text at all:
``<cache>/negatives/<key>.tsv`` holds the mined words (key: backbone identifier, sorted ID names, corpus sha256,
``negatives`` settings; mining does not depend on the order of the ID names) and
``<cache>/negatives/<key>.features.safetensors`` the text features of the ID prompts and the negative prompts
(key: backbone identifier, ID names in label order, corpus sha256, templates, M / fraction / quantile).
Mining and encoding show progress bars on the main process.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ClipoodError

log = logging.getLogger("clipood")
_FORMAT = "clipood-label-features-v1"


def _encode(backbone, texts: list[str], templates=None, progress: bool = False) -> torch.Tensor:
    try:
        return backbone.encode_text(texts, templates=templates, progress=progress)
    except TypeError:  # an encoder without the progress option
        return backbone.encode_text(texts, templates=templates) if templates else backbone.encode_text(texts)


def _load(path: Path, num_id: int, num_neg: int, words_sha: str) -> dict | None:
    from ..io import load_safetensors

    if not path.is_file():
        return None
    try:
        t = load_safetensors(path)
    except ClipoodError as e:
        log.warning("label-feature cache %s is unusable (%s); encoding again", path, e)
        return None
    ok = ("id" in t and "negatives" in t and t["id"].shape[0] == num_id and t["negatives"].shape[0] == num_neg
          and t.get("words_sha256") is not None)
    if ok:
        stored = bytes(t["words_sha256"].to(torch.uint8).tolist()).hex()
        ok = stored == words_sha
    return t if ok else None


def _fitting_names(backbone, names: list[str], corpus, n: dict):
    """The ID names must be non-empty and their prompts must fit the text encoder (refused otherwise); corpus
    words whose prompt would be cut are left out of mining (every mined negative then fits). Distinct names are
    checked where the names come from the user (:func:`clipood.evaluation.benchmark.setup_benchmark`)."""
    from .prompts import check_prompts_fit, prompts_too_long

    empty = [i for i, c in enumerate(names) if not c.strip()]
    if empty:
        raise ClipoodError(f"ID class {empty[0]} has an empty name; its prompt would be "
                           f"{n['id_template'].replace('{}', '')!r} — name every class")
    tok = getattr(backbone, "tokenizer", None)
    if tok is None:
        return corpus
    check_prompts_fit(tok, [n["id_template"].replace("{}", c) for c in names], "ID class names with "
                      "negatives.id_template", "shorten the class names (id_data.classnames=[...]) or the template")
    kept = {}
    for pos, template in (("nouns", n["noun_template"]), ("adjectives", n["adj_template"])):
        words = list(getattr(corpus, pos))
        long = {i for i, _ in prompts_too_long(tok, [template.replace("{}", w) for w in words])}
        kept[pos] = [w for i, w in enumerate(words) if i not in long]
        if long:
            log.info("left out %d corpus %s whose prompt is longer than the text encoder's context", len(long), pos)
    if len(kept["nouns"]) == len(corpus.nouns) and len(kept["adjectives"]) == len(corpus.adjectives):
        return corpus
    return type(corpus)(nouns=kept["nouns"], adjectives=kept["adjectives"])


def label_text_features(backbone, classnames: Sequence[str], corpus, settings: dict, cache_dir, *,
                        accelerator=None, progress: bool = True):
    """``(C, num_id, NegativeSet)``: C = [ID prompt features; negative prompt features] (float32, CPU).

    ``settings`` is the ``negatives`` config section (num, fraction, quantile, id/noun/adj templates).
    The main process mines / encodes first and writes the caches; the other ranks then read them, so every
    rank uses the same negatives. ``cache_dir`` None caches nothing (mining and encoding run every time).
    """
    import hashlib

    from ..clip.image_features import cache_key
    from ..io import cache_write, save_safetensors
    from ..negatives import mine_or_load

    n = settings
    names = [str(c) for c in classnames]
    corpus = _fitting_names(backbone, names, corpus, n)
    ctx = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
    main = accelerator is None or accelerator.is_main_process
    show = bool(progress) and main
    digest = corpus.digest()
    folder = Path(cache_dir) / "negatives" if cache_dir is not None else None
    with ctx:
        tsv = (folder / f"{cache_key(backbone.identifier, sorted(names), digest, n)}.tsv" if folder is not None
               else None)
        if tsv is None:
            from ..negatives import mine_negatives

            negs = mine_negatives(lambda t: backbone.encode_text(t), names, corpus, num_negatives=n["num"],
                                  fraction=n["fraction"], quantile=n["quantile"], id_template=n["id_template"],
                                  noun_template=n["noun_template"], adj_template=n["adj_template"], progress=show)
        else:
            negs = mine_or_load(tsv, lambda t: backbone.encode_text(t), names, corpus,
                                backbone=backbone.identifier, num_negatives=n["num"], fraction=n["fraction"],
                                quantile=n["quantile"], id_template=n["id_template"],
                                noun_template=n["noun_template"], adj_template=n["adj_template"], progress=show)
        if len(negs) == 0:
            raise ClipoodError("no negative labels were mined; raise negatives.num or negatives.fraction")
        prompts = negs.prompts()
        words_sha = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
        path = None
        if folder is not None:
            key = cache_key(_FORMAT, backbone.identifier, names, digest, n)
            path = folder / f"{key}.features.safetensors"
            cached = _load(path, len(names), len(negs), words_sha)
            if cached is not None:
                log.debug("label text features read from %s (no text encoded)", path.name)
                return torch.cat([cached["id"], cached["negatives"]]).float(), len(names), negs
        id_feats = _encode(backbone, names, templates=[n["id_template"]]).float().cpu()
        neg_feats = _encode(backbone, prompts, progress=show).float().cpu()
        if path is not None and main:
            sha = torch.tensor(list(bytes.fromhex(words_sha)), dtype=torch.uint8)
            tensors = {"id": id_feats.contiguous(), "negatives": neg_feats.contiguous(), "words_sha256": sha}
            cache_write(lambda: save_safetensors(tensors, path, metadata={"format": _FORMAT}),  # one metadata key:
                        path)  # safetensors orders metadata freely
    return torch.cat([id_feats, neg_feats]).float(), len(names), negs
