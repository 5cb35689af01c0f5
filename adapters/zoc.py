"""ZOC (Esmaeilpour et al., AAAI 2022; sesmae/ZOC, MIT) — candidate labels per image and the ZOC score.

Part A of the seed-methods issue: the computations, no adapter registered yet.

**Release** (``cifar10_eval.py`` ``greedysearch_generation_topk`` / ``image_decoder``; ``train_decoder.py``): a
BERT-generation decoder with cross-attention, trained on COCO captions with the CLIP image embedding (not
normalised, ``repeat(1, 2)`` to the decoder's width) as its single encoder state, decodes greedily from [BOS] for
9 steps (the sequence stops at 10 tokens; the EOS stop is commented out) and keeps the 35 most likely tokens of
every step. Their decoded strings minus the seen labels are the image's candidate labels. With the prompts
``"This is a photo of a {}"`` for the seen and the candidate labels, p = softmax(100·cos) over [seen ∪ candidates]
and the OOD score is Σ_candidates p; here the ID score Σ_seen p = 1 − that (higher = more ID).

**clipood**: the candidate labels of an image are a **mask over a fixed vocabulary** (V words, encoded once), so
an adapter's K = N + V columns stay fixed and the features are cached like any label set. A generator maps image
features (B×D) to a B×V boolean mask (:class:`CandidateGenerator`):

* :class:`RetrievalCandidates` (offline default, no model): the k vocabulary words most similar to the image
  (cosine), seen labels excluded — clipood's stand-in for the captioner, not in the release;
* :class:`CaptionerCandidates`: the release's greedy top-k decoding through a :class:`CaptionBackend`; decoded
  strings outside the vocabulary are dropped (the release encodes any string, word pieces and punctuation
  included): use the decoder's own whole-word tokens as the vocabulary to keep them.
  :class:`HFCaptionBackend` loads a user's local Hugging Face weights (``transformers`` is optional; nothing is
  downloaded).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError

__all__ = ["ZOC_DEFAULTS", "CandidateGenerator", "CaptionBackend", "CaptionerCandidates", "HFCaptionBackend",
           "RetrievalCandidates", "allowed_words", "greedy_topk_tokens", "zoc_score"]

#: the release's values (``cifar10_eval.py``); ``retrieval_k`` is clipood's (same k as the captioner's top-k)
ZOC_DEFAULTS = {"template": "This is a photo of a {}", "steps": 9, "top_k": 35, "scale": 100.0, "retrieval_k": 35,
                "condition_repeat": 2}


@runtime_checkable
class CandidateGenerator(Protocol):
    """Maps image features (B×D) to a B×V boolean mask of candidate labels over ``vocabulary``."""

    vocabulary: Sequence[str]

    def __call__(self, image_features: torch.Tensor) -> torch.Tensor: ...


def allowed_words(vocabulary: Sequence[str], seen: Sequence[str] = ()) -> torch.Tensor:
    """V booleans: False for the words that are seen labels (exact strings, the release's set difference)."""
    if not vocabulary:
        raise ClipoodError("ZOC needs a non-empty candidate vocabulary")
    s = set(seen)
    return torch.tensor([w not in s for w in vocabulary], dtype=torch.bool)


class RetrievalCandidates:
    """The ``k`` vocabulary words with the highest cosine to each image (seen labels never), as a B×V mask.

    ``vocab_features``: V×D text features of the vocabulary (the ZOC template); ``image_features``: B×D.
    """

    def __init__(self, vocabulary: Sequence[str], vocab_features: torch.Tensor, k: int = 35,
                 seen: Sequence[str] = ()) -> None:
        if vocab_features.ndim != 2 or vocab_features.shape[0] != len(vocabulary):
            raise ClipoodError(f"vocab_features must be V×D with V = {len(vocabulary)} words, got "
                               f"{tuple(vocab_features.shape)}")
        self.vocabulary = list(vocabulary)
        self.allowed = allowed_words(self.vocabulary, seen)
        n = int(self.allowed.sum())
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ClipoodError(f"k must be an integer in [1, {n}] (the vocabulary words that are not seen labels), "
                               f"got {k!r}")
        self.k = k
        self.vocab_features = F.normalize(vocab_features.float(), dim=-1)

    def __call__(self, image_features: torch.Tensor) -> torch.Tensor:
        v = F.normalize(image_features.float(), dim=-1)
        sims = (v @ self.vocab_features.to(v.device).T).masked_fill(~self.allowed.to(v.device), float("-inf"))
        top = sims.topk(self.k, dim=1).indices
        return torch.zeros_like(sims, dtype=torch.bool).scatter_(1, top, True)


@runtime_checkable
class CaptionBackend(Protocol):
    """A caption decoder conditioned on one image embedding (the release's ``BertGenerationDecoder``)."""

    bos_token_id: int

    def condition(self, image_features: torch.Tensor) -> torch.Tensor:
        """B×D image embeddings → B×1×H encoder states."""

    def next_token_logits(self, input_ids: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """B×L token ids so far → B×V_tok logits of the next token."""

    def decode_token(self, token_id: int) -> str: ...


def greedy_topk_tokens(backend: CaptionBackend, image_features: torch.Tensor, steps: int = 9,
                       top_k: int = 35) -> torch.Tensor:
    """B×(steps·top_k) token ids: at each of ``steps`` greedy steps from [BOS], the ``top_k`` most likely next
    tokens (``greedysearch_generation_topk``, batched; every image decodes exactly ``steps`` tokens)."""
    if steps < 1 or top_k < 1:
        raise ClipoodError(f"steps and top_k must be >= 1, got {steps}, {top_k}")
    states = backend.condition(image_features)
    ids = torch.full((image_features.shape[0], 1), int(backend.bos_token_id), dtype=torch.long,
                     device=states.device)
    kept = []
    with torch.no_grad():
        for _ in range(steps):
            logits = backend.next_token_logits(ids, states)
            kept.append(logits.topk(top_k, dim=-1).indices)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return torch.cat(kept, dim=1)


class CaptionerCandidates:
    """The release's candidates: decoded top-k tokens of a greedy caption, minus the seen labels, as a mask over
    ``vocabulary`` (strings outside it are dropped; :meth:`candidate_words` returns the release's full sets)."""

    def __init__(self, backend: CaptionBackend, vocabulary: Sequence[str], seen: Sequence[str] = (),
                 steps: int = 9, top_k: int = 35) -> None:
        if not isinstance(backend, CaptionBackend):
            raise ClipoodError(f"{type(backend).__name__} is not a caption backend (bos_token_id, condition, "
                               f"next_token_logits, decode_token)")
        self.backend, self.vocabulary, self.seen = backend, list(vocabulary), list(seen)
        self.allowed = allowed_words(self.vocabulary, seen)
        self.index = {w: i for i, w in enumerate(self.vocabulary)}
        self.steps, self.top_k = steps, top_k

    def candidate_words(self, image_features: torch.Tensor) -> list[set[str]]:
        tokens = greedy_topk_tokens(self.backend, image_features, self.steps, self.top_k)
        seen = set(self.seen)
        return [{self.backend.decode_token(int(t)) for t in row} - seen for row in tokens.tolist()]

    def __call__(self, image_features: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(image_features.shape[0], len(self.vocabulary), dtype=torch.bool)
        for b, words in enumerate(self.candidate_words(image_features)):
            cols = [self.index[w] for w in words if w in self.index]
            mask[b, cols] = True
        return (mask & self.allowed).to(image_features.device)


class HFCaptionBackend:
    """ZOC's caption decoder from a user's local files: a Hugging Face ``BertGenerationDecoder`` folder
    (``config.json`` + weights, and its tokenizer), optionally with the release's trained ``model.pt``
    (``{'net': state_dict}``). Needs ``transformers``; never downloads (``local_files_only``)."""

    def __init__(self, model, tokenizer, repeat: int = 2) -> None:
        self.model, self.tokenizer, self.repeat = model.eval(), tokenizer, int(repeat)
        self.bos_token_id = int(tokenizer.bos_token_id)

    @classmethod
    def from_local(cls, model_dir: str | Path, weights: str | Path | None = None,
                   tokenizer_dir: str | Path | None = None, repeat: int = 2) -> "HFCaptionBackend":
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ClipoodError(f"ZOC decoder folder {model_dir} does not exist; pass the folder that holds the "
                               f"decoder's config.json and weights")
        if weights is not None and not Path(weights).is_file():
            raise ClipoodError(f"ZOC decoder weights {weights} do not exist; pass the release's model.pt or omit it")
        try:
            import transformers
        except ImportError:
            raise ClipoodError("ZOC's captioner backend needs the transformers package (pip install transformers); "
                               "the retrieval candidate generator needs nothing") from None
        config = transformers.BertGenerationConfig.from_pretrained(model_dir, local_files_only=True)
        config.is_decoder, config.add_cross_attention = True, True
        model = transformers.BertGenerationDecoder.from_pretrained(model_dir, config=config, local_files_only=True)
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("net", state) if isinstance(state, dict) else state)
        tok = transformers.BertGenerationTokenizer.from_pretrained(tokenizer_dir or model_dir, local_files_only=True)
        return cls(model, tok, repeat)

    def condition(self, image_features: torch.Tensor) -> torch.Tensor:
        return image_features.float().repeat(1, self.repeat)[:, None, :]

    def next_token_logits(self, input_ids: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        b, n = input_ids.shape
        out = self.model(input_ids=input_ids, position_ids=torch.arange(n, device=input_ids.device).expand(b, n),
                         attention_mask=torch.ones_like(input_ids), encoder_hidden_states=states)
        return out.logits[:, -1]

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode(int(token_id))


def zoc_score(seen_logits: torch.Tensor, vocab_logits: torch.Tensor, mask: torch.Tensor,
              temperature: float = 1.0) -> torch.Tensor:
    """Σ_seen softmax(z / T) over [seen ∪ candidates] (B; 1 when an image has no candidate), from scaled logits
    of the N seen labels (B×N) and the V vocabulary words (B×V) with the B×V candidate mask. T = 1 on 100·cos
    logits is the release's softmax(100·cos)."""
    if seen_logits.ndim != 2 or vocab_logits.ndim != 2 or mask.shape != vocab_logits.shape \
            or vocab_logits.shape[0] != seen_logits.shape[0]:
        raise ClipoodError(f"seen logits B×N, vocabulary logits B×V and a B×V mask expected, got "
                           f"{tuple(seen_logits.shape)}, {tuple(vocab_logits.shape)}, {tuple(mask.shape)}")
    t = float(temperature)
    z_seen = seen_logits.double() / t
    z_cand = (vocab_logits.double() / t).masked_fill(~mask.to(torch.bool), float("-inf"))
    lse_seen = torch.logsumexp(z_seen, dim=1)
    return torch.exp(lse_seen - torch.logaddexp(lse_seen, torch.logsumexp(z_cand, dim=1)))
