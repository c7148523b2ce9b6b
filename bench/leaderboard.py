"""Markdown leaderboards rendered from the results store (v0: mean Dice with a 95% bootstrap CI).

Per task, protocol and method: the mean over test cases and seeds of the per-case mean foreground
Dice, a 95% percentile bootstrap CI over (seed, case) pairs, and the number of seeds and cases.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from bench.registry import SUITES


def bootstrap_mean_ci(values: np.ndarray, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    values = np.asarray(values, float)
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_resamples, len(values)))
    means = values[idx].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarise(metrics: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    m = metrics[metrics.metric == metric]
    per_case = (m.groupby(["task", "protocol", "label_fraction", "method", "seed", "draw", "case_id"])["value"]
                .mean().reset_index())
    rows = []
    for key, g in per_case.groupby(["task", "protocol", "label_fraction", "method"]):
        lo, hi = bootstrap_mean_ci(g["value"].to_numpy())
        rows.append(dict(zip(["task", "protocol", "label_fraction", "method"], key), mean=g["value"].mean(),
                         ci_low=lo, ci_high=hi, seeds=g["seed"].nunique(), cases=g["case_id"].nunique()))
    return pd.DataFrame(rows)


def render(suite_name: str, metrics: pd.DataFrame, cells: pd.DataFrame) -> str:
    suite = SUITES.get(suite_name)
    budgets = sorted(cells.budget.unique()) if len(cells) else []
    source = "synthetic data" if suite.synthetic else "real data"
    lines = [f"# Leaderboard: {suite.name} v{suite.version} ({source}; budget {', '.join(budgets) or 'n/a'})", "",
             f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} from {len(cells)} stored cells. "
             "Mean foreground Dice over test cases and seeds, 95% percentile bootstrap CI over (seed, case).", ""]
    if metrics.empty:
        return "\n".join(lines + ["No results yet.", ""])
    table = summarise(metrics)
    for (task, protocol, frac), g in table.groupby(["task", "protocol", "label_fraction"]):
        lines += [f"## {task} / {protocol}" + (f" / {frac:.0%} labels" if frac < 1 else ""), "",
                  "| method | Dice | 95% CI | seeds | cases |", "|---|---|---|---|---|"]
        for r in g.sort_values("mean", ascending=False).itertuples():
            lines.append(f"| {r.method} | {r.mean:.4f} | [{r.ci_low:.4f}, {r.ci_high:.4f}] | {r.seeds} | {r.cases} |")
        lines.append("")
    return "\n".join(lines)


def write(suite_name: str, store, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{suite_name}.md"
    text = render(suite_name, store.metrics(suite_name), store.cells(suite_name))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
