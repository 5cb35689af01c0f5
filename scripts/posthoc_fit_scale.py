"""Time and peak memory of the post-hoc fit step at ImageNet scale, on random features (CPU).

    python scripts/posthoc_fit_scale.py                    # 1,281,167 × 768, 1000 classes, every fit at once
    python scripts/posthoc_fit_scale.py --n 100000 --fits gaussian,react

Random float32 features (N×F, standard normal, regenerated batch by batch from a seed, so every pass sees the
same values and nothing but the statistics stays in memory) run through clipood.posthoc.fit_statistics with the
chosen fits: gaussian (MDS / RMDS: 1000 class means, two F×F precisions), vim (a random 1000×F linear head,
dim 256), react (the exact 90th percentile of all N·F activations), mean (DICE), knn (the bank, float16 by
default: float32 is 3.9 GB for the bank alone at this shape). Prints one JSON line: wall time per pass, total,
peak RSS (ru_maxrss) and the fitted ReAct threshold (≈ 1.2816 for standard normal values).
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from clipood.posthoc import GaussianFit, KNNFit, LinearHead, MeanFit, ReActFit, ViMFit, fit_statistics


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--fits", default="gaussian,vim,react,mean,knn")
    ap.add_argument("--knn-dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    passes: list[float] = []
    t_pass = [time.perf_counter()]

    def batches():
        for i, s in enumerate(range(0, args.n, args.batch)):
            g = torch.Generator().manual_seed(i)
            b = min(args.batch, args.n - s)
            x = torch.randn(b, args.dim, generator=g)
            yield {"features": x, "labels": torch.arange(s, s + b) % args.classes}
        now = time.perf_counter()
        passes.append(now - t_pass[0])
        t_pass[0] = now

    g = torch.Generator().manual_seed(12345)
    head = LinearHead(torch.randn(args.classes, args.dim, generator=g) / args.dim ** 0.5,
                      torch.randn(args.classes, generator=g))
    make = {"gaussian": lambda: GaussianFit(args.classes), "vim": lambda: ViMFit(head, dim=256),
            "react": lambda: ReActFit(90.0), "mean": lambda: MeanFit(),
            "knn": lambda: KNNFit(dtype=getattr(torch, args.knn_dtype))}
    fits = {name: make[name]() for name in args.fits.split(",")}
    rss0 = _rss_gb()
    t0 = time.perf_counter()
    stats = fit_statistics(fits, batches)
    total = time.perf_counter() - t0
    out = {"n": args.n, "dim": args.dim, "classes": args.classes, "batch": args.batch, "fits": sorted(fits),
           "threads": args.threads, "passes": len(passes), "pass_s": [round(p, 1) for p in passes],
           "total_s": round(total, 1), "rss_before_gb": round(rss0, 3), "peak_rss_gb": round(_rss_gb(), 3)}
    if "react" in stats:
        out["react_threshold"] = float(stats["react"].threshold)
    if "knn" in stats:
        out["knn_bank_gb"] = round(stats["knn"].bank.numel() * stats["knn"].bank.element_size() / 1024 ** 3, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
