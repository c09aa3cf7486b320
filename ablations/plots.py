"""Report figures (matplotlib, Agg): learning curves, a forest plot of paired effects, lr curves."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt   # noqa: E402
import numpy as np                # noqa: E402


def _save(fig, ax, path: Path) -> Path:
    """Grid, legend, tight layout, PNG at 110 dpi; closes the figure."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves(series: dict[str, list[tuple[list[tuple[int, float]], bool, int]]], path: Path,
                    title: str) -> Path:
    """series: variant -> [(val_top1_err history, not learned?, seed)] per seed. Every seed's curve
    as a thin line (dashed with an x at its end when the run did not learn: a late start or a run
    at chance), the median over seeds per epoch as a thick line."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, (name, runs) in enumerate(series.items()):
        color = f"C{i % 10}"
        for hist, odd, seed in runs:
            x, y = [s for s, _ in hist], [100 * v for _, v in hist]
            ax.plot(x, y, color=color, lw=0.7, alpha=0.45, ls="--" if odd else "-")
            if odd and x:
                ax.plot(x[-1], y[-1], "x", color=color, ms=6)
        steps = sorted({s for h, _, _ in runs for s, _ in h})
        med = [np.median([v for h, _, _ in runs for t, v in h if t == s]) for s in steps]
        ax.plot(steps, 100 * np.array(med), color=color, lw=2.2,
                label=f"{name} (n={len(runs)}, {sum(o for _, o, _ in runs)} not learned)")
    ax.set(xlabel="epoch", ylabel="val top-1 error, centre crop (%)", title=title)
    return _save(fig, ax, path)


def forest(rows: list[tuple[str, float, float, float, str]], path: Path, title: str, xlabel: str) -> Path:
    """rows: (label, mean, ci_low, ci_high, verdict) in error-rate points (%)."""
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]
    colors = {"hurts": "tab:red", "helps": "tab:green"}
    for yi, (label, m, lo, hi, v) in zip(y, rows):
        c = colors.get(v.split()[0], "tab:gray")
        if not math.isnan(lo):
            ax.plot([lo, hi], [yi, yi], color=c, lw=2)
        ax.plot([m], [yi], "o", color=c)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=9)
    ax.set(xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lr_curves(series: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """series: label -> lr history of one run."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, h in series.items():
        ax.step([s for s, _ in h], [v for _, v in h], where="post", label=name, lw=1.8)
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="learning rate (log scale)", title=title)
    return _save(fig, ax, path)
