"""Efficiency suite (paper Tab. 7): ``pytest --benchmark`` measures every registered adapter plus zero-shot
NegLabel / MCM at the ``mini`` and ``vit-b-16`` scales (``--bench-scale`` picks), prints the table and writes the
JSON record (``--bench-json``); ``clipood bench-report <json>`` renders it again. Plain ``pytest`` skips it.

What each row holds is described in ``benchmarks/efficiency.py``. The acceptance checks at the end compare
methods measured side by side in this run.
"""
from __future__ import annotations

import pytest
from conftest import get_row, scale_names


def test_method_cost(benchmark, bench_row):
    """One (scale, method) row; its numbers also go to pytest-benchmark's ``extra_info``."""
    r = bench_row
    # the suite times itself (device-synchronised, backbone and method apart); the fixture makes this a
    # benchmark (skipped by plain pytest, selected by --benchmark) and carries the numbers into its JSON
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    info = {"params": r["params"], "test_ms_per_image": r["test"]["ms_per_image"],
            "test_method_ms_per_image": r["test"]["method_ms_per_image"]}
    if r["train"]:
        info.update(train_s_per_step=r["train"]["time_s"], train_estimated=r["train"]["estimated"],
                    train_tflops=r["train"]["tflops"], train_peak_bytes=r["train"]["peak_memory_bytes"])
    benchmark.extra_info.update(info)
    assert r["test"]["ms_per_image"] > 0 and r["test"]["method_gflops_per_image"] >= 0
    if r["train"]:
        assert r["train"]["flops_forward"] > 0 and r["train"]["flops_backward"] > 0
    if "fake_count_matches_real" in r:   # mini: the fake-tensor count equals a real count of the same step
        assert r["fake_count_matches_real"], r["method"]


def nft_params(d: int, h: int) -> int:
    """α_id, β_id, α_neg, β_neg (4·D) + four meta-nets Linear(D→h) → ReLU → Linear(h→D)."""
    return 4 * d + 4 * (d * h + h + h * d + d)


def block_params(w: int) -> int:
    """A pre-norm transformer block: LN (2W) + attention (in 3W² + 3W, out W² + W) + LN (2W) + MLP W → 4W → W
    (4W² + 4W + 4W² + W)."""
    return 12 * w * w + 13 * w


def clipn_params(vocab: int, length: int, w: int, layers: int, d: int, prompts: int) -> int:
    """CLIPN's "no" text path: token + positional embeddings, the blocks, final LN, projection W×D and the
    ``prompts`` additive prompts of L×W."""
    return vocab * w + length * w + layers * block_params(w) + 2 * w + w * d + prompts * length * w


def finetune_params(w: int, d: int, blocks: int) -> int:
    """The fine-tuned copy of the image tower's last ``blocks`` blocks, its final LN and projection W×D."""
    return blocks * block_params(w) + 2 * w + w * d


def _need(config, scale):
    if scale not in scale_names(config):
        pytest.skip(f"scale {scale} not selected (--bench-scale)")


@pytest.mark.parametrize("scale", ["mini", "vit-b-16"])
def test_parameter_counts_exact(benchmark, request, scale):
    _need(request.config, scale)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    cfg = request.config
    nft = get_row(cfg, scale, "nft")
    d = 512 if scale == "vit-b-16" else None
    if d is None:
        from conftest import get_scale

        d = get_scale(cfg, scale).dim
    width = 512 if scale == "vit-b-16" else None
    h = 64 if scale == "vit-b-16" else 32
    assert nft["params"] == nft_params(d, h)
    # KR-NFT stacked on a prompt adapter trains the tuner only (the prompt part is frozen)
    assert get_row(cfg, scale, "stacked")["params"] == nft_params(d, h)
    if scale == "vit-b-16":
        assert nft["params"] == 266_496                          # the released script's h = 64
        assert get_row(cfg, scale, "locoop")["params"] == 16 * width == 8_192
        assert get_row(cfg, scale, "coop")["params"] == 8_192
        assert get_row(cfg, scale, "negpt")["params"] == 4 * width == 2_048
        assert get_row(cfg, scale, "lapt")["params"] == 2 * 4 * width == 4_096
        # CoCoOp's meta-net D → D/16 → W on top of NegPT's 4×W context
        assert get_row(cfg, scale, "connegpt")["params"] == 2_048 + (512 * 32 + 32) + (32 * 512 + 512) == 35_360
        assert get_row(cfg, scale, "taskres")["params"] % 512 == 0
        # issue 23's seed methods at their released sizes
        assert get_row(cfg, scale, "sct")["params"] == 16 * width == 8_192                       # LoCoOp's
        assert get_row(cfg, scale, "idlike")["params"] == (16 + 16 + 100) * width == 67_584     # ctx, octx, 100 words
        assert get_row(cfg, scale, "lsn")["params"] == 16 * width + 3 * 1000 * 16 * width == 24_584_192
        assert get_row(cfg, scale, "negprompt")["params"] == 2 * 4 * width == 4_096             # NEGA_CTX = 2
        assert get_row(cfg, scale, "neglabel")["params"] == get_row(cfg, scale, "mcm")["params"] == 0
        # issue 23's seed methods with recipes of their own (transformer block: 12·W² + 13·W)
        assert get_row(cfg, scale, "clipn")["params"] == clipn_params(49_408, 77, 512, 12, 512, 16) == 64_058_880
        assert get_row(cfg, scale, "zoc")["params"] == 0                                          # retrieval
        assert get_row(cfg, scale, "finetune")["params"] == finetune_params(768, 512, 1) == 7_482_624


def test_acceptance_vit_b_16(benchmark, request):
    """Issue 11's acceptance, measured in this run at ViT-B/16 size (K = 1,000 + 10,000)."""
    _need(request.config, "vit-b-16")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    cfg = request.config
    zs, nft, con, negpt = (get_row(cfg, "vit-b-16", m) for m in ("neglabel", "nft", "connegpt", "negpt"))
    ratio_zs = nft["test"]["ms_per_image"] / zs["test"]["ms_per_image"]
    # measured, not assumed: when ConNegPT was timed on part of its negatives, its measured lower bound counts
    con_ms = con["test"].get("lower_bound_ms_per_image") or con["test"]["ms_per_image"]
    ratio_con = con_ms / nft["test"]["ms_per_image"]
    ratio_flops = negpt["train"]["tflops"] / nft["train"]["tflops"]
    benchmark.extra_info.update(krnft_over_zero_shot=ratio_zs, connegpt_over_krnft=ratio_con,
                                negpt_over_krnft_train_flops=ratio_flops)
    assert ratio_zs <= 1.05
    assert ratio_con >= 20
    assert ratio_flops >= 100


def test_acceptance_mini(benchmark, request):
    """Issue 24's checks at the mini scale, robust to a loaded machine (interleaved rounds, minima): KR-NFT's test
    time stays within 10 % of zero-shot NegLabel's (the method part is ~5 % of an image encoding), and CoFT and
    KR-NFT, whose steps have equal FLOPs, take step times within 2× of each other."""
    _need(request.config, "mini")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    cfg = request.config
    zs, nft, coft = (get_row(cfg, "mini", m) for m in ("neglabel", "nft", "coft"))
    ratio_zs = nft["test"]["ms_per_image"] / zs["test"]["ms_per_image"]
    ratio_step = coft["train"]["time_s"] / nft["train"]["time_s"]
    benchmark.extra_info.update(krnft_over_zero_shot=ratio_zs, coft_over_nft_step=ratio_step)
    assert coft["train"]["tflops"] == nft["train"]["tflops"]
    assert 1.0 <= ratio_zs <= 1.10
    assert 0.5 <= ratio_step <= 2.0
