"""Leaderboard figures (PNG): critical-difference diagram, probability-of-improvement heatmap,
label-efficiency curves and rank-stability violins.

Every function takes plain data (dicts and DataFrames, computed by ``bench.leaderboard`` from
``bench.stats``) and a path; none computes a statistic. Figures are built on ``matplotlib.figure.Figure``
(Agg canvas, no pyplot state), so they are safe in headless runs and never leak open figures. PNGs carry no
software-version metadata, so an unchanged figure is byte-identical on re-publication.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 150


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    tmp.replace(path)
    return path


def _palette(n: int) -> list:
    import seaborn as sns

    return sns.color_palette("colorblind" if n <= 10 else "husl", n)


def cliques(ranks: list[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs (first, last index) of ascending ``ranks`` whose spread is below ``cd``."""
    out: list[tuple[int, int]] = []
    for i, r in enumerate(ranks):
        j = max(idx for idx in range(i, len(ranks)) if ranks[idx] - r < cd)
        if j > i and (not out or j > out[-1][1]):
            out.append((i, j))
    return out


def critical_difference(mean_ranks: dict[str, float], cd: float, path: str | Path, title: str = "") -> Path:
    """Demšar-style diagram: a rank axis (1 = best, on the left), each method hung from its mean rank, and a
    bar joining every group of methods whose mean ranks differ by less than ``cd``."""
    names = sorted(mean_ranks, key=lambda m: (mean_ranks[m], m))
    ranks = [float(mean_ranks[m]) for m in names]
    k = len(names)
    lo, hi = 1, max(k, math.ceil(max(ranks)))
    groups = cliques(ranks, cd)
    n_left = math.ceil(k / 2)
    step = 0.32
    y0 = 0.45 + 0.14 * len(groups)
    rows = max(n_left, k - n_left)
    height = y0 + step * rows + 0.2
    fig = _figure(8.0, 0.9 + 0.55 * height)
    ax = fig.add_subplot()
    ax.set_axis_off()
    span = hi - lo
    left, right = lo - 0.45 * span - 0.5, hi + 0.45 * span + 0.5
    ax.set_xlim(left, right)
    ax.set_ylim(height, -1.1)
    ax.hlines(0, lo, hi, color="black", linewidth=1)
    for t in range(lo, hi + 1):
        ax.vlines(t, -0.08, 0, color="black", linewidth=1)
        ax.text(t, -0.15, str(t), ha="center", va="bottom", fontsize=9)
    ax.hlines(-0.75, lo, lo + cd, color="black", linewidth=1.5)
    ax.vlines([lo, lo + cd], -0.82, -0.68, color="black", linewidth=1)
    ax.text(lo + cd / 2, -0.85, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    colours = _palette(k)
    for i, (name, r) in enumerate(zip(names, ranks)):
        on_left = i < n_left
        row = i if on_left else k - 1 - i
        y = y0 + step * row
        end = lo - 0.25 if on_left else hi + 0.25
        ax.plot([r, r, end], [0, y, y], color=colours[i], linewidth=1.2)
        ax.text(end - 0.05 if on_left else end + 0.05, y, f"{name} ({r:.2f})", ha="right" if on_left else "left",
                va="center", fontsize=9)
    for g, (i, j) in enumerate(groups):
        y = 0.22 + 0.14 * g
        ax.hlines(y, ranks[i] - 0.04, ranks[j] + 0.04, color="black", linewidth=3.5)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def probability_of_improvement(matrix: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Heatmap of P(row method better than column method); the diagonal is left blank."""
    import seaborn as sns

    k = len(matrix)
    fig = _figure(1.6 + 0.75 * k, 1.2 + 0.6 * k)
    ax = fig.add_subplot()
    with warnings.catch_warnings():   # seaborn 0.13 calls Colormap.set_bad, deprecated in matplotlib 3.11
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        sns.heatmap(matrix.astype(float), ax=ax, annot=True, fmt=".2f", vmin=0, vmax=1, center=0.5, cmap="RdBu_r",
                    square=True, cbar_kws={"label": "P(row better than column)"}, annot_kws={"fontsize": 8})
    ax.set_xlabel("column method")
    ax.set_ylabel("row method")
    ax.set_title(("Probability of improvement" + (f" ({title})" if title else "")), fontsize=10)
    return _save(fig, path)


def label_efficiency(curve: pd.DataFrame, path: str | Path, ylabel: str, title: str = "") -> Path:
    """Mean score against the label fraction per method with its CI as a band.

    ``curve`` columns: method, fraction, mean, low, high."""
    methods = sorted(curve["method"].unique())
    fractions = np.sort(curve["fraction"].unique())
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    for colour, m in zip(_palette(len(methods)), methods):
        c = curve[curve["method"] == m].sort_values("fraction")
        ax.plot(c["fraction"], c["mean"], marker="o", color=colour, label=m, linewidth=1.5)
        ax.fill_between(c["fraction"], c["low"], c["high"], color=colour, alpha=0.2, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(fractions, [f"{f * 100:g}%" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("labelled training fraction")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def rank_stability(taus: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Violins (with inner boxes) of the Kendall tau distribution per table. ``taus`` columns: table, tau."""
    import seaborn as sns

    order = list(dict.fromkeys(taus["table"]))
    fig = _figure(1.8 + 1.3 * len(order), 4.0)
    ax = fig.add_subplot()
    sns.violinplot(data=taus, x="table", y="tau", hue="table", order=order, hue_order=order, legend=False,
                   palette=_palette(len(order)), cut=0, inner="box", ax=ax)
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("")
    ax.set_ylabel("Kendall τ vs. full-data ranking")
    for label in ax.get_xticklabels():
        label.set(rotation=20, ha="right", rotation_mode="anchor")
    ax.set_title("Rank stability under case resampling" + (f" ({title})" if title else ""), fontsize=10)
    return _save(fig, path)
