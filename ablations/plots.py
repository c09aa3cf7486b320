"""Report figures (matplotlib, Agg): learning curves, a forest plot of paired effects, lr curves."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt   # noqa: E402
import numpy as np                # noqa: E402


def _curves(histories: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs at each epoch (runs of different lengths: over those that reached it)."""
    steps = sorted({s for h in histories for s, _ in h})
    by_step = {s: [v for h in histories for t, v in h if t == s] for s in steps}
    mean = np.array([np.mean(by_step[s]) for s in steps])
    std = np.array([np.std(by_step[s], ddof=1) if len(by_step[s]) > 1 else 0.0 for s in steps])
    return np.array(steps), mean, std


def _save(fig, ax, path: Path) -> Path:
    """Grid, legend, tight layout, PNG at 110 dpi; closes the figure."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves(series: dict[str, list[list[tuple[int, float]]]], path: Path, title: str) -> Path:
    """series: variant -> one val_top1_err history per seed."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, hists in series.items():
        x, m, s = _curves(hists)
        line, = ax.plot(x, 100 * m, label=f"{name} (n={len(hists)})", lw=2 if name in ("baseline", "seed") else 1.3)
        ax.fill_between(x, 100 * (m - s), 100 * (m + s), color=line.get_color(), alpha=0.15)
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
