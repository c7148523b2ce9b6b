"""Leaderboard figures (PNG): pairwise significance maps, probability-of-improvement heatmap and
label-efficiency curves.

Every function takes plain data (dicts and DataFrames, computed by ``bench.leaderboard`` from
``bench.stats``) and a path; none computes a statistic. Figures are built on ``matplotlib.figure.Figure``
(Agg canvas, no pyplot state), so they are safe in headless runs and never leak open figures. PNGs carry no
software-version metadata, so an unchanged figure is byte-identical on re-publication.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.types import naming_the_file, temp_sibling

DPI = 150


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with naming_the_file(path):
            fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
            tmp.replace(path)
    finally:  # a failed write leaves no partial temporary behind
        tmp.unlink(missing_ok=True)
    return path


def _palette(n: int) -> list:
    import seaborn as sns

    return sns.color_palette("colorblind" if n <= 10 else "husl", n)


VERDICT_COLOURS = {
    "better": "#1a9850",
    "equivalent": "#91bfdb",
    "worse": "#d73027",
    "inconclusive": "#f0f0f0",
    "untested": "#ffffff",
}


def significance_map(verdicts: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """challengeR-style pairwise map: cell (row, column) coloured by the verdict of the row method against the
    column method (better, equivalent, worse, inconclusive, untested); the diagonal is left blank."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = list(verdicts.index)
    keys = list(VERDICT_COLOURS)
    codes = np.array(
        [[keys.index(v) if v in keys else np.nan for v in verdicts.loc[r, names]] for r in names], dtype=float
    )
    k = len(names)
    fig = _figure(3.4 + 0.6 * k, 1.6 + 0.55 * k)
    ax = fig.add_subplot()
    ax.imshow(
        np.ma.masked_invalid(codes),
        cmap=ListedColormap(list(VERDICT_COLOURS.values())),
        vmin=-0.5,
        vmax=len(keys) - 0.5,
    )
    ax.set_xticks(range(k), names, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xticks(np.arange(k + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(k + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="grey", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("column method")
    ax.set_ylabel("row method")
    ax.legend(
        handles=[
            Patch(facecolor=c, edgecolor="grey", label="too few runs" if v == "untested" else v)
            for v, c in VERDICT_COLOURS.items()
        ],
        fontsize=7,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    for i in range(k):
        ax.text(i, i, "—", ha="center", va="center", fontsize=9, color="grey")
    ax.set_title("Row method against column method" + (f"\n{title}" if title else ""), fontsize=8)
    return _save(fig, path)


def probability_of_improvement(matrix: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Heatmap of P(row method better than column method); the diagonal is left blank."""
    import seaborn as sns

    k = len(matrix)
    fig = _figure(1.6 + 0.75 * k, 1.2 + 0.6 * k)
    ax = fig.add_subplot()
    with warnings.catch_warnings():  # seaborn 0.13 calls Colormap.set_bad, deprecated in matplotlib 3.11
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        sns.heatmap(
            matrix.astype(float),
            ax=ax,
            annot=True,
            fmt=".2f",
            vmin=0,
            vmax=1,
            center=0.5,
            cmap="RdBu_r",
            square=True,
            cbar_kws={"label": "P(row better than column)"},
            annot_kws={"fontsize": 8},
        )
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
