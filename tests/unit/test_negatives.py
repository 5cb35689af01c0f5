import hashlib
import math
import zlib

import numpy as np
import pytest
import torch

from clipood.errors import ClipoodError
from clipood.negatives import (
    DATA_DIR,
    Corpus,
    NegativeSet,
    load_corpus,
    load_word_file,
    mine_negatives,
    mine_or_load,
)

D = 16


def _vec(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(D)
    return (v / np.linalg.norm(v)).astype(np.float32)


class FakeEncoder:
    """Deterministic random unit vector per prompt string; counts calls."""

    def __init__(self):
        self.calls = 0
        self.prompts = 0

    def __call__(self, prompts):
        self.calls += 1
        self.prompts += len(prompts)
        return torch.from_numpy(np.stack([_vec(p) for p in prompts]))


def _words(prefix, n):
    # varied lengths, so length-sorted encoding order differs from corpus order
    return [f"{prefix}{'z' * ((7 * i) % 5)}{i:03d}" for i in range(n)]


ID = ["cat", "dog", "fox", "owl", "bee", "elk", "yak"]


def reference(id_names, corpus, fraction=None, m=None, q=0.95):
    """Brute force in numpy float64: η = np.quantile(cos to all ID features, q), lowest per POS."""
    id_feats = np.stack([_vec(f"the nice {c}.") for c in id_names]).astype(np.float64)
    out = {}
    ids = {c.lower() for c in id_names}
    cands = {"noun": [w for w in corpus.nouns if w.lower() not in ids],
             "adj": [w for w in corpus.adjectives if w.lower() not in ids]}
    total = len(cands["noun"]) + len(cands["adj"])
    for pos, tmpl in (("noun", "the nice {}."), ("adj", "This is a {} photo.")):
        words = cands[pos]
        eta = np.array([np.quantile(id_feats @ _vec(tmpl.format(w)).astype(np.float64), q) for w in words])
        if m is None:
            k = int(math.floor(fraction * len(words) + 1e-9))
        else:
            share = m * len(cands["noun"]) / total
            k = int(math.floor(share + 0.5)) if pos == "noun" else m - int(math.floor(share + 0.5))
        order = sorted(range(len(words)), key=lambda i: (eta[i], words[i]))[:k]
        out[pos] = ([words[i] for i in order], eta[order])
    return out


@pytest.fixture
def corpus():
    return Corpus(nouns=_words("n", 120), adjectives=_words("a", 45))


def test_hand_2d_embedding():
    ang = {"the nice id0.": 0, "the nice id1.": 10, "the nice id2.": 20}
    nouns = {"w30": 30, "w60": 60, "w90": 90, "w120": 120, "w150": 150, "w180": 180}
    ang.update({f"the nice {w}.": a for w, a in nouns.items()})
    ang.update({"This is a j45 photo.": 45, "This is a j170 photo.": 170})

    def enc(prompts):
        return torch.tensor([[math.cos(math.radians(ang[p])), math.sin(math.radians(ang[p]))] for p in prompts])

    ns = mine_negatives(enc, ["id0", "id1", "id2"], Corpus(list(nouns), ["j45", "j170"]), fraction=0.5,
                        progress=False)
    # farthest from the ID directions first; adjectives before nouns
    assert ns.words == ["j170", "w180", "w150", "w120"]
    assert ns.pos == ["adj", "noun", "noun", "noun"]
    # η(w120): cosines to ID = cos 120°, cos 110°, cos 100°; 0.95-quantile (linear) of 3 sorted values
    c = sorted(math.cos(math.radians(a)) for a in (120, 110, 100))
    assert ns.scores[3] == pytest.approx(c[1] + 0.9 * (c[2] - c[1]), abs=1e-6)
    # η(w180): sorted cosines cos 180° < cos 170° < cos 160°; position 0.95 · 2 = 1.9
    assert ns.scores[1] == pytest.approx(0.1 * math.cos(math.radians(170)) + 0.9 * math.cos(math.radians(160)),
                                         abs=1e-6)


def test_matches_numpy_reference_fraction(corpus):
    ns = mine_negatives(FakeEncoder(), ID, corpus, fraction=0.2, batch_size=32, progress=False)
    ref = reference(ID, corpus, fraction=0.2)
    assert ns.words == ref["adj"][0] + ref["noun"][0]
    assert ns.pos == ["adj"] * 9 + ["noun"] * 24
    np.testing.assert_allclose(ns.scores, np.concatenate([ref["adj"][1], ref["noun"][1]]), atol=1e-6)
    assert ns.settings["num_selected"] == {"noun": 24, "adj": 9}


@pytest.mark.parametrize("m", [0, 1, 10, 33, 165])
def test_exact_m_split_by_pos_proportion(corpus, m):
    ns = mine_negatives(FakeEncoder(), ID, corpus, num_negatives=m, batch_size=50, progress=False)
    assert len(ns) == m
    ref = reference(ID, corpus, m=m)
    assert ns.words == ref["adj"][0] + ref["noun"][0]
    n_noun = ns.pos.count("noun")
    assert abs(n_noun - m * 120 / 165) <= 0.5


def test_m_rounding_rule():
    # 3 nouns, 1 adjective, M = 2: nouns get round_half_up(2 * 3/4 = 1.5) = 2, adjectives 0
    ns = mine_negatives(FakeEncoder(), ID, Corpus(["x", "y", "z"], ["q"]), num_negatives=2, progress=False)
    assert ns.pos == ["noun", "noun"]
    with pytest.raises(ClipoodError, match="exceeds the 4 candidate"):
        mine_negatives(FakeEncoder(), ID, Corpus(["x", "y", "z"], ["q"]), num_negatives=5, progress=False)


def test_id_names_removed_exactly():
    corpus = Corpus(nouns=["Cat", "great_white_shark", "cats", "dog house", "wolf"], adjectives=["DOG", "red"])
    ids = ["cat", "great white shark", "dog"]
    ns = mine_negatives(FakeEncoder(), ids, corpus, fraction=1.0, progress=False)
    assert sorted(ns.words) == ["cats", "dog house", "red", "wolf"]
    assert ns.settings["num_candidates"] == {"noun": 3, "adj": 1}


def test_corpus_clean():
    c = Corpus(nouns=[" apple ", "Apple", "pear", ""], adjectives=["red", "PEAR", "Red", "blue"]).clean()
    assert c.nouns == ["apple", "pear"] and c.adjectives == ["red", "blue"]
    assert Corpus(["a", "b"], ["c"]).digest() == Corpus(["a", "b", "A"], ["c", "B"]).digest()
    assert Corpus(["a", "b"], ["c"]).digest() != Corpus(["a", "c"], ["b"]).digest()


def test_deterministic_file(tmp_path, corpus):
    a = mine_negatives(FakeEncoder(), ID, corpus, fraction=0.3, progress=False)
    b = mine_negatives(FakeEncoder(), ID, Corpus(list(corpus.nouns), list(corpus.adjectives)), fraction=0.3,
                       progress=False)
    a.save(tmp_path / "a.tsv")
    b.save(tmp_path / "b.tsv")
    assert (tmp_path / "a.tsv").read_bytes() == (tmp_path / "b.tsv").read_bytes()


def test_ties_broken_by_word():
    ns = mine_negatives(lambda p: torch.ones(len(p), 3), ["x"], Corpus(["b", "c", "a", "d"], []), fraction=0.5,
                        progress=False)
    assert ns.words == ["a", "b"]


def test_save_load_round_trip(tmp_path, corpus):
    ns = mine_negatives(FakeEncoder(), ID, corpus, num_negatives=20, progress=False)
    ns.settings["backbone"] = "fake"
    ns.save(tmp_path / "neg.tsv")
    text = (tmp_path / "neg.tsv").read_text()
    assert text.startswith("# clipood-negatives/1") and "# settings: {" in text
    back = NegativeSet.load(tmp_path / "neg.tsv")
    assert back.words == ns.words and back.pos == ns.pos and back.scores == ns.scores
    assert back.settings == ns.settings
    assert back.prompts()[0] == f"This is a {ns.words[0]} photo."
    assert back.prompts()[-1] == f"the nice {ns.words[-1]}."
    assert len(ns.prompts(noun_template="{}")) == 20


def test_mine_or_load_reuses_and_remines(tmp_path, corpus):
    path = tmp_path / "cache" / "neg.tsv"
    enc = FakeEncoder()
    kw = dict(backbone="fake-b16", num_negatives=15, progress=False, batch_size=64)
    first = mine_or_load(path, enc, ID, corpus, **kw)
    assert enc.calls == 1 + math.ceil(165 / 64) and path.is_file()
    again = mine_or_load(path, enc, ID, corpus, **kw)
    assert enc.calls == 4 and again.words == first.words
    mine_or_load(path, enc, ID, corpus, **{**kw, "backbone": "other"})
    assert enc.calls == 8
    mine_or_load(path, enc, ID, corpus, **{**kw, "backbone": "other"})
    assert enc.calls == 8
    changes = [
        dict(num_negatives=16), dict(quantile=0.9), dict(adj_template="a {} thing."),
        dict(id_template="a photo of a {}."), dict(noun_template="a {}."),
    ]
    variants = [((ID, corpus), change) for change in changes] + [
        ((ID + ["emu"], corpus), {}),
        ((ID, Corpus(corpus.nouns[:-1], corpus.adjectives)), {}),
    ]
    for (ids, corp), change in variants:  # each differs from the base settings in one thing only
        mine_or_load(path, enc, ID, corpus, **kw)
        before = enc.calls
        mine_or_load(path, enc, ids, corp, **{**kw, **change})
        assert enc.calls > before, change
    path.write_text("garbage\tline\n")
    before = enc.calls
    mine_or_load(path, enc, ID, corpus, **kw)
    assert enc.calls > before and NegativeSet.load(path).settings["backbone"] == "fake-b16"


def test_fraction_ignored_in_cache_key_when_m_given(tmp_path, corpus):
    enc = FakeEncoder()
    mine_or_load(tmp_path / "n.tsv", enc, ID, corpus, backbone="b", num_negatives=5, fraction=0.1, progress=False)
    n = enc.calls
    mine_or_load(tmp_path / "n.tsv", enc, ID, corpus, backbone="b", num_negatives=5, fraction=0.3, progress=False)
    assert enc.calls == n


def test_argument_errors(corpus):
    enc = FakeEncoder()
    with pytest.raises(ClipoodError, match="fraction"):
        mine_negatives(enc, ID, corpus, fraction=0, progress=False)
    with pytest.raises(ClipoodError, match="num_negatives"):
        mine_negatives(enc, ID, corpus, num_negatives=-1, progress=False)
    with pytest.raises(ClipoodError, match="placeholder"):
        mine_negatives(enc, ID, corpus, adj_template="no slot", progress=False)
    with pytest.raises(ClipoodError, match="no candidate"):
        mine_negatives(enc, ["a"], Corpus(["A"], []), progress=False)


def test_load_word_file(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("# my words\napple\nred\tadj\n\nsea lion\tnoun\nblue\tadjective\n")
    c = load_word_file(f)
    assert c.nouns == ["apple", "sea lion"] and c.adjectives == ["red", "blue"]
    assert load_word_file(f, default_pos="adj").adjectives == ["apple", "red", "blue"]
    f.write_text("apple\nred\tverb\n")
    with pytest.raises(ClipoodError, match=r"words\.txt:2: unknown part of speech 'verb'"):
        load_word_file(f)
    g = tmp_path / "adj.txt"
    g.write_text("shiny\n")
    c = load_corpus(adjectives_file=g)
    assert c.nouns == [] and c.adjectives == ["shiny"]


def test_shipped_lists():
    c = load_corpus()
    assert 110_000 <= len(c.nouns) <= 125_000  # WordNet 3.0 index.noun: 117,798 lemmas
    assert 15_000 <= len(c.adjectives) <= 21_000  # index.adj 21,479 minus those that are also nouns: 18,341
    assert c.nouns == sorted(c.nouns) and c.adjectives == sorted(c.adjectives)
    assert len({w.lower() for w in c.nouns}) == len(c.nouns)
    assert not {w.lower() for w in c.nouns} & {w.lower() for w in c.adjectives}
    assert not any("_" in w for w in c.nouns + c.adjectives)
    assert {"dog", "sea lion", "hot dog"} <= set(c.nouns) and {"shiny", "zygotic"} <= set(c.adjectives) and "blue" in c.nouns
    for name in ("wordnet_nouns.txt", "wordnet_adjectives.txt"):
        assert (DATA_DIR / name).read_text().startswith("# WordNet 3.0")
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in (DATA_DIR / "WORDNET_LICENSE.txt").read_text()


def test_imagenet_against_full_shipped_list():
    from clipood.labels.prompts import get_label_set

    table = torch.nn.functional.normalize(torch.randn(4096, 32, generator=torch.Generator().manual_seed(0)), dim=1)

    def fast(prompts):  # crc32-indexed random unit vectors: fast, deterministic
        return table[torch.tensor([zlib.crc32(p.encode()) % 4096 for p in prompts])]

    names = get_label_set("imagenet").classnames
    corpus = load_corpus()
    ns = mine_negatives(fast, names, corpus, fraction=0.15, progress=False)
    n_noun, n_adj = ns.settings["num_candidates"]["noun"], ns.settings["num_candidates"]["adj"]
    assert n_noun < len(corpus.nouns)  # ImageNet names that are WordNet nouns were removed
    assert len(ns) == math.floor(0.15 * n_noun) + math.floor(0.15 * n_adj)
    assert not {w.lower() for w in ns.words} & {c.lower() for c in names}
