"""Markdown leaderboards from the results store; ``publish`` adds the figures, the result rows used and the tests.

The replicate is a whole pipeline run: one pretraining seed x one transfer seed (x one label-subset draw), scored on
test cases that every run and every method shares. Every interval and test below is an inference over runs, never
over pooled (run, case) pairs as if they were independent (``bench.stats``, "Run-level inference"), and what the
board concludes is judged by how it behaves when there is no difference (docs/statistics.md).

``<out_dir>/<suite>.md`` opens with its provenance (suite and version, synthetic or real data, budget, commits,
hardware, date, cells, statistical settings) and then, one section per budget (budgets are never pooled):

* per task, protocol and label fraction, a methods table: the mean over runs and its run-level 95% CI, the paired
  difference to the baseline over matched runs on the same cases (patients, where a task has several images per
  patient) with its 95% CI, a verdict against the metric's declared margin of practical equivalence (better /
  equivalent / worse / inconclusive, or "too few runs to test"), the minimal detectable effect at the runs the
  table has, P(best) from a bootstrap of runs and cases, a boundary metric beside Dice and AUPRC beside AUROC,
  per-class means, compute and parameters; notes say when every method has one pretraining run, when a
  deterministic protocol's transfer seeds are one run, and when an AUROC is below chance;
* negative controls: a method's runs split into two halves and compared like two methods, the observed rate of
  marks beside alpha;
* across tasks: one pre-declared primary table per task, scores normalised per task, ranks with ties within the
  margin, the Friedman test with an exact (permutation) p-value, pairwise Wilcoxon tests over tasks with Holm's
  adjustment (only where enough tasks make a rejection possible), IQM and probability of improvement, and which
  tasks share test subjects;
* with figures (``publish``): label-efficiency curves, a pairwise significance map per table and the probability
  of improvement across tasks, as PNGs under ``<out_dir>/<suite>/``; the comparisons with their p-values (raw and
  Holm-adjusted) and the Bayesian signed-rank probabilities go to ``<out_dir>/<suite>_comparisons.csv``.

The per-case score is the mean of the task's metric over the case's stored classes (foreground classes for
segmentation: a class-0 row is ignored); where a task stores a class ``-1`` row (a classification case's overall
value), that row is the score and the other classes only fill the per-class columns. A classification "case" that
is the whole test set (``__set__``) or a few-shot draw (``draw<d>``) is part of its run, not a test case: its run's
score is their mean, and the test images enter through the stored per-image predictions where there are any.

Rendering only: every statistic comes from ``bench.stats`` and every figure from ``bench.plots``. The output is
deterministic (fixed bootstrap seeds, sorted rows, fixed float formats); the date and the renderer's commit are
parameters, so a golden file can pin it.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field, replace
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
RUN = ["pretrain_seed", "draw", "seed"]                          # one pipeline run; draws > 1 only below 100%
METRIC_COLUMNS = ["suite", "suite_version", "task", "method", "protocol", "label_fraction", "draw", "pretrain_seed",
                  "seed", "budget", "leakage_override", "cell_id", "case_id", "class", "metric", "value"]
CELL_INFO_COLUMNS = ["git_sha", "device", "start_time", "end_time", "wall_s", "gpu_hours", "cpu_hours", "params",
                     "pretrain_hash", "pretrain_device", "pretrain_wall_s", "pretrain_gpu_hours", "pretrain_cpu_hours"]
TEXT_COLUMNS = ["suite", "task", "method", "protocol", "budget", "cell_id", "case_id", "metric", "git_sha",
                "device", "start_time", "end_time", "pretrain_hash", "pretrain_device"]

LOWER_IS_BETTER = frozenset({"hd95", "hd", "assd", "asd", "mae", "rmse", "error"})
METRIC_LABELS = {"dice": "Dice", "nsd": "NSD", "hd95": "HD95 [mm]", "auroc": "AUROC", "accuracy": "accuracy",
                 "auprc": "AUPRC"}
METRIC_FORMATS = {"hd95": ".2f", "hd": ".2f", "assd": ".2f", "asd": ".2f"}
# Metrics Reloaded: an overlap metric alone misses boundary errors, so a segmentation table carries one beside it
BOUNDARY_METRIC = "nsd"
# the margin of practical equivalence per metric when neither the suite nor the command line declares one
DEFAULT_MARGINS = {"dice": 0.01, "nsd": 0.01, "auroc": 0.01, "accuracy": 0.01, "auprc": 0.01, "hd95": 1.0}
# a perfect score and a chance score per metric, for normalising a task's scores before they are pooled
IDEAL = {"dice": 1.0, "nsd": 1.0, "auroc": 1.0, "accuracy": 1.0, "auprc": 1.0, "hd95": 0.0, "hd": 0.0}
CHANCE = {"auroc": 0.5, "dice": 0.0, "nsd": 0.0}
OVERALL_CLASS = -1
BACKGROUND_CLASS = 0
SET_CASE = re.compile(r"^(__set__|draw\d+)$")                   # a classification "case" that is the whole test set
MARK_PARTIAL = "†"
MARK_LEAKAGE = "⚠"
MARK_CHANCE = "↓"                                               # an AUROC below chance
PREDICTIONS_SUFFIX = "_predictions.csv.gz"       # published per-image predictions, beside <suite>.csv
COMPARISONS_SUFFIX = "_comparisons.csv"          # published tests (p-values), beside <suite>.csv
COMPARISON_COLUMNS = ["budget", "task", "protocol", "label_fraction", "metric", "margin", "kind", "method", "other",
                      "estimate", "low", "high", "p", "p_holm", "se", "df", "runs", "units", "ci_method", "verdict",
                      "mde", "bayes_worse", "bayes_equivalent", "bayes_better"]
VERDICT_LABELS = {"better": "better", "worse": "worse", "equivalent": "equivalent", "inconclusive": "inconclusive",
                  "untested": "too few runs to test"}
MIN_CONTROL_RUNS = 4                             # a method's runs split in two halves of two runs each at least


@dataclass(frozen=True)
class Options:
    """Statistical settings of a leaderboard (all stated in its header)."""

    baseline: str = "random"          # the method every other is compared with
    alpha: float = 0.05               # per comparison; the CSV adds Holm-adjusted p-values per table
    ci: float = 0.95
    n_resamples: int = 10_000         # bootstrap resamples for every bootstrap
    seed: int = 0                     # the seed of every resampling
    margins: dict = field(default_factory=dict, hash=False)   # metric -> margin; DEFAULT_MARGINS fill the rest
    best_share: float = 0.05          # "could be best": best or within the margin in at least this share of resamples
    bayesian: bool = False            # also show the Bayesian signed-rank probabilities in the tables

    def margin(self, metric: str) -> float:
        return float({**DEFAULT_MARGINS, **self.margins}.get(metric, 0.0))


# ----------------------------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class Comparison:
    """A method against ``other`` over their matched runs; ``diff`` is oriented so that > 0 means the method is
    better."""

    other: str
    diff: stats.Difference
    verdict: str                  # stats.verdict against the margin
    mde: float                    # minimal detectable effect at the runs compared (80% power, alpha)
    p_holm: float = float("nan")  # Holm-adjusted over the table's comparisons with the baseline
    bayes: tuple[float, float, float] | None = None   # P(worse), P(within the margin), P(better)

    @property
    def marked(self) -> bool:
        return self.verdict in ("better", "worse")


@dataclass
class MethodRow:
    method: str
    mean: float
    ci: stats.Difference                          # the run-level interval of the mean
    runs: int
    pretrain_seeds: tuple[int, ...]
    seeds: tuple[int, ...]
    cases: int
    per_class: dict[int, float]
    boundary: float                               # mean NSD (segmentation) or AUPRC (set-level AUROC); NaN if none
    gpu_hours: float
    cpu_hours: float
    params: tuple[int, ...]
    leakage: bool
    missing: str                                  # "" when the method has every run and case of the table
    vs_baseline: Comparison | None = None
    p_best: float = float("nan")

    @property
    def low(self) -> float:
        return self.ci.low

    @property
    def high(self) -> float:
        return self.ci.high


@dataclass
class Control:
    """A negative control: one method's runs split in two halves and compared as if they were two methods."""

    method: str
    split: str                                    # how the runs were split
    comparison: Comparison


@dataclass
class Table:
    """One methods table: a (budget, task, protocol, label fraction) block."""

    budget: str
    task: Task
    protocol: str
    fraction: float
    rows: list[MethodRow]                         # complete rows first, then by mean
    classes: list[int]                            # per-class columns
    runs: int
    pretrain_seeds: tuple[int, ...]
    seeds: tuple[int, ...]
    cases: int
    patients: int | None                          # patients the cases come from, when the task groups them
    draws: int
    margin: float
    run_scores: pd.DataFrame                      # [run, method], oriented so that higher is better
    pairwise: dict[tuple[str, str], Comparison]   # (a, b) -> a against b, for a < b
    controls: list[Control]
    could_be_best: list[str]
    units: frozenset                              # the test units' ids (cases or images), to find shared test sets
    collapsed: int = 0                            # transfer seeds dropped as repeats of a deterministic protocol
    prevalence: float | None = None               # share of positive (image, class) labels, set-level tables
    unit: str = "cases"                           # what the CIs resample: "cases", test "images" or "runs" only

    @property
    def lower_is_better(self) -> bool:
        return self.task.metric in LOWER_IS_BETTER

    @property
    def sign(self) -> float:
        return -1.0 if self.lower_is_better else 1.0

    @property
    def label(self) -> str:
        return f"{self.task.name} / {self.protocol} / {_pct(self.fraction)}"

    @property
    def boundary_label(self) -> str | None:
        if self.task.kind == "segmentation":
            return METRIC_LABELS[BOUNDARY_METRIC]
        return METRIC_LABELS["auprc"] if self.unit == "images" else None

    def row(self, method: str) -> MethodRow | None:
        return next((r for r in self.rows if r.method == method), None)


@dataclass
class ImageScores:
    """Per-image predictions of a set-level table (one AUROC per run): what its bootstraps resample."""

    runs: dict[str, list[tuple[int, ...]]]        # method -> its runs (RUN keys), in the order of ``scores``
    scores: dict[str, np.ndarray]                 # method -> [run, image, class]
    targets: np.ndarray                           # [image, class] 0/1
    ids: list[str]                                # image ids, in the order of the image axis

    @property
    def images(self) -> int:
        return self.targets.shape[0]

    def common_runs(self, methods: list[str]) -> list[tuple[int, ...]]:
        """The runs every one of ``methods`` has, in the order ``matched`` stacks them."""
        return [r for r in self.runs[methods[0]] if all(r in self.runs[m] for m in methods[1:])]

    def matched(self, methods: list[str]) -> np.ndarray | None:
        """[method, run, image, class] over the runs every one of ``methods`` has (None if there are none)."""
        common = self.common_runs(methods)
        if not common:
            return None
        return np.stack([self.scores[m][[self.runs[m].index(r) for r in common]] for m in methods])


@dataclass
class Across:
    """The across-task analysis of one budget: the tasks' primary tables as blocks (a complete block design)."""

    blocks: list[str]
    methods: list[str]                            # by mean rank, best first
    excluded: dict[str, list[str]]                # method -> the blocks it misses
    mean_ranks: dict[str, float]
    chi2: float
    p: float                                      # Friedman p-value (exact by enumeration, or Monte Carlo)
    p_kind: str                                   # "exact" | "monte carlo"
    pairwise: list[tuple[str, str, float, float]]  # (a, b, raw p, Holm p): Wilcoxon over blocks, a better if > 0
    testable: bool                                # enough blocks for a pairwise test to reject at alpha
    shared: list[str]                             # notes on blocks that share test subjects
    iqm: dict[str, tuple[float, float, float, int]]  # method -> (IQM, low, high, runs used) of normalised scores
    poi: pd.DataFrame                             # P(row better than column), normalised scores
    poi_baseline: dict[str, tuple[float, float, float]]  # method -> (P(better than baseline), low, high)
    dropped: dict[str, list[str]]                 # blocks left out -> the methods they have
    missing_primary: list[str]                    # tasks whose primary table has no results in this budget


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


def _deterministic(protocol: str, kind: str) -> bool:
    """Whether the protocol's result is fixed by the encoder and labels alone (its transfer seed changes nothing)."""
    from bench.protocols.base import is_deterministic

    try:
        return bool(is_deterministic(protocol, kind))
    except (KeyError, ValueError, UnknownNameError):
        return False


def _collapse_deterministic(rows: pd.DataFrame, suite: Suite) -> tuple[pd.DataFrame, dict[tuple, int]]:
    """Keep one transfer seed (the smallest) per encoder, draw and method of a deterministic protocol: its other
    seeds repeat the same run, and counting them would test copies as if they were replicates. Returns the rows
    and, per table key, how many runs were dropped."""
    kinds = {t.name: t.kind for t in suite.tasks}
    pairs = rows[["task", "protocol"]].drop_duplicates()
    det_pairs = {(t, p) for t, p in zip(pairs["task"], pairs["protocol"]) if _deterministic(p, kinds.get(t, ""))}
    if not det_pairs:
        return rows, {}
    det = rows[pd.MultiIndex.from_frame(rows[["task", "protocol"]]).isin(list(det_pairs))]
    if det.empty:
        return rows, {}
    runs = det[KEYS + ["method", *RUN]].drop_duplicates()
    first = runs.groupby(KEYS + ["method", "pretrain_seed", "draw"], sort=False)["seed"].transform("min")
    drop = runs[runs["seed"] != first]
    if drop.empty:
        return rows, {}
    counts = {tuple(k): int(n) for k, n in drop.groupby(KEYS, sort=False).size().items()}
    key = pd.MultiIndex.from_frame(rows[KEYS + ["method", *RUN]])
    dropped = key.isin(pd.MultiIndex.from_frame(drop))
    return rows[~dropped].reset_index(drop=True), counts


def analyse(suite: Suite, metrics: pd.DataFrame, cells: pd.DataFrame, options: Options = Options()) -> Leaderboard:
    """All statistics of a leaderboard, from the store's ``metrics`` and ``cells`` frames."""
    all_rows, ignored = select_rows(suite, metrics, cells)
    if all_rows.empty:
        return Leaderboard(suite, options, all_rows, [], ignored)
    used, collapsed = _collapse_deterministic(all_rows, suite)
    is_pred = used["metric"].isin(PREDICTION_METRICS)
    metric_of = {t.name: t.metric for t in suite.tasks}
    is_primary = used["metric"] == used["task"].map(metric_of)
    rows, preds, secondary = used[is_primary & ~is_pred], used[is_pred], used[~is_primary & ~is_pred]
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
    boundary = {}
    if len(secondary):
        nsd = secondary[(secondary["metric"] == BOUNDARY_METRIC) & (secondary["class"] != OVERALL_CLASS)]
        boundary = {tuple(k): float(v) for k, v in nsd.groupby(KEYS + ["method"])["value"].mean().items()}
    cell_rows = all_rows.drop_duplicates("cell_id")
    compute = cell_rows.groupby(KEYS + ["method"], sort=True).agg(
        gpu_hours=("gpu_hours", lambda s: s.sum(min_count=1)), cpu_hours=("cpu_hours", lambda s: s.sum(min_count=1)),
        leakage=("leakage_override", "max"),
        params=("params", lambda s: tuple(sorted({int(p) for p in s.dropna()}))))
    groups = dict(iter(per_case.groupby(KEYS, sort=False)))
    sections = []
    for budget in sorted(per_case["budget"].unique()):
        tables = []
        for key in _ordered_keys(suite, groups):
            if key[0] != budget:
                continue
            task = suite.task(key[1])
            tables.append(_table(key, groups[key], task, per_class, boundary, compute, options,
                                 _image_scores(groups[key], pred_groups.get(key)), collapsed.get(key, 0)))
        across, note = _across(tables, suite, str(budget), options)
        sections.append(Section(str(budget), tables, across, note,
                                _pretraining(cell_rows[cell_rows["budget"] == budget])))
    return Leaderboard(suite, options, all_rows, sections, ignored)


def select_rows(suite: Suite, metrics: pd.DataFrame, cells: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows a leaderboard uses (this suite and version, each task's metric and a segmentation task's boundary
    metric, no background class), joined with their cells' provenance and sorted; and notes on what was left
    out."""
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
    seg = tasks[tasks["kind"] == "segmentation"].assign(metric=BOUNDARY_METRIC)
    extra = mine.merge(seg, on=["task", "metric"])
    extra = extra[~extra.set_index(["task", "metric"]).index.isin(tasks.set_index(["task", "metric"]).index)]
    rows = pd.concat([mine.merge(tasks, on=["task", "metric"]), extra, preds], ignore_index=True)
    rows = rows[~((rows["kind"] == "segmentation") & (rows["class"] == BACKGROUND_CLASS))].drop(columns="kind")
    info = _cell_info(cells)
    rows = rows.merge(info, on="cell_id", how="left")
    rows = rows.sort_values(KEYS + ["method", *RUN, "case_id", "metric", "class"], kind="stable").reset_index(drop=True)
    return rows[METRIC_COLUMNS + CELL_INFO_COLUMNS], ignored


def _normalise(metrics: pd.DataFrame) -> pd.DataFrame:
    metrics = metrics if "pretrain_seed" in metrics else metrics.assign(pretrain_seed=0)
    m = metrics[METRIC_COLUMNS].copy()
    for c in ("suite", "task", "method", "protocol", "budget", "cell_id", "case_id", "metric"):
        m[c] = m[c].astype(str)
    m["pretrain_seed"] = pd.to_numeric(m["pretrain_seed"], errors="coerce").fillna(0)
    for c in ("suite_version", "draw", "pretrain_seed", "seed", "class"):
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


def _patients(task: Task, ids) -> np.ndarray | None:
    """The patient of each case or image id (the task's ``patient_pattern``); None when the task has none."""
    if not task.patient_pattern:
        return None
    pattern = re.compile(task.patient_pattern)

    def one(i: str) -> str:
        m = pattern.match(str(i))
        return m.group(1) if m else str(i)
    return np.array([one(i) for i in ids], dtype=object)


class _Runs:
    """A table's scores per method as [run, case] matrices (or per-image predictions), oriented so that higher is
    better, with the run-level statistics over them."""

    def __init__(self, g: pd.DataFrame, task: Task, images: ImageScores | None, opts: Options) -> None:
        self.sign = -1.0 if task.metric in LOWER_IS_BETTER else 1.0
        self.images, self.opts = images, opts
        wide = g.pivot(index=["method", *RUN], columns="case_id", values="value")
        self.set_level = task.kind == "classification" and all(SET_CASE.match(str(c)) for c in wide.columns)
        if self.set_level:   # the whole test set, or few-shot draws within a run: one score per run
            wide = wide.mean(axis=1).to_frame("__run__")
        self.wide = wide
        self.groups = None if self.set_level else _patients(task, wide.columns)
        self.image_groups = _patients(task, images.ids) if images is not None else None

    def runs(self, method: str) -> list[tuple[int, ...]]:
        return [tuple(int(v) for v in k) for k in self.wide.loc[method].index]

    def matrix(self, method: str, runs: list[tuple[int, ...]] | None = None) -> np.ndarray:
        m = self.wide.loc[method]
        if runs is not None:
            m = m.loc[runs]
        return self.sign * m.to_numpy(dtype=float)

    def mean_ci(self, method: str) -> stats.Difference:
        o = self.opts
        if self.images is not None:
            d = stats.set_run_mean(self.images.scores[method], self.images.targets, groups=self.image_groups,
                                   ci=o.ci, n_resamples=o.n_resamples, seed=o.seed)
        else:
            d = stats.run_mean(self.matrix(method), groups=self.groups, ci=o.ci, n_resamples=o.n_resamples,
                               seed=o.seed)
        # back to the metric's own direction for the mean column
        if self.sign < 0:
            d = d._replace(estimate=-d.estimate, low=-d.high, high=-d.low)
        return d

    def difference(self, a: str, b: str) -> tuple[stats.Difference, np.ndarray] | None:
        """a - b over their matched runs (oriented) and the per-run differences; None without a matched run."""
        o = self.opts
        if self.images is not None:
            both = self.images.matched([a, b])
            if both is None:
                return None
            d = stats.set_run_difference(both[0], both[1], self.images.targets, groups=self.image_groups, ci=o.ci,
                                         n_resamples=o.n_resamples, seed=o.seed)
            per_run = np.atleast_1d(stats.mean_auroc(both[0], self.images.targets)
                                    - stats.mean_auroc(both[1], self.images.targets))
            return d, per_run
        common = [r for r in self.runs(a) if r in set(self.runs(b))]
        if not common:
            return None
        x, y = self.matrix(a, common), self.matrix(b, common)
        d = stats.paired_run_difference(x, y, groups=self.groups, ci=o.ci, n_resamples=o.n_resamples, seed=o.seed)
        with np.errstate(invalid="ignore"):
            keep = ~np.isnan(x - y).any(0)
        return d, (x - y)[:, keep].mean(1) if keep.any() else np.full(len(common), np.nan)

    def halves(self, method: str) -> tuple[np.ndarray, np.ndarray, str] | None:
        """The method's runs split in two halves of equal size for a negative control: by pretraining seed where
        it has several (a second pretraining of the method), else alternately by transfer run."""
        runs = self.runs(method)
        if len(runs) < MIN_CONTROL_RUNS or self.images is not None and method not in self.images.runs:
            return None
        pre = sorted({r[0] for r in runs})
        if len(pre) >= 2:
            first = set(pre[:len(pre) // 2])
            a = [r for r in runs if r[0] in first]
            b = [r for r in runs if r[0] not in first]
            how = "pretraining seeds " + _ints(sorted(first)) + " vs " + _ints(pre[len(pre) // 2:])
        else:
            a, b = runs[0::2], runs[1::2]
            how = "alternate transfer runs"
        n = min(len(a), len(b))
        if n < 2:
            return None
        if self.images is not None:
            idx = self.images.runs[method]
            s = self.images.scores[method]
            return s[[idx.index(r) for r in a[:n]]], s[[idx.index(r) for r in b[:n]]], how
        return self.matrix(method, a[:n]), self.matrix(method, b[:n]), how

    def control(self, method: str) -> tuple[stats.Difference, np.ndarray, str] | None:
        h = self.halves(method)
        if h is None:
            return None
        x, y, how = h
        o = self.opts
        if self.images is not None:
            d = stats.set_run_difference(x, y, self.images.targets, groups=self.image_groups, ci=o.ci,
                                         n_resamples=o.n_resamples, seed=o.seed)
            return d, np.atleast_1d(stats.mean_auroc(x, self.images.targets) - stats.mean_auroc(y, self.images.targets)), how
        d = stats.paired_run_difference(x, y, groups=self.groups, ci=o.ci, n_resamples=o.n_resamples, seed=o.seed)
        return d, np.nanmean(x - y, axis=1), how

    def bootstrap_means(self, methods: list[str]) -> np.ndarray | None:
        """Bootstrap replicates [method, resample] of each method's mean (oriented), resampling runs and the test
        units shared by all methods; None when the methods share no run (set-level) or no case."""
        o = self.opts
        if self.images is not None:
            matched = self.images.matched(methods)
            if matched is None:
                return None
            return stats.set_bootstrap_means(matched, self.images.targets, groups=self.image_groups,
                                             n_resamples=o.n_resamples, seed=o.seed)
        return stats.hierarchical_bootstrap_means([self.matrix(m) for m in methods], groups=self.groups,
                                                  n_resamples=o.n_resamples, seed=o.seed)


def _compare(d: stats.Difference, other: str, margin: float, alpha: float) -> Comparison:
    df = d.df if d.interval == "t" else np.inf
    mde = stats.minimal_detectable_effect(d.se, df, alpha=alpha) if np.isfinite(d.se) else float("nan")
    return Comparison(other, d, stats.verdict(d.low, d.high, margin), float(mde))


def _bayes(per_run: np.ndarray, margin: float, seed: int) -> tuple[float, float, float] | None:
    per_run = per_run[np.isfinite(per_run)]
    if per_run.size < 2:
        return None
    return tuple(float(v) for v in stats.bayes_signed_rank(per_run, margin, seed=seed))


def _table(key: tuple, g: pd.DataFrame, task: Task, per_class: dict[tuple, dict[int, float]],
           boundary: dict[tuple, float], compute: pd.DataFrame, opts: Options, images: ImageScores | None = None,
           collapsed: int = 0) -> Table:
    budget, _, protocol, fraction = key
    margin = opts.margin(task.metric)
    data = _Runs(g, task, images, opts)
    all_runs = g[RUN].drop_duplicates()
    all_cases = data.wide.shape[1]
    methods = sorted(g["method"].unique())
    auprc = ({m: float(np.mean(stats.average_precision(images.scores[m], images.targets))) for m in methods}
             if images is not None else {})
    rows = []
    for method in methods:
        mat = data.wide.loc[method]
        runs = mat.index.to_frame(index=False)
        complete = int(mat.notna().all().sum())
        ci = data.mean_ci(method)
        c = compute.loc[key + (method,)]
        seeds = tuple(int(s) for s in sorted(runs["seed"].unique()))
        rows.append(MethodRow(
            method=method, mean=float(ci.estimate), ci=ci, runs=len(runs),
            pretrain_seeds=tuple(int(s) for s in sorted(runs["pretrain_seed"].unique())), seeds=seeds,
            cases=images.images if images is not None else complete, per_class=per_class.get(key + (method,), {}),
            boundary=auprc.get(method, boundary.get(key + (method,), float("nan"))),
            gpu_hours=float(c["gpu_hours"]), cpu_hours=float(c["cpu_hours"]), params=c["params"],
            leakage=bool(c["leakage"]),
            missing=_missing(len(runs), len(all_runs), complete, all_cases, data.set_level)))
    sign = data.sign
    # a method with fewer runs is never ranked on a mean over other runs: complete rows come first
    rows.sort(key=lambda r: (bool(r.missing), -sign * r.mean, r.method))
    pairwise: dict[tuple[str, str], Comparison] = {}
    per_run: dict[tuple[str, str], np.ndarray] = {}
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            found = data.difference(a, b)
            if found is not None:
                pairwise[a, b] = _compare(found[0], b, margin, opts.alpha)
                per_run[a, b] = found[1]
    base = opts.baseline
    if base in methods:
        tested = []
        for r in rows:
            if r.method == base:
                continue
            pair = tuple(sorted((r.method, base)))
            if pair not in pairwise:
                continue
            c = pairwise[pair]
            d, runs_d = c.diff, per_run[pair]
            if r.method != pair[0]:   # stored as base - method
                d = d._replace(estimate=-d.estimate, low=-d.high, high=-d.low)
                runs_d = -runs_d
            r.vs_baseline = replace(_compare(d, base, margin, opts.alpha), bayes=_bayes(runs_d, margin, opts.seed))
            tested.append(r)
        raw = np.array([r.vs_baseline.diff.p for r in tested], dtype=float)
        adjusted = np.full(len(raw), np.nan)
        ok = np.isfinite(raw)
        if ok.any():
            adjusted[ok] = np.asarray(stats.holm(raw[ok]), dtype=float)
        for r, p in zip(tested, adjusted):
            r.vs_baseline = replace(r.vs_baseline, p_holm=float(p))
    complete_methods = [r.method for r in rows if not r.missing]
    could_be_best: list[str] = []
    if len(complete_methods) >= 2:
        boots = data.bootstrap_means(complete_methods)
        if boots is not None:
            _, p_best = stats.rank_probabilities(np.asarray(boots), margin=margin)
            for m, p in zip(complete_methods, np.asarray(p_best)):
                r = next(r for r in rows if r.method == m)
                r.p_best = float(p)
            could_be_best = [m for m in complete_methods
                             if next(r for r in rows if r.method == m).p_best >= opts.best_share]
    controls = []
    for m in methods:
        found = data.control(m)
        if found is not None:
            d, _, how = found
            controls.append(Control(m, how, _compare(d, m, margin, opts.alpha)))
    classes = sorted(set().union(*(r.per_class for r in rows)))
    run_scores = data.wide.mean(axis=1).mul(sign).unstack("method") if len(data.wide) else pd.DataFrame()
    if images is not None:   # a set-level score per run: the AUROC of the run's predictions
        run_scores = pd.DataFrame({m: pd.Series(np.atleast_1d(stats.mean_auroc(images.scores[m], images.targets)),
                                                index=pd.MultiIndex.from_tuples(images.runs[m], names=RUN))
                                   for m in methods})
    units = frozenset(images.ids) if images is not None else (
        frozenset() if data.set_level else frozenset(str(c) for c in data.wide.columns))
    patients = None
    if images is not None and data.image_groups is not None:
        patients = len(set(data.image_groups))
    elif data.groups is not None:
        patients = len(set(data.groups))
    return Table(budget=str(budget), task=task, protocol=str(protocol), fraction=float(fraction), rows=rows,
                 classes=classes if len(classes) > 1 else [], runs=len(all_runs),
                 pretrain_seeds=tuple(int(s) for s in sorted(all_runs["pretrain_seed"].unique())),
                 seeds=tuple(int(s) for s in sorted(all_runs["seed"].unique())),
                 cases=images.images if images is not None else all_cases, patients=patients,
                 draws=int(all_runs["draw"].nunique()), margin=margin, run_scores=run_scores, pairwise=pairwise,
                 controls=controls, could_be_best=could_be_best, units=units, collapsed=collapsed,
                 prevalence=float(images.targets.mean()) if images is not None else None,
                 unit="images" if images is not None else "runs" if data.set_level else "cases")


def _image_scores(g: pd.DataFrame, preds: pd.DataFrame | None) -> ImageScores | None:
    """The table's per-image predictions when it is set-level (one stored case per run) and every run stored
    them; None otherwise (the table then has run-level scores only)."""
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
    keys = [tuple(int(v) for v in k) for k in runs[RUN].itertuples(index=False)]
    return ImageScores(runs={m: [keys[i] for i in ix] for m, ix in by_method.items()},
                       scores={m: s[ix] for m, ix in by_method.items()}, targets=t[0], ids=[str(i) for i in images])


def _missing(runs: int, all_runs: int, cases: int, all_cases: int, set_level: bool) -> str:
    parts = []
    if runs != all_runs:
        parts.append(f"{runs} of {all_runs} runs")
    if cases != all_cases and not set_level:
        parts.append(f"{cases} of {all_cases} cases")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------- across tasks


def _complete_blocks(tables: list[Table]) -> tuple[list[Table], list[str]]:
    """The tables and methods for a complete block design: every kept method has a row in every kept table.

    Friedman's test needs every method in every block. Of the choices that give that, the one with the most
    scores (methods x tables) is kept: a method that ran few tables costs fewer scores left out than the tables it
    misses, and a task only some methods have run yet is left out rather than the methods. Ties keep more methods,
    then the first method names in alphabetical order. Returns ([], []) when no choice has two methods in two
    tables.
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


def margin_ranks(values: np.ndarray, margin: float) -> np.ndarray:
    """Ranks (1 = best, higher values better) where methods within ``margin`` of each other tie: going down from
    the best, a method joins the current tie group while it is within the margin of the group's first member;
    a group shares the average of its ranks. Differences below the margin are noise, not order."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(-v, kind="stable")
    ranks = np.empty(len(v))
    start = 0
    while start < len(v):
        stop = start + 1
        while stop < len(v) and v[order[start]] - v[order[stop]] < margin:
            stop += 1
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0
        start = stop
    return ranks


def normalised(value: float, baseline: float | None, metric: str) -> float:
    """A task's score on a common scale: the share of the gap from the baseline (or chance, without a baseline)
    to a perfect score that a method closes; 0 = the baseline, 1 = perfect, < 0 = worse than the baseline."""
    ideal = IDEAL.get(metric)
    ref = baseline if baseline is not None else CHANCE.get(metric)
    if ideal is None or ref is None or ideal == ref:
        return float("nan")
    return float((value - ref) / (ideal - ref))


def _across(tables: list[Table], suite: Suite, budget: str, opts: Options) -> tuple[Across | None, str]:
    primary = {(t.name, *t.primary_table): t for t in suite.tasks}
    chosen = [t for t in tables if (t.task.name, t.protocol, t.fraction) in primary]
    missing = [f"{name} ({p} / {_pct(f)})" for (name, p, f) in primary
               if not any((t.task.name, t.protocol, t.fraction) == (name, p, f) for t in tables)]
    if len(suite.tasks) < 2:
        return None, ("Across tasks: the suite has one task, so there is nothing to aggregate; each table above "
                      "stands on its own.")
    if len(chosen) < 2:
        return None, ("Across tasks: fewer than two tasks have results in their primary table "
                      f"(declared before results: {', '.join(f'{n} {p} / {_pct(f)}' for n, p, f in primary)}), so "
                      "there is nothing to aggregate.")
    kept, included = _complete_blocks(chosen)
    if not kept:
        return None, "Across tasks skipped: no two methods have results in two or more primary tables."
    dropped = {t.label: sorted(r.method for r in t.rows) for t in chosen if all(t is not k for k in kept)}
    labels = [t.label for t in kept]
    methods = sorted({r.method for t in chosen for r in t.rows})
    excluded = {m: [t.label for t in kept if t.row(m) is None] for m in methods if m not in included}
    n, k = len(kept), len(included)
    # ranks per block on the means, ties within the metric's margin
    raw = np.array([[t.sign * t.row(m).mean for m in included] for t in kept])
    ranks = np.array([margin_ranks(raw[i], kept[i].margin) for i in range(n)])
    chi2, p, how = stats.friedman_exact(-ranks, seed=opts.seed)
    mean_ranks = dict(zip(included, ranks.mean(0).tolist()))
    order = sorted(included, key=lambda m: (mean_ranks[m], m))
    norm = np.array([[normalised(t.row(m).mean, t.row(opts.baseline).mean if t.row(opts.baseline) else None,
                                 t.task.metric) for m in included] for t in kept])
    testable = n >= 1 and 2.0 / 2 ** n <= opts.alpha
    pairs = []
    if testable:
        found = []
        for i, a in enumerate(included):
            for j, b in enumerate(included[i + 1:], start=i + 1):
                d = norm[:, i] - norm[:, j]
                found.append((a, b, float(stats.paired_wilcoxon(norm[:, i], norm[:, j])[1]), float(np.nanmean(d))))
        adj = stats.holm(np.array([f[2] for f in found])) if found else []
        pairs = [(a, b, praw, float(pa)) if dm >= 0 else (b, a, praw, float(pa))
                 for (a, b, praw, dm), pa in zip(found, adj)]
    shared = _shared_tests(kept)
    # per-run normalised scores [run, block] per method; runs missing from any block are left out
    runs = {}
    for m in included:
        cols = []
        for t in kept:
            b = t.row(opts.baseline).mean if t.row(opts.baseline) else None
            s = t.run_scores[m] * t.sign if m in t.run_scores else pd.Series(dtype=float)
            cols.append(s.groupby(level=["pretrain_seed", "seed"]).mean().map(
                lambda v, t=t, b=b: normalised(v, b, t.task.metric)))
        runs[m] = pd.concat(cols, axis=1).dropna()
    iqm = {}
    for m in order:
        x = runs[m].to_numpy()
        if x.size:
            low, high = stats.stratified_bootstrap_ci(x, aggregate=stats.iqm, n_resamples=opts.n_resamples,
                                                      ci=opts.ci, seed=opts.seed)
            iqm[m] = (float(stats.iqm(x)), float(low), float(high), x.shape[0])
    poi = pd.DataFrame(np.nan, index=order, columns=order)
    for a in order:
        for b in order:
            if a != b and runs[a].size and runs[b].size:
                poi.loc[a, b] = float(stats.probability_of_improvement(runs[a].to_numpy(), runs[b].to_numpy()))
    poi_baseline = {}
    if opts.baseline in included and runs[opts.baseline].size:
        y = runs[opts.baseline].to_numpy()
        for m in order:
            if m != opts.baseline and runs[m].size:
                low, high = stats.probability_of_improvement_ci(runs[m].to_numpy(), y, n_resamples=opts.n_resamples,
                                                                ci=opts.ci, seed=opts.seed)
                poi_baseline[m] = (float(poi.loc[m, opts.baseline]), float(low), float(high))
    return Across(labels, order, excluded, mean_ranks, float(chi2), float(p), str(how), pairs, testable, shared,
                  iqm, poi, poi_baseline, dropped, missing), ""


def _shared_tests(tables: list[Table]) -> list[str]:
    """Notes on blocks whose test units overlap (the same subjects or images under different tasks)."""
    out = []
    for i, a in enumerate(tables):
        for b in tables[i + 1:]:
            both = a.units & b.units
            if both:
                out.append(f"{a.label} and {b.label} share {len(both)} test ids")
            elif not a.units or not b.units:
                if a.task.dataset == b.task.dataset:
                    out.append(f"{a.label} and {b.label} are tasks of the same dataset `{a.task.dataset}`")
    return out


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
        for t in s.tables:
            if len(t.rows) >= 3 and t.pairwise:
                files["significance", s.budget, t.label] = (
                    f"{name}/{b}_{_slug(t.task.name)}_{_slug(t.protocol)}_{t.fraction:g}_significance.png")
        if s.across is not None and s.across.iqm:
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
            out += _table_md(t, lb.options, class_names.get(t.task.name, {}), files.get(("significance", s.budget,
                                                                                          t.label)))
        out += _controls_md(s, lb.options)
        out += _pretraining_md(s.pretraining)
        curves = [(task, protocol) for task, protocol in _curves(s)
                  if ("label_efficiency", s.budget, task, protocol) in files]
        if curves:
            out += ["### Label efficiency", "",
                    "Mean score against the label fraction, with the run-level 95% CI as a band.", ""]
            for task, protocol in curves:
                out += [f"![label efficiency: {task} / {protocol}]"
                        f"({files['label_efficiency', s.budget, task, protocol]})", ""]
        if s.across is not None:
            out += _across_md(s.across, s, lb.options, files)
        elif s.across_note:
            out += [f"### Across tasks (budget `{s.budget}`)", "", s.across_note, ""]
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
    pre = sorted(rows["pretrain_seed"].unique()) if len(rows) else []
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
            f"| cells | {len(cells)}" + (f" (left out: {'; '.join(lb.ignored)})" if lb.ignored else "") + " |"]
    if len(pre) == 1:
        out.append(f"| pretraining runs | one per method (pretraining seed {pre[0]}): runs differ in their transfer "
                   "seed only, so every comparison is between these particular encoders |")
    elif pre:
        out.append(f"| pretraining runs | pretraining seeds {_ints(pre)} |")
    out += [f"| result commits | {_counts(cells['git_sha'])} |",
            f"| hardware | {_counts(cells['device'])} |"]
    starts = cells["start_time"].dropna().astype(str)
    if len(starts):
        first, last = starts.min()[:10], starts.max()[:10]
        out.append(f"| results dated | {first}" + (f" to {last}" if last != first else "") + " |")
    margins = ", ".join(f"{METRIC_LABELS.get(m, m)} ±{o.margin(m):g}"
                        for m in sorted({t.metric for t in suite.tasks} | ({BOUNDARY_METRIC} if any(
                            t.kind == "segmentation" for t in suite.tasks) else set())))
    out += [f"| generated | {when} at commit `{git}` |",
            f"| statistics | the replicate is a pipeline run; {o.ci:.0%} CIs over runs (a run-level t with the case "
            f"component below {stats.BOOTSTRAP_MIN_RUNS} runs, else a bootstrap of runs and cases, {o.n_resamples} resamples, "
            f"seed {o.seed}); α = {o.alpha:g} per comparison; baseline `{o.baseline}`; margins of practical "
            f"equivalence: {margins} |", ""]
    return out


def _diff_cells(c: Comparison | None, spec: str, baseline: bool, o: Options) -> list[str]:
    if baseline:
        cells = ["—", "—", "baseline", "—"]
    elif c is None:
        cells = ["n/a", "n/a", "no matched run", "—"]
    elif c.diff.interval == "none":
        cells = [_signed(c.diff.estimate, spec), "—", VERDICT_LABELS["untested"], "—"]
    else:
        cells = [_signed(c.diff.estimate, spec), f"[{_signed(c.diff.low, spec)}, {_signed(c.diff.high, spec)}]",
                 VERDICT_LABELS[c.verdict], _num(c.mde, spec)]
    if o.bayesian:
        cells.append("—" if c is None or c.bayes is None else " / ".join(_num(v, ".2f") for v in c.bayes))
    return cells


def _ci_text(ci: stats.Difference, spec: str) -> str:
    if ci.interval == "none":
        return "— (1 run)"
    return f"[{_num(ci.low, spec)}, {_num(ci.high, spec)}]"


def _table_md(t: Table, o: Options, names: dict[int, str], significance: str | None = None) -> list[str]:
    metric = METRIC_LABELS.get(t.task.metric, t.task.metric)
    spec = METRIC_FORMATS.get(t.task.metric, ".4f")
    direction = "lower is better" if t.lower_is_better else "higher is better"
    has_baseline = t.row(o.baseline) is not None
    extra = t.boundary_label
    head = ["method", metric, f"{o.ci:.0%} CI"] + ([extra] if extra else [])
    if has_baseline:
        head += [f"Δ vs {o.baseline}", f"{o.ci:.0%} CI", "verdict", "MDE"] + (
            ["Bayes P(worse / equiv. / better)"] if o.bayesian else [])
    head += ["P(best)", "runs"] + [names.get(c, str(c)) for c in t.classes] + ["GPU h", "CPU h", "params"]
    align = ["---", "---:", "---"] + (["---:"] if extra else []) + (
        ["---:", "---", "---", "---:"] + (["---"] if o.bayesian else []) if has_baseline else [])
    align += ["---:"] * (len(head) - len(align))
    units = f"{t.cases} test {t.unit}" if t.unit != "runs" else "set-level scores"
    if t.patients is not None:
        units += f" from {t.patients} patients"
    pre = f"{len(t.pretrain_seeds)} pretraining seed{'s' if len(t.pretrain_seeds) != 1 else ''}"
    seeds = f"{len(t.seeds)} transfer seed{'s' if len(t.seeds) != 1 else ''}"
    out = [f"### {t.label}", "",
           f"{t.task.kind.capitalize()}, {metric} ({direction}); {t.runs} run{'s' if t.runs != 1 else ''} ({pre}, "
           f"{seeds}" + (f", {t.draws} draws" if t.draws > 1 else "") + f"), {units}; margin of practical "
           f"equivalence ±{t.margin:g}.", "",
           "| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in t.rows:
        marks = (MARK_PARTIAL if r.missing else "") + (MARK_LEAKAGE if r.leakage else "") + (
            MARK_CHANCE if t.task.metric == "auroc" and r.mean < 0.5 else "")
        cells = [r.method + (f" {marks}" if marks else ""), _num(r.mean, spec), _ci_text(r.ci, spec)]
        if extra:
            cells.append(_num(r.boundary, ".4f"))
        if has_baseline:
            cells += _diff_cells(r.vs_baseline, spec, r.method == o.baseline, o)
        cells += [_num(r.p_best, ".2f"), str(r.runs)] + [_num(r.per_class.get(c, np.nan), spec) for c in t.classes]
        cells += [_num(r.gpu_hours, ".3f"), _num(r.cpu_hours, ".3f"), _params(r.params)]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    over = f" (mean over its {len(t.classes)} classes)" if t.classes and t.unit == "cases" else ""
    kinds = {r.ci.interval for r in t.rows} | {r.vs_baseline.diff.interval for r in t.rows if r.vs_baseline}
    how = []
    if "t" in kinds:
        how.append("a t interval over runs that adds the " + ("patient" if t.patients else "case" if t.unit == "cases"
                                                            else "image") + " component of a two-way random-effects "
                   "ANOVA (Banerjee's interval where that component is not 0)"
                   if t.unit != "runs" else "a t interval over the run scores")
    if "bootstrap" in kinds:
        how.append(f"a percentile bootstrap of runs and, within them, the same {t.unit}")
    score = (f"the set-level {metric} of each run (mean over classes)" if t.unit == "images"
             else f"each run's {metric}" + (" (mean over its draws)" if t.protocol == "few_shot" else "")
             if t.unit == "runs" else f"the per-case {metric}{over}")
    out += [f"Mean: {score}, averaged over runs" + (" (patients weighted equally)" if t.patients and t.unit == "cases"
                                                     else "")
            + f". {o.ci:.0%} CI: " + (" or ".join(how) if how else "none (one run per method)") + "."
            + (" NSD: mean over runs and cases." if extra == "NSD" else ""), ""]
    if has_baseline:
        unit = "patients" if t.patients else t.unit
        on = f" on the same test {unit}" if t.unit != "runs" else ""
        out += [f"Δ: mean paired difference to `{o.baseline}` over matched runs{on} "
                "(> 0: better). Verdict against the margin ±" + f"{t.margin:g}: better / worse when the CI excludes "
                "0 and does not lie inside the margin, equivalent when it lies inside, inconclusive otherwise; too "
                f"few runs to test with one matched run (no spread between runs to compare with). α = {o.alpha:g} per "
                "comparison; the p-values, raw and Holm-adjusted over the table's comparisons, are in the published "
                f"`<suite>{COMPARISONS_SUFFIX}`. MDE: the smallest true difference that this many runs detect with 80% "
                f"power at α = {o.alpha:g}.", ""]
    else:
        out += [f"No `{o.baseline}` results in this table, so no baseline comparison.", ""]
    if any(np.isfinite(r.p_best) for r in t.rows):
        out += [f"P(best): the share of bootstrap resamples ({'runs and ' + t.unit if t.unit != 'runs' else 'runs'}"
                f") in which the method is best or within ±{t.margin:g} of the best. Could be best (P(best) ≥ "
                f"{o.best_share:g}): " + (", ".join(t.could_be_best) or "none") + "."
                + (" With one run per method P(best) reflects the sampling of the test set only, not of training."
                   if all(r.runs == 1 for r in t.rows) else ""), ""]
    if all(len(r.pretrain_seeds) <= 1 for r in t.rows):
        out += ["One pretraining run per method: a verdict compares these encoders, not the pretraining methods "
                "(the variation between pretraining runs is in no interval); `pretrain_seed=tied` runs make it a "
                "comparison of methods.", ""]
    if t.collapsed:
        out += [f"`{t.protocol}` is deterministic given the encoder: {t.collapsed} further transfer seed"
                f"{'s' if t.collapsed != 1 else ''} repeated a run exactly and "
                f"{'are' if t.collapsed != 1 else 'is'} counted once.", ""]
    if t.unit == "runs":
        out += ["These cells stored no per-image predictions, so the intervals cover the spread between runs only, "
                "not the sampling of the test images.", ""]
    if t.unit == "images" and t.prevalence is not None:
        out += [f"AUPRC: mean over runs of the per-class average precision; positives are {t.prevalence:.1%} of the "
                "(image, class) labels, the AUPRC of a random ranking.", ""]
    if extra == "NSD" and not any(np.isfinite(r.boundary) for r in t.rows):
        out += ["NSD: not in these results (they were stored before the leaderboard kept the boundary metric).", ""]
    below = [r.method for r in t.rows if t.task.metric == "auroc" and r.mean < 0.5]
    if below:
        out += [f"{MARK_CHANCE} AUROC below chance (0.5): " + ", ".join(
            r.method + (" (its CI lies below 0.5)" if np.isfinite(r.high) and r.high < 0.5 else "")
            for r in t.rows if r.method in below) + ".", ""]
    partial = [r for r in t.rows if r.missing]
    if partial:
        out += [f"{MARK_PARTIAL} Fewer runs or cases than the other methods; listed after the complete ones and left "
                "out of P(best); its mean and CI cover only what it has and its comparison only the matched runs: "
                + "; ".join(f"{r.method}: {r.missing}" for r in partial) + ".", ""]
    leaks = [r.method for r in t.rows if r.leakage]
    if leaks:
        out += [f"{MARK_LEAKAGE} Includes cells run with `leakage_override` (a data-leakage check was overridden): "
                + ", ".join(leaks) + ".", ""]
    if significance:
        out += [f"![pairwise verdicts: {t.label}]({significance})", ""]
    return out


def _controls_md(s: Section, o: Options) -> list[str]:
    controls = [(t, c) for t in s.tables for c in t.controls]
    out = ["### Negative controls", ""]
    if not controls:
        return out + [f"None on this board: a method needs at least {MIN_CONTROL_RUNS} runs in a table for its runs "
                      "to be split into two halves and compared as if they were two methods (a null comparison). "
                      "Run one method with more seeds, e.g. `-m seed=0,1,2,3`, to measure the false-mark rate here.",
                      ""]
    marked = [(t, c) for t, c in controls if c.comparison.marked]
    tested = [(t, c) for t, c in controls if c.comparison.diff.interval != "none"]
    out += [f"A method's runs split in two halves and compared like two methods, where the truth is no difference: "
            f"{len(marked)} of {len(tested)} such comparisons marked better or worse (expected rate α = {o.alpha:g}).",
            "", "| table | method | split | Δ | 95% CI | verdict |", "|---|---|---|---:|---|---|"]
    for t, c in controls:
        spec = METRIC_FORMATS.get(t.task.metric, ".4f")
        d = c.comparison.diff
        out.append(f"| {t.label} | {c.method} | {c.split} | {_signed(d.estimate, spec)} | "
                   f"[{_signed(d.low, spec)}, {_signed(d.high, spec)}] | {VERDICT_LABELS[c.comparison.verdict]} |")
    return out + [""]


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
    k, n = len(a.methods), len(a.blocks)
    out = [f"### Across tasks (budget `{s.budget}`)", "",
           f"Blocks: the primary table of each task, declared with the suite before any result: " + "; ".join(a.blocks)
           + f". {k} methods with results in every block.", ""]
    if a.missing_primary:
        out += ["Tasks whose primary table has no results here: " + "; ".join(a.missing_primary) + ".", ""]
    if a.dropped:
        out += ["Blocks left out (too few of the methods ran them): "
                + "; ".join(f"{t} (only {', '.join(v)})" for t, v in a.dropped.items()) + ".", ""]
    if a.excluded:
        out += ["Methods left out (missing blocks): " + "; ".join(f"{m} ({', '.join(v)})" for m, v in a.excluded.items())
                + ".", ""]
    out += ["The blocks are not independent: every block transfers the same encoder of each method"
            + ("; " + "; ".join(a.shared) if a.shared else "") + ". Tests over blocks treat them as independent, so "
            "their p-values are optimistic.", ""]
    out += [f"Ranks per block on the means, methods within the task's margin tied. Friedman test: χ²_F = "
            f"{_num(a.chi2, '.3f')}, {a.p_kind} permutation {_p_is(a.p)} over {n} blocks.", ""]
    if a.testable:
        out += ["Pairwise two-sided Wilcoxon signed-rank tests over blocks on the normalised scores, Holm-adjusted:",
                "", "| better on average | than | p | Holm p |", "|---|---|---:|---:|"]
        out += [f"| {x} | {y} | {_p(p)} | {_p(ph)} |" for x, y, p, ph in a.pairwise] + [""]
    else:
        out += [f"Too few blocks to test pairs of methods: an exact two-sided Wilcoxon test over {n} blocks cannot "
                f"go below p = 2/2^{n} = {2 / 2 ** n:.3g} > α. Mean ranks and IQMs below are estimates only.", ""]
    head = ["method", "mean rank"]
    if a.iqm:
        head += ["IQM (normalised)", f"{o.ci:.0%} CI", "runs"]
    if a.poi_baseline:
        head += [f"P(better than {o.baseline})", f"{o.ci:.0%} CI"]
    out += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for m in a.methods:
        cells = [m, _num(a.mean_ranks[m], ".2f")]
        if a.iqm:
            if m in a.iqm:
                v, lo, hi, runs = a.iqm[m]
                cells += [_num(v, ".3f"), f"[{_num(lo, '.3f')}, {_num(hi, '.3f')}]", str(runs)]
            else:
                cells += ["—", "—", "0"]
        if a.poi_baseline:
            if m in a.poi_baseline:
                v, lo, hi = a.poi_baseline[m]
                cells += [_num(v, ".3f"), f"[{_num(lo, '.3f')}, {_num(hi, '.3f')}]"]
            else:
                cells += ["—", "—"]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", f"Normalised score: per task, the share of the gap from `{o.baseline}` (chance where it has no "
            "result) to a perfect score that a method closes (0 = the baseline, 1 = perfect), so tasks in other "
            "metrics and ranges pool on one scale. IQM: interquartile mean of each run's normalised scores over the "
            "blocks, with a stratified bootstrap CI (runs resampled within each block); runs missing from a block "
            "are left out. P(better than …): rliable's probability of improvement over runs, averaged over blocks.",
            ""]
    if ("poi", s.budget) in files:
        out += [f"![probability of improvement]({files['poi', s.budget]})", ""]
    return out


def _curves(s: Section) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], int] = {}
    for t in s.tables:
        seen[t.task.name, t.protocol] = seen.get((t.task.name, t.protocol), 0) + 1
    return [k for k, v in seen.items() if v > 1]


def comparisons(lb: Leaderboard) -> pd.DataFrame:
    """Every comparison of a leaderboard as rows: against the baseline (with Holm-adjusted p), between every pair
    of methods (the significance map) and the negative controls."""
    out = []
    for s in lb.sections:
        for t in s.tables:
            key = {"budget": s.budget, "task": t.task.name, "protocol": t.protocol, "label_fraction": t.fraction,
                   "metric": t.task.metric, "margin": t.margin}

            def row(kind: str, method: str, c: Comparison) -> dict:
                d = c.diff
                b = c.bayes or (np.nan, np.nan, np.nan)
                return key | {"kind": kind, "method": method, "other": c.other, "estimate": d.estimate,
                              "low": d.low, "high": d.high, "p": d.p, "p_holm": c.p_holm, "se": d.se, "df": d.df,
                              "runs": d.runs, "units": d.units, "ci_method": d.interval, "verdict": c.verdict,
                              "mde": c.mde, "bayes_worse": b[0], "bayes_equivalent": b[1], "bayes_better": b[2]}
            out += [row("baseline", r.method, r.vs_baseline) for r in t.rows if r.vs_baseline is not None]
            out += [row("pair", a, c) for (a, _), c in sorted(t.pairwise.items())]
            out += [row("control", c.method, c.comparison) for c in t.controls]
    return pd.DataFrame(out, columns=COMPARISON_COLUMNS)


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
    _atomic_csv(comparisons(lb), out_dir / f"{stem}{COMPARISONS_SUFFIX}")
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
    # a CSV published before the pretraining seed was part of a run's identity: every cell pretrained with seed 0
    if "pretrain_seed" not in rows:
        rows["pretrain_seed"] = 0
    # a CSV published before a column existed reads back with that column empty
    cells = rows.reindex(columns=["cell_id", *CELL_INFO_COLUMNS]).drop_duplicates("cell_id")
    return rows[METRIC_COLUMNS], cells


# A published row does not carry its cell's config hash, so an imported cell never counts as already run: running
# the same cell here computes it again and replaces the imported copy.
IMPORTED_HASH = "imported"


# what names a cell: the metric columns before its id
IDENTITY = METRIC_COLUMNS[:METRIC_COLUMNS.index("cell_id")]
NUMERIC_IDENTITY = ["suite_version", "label_fraction", "draw", "pretrain_seed", "seed", "leakage_override"]


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
    # a CSV published before the pretraining seed was recorded lacks that column: every cell of it pretrained with 0
    missing = [c for c in METRIC_COLUMNS if c not in header and c != "pretrain_seed"]
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
    for t in s.tables:
        if ("significance", s.budget, t.label) in files:
            order = [r.method for r in t.rows]
            verdicts = pd.DataFrame("", index=order, columns=order, dtype=object)
            for (a, b), c in t.pairwise.items():
                flip = {"better": "worse", "worse": "better"}
                verdicts.loc[a, b] = c.verdict
                verdicts.loc[b, a] = flip.get(c.verdict, c.verdict)
            plots.significance_map(verdicts, out_dir / files["significance", s.budget, t.label],
                                   title=f"{t.label} (budget {s.budget})")
    if ("poi", s.budget) in files:
        plots.probability_of_improvement(s.across.poi, out_dir / files["poi", s.budget], title=f"budget {s.budget}")


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
