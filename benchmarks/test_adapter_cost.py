"""Adapter cost at true ViT-B/16 size (D = 512, K = 1,000 ID + 10,000 negatives), random weights.

Run with ``pytest --benchmark`` (plain ``pytest`` skips benchmarks). Reports, in ``extra_info``: trainable
parameters, training FLOPs per crop (forward + backward, torch FlopCounterMode), and the speed ratio of the
factored image-conditional forward over the explicit per-image B×K×D formula measured in the same run.
"""
import time

import pytest
import torch

import adapters
from clipood.losses import classification_loss

N, M, D = 1000, 10_000, 512


@pytest.fixture(scope="module")
def nft():
    torch.manual_seed(0)
    C = torch.nn.functional.normalize(torch.randn(N + M, D), dim=-1)
    return adapters.NFT(C, N, hidden_dim=64)


def _naive(nft, v):
    c = nft.tuned_text_features(v)  # B×K×D, what the factored forward avoids
    return torch.einsum("bd,bkd->bk", v, c)


def test_nft_forward_factored(benchmark, nft):
    v = torch.nn.functional.normalize(torch.randn(64, D), dim=-1)
    with torch.no_grad():
        benchmark.pedantic(lambda: nft(v), rounds=5, iterations=1, warmup_rounds=1)
        t = time.perf_counter()
        _naive(nft, v[:8])
        naive_per_image = (time.perf_counter() - t) / 8
        fast_per_image = benchmark.stats.stats.median / 64
    benchmark.extra_info.update(params=nft.num_trainable_parameters(),
                                speedup_vs_naive=round(naive_per_image / fast_per_image, 1))
    assert nft.num_trainable_parameters() == 266_496


def test_nft_train_step_flops(benchmark, nft):
    from torch.utils.flop_counter import FlopCounterMode

    v = torch.nn.functional.normalize(torch.randn(64, D), dim=-1)
    y = torch.randint(0, N, (64,))

    def step():
        loss = classification_loss(100 * nft(v).logits, y)
        loss.backward()

    with FlopCounterMode(display=False) as fc:
        step()
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(train_gflops_per_crop=round(fc.get_total_flops() / 64 / 1e9, 4))
    assert fc.get_total_flops() > 0
