"""The leaderboard's statistics: from result rows to tables, comparisons and the across-task analysis.

Every statistic comes from ``bench.stats``; nothing here renders. See ``bench.leaderboard`` for what a board shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from bench import stats
from bench.registry import UnknownNameError
from bench.results import (
    CELL_INFO_COLUMNS,
    METRIC_COLUMNS,
    PRED_SCORE,
    PRED_TARGET,
    PREDICTION_METRICS,
    world_sizes,
)
from bench.suites import Suite, Task

KEYS = ["budget", "task", "protocol", "label_fraction"]  # one methods table per key
RUN = ["pretrain_seed", "draw", "seed"]  # one pipeline run; draws > 1 only below 100%

LOWER_IS_BETTER = frozenset({"hd95", "hd", "assd", "asd", "mae", "rmse", "error"})
METRIC_LABELS = {
    "dice": "Dice",
    "nsd": "NSD",
    "hd95": "HD95 [mm]",
    "auroc": "AUROC",
    "accuracy": "accuracy",
    "auprc": "AUPRC",
}
# Metrics Reloaded: an overlap metric alone misses boundary errors, so a segmentation table carries one beside it
BOUNDARY_METRIC = "nsd"
# the margin of practical equivalence per metric when neither the suite nor the command line declares one
DEFAULT_MARGINS = {"dice": 0.01, "nsd": 0.01, "auroc": 0.01, "accuracy": 0.01, "auprc": 0.01, "hd95": 1.0}
# a perfect score and a chance score per metric, for normalising a task's scores before they are pooled
IDEAL = {"dice": 1.0, "nsd": 1.0, "auroc": 1.0, "accuracy": 1.0, "auprc": 1.0, "hd95": 0.0, "hd": 0.0}
CHANCE = {"auroc": 0.5, "dice": 0.0, "nsd": 0.0}
OVERALL_CLASS = -1
BACKGROUND_CLASS = 0
SET_CASE = re.compile(r"^(__set__|draw\d+)$")  # a classification "case" that is the whole test set
COMPARISONS_SUFFIX = "_comparisons.csv"  # published tests (p-values), beside <suite>.csv
COMPARISON_COLUMNS = [
    "budget",
    "task",
    "protocol",
    "label_fraction",
    "metric",
    "margin",
    "kind",
    "method",
    "other",
    "estimate",
    "low",
    "high",
    "p",
    "p_holm",
    "se",
    "df",
    "runs",
    "units",
    "ci_method",
    "verdict",
    "mde",
    "bayes_worse",
    "bayes_equivalent",
    "bayes_better",
]
MIN_CONTROL_RUNS = 4  # a method's runs split in two halves of two runs each at least


@dataclass(frozen=True)
class Options:
    """Statistical settings of a leaderboard (all stated in its header)."""

    baseline: str = "random"  # the method every other is compared with
    alpha: float = 0.05  # per comparison; the CSV adds Holm-adjusted p-values per table
    ci: float = 0.95
    n_resamples: int = 10_000  # bootstrap resamples for every bootstrap
    seed: int = 0  # the seed of every resampling
    margins: dict = field(default_factory=dict, hash=False)  # metric -> margin; DEFAULT_MARGINS fill the rest
    best_share: float = 0.05  # "could be best": best or within the margin in at least this share of resamples
    bayesian: bool = False  # also show the Bayesian signed-rank probabilities in the tables

    def margin(self, metric: str) -> float:
        return float({**DEFAULT_MARGINS, **self.margins}.get(metric, 0.0))


# ----------------------------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class Comparison:
    """A method against ``other`` over their matched runs; ``diff`` is oriented so that > 0 means the method is
    better."""

    other: str
    diff: stats.Difference
    verdict: str  # stats.verdict against the margin
    mde: float  # minimal detectable effect at the runs compared (80% power, alpha)
    p_holm: float = float("nan")  # Holm-adjusted over the table's comparisons with the baseline
    bayes: tuple[float, float, float] | None = None  # P(worse), P(within the margin), P(better)

    @property
    def marked(self) -> bool:
        return self.verdict in ("better", "worse")


@dataclass
class MethodRow:
    method: str
    mean: float
    ci: stats.Difference  # the run-level interval of the mean
    runs: int
    pretrain_seeds: tuple[int, ...]
    seeds: tuple[int, ...]
    cases: int
    per_class: dict[int, float]
    boundary: float  # mean NSD (segmentation) or AUPRC (set-level AUROC); NaN if none
    gpu_hours: float  # device-hours: wall time x processes, summed over the method's cells
    cpu_hours: float
    processes: tuple[int, ...]  # the distinct world sizes of its cells (a cell from before they were recorded: 1)
    per_device_batch: tuple[int, ...]  # the distinct per-process batches; () where a cell did not record one
    params: tuple[int, ...]
    leakage: bool
    missing: str  # "" when the method has every run and case of the table
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
    split: str  # how the runs were split
    comparison: Comparison


@dataclass
class Table:
    """One methods table: a (budget, task, protocol, label fraction) block."""

    budget: str
    task: Task
    protocol: str
    fraction: float
    rows: list[MethodRow]  # complete rows first, then by mean
    classes: list[int]  # per-class columns
    runs: int
    pretrain_seeds: tuple[int, ...]
    seeds: tuple[int, ...]
    cases: int
    patients: int | None  # patients the cases come from, when the task groups them
    draws: int
    margin: float
    run_scores: pd.DataFrame  # [run, method], oriented so that higher is better
    pairwise: dict[tuple[str, str], Comparison]  # (a, b) -> a against b, for a < b
    controls: list[Control]
    could_be_best: list[str]
    units: frozenset  # the test units' ids (cases or images), to find shared test sets
    collapsed: int = 0  # transfer seeds dropped as repeats of a deterministic protocol
    prevalence: float | None = None  # share of positive (image, class) labels, set-level tables
    unit: str = "cases"  # what the CIs resample: "cases", test "images" or "runs" only

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

    runs: dict[str, list[tuple[int, ...]]]  # method -> its runs (RUN keys), in the order of ``scores``
    scores: dict[str, np.ndarray]  # method -> [run, image, class]
    targets: np.ndarray  # [image, class] 0/1
    ids: list[str]  # image ids, in the order of the image axis

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
    methods: list[str]  # by mean rank, best first
    excluded: dict[str, list[str]]  # method -> the blocks it misses
    mean_ranks: dict[str, float]
    chi2: float
    p: float  # Friedman p-value (exact by enumeration, or Monte Carlo)
    p_kind: str  # "exact" | "monte carlo"
    pairwise: list[tuple[str, str, float, float]]  # (a, b, raw p, Holm p): Wilcoxon over blocks, a better if > 0
    testable: bool  # enough blocks for a pairwise test to reject at alpha
    shared: list[str]  # notes on blocks that share test subjects
    iqm: dict[str, tuple[float, float, float, int]]  # method -> (IQM, low, high, runs used) of normalised scores
    poi: pd.DataFrame  # P(row better than column), normalised scores
    poi_baseline: dict[str, tuple[float, float, float]]  # method -> (P(better than baseline), low, high)
    dropped: dict[str, list[str]]  # blocks left out -> the methods they have
    missing_primary: list[str]  # tasks whose primary table has no results in this budget


@dataclass
class Pretraining:
    """One encoder export and the compute of the pretraining that made it (None: not run by the harness)."""

    method: str
    export: str  # the pretraining's config hash
    device: str | None
    wall_s: float | None
    gpu_hours: float | None  # device-hours: wall time x processes
    cpu_hours: float | None
    processes: int | None  # 1 for a pretraining from before data-parallel training was recorded
    cells: int  # the section's cells that transferred this export
    objective: str | None = None  # what it optimised where the method settles that from its corpus (saca)


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
    rows: pd.DataFrame  # the result rows used (with their cells' provenance)
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
    for (*key, cls), v in (
        rows[rows["class"] != OVERALL_CLASS].groupby(KEYS + ["method", "class"], sort=True)["value"].mean().items()
    ):
        per_class.setdefault(tuple(key), {})[int(cls)] = float(v)
    boundary = {}
    if len(secondary):
        nsd = secondary[(secondary["metric"] == BOUNDARY_METRIC) & (secondary["class"] != OVERALL_CLASS)]
        boundary = {tuple(k): float(v) for k, v in nsd.groupby(KEYS + ["method"])["value"].mean().items()}
    cell_rows = all_rows.drop_duplicates("cell_id")
    compute = (
        cell_rows.assign(processes=world_sizes(cell_rows))
        .groupby(KEYS + ["method"], sort=True)
        .agg(
            gpu_hours=("gpu_hours", lambda s: s.sum(min_count=1)),
            cpu_hours=("cpu_hours", lambda s: s.sum(min_count=1)),
            processes=("processes", _distinct),
            per_device_batch=("per_device_batch", lambda s: _distinct(s) if s.notna().all() else ()),
            leakage=("leakage_override", "max"),
            params=("params", _distinct),
        )
    )
    groups = dict(iter(per_case.groupby(KEYS, sort=False)))
    sections = []
    for budget in sorted(per_case["budget"].unique()):
        tables = []
        for key in _ordered_keys(suite, groups):
            if key[0] != budget:
                continue
            task = suite.task(key[1])
            tables.append(
                _table(
                    key,
                    groups[key],
                    task,
                    per_class,
                    boundary,
                    compute,
                    options,
                    _image_scores(groups[key], pred_groups.get(key)),
                    collapsed.get(key, 0),
                )
            )
        across, note = _across(tables, suite, str(budget), options)
        sections.append(
            Section(str(budget), tables, across, note, _pretraining(cell_rows[cell_rows["budget"] == budget]))
        )
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
    tasks = pd.DataFrame(
        {
            "task": [t.name for t in suite.tasks],
            "metric": [t.metric for t in suite.tasks],
            "kind": [t.kind for t in suite.tasks],
        }
    )
    unknown = sorted(set(mine["task"].unique()) - set(tasks["task"]))
    if unknown:
        ignored.append(
            f"{mine[mine['task'].isin(unknown)]['cell_id'].nunique()} cells of tasks not in "
            f"v{suite.version}: {', '.join(unknown)}"
        )
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


def _distinct(s: pd.Series) -> tuple[int, ...]:
    return tuple(sorted({int(v) for v in s.dropna()}))


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
    for c in (
        "wall_s",
        "gpu_hours",
        "cpu_hours",
        "params",
        "pretrain_wall_s",
        "pretrain_gpu_hours",
        "pretrain_cpu_hours",
    ):
        info[c] = pd.to_numeric(info[c], errors="coerce").astype(float)
    for c in ("world_size", "per_device_batch", "pretrain_world_size"):  # counts: published as 2, not 2.0
        info[c] = pd.to_numeric(info[c], errors="coerce").astype("Int64")
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
        processes = world_sizes(g.iloc[:1], pretrain=True).iloc[0]

        def value(c: str) -> float | None:  # called in this iteration only
            return None if pd.isna(first[c]) else float(first[c])  # noqa: B023

        out.append(
            Pretraining(
                str(method),
                str(export),
                None if pd.isna(first["pretrain_device"]) else str(first["pretrain_device"]),
                value("pretrain_wall_s"),
                value("pretrain_gpu_hours"),
                value("pretrain_cpu_hours"),
                None if pd.isna(processes) else int(processes),
                len(g),
                None
                if "pretrain_objective" not in g or pd.isna(first["pretrain_objective"])
                else str(first["pretrain_objective"]) or None,
            )
        )
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
        if self.set_level:  # the whole test set, or few-shot draws within a run: one score per run
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
            d = stats.set_run_mean(
                self.images.scores[method],
                self.images.targets,
                groups=self.image_groups,
                ci=o.ci,
                n_resamples=o.n_resamples,
                seed=o.seed,
            )
        else:
            d = stats.run_mean(self.matrix(method), groups=self.groups, ci=o.ci, n_resamples=o.n_resamples, seed=o.seed)
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
            d = stats.set_run_difference(
                both[0],
                both[1],
                self.images.targets,
                groups=self.image_groups,
                ci=o.ci,
                n_resamples=o.n_resamples,
                seed=o.seed,
            )
            per_run = np.atleast_1d(
                stats.mean_auroc(both[0], self.images.targets) - stats.mean_auroc(both[1], self.images.targets)
            )
            return d, per_run
        theirs = set(self.runs(b))
        common = [r for r in self.runs(a) if r in theirs]
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
            first = set(pre[: len(pre) // 2])
            a = [r for r in runs if r[0] in first]
            b = [r for r in runs if r[0] not in first]
            how = "pretraining seeds " + _ints(sorted(first)) + " vs " + _ints(pre[len(pre) // 2 :])
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
            d = stats.set_run_difference(
                x, y, self.images.targets, groups=self.image_groups, ci=o.ci, n_resamples=o.n_resamples, seed=o.seed
            )
            return (
                d,
                np.atleast_1d(stats.mean_auroc(x, self.images.targets) - stats.mean_auroc(y, self.images.targets)),
                how,
            )
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
            return stats.set_bootstrap_means(
                matched, self.images.targets, groups=self.image_groups, n_resamples=o.n_resamples, seed=o.seed
            )
        return stats.hierarchical_bootstrap_means(
            [self.matrix(m) for m in methods], groups=self.groups, n_resamples=o.n_resamples, seed=o.seed
        )


def _compare(d: stats.Difference, other: str, margin: float, alpha: float) -> Comparison:
    df = d.df if d.interval == "t" else np.inf
    mde = stats.minimal_detectable_effect(d.se, df, alpha=alpha) if np.isfinite(d.se) else float("nan")
    return Comparison(other, d, stats.verdict(d.low, d.high, margin), float(mde))


def _bayes(per_run: np.ndarray, margin: float, seed: int) -> tuple[float, float, float] | None:
    per_run = per_run[np.isfinite(per_run)]
    if per_run.size < 2:
        return None
    worse, equivalent, better = stats.bayes_signed_rank(per_run, margin, seed=seed)
    return float(worse), float(equivalent), float(better)


def _table(
    key: tuple,
    g: pd.DataFrame,
    task: Task,
    per_class: dict[tuple, dict[int, float]],
    boundary: dict[tuple, float],
    compute: pd.DataFrame,
    opts: Options,
    images: ImageScores | None = None,
    collapsed: int = 0,
) -> Table:
    budget, _, protocol, fraction = key
    margin = opts.margin(task.metric)
    data = _Runs(g, task, images, opts)
    all_runs = g[RUN].drop_duplicates()
    all_cases = data.wide.shape[1]
    methods = sorted(g["method"].unique())
    auprc = (
        {m: float(np.mean(stats.average_precision(images.scores[m], images.targets))) for m in methods}
        if images is not None
        else {}
    )
    rows = []
    for method in methods:
        mat = data.wide.loc[method]
        runs = mat.index.to_frame(index=False)
        complete_cases = int(mat.notna().all().sum())
        ci = data.mean_ci(method)
        c = compute.loc[key + (method,)]
        seeds = tuple(int(s) for s in sorted(runs["seed"].unique()))
        rows.append(
            MethodRow(
                method=method,
                mean=float(ci.estimate),
                ci=ci,
                runs=len(runs),
                pretrain_seeds=tuple(int(s) for s in sorted(runs["pretrain_seed"].unique())),
                seeds=seeds,
                cases=images.images if images is not None else complete_cases,
                per_class=per_class.get(key + (method,), {}),
                boundary=auprc.get(method, boundary.get(key + (method,), float("nan"))),
                gpu_hours=float(c["gpu_hours"]),
                cpu_hours=float(c["cpu_hours"]),
                processes=c["processes"],
                per_device_batch=c["per_device_batch"],
                params=c["params"],
                leakage=bool(c["leakage"]),
                missing=_missing(len(runs), len(all_runs), complete_cases, all_cases, data.set_level),
            )
        )
    sign = data.sign
    # a method with fewer runs is never ranked on a mean over other runs: complete rows come first
    rows.sort(key=lambda r: (bool(r.missing), -sign * r.mean, r.method))
    pairwise: dict[tuple[str, str], Comparison] = {}
    per_run: dict[tuple[str, str], np.ndarray] = {}
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
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
            if r.method != pair[0]:  # stored as base - method
                d = d._replace(estimate=-d.estimate, low=-d.high, high=-d.low)
                runs_d = -runs_d
            r.vs_baseline = replace(_compare(d, base, margin, opts.alpha), bayes=_bayes(runs_d, margin, opts.seed))
            tested.append((r, r.vs_baseline))
        raw = np.array([vs.diff.p for _, vs in tested], dtype=float)
        adjusted = np.full(len(raw), np.nan)
        ok = np.isfinite(raw)
        if ok.any():
            adjusted[ok] = np.asarray(stats.holm(raw[ok]), dtype=float)
        for (r, vs), p in zip(tested, adjusted):
            r.vs_baseline = replace(vs, p_holm=float(p))
    complete = [r for r in rows if not r.missing]
    could_be_best: list[str] = []
    if len(complete) >= 2:
        boots = data.bootstrap_means([r.method for r in complete])
        if boots is not None:
            _, p_best = stats.rank_probabilities(np.asarray(boots), margin=margin)
            for r, p in zip(complete, np.asarray(p_best)):
                r.p_best = float(p)
            could_be_best = [r.method for r in complete if r.p_best >= opts.best_share]
    controls = []
    for m in methods:
        halves = data.control(m)
        if halves is not None:
            d, _, how = halves
            controls.append(Control(m, how, _compare(d, m, margin, opts.alpha)))
    classes = sorted(set().union(*(r.per_class for r in rows)))
    run_scores = data.wide.mean(axis=1).mul(sign).unstack("method") if len(data.wide) else pd.DataFrame()
    if images is not None:  # a set-level score per run: the AUROC of the run's predictions
        run_scores = pd.DataFrame(
            {
                m: pd.Series(
                    np.atleast_1d(stats.mean_auroc(images.scores[m], images.targets)),
                    index=pd.MultiIndex.from_tuples(images.runs[m], names=RUN),
                )
                for m in methods
            }
        )
    units = (
        frozenset(images.ids)
        if images is not None
        else (frozenset() if data.set_level else frozenset(str(c) for c in data.wide.columns))
    )
    patients = None
    if images is not None and data.image_groups is not None:
        patients = len(set(data.image_groups))
    elif data.groups is not None:
        patients = len(set(data.groups))
    return Table(
        budget=str(budget),
        task=task,
        protocol=str(protocol),
        fraction=float(fraction),
        rows=rows,
        classes=classes if len(classes) > 1 else [],
        runs=len(all_runs),
        pretrain_seeds=tuple(int(s) for s in sorted(all_runs["pretrain_seed"].unique())),
        seeds=tuple(int(s) for s in sorted(all_runs["seed"].unique())),
        cases=images.images if images is not None else all_cases,
        patients=patients,
        draws=int(all_runs["draw"].nunique()),
        margin=margin,
        run_scores=run_scores,
        pairwise=pairwise,
        controls=controls,
        could_be_best=could_be_best,
        units=units,
        collapsed=collapsed,
        prevalence=float(images.targets.mean()) if images is not None else None,
        unit="images" if images is not None else "runs" if data.set_level else "cases",
    )


def _image_scores(g: pd.DataFrame, preds: pd.DataFrame | None) -> ImageScores | None:
    """The table's per-image predictions when it is set-level (one stored case per run) and every run stored
    them; None otherwise (the table then has run-level scores only)."""
    if preds is None or preds.empty or g["case_id"].nunique() != 1:
        return None
    runs = g[["method", *RUN]].drop_duplicates().sort_values(["method", *RUN])
    wide = {
        m: preds[preds["metric"] == m].pivot_table(
            index=["method", *RUN], columns=["case_id", "class"], values="value", aggfunc="first"
        )
        for m in PREDICTION_METRICS
    }
    index = pd.MultiIndex.from_frame(runs)
    if not all(index.isin(w.index).all() for w in wide.values()):
        return None
    score = wide[PRED_SCORE].loc[index]
    target = wide[PRED_TARGET].reindex(index=index, columns=score.columns)
    ok = score.notna().all() & target.notna().all()  # (image, class) columns every run has
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
    return ImageScores(
        runs={m: [keys[i] for i in ix] for m, ix in by_method.items()},
        scores={m: s[ix] for m, ix in by_method.items()},
        targets=t[0],
        ids=[str(i) for i in images],
    )


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


def _row_mean(t: Table, method: str) -> float:
    """The mean of a method that has a row in ``t``."""
    r = t.row(method)
    assert r is not None
    return r.mean


def _baseline_mean(t: Table, baseline: str) -> float | None:
    r = t.row(baseline)
    return r.mean if r else None


def _across(tables: list[Table], suite: Suite, budget: str, opts: Options) -> tuple[Across | None, str]:
    primary = {(t.name, *t.primary_table): t for t in suite.tasks}
    chosen = [t for t in tables if (t.task.name, t.protocol, t.fraction) in primary]
    missing = [
        f"{name} ({p} / {_pct(f)})"
        for (name, p, f) in primary
        if not any((t.task.name, t.protocol, t.fraction) == (name, p, f) for t in tables)
    ]
    if len(suite.tasks) < 2:
        return None, (
            "Across tasks: the suite has one task, so there is nothing to aggregate; each table above "
            "stands on its own."
        )
    if len(chosen) < 2:
        return None, (
            "Across tasks: fewer than two tasks have results in their primary table "
            f"(declared before results: {', '.join(f'{n} {p} / {_pct(f)}' for n, p, f in primary)}), so "
            "there is nothing to aggregate."
        )
    kept, included = _complete_blocks(chosen)
    if not kept:
        return None, "Across tasks skipped: no two methods have results in two or more primary tables."
    dropped = {t.label: sorted(r.method for r in t.rows) for t in chosen if all(t is not k for k in kept)}
    labels = [t.label for t in kept]
    methods = sorted({r.method for t in chosen for r in t.rows})
    excluded = {m: [t.label for t in kept if t.row(m) is None] for m in methods if m not in included}
    n = len(kept)
    # ranks per block on the means, ties within the metric's margin
    raw = np.array([[t.sign * _row_mean(t, m) for m in included] for t in kept])
    ranks = np.array([margin_ranks(raw[i], kept[i].margin) for i in range(n)])
    chi2, p, how = stats.friedman_exact(-ranks, seed=opts.seed)
    mean_ranks = dict(zip(included, ranks.mean(0).tolist()))
    order = sorted(included, key=lambda m: (mean_ranks[m], m))
    norm = np.array(
        [[normalised(_row_mean(t, m), _baseline_mean(t, opts.baseline), t.task.metric) for m in included] for t in kept]
    )
    testable = n >= 1 and 2.0 / 2**n <= opts.alpha
    pairs = []
    if testable:
        found = []
        for i, a in enumerate(included):
            for j, b in enumerate(included[i + 1 :], start=i + 1):
                d = norm[:, i] - norm[:, j]
                found.append((a, b, float(stats.paired_wilcoxon(norm[:, i], norm[:, j])[1]), float(np.nanmean(d))))
        adj: np.ndarray | list[float] = stats.holm(np.array([f[2] for f in found])) if found else []
        pairs = [
            (a, b, praw, float(pa)) if dm >= 0 else (b, a, praw, float(pa)) for (a, b, praw, dm), pa in zip(found, adj)
        ]
    shared = _shared_tests(kept)
    # per-run normalised scores [run, block] per method; runs missing from any block are left out
    runs = {}
    for m in included:
        cols = []
        for t in kept:
            base_mean = _baseline_mean(t, opts.baseline)
            s = t.run_scores[m] * t.sign if m in t.run_scores else pd.Series(dtype=float)
            cols.append(
                s.groupby(level=["pretrain_seed", "seed"])
                .mean()
                .map(lambda v, t=t, b=base_mean: normalised(v, b, t.task.metric))
            )
        runs[m] = pd.concat(cols, axis=1).dropna()
    iqm = {}
    for m in order:
        x = runs[m].to_numpy()
        if x.size:
            low, high = stats.stratified_bootstrap_ci(
                x, aggregate=stats.iqm, n_resamples=opts.n_resamples, ci=opts.ci, seed=opts.seed
            )
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
                low, high = stats.probability_of_improvement_ci(
                    runs[m].to_numpy(), y, n_resamples=opts.n_resamples, ci=opts.ci, seed=opts.seed
                )
                poi_baseline[m] = (float(poi.loc[m, opts.baseline]), float(low), float(high))
    return Across(
        labels,
        order,
        excluded,
        mean_ranks,
        float(chi2),
        float(p),
        str(how),
        pairs,
        testable,
        shared,
        iqm,
        poi,
        poi_baseline,
        dropped,
        missing,
    ), ""


def _shared_tests(tables: list[Table]) -> list[str]:
    """Notes on blocks whose test units overlap (the same subjects or images under different tasks)."""
    out = []
    for i, a in enumerate(tables):
        for b in tables[i + 1 :]:
            both = a.units & b.units
            if both:
                out.append(f"{a.label} and {b.label} share {len(both)} test ids")
            elif not a.units or not b.units:
                if a.task.dataset == b.task.dataset:
                    out.append(f"{a.label} and {b.label} are tasks of the same dataset `{a.task.dataset}`")
    return out


def comparisons(lb: Leaderboard) -> pd.DataFrame:
    """Every comparison of a leaderboard as rows: against the baseline (with Holm-adjusted p), between every pair
    of methods (the significance map) and the negative controls."""
    out = []
    for s in lb.sections:
        for t in s.tables:
            key = {
                "budget": s.budget,
                "task": t.task.name,
                "protocol": t.protocol,
                "label_fraction": t.fraction,
                "metric": t.task.metric,
                "margin": t.margin,
            }

            def row(kind: str, method: str, c: Comparison) -> dict:
                d = c.diff
                b = c.bayes or (np.nan, np.nan, np.nan)
                # called in this iteration only, so the loop's current key is the one meant
                return key | {  # noqa: B023
                    "kind": kind,
                    "method": method,
                    "other": c.other,
                    "estimate": d.estimate,
                    "low": d.low,
                    "high": d.high,
                    "p": d.p,
                    "p_holm": c.p_holm,
                    "se": d.se,
                    "df": d.df,
                    "runs": d.runs,
                    "units": d.units,
                    "ci_method": d.interval,
                    "verdict": c.verdict,
                    "mde": c.mde,
                    "bayes_worse": b[0],
                    "bayes_equivalent": b[1],
                    "bayes_better": b[2],
                }

            out += [row("baseline", r.method, r.vs_baseline) for r in t.rows if r.vs_baseline is not None]
            out += [row("pair", a, c) for (a, _), c in sorted(t.pairwise.items())]
            out += [row("control", c.method, c.comparison) for c in t.controls]
    return pd.DataFrame(out, columns=COMPARISON_COLUMNS)


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}% labels"


def _ints(xs) -> str:
    return ", ".join(str(x) for x in xs)
