"""The ZOC recipe's row: per image candidates (retrieval, or a tiny randomly initialised caption decoder) and the
score Σ_seen softmax(100·cos) over [seen ∪ candidates], against a hand computation; bad settings fail in one line
before any work."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError
from clipood.evaluation.protocol import score_cosines
from clipood_recipes.zoc import zoc_method

SEEN = ["arrow", "kite", "house"]
VOCAB = ["arrow", "boat", "cloud", "bell", "kite", "moon", "star", "tree"]


def _text_features(texts, d=6):
    """A fixed unit vector per word (the seed is the word's position in a fixed list)."""
    words = sorted(set(SEEN + VOCAB))
    return torch.stack([F.normalize(torch.randn(d, generator=torch.Generator().manual_seed(words.index(w))), dim=0)
                        for w in texts])


def _images(n=5, d=6):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(11)), dim=-1)


def _row_scores(method, v):
    sf = SimpleNamespace(split=SimpleNamespace(classnames=SEEN), num_id=len(SEEN))
    s, pred = score_cosines(method.logits_fn({"image_features": v}, sf), len(SEEN), method.score, 100.0)
    return s, pred


def _hand_zoc(v, candidates):
    out = []
    for i, cands in enumerate(candidates):
        seen = [math.exp(100 * float(v[i] @ _text_features([w])[0])) for w in SEEN]
        cand = [math.exp(100 * float(v[i] @ _text_features([w])[0])) for w in cands]
        out.append(sum(seen) / (sum(seen) + sum(cand)))
    return torch.tensor(out, dtype=torch.float64)


def test_retrieval_row_is_the_hand_computed_zoc_score():
    v = _images()
    cfg = {"generator": "retrieval", "k": 2}
    s, pred = _row_scores(zoc_method("ZOC", _text_features, VOCAB, cfg, 100.0), v)
    unseen = [w for w in VOCAB if w not in SEEN]
    cands = [sorted(unseen, key=lambda w: -float(v[i] @ _text_features([w])[0]))[:2] for i in range(len(v))]
    assert torch.allclose(s, _hand_zoc(v, cands), atol=1e-6)
    assert torch.equal(pred, (v @ _text_features(SEEN).T).argmax(1))


class TinyCaptioner(torch.nn.Module):
    """A randomly initialised caption decoder: token embedding + the image state → next-token logits; token 0 is
    [BOS], token i ≥ 1 decodes to ``TOKENS[i]`` (some outside the vocabulary, as word pieces are)."""

    TOKENS = ["[BOS]", "boat", "##s", "cloud", "moon", "arrow", ".", "star", "tree", "bell"]

    def __init__(self, d=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(len(self.TOKENS), d, generator=g))
        self.out = torch.nn.Parameter(torch.randn(len(self.TOKENS), d, generator=g))
        self.bos_token_id = 0

    def condition(self, image_features):
        return image_features[:, None, :]

    def next_token_logits(self, input_ids, states):
        h = torch.tanh(self.emb[input_ids].mean(1) + states[:, 0])
        return h @ self.out.T

    def decode_token(self, token_id):
        return self.TOKENS[int(token_id)]


def _hand_captions(dec, v, steps, top_k):
    """The release's loop, one image at a time: greedy ids, the top-k tokens of every step, seen labels removed,
    then only the words of the vocabulary."""
    out = []
    for i in range(v.shape[0]):
        ids, words = [0], set()
        for _ in range(steps):
            logits = dec.next_token_logits(torch.tensor([ids]), dec.condition(v[i:i + 1]))[0]
            words |= {dec.TOKENS[int(t)] for t in logits.topk(top_k).indices}
            ids.append(int(logits.argmax()))
        out.append(sorted(w for w in words - set(SEEN) if w in VOCAB))
    return out


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_captioner_row_with_a_tiny_random_decoder(scale):
    v = _images()
    dec = TinyCaptioner()
    cfg = {"generator": "captioner", "steps": 3, "top_k": 2, "condition_scale": scale}
    s, _ = _row_scores(zoc_method("ZOC", _text_features, VOCAB, cfg, 100.0, backend=dec), v)
    expected = _hand_zoc(v, _hand_captions(dec, scale * v, 3, 2))
    assert torch.allclose(s, expected, atol=1e-6)
    assert (s < 1).any()  # some image has candidates


def test_bad_settings_fail_in_one_line_before_any_work(tmp_path):
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.seed_settings import ZOCRunSettings
    from clipood_recipes.zoc import ZOCRecipe

    out = str(tmp_path / "out")
    for args, words in ((["zoc.generator=beam"], "choose retrieval"),
                        (["zoc.generator=captioner"], "needs zoc.decoder_dir"),
                        ([f"zoc.vocabulary={tmp_path / 'none.txt'}"], "no such file"),
                        (["zoc.template=a photo"], "one '{}'")):
        cfg = compose_settings(ZOCRunSettings, [f"output_dir={out}", *args])
        with pytest.raises(ClipoodError, match=words) as e:
            ZOCRecipe(cfg).setup()
        assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
