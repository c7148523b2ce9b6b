"""The leaderboard's file names and figures (PNG, drawn by ``bench.plots``)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from bench.leaderboard.analysis import METRIC_LABELS, Leaderboard, Section
from bench.registry import SUITES, UnknownNameError
from bench.suites import Suite


def file_stem(suite: Suite) -> str:
    """``<suite>`` for the suite's current version; ``<suite>_v<k>`` for the record of an earlier version k, so that
    publishing an old version never overwrites the current leaderboard."""
    current = _current_version(suite)
    return suite.name if current is None or suite.version == current else f"{suite.name}_v{suite.version}"


def _current_version(suite: Suite) -> int | None:
    try:
        return SUITES.get(suite.name).version
    except UnknownNameError:
        return None


def figure_files(lb: Leaderboard) -> dict[tuple, str]:
    """The figures of a leaderboard: key -> path relative to the Markdown file."""
    name = _slug(file_stem(lb.suite))
    files: dict[tuple, str] = {}
    for s in lb.sections:
        b = _slug(s.budget)
        for task, protocol in _curves(s):
            files["label_efficiency", s.budget, task, protocol] = (
                f"{name}/{b}_{_slug(task)}_{_slug(protocol)}_label_efficiency.png"
            )
        for t in s.tables:
            if len(t.rows) >= 3 and t.pairwise:
                files["significance", s.budget, t.label] = (
                    f"{name}/{b}_{_slug(t.task.name)}_{_slug(t.protocol)}_{t.fraction:g}_significance.png"
                )
        if s.across is not None and s.across.iqm:
            files["poi", s.budget] = f"{name}/{b}_probability_of_improvement.png"
    return files


def _curves(s: Section) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], int] = {}
    for t in s.tables:
        seen[t.task.name, t.protocol] = seen.get((t.task.name, t.protocol), 0) + 1
    return [k for k, v in seen.items() if v > 1]


def write_figures(plots, s: Section, files: dict[tuple, str], out_dir: Path) -> None:
    for task, protocol in _curves(s):
        tables = [t for t in s.tables if (t.task.name, t.protocol) == (task, protocol)]
        curve = pd.DataFrame(
            [
                {"method": r.method, "fraction": t.fraction, "mean": r.mean, "low": r.low, "high": r.high}
                for t in tables
                for r in t.rows
            ]
        )
        plots.label_efficiency(
            curve,
            out_dir / files["label_efficiency", s.budget, task, protocol],
            ylabel=METRIC_LABELS.get(tables[0].task.metric, tables[0].task.metric),
            title=f"{task} / {protocol} (budget {s.budget})",
        )
    for t in s.tables:
        if ("significance", s.budget, t.label) in files:
            order = [r.method for r in t.rows]
            verdicts = pd.DataFrame("", index=order, columns=order, dtype=object)
            for (a, b), c in t.pairwise.items():
                flip = {"better": "worse", "worse": "better"}
                verdicts.loc[a, b] = c.verdict
                verdicts.loc[b, a] = flip.get(c.verdict, c.verdict)
            plots.significance_map(
                verdicts, out_dir / files["significance", s.budget, t.label], title=f"{t.label} (budget {s.budget})"
            )
    if ("poi", s.budget) in files and s.across is not None:  # figure_files lists it only with an across block
        plots.probability_of_improvement(s.across.poi, out_dir / files["poi", s.budget], title=f"budget {s.budget}")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(s)).strip("-") or "x"
