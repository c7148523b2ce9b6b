"""Calibration of the leaderboard statistics under the null, by simulation from the published variance.

DESIGN.md ("The replicate is a run"): what a leaderboard may conclude from a statistic is decided by that
statistic's behaviour under the null. This module measures it, with the variance of the published results:

1. :func:`variance_components` estimates, per published table, the random effects of a
   method x run x case model by the ANOVA method of moments;
2. :func:`simulate` draws tables from that model (two identical methods under the null);
3. :func:`old_procedure` (per-case paired Wilcoxon over pooled (run, case) pairs and the hierarchical
   bootstrap CI, as the leaderboards did) and :func:`new_procedure` (run-level inference:
   :func:`bench.stats.paired_run_difference`, :func:`bench.stats.run_mean`, :func:`bench.stats.verdict`)
   decide, per simulated table, whether method 1 is marked against the baseline and whether their 95% CIs
   cover the truth; :func:`false_mark_rate` and :func:`coverage` summarise.

The model, for method ``m``, training run ``r`` (of that method) and test case ``c``::

    y[m, r, c] = mu + a_m + u_c + v_mc + b_mr + e_mrc
    u_c ~ N(0, sd_case^2)         case difficulty, shared by every run of every method
    v_mc ~ N(0, sd_method_case^2) method x case interaction: a method's own easy and hard cases, fixed over its runs
    b_mr ~ N(0, sd_run^2)         training run (pretraining seed x transfer seed x label draw): shifts every case
    e_mrc ~ N(0, sd_resid^2)      run x case residual

``a_m`` are fixed method effects (0 for every method under the null). A run's score is its mean over the
cases; a table's score of a method is the mean over its runs. Everything is Gaussian and homoscedastic:
a caricature of Dice scores in [0, 1], but one with the published first and second moments, which is what
decides the calibration of the procedures compared here.

CLI (Markdown on stdout for docs/statistics.md, one progress line per setting on stderr)::

    python -m bench.tools.calibration [CSV ...] [--tables N] [--seed S]

Pure functions, no plotting; every random function takes ``seed``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from bench import stats
from bench.provenance import LEADERBOARDS, PROJECT_ROOT

TABLE = ["suite", "suite_version", "budget", "task", "protocol", "label_fraction", "metric"]  # one table
RUN = ["draw", "seed"]  # one run of a cell (runs of different methods pair by position)
OVERALL_CLASS = -1  # a classification case's overall value
SET_CASE = "__set__"  # the one stored case of a set-level table
PREDICTION_METRICS = ("pred_score", "pred_target")
COMPONENTS = ["sd_case", "sd_run", "sd_method_case", "sd_resid"]
RUNS = (1, 2, 3, 5, 10)  # runs per method in the CLI's simulations
BASELINE, METHOD = 0, 1  # simulated method indices


# ----------------------------------------------------------------------------------- published data


def per_case_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """One score per (table, method, run, case) from a published CSV's rows, as the leaderboard scores them.

    Prediction rows (per-image scores and targets) are left out. Within a (suite, suite_version, task), the
    class ``-1`` rows are the score where the task stores them (classification); otherwise the score is the
    mean over the classes ``>= 1`` (segmentation foreground).

    Args:
        rows: Rows with at least the columns ``TABLE + ["method", "draw", "seed", "case_id", "class",
            "value"]``.

    Returns:
        Columns ``TABLE + ["method", "draw", "seed", "case_id", "value"]``.
    """
    r = rows[~rows["metric"].isin(PREDICTION_METRICS)]
    task = ["suite", "suite_version", "task"]
    overall = r.groupby(task)["class"].transform("min") == OVERALL_CLASS  # -1 is the smallest class
    keep = np.where(overall, r["class"] == OVERALL_CLASS, r["class"] >= 1)
    r = r[keep]
    return r.groupby(TABLE + ["method", *RUN, "case_id"], sort=True)["value"].mean().reset_index()


def _components(y: Sequence[NDArray[np.floating]]) -> dict[str, float]:
    """Method-of-moments components of one table: ``y[m]`` is method m's scores [R_m, C] on common cases.

    Within each method with ``R_m >= 2`` runs a two-way (run x case) ANOVA gives
    ``MS_resid`` (E = sd_resid^2) and ``MS_run`` (E = sd_resid^2 + C sd_run^2); both are pooled over these
    methods by their degrees of freedom. The methods' case means ``z[m, c]`` (mean over runs) then give a
    two-way (method x case) ANOVA: ``MS_int`` (E = sd_method_case^2 + h sd_resid^2 with h = mean_m 1/R_m:
    the residual averaged over each method's runs) and ``MS_case`` (E = M sd_case^2 + MS_int's expectation;
    run effects are constant over cases and drop out). Negative estimates of a variance are set to 0.
    With one case (a set-level table) the run and residual variance cannot be told apart: ``sd_run`` is then
    the sd of a method's run scores (both together), the rest NaN. ``sd_mc_resid`` is
    ``sqrt(sd_method_case^2 + sd_resid^2)``, the per-case noise of one run that is not shared by the
    methods, and is estimable without repeated runs (``MS_int`` when every method has one run).
    """
    n_cases = y[0].shape[1]
    runs = np.array([m.shape[0] for m in y])
    n_methods = len(y)
    out = dict.fromkeys([*COMPONENTS, "sd_mc_resid"], np.nan)
    repeated = [m for m in y if m.shape[0] >= 2]
    var_resid = np.nan
    if repeated:
        ss_run = sum(n_cases * np.sum((m.mean(1) - m.mean()) ** 2) for m in repeated)
        df_run = sum(m.shape[0] - 1 for m in repeated)
        ms_run = ss_run / df_run
        if n_cases >= 2:
            ss_res = sum(np.sum((m - m.mean(1, keepdims=True) - m.mean(0) + m.mean()) ** 2) for m in repeated)
            var_resid = ss_res / sum((m.shape[0] - 1) * (n_cases - 1) for m in repeated)
            out["sd_resid"] = np.sqrt(var_resid)
            out["sd_run"] = np.sqrt(max(0.0, (ms_run - var_resid) / n_cases))
        else:
            out["sd_run"] = np.sqrt(ms_run)
    if n_methods >= 2 and n_cases >= 2:
        z = np.stack([m.mean(0) for m in y])  # [M, C]
        ms_int = np.sum((z - z.mean(1, keepdims=True) - z.mean(0) + z.mean()) ** 2) / ((n_methods - 1) * (n_cases - 1))
        ms_case = n_methods * np.sum((z.mean(0) - z.mean()) ** 2) / (n_cases - 1)
        out["sd_case"] = np.sqrt(max(0.0, (ms_case - ms_int) / n_methods))
        h = float(np.mean(1.0 / runs))
        if np.isfinite(var_resid):
            var_mc = max(0.0, ms_int - h * var_resid)
            out["sd_method_case"] = np.sqrt(var_mc)
            out["sd_mc_resid"] = np.sqrt(var_mc + var_resid)
        elif np.all(runs == 1):
            out["sd_mc_resid"] = np.sqrt(ms_int)
    return out


def variance_components(rows: pd.DataFrame) -> pd.DataFrame:
    """Variance components of every table of published rows, by the ANOVA method of moments.

    A table is one (suite, suite_version, budget, task, protocol, label_fraction, metric). Its per-case
    scores (:func:`per_case_scores`) are restricted to the cases stored for every run of every method; a run
    is one (draw, seed). The model and the estimators are in the module docstring and in ``_components``:
    ``sd_case`` between cases (shared by all runs and methods; needs >= 2 methods, so the method x case
    interaction is not counted in it), ``sd_run`` between the training runs of one method (from the methods
    with >= 2 runs; NaN if none has), ``sd_method_case`` the method x case interaction (needs >= 2 methods
    and repeated runs), ``sd_resid`` the run x case residual (needs repeated runs). Set-level tables (one
    case ``__set__`` per run) enter with their run-level values only: ``sd_run`` is then the sd of a
    method's run scores, the other components NaN.

    Args:
        rows: Rows of one or more published leaderboard CSVs (``leaderboards/<suite>.csv``).

    Returns:
        One row per table: the ``TABLE`` columns, ``methods``, ``runs`` (runs per method, e.g.
        ``"asa 3, random 3"``), ``min_runs``, ``max_runs``, ``cases``, ``set_level``, ``sd_case``,
        ``sd_run``, ``sd_method_case``, ``sd_resid``, ``sd_mc_resid`` (see ``_components``) and ``mean``.
    """
    scores = per_case_scores(rows)
    out = []
    for key, g in scores.groupby(TABLE, sort=True):
        wide = g.pivot_table(index=["method", *RUN], columns="case_id", values="value", aggfunc="first")
        wide = wide.dropna(axis=1)  # cases every run stored
        if wide.shape[1] == 0:
            continue
        methods = sorted(wide.index.get_level_values("method").unique())
        y = [wide.loc[m].to_numpy(dtype=np.float64) for m in methods]
        comp = _components(y)
        runs = [m.shape[0] for m in y]
        out.append(
            {
                **dict(zip(TABLE, key)),
                "methods": len(methods),
                "runs": ", ".join(f"{m} {r}" for m, r in zip(methods, runs)),
                "min_runs": min(runs),
                "max_runs": max(runs),
                "cases": wide.shape[1],
                "set_level": list(wide.columns) == [SET_CASE],
                **comp,
                "mean": float(np.mean(wide.to_numpy())),
            }
        )
    cols = [*TABLE, "methods", "runs", "min_runs", "max_runs", "cases", "set_level", *COMPONENTS, "sd_mc_resid", "mean"]
    return pd.DataFrame(out, columns=cols)


def read_csvs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The rows of published leaderboard CSVs, concatenated (their prediction rows are dropped later)."""
    frames = [pd.read_csv(p, low_memory=False) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ----------------------------------------------------------------------------------------- simulation


class Setting(NamedTuple):
    """The parameters of a simulated table, apart from the number of runs."""

    name: str
    n_cases: int
    sd_case: float
    sd_run: float
    sd_method_case: float
    sd_resid: float


def simulate(
    n_methods: int,
    n_runs: int,
    n_cases: int,
    sd_case: float,
    sd_run: float,
    sd_method_case: float,
    sd_resid: float,
    effect: float = 0.0,
    n_tables: int = 400,
    seed: int = 0,
    mu: float = 0.0,
) -> NDArray[np.float64]:
    """Tables of per-case scores drawn from the method x run x case model (module docstring).

    Method 0 is the baseline; ``effect`` is added to method 1 (so the true, population, difference of
    method 1 against the baseline is ``effect``: the interaction and run effects have mean 0); every other
    method equals the baseline in distribution. The cases are the same cases for every run and method of a
    table; each table draws new cases.

    Args:
        n_methods: Methods per table (>= 2 for a comparison).
        n_runs: Runs per method.
        n_cases: Test cases.
        sd_case, sd_run, sd_method_case, sd_resid: The components' standard deviations.
        effect: Added to every score of method 1.
        n_tables: Number of independent tables.
        seed: Seed of ``np.random.default_rng``.
        mu: Population mean of the baseline.

    Returns:
        Scores [n_tables, n_methods, n_runs, n_cases].
    """
    rng = np.random.default_rng(seed)
    t, m, r, c = n_tables, n_methods, n_runs, n_cases
    y = (
        mu
        + sd_case * rng.standard_normal((t, 1, 1, c))
        + sd_method_case * rng.standard_normal((t, m, 1, c))
        + sd_run * rng.standard_normal((t, m, r, 1))
        + sd_resid * rng.standard_normal((t, m, r, c))
    )
    if m >= 2:
        y[:, METHOD] += effect
    return y


class Outcome(NamedTuple):
    """What a procedure concludes on each simulated table (all arrays [n_tables])."""

    marks: NDArray[np.bool_]  # method 1 marked better or worse than the baseline
    p: NDArray[np.float64]  # the test's p-value (NaN: not tested)
    covers_mean: NDArray[np.float64]  # the CI of the baseline's mean contains mu (1/0; NaN: no CI)
    covers_difference: NDArray[np.float64]  # the CI of the difference contains the effect (1/0; NaN: no CI)


def _covers(low: Any, high: Any, truth: float) -> NDArray[np.float64]:
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    ok = np.isfinite(low) & np.isfinite(high)
    return np.where(ok, (low <= truth) & (truth <= high), np.nan).astype(np.float64)


def old_procedure(
    sims: NDArray[np.floating],
    alpha: float = 0.05,
    effect: float = 0.0,
    mu: float = 0.0,
    ci: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Outcome:
    """The leaderboards' statistics before run-level inference, on simulated tables.

    Test: :func:`bench.stats.paired_wilcoxon` of method 1 against the baseline over all (run, case) pairs,
    runs paired by position, every pair counted as a replicate; marked when ``p < alpha`` (one comparison:
    no Holm adjustment). CIs: :func:`bench.stats.hierarchical_bootstrap_ci` (runs, then cases) of the
    baseline's mean (truth ``mu``), and, for the difference (not shown in those leaderboards, but what the
    same resampling gives), of the paired differences method 1 - baseline (truth ``effect``).

    Args:
        sims: Scores [n_tables, n_methods >= 2, n_runs, n_cases] (:func:`simulate`).
        alpha: Level of the test.
        effect: True difference of method 1 against the baseline.
        mu: True mean of the baseline.
        ci: Coverage of the intervals.
        n_resamples: Bootstrap resamples (1000 is enough for a coverage estimate).
        seed: Seed of the bootstraps.

    Returns:
        :class:`Outcome`.
    """
    sims = np.asarray(sims, dtype=np.float64)
    a, b = sims[:, METHOD], sims[:, BASELINE]
    p = np.array([stats.paired_wilcoxon(x.ravel(), y.ravel())[1] for x, y in zip(a, b)])
    low, high = stats.hierarchical_bootstrap_ci(b, n_resamples=n_resamples, ci=ci, seed=seed)
    dlow, dhigh = stats.hierarchical_bootstrap_ci(a - b, n_resamples=n_resamples, ci=ci, seed=seed)
    return Outcome(p < alpha, p, _covers(low, high, mu), _covers(dlow, dhigh, effect))


def new_procedure(
    sims: NDArray[np.floating],
    alpha: float = 0.05,
    effect: float = 0.0,
    mu: float = 0.0,
    ci: float = 0.95,
    margin: float = 0.0,
    method: str = "auto",
    n_resamples: int = 1000,
    seed: int = 0,
) -> Outcome:
    """Run-level inference (DESIGN.md, "The replicate is a run") on simulated tables.

    Test: :func:`bench.stats.paired_run_difference` of method 1 against the baseline (runs paired by
    position, cases shared); marked, as in the leaderboard, when :func:`bench.stats.verdict` of its CI is
    ``"better"`` or ``"worse"``; ``p`` is its p-value. CIs: that difference's (truth ``effect``) and
    :func:`bench.stats.run_mean` of the baseline (truth ``mu``). A CI the runs cannot give (one run) is NaN
    and counts in neither coverage.

    Args:
        sims: Scores [n_tables, n_methods >= 2, n_runs, n_cases] (:func:`simulate`).
        alpha: Level of the test; ``ci`` should be ``1 - alpha`` for the mark to be that test.
        effect: True difference of method 1 against the baseline.
        mu: True mean of the baseline.
        ci: Coverage of the intervals.
        margin: Equivalence margin passed to :func:`bench.stats.verdict`.
        method: ``"auto"``, ``"t"`` or ``"bootstrap"`` (passed on).
        n_resamples: Bootstrap resamples where a bootstrap is used.
        seed: Seed of the bootstraps.

    Returns:
        :class:`Outcome`.
    """
    sims = np.asarray(sims, dtype=np.float64)
    n = sims.shape[0]
    marks = np.zeros(n, dtype=bool)
    p = np.full(n, np.nan)
    lo, hi, dlo, dhi = (np.full(n, np.nan) for _ in range(4))
    for i in range(n):
        d = stats.paired_run_difference(
            sims[i, METHOD], sims[i, BASELINE], ci=ci, method=method, n_resamples=n_resamples, seed=seed
        )
        marks[i] = stats.verdict(d.low, d.high, margin) in ("better", "worse")
        p[i], dlo[i], dhi[i] = d.p, d.low, d.high
        m = stats.run_mean(sims[i, BASELINE], ci=ci, method=method, n_resamples=n_resamples, seed=seed)
        lo[i], hi[i] = m.low, m.high
    return Outcome(marks, p, _covers(lo, hi, mu), _covers(dlo, dhi, effect))


def false_mark_rate(outcome: Outcome) -> float:
    """Share of tables where method 1 is marked (under the null: the false-mark rate; else the power)."""
    return float(np.mean(outcome.marks))


def coverage(outcome: Outcome, of: str = "mean") -> float:
    """Share of tables whose CI covers the truth, over the tables that have a CI (NaN if none has).

    Args:
        outcome: A procedure's :class:`Outcome`.
        of: ``"mean"`` (the baseline's mean) or ``"difference"`` (method 1 - baseline).
    """
    c = np.asarray(outcome.covers_mean if of == "mean" else outcome.covers_difference)
    c = c[np.isfinite(c)]
    return float(c.mean()) if c.size else float("nan")


class Calibration(NamedTuple):
    """Null-simulation summary of one setting and number of runs."""

    setting: str
    runs: int
    cases: int
    old_marks: float
    new_marks: float
    old_mean: float
    new_mean: float
    old_difference: float
    new_difference: float


def calibrate(
    setting: Setting, n_runs: int, n_tables: int = 400, seed: int = 0, alpha: float = 0.05, n_resamples: int = 1000
) -> Calibration:
    """False-mark rates and coverages of both procedures under the null, for one setting and run count.

    Args:
        setting: Components and number of cases.
        n_runs: Runs per method.
        n_tables: Simulated tables.
        seed: Seed of the simulation and of the bootstraps.
        alpha: Level of the tests (the CIs are ``1 - alpha``).
        n_resamples: Bootstrap resamples.
    """
    sims = simulate(
        2,
        n_runs,
        setting.n_cases,
        setting.sd_case,
        setting.sd_run,
        setting.sd_method_case,
        setting.sd_resid,
        n_tables=n_tables,
        seed=seed,
    )
    old = old_procedure(sims, alpha=alpha, ci=1 - alpha, n_resamples=n_resamples, seed=seed)
    new = new_procedure(sims, alpha=alpha, ci=1 - alpha, n_resamples=n_resamples, seed=seed)
    return Calibration(
        setting.name,
        n_runs,
        setting.n_cases,
        false_mark_rate(old),
        false_mark_rate(new),
        coverage(old),
        coverage(new),
        coverage(old, "difference"),
        coverage(new, "difference"),
    )


# ---------------------------------------------------------------------------------------------- CLI


def table_name(row: pd.Series | dict) -> str:
    """A table's short name, e.g. ``abdomen v1 quick organs13 finetune 12.5%``."""
    return (
        f"{row['suite']} v{row['suite_version']} {row['budget']} {row['task']} {row['protocol']} "
        f"{100 * float(row['label_fraction']):g}%"
    )


def settings(components: pd.DataFrame, max_tables: int = 3, stress: bool = True) -> list[Setting]:
    """Simulation settings: the published case-level tables with every component estimated (most runs
    first, at most ``max_tables``), then "typical": the median of each component over the case-level tables
    that estimate it, and their median number of cases; with ``stress``, last, the typical setting with a
    method x case interaction as large as the run term (``sd_method_case = sd_run``: not estimated from the
    data, a check that the run-level test does not rely on the interaction being small)."""
    case_level = components[(~components["set_level"]) & (components["cases"] >= 2)]
    full = case_level.dropna(subset=COMPONENTS)
    full = full.sort_values(["max_runs", "min_runs", "cases"], ascending=False, kind="stable").head(max_tables)
    out = [Setting(table_name(r), int(r["cases"]), *(float(r[c]) for c in COMPONENTS)) for _, r in full.iterrows()]
    med = {c: float(case_level[c].median()) for c in COMPONENTS}  # NaN skipped
    if case_level.shape[0] and all(np.isfinite(v) for v in med.values()):
        typical = Setting(
            "typical (median components)", int(case_level["cases"].median()), *(med[c] for c in COMPONENTS)
        )
        out.append(typical)
        if stress:
            out.append(typical._replace(name="stress: typical, sd_method_case = sd_run", sd_method_case=typical.sd_run))
    return out


def _f(x: float, spec: str = ".3f") -> str:
    return "—" if x is None or not np.isfinite(x) else format(x, spec)


def components_markdown(components: pd.DataFrame) -> list[str]:
    """The variance components as a Markdown table."""
    out = [
        "| table | metric | methods | runs per method | cases | sd_case | sd_run | sd_method_case | sd_resid "
        "| sd_mc+resid |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for _, r in components.iterrows():
        cases = "1 (set-level)" if r["set_level"] else str(r["cases"])
        out.append(
            f"| {table_name(r)} | {r['metric']} | {r['methods']} | {r['runs']} | {cases} | "
            + " | ".join(_f(r[c], ".4f") for c in [*COMPONENTS, "sd_mc_resid"])
            + " |"
        )
    return out


def calibration_markdown(results: Sequence[Calibration]) -> list[str]:
    """The null-simulation results as a Markdown table."""
    out = [
        "| setting | cases | runs | false marks, old | false marks, new | mean CI coverage, old "
        "| mean CI coverage, new | difference CI coverage, old | difference CI coverage, new |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in results:
        out.append(f"| {c.setting} | {c.cases} | {c.runs} | " + " | ".join(_f(x) for x in c[3:]) + " |")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the variance components of published CSVs and the null calibration of the old and new
    procedures as Markdown; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m bench.tools.calibration", description=__doc__.split("\n\n")[0])
    p.add_argument("csv", nargs="*", type=Path, help="published leaderboard CSVs (default: leaderboards/*.csv)")
    p.add_argument("--tables", type=int, default=2000, help="simulated tables per setting and run count")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulations and bootstraps")
    p.add_argument("--runs", type=int, nargs="+", default=list(RUNS), help="runs per method to simulate")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per CI")
    p.add_argument("--alpha", type=float, default=0.05, help="level of the tests (CIs are 1 - alpha)")
    p.add_argument("--max-tables", type=int, default=3, help="published tables to simulate (plus 'typical')")
    p.add_argument(
        "--stress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also simulate the typical setting with sd_method_case = sd_run",
    )
    args = p.parse_args(argv)
    paths = args.csv or sorted(LEADERBOARDS.glob("*.csv"))
    if not paths:
        p.error(f"no CSV given and none under {LEADERBOARDS}")
    components = variance_components(read_csvs(paths))
    shown = [
        str(Path(x).relative_to(PROJECT_ROOT)) if Path(x).resolve().is_relative_to(PROJECT_ROOT) else str(x)
        for x in (Path(q).resolve() for q in paths)
    ]
    command = " ".join(
        [
            "python -m bench.tools.calibration",
            *map(shlex.quote, shown if args.csv else []),
            f"--tables {args.tables}",
            f"--seed {args.seed}",
            *([f"--runs {' '.join(map(str, args.runs))}"] if list(args.runs) != list(RUNS) else []),
            *([f"--resamples {args.resamples}"] if args.resamples != 1000 else []),
            *([f"--alpha {args.alpha:g}"] if args.alpha != 0.05 else []),
            *([f"--max-tables {args.max_tables}"] if args.max_tables != 3 else []),
            *([] if args.stress else ["--no-stress"]),
        ]
    )
    lines = [
        f"Command: `{command}`",
        "",
        "### Variance components of the published tables",
        "",
        *components_markdown(components),
        "",
    ]
    results = []
    for s in settings(components, args.max_tables, args.stress):
        for r in args.runs:
            t0 = time.perf_counter()
            c = calibrate(s, r, n_tables=args.tables, seed=args.seed, alpha=args.alpha, n_resamples=args.resamples)
            results.append(c)
            print(
                f"{s.name}, {r} runs: false marks old {c.old_marks:.3f} new {c.new_marks:.3f}, "
                f"mean coverage old {c.old_mean:.3f} new {c.new_mean:.3f} "
                f"({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    mcse = np.sqrt(args.alpha * (1 - args.alpha) / args.tables)
    lines += [
        f"### Under the null ({args.tables} simulated tables per row, two identical methods, alpha = {args.alpha:g})",
        "",
        f"False marks: share of tables where method 1 is marked against the baseline (old: per-case "
        f"Wilcoxon over the pooled (run, case) pairs, p < {args.alpha:g}; new: verdict of the "
        f"paired_run_difference CI is better or worse). Coverage: share of tables whose "
        f"{1 - args.alpha:.0%} CI holds the true value (mean: the baseline's population mean, old "
        f"hierarchical_bootstrap_ci, new run_mean; difference: the true difference 0, old "
        f"hierarchical_bootstrap_ci of the paired differences, which the leaderboards did not show, new "
        f"paired_run_difference); — where the runs give no CI. Monte Carlo standard error of a rate "
        f"near {args.alpha:g}: {mcse:.3f}; of a coverage near 0.95: "
        f"{np.sqrt(0.95 * 0.05 / args.tables):.3f}.",
        "",
    ]
    lines += calibration_markdown(results) if results else ["No table estimates every component."]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
