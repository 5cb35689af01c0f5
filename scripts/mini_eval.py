"""Zero-shot report of a mini CLIP on mini worlds: accuracy and FPR95 of NegLabel, MCM, energy and GL-MCM.

    python scripts/mini_eval.py --worlds 0 1 2 [--weights file.safetensors] [--negatives 40 100]

Prints one line per world and split (Base / unseen classes / unseen styles): ID accuracy and the FPR95 (%)
of each score averaged over the split's OOD sets, plus NegLabel's FPR95 per OOD set. This is the tool behind
the mini-world numbers in README.md and docs/mini-world.md (the recipes give the same NegLabel and MCM rows).
"""
from __future__ import annotations

import argparse
import json

import torch


def _encode(bb, spec, batch_size=256):
    from torch.utils.data import DataLoader

    from clipood.datasets.dataset import build_dataset

    ds = build_dataset(spec, transform=bb.preprocess)
    gs, ls, ys = [], [], []
    for x, y in DataLoader(ds, batch_size=batch_size, num_workers=0):
        g, loc = bb.encode_images(x, local=True)
        gs.append(g), ls.append(loc), ys.append(torch.as_tensor(y))
    return torch.cat(gs), torch.cat(ls), torch.cat(ys)


def _scores(g, loc, C, n, scale):
    from clipood.scores import compute_score, neglabel_log_odds

    logits = (scale * g @ C.T).double()
    loc_logits = (scale * loc @ C[:n].T).double()
    return {"neglabel": neglabel_log_odds(logits, n),
            "mcm": compute_score("mcm", logits, n, temperature=scale),
            "energy": compute_score("energy", logits, n),
            "glmcm": compute_score("glmcm", logits, n, temperature=scale, local_logits=loc_logits)}


def evaluate_world(bb, seed: int, num_negatives=(40,), scale: float = 100.0, root=None) -> dict:
    """{M: {split: {"acc", "<score>": mean FPR95 %, "neglabel_per_set": {...}}}} for world ``seed`` and each
    number of mined negatives M (0 < M; M larger than the candidates = all of them)."""
    from clipood.metrics import ood_metrics
    from clipood.mini.build import MiniWorldConfig, build_world
    from clipood.mini.protocol import mini_corpus, mini_splits
    from clipood.negatives import mine_negatives

    world = build_world(MiniWorldConfig(seed=seed), root=root, progress=False)
    corpus = mini_corpus(world)
    out: dict = {m: {} for m in num_negatives}
    enc = lambda texts: bb.encode_text(texts)  # noqa: E731
    for split in mini_splits(world):
        ood_raw = {o: _encode(bb, s)[:2] for o, s in split.ood_sets.items()}
        id_raw = {name: _encode(bb, spec) for name, spec in split.id_sets.items()}
        n = len(split.classnames)
        n_cand = len(corpus.clean().nouns) + len(corpus.clean().adjectives) - n
        for m in num_negatives:
            neg = mine_negatives(enc, split.classnames, corpus, num_negatives=min(m, n_cand),
                                 id_template="a photo of a {}.", noun_template="a photo of a {}.",
                                 adj_template="a {} texture.", progress=False)
            C = torch.cat([bb.encode_text(split.classnames, templates=["a photo of a {}."]),
                           bb.encode_text([("a {} texture." if p == "adj" else "a photo of a {}.").replace("{}", w)
                                           for w, p in zip(neg.words, neg.pos)])])
            ood = {o: _scores(g, loc, C, n, scale) for o, (g, loc) in ood_raw.items()}
            res = {"acc": [], "negatives": neg.words}
            per = {k: [] for k in ("neglabel", "mcm", "energy", "glmcm")}
            per_set = {o: [] for o in ood}
            for name, (g, loc, y) in id_raw.items():
                res["acc"].append(float(((g @ C[:n].T).argmax(1) == y).float().mean()))
                sid = _scores(g, loc, C, n, scale)
                for k in per:
                    per[k].append(sum(ood_metrics(sid[k], ood[o][k])["fpr95"] for o in ood) / len(ood))
                for o in ood:
                    per_set[o].append(ood_metrics(sid["neglabel"], ood[o]["neglabel"])["fpr95"])
            res["acc"] = 100 * sum(res["acc"]) / len(res["acc"])
            for k, v in per.items():
                res[k] = 100 * sum(v) / len(v)
            res["neglabel_per_set"] = {o: round(100 * sum(v) / len(v), 1) for o, v in per_set.items()}
            out[m][split.name] = res
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--weights", default=None, help="a clipood-mini safetensors file (default: the shipped one)")
    p.add_argument("--negatives", type=int, nargs="+", default=[40], help="numbers of mined negatives M")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    import clipood

    torch.set_num_threads(1)
    bb = clipood.load_clip("clipood-mini", pretrained=args.weights)
    allres = {}
    print("world   M split      acc   NegLabel  MCM   energy GL-MCM | NegLabel FPR95 per OOD set")
    for seed in args.worlds:
        r = evaluate_world(bb, seed, args.negatives)
        allres[seed] = r
        for m, by_split in r.items():
            for split, v in by_split.items():
                print(f"{seed:5d} {m:3d} {split:10s} {v['acc']:5.1f} {v['neglabel']:7.1f} {v['mcm']:6.1f} "
                      f"{v['energy']:6.1f} {v['glmcm']:6.1f} | {v['neglabel_per_set']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(allres, f, indent=1)


if __name__ == "__main__":
    main()
