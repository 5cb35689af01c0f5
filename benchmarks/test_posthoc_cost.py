"""Cost of every post-hoc score at ViT-B/16 size (issue 22): pre-projection width F = 768, joint D = 512,
K = 1,000 ID classes, statistics fitted on N = 20,000 random ID features, a test batch of B = 256.

Run with ``pytest --benchmark benchmarks/test_posthoc_cost.py`` (plain ``pytest`` skips benchmarks). Each score
row times ``PosthocScore.score_batch`` on the batch (the ID logits given, as evaluation passes them); each fit row
times one fit over the N features (batches of 4,096). ``extra_info`` holds ms per image (scores) or seconds
(fits). ODIN is timed on clipood-mini's 32-px images through its encoder (it is the only score that needs one).
"""
import pytest
import torch

from clipood.clip.pre_projection import ImageProjection
from clipood.posthoc.fit import fit_statistics
from clipood.posthoc.registry import list_scores
from clipood.posthoc.scorer import PosthocScore

F_PRE, D, K, N, B = 768, 512, 1000, 20_000, 256
FEATURE_SCORES = [s.name for s in list_scores() if not s.pixels and not s.label_file]


@pytest.fixture(scope="module")
def world():
    g = torch.Generator().manual_seed(0)
    proj = ImageProjection(torch.randn(D, F_PRE, generator=g) / F_PRE ** 0.5)
    text = torch.nn.functional.normalize(torch.randn(K, D, generator=g), dim=-1)

    def feats(n):
        h = torch.randn(n, F_PRE, generator=g)
        return {"pre_projection_features": h, "image_features": torch.nn.functional.normalize(proj(h), dim=-1),
                "labels": torch.randint(0, K, (n,), generator=g)}

    return proj, text, feats(N), feats(B)


def _fitted(name, proj, text, fit_feats):
    score = PosthocScore(name)
    head = score.head(text, 100.0, proj) if name == "vim" else None
    fit = score.new_fit(num_classes=K, head=head)
    if fit is None:
        return score, 0.0
    import time

    batches = [{k: v[s:s + 4096] for k, v in fit_feats.items()} for s in range(0, N, 4096)]
    t = time.perf_counter()
    stats = fit_statistics(fit, batches)
    return PosthocScore(name, stats=stats), time.perf_counter() - t


@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_score_cost(benchmark, world, name):
    proj, text, fit_feats, batch = world
    score, fit_s = _fitted(name, proj, text, fit_feats)
    logits = 100.0 * batch["image_features"] @ text.T
    out = benchmark.pedantic(lambda: score.score_batch(batch, logits, id_text=text, logit_scale=100.0,
                                                       projection=proj), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(ms_per_image=1000 * benchmark.stats.stats.mean / B, fit_s=fit_s, fit_n=N,
                                batch=B, features=F_PRE if score.info.pre_projection else D, classes=K)
    assert out.shape == (B,) and bool(torch.isfinite(out).all())


def test_odin_cost(benchmark):
    from clipood import load_clip
    from clipood.clip.pre_projection import image_encoder, normalization_std

    bb = load_clip("clipood-mini")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, bb.image_size, bb.image_size, generator=g)
    text = torch.nn.functional.normalize(torch.randn(10, bb.embed_dim, generator=g), dim=-1)
    score, enc, std = PosthocScore("odin"), image_encoder(bb), normalization_std(bb)
    out = benchmark.pedantic(lambda: score.score_batch({"pixels": x}, None, id_text=text, logit_scale=100.0,
                                                       encoder=enc, input_std=std), rounds=3, iterations=1)
    benchmark.extra_info.update(ms_per_image=1000 * benchmark.stats.stats.mean / 32, model="clipood-mini")
    assert out.shape == (32,)
