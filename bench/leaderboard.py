"""Markdown leaderboards from the results store; ``publish`` adds the figures and the result rows used.

``<out_dir>/<suite>.md`` opens with its provenance (suite and version, synthetic or real data, budget,
commits, hardware, date, cells) and then, one section per budget (budgets are never pooled):

* per task, protocol and label fraction, a methods table: mean and 95% CI of the per-case score
  (hierarchical bootstrap: seeds, then cases), paired Wilcoxon tests against the baseline and against the
  best method (Holm-adjusted within the table), seeds, cases, per-class means, compute and parameters;
  a method with fewer seeds or cases, and cells run with ``leakage_override``, carry a mark and a footnote;
* across tasks (two or more tables per budget): mean ranks, Friedman and Iman-Davenport tests, the
  Nemenyi critical difference, IQM with stratified bootstrap CIs and the probability-of-improvement matrix;
* with figures (``publish``): a critical-difference diagram, a probability-of-improvement heatmap,
  label-efficiency curves and rank-stability plots, as PNGs under ``<out_dir>/<suite>/``.

The per-case score is the mean of the task's metric over the case's stored classes (foreground classes for
segmentation: a class-0 row is ignored); where a task stores a class ``-1`` row (a classification case's
overall value), that row is the score and the other classes only fill the per-class columns.

Rendering only: every statistic comes from ``bench.stats`` and every figure from ``bench.plots``. The output
is deterministic (fixed bootstrap seeds, sorted rows, fixed float formats); the date and the renderer's commit
are parameters, so a golden file can pin it.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import stats
from bench.provenance import git_sha
from bench.registry import DATASETS, SUITES, UnknownNameError
from bench.results import PRED_SCORE, PRED_TARGET, PREDICTION_METRICS
from bench.suites import Suite, Task

KEYS = ["budget", "task", "protocol", "label_fraction"]          # one methods table per key
RUN = ["draw", "seed"]                                           # one run of a cell; draws > 1 only below 100%
METRIC_COLUMNS = ["suite", "suite_version", "task", "method", "protocol", "label_fraction", "draw", "seed",
                  "budget", "leakage_override", "cell_id", "case_id", "class", "metric", "value"]
CELL_INFO_COLUMNS = ["git_sha", "device", "start_time", "end_time", "wall_s", "gpu_hours", "cpu_hours", "params",
                     "pretrain_hash", "pretrain_device", "pretrain_wall_s", "pretrain_gpu_hours", "pretrain_cpu_hours"]
TEXT_COLUMNS = ["suite", "task", "method", "protocol", "budget", "cell_id", "case_id", "metric", "git_sha",
                "device", "start_time", "end_time", "pretrain_hash", "pretrain_device"]

LOWER_IS_BETTER = frozenset({"hd95", "hd", "assd", "asd", "mae", "rmse", "error"})
METRIC_LABELS = {"dice": "Dice", "nsd": "NSD", "hd95": "HD95 [mm]", "auroc": "AUROC", "accuracy": "accuracy"}
METRIC_FORMATS = {"hd95": ".2f", "hd": ".2f", "assd": ".2f", "asd": ".2f"}
OVERALL_CLASS = -1
BACKGROUND_CLASS = 0
MARK_PARTIAL = "†"
MARK_LEAKAGE = "⚠"
MARK_BETTER, MARK_WORSE = "▲", "▼"
MARK_SPLIT = "‡"                                  # a significant mark whose direction differs between seeds
PREDICTIONS_SUFFIX = "_predictions.csv.gz"       # published per-image predictions, beside <suite>.csv


@dataclass(frozen=True)
class Options:
    """Statistical settings of a leaderboard (all stated in its header)."""

    baseline: str = "random"          # the method every other is tested against
    alpha: float = 0.05
    ci: float = 0.95
    n_resamples: int = 10_000         # bootstrap resamples for every CI
    n_boot_rank: int = 1000           # case resamples for rank stability
    seed: int = 0                     # the seed of every resampling


# ----------------------------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class Comparison:
    """A paired test of a table's method against ``other``; ``delta`` > 0 means the method is better."""

    other: str
    pairs: int            # matched (seed, case) pairs
    delta: float          # mean paired difference, oriented so that > 0 is better
    p: float              # Holm-adjusted p-value (NaN: no test possible)
    by_seed: tuple[tuple[int, float], ...] = ()   # (seed, mean paired difference over that seed's runs), oriented

    def mark(self, alpha: float) -> str:
        if not self.p < alpha:
            return ""
        return MARK_BETTER if self.delta > 0 else MARK_WORSE if self.delta < 0 else ""

    @property
    def split(self) -> bool:
        """Some seeds favour one method and others the other: the pooled test cannot tell a method's effect from
        the luck of the training runs drawn."""
        d = [x for _, x in self.by_seed]
        return len(d) >= 2 and min(d) < 0 < max(d)


@dataclass
class MethodRow:
    method: str
    mean: float
    low: float
    high: float
    seeds: tuple[int, ...]
    runs: int
    cases: int
    per_class: dict[int, float]
    gpu_hours: float
    cpu_hours: float
    params: tuple[int, ...]
    leakage: bool
    missing: str                                  # "" when the method has every run and case of the table
    vs_baseline: Comparison | None = None
    vs_best: Comparison | None = None


@dataclass
class Table:
    """One methods table: a (budget, task, protocol, label fraction) block."""

    budget: str
    task: Task
    protocol: str
    fraction: float
    rows: list[MethodRow]                         # best first
    classes: list[int]                            # per-class columns
    seeds: tuple[int, ...]
    runs: int
    cases: int
    draws: int
    n_tests: int
    run_scores: pd.DataFrame                      # [seed, method]: mean over draws and cases
    tau: np.ndarray | None                        # rank-stability Kendall taus
    unit: str = "cases"                           # what the CIs and tests resample: "cases" or test "images"

    @property
    def lower_is_better(self) -> bool:
        return self.task.metric in LOWER_IS_BETTER

    @property
    def sign(self) -> float:
        return -1.0 if self.lower_is_better else 1.0

    @property
    def label(self) -> str:
        return f"{self.task.name} / {self.protocol} / {_pct(self.fraction)}"

    def row(self, method: str) -> MethodRow | None:
        return next((r for r in self.rows if r.method == method), None)


@dataclass
class ImageScores:
    """Per-image predictions of a set-level table (one AUROC per run): what its bootstraps resample."""

    runs: dict[str, list[tuple[int, int]]]        # method -> its (draw, seed) runs, in the order of ``scores``
    scores: dict[str, np.ndarray]                 # method -> [run, image, class]
    targets: np.ndarray                           # [image, class] 0/1

    @property
    def images(self) -> int:
        return self.targets.shape[0]

    def common_runs(self, methods: list[str]) -> list[tuple[int, int]]:
        """The (draw, seed) runs every one of ``methods`` has, in the order ``matched`` stacks them."""
        return [r for r in self.runs[methods[0]] if all(r in self.runs[m] for m in methods[1:])]

    def matched(self, methods: list[str]) -> np.ndarray | None:
        """[method, run, image, class] over the runs every one of ``methods`` has (None if there are none)."""
        common = self.common_runs(methods)
        if not common:
            return None
        return np.stack([self.scores[m][[self.runs[m].index(r) for r in common]] for m in methods])


@dataclass
class Across:
    """The across-task analysis of one budget's tables: a complete block design (``_complete_blocks``)."""

    blocks: list[str]
    methods: list[str]                            # by mean rank, best first
    excluded: dict[str, list[str]]                # method -> the blocks it misses
    mean_ranks: dict[str, float]
    friedman: Any
    cd: float
    cd_control: float | None                      # Bonferroni-Dunn CD with the baseline as control
    iqm: dict[str, tuple[float, float, float, int]]  # method -> (iqm, low, high, seeds used)
    iqm_note: str
    poi: pd.DataFrame                             # P(row better than column)
    poi_baseline: dict[str, tuple[float, float, float]]  # method -> (P(better than baseline), low, high)
    dropped: dict[str, list[str]]                 # tables left out -> the methods they have


@dataclass
class Pretraining:
    """One encoder export and the compute of the pretraining that made it (None: not run by the harness)."""

    method: str
    export: str                                   # the pretraining's config hash
    device: str | None
    wall_s: float | None
    gpu_hours: float | None
    cpu_hours: float | None
    cells: int                                    # the section's cells that transferred this export


@dataclass
class Section:
    budget: str
    tables: list[Table]
    across: Across | None
    across_note: str
    pretraining: list[Pretraining] = field(default_factory=list)


@dataclass
class Leaderboard:
    suite: Suite
    options: Options
    rows: pd.DataFrame                            # the result rows used (with their cells' provenance)
    sections: list[Section]
    ignored: list[str] = field(default_factory=list)


def analyse(suite: Suite, metrics: pd.DataFrame, cells: pd.DataFrame, options: Options = Options()) -> Leaderboard:
    """All statistics of a leaderboard, from the store's ``metrics`` and ``cells`` frames."""
    all_rows, ignored = select_rows(suite, metrics, cells)
    if all_rows.empty:
        return Leaderboard(suite, options, all_rows, [], ignored)
    is_pred = all_rows["metric"].isin(PREDICTION_METRICS)
    rows, preds = all_rows[~is_pred], all_rows[is_pred]
    if rows.empty:
        return Leaderboard(suite, options, all_rows, [], ignored)
    pred_groups = dict(iter(preds.groupby(KEYS, sort=False))) if len(preds) else {}
    overall_tasks = set(rows.loc[rows["class"] == OVERALL_CLASS, "task"].unique())
    scored = rows[(rows["class"] == OVERALL_CLASS) | ~rows["task"].isin(overall_tasks)]
    per_case = scored.groupby(KEYS + ["method", *RUN, "case_id"], sort=True)["value"].mean().reset_index()
    per_class: dict[tuple, dict[int, float]] = {}
    for (*key, cls), v in (rows[rows["class"] != OVERALL_CLASS]
                           .groupby(KEYS + ["method", "class"], sort=True)["value"].mean().items()):
        per_class.setdefault(tuple(key), {})[int(cls)] = float(v)
    cell_rows = rows.drop_duplicates("cell_id")
    compute = cell_rows.groupby(KEYS + ["method"], sort=True).agg(
        gpu_hours=("gpu_hours", lambda s: s.sum(min_count=1)), cpu_hours=("cpu_hours", lambda s: s.sum(min_count=1)),
        leakage=("leakage_override", "max"),
        params=("params", lambda s: tuple(sorted({int(p) for p in s.dropna()}))))
    groups = dict(iter(per_case.groupby(KEYS, sort=False)))
    sections = []
    for budget in sorted(per_case["budget"].unique()):
        tables = [_table(key, groups[key], suite.task(key[1]), per_class, compute, options,
                         _image_scores(groups[key], pred_groups.get(key)))
                  for key in _ordered_keys(suite, groups) if key[0] == budget]
        across, note = _across(tables, options)
        sections.append(Section(str(budget), tables, across, note,
                                _pretraining(cell_rows[cell_rows["budget"] == budget])))
    return Leaderboard(suite, options, all_rows, sections, ignored)


def select_rows(suite: Suite, metrics: pd.DataFrame, cells: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows a leaderboard uses (this suite and version, each task's metric, no background class),
    joined with their cells' provenance and sorted; and notes on what was left out."""
    metrics = _normalise(metrics)
    ignored = []
    mine = metrics[metrics["suite"] == suite.name]
    other = mine[mine["suite_version"] != suite.version]
    if len(other):
        versions = ", ".join(f"v{v}" for v in sorted(other["suite_version"].unique()))
        ignored.append(f"{other['cell_id'].nunique()} cells of other suite versions ({versions})")
    mine = mine[mine["suite_version"] == suite.version]
    tasks = pd.DataFrame({"task": [t.name for t in suite.tasks], "metric": [t.metric for t in suite.tasks],
                          "kind": [t.kind for t in suite.tasks]})
    unknown = sorted(set(mine["task"].unique()) - set(tasks["task"]))
    if unknown:
        ignored.append(f"{mine[mine['task'].isin(unknown)]['cell_id'].nunique()} cells of tasks not in "
                       f"v{suite.version}: {', '.join(unknown)}")
    # a cell's per-image predictions travel with its scores (and into the published CSV): the CIs need them
    preds = mine[mine["metric"].isin(PREDICTION_METRICS)].merge(tasks.drop(columns="metric"), on="task")
    rows = pd.concat([mine.merge(tasks, on=["task", "metric"]), preds], ignore_index=True)
    rows = rows[~((rows["kind"] == "segmentation") & (rows["class"] == BACKGROUND_CLASS))].drop(columns="kind")
    info = _cell_info(cells)
    rows = rows.merge(info, on="cell_id", how="left")
    rows = rows.sort_values(KEYS + ["method", *RUN, "case_id", "class"], kind="stable").reset_index(drop=True)
    return rows[METRIC_COLUMNS + CELL_INFO_COLUMNS], ignored


def _normalise(metrics: pd.DataFrame) -> pd.DataFrame:
    m = metrics[METRIC_COLUMNS].copy()
    for c in ("suite", "task", "method", "protocol", "budget", "cell_id", "case_id", "metric"):
        m[c] = m[c].astype(str)
    for c in ("suite_version", "draw", "seed", "class"):
        m[c] = m[c].astype(int)
    m["leakage_override"] = m["leakage_override"].fillna(0).astype(int)
    m["label_fraction"] = m["label_fraction"].astype(float)
    m["value"] = m["value"].astype(float)
    return m


def _cell_info(cells: pd.DataFrame) -> pd.DataFrame:
    info = pd.DataFrame({c: cells[c] if c in cells else None for c in ["cell_id", *CELL_INFO_COLUMNS]})
    info = info.drop_duplicates("cell_id")
    info["cell_id"] = info["cell_id"].astype(str)
    for c in ("wall_s", "gpu_hours", "cpu_hours", "params", "pretrain_wall_s", "pretrain_gpu_hours",
              "pretrain_cpu_hours"):
        info[c] = pd.to_numeric(info[c], errors="coerce").astype(float)
    for c in ("git_sha", "device", "start_time", "end_time", "pretrain_hash", "pretrain_device"):
        info[c] = info[c].astype(object).where(info[c].notna(), None)
    return info


def _pretraining(cells: pd.DataFrame) -> list[Pretraining]:
    """One row per (method, export) of a section's cells; [] when the cells carry no export hash (results
    written before pretraining compute was recorded)."""
    cells = cells[cells["pretrain_hash"].notna()]
    out = []
    for (method, export), g in cells.groupby(["method", "pretrain_hash"], sort=True):
        first = g.iloc[0]

        def value(c: str) -> float | None:
            return None if pd.isna(first[c]) else float(first[c])
        out.append(Pretraining(str(method), str(export), None if pd.isna(first["pretrain_device"])
                               else str(first["pretrain_device"]), value("pretrain_wall_s"),
                               value("pretrain_gpu_hours"), value("pretrain_cpu_hours"), len(g)))
    return out


def _ordered_keys(suite: Suite, groups: dict) -> list[tuple]:
    """Tables in the suite's task order, then the task's protocol order, then ascending label fraction."""
    def order(key: tuple) -> tuple:
        budget, task, protocol, fraction = key
        t = suite.task(task)
        p = t.protocols.index(protocol) if protocol in t.protocols else len(t.protocols)
        return budget, suite.tasks.index(t), p, protocol, fraction
    return sorted(groups, key=order)


def _table(key: tuple, g: pd.DataFrame, task: Task, per_class: dict[tuple, dict[int, float]], compute: pd.DataFrame,
           opts: Options, images: ImageScores | None = None) -> Table:
    budget, _, protocol, fraction = key
    sign = -1.0 if task.metric in LOWER_IS_BETTER else 1.0
    wide = g.pivot(index=["method", *RUN], columns="case_id", values="value")
    all_runs = g[RUN].drop_duplicates()
    all_seeds = tuple(int(s) for s in sorted(all_runs["seed"].unique()))
    all_cases = wide.shape[1]
    methods = sorted(g["method"].unique())
    rows = []
    for method in methods:
        mat = wide.loc[method].dropna(axis=1)   # [run, case]: cases stored for every run of this method
        scores = mat.to_numpy()
        cases = mat.shape[1]
        if images is not None:      # one set-level AUROC per run: resample runs, then the test images
            low, high = stats.set_auroc_ci(images.scores[method], images.targets, n_resamples=opts.n_resamples,
                                           ci=opts.ci, seed=opts.seed)
            cases = images.images
        else:
            low, high = stats.hierarchical_bootstrap_ci(scores, n_resamples=opts.n_resamples, ci=opts.ci,
                                                        seed=opts.seed)
        seeds = tuple(int(s) for s in sorted(mat.index.get_level_values("seed").unique()))
        c = compute.loc[key + (method,)]
        rows.append(MethodRow(
            method=method, mean=float(scores.mean()), low=float(low), high=float(high), seeds=seeds,
            runs=mat.shape[0], cases=cases, per_class=per_class.get(key + (method,), {}),
            gpu_hours=float(c["gpu_hours"]), cpu_hours=float(c["cpu_hours"]), params=c["params"],
            leakage=bool(c["leakage"]),
            missing=_missing(seeds, all_seeds, mat.shape[0], len(all_runs), mat.shape[1], all_cases)))
    # a method with fewer runs is never ranked on a mean over a different set of seeds: complete rows come first
    rows.sort(key=lambda r: (bool(r.missing), -sign * r.mean, r.method))
    n_tests = _compare(rows, g, sign, opts, images)
    case_scores = g.groupby(["case_id", "method"])["value"].mean().unstack("method").dropna()
    tau = None
    matched = images.matched(methods) if images is not None and len(methods) >= 2 else None
    if matched is not None:
        tau = np.asarray(stats.set_rank_stability(matched, images.targets, n_boot=opts.n_boot_rank, seed=opts.seed))
    elif case_scores.shape[0] >= 2 and case_scores.shape[1] >= 2:
        tau = np.asarray(stats.rank_stability(case_scores.to_numpy(), n_boot=opts.n_boot_rank, seed=opts.seed,
                                              lower_is_better=sign < 0))
    classes = sorted(set().union(*(r.per_class for r in rows)))
    return Table(budget=str(budget), task=task, protocol=str(protocol), fraction=float(fraction), rows=rows,
                 classes=classes if len(classes) > 1 else [], seeds=all_seeds, runs=len(all_runs),
                 cases=images.images if images is not None else all_cases, draws=int(all_runs["draw"].nunique()),
                 n_tests=n_tests, run_scores=g.groupby(["seed", "method"])["value"].mean().unstack("method"), tau=tau,
                 unit="images" if images is not None else "cases")


def _image_scores(g: pd.DataFrame, preds: pd.DataFrame | None) -> ImageScores | None:
    """The table's per-image predictions when it is set-level (one stored case per run) and every run stored
    them; None otherwise (the table then resamples its stored cases)."""
    if preds is None or preds.empty or g["case_id"].nunique() != 1:
        return None
    runs = g[["method", *RUN]].drop_duplicates().sort_values(["method", *RUN])
    wide = {m: preds[preds["metric"] == m].pivot_table(index=["method", *RUN], columns=["case_id", "class"],
                                                       values="value", aggfunc="first")
            for m in PREDICTION_METRICS}
    index = pd.MultiIndex.from_frame(runs)
    if not all(index.isin(w.index).all() for w in wide.values()):
        return None
    score = wide[PRED_SCORE].loc[index]
    target = wide[PRED_TARGET].reindex(index=index, columns=score.columns)
    ok = score.notna().all() & target.notna().all()             # (image, class) columns every run has
    columns = score.columns[ok.to_numpy()]
    classes = sorted(set(columns.get_level_values("class")))
    per_image = pd.Series(1, index=columns).groupby(level="case_id").size()
    images = sorted(per_image.index[per_image == len(classes)])
    if len(images) < 2 or not classes:
        return None
    grid = pd.MultiIndex.from_product([images, classes], names=["case_id", "class"])
    s = score[grid].to_numpy().reshape(len(index), len(images), len(classes))
    t = target[grid].to_numpy().reshape(len(index), len(images), len(classes))
    by_method: dict[str, list[int]] = {}
    for i, m in enumerate(runs["method"]):
        by_method.setdefault(m, []).append(i)
    keys = [(int(d), int(sd)) for d, sd in zip(runs["draw"], runs["seed"])]
    return ImageScores(runs={m: [keys[i] for i in ix] for m, ix in by_method.items()},
                       scores={m: s[ix] for m, ix in by_method.items()}, targets=t[0])


def _missing(seeds: tuple[int, ...], all_seeds: tuple[int, ...], runs: int, all_runs: int, cases: int,
             all_cases: int) -> str:
    parts = []
    if seeds != all_seeds:
        parts.append(f"seeds {_ints(seeds)} of {_ints(all_seeds)}")
    elif runs != all_runs:
        parts.append(f"{runs} of {all_runs} (draw, seed) runs")
    if cases != all_cases:
        parts.append(f"{cases} of {all_cases} cases")
    return "; ".join(parts)


def _compare(rows: list[MethodRow], g: pd.DataFrame, sign: float, opts: Options,
             images: ImageScores | None = None) -> int:
    """Paired tests of every method against the baseline and the best method, Holm-adjusted together: Wilcoxon
    over matched (run, case) scores, or, for a set-level table with per-image predictions, the paired bootstrap
    over test images on matched runs. Returns the number of tests in the family."""
    methods = [r.method for r in rows]
    best = methods[0]
    pairs = {tuple(sorted((m, best))) for m in methods if m != best}
    if opts.baseline in methods:
        pairs |= {tuple(sorted((m, opts.baseline))) for m in methods if m != opts.baseline}
    pairs = sorted(pairs)
    paired = g.pivot(index=[*RUN, "case_id"], columns="method", values="value")
    found = {}
    for a, b in pairs:
        if images is not None:
            both = images.matched([a, b])
            if both is None:
                found[a, b] = (0, np.nan, np.nan, ())
                continue
            d, p = stats.paired_set_auroc_test(both[0], both[1], images.targets, n_resamples=opts.n_resamples,
                                               seed=opts.seed)
            run_d = stats.mean_auroc(both[0], images.targets) - stats.mean_auroc(both[1], images.targets)
            seeds = [s for _, s in images.common_runs([a, b])]
            found[a, b] = (both.shape[1] * both.shape[2], sign * d, p, _by_seed(seeds, sign * np.asarray(run_d)))
            continue
        ab = paired[[a, b]].dropna()
        x, y = ab[a].to_numpy(), ab[b].to_numpy()
        p = float(stats.paired_wilcoxon(x, y)[1]) if len(x) else np.nan
        found[a, b] = (len(x), sign * float(np.mean(x - y)) if len(x) else np.nan, p,
                       _by_seed(ab.index.get_level_values("seed"), sign * (x - y)))
    raw = np.array([found[k][2] for k in pairs], dtype=float)
    tested = np.isfinite(raw)
    adjusted = np.full(len(pairs), np.nan)
    if tested.any():
        adjusted[tested] = np.asarray(stats.holm(raw[tested]), dtype=float)
    adj = dict(zip(pairs, adjusted))

    def comparison(m: str, other: str) -> Comparison:
        a, b = sorted((m, other))
        n, delta, _, by_seed = found[a, b]
        flip = 1.0 if m == a else -1.0
        return Comparison(other, n, flip * delta, float(adj[a, b]), tuple((s, flip * d) for s, d in by_seed))

    for r in rows:
        if r.method != opts.baseline and opts.baseline in methods:
            r.vs_baseline = comparison(r.method, opts.baseline)
        if r.method != best:
            r.vs_best = comparison(r.method, best)
    return int(tested.sum())


def _by_seed(seeds, differences: np.ndarray) -> tuple[tuple[int, float], ...]:
    """Mean of the paired differences per seed (over that seed's cases and draws)."""
    d = pd.Series(np.asarray(differences, dtype=float)).groupby(np.asarray(seeds, dtype=int)).mean()
    return tuple((int(s), float(v)) for s, v in d.items())


def _complete_blocks(tables: list[Table]) -> tuple[list[Table], list[str]]:
    """The tables and methods for a complete block design: every kept method has a row in every kept table.

    Friedman's test and the critical differences need every method in every block. Of the choices that give that,
    the one with the most scores (methods x tables) is kept: a method that ran few tables costs fewer scores left
    out than the tables it misses, and a task only some methods have run yet is left out rather than the methods.
    Ties keep more methods, then the first method names in alphabetical order. Returns ([], []) when no
    choice has two methods in two tables.
    """
    sets = {frozenset(r.method for r in t.rows) for t in tables}
    # the best method set is the intersection of its tables' method sets, so the closure under intersection
    # holds every candidate: at most one set per subset of tables, in practice a handful, never 2**methods
    closed, frontier = set(sets), set(sets)
    while frontier:
        frontier = {a & b for a in frontier for b in sets} - closed
        closed |= frontier
    choices = [([t for t in tables if ms <= {r.method for r in t.rows}], sorted(ms)) for ms in closed]
    choices = [(kept, ms) for kept, ms in choices if len(kept) >= 2 and len(ms) >= 2]
    return min(choices, key=lambda c: (-len(c[0]) * len(c[1]), -len(c[1]), c[1]), default=([], []))


def _across(tables: list[Table], opts: Options) -> tuple[Across | None, str]:
    if len(tables) < 2:
        return None, ""
    kept, included = _complete_blocks(tables)
    if not kept:
        return None, ("Across-task analysis skipped: no two methods have results in the same two or more tables.")
    dropped = {t.label: sorted(r.method for r in t.rows) for t in tables if all(t is not k for k in kept)}
    labels = [t.label for t in kept]
    methods = sorted({r.method for t in tables for r in t.rows})
    excluded = {m: [t.label for t in kept if t.row(m) is None] for m in methods if m not in included}
    tables = kept
    block_scores = np.array([[t.sign * t.row(m).mean for m in included] for t in tables])   # [block, method]
    fr = stats.friedman(block_scores)
    ranks = dict(zip(included, (float(r) for r in np.asarray(fr.mean_ranks))))
    order = sorted(included, key=lambda m: (ranks[m], m))
    k, n = len(included), len(tables)
    cd = float(stats.nemenyi_cd(k, n, alpha=opts.alpha))
    cd_control = float(stats.bonferroni_dunn_cd(k, n, alpha=opts.alpha)) if opts.baseline in included else None
    # [seed, block] per method, oriented so higher is better; seeds missing from any block are left out
    runs = {m: pd.concat([t.run_scores[m] * t.sign for t in tables], axis=1).dropna() for m in included}
    same_direction = len({t.lower_is_better for t in tables}) == 1
    iqm, iqm_note = {}, ""
    if same_direction:
        for m in order:
            raw = runs[m].to_numpy() * tables[0].sign
            low, high = stats.stratified_bootstrap_ci(raw, aggregate=stats.iqm, n_resamples=opts.n_resamples,
                                                      ci=opts.ci, seed=opts.seed)
            iqm[m] = (float(stats.iqm(raw)), float(low), float(high), raw.shape[0])
        metrics = sorted({t.task.metric for t in tables})
        if len(metrics) > 1:
            iqm_note = f"The IQM pools the tables' metrics ({', '.join(metrics)}) in their own units."
    else:
        iqm_note = "IQM not computed: the tables mix higher-is-better and lower-is-better metrics."
    poi = pd.DataFrame(np.nan, index=order, columns=order)
    for a in order:
        for b in order:
            if a != b:
                poi.loc[a, b] = float(stats.probability_of_improvement(runs[a].to_numpy(), runs[b].to_numpy()))
    poi_baseline = {}
    if opts.baseline in included:
        y = runs[opts.baseline].to_numpy()
        for m in order:
            if m != opts.baseline:
                low, high = stats.probability_of_improvement_ci(runs[m].to_numpy(), y, n_resamples=opts.n_resamples,
                                                                ci=opts.ci, seed=opts.seed)
                poi_baseline[m] = (float(poi.loc[m, opts.baseline]), float(low), float(high))
    return Across(labels, order, excluded, ranks, fr, cd, cd_control, iqm, iqm_note, poi, poi_baseline, dropped), ""


# ----------------------------------------------------------------------------------------------- Markdown


def figure_files(lb: Leaderboard) -> dict[tuple, str]:
    """The figures of a leaderboard: key -> path relative to the Markdown file."""
    name = _slug(file_stem(lb.suite))
    files: dict[tuple, str] = {}
    for s in lb.sections:
        b = _slug(s.budget)
        for task, protocol in _curves(s):
            files["label_efficiency", s.budget, task, protocol] = (
                f"{name}/{b}_{_slug(task)}_{_slug(protocol)}_label_efficiency.png")
        if any(t.tau is not None for t in s.tables):
            files["rank_stability", s.budget] = f"{name}/{b}_rank_stability.png"
        if s.across is not None:
            files["cd", s.budget] = f"{name}/{b}_critical_difference.png"
            files["poi", s.budget] = f"{name}/{b}_probability_of_improvement.png"
    return files


def markdown(lb: Leaderboard, *, now: dt.datetime | str, git: str,
             class_names: dict[str, dict[int, str]] | None = None, figures: bool = False) -> str:
    class_names = class_names or {}
    files = figure_files(lb) if figures else {}
    out = _header(lb, now, git)
    if not lb.sections:
        out += ["No results yet for this suite version.", ""]
    for s in lb.sections:
        out += [f"## Budget `{s.budget}`", ""]
        for t in s.tables:
            out += _table_md(t, lb.options, class_names.get(t.task.name, {}))
        out += _pretraining_md(s.pretraining)
        curves = [(task, protocol) for task, protocol in _curves(s)
                  if ("label_efficiency", s.budget, task, protocol) in files]
        if curves:
            out += ["### Label efficiency", "",
                    "Mean score against the label fraction, with the 95% hierarchical-bootstrap CI as a band.", ""]
            for task, protocol in curves:
                out += [f"![label efficiency: {task} / {protocol}]"
                        f"({files['label_efficiency', s.budget, task, protocol]})", ""]
        if s.across is not None:
            out += _across_md(s.across, s, lb.options, files)
        elif s.across_note:
            out += [s.across_note, ""]
        if ("rank_stability", s.budget) in files:
            out += ["### Rank stability", "",
                    "Kendall τ between each table's ranking on all cases and its rankings on bootstrap resamples "
                    "of the cases.", "", f"![rank stability]({files['rank_stability', s.budget]})", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _header(lb: Leaderboard, now: dt.datetime | str, git: str) -> list[str]:
    suite, rows = lb.suite, lb.rows
    source = "synthetic data" if suite.synthetic else "real data"
    budgets = sorted(rows["budget"].unique()) if len(rows) else []
    if len(budgets) == 1:
        budget_title, budget_row = f"budget {budgets[0]}", f"`{budgets[0]}`"
    elif budgets:
        budget_title = "budgets " + ", ".join(budgets)
        budget_row = ", ".join(f"`{b}`" for b in budgets) + " (one section per budget; never pooled)"
    else:
        budget_title, budget_row = "no results", "n/a"
    cells = rows.drop_duplicates("cell_id")
    datasets = ", ".join(sorted({t.dataset for t in suite.tasks}))
    when = now if isinstance(now, str) else now.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    o = lb.options
    out = [f"# {suite.name} v{suite.version} leaderboard — {source}, {budget_title}", "",
           "Generated by `bench/leaderboard.py` from the results store; do not edit by hand.", "",
           "| | |", "|---|---|",
           f"| suite | `{suite.name}` v{suite.version}" + (f": {suite.description}" if suite.description else "")
           + " |",
           f"| data | {source}: {datasets}; pretraining corpus `{suite.pretrain_dataset}` |"]
    current = _current_version(suite)
    if current is not None and suite.version != current:
        out.append(f"| superseded | the record of v{suite.version}; the suite is now v{current}, whose results are in "
                   f"`{suite.name}.md`. Versions are never pooled. |")
    out += [f"| budget | {budget_row} |",
            f"| cells | {len(cells)}" + (f" (left out: {'; '.join(lb.ignored)})" if lb.ignored else "") + " |",
            f"| result commits | {_counts(cells['git_sha'])} |",
            f"| hardware | {_counts(cells['device'])} |"]
    starts = cells["start_time"].dropna().astype(str)
    if len(starts):
        first, last = starts.min()[:10], starts.max()[:10]
        out.append(f"| results dated | {first}" + (f" to {last}" if last != first else "") + " |")
    out += [f"| generated | {when} at commit `{git}` |",
            f"| statistics | {o.ci:.0%} CIs from {o.n_resamples} bootstrap resamples (seed {o.seed}); "
            f"rank stability from {o.n_boot_rank} case resamples; α = {o.alpha:g}; baseline `{o.baseline}` |", ""]
    return out


def _table_md(t: Table, o: Options, names: dict[int, str]) -> list[str]:
    metric = METRIC_LABELS.get(t.task.metric, t.task.metric)
    spec = METRIC_FORMATS.get(t.task.metric, ".4f")
    direction = "lower is better" if t.lower_is_better else "higher is better"
    has_baseline = t.row(o.baseline) is not None
    head = ["method", metric, f"{o.ci:.0%} CI"] + ([f"vs {o.baseline}"] if has_baseline else []) + ["vs best"]
    head += ["seeds", "cases"] + [names.get(c, str(c)) for c in t.classes] + ["GPU h", "CPU h", "params"]
    align = ["---", "---:", "---"] + ["---"] * (1 + has_baseline) + ["---:"] * (len(head) - 4 - has_baseline)
    out = [f"### {t.label}", "",
           f"{t.task.kind.capitalize()}, {metric} ({direction}); {len(t.seeds)} seed{'s' if len(t.seeds) != 1 else ''}"
           + (f", {t.draws} draws" if t.draws > 1 else "") + f", {t.cases} test {t.unit}.", "",
           "| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for i, r in enumerate(t.rows):
        name = f"**{r.method}**" if i == 0 else r.method
        marks = (MARK_PARTIAL if r.missing else "") + (MARK_LEAKAGE if r.leakage else "")
        cells = [name + (f" {marks}" if marks else ""), _num(r.mean, spec, bold=i == 0),
                 f"[{_num(r.low, spec)}, {_num(r.high, spec)}]"]
        if has_baseline:
            cells.append("—" if r.vs_baseline is None else _test(r.vs_baseline, o.alpha))
        cells.append("best" if r.vs_best is None else _test(r.vs_best, o.alpha))
        cells += [str(len(r.seeds)), str(r.cases)] + [_num(r.per_class.get(c, np.nan), spec) for c in t.classes]
        cells += [_num(r.gpu_hours, ".3f"), _num(r.cpu_hours, ".3f"), _params(r.params)]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    level = "(draw, seed) runs" if t.draws > 1 else "seeds"
    over = f" (mean over its {len(t.classes)} classes)" if t.classes else ""
    if t.unit == "images":
        out += [f"Mean: the set-level {metric} (mean over classes) averaged over {level}. {o.ci:.0%} CI: "
                f"hierarchical bootstrap ({level} resampled, then the {t.cases} test images, the same images for "
                f"every run), the {metric} recomputed on each resample." + (
                    f" Per-class columns: mean {metric} of each class over {level}." if t.classes else ""), ""]
    else:
        out += [f"Mean and {o.ci:.0%} CI: hierarchical bootstrap ({level} resampled, then cases) of the per-case "
                f"{metric}{over}." + (f" Per-class columns: mean {metric} of each class over all seeds and cases."
                                      if t.classes else ""), ""]
    if not has_baseline:
        out += [f"No `{o.baseline}` results in this table, so no baseline comparison.", ""]
    if t.n_tests and t.unit == "images":
        tests = f"the {t.n_tests} tests" if t.n_tests > 1 else "the 1 test"
        runs = "(draw, seed)" if t.draws > 1 else "seed"
        out += [f"Tests: two-sided paired bootstrap over test images ({o.n_resamples} resamples of the runs matched "
                f"on {runs} and of the images, shared by both methods; p = twice the smaller share of resampled "
                f"{metric} differences on either side of 0), Holm-adjusted over {tests} of this table; "
                f"{MARK_BETTER}/{MARK_WORSE}: significantly better/worse at α = {o.alpha:g}; the number is the "
                "adjusted p-value.", ""]
    elif t.n_tests:
        matched = "draw, seed and case id" if t.draws > 1 else "seed and case id"
        tests = f"the {t.n_tests} tests" if t.n_tests > 1 else "the 1 test"
        out += [f"Tests: two-sided paired Wilcoxon signed-rank test on per-case scores matched on {matched}, "
                f"Holm-adjusted over {tests} of this table; {MARK_BETTER}/{MARK_WORSE}: significantly "
                f"better/worse at α = {o.alpha:g}; the number is the adjusted p-value.", ""]
    single = [r.method for r in t.rows if len(r.seeds) == 1]
    if t.n_tests and single:
        # a per-case test between two single training runs ignores run-to-run variation; say so where it is read
        who = "One seed" if len(single) == len(t.rows) else f"One seed for {', '.join(single)}"
        out += [f"{who}: a CI or test that rests on one run per method resamples the test {t.unit} only, so it "
                "compares particular training runs, not the methods; the variation between training runs (another "
                "seed) is not in it. Read a mark as a method's effect only once it holds over seeds "
                "(`-m seed=0,1,2`).", ""]
    split, seen = [], set()
    for r in t.rows:
        for c in (r.vs_baseline, r.vs_best):
            if c is not None and c.split and c.mark(o.alpha) and frozenset((r.method, c.other)) not in seen:
                seen.add(frozenset((r.method, c.other)))
                split.append((r.method, c))
    if split:
        # the pooled test counts every (seed, case) pair alike; when seeds disagree in sign, its p-value describes
        # the training runs that were drawn, which is the reading the one-seed note warns against
        out += [f"{MARK_SPLIT} Significant over the pooled pairs, but the direction differs between seeds (mean "
                "paired difference per seed, > 0: the row's method is better): "
                + "; ".join(f"{m} vs {c.other}: " + ", ".join(f"{_signed(d, spec)} (seed {sd})" for sd, d in c.by_seed)
                            for m, c in split)
                + ". So the mark does not hold over seeds: which method is ahead depends on the training run.", ""]
    partial = [r for r in t.rows if r.missing]
    if partial:
        out += [f"{MARK_PARTIAL} Fewer runs or cases than the other methods; listed after the complete ones and never "
                "ranked best; its mean and CI cover only what it has and its tests only the matched pairs: "
                + "; ".join(f"{r.method}: {r.missing}" for r in partial) + ".", ""]
    leaks = [r.method for r in t.rows if r.leakage]
    if leaks:
        out += [f"{MARK_LEAKAGE} Includes cells run with `leakage_override` (a data-leakage check was overridden): "
                + ", ".join(leaks) + ".", ""]
    if t.tau is not None:
        # tau is undefined (NaN) on a resample that ties every method; quantiles over the defined ones
        lo, med, hi = np.nanquantile(t.tau, [0.025, 0.5, 0.975]) if np.isfinite(t.tau).any() else (np.nan,) * 3
        unit = "test images" if t.unit == "images" else "cases"
        out += [f"Rank stability: Kendall τ between the ranking on all {unit} and on {len(t.tau)} bootstrap "
                f"resamples of the {unit}: median {_num(med, '.3f')}, 95% of resamples in "
                f"[{_num(lo, '.3f')}, {_num(hi, '.3f')}].", ""]
    return out


def _pretraining_md(rows: list[Pretraining]) -> list[str]:
    if not rows:
        return []
    out = ["### Pretraining compute", "",
           "The GPU h / CPU h columns of the tables above count the transfer cells only; cells that ran in one "
           "command share work such as a frozen encoder's features, whose time the first cell to compute it "
           "carries (so a later cell can show almost 0). Each export below is one pretraining, transferred by the "
           "cells counted beside it whatever their task, protocol or seed:",
           "", "| method | export | device | wall h | GPU h | CPU h | cells |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r.wall_s is None:
            cost = ["none: no pretraining run by the harness (random init or an imported checkpoint)", "—", "—", "—"]
        else:
            # an export written before its device was recorded has a wall time but no GPU/CPU split
            cost = [r.device or "not recorded", _num(r.wall_s / 3600, ".3f"), _num(r.gpu_hours, ".3f"),
                    _num(r.cpu_hours, ".3f")]
        out.append(f"| {r.method} | `{r.export}` | " + " | ".join(cost) + f" | {r.cells} |")
    out += ["", "wall h: the pretraining's training time (a resumed run includes the interrupted process's "
            "time); `export` is the config hash under `runs/pretrain/<method>/`.", ""]
    return out


def _across_md(a: Across, s: Section, o: Options, files: dict[tuple, str]) -> list[str]:
    fr = a.friedman
    k, n = len(a.methods), len(a.blocks)
    out = [f"### Across tasks (budget `{s.budget}`)", "",
           f"{n} tables as blocks: " + "; ".join(a.blocks) + f". {k} methods with results in every table.", ""]
    if a.dropped or a.excluded:
        out += ["The Friedman test needs every method in every table; of the tables and methods that give that, "
                "the analysis keeps those with the most results (methods × tables).", ""]
    if a.dropped:
        out += ["Tables left out (too few of the methods ran them): "
                + "; ".join(f"{t} (only {', '.join(v)})" for t, v in a.dropped.items()) + ".", ""]
    if a.excluded:
        out += ["Left out (missing tables): " + "; ".join(f"{m} ({', '.join(v)})" for m, v in a.excluded.items())
                + ".", ""]
    # F is infinite exactly when every table ranks the methods in the same order (stats.friedman)
    ff = ("∞" if fr.ff == np.inf else _num(fr.ff, ".3f"))
    same = " — every table ranks the methods in the same order" if fr.ff == np.inf else ""
    out += [f"Friedman test: χ²_F = {_num(fr.chi2, '.3f')} ({_p_is(fr.chi2_p)}); Iman–Davenport "
            f"F = {ff} (df {k - 1}, {(k - 1) * (n - 1)}; {_p_is(fr.ff_p)}{same}). "
            f"Nemenyi critical difference (α = {o.alpha:g}): CD = {_num(a.cd, '.3f')}; methods whose mean ranks "
            "differ by less than CD are not significantly different."
            + (f" Bonferroni–Dunn CD against `{o.baseline}`: {_num(a.cd_control, '.3f')}."
               if a.cd_control is not None else ""), ""]
    head = ["method", "mean rank"]
    if a.iqm:
        head += ["IQM", f"IQM {o.ci:.0%} CI", "seeds"]
    if a.poi_baseline:
        head += [f"P(better than {o.baseline})", f"{o.ci:.0%} CI"]
    out += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    spec = METRIC_FORMATS.get(s.tables[0].task.metric, ".4f")
    for m in a.methods:
        cells = [m, _num(a.mean_ranks[m], ".3f")]
        if a.iqm:
            v, lo, hi, seeds = a.iqm[m]
            cells += [_num(v, spec), f"[{_num(lo, spec)}, {_num(hi, spec)}]", str(seeds)]
        if a.poi_baseline:
            if m in a.poi_baseline:
                v, lo, hi = a.poi_baseline[m]
                cells += [_num(v, ".3f"), f"[{_num(lo, '.3f')}, {_num(hi, '.3f')}]"]
            else:
                cells += ["—", "—"]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    if a.iqm:
        out += ["IQM: interquartile mean of the per-seed scores of all tables (mean over draws and cases), with a "
                "stratified bootstrap CI (seeds resampled within each table); seeds missing from any table are left "
                "out." + (f" {a.iqm_note}" if a.iqm_note else ""), ""]
    elif a.iqm_note:
        out += [a.iqm_note, ""]
    if ("cd", s.budget) in files:
        out += [f"![critical difference diagram]({files['cd', s.budget]})", ""]
    out += ["Probability of improvement P(row better than column): per table, the probability that a seed of the "
            "row method scores better than a seed of the column method (ties count half), averaged over tables.", "",
            "| | " + " | ".join(a.methods) + " |", "|---|" + "---:|" * k]
    for r in a.methods:
        cells = ["—" if r == c else _num(a.poi.loc[r, c], ".2f") for c in a.methods]
        out.append(f"| {r} | " + " | ".join(cells) + " |")
    out.append("")
    if ("poi", s.budget) in files:
        out += [f"![probability of improvement]({files['poi', s.budget]})", ""]
    return out


def _curves(s: Section) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], int] = {}
    for t in s.tables:
        seen[t.task.name, t.protocol] = seen.get((t.task.name, t.protocol), 0) + 1
    return [k for k, v in seen.items() if v > 1]


def _test(c: Comparison, alpha: float) -> str:
    mark = c.mark(alpha)
    if not mark:
        return _p(c.p)
    return f"{mark} {_p(c.p)}" + (f" {MARK_SPLIT}" if c.split else "")


def _signed(x: float, spec: str) -> str:
    s = _num(x, spec)
    return s if s.startswith("-") or s == "n/a" else f"+{s}"


def _num(x: float | None, spec: str, bold: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    s = format(float(x), spec)
    if s.startswith("-") and float(s) == 0:
        s = s[1:]
    return f"**{s}**" if bold else s


def _p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _p_is(p: float) -> str:
    text = _p(p)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}% labels"


def _ints(xs) -> str:
    return ", ".join(str(x) for x in xs)


def _params(ps: tuple[int, ...]) -> str:
    def one(p: int) -> str:
        return f"{p / 1e6:.2f}M" if p >= 100_000 else str(p)
    return "n/a" if not ps else one(ps[0]) if len(ps) == 1 else f"{one(ps[0])}–{one(ps[-1])}"


def _counts(values: pd.Series) -> str:
    counts = values.fillna("unknown").astype(str).value_counts()
    if counts.empty:
        return "n/a"
    return ", ".join(f"`{v}` ({counts[v]} cells)" for v in sorted(counts.index))


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(s)).strip("-") or "x"


# ----------------------------------------------------------------------------------------------- entry points


def render(suite: str | Suite, metrics: pd.DataFrame, cells: pd.DataFrame, *, now: dt.datetime | str | None = None,
           git: str | None = None, class_names: dict[str, dict[int, str]] | None = None, figures: bool = False,
           options: Options = Options()) -> str:
    """The leaderboard Markdown. ``now`` and ``git`` default to the current time and commit; ``class_names``
    maps task -> {class id: name} and defaults to the labels of the task's registered dataset (``{}``: ids);
    ``figures`` links the PNGs that :func:`publish` writes."""
    lb = analyse(_suite(suite), metrics, cells, options)
    return _markdown(lb, now, git, class_names, figures)


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


def write(suite_name: str | Suite, store, out_dir: Path, **kwargs: Any) -> Path:
    """Write ``<out_dir>/<stem>.md`` (no figures; stem: :func:`file_stem`) and return its path."""
    suite = _suite(suite_name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{file_stem(suite)}.md"
    _atomic_write(path, render(suite, store.metrics(suite.name), store.cells(suite.name), **kwargs))
    return path


def publish(suite_name: str | Suite, store, out_dir: Path, *, now: dt.datetime | str | None = None,
            git: str | None = None, class_names: dict[str, dict[int, str]] | None = None,
            options: Options = Options()) -> Path:
    """Write ``<out_dir>/<stem>.md`` with its figures (``<out_dir>/<stem>/*.png``) and the exact result rows
    it used (``<out_dir>/<stem>.csv``, and the per-image predictions of set-level cells in
    ``<out_dir>/<stem>_predictions.csv.gz``; :func:`from_csv` reads them back into the same Markdown). The stem
    is the suite's name, with ``_v<k>`` for an earlier version's record (:func:`file_stem`)."""
    from bench import plots

    suite = _suite(suite_name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lb = analyse(suite, store.metrics(suite.name), store.cells(suite.name), options)
    stem = file_stem(suite)
    files = figure_files(lb)
    fig_dir = out_dir / _slug(stem)
    fig_dir.mkdir(exist_ok=True)
    for stale in set(fig_dir.glob("*.png")) - {out_dir / f for f in files.values()}:
        stale.unlink()
    for s in lb.sections:
        _write_figures(plots, s, files, out_dir)
    # the per-image predictions of set-level cells go to their own gzipped file: they outnumber the scores by
    # orders of magnitude, and the scores' CSV stays small enough to read on a code host
    is_pred = lb.rows["metric"].isin(PREDICTION_METRICS)
    _atomic_csv(lb.rows[~is_pred], out_dir / f"{stem}.csv")
    preds = out_dir / f"{stem}{PREDICTIONS_SUFFIX}"
    if is_pred.any():
        _atomic_csv(lb.rows[is_pred], preds)
    else:
        preds.unlink(missing_ok=True)
    path = out_dir / f"{stem}.md"
    _atomic_write(path, _markdown(lb, now, git, class_names, True))
    return path


def _atomic_csv(rows: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # mtime 0: the same rows give the same bytes, so a republished file only shows in a diff when it changed
    rows.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0} if path.name.endswith(".gz") else None)
    tmp.replace(path)


def from_csv(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a published CSV of result rows (with its ``<suite>_predictions.csv.gz`` beside it, if any) back as
    (metrics, cells) frames for :func:`render`."""
    path = Path(path)
    kw = dict(dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False,
              na_values={c: [""] for c in CELL_INFO_COLUMNS}, float_precision="round_trip")
    rows = pd.read_csv(path, **kw)
    preds = path.with_name(path.name.removesuffix(".csv") + PREDICTIONS_SUFFIX)
    if preds.is_file():
        rows = pd.concat([rows, pd.read_csv(preds, compression="gzip", **kw)], ignore_index=True)
    # a CSV published before a column existed reads back with that column empty
    cells = rows.reindex(columns=["cell_id", *CELL_INFO_COLUMNS]).drop_duplicates("cell_id")
    return rows[METRIC_COLUMNS], cells


# A published row does not carry its cell's config hash, so an imported cell never counts as already run: running
# the same cell here computes it again and replaces the imported copy.
IMPORTED_HASH = "imported"


# what names a cell: the metric columns before its id
IDENTITY = METRIC_COLUMNS[:METRIC_COLUMNS.index("cell_id")]
NUMERIC_IDENTITY = ["suite_version", "label_fraction", "draw", "seed", "leakage_override"]


class PublishedCSVError(ValueError):
    """A file that is not a readable published results CSV (the message names the file and what is wrong)."""


@dataclass
class ImportReport:
    path: Path
    rows: int
    added: list[str]
    replaced: list[str]
    kept: list[str]


def read_published(path: str | Path) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """A published CSV (with its predictions file beside it, if any) as {cell_id: (cell row, metric rows)} in the
    results store's layout. Raises :class:`PublishedCSVError` for a file that is missing or is not one."""
    path = Path(path)
    if not path.is_file():
        raise PublishedCSVError(f"{path}: no such file")
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PublishedCSVError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in METRIC_COLUMNS if c not in header]
    if missing:
        raise PublishedCSVError(f"{path}: not a published results CSV: it lacks the column(s) {', '.join(missing)}")
    try:
        metrics, cells = from_csv(path)
    except ValueError as e:         # pandas' ParserError is one
        raise PublishedCSVError(f"{path}: unreadable rows ({e})") from None
    metrics = metrics.copy()
    for c in NUMERIC_IDENTITY + ["value"]:
        metrics[c] = pd.to_numeric(metrics[c], errors="coerce")
    needed = metrics[IDENTITY + ["case_id", "class", "value"]]
    blank = needed.isna() | needed.eq("")
    if blank.any(axis=None):
        row = blank.any(axis=1).idxmax()
        col = blank.columns[blank.loc[row]][0]
        raise PublishedCSVError(f"{path}: a row of cell {metrics.at[row, 'cell_id']!r} has an empty or non-numeric "
                                f"{col} ({int(blank.any(axis=1).sum())} such rows)")
    identity = metrics.groupby("cell_id")[IDENTITY].nunique()
    mixed = identity.index[(identity > 1).any(axis=1)]
    if len(mixed):
        raise PublishedCSVError(f"{path}: the rows of cell {mixed[0]!r} disagree on its "
                                f"{', '.join(identity.columns[identity.loc[mixed[0]] > 1])}")
    metrics = metrics.astype({c: int for c in NUMERIC_IDENTITY if c != "label_fraction"} | {"class": int})
    info = cells.set_index("cell_id")
    out = {}
    for cell_id, g in metrics.groupby("cell_id", sort=False):
        first = g.iloc[0]
        cell = {c: first[c] for c in IDENTITY} | {"cell_id": cell_id, "config_hash": IMPORTED_HASH}
        for c, v in info.loc[cell_id].items():
            cell[c] = None if pd.isna(v) else v
        if cell.get("params") is not None:
            cell["params"] = int(cell["params"])
        out[cell_id] = (cell, g.rename(columns={"case_id": "case"})[["case", "class", "metric", "value"]]
                        .to_dict("records"))
    return out


def import_published(paths: list[str | Path], store, *, replace: bool = False) -> list[ImportReport]:
    """Put the cells of published CSVs into a results store, so that new runs join published ones on one
    leaderboard (or a lost store is rebuilt from what was published). Every file is read and checked before
    anything is written, and all cells are written in one transaction. A cell the store already holds is kept
    unless ``replace``; a cell in two of the files is taken from the later one."""
    read = [(Path(p), read_published(p)) for p in paths]
    have = store.cell_ids()
    reports, todo = [], {}
    for path, cells in read:
        r = ImportReport(path, sum(len(rows) for _, rows in cells.values()), [], [], [])
        for cell_id, item in cells.items():
            if cell_id in have and not replace:
                r.kept.append(cell_id)
                continue
            (r.replaced if cell_id in have else r.added).append(cell_id)
            todo[cell_id] = item
        reports.append(r)
    store.write_cells(todo.values())
    return reports


def _write_figures(plots, s: Section, files: dict[tuple, str], out_dir: Path) -> None:
    for task, protocol in _curves(s):
        tables = [t for t in s.tables if (t.task.name, t.protocol) == (task, protocol)]
        curve = pd.DataFrame([{"method": r.method, "fraction": t.fraction, "mean": r.mean, "low": r.low,
                               "high": r.high} for t in tables for r in t.rows])
        plots.label_efficiency(curve, out_dir / files["label_efficiency", s.budget, task, protocol],
                               ylabel=METRIC_LABELS.get(tables[0].task.metric, tables[0].task.metric),
                               title=f"{task} / {protocol} (budget {s.budget})")
    if ("rank_stability", s.budget) in files:
        taus = pd.DataFrame([{"table": t.label, "tau": v} for t in s.tables if t.tau is not None for v in t.tau])
        plots.rank_stability(taus, out_dir / files["rank_stability", s.budget], title=f"budget {s.budget}")
    if s.across is not None:
        a = s.across
        plots.critical_difference(a.mean_ranks, a.cd, out_dir / files["cd", s.budget],
                                  title=f"Nemenyi CD = {a.cd:.3f} ({len(a.blocks)} tables, budget {s.budget})")
        plots.probability_of_improvement(a.poi, out_dir / files["poi", s.budget], title=f"budget {s.budget}")


def _markdown(lb: Leaderboard, now, git, class_names, figures: bool) -> str:
    if class_names is None:
        class_names = dataset_class_names(lb.suite)
    return markdown(lb, now=now if now is not None else dt.datetime.now(dt.timezone.utc),
                    git=git if git is not None else git_sha(), class_names=class_names, figures=figures)


def _suite(suite: str | Suite) -> Suite:
    return suite if isinstance(suite, Suite) else SUITES.get(suite)


def dataset_class_names(suite: Suite) -> dict[str, dict[int, str]]:
    """task -> {class id: name} from the registered datasets' label maps (tasks whose dataset is unknown: none)."""
    out = {}
    for t in suite.tasks:
        try:
            info = getattr(DATASETS.get(t.dataset), "info", None)
        except UnknownNameError:
            continue
        labels = getattr(info, "labels", None)
        if labels:
            out[t.name] = {int(k): str(v) for k, v in labels.items()}
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
