"""ZOC as a recipe: the zero-shot setup (cached image features, MCM / NegLabel rows), then per image a set of
candidate labels over a fixed vocabulary (:mod:`adapters.zoc`: retrieval offline, or a local caption decoder) and
the ZOC score Σ_seen softmax(100·cos) over [seen ∪ candidates] on every split."""
from __future__ import annotations

from pathlib import Path

import torch

from clipood.errors import ClipoodError

from .krnft import ZeroShotRecipe
from .seed_common import scored_method

__all__ = ["ZOCRecipe", "zoc_method", "caption_backend", "candidate_generator"]


def caption_backend(zcfg: dict):
    """The captioner backend of ``zoc.decoder_dir`` (a local Hugging Face decoder; nothing is downloaded)."""
    from adapters.zoc import HFCaptionBackend

    return HFCaptionBackend.from_local(zcfg["decoder_dir"], zcfg.get("decoder_weights"))


class _Scaled:
    """A caption backend conditioned on ``scale``·features (see ``zoc.condition_scale``)."""

    def __init__(self, backend, scale: float):
        self.backend, self.scale = backend, float(scale)
        self.bos_token_id = backend.bos_token_id

    def condition(self, image_features):
        return self.backend.condition(self.scale * image_features)

    def next_token_logits(self, input_ids, states):
        return self.backend.next_token_logits(input_ids, states)

    def decode_token(self, token_id):
        return self.backend.decode_token(token_id)


def candidate_generator(zcfg: dict, vocabulary, vocab_features, seen, backend=None):
    """``zoc.generator``: retrieval (the k nearest unseen words) or captioner (``backend``, else
    :func:`caption_backend`)."""
    from adapters.zoc import CaptionerCandidates, RetrievalCandidates

    if zcfg["generator"] == "retrieval":
        return RetrievalCandidates(vocabulary, vocab_features, k=int(zcfg["k"]), seen=seen)
    backend = backend if backend is not None else caption_backend(zcfg)
    if float(zcfg.get("condition_scale", 1.0)) != 1.0:
        backend = _Scaled(backend, zcfg["condition_scale"])
    return CaptionerCandidates(backend, vocabulary, seen=seen, steps=int(zcfg["steps"]), top_k=int(zcfg["top_k"]))


def zoc_method(name: str, encode_text, vocabulary, zcfg: dict, logit_scale: float, backend=None):
    """A results row: ZOC on a split's cached unit image features. ``encode_text(texts)`` → unit text features
    (the seen labels and the vocabulary, each in ``zoc.template``); both are encoded once per label set."""
    from adapters.zoc import zoc_score

    cache = {}

    def fn(batch, sf):
        key = tuple(sf.split.classnames)
        if key not in cache:
            vocab_feats = encode_text(list(vocabulary))
            cache[key] = (encode_text(list(key)), vocab_feats,
                          candidate_generator(zcfg, vocabulary, vocab_feats, list(key), backend))
        seen, vocab, gen = cache[key]
        v = batch["image_features"].float()
        seen_logits, vocab_logits = 100.0 * v @ seen.T, 100.0 * v @ vocab.T  # the release's softmax(100·cos)
        return zoc_score(seen_logits, vocab_logits, gen(v).cpu()), seen_logits.argmax(1)

    return scored_method(name, fn, logit_scale)


class ZOCRecipe(ZeroShotRecipe):
    title = "ZOC (candidate labels per image) vs zero-shot MCM / NegLabel"

    def setup(self) -> None:
        self.check()
        super().setup()

    def check(self) -> None:
        """The zoc section, before any work (also the comparison's extra=[zoc])."""
        z = self.cfg["zoc"]
        if z["generator"] not in ("retrieval", "captioner"):
            raise ClipoodError(f"zoc.generator={z['generator']!r}: choose retrieval (offline) or captioner "
                               f"(zoc.decoder_dir=FOLDER)")
        if z["generator"] == "captioner" and not z["decoder_dir"]:
            raise ClipoodError("zoc.generator=captioner needs zoc.decoder_dir (a local Hugging Face decoder folder)")
        for key in ("vocabulary", "decoder_dir", "decoder_weights"):
            if z[key] and not Path(z[key]).exists():
                raise ClipoodError(f"zoc.{key}={z[key]}: no such file or folder")
        if z["template"].count("{}") != 1:
            raise ClipoodError(f"zoc.template={z['template']!r} must hold one '{{}}' for the label")

    def vocabulary(self) -> list[str]:
        """``zoc.vocabulary`` (a word file), else the nouns of the benchmark's mining corpus."""
        from clipood.io import read_text_lines

        z = self.cfg["zoc"]
        words = read_text_lines(z["vocabulary"], "zoc.vocabulary") if z["vocabulary"] else list(self.bench.corpus.nouns)
        if not words:
            raise ClipoodError("ZOC's candidate vocabulary is empty; pass zoc.vocabulary=WORDS.txt")
        return words

    def evaluate(self, backend=None) -> None:
        from clipood.config.settings import EvalSettings, typed
        from clipood.evaluation.runner import evaluate_detectors

        z, bb = self.cfg["zoc"], self.bench.backbone
        vocab = self.vocabulary()

        def encode(texts):
            return bb.encode_text(texts, templates=[z["template"]]).cpu()

        name = f"ZOC ({z['generator']}{', k=' + str(z['k']) if z['generator'] == 'retrieval' else ''})"
        method = zoc_method(name, encode, vocab, z, float(self.cfg["eval"]["logit_scale"]), backend)
        rows, raw = evaluate_detectors([method], self.splits, typed(EvalSettings, self.cfg["eval"]))
        self.rows += rows
        for split, by_method in raw.items():
            self.raw[split].update(by_method)
        source = "zoc.vocabulary" if z["vocabulary"] else "the mining corpus nouns"
        self.notes.append(f"ZOC: {len(vocab)} candidate words ({source}), generator {z['generator']}")
