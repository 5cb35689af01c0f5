"""Result tables (Markdown laid out like the paper's Tab. 1–3, results.json) and plots (score histograms, ROC)."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import atomic_path, atomic_write, write_json

SPLIT_TITLES = {"base": "Base classes", "new_class": "Unseen classes", "new_style": "Unseen styles"}


def split_heading(split: str, *, data: str = "", num_classes: int | None = None, backbone: str = "",
                  convention: str = "", trained: bool = False) -> str:
    """A results.md table heading that says what the table measures: the split, whether its ID classes were
    trained on, the data, the number of ID classes, the backbone and the metric convention."""
    name = SPLIT_TITLES.get(split, split)
    if split == "base":
        name += " (ID, the classes trained on)" if trained else " (ID)"
    bits = [data, f"{num_classes} ID classes" if num_classes else "", backbone,
            f"{convention} convention" if convention else ""]
    bits = [b for b in bits if b]
    return name + (" — " + ", ".join(bits) if bits else "")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown_table(rows: Sequence[dict], split: str, heading: str | None = None) -> str:
    """One table for ``split`` (headed ``heading``, default the split's name): a row per method, AUROC↑ / FPR95↓
    per dataset and the average, ID acc."""
    rows = [r for r in rows if r["split"] == split]
    if not rows:
        return ""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows if r["dataset"] != "average")) + ["average"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    head = "| Method | " + " | ".join(f"{d} AUROC↑ | {d} FPR95↓" for d in datasets) + " | ID acc↑ |"
    sep = "|---|" + "---:|" * (2 * len(datasets) + 1)
    lines = [f"### {heading or SPLIT_TITLES.get(split, split)}", "", head, sep]
    for m in methods:
        by = {r["dataset"]: r for r in rows if r["method"] == m}
        cells = []
        for d in datasets:
            r = by.get(d)
            cells += [_pct(r["auroc"]), _pct(r["fpr95"])] if r else ["–", "–"]
        acc = by.get("average", {}).get("id_acc")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_pct(acc) if acc is not None else '–'} |")
    return "\n".join(lines) + "\n"


def summary_table(rows: Sequence[dict]) -> str:
    """Average AUROC / FPR95 / ID acc per method and split (and the Base/New harmonic mean of FPR95, Tab. 6)."""
    splits = list(dict.fromkeys(r["split"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    head = "| Method | " + " | ".join(f"{s} AUROC↑ | {s} FPR95↓ | {s} acc↑" for s in splits)
    has_hm = "base" in splits and "new_class" in splits
    head += " | H-mean FPR95↓ |" if has_hm else " |"
    lines = [head, "|---|" + "---:|" * (3 * len(splits) + int(has_hm))]
    for m in methods:
        avg = {r["split"]: r for r in rows if r["method"] == m and r["dataset"] == "average"}
        cells = []
        for s in splits:
            r = avg.get(s)
            cells += [_pct(r["auroc"]), _pct(r["fpr95"]), _pct(r["id_acc"])] if r else ["–"] * 3
        line = f"| {m} | " + " | ".join(cells)
        if has_hm:
            a, b = avg.get("base", {}).get("fpr95"), avg.get("new_class", {}).get("fpr95")
            hm = 2 * a * b / (a + b) if a is not None and b is not None and a + b > 0 else None
            line += f" | {_pct(hm) if hm is not None else '–'}"
        lines.append(line + " |")
    return "\n".join(lines) + "\n"


def chance_level(k: int) -> float:
    """The ID accuracy below which a backbone is "near chance" on K classes: twice chance (1/K), but never above
    halfway between chance and 100 % (for K = 2, twice chance would be 100 %)."""
    return min(2.0 / k, (1.0 + 1.0 / k) / 2)


def chance_warnings(rows: Sequence[dict], num_classes: dict[str, int], backbone: str) -> list[str]:
    """A results.md warning per split whose zero-shot ID accuracy is near chance (:func:`chance_level`): the
    backbone does not tell these classes apart, so OOD scores built on its similarities mean little."""
    out = []
    for split, k in num_classes.items():
        accs = [r["id_acc"] for r in rows if r["split"] == split and r["dataset"] == "average"
                and "zero-shot" in r["method"] and r.get("id_acc") is not None]
        if k > 1 and accs and max(accs) < chance_level(k):
            out.append(f"> **Warning: zero-shot ID accuracy on {split} is {100 * max(accs):.1f} % with {k} classes "
                       f"(chance {100 / k:.1f} %): {backbone} does not recognise these classes, so its OOD scores "
                       f"mean little. Use a backbone that knows them (e.g. model=ViT-B-16 pretrained=openai).**")
    return out


#: significant digits kept in results.json. Every metric is a ratio of counts computed in float64 (AUROC: of
#: ID × OOD pairs, so a denominator below 10^11 for any benchmark here): 12 digits keep each of them exactly as
#: the counts give it and drop only float noise (0.9889439999999999 → 0.988944)
RESULT_DIGITS = 12


def rounded_rows(rows: Sequence[dict]) -> list[dict]:
    """``rows`` with every float rounded to :data:`RESULT_DIGITS` significant digits."""
    def r(v: float) -> float:
        v = float(v)
        return v if v == 0 or not np.isfinite(v) else round(v, RESULT_DIGITS - 1 - int(np.floor(np.log10(abs(v)))))

    return [{k: r(v) if isinstance(v, (float, np.floating)) else v for k, v in row.items()} for row in rows]


CONVENTION_NOTES = {
    "hendrycks": "hendrycks convention (ID positive; FPR95 = OOD accepted at 95 % ID recall)",
    "openood": "openood convention (OpenOOD v1.5: OOD positive; FPR95 = ID flagged as OOD at 95 % OOD recall)",
}


def convention_note(convention: str) -> str:
    """The results.md header line that names the metric convention (and how to get the other one)."""
    other = "openood" if convention == "hendrycks" else "hendrycks"
    return f"Metrics: {CONVENTION_NOTES.get(convention, convention)}; eval.convention={other} gives the other."


def write_results(rows: Sequence[dict], out_dir: str | os.PathLike, title: str = "clipood results",
                  notes: Sequence[str] = (), convention: str | None = None,
                  headings: dict[str, str] | None = None) -> Path:
    """Write ``results.json`` (values rounded, :func:`rounded_rows`) and ``results.md`` (summary + one table per
    split, headed ``headings[split]`` when given: see :func:`split_heading`) atomically. The header names the
    metric ``convention`` when given (runs put `convention_note` into their notes instead)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", rounded_rows(rows))
    splits = list(dict.fromkeys(r["split"] for r in rows))
    units = "AUROC / FPR95 / accuracy in %" + (f"; {CONVENTION_NOTES.get(convention, convention)}." if convention
                                                 else ".")
    parts = [f"# {title}", "", *notes, "", units,
             "", "## Summary (averages)", "", summary_table(rows), ""]
    parts += [markdown_table(rows, s, (headings or {}).get(s)) for s in splits]
    with atomic_write(out / "results.md") as f:
        f.write("\n".join(parts))
    return out / "results.md"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histograms(raw: dict[str, dict[str, np.ndarray]], path: str | os.PathLike, title: str = "") -> None:
    """Score histograms: one panel per method (a grid, at most 3 panels a row), ID sets filled, OOD sets as
    outlines; every panel titled and both axes labelled."""
    plt = _plt()
    methods = list(raw)
    ncols = min(3, len(methods))
    nrows = -(-len(methods) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.5 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, methods):
        allv = np.concatenate([np.asarray(v, dtype=float) for v in raw[m].values()])
        # probabilities pile up at 0 or 1: show them as log-odds (monotone, so the ranking is unchanged)
        prob = allv.min() >= 0 and allv.max() <= 1
        tf = (lambda x: np.log(np.clip(x, 1e-12, 1)) - np.log(np.clip(1 - x, 1e-12, 1))) if prob else (lambda x: x)
        allv = tf(allv)
        bins = np.linspace(allv.min(), allv.max() + 1e-12, 50)
        for name, v in raw[m].items():
            v = tf(np.asarray(v, dtype=float))
            h, _ = np.histogram(v, bins=bins, density=True)   # stairs: the look of ax.hist, without its patches
            if name.startswith("id/"):
                ax.stairs(h, bins, fill=True, alpha=0.45, label=name)
            else:
                ax.stairs(h, bins, linewidth=1.4, label=name)
        ax.set_title(m)
        ax.set_xlabel("log-odds of score (higher = more ID)" if prob else "score (higher = more ID)")
        ax.set_ylabel("density (share of the set per unit score)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    fig.suptitle(title or "OOD score histograms")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_roc(raw: dict[str, dict[str, np.ndarray]], path: str | os.PathLike, title: str = "") -> None:
    """ROC curves (ID positive) of every method against the union of OOD sets of the split."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for m, sets in raw.items():
        ids = np.concatenate([np.asarray(v, float) for k, v in sets.items() if k.startswith("id/")])
        oods = np.concatenate([np.asarray(v, float) for k, v in sets.items() if k.startswith("ood/")])
        thr = np.unique(np.concatenate([ids, oods]))[::-1]
        ids.sort(), oods.sort()
        # fraction of scores >= each threshold, via binary search (no n_thr × n matrix)
        tpr = np.concatenate([[0], 1 - np.searchsorted(ids, thr, "left") / len(ids), [1]])
        fpr = np.concatenate([[0], 1 - np.searchsorted(oods, thr, "left") / len(oods), [1]])
        ax.plot(fpr, tpr, label=m)
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.axhline(0.95, color="gray", linewidth=0.6, linestyle="--")
    ax.set_xlabel("false positive rate (OOD accepted)")
    ax.set_ylabel("true positive rate (ID accepted)")
    ax.set_title("\n".join(textwrap.fill(t, 48) for t in (title or "ROC").split("\n")), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_outputs(rows: Sequence[dict], raw: dict, out_dir: str | os.PathLike, title: str, notes: Sequence[str] = (),
                  plots: bool = True, headings: dict[str, str] | None = None) -> Path:
    """results.json, results.md and (with ``plots``) a histogram and a ROC plot per split."""
    out = Path(out_dir)
    md = write_results(rows, out, title=title, notes=notes, headings=headings)
    if plots:
        for split, by_method in raw.items():
            plot_histograms(by_method, out / f"hist_{split}.png", title=f"{title}: {split}")
            plot_roc(by_method, out / f"roc_{split}.png", title=f"ROC, {split}: ID vs every OOD set\n{title}")
    return md


def plot_loss(history: Sequence[dict], path: str | os.PathLike, weights: dict[str, float] | None = None,
              title: str = "training loss") -> None:
    """The training loss against the step on a linear axis: every ``<term>_loss`` of the log times its weight
    (``weights``, e.g. ``0.3 · ood_loss``; unweighted where no weight is given) and their sum, the total loss
    that training minimises (dashed black line), so the terms add up to it as drawn."""
    if not history:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = [h["step"] for h in history]
    weights = weights or {}
    for k in sorted(k for k in history[0] if k.endswith("_loss")):
        w = weights.get(k, 1.0)
        label = f"{w:g} · {k}" if k in weights else k
        ax.plot(steps, [w * h[k] for h in history], label=label, linewidth=1.1)
    if "loss" in history[0]:
        # dashed, so that a term equal to the total (a single dominant term) stays visible under it
        ax.plot(steps, [h["loss"] for h in history], color="black", linewidth=1.6, linestyle="--", label="total loss")
    ax.axhline(0.0, color="gray", linewidth=0.6, linestyle=":")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (weighted terms and total)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
