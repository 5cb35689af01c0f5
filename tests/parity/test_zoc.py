"""ZOC (sesmae/ZOC, MIT) against ``cifar10_eval.py``: ``greedysearch_generation_topk`` (one image at a time: start
from [BOS], append the argmax of the last position, keep ``topk(k=35)`` of every step until the sequence has 10
tokens), ``image_decoder``'s candidate set (decoded top-k tokens minus the seen labels) and its score
(``softmax(100·cos)`` over seen + candidate descriptions, Σ of the candidates' probabilities) — written out again
with a per-image loop. The decoder is a tiny randomly initialised torch module built here (``transformers`` is not a
dependency of clipood)."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity_check import check

from adapters.zoc import (ZOC_DEFAULTS, CandidateGenerator, CaptionBackend, CaptionerCandidates, HFCaptionBackend,
                          RetrievalCandidates, allowed_words, greedy_topk_tokens, zoc_score)
from clipood.errors import ClipoodError

TOKENS = ["[BOS]", "a", "the", "cat", "dog", "ship", "truck", "frog", "bird", "sky", "sea", "##s", "tree", "."]
VOCAB = ["cat", "dog", "ship", "truck", "frog", "bird", "sky", "sea", "tree", "horse"]
SEEN = ["cat", "dog", "ship"]


class TinyDecoder(torch.nn.Module):
    """next-token logits = W·tanh(E[last token] + P[position] + A·image state): enough to make greedy paths and
    top-k sets depend on the image and the step."""

    bos_token_id = 0

    def __init__(self, dim=8, hidden=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(len(TOKENS), hidden, generator=g))
        self.pos = torch.nn.Parameter(torch.randn(16, hidden, generator=g))
        self.cond = torch.nn.Parameter(torch.randn(2 * dim, hidden, generator=g))
        self.out = torch.nn.Parameter(torch.randn(hidden, len(TOKENS), generator=g))

    def condition(self, image_features):
        return image_features.float().repeat(1, 2)[:, None, :]  # the release's clip_out.repeat(1, 2)

    def next_token_logits(self, input_ids, states):
        n = input_ids.shape[1]
        h = torch.tanh(self.emb[input_ids[:, -1]] + self.pos[n - 1] + states[:, 0] @ self.cond)
        return h @ self.out

    def decode_token(self, token_id):
        return TOKENS[token_id]


def _release_candidates(dec, feature, steps, k):
    """greedysearch_generation_topk for one image, then ``set(topk_tokens) - set(seen_labels)``."""
    target_list = [torch.tensor(dec.bos_token_id)]
    top_k_list = []
    state = dec.condition(feature[None])
    for _ in range(99):
        target = torch.LongTensor(target_list).unsqueeze(0)
        with torch.no_grad():
            logits = dec.next_token_logits(target, state)[:, None]  # B × L(last) × V
        pred_idx = logits.argmax(2)[:, -1]
        top_k_list.append(torch.topk(logits, dim=2, k=k)[1][:, -1].flatten())
        target_list.append(pred_idx)
        if len(target_list) == steps + 1:
            break
    topk_tokens = [dec.decode_token(int(i)) for i in torch.cat(top_k_list)]
    return set(topk_tokens) - set(SEEN)


def _features(n=6, d=8, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_defaults_are_the_releases():
    assert (ZOC_DEFAULTS["steps"], ZOC_DEFAULTS["top_k"], ZOC_DEFAULTS["scale"]) == (9, 35, 100.0)
    assert ZOC_DEFAULTS["template"] == "This is a photo of a {}"


@pytest.mark.parametrize("steps,k", [(9, 3), (2, 5)])
def test_captioner_candidates_are_the_releases(steps, k):
    dec = TinyDecoder()
    assert isinstance(dec, CaptionBackend)
    feats = _features()
    gen = CaptionerCandidates(dec, VOCAB, SEEN, steps=steps, top_k=k)
    assert isinstance(gen, CandidateGenerator)
    words = gen.candidate_words(feats)
    mask = gen(feats)
    for b in range(feats.shape[0]):
        ref = _release_candidates(dec, feats[b], steps, k)
        assert words[b] == ref
        assert {VOCAB[i] for i in torch.nonzero(mask[b]).flatten().tolist()} == ref & set(VOCAB)
    assert len({frozenset(w) for w in words}) > 1  # candidates depend on the image
    assert any(w - set(VOCAB) for w in words)  # some decoded strings fall outside the vocabulary and are dropped
    assert greedy_topk_tokens(dec, feats, steps, k).shape == (feats.shape[0], steps * k)


def test_retrieval_candidates_are_the_k_nearest_unseen_words():
    g = torch.Generator().manual_seed(2)
    vocab_f = F.normalize(torch.randn(len(VOCAB), 8, generator=g), dim=-1)
    gen = RetrievalCandidates(VOCAB, vocab_f, k=3, seen=SEEN)
    feats = _features()
    mask = gen(feats)
    assert mask.shape == (feats.shape[0], len(VOCAB)) and bool((mask.sum(1) == 3).all())
    for b in range(feats.shape[0]):
        sims = F.normalize(feats[b], dim=0) @ vocab_f.T
        ranked = [VOCAB[i] for i in torch.argsort(sims, descending=True).tolist() if VOCAB[i] not in SEEN]
        assert {VOCAB[i] for i in torch.nonzero(mask[b]).flatten().tolist()} == set(ranked[:3])
    with pytest.raises(ClipoodError, match="k must be"):
        RetrievalCandidates(VOCAB, vocab_f, k=len(VOCAB), seen=SEEN)


def test_score_is_one_minus_the_releases_candidate_mass():
    rng = np.random.default_rng(5)
    img = rng.normal(size=(4, 8))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    seen_f = rng.normal(size=(len(SEEN), 8))
    seen_f /= np.linalg.norm(seen_f, axis=1, keepdims=True)
    vocab_f = rng.normal(size=(len(VOCAB), 8))
    vocab_f[:4] = img + 0.05 * rng.normal(size=(4, 8))  # words close to each image: candidates that compete
    vocab_f /= np.linalg.norm(vocab_f, axis=1, keepdims=True)
    mask = rng.random((4, len(VOCAB))) < 0.4
    mask[np.arange(1, 4), np.arange(1, 4)] = True
    mask[0] = False  # an image with no candidate: all mass on the seen labels
    ref = []
    for b in range(4):
        text = np.concatenate([seen_f, vocab_f[mask[b]]])  # all_desc = seen_descriptions + candidates
        z = 100.0 * img[b] @ text.T
        p = np.exp(z - z.max())
        p /= p.sum()
        ref.append(1.0 - np.sum(p[len(SEEN):]))  # ood_prob_sum = Σ zeroshot_probs[len(seen):]
    got = zoc_score(torch.tensor(100.0 * img @ seen_f.T), torch.tensor(100.0 * img @ vocab_f.T), torch.tensor(mask))
    check("zoc_score", got, np.array(ref), tol=1e-12)
    assert float(got[0]) == 1.0 and float(got[1:].max()) < 0.9  # the candidates take mass: not a degenerate fixture


def test_seen_labels_are_never_candidates():
    assert allowed_words(VOCAB, SEEN).tolist() == [w not in SEEN for w in VOCAB]
    with pytest.raises(ClipoodError, match="vocabulary"):
        allowed_words([], SEEN)


def test_hf_backend_without_transformers_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails, installed or not
    with pytest.raises(ClipoodError, match="pip install transformers") as e:
        HFCaptionBackend.from_local(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(ClipoodError, match="does not exist"):
        HFCaptionBackend.from_local(tmp_path / "missing")


def test_hf_backend_loads_local_files_only_and_the_release_state(tmp_path, monkeypatch):
    """With a stand-in ``transformers`` module: the decoder becomes a cross-attention decoder, every load is
    ``local_files_only``, and ``model.pt``'s ``{'net': ...}`` state is loaded."""
    import types

    calls = {}

    class Cfg:
        @classmethod
        def from_pretrained(cls, path, **kw):
            calls["config"] = kw
            return cls()

    class Dec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        @classmethod
        def from_pretrained(cls, path, config=None, **kw):
            calls["model"] = (kw, config.is_decoder, config.add_cross_attention)
            return cls()

    class Tok:
        bos_token_id = 2

        @classmethod
        def from_pretrained(cls, path, **kw):
            calls["tokenizer"] = kw
            return cls()

    fake = types.SimpleNamespace(BertGenerationConfig=Cfg, BertGenerationDecoder=Dec, BertGenerationTokenizer=Tok)
    monkeypatch.setitem(sys.modules, "transformers", fake)
    torch.save({"net": {"w": torch.tensor([1.0, 2.0])}, "epoch": 3}, tmp_path / "model.pt")
    be = HFCaptionBackend.from_local(tmp_path, weights=tmp_path / "model.pt")
    assert calls["config"] == {"local_files_only": True} and calls["tokenizer"] == {"local_files_only": True}
    assert calls["model"] == ({"local_files_only": True}, True, True)
    assert be.model.w.tolist() == [1.0, 2.0] and be.bos_token_id == 2
    assert be.condition(torch.ones(3, 4)).shape == (3, 1, 8)
