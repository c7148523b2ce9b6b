"""Leaderboard rendering: golden file, significance and partial-data marks, provenance, publish round trip.

The golden test renders tests/data/leaderboard_fixture.csv with stand-in statistics (``StandInStats``: the
``bench.stats`` signatures with trivial, deterministic bodies), so it pins the rendering and not the internals of
``bench.stats``; the other tests use the real ``bench.stats`` and check only behaviour.

    UPDATE_GOLDEN=1 pytest tests/test_leaderboard.py     # rewrite tests/data/leaderboard_golden.md
    UPDATE_FIXTURE=1 pytest tests/test_leaderboard.py    # regenerate the fixture (seed 0), then the golden file
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import leaderboard
from bench import stats as _stats
from bench.leaderboard.analysis import _complete_blocks
from bench.results import CELL_INFO_COLUMNS, IMPORTED_HASH, ResultsStore, from_csv, import_published
from bench.suites import Suite, Task

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "leaderboard_fixture.csv"
GOLDEN = DATA / "leaderboard_golden.md"
NOW = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)
GIT = "0123456789ab"
CLASS_NAMES = {"organs": {1: "liver", 2: "spleen", 3: "kidney"}}

SUITE = Suite(
    name="fixture",
    version=1,
    synthetic=True,
    pretrain_dataset="fixture_ct",
    description="leaderboard test fixture",
    tasks=(
        Task("organs", "fixture_ct", "segmentation", ("finetune",), (0.25, 1.0), "dice"),
        Task("nodule", "fixture_cls", "classification", ("linear_probe",), (1.0,), "accuracy"),
    ),
    seeds=(0, 1, 2),
)


def make_fixture(path: Path, seed: int = 0) -> None:
    """4 methods (asa clearly better than random, mae better but without seed 2 on organs at 100%, simmim3d like
    random and with a leakage override on one nodule cell), 2 tasks, 3 seeds, 8 cases, 3 classes; per-class Dice
    for organs (at 25% and 100% labels), per-case accuracy (class -1) for nodule."""
    rng = np.random.default_rng(seed)
    effect = {"asa": 0.15, "mae": 0.06, "random": 0.0, "simmim3d": 0.0}
    p_correct = {"asa": 0.9, "mae": 0.75, "random": 0.55, "simmim3d": 0.55}
    pretrain = {"asa": 5400.0, "mae": 1800.0, "random": None, "simmim3d": 900.0}  # pretraining wall seconds
    params = {"asa": 62_187_296, "mae": 61_990_112, "random": 62_187_296, "simmim3d": 62_187_296}
    difficulty = rng.uniform(0.45, 0.75, 8)
    class_offset = np.array([0.05, -0.03, -0.02])
    rows = []
    for method in sorted(effect):
        for task, protocol, fraction in (
            ("organs", "finetune", 0.25),
            ("organs", "finetune", 1.0),
            ("nodule", "linear_probe", 1.0),
        ):
            for s in range(3):
                if method == "mae" and task == "organs" and fraction == 1.0 and s == 2:
                    continue
                cell = {
                    "suite": "fixture",
                    "suite_version": 1,
                    "task": task,
                    "method": method,
                    "protocol": protocol,
                    "label_fraction": fraction,
                    "draw": 0,
                    "seed": s,
                    "budget": "quick",
                    "leakage_override": int(method == "simmim3d" and task == "nodule" and s == 0),
                    "cell_id": f"{method}/{task}/f{fraction:g}/s{s}",
                    "git_sha": "0f9e8d7c6b5a" if method == "mae" else "1a2b3c4d5e6f",
                    "device": "cpu (2 cores)",
                    "start_time": f"2026-01-01T0{s}:00:00+00:00",
                    "end_time": f"2026-01-01T0{s}:10:00+00:00",
                    "wall_s": 600.0,
                    "gpu_hours": 0.0,
                    "cpu_hours": 600.0 / 3600,
                    "params": params[method],
                    "pretrain_hash": f"{method}0123456789"[:16],
                    "pretrain_wall_s": pretrain[method],
                    **(
                        {
                            "pretrain_device": "cpu (2 cores)",
                            "pretrain_gpu_hours": 0.0,
                            "pretrain_cpu_hours": pretrain[method] / 3600,
                        }
                        if pretrain[method]
                        else {}
                    ),
                }
                for c in range(8):
                    case = f"case{c:03d}"
                    if task == "nodule":
                        rows.append(
                            cell
                            | {
                                "case_id": case,
                                "class": -1,
                                "metric": "accuracy",
                                "value": float(rng.random() < p_correct[method]),
                            }
                        )
                        continue
                    dice = np.clip(
                        difficulty[c] + class_offset + effect[method] - 0.08 * (fraction < 1) + rng.normal(0, 0.04, 3),
                        0,
                        1,
                    )
                    for k in range(3):
                        rows.append(
                            cell
                            | {"case_id": case, "class": k + 1, "metric": "dice", "value": round(float(dice[k]), 6)}
                        )
    pd.DataFrame(rows).to_csv(path, index=False)


class StandInStats:
    """The bench.stats API the leaderboard calls, with trivial deterministic bodies where the real one resamples
    (not statistics): the golden file pins the rendering. Pure arithmetic (verdict, Holm, IQM, AUROC) is the real
    one."""

    Difference = _stats.Difference
    BOOTSTRAP_MIN_RUNS = _stats.BOOTSTRAP_MIN_RUNS
    verdict = staticmethod(_stats.verdict)
    minimal_detectable_effect = staticmethod(_stats.minimal_detectable_effect)
    holm = staticmethod(_stats.holm)
    iqm = staticmethod(_stats.iqm)
    mean_auroc = staticmethod(_stats.mean_auroc)
    average_precision = staticmethod(_stats.average_precision)
    probability_of_improvement = staticmethod(_stats.probability_of_improvement)

    @staticmethod
    def run_mean(scores, groups=None, ci=0.95, method="auto", n_resamples=10_000, seed=0):
        x = np.asarray(scores, float)
        x = x[:, ~np.isnan(x).any(0)]
        runs = x.mean(1)
        if len(runs) < 2:
            return _stats.Difference(
                float(x.mean()), np.nan, np.nan, np.nan, np.nan, np.nan, len(runs), x.shape[1], "none"
            )
        se = float(runs.std() + 0.01)
        return _stats.Difference(
            float(x.mean()),
            float(runs.min() - se),
            float(runs.max() + se),
            float(np.exp(-abs(x.mean()) / se)),
            se,
            float(len(runs) - 1),
            len(runs),
            x.shape[1],
            "t",
        )

    @classmethod
    def paired_run_difference(cls, a, b, groups=None, ci=0.95, method="auto", n_resamples=10_000, seed=0):
        return cls.run_mean(np.asarray(a, float) - np.asarray(b, float))

    @staticmethod
    def bayes_signed_rank(d, rope, prior_strength=1.0, n_samples=50_000, seed=0):
        up = float(np.mean(np.asarray(d) > rope))
        return (0.0, 1.0 - up, up)

    @staticmethod
    def friedman_exact(scores, lower_is_better=False, max_enumeration=2_000_000, n_permutations=200_000, seed=0):
        return float(np.var(np.asarray(scores).mean(0))), 0.5, "exact"

    @staticmethod
    def hierarchical_bootstrap_means(scores, groups=None, n_resamples=10_000, seed=0):
        return np.stack([np.linspace(np.nanmin(s), np.nanmax(s), 50) for s in scores])

    @staticmethod
    def rank_probabilities(boots, lower_is_better=False, margin=0.0):
        b = np.asarray(boots)
        best = (b.max(0, keepdims=True) - b) <= margin
        return np.zeros((len(b), len(b))), best.mean(1)

    @staticmethod
    def paired_wilcoxon(a, b, alternative="two-sided"):
        d = np.asarray(a) - np.asarray(b)
        return float(np.abs(d).sum()), float(np.exp(-4 * abs(d.mean()) / (d.std() + 1e-9)))

    @staticmethod
    def stratified_bootstrap_ci(scores, aggregate=None, n_resamples=10_000, ci=0.95, seed=0):
        return float(np.min(scores)), float(np.max(scores))

    @staticmethod
    def probability_of_improvement_ci(x, y, n_resamples=10_000, ci=0.95, seed=0):
        return 0.0, 1.0


def fixture_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    if os.environ.get("UPDATE_FIXTURE") == "1":
        make_fixture(FIXTURE)
    return from_csv(FIXTURE)


def render(metrics: pd.DataFrame, cells: pd.DataFrame, suite: Suite = SUITE, **kwargs) -> str:
    return leaderboard.render(
        suite, metrics, cells, now=NOW, git=GIT, class_names=kwargs.pop("class_names", {}), **kwargs
    )


def table_rows(md: str, heading: str) -> dict[str, list[str]]:
    """method -> cells of the methods table under ``### heading`` (marks stripped from the method name)."""
    section = md.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    out = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0].strip("*").split()[0].strip("*")] = cells
    return out


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return fixture_frames()


@pytest.fixture(scope="module")
def real_md(frames) -> str:
    return render(*frames, class_names=CLASS_NAMES)


def test_golden_markdown(frames, monkeypatch):
    monkeypatch.setattr(leaderboard.analysis, "stats", StandInStats)
    md = render(*frames, class_names=CLASS_NAMES, figures=True)
    if os.environ.get("UPDATE_GOLDEN") == "1" or os.environ.get("UPDATE_FIXTURE") == "1":
        GOLDEN.write_text(md, encoding="utf-8")
    assert md == GOLDEN.read_text(encoding="utf-8"), "leaderboard Markdown changed; UPDATE_GOLDEN=1 rewrites it"


def test_csv_published_before_pretraining_compute_renders_without_that_table(frames, tmp_path, monkeypatch):
    monkeypatch.setattr(leaderboard.analysis, "stats", StandInStats)
    old = tmp_path / "old.csv"
    fixture = pd.read_csv(FIXTURE)
    fixture.drop(columns=[c for c in CELL_INFO_COLUMNS if c.startswith("pretrain_") and c in fixture]).to_csv(
        old, index=False
    )
    md = render(*from_csv(old), class_names=CLASS_NAMES, figures=True)
    golden = GOLDEN.read_text(encoding="utf-8")
    before, rest = golden.split("### Pretraining compute\n", 1)
    assert md == before + "### " + rest.split("\n### ", 1)[1]


def _frame(
    values: dict[str, np.ndarray],
    pretrain: list[int] | None = None,
    task: str = "organs",
    protocol: str = "finetune",
    suite: str = "fixture",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One segmentation task from per-method value arrays [run, case, class]; run r has transfer seed r and
    pretraining seed ``pretrain[r]`` (0 without ``pretrain``)."""
    rows = []
    for method, v in values.items():
        for s, c, k in np.ndindex(v.shape):
            p = pretrain[s] if pretrain else 0
            rows.append(
                {
                    "suite": suite,
                    "suite_version": 1,
                    "task": task,
                    "method": method,
                    "protocol": protocol,
                    "label_fraction": 1.0,
                    "draw": 0,
                    "pretrain_seed": p,
                    "seed": s,
                    "budget": "quick",
                    "leakage_override": 0,
                    "cell_id": f"{method}/{task}/{protocol}/s{s}/p{p}",
                    "case_id": f"c{c:02d}",
                    "class": k + 1,
                    "metric": "dice",
                    "value": float(v[s, c, k]),
                }
            )
    m = pd.DataFrame(rows)
    cells = m.drop_duplicates("cell_id")[["cell_id"]].assign(
        git_sha="abc", device="cpu", gpu_hours=0.0, cpu_hours=0.1, params=1000
    )
    return m, cells


def _column(md: str, heading: str, name: str) -> dict[str, str]:
    """method -> its cell in column ``name`` of the methods table under ``### heading``."""
    rows = table_rows(md, heading)
    header = md.split(f"### {heading}\n", 1)[1].split("| method |", 1)[1].splitlines()[0]
    col = [c.strip() for c in ("method |" + header).strip("|").split("|")].index(name)
    return {m: r[col] for m, r in rows.items()}


def _verdicts(md: str, heading: str = "organs / finetune / 100% labels") -> dict[str, str]:
    return _column(md, heading, "verdict")


def _runs(rng, n_runs: int, n_cases: int = 12, sd_run: float = 0.03, shift: float = 0.0) -> np.ndarray:
    """Per-case Dice [run, case, class] with a case effect shared by every run and method, a run effect and noise."""
    case = np.linspace(0.35, 0.75, n_cases)[None, :, None]
    return case + shift + rng.normal(0, sd_run, (n_runs, 1, 1)) + rng.normal(0, 0.01, (n_runs, n_cases, 2))


def test_better_method_is_better_and_a_copy_of_the_baseline_is_equivalent():
    rng = np.random.default_rng(1)
    base = _runs(rng, 3)
    md = render(
        *_frame({"random": base, "better": _runs(rng, 3, shift=0.2), "copy": base + rng.normal(0, 0.0005, base.shape)})
    )
    v = _verdicts(md)
    assert v == {"better": "better", "copy": "equivalent", "random": "baseline"}
    assert "margin of practical equivalence ±0.01" in md and "Holm" in md


def test_one_run_per_method_is_too_few_to_test_however_large_the_difference():
    # with one training run per method a per-case test marks any two differently trained networks
    rng = np.random.default_rng(2)
    md = render(*_frame({"random": _runs(rng, 1), "other": _runs(rng, 1, shift=0.1)}))
    assert _verdicts(md)["other"] == "too few runs to test"
    assert table_rows(md, "organs / finetune / 100% labels")["other"][2] == "— (1 run)"


def test_a_method_ahead_in_two_runs_and_behind_in_one_is_not_marked():
    # measured on abdomen (quick): ASA below random at seeds 0 and 1, above at seed 2, and the old pooled Wilcoxon
    # over the 60 (seed, case) pairs said p < 1e-4; over three runs nothing can be concluded
    rng = np.random.default_rng(3)
    base = rng.uniform(0.4, 0.7, (3, 12, 2))
    shift = np.array([0.05, 0.05, -0.02])[:, None, None]
    assert _stats.paired_wilcoxon((base + shift).ravel(), base.ravel())[1] < 1e-4
    assert _verdicts(render(*_frame({"random": base, "flaky": base + shift})))["flaky"] == "inconclusive"


def test_identical_methods_are_marked_at_about_alpha():
    # the statistic judged by how it behaves when there is no difference: the run effect decides the scores
    rng = np.random.default_rng(4)
    opts = leaderboard.Options(n_resamples=200)
    marks = 0
    n = 80
    for _ in range(n):
        m, cells = _frame({"random": _runs(rng, 3), "same": _runs(rng, 3)})
        (table,) = leaderboard.analyse(SUITE, m, cells, opts).sections[0].tables
        marks += table.row("same").vs_baseline.marked
    assert marks / n <= 0.15  # nominal 0.05; the pooled Wilcoxon marked 57-79% of such tables


def test_the_bayesian_view_is_offered_with_the_same_margin():
    rng = np.random.default_rng(6)
    # a Dice lies in [0, 1]: the store and the board refuse anything else
    frames = _frame({"random": _runs(rng, 4), "better": np.clip(_runs(rng, 4, shift=0.2), 0, 1)})
    md = render(*frames, options=leaderboard.Options(bayesian=True))
    header = md.split("| method |", 1)[1].splitlines()[0]
    assert "Bayes P(worse / equiv. / better)" in header
    cells = table_rows(md, "organs / finetune / 100% labels")["better"]
    worse, equiv, better = (
        float(v)
        for v in cells[header.strip("|").split("|").index(" Bayes P(worse / equiv. / better) ") + 1].split(" / ")
    )
    assert better > 0.9 and worse + equiv + better == pytest.approx(1.0, abs=0.011)
    assert "Bayes" not in render(*frames)


def test_the_pretraining_seed_is_part_of_a_run():
    rng = np.random.default_rng(5)
    one = render(*_frame({"random": _runs(rng, 3), "asa": _runs(rng, 3)}))
    assert "One pretraining run per method" in one and "| pretraining runs | one per method" in one
    two = _frame({"random": _runs(rng, 3), "asa": _runs(rng, 3)}, pretrain=[0, 1, 2])
    lb = leaderboard.analyse(SUITE, *two)
    (table,) = lb.sections[0].tables
    assert table.runs == 3 and table.pretrain_seeds == (0, 1, 2)
    md = leaderboard.markdown(lb, now=NOW, git=GIT)
    assert "One pretraining run per method" not in md and "| pretraining runs | pretraining seeds 0, 1, 2 |" in md
    # the same transfer seed under two pretraining seeds: two runs, not one
    m, cells = _frame({"random": _runs(rng, 2), "asa": _runs(rng, 2)}, pretrain=[0, 1])
    m = m.assign(seed=0)
    (table,) = leaderboard.analyse(SUITE, m, cells).sections[0].tables
    assert table.runs == 2 and table.row("asa").runs == 2


def test_margin_ranks_tie_methods_within_the_margin():
    assert leaderboard.margin_ranks(np.array([0.5, 0.495, 0.4]), 0.01).tolist() == [1.5, 1.5, 3.0]
    assert leaderboard.margin_ranks(np.array([0.5, 0.495, 0.4]), 0.0).tolist() == [1.0, 2.0, 3.0]
    # a chain of small steps does not tie everything: the group is measured from its first member
    assert leaderboard.margin_ranks(np.array([0.50, 0.494, 0.488, 0.482]), 0.01).tolist() == [1.5, 1.5, 3.5, 3.5]


def test_normalised_scores_are_the_share_of_the_gap_to_perfect():
    assert leaderboard.normalised(0.6, 0.5, "dice") == pytest.approx(0.2)
    assert leaderboard.normalised(10.0, 20.0, "hd95") == pytest.approx(0.5)  # lower is better
    assert leaderboard.normalised(0.75, None, "auroc") == pytest.approx(0.5)  # chance without a baseline
    assert leaderboard.normalised(0.4, 0.5, "dice") < 0


def test_method_with_fewer_runs_is_listed_after_the_complete_ones_and_not_in_p_best():
    # seed 1 is easy for every method: a method run only on seed 1 has a higher mean without being better
    rng = np.random.default_rng(5)
    base = rng.uniform(0.3, 0.4, (3, 12, 2)) + np.array([0.0, 0.3, 0.0])[:, None, None]
    lb = leaderboard.analyse(SUITE, *_frame({"random": base, "partial": base[1:2] + 0.02}))
    (table,) = lb.sections[0].tables
    assert [r.method for r in table.rows] == ["random", "partial"]
    assert np.isnan(table.row("partial").p_best) and table.row("partial").missing == "1 of 3 runs"


def test_method_with_fewer_seeds_is_marked(real_md):
    full = table_rows(real_md, "organs / finetune / 100% labels")
    assert leaderboard.MARK_PARTIAL in full["mae"][0]
    assert "mae: 2 of 3 runs" in real_md
    quarter = table_rows(real_md, "organs / finetune / 25% labels")
    assert leaderboard.MARK_PARTIAL not in quarter["mae"][0]


def test_leakage_override_is_marked(real_md):
    nodule = table_rows(real_md, "nodule / linear_probe / 100% labels")
    assert leaderboard.MARK_LEAKAGE in nodule["simmim3d"][0]
    assert leaderboard.MARK_LEAKAGE not in nodule["random"][0]
    assert "`leakage_override`" in real_md


def test_title_states_data_source_and_budget(frames):
    md = render(*frames)
    assert md.splitlines()[0] == "# fixture v1 leaderboard — synthetic data, budget quick"
    real = Suite(**{**SUITE.__dict__, "synthetic": False})
    assert render(*frames, suite=real).splitlines()[0] == "# fixture v1 leaderboard — real data, budget quick"
    assert "| generated | 2026-01-02 03:04 UTC at commit `0123456789ab` |" in md
    assert "`0f9e8d7c6b5a` (" in md and "`1a2b3c4d5e6f` (" in md and "`cpu (2 cores)` (35 cells)" in md


def test_no_results_renders_a_stub(frames):
    metrics, cells = frames
    md = render(metrics.iloc[:0], cells.iloc[:0])
    assert md.splitlines()[0] == "# fixture v1 leaderboard — synthetic data, no results"
    assert md.endswith("No results yet for this suite version.\n")


def test_budgets_are_never_pooled(frames):
    metrics, cells = frames
    standard = metrics.assign(
        budget="standard", cell_id=metrics["cell_id"] + "+std", value=np.clip(metrics["value"] + 0.2, 0, 1)
    )
    cells2 = pd.concat([cells, cells.assign(cell_id=cells["cell_id"] + "+std")])
    md = render(pd.concat([metrics, standard]), cells2)
    assert md.splitlines()[0].endswith("budgets quick, standard")
    assert "## Budget `quick`" in md and "## Budget `standard`" in md
    quick = md.split("## Budget `standard`")[0]
    assert (
        table_rows(quick, "organs / finetune / 100% labels")["asa"][1]
        == table_rows(render(metrics, cells), "organs / finetune / 100% labels")["asa"][1]
    )


def test_class_headers_use_names_when_given(frames, real_md):
    assert "| liver | spleen | kidney |" in real_md
    assert "| 1 | 2 | 3 |" in render(*frames)
    nodule = real_md.split("### nodule")[1].split("###")[0]
    assert "| liver |" not in nodule  # class -1 only: no class columns


def test_method_missing_a_task_is_left_out_of_across_analysis(frames):
    metrics, cells = frames
    md = render(metrics[~((metrics["method"] == "mae") & (metrics["task"] == "nodule"))], cells)
    across = md.split("### Across tasks")[1]
    assert "Methods left out (missing blocks): mae (nodule / linear_probe / 100% labels)" in across
    assert "| mae |" not in across
    assert "Friedman test" in across and "CD =" not in across


def test_across_tasks_uses_each_tasks_primary_table_only(frames):
    # organs has tables at 25% and 100% labels: only the declared primary (finetune at 100%) is a block, so the
    # 25% table (the same test cases again) never counts as a second, independent task
    md = render(*frames)
    across = md.split("### Across tasks")[1]
    assert (
        "Blocks: the primary table of each task, declared with the suite before any result: organs / finetune / "
        "100% labels; nodule / linear_probe / 100% labels. 4 methods" in across
    )
    assert "25% labels" not in across
    assert (
        "Too few blocks to test pairs of methods: an exact two-sided Wilcoxon test over 2 blocks cannot go "
        "below p = 2/2^2 = 0.5 > α" in across
    )


def test_a_primary_table_with_one_method_leaves_nothing_to_aggregate(frames):
    metrics, cells = frames
    one = metrics[(metrics["task"] != "nodule") | (metrics["method"] == "asa")]
    assert "Across tasks skipped: no two methods have results in two or more primary tables." in render(one, cells)


@pytest.mark.parametrize(
    "present, kept_tables, kept_methods",
    [
        # 3 methods x 3 tables = 9 beats 4 x 2 = 8: the method missing a table goes
        ({"t1": "abcd", "t2": "abcd", "t3": "abc"}, ["t1", "t2", "t3"], ["a", "b", "c"]),
        # 5 x 2 = 10 beats 2 x 3 = 6: the third table goes
        ({"t1": "abcde", "t2": "abcde", "t3": "ab"}, ["t1", "t2"], list("abcde")),
        # 3 x 2 = 6 ties 2 x 3 = 6: more methods win the tie
        ({"t1": "abc", "t2": "abc", "t3": "ab"}, ["t1", "t2"], list("abc")),
        # no two tables share two methods: nothing to analyse
        ({"t1": "ab", "t2": "cd"}, [], []),
        # the best set is an intersection of three tables' sets, not any one table's set
        ({"t1": "abcx", "t2": "abcy", "t3": "abcz", "t4": "ab"}, ["t1", "t2", "t3"], list("abc")),
    ],
)
def test_complete_blocks_keep_the_most_scores(present, kept_tables, kept_methods):
    Row = namedtuple("Row", "method")
    Tbl = namedtuple("Tbl", "label rows")
    tables = [Tbl(t, [Row(m) for m in ms]) for t, ms in present.items()]
    kept, methods = _complete_blocks(tables)
    assert [t.label for t in kept] == kept_tables and methods == kept_methods


def test_two_tasks_that_rank_alike_give_the_exact_friedman_p_not_an_asymptotic_one():
    # the old board printed Iman-Davenport p < 0.0001 here; with 3 methods and 2 blocks the permutation
    # distribution has 3! equally likely rankings of the second block, one of which repeats the first: p = 1/6
    suite = Suite(
        name="fixture2",
        version=1,
        synthetic=True,
        pretrain_dataset="x",
        tasks=(Task("a", "x", "segmentation", ("finetune",)), Task("b", "y", "segmentation", ("finetune",))),
        seeds=(0, 1),
    )
    rng = np.random.default_rng(3)
    frames = []
    for task in ("a", "b"):
        base = rng.uniform(0.3, 0.5, (2, 10, 3))
        frames.append(_frame({"random": base, "good": base + 0.1, "best": base + 0.2}, task=task, suite="fixture2"))
    m = pd.concat([f[0] for f in frames])
    cells = pd.concat([f[1] for f in frames])
    across = render(m, cells, suite=suite).split("### Across tasks")[1]
    assert "χ²_F = 4.000, exact permutation p = 0.1667 over 2 blocks" in across


SET_SUITE = Suite(
    name="fixture_set",
    version=1,
    synthetic=True,
    pretrain_dataset="fixture_cxr",
    tasks=(Task("findings", "fixture_cxr", "classification", ("finetune",), (1.0,), "auroc"),),
    seeds=(0, 1),
)


def _set_frames(strength: dict[str, float], n: int = 120, seeds: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Set-level cells as classification protocols store them: AUROC rows on case "__set__" (per class and the
    mean, class -1) plus each test image's pred_score / pred_target per class."""
    from bench.stats import mean_auroc

    rng = np.random.default_rng(7)
    y = (rng.random((n, 2)) < 0.4).astype(float)
    rows, scores = [], {}
    for method, k in strength.items():
        for s in range(seeds):
            p = 1 / (1 + np.exp(-(rng.normal(size=(n, 2)) + k * (2 * y - 1))))
            scores[method, s] = p
            cell = {
                "suite": "fixture_set",
                "suite_version": 1,
                "task": "findings",
                "method": method,
                "protocol": "finetune",
                "label_fraction": 1.0,
                "draw": 0,
                "seed": s,
                "budget": "quick",
                "leakage_override": 0,
                "cell_id": f"{method}/s{s}",
            }
            rows.append(cell | {"case_id": "__set__", "class": -1, "metric": "auroc", "value": mean_auroc(p, y)})
            for c in range(2):
                rows.append(
                    cell
                    | {"case_id": "__set__", "class": c, "metric": "auroc", "value": mean_auroc(p[:, [c]], y[:, [c]])}
                )
                for i in range(n):
                    case = {"case_id": f"img{i:04d}", "class": c}
                    rows.append(cell | case | {"metric": "pred_score", "value": p[i, c]})
                    rows.append(cell | case | {"metric": "pred_target", "value": y[i, c]})
    m = pd.DataFrame(rows)
    cells = m.drop_duplicates("cell_id")[["cell_id"]].assign(
        git_sha="abc", device="cpu", gpu_hours=0.0, cpu_hours=0.1, params=1000
    )
    return m, cells, scores, y


def test_set_level_tables_resample_runs_and_test_images():
    from bench import stats

    metrics, cells, scores, y = _set_frames({"random": 0.2, "better": 1.2, "tied": 0.2}, seeds=3)
    lb = leaderboard.analyse(SET_SUITE, metrics, cells)
    (table,) = lb.sections[0].tables
    assert table.unit == "images" and table.cases == 120
    better = table.row("better")
    runs = np.stack([scores["better", s] for s in range(3)])
    want = stats.set_run_mean(runs, y, n_resamples=10_000, seed=0)
    assert (better.low, better.high) == pytest.approx((want.low, want.high))
    assert better.low < better.mean < better.high
    assert better.vs_baseline.verdict == "better"
    assert not table.row("tied").vs_baseline.marked
    assert np.isfinite(better.boundary)  # AUPRC beside AUROC
    md = leaderboard.markdown(lb, now=NOW, git=GIT)
    assert "120 test images" in md and "| AUPRC |" in md and "the AUPRC of a random ranking" in md


def test_set_level_table_without_predictions_rests_on_the_runs_and_says_so():
    from bench import stats

    metrics, cells, _, _ = _set_frames({"random": 0.2, "better": 1.2}, seeds=3)
    old = metrics[~metrics["metric"].isin(["pred_score", "pred_target"])]
    lb = leaderboard.analyse(SET_SUITE, old, cells)
    (table,) = lb.sections[0].tables
    assert table.unit == "runs"
    per_run = old[old["class"] == -1].pivot(index="seed", columns="method", values="value")
    for r in table.rows:
        want = stats.run_mean(per_run[r.method].to_numpy()[:, None], n_resamples=10_000, seed=0)
        assert (r.low, r.high) == pytest.approx((want.low, want.high))
    assert "the intervals cover the spread between runs only" in leaderboard.markdown(lb, now=NOW, git=GIT)


def test_below_chance_auroc_is_flagged():
    metrics, cells, _, _ = _set_frames({"random": 0.2, "inverted": -1.0}, seeds=2)
    md = leaderboard.render(SET_SUITE, metrics, cells, now=NOW, git=GIT)
    assert table_rows(md, "findings / finetune / 100% labels")["inverted"][0].endswith(leaderboard.MARK_CHANCE)
    assert f"{leaderboard.MARK_CHANCE} AUROC below chance (0.5): inverted (its CI lies below 0.5)." in md


def test_deterministic_protocol_seeds_are_one_run():
    # kNN on the same encoder gives the same result whatever the transfer seed: three seeds are one run
    suite = Suite(
        name="fixture_set",
        version=1,
        synthetic=True,
        pretrain_dataset="fixture_cxr",
        tasks=(Task("findings", "fixture_cxr", "classification", ("knn",), (1.0,), "auroc"),),
        seeds=(0, 1, 2),
    )
    metrics, cells, _, _ = _set_frames({"random": 0.2, "other": 0.6}, seeds=1)
    metrics = metrics.assign(protocol="knn")
    copies = [metrics.assign(seed=s, cell_id=metrics["cell_id"] + f"/{s}") for s in range(3)]
    cells = pd.concat([cells.assign(cell_id=cells["cell_id"] + f"/{s}") for s in range(3)])
    lb = leaderboard.analyse(suite, pd.concat(copies), cells)
    (table,) = lb.sections[0].tables
    assert table.runs == 1 and table.collapsed == 4 and table.row("other").vs_baseline.verdict == "untested"
    assert (
        "`knn` is deterministic given the encoder: 4 further transfer seeds repeated a run exactly"
        in leaderboard.markdown(lb, now=NOW, git=GIT)
    )


def test_patients_not_images_are_the_unit_where_a_task_groups_them():
    from bench import stats

    suite = Suite(
        name="fixture_set",
        version=1,
        synthetic=True,
        pretrain_dataset="fixture_cxr",
        tasks=(
            Task(
                "findings",
                "fixture_cxr",
                "classification",
                ("finetune",),
                (1.0,),
                "auroc",
                patient_pattern=r"^(img\d\d)\d\d",
            ),
        ),
        seeds=(0, 1),
    )
    metrics, cells, scores, y = _set_frames({"random": 0.2, "other": 0.6}, seeds=3)
    (table,) = leaderboard.analyse(suite, metrics, cells).sections[0].tables
    assert table.patients == 2  # img00xx and img01xx
    d = table.row("other").vs_baseline.diff
    ids = [f"img{i:04d}" for i in range(120)]
    want = stats.set_run_difference(
        np.stack([scores["other", s] for s in range(3)]),
        np.stack([scores["random", s] for s in range(3)]),
        y,
        groups=[i[:5] for i in ids],
        n_resamples=10_000,
        seed=0,
    )
    assert d.units == 2 and (d.low, d.high) == pytest.approx((want.low, want.high))


def test_negative_control_compares_halves_of_a_methods_runs():
    rng = np.random.default_rng(8)
    md = render(*_frame({"random": _runs(rng, 4), "asa": _runs(rng, 2)}))
    controls = md.split("### Negative controls", 1)[1].split("\n### ", 1)[0]
    assert "of 1 such comparisons marked better or worse (expected rate α = 0.05)" in controls
    assert "| organs / finetune / 100% labels | random | alternate transfer runs |" in controls
    two = _frame({"random": _runs(rng, 4), "asa": _runs(rng, 4)}, pretrain=[0, 0, 1, 1])
    assert "pretraining seeds 0 vs 1" in render(*two)


def store_of(metrics: pd.DataFrame, cells: pd.DataFrame, path: Path) -> ResultsStore:
    """A results store at ``path`` holding these metric rows, one stored cell per ``cell_id``."""
    store = ResultsStore(path)
    info = cells.set_index("cell_id")
    for cell_id, g in metrics.groupby("cell_id"):
        cell = g.iloc[0][
            [
                "suite",
                "suite_version",
                "task",
                "method",
                "protocol",
                "label_fraction",
                "draw",
                "seed",
                "budget",
                "leakage_override",
            ]
        ].to_dict()  # Python scalars for SQLite
        cell |= {"cell_id": cell_id, "config_hash": "h"} | info.loc[cell_id].to_dict()
        store.write_cell(
            cell, g.rename(columns={"case_id": "case"})[["case", "class", "metric", "value"]].to_dict("records")
        )
    return store


def test_published_predictions_sit_beside_the_csv_and_round_trip(tmp_path):
    metrics, cells, _, _ = _set_frames({"random": 0.2, "better": 1.2}, n=40)
    store = store_of(metrics, cells, tmp_path / "results.sqlite")
    out = tmp_path / "lb"
    md = leaderboard.publish(SET_SUITE, store, out, now=NOW, git=GIT).read_text(encoding="utf-8")
    plain = pd.read_csv(out / "fixture_set.csv")
    assert set(plain["metric"]) == {"auroc"}
    preds = pd.read_csv(out / "fixture_set_predictions.csv.gz")
    assert set(preds["metric"]) == {"pred_score", "pred_target"} and len(preds) == 2 * 2 * 40 * 2 * 2
    again = leaderboard.render(SET_SUITE, *from_csv(out / "fixture_set.csv"), now=NOW, git=GIT, figures=True)
    assert again == md and "40 test images" in md


def test_publish_writes_figures_and_csv_that_round_trips(frames, tmp_path):
    metrics, cells = frames
    nsd = metrics[metrics["metric"] == "dice"].assign(metric="nsd")  # stored, but not the task metric
    store = store_of(pd.concat([metrics, nsd]), cells, tmp_path / "results.sqlite")
    out = tmp_path / "leaderboards"
    path = leaderboard.publish(SUITE, store, out, now=NOW, git=GIT, class_names=CLASS_NAMES)
    md = path.read_text(encoding="utf-8")
    links = [line.split("](", 1)[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert {Path(p).name for p in links} == {
        "quick_organs_finetune_label_efficiency.png",
        "quick_organs_finetune_0.25_significance.png",
        "quick_organs_finetune_1_significance.png",
        "quick_nodule_linear_probe_1_significance.png",
        "quick_probability_of_improvement.png",
    }
    for p in links:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert md == render(pd.concat([metrics, nsd]), cells, class_names=CLASS_NAMES, figures=True)  # store
    again = leaderboard.render(
        SUITE, *from_csv(out / "fixture.csv"), now=NOW, git=GIT, class_names=CLASS_NAMES, figures=True
    )
    assert again == md
    rows = pd.read_csv(out / "fixture.csv")
    assert set(rows["metric"]) == {"dice", "nsd", "accuracy"}  # the rows used: the boundary metric beside Dice
    tests = pd.read_csv(out / "fixture_comparisons.csv")
    assert set(tests["kind"]) == {"baseline", "pair"} and tests["p"].notna().all()
    base = tests[tests["kind"] == "baseline"]
    assert (base["other"] == "random").all() and (base["p_holm"] >= base["p"]).all()  # Holm within a table
    bayes = base[["bayes_worse", "bayes_equivalent", "bayes_better"]].sum(axis=1)
    assert bayes.to_numpy() == pytest.approx(1.0, abs=1e-9)
    plain = leaderboard.write(SUITE, store, tmp_path / "plain", now=NOW, git=GIT, class_names=CLASS_NAMES)
    assert "![" not in plain.read_text(encoding="utf-8")


def test_published_csv_imported_into_a_fresh_store_renders_the_same_leaderboard(frames, tmp_path):
    metrics, cells = frames
    out = tmp_path / "lb"
    md = leaderboard.publish(
        SUITE, store_of(metrics, cells, tmp_path / "a.sqlite"), out, now=NOW, git=GIT, class_names=CLASS_NAMES
    ).read_text(encoding="utf-8")
    fresh = ResultsStore(tmp_path / "b.sqlite")
    (report,) = import_published([out / "fixture.csv"], fresh)
    assert len(report.added) == cells["cell_id"].nunique() and not report.kept and not report.replaced
    again = leaderboard.publish(SUITE, fresh, tmp_path / "lb2", now=NOW, git=GIT, class_names=CLASS_NAMES)
    assert again.read_text(encoding="utf-8") == md and "### Pretraining compute" in md
    got = fresh.cells().set_index("cell_id").sort_index()
    want = cells.set_index("cell_id").sort_index()
    for c in ("git_sha", "wall_s", "cpu_hours", "params", "pretrain_wall_s", "pretrain_device"):
        assert got[c].tolist() == want[c].tolist() or got[c].equals(want[c]), c
    # the published rows carry no config hash, so the runner never takes an imported cell for its own run
    assert set(got["config_hash"]) == {IMPORTED_HASH}


def test_a_csv_published_before_the_pretraining_seed_was_recorded_imports_as_seed_0(frames, tmp_path):
    metrics, cells = frames
    out = tmp_path / "lb"
    md = leaderboard.publish(
        SUITE, store_of(metrics, cells, tmp_path / "a.sqlite"), out, now=NOW, git=GIT, class_names=CLASS_NAMES
    ).read_text(encoding="utf-8")
    old = pd.read_csv(out / "fixture.csv").drop(columns="pretrain_seed")
    old.to_csv(out / "fixture.csv", index=False)
    fresh = ResultsStore(tmp_path / "b.sqlite")
    import_published([out / "fixture.csv"], fresh)
    assert set(fresh.cells()["pretrain_seed"]) == {0}
    again = leaderboard.publish(SUITE, fresh, tmp_path / "lb2", now=NOW, git=GIT, class_names=CLASS_NAMES)
    assert again.read_text(encoding="utf-8") == md


DATA_PARALLEL = ["world_size", "per_device_batch", "pretrain_world_size"]


def test_a_data_parallel_cell_round_trips_through_the_store_and_its_published_csv(frames, tmp_path, monkeypatch):
    """asa trained on 2 processes of batch 1 and pretrained on 2; the fixture's other cells predate the columns."""
    monkeypatch.setattr(leaderboard.analysis, "stats", StandInStats)
    metrics, cells = frames
    cells = cells.copy()
    asa = cells["cell_id"].str.startswith("asa/")
    cells.loc[asa, DATA_PARALLEL] = [2, 1, 2]
    store = store_of(metrics, cells, tmp_path / "a.sqlite")
    stored = store.cells().set_index("cell_id")
    assert (stored.loc[cells.loc[asa, "cell_id"], DATA_PARALLEL] == [2, 1, 2]).all(axis=None)
    assert stored.loc[cells.loc[~asa, "cell_id"], DATA_PARALLEL].isna().all(axis=None)  # kept as recorded: none
    out = tmp_path / "lb"
    md = leaderboard.publish(SUITE, store, out, now=NOW, git=GIT, class_names=CLASS_NAMES).read_text(encoding="utf-8")
    rows = pd.read_csv(out / "fixture.csv", dtype=str, keep_default_na=False)
    dp = rows["method"] == "asa"
    assert (rows.loc[dp, DATA_PARALLEL] == ["2", "1", "2"]).all(axis=None)  # counts, not 2.0
    assert (rows.loc[~dp, DATA_PARALLEL] == "").all(axis=None)  # published as recorded, the default not written
    fresh = ResultsStore(tmp_path / "b.sqlite")
    import_published([out / "fixture.csv"], fresh)
    got = fresh.cells().set_index("cell_id")
    assert got.loc[cells.loc[asa, "cell_id"], DATA_PARALLEL].values.tolist() == [[2, 1, 2]] * int(asa.sum())
    assert got.loc[cells.loc[~asa, "cell_id"], DATA_PARALLEL].isna().all(axis=None)
    again = leaderboard.publish(SUITE, fresh, tmp_path / "lb2", now=NOW, git=GIT, class_names=CLASS_NAMES)
    assert again.read_text(encoding="utf-8") == md
    for table in (
        "organs / finetune / 25% labels",
        "organs / finetune / 100% labels",
        "nodule / linear_probe / 100% labels",
    ):
        assert _column(md, table, "devices") == {"asa": "2×1", "mae": "1", "random": "1", "simmim3d": "1"}
    assert "| asa | `asa0123456789` | cpu (2 cores) | 2 | 1.500 |" in md
    assert "| mae | `mae0123456789` | cpu (2 cores) | 1 | 0.500 |" in md
    assert "GPU h / CPU h are device-hours, wall time × processes" in md


def test_the_devices_column_gives_a_range_where_a_methods_cells_differ(frames, monkeypatch):
    monkeypatch.setattr(leaderboard.analysis, "stats", StandInStats)
    metrics, cells = frames
    cells = cells.copy().set_index("cell_id")
    cells.loc["asa/organs/f1/s0", ["world_size", "per_device_batch"]] = [4, 1]
    cells.loc[["asa/organs/f1/s1", "asa/organs/f1/s2"], ["world_size", "per_device_batch"]] = [1, 4]
    cells.loc["mae/organs/f1/s0", "world_size"] = 2  # its other cell records neither: 1 process, batch unknown
    cells.loc[cells.index.str.startswith("simmim3d/organs/f1/"), "wall_s"] = np.nan  # no time, no world size
    md = render(metrics, cells.reset_index(), class_names=CLASS_NAMES)
    assert _column(md, "organs / finetune / 100% labels", "devices") == {
        "asa": "1–4×1–4",
        "mae": "1–2",
        "random": "1",
        "simmim3d": "n/a",
    }
    assert _column(md, "organs / finetune / 25% labels", "devices") == dict.fromkeys(
        ["asa", "mae", "random", "simmim3d"], "1"
    )


def test_every_published_leaderboard_csv_imports_and_reads_as_one_process_where_it_recorded_none(tmp_path):
    """The boards in leaderboards/ were published before data-parallel training was recorded."""
    from bench.results import world_sizes

    files = sorted(
        p for p in (Path(__file__).parents[1] / "leaderboards").glob("*.csv") if not p.name.endswith("_comparisons.csv")
    )
    assert files
    store = ResultsStore(tmp_path / "published.sqlite")
    reports = import_published(files, store)
    assert all(r.added for r in reports)
    cells = store.cells()
    assert set(DATA_PARALLEL) <= set(cells.columns)
    for pretrain, wall in ((False, "wall_s"), (True, "pretrain_wall_s")):
        recorded = cells["pretrain_world_size" if pretrain else "world_size"]
        n = world_sizes(cells, pretrain=pretrain)
        timed = cells[wall].notna()
        assert n[recorded.isna() & timed].tolist() == [1] * int((recorded.isna() & timed).sum())
        assert n[recorded.isna() & ~timed].isna().all()
        assert n[recorded.notna()].tolist() == recorded[recorded.notna()].astype(int).tolist()
    assert cells["wall_s"].notna().any() and cells["pretrain_wall_s"].notna().any()


def test_import_brings_the_predictions_file_beside_the_csv(tmp_path):
    metrics, cells, _, _ = _set_frames({"random": 0.2, "better": 1.2}, n=40)
    out = tmp_path / "lb"
    md = leaderboard.publish(
        SET_SUITE, store_of(metrics, cells, tmp_path / "a.sqlite"), out, now=NOW, git=GIT
    ).read_text(encoding="utf-8")
    fresh = ResultsStore(tmp_path / "b.sqlite")
    import_published([out / "fixture_set.csv"], fresh)
    assert set(fresh.metrics()["metric"]) == {"auroc", "pred_score", "pred_target"}
    again = leaderboard.render(SET_SUITE, fresh.metrics(), fresh.cells(), now=NOW, git=GIT, figures=True)
    assert again == md and "40 test images" in md


def test_import_keeps_the_stores_own_cells_unless_told_to_replace_them(frames, tmp_path):
    metrics, cells = frames
    out = tmp_path / "lb"
    leaderboard.publish(SUITE, store_of(metrics, cells, tmp_path / "a.sqlite"), out, now=NOW, git=GIT)
    mine = metrics[metrics["method"] == "asa"].assign(value=0.5)  # my own run of published cells
    store = store_of(mine, cells[cells["cell_id"].isin(mine["cell_id"])], tmp_path / "b.sqlite")
    asa = set(mine["cell_id"])
    (r,) = import_published([out / "fixture.csv"], store)
    assert set(r.kept) == asa and len(r.added) == cells["cell_id"].nunique() - len(asa)
    m = store.metrics()
    assert (m.loc[m["method"] == "asa", "value"] == 0.5).all()
    assert set(m["method"]) == set(metrics["method"]) and len(m) == len(metrics)
    (r,) = import_published([out / "fixture.csv"], store, replace=True)
    assert set(r.replaced) == set(cells["cell_id"]) and not r.added
    m = store.metrics().sort_values(["cell_id", "case_id", "class"])["value"].to_numpy()
    assert m == pytest.approx(metrics.sort_values(["cell_id", "case_id", "class"])["value"].to_numpy())


@pytest.fixture
def fixture_suite_registered(monkeypatch):
    """`bench.tools.results import` refuses rows of a suite that is not registered; the fixture's suite is one
    only while a test needs it."""
    from bench.registry import SUITES

    monkeypatch.setitem(SUITES._items, SUITE.name, SUITE)
    monkeypatch.setitem(SUITES._tags, SUITE.name, frozenset())


@pytest.mark.usefixtures("fixture_suite_registered")
def test_import_of_a_published_folder_glob_skips_the_comparisons_and_renders_the_same(frames, tmp_path, capsys):
    """`python -m bench.tools.results import leaderboards/*.csv`: the glob also matches <suite>_comparisons.csv,
    which holds tests derived from the rows, not rows; it is skipped by name and the board renders as published."""
    from bench.tools import results

    metrics, cells = frames
    out = tmp_path / "lb"
    md = leaderboard.publish(
        SUITE, store_of(metrics, cells, tmp_path / "a.sqlite"), out, now=NOW, git=GIT, class_names=CLASS_NAMES
    ).read_text(encoding="utf-8")
    files = sorted(out.glob("*.csv"))
    assert any(p.name.endswith("_comparisons.csv") for p in files)
    db = tmp_path / "b.sqlite"
    assert results.main(["import", *map(str, files), "--store", str(db)]) == 0
    assert "_comparisons.csv: skipped" in capsys.readouterr().out
    again = leaderboard.publish(SUITE, ResultsStore(db), tmp_path / "lb2", now=NOW, git=GIT, class_names=CLASS_NAMES)
    assert again.read_text(encoding="utf-8") == md
    assert (
        results.main(
            [
                "import",
                *[str(p) for p in files if p.name.endswith("_comparisons.csv")],
                "--store",
                str(tmp_path / "c.sqlite"),
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    "spoil, says",
    [
        (lambda d: d[["suite", "value"]], "lacks the column(s) suite_version"),
        (lambda d: d.assign(value=d["value"].astype(object).where(d.index != 5, "")), "line 7: column value"),
        (lambda d: d.assign(seed=d["seed"].where(d.index != 0, 7)), "disagree on its seed"),
        (lambda d: d.assign(world_size=2.5), "world_size 2.5 is not a whole number"),
        (None, "no such file"),
    ],
)
@pytest.mark.usefixtures("fixture_suite_registered")
def test_import_of_a_bad_file_is_one_error_and_writes_nothing(frames, tmp_path, capsys, spoil, says):
    from bench.tools import results

    metrics, cells = frames
    out = tmp_path / "lb"
    leaderboard.publish(SUITE, store_of(metrics, cells, tmp_path / "a.sqlite"), out, now=NOW, git=GIT)
    bad = tmp_path / "bad.csv"
    if spoil is not None:
        spoil(pd.read_csv(out / "fixture.csv")).to_csv(bad, index=False)
    db = tmp_path / "b.sqlite"
    rc = results.main(["import", str(out / "fixture.csv"), str(bad), "--store", str(db)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {bad}") and says in err and err.count("\n") == 1, err
    assert not db.exists() or not ResultsStore(db).cell_ids()  # the good file before it did not land either


def test_earlier_version_record_is_published_beside_the_current_leaderboard(frames, tmp_path, monkeypatch):
    from dataclasses import replace

    from bench.registry import SUITES

    metrics, cells = frames
    store = store_of(metrics, cells, tmp_path / "results.sqlite")
    # the fixture's rows are all v1; the registered suite has moved on to v2
    monkeypatch.setitem(SUITES._items, SUITE.name, replace(SUITE, version=2))
    monkeypatch.setitem(SUITES._tags, SUITE.name, frozenset())
    out = tmp_path / "leaderboards"
    current = leaderboard.publish(SUITE.name, store, out, now=NOW, git=GIT).read_text(encoding="utf-8")
    assert current.splitlines()[0] == "# fixture v2 leaderboard — synthetic data, no results"
    assert f"| cells | 0 (left out: {cells['cell_id'].nunique()} cells of other suite versions (v1)) |" in current
    record_path = leaderboard.publish(SUITE, store, out, now=NOW, git=GIT, class_names=CLASS_NAMES)
    assert record_path.name == "fixture_v1.md"
    record = record_path.read_text(encoding="utf-8")
    assert "| superseded | the record of v1; the suite is now v2, whose results are in `fixture.md`." in record
    # the same tables as the v1 leaderboard rendered before the version moved on, figures in their own folder
    body = render(metrics, cells, class_names=CLASS_NAMES, figures=True).split("| cells |", 1)[1]
    assert record.split("| cells |", 1)[1] == body.replace("](fixture/", "](fixture_v1/")
    assert (out / "fixture.md").read_text(encoding="utf-8") == current  # not overwritten
    assert sorted(p.name for p in (out / "fixture_v1").glob("*.png")) == sorted(
        Path(p).name for p in leaderboard.figure_files(leaderboard.analyse(SUITE, metrics, cells)).values()
    )
    assert len(pd.read_csv(out / "fixture_v1.csv")) == len(metrics)


def test_suite_version_option_is_checked_before_any_work():
    from bench.registry import SUITES
    from bench.runner import UserError, leaderboard_suite

    abdomen = SUITES.get("abdomen")
    assert leaderboard_suite(abdomen, None, "all") is abdomen
    assert leaderboard_suite(abdomen, 1, "leaderboard").version == 1
    for bad in (0, abdomen.version + 1, "one", 1.5, True):
        with pytest.raises(UserError, match=f"suite 'abdomen' has versions 1 to {abdomen.version}"):
            leaderboard_suite(abdomen, bad, "leaderboard")
    with pytest.raises(UserError, match="applies only to stage=leaderboard"):
        leaderboard_suite(abdomen, 1, "all")


def test_stats_benchmark_script_runs_end_to_end_on_a_small_size(capsys):
    from bench.tools import bench_stats

    assert (
        bench_stats.main(
            [
                "--methods",
                "3",
                "--tasks",
                "2",
                "--seeds",
                "2",
                "--cases",
                "6",
                "--classes",
                "2",
                "--resamples",
                "200",
                "--poi-resamples",
                "200",
                "--rank-boots",
                "20",
                "--no-per-call",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "7b publish" in out and "leaderboard end to end" in out


def test_options_come_from_the_config_and_bad_ones_are_one_error():
    from omegaconf import OmegaConf

    from bench.runner import UserError, leaderboard_options

    cfg = OmegaConf.create(
        {
            "suite": {"margins": {"dice": 0.02, "nsd": 0.05}},
            "leaderboard": {"baseline": "supervised", "alpha": 0.1, "margins": {"dice": 0.03}},
        }
    )
    o = leaderboard_options(cfg)
    assert (o.baseline, o.alpha, o.margin("dice"), o.margin("nsd"), o.margin("auroc")) == (
        "supervised",
        0.1,
        0.03,
        0.05,
        0.01,
    )
    for bad, says in ((["margins", "dice", -1], "margins.dice=-1"), (["alpha", None, 1.5], "leaderboard.alpha=1.5")):
        c = OmegaConf.create({"suite": {}, "leaderboard": {"margins": {}}})
        if bad[1]:
            c.leaderboard.margins[bad[1]] = bad[2]
        else:
            c.leaderboard[bad[0]] = bad[2]
        with pytest.raises(UserError, match=re.escape(says)):
            leaderboard_options(c)


def test_the_pretraining_table_says_which_objective_an_export_used_only_where_one_was_settled(frames):
    """saca settles its symmetry objective from the corpus (label on brain, self elsewhere): the board says which,
    per export; a board without such a method has no objective column (the golden file above)."""
    metrics, cells = frames
    assert "objective" not in render(metrics, cells).split("### Pretraining compute", 1)[1].split("\n\n", 2)[1]
    cells = cells.copy()
    method_of = metrics.drop_duplicates("cell_id").set_index("cell_id")["method"]
    first = method_of.iloc[0]
    cells["pretrain_objective"] = np.where(cells["cell_id"].map(method_of) == first, "symmetry_target=label", None)
    md = render(metrics, cells)
    table = md.split("### Pretraining compute", 1)[1].split("| method | export |", 1)[1].split("\n\n", 1)[0]
    assert table.splitlines()[0].rstrip().endswith("cells | objective |")
    rows = [ln for ln in table.splitlines()[2:] if ln.startswith("| ")]
    assert any(ln.startswith(f"| {first} |") and ln.endswith(" symmetry_target=label |") for ln in rows)
    assert all(ln.endswith(" — |") for ln in rows if not ln.startswith(f"| {first} |"))


def test_python_m_bench_results_import_rebuilds_a_lost_store_from_every_published_board(tmp_path):
    """`python -m bench.results import`, the spelling the docs give for a lost store, once ran the module and did
    nothing (exit 0, no store); it must import every board the checkout publishes, from any working directory."""
    import subprocess
    import sys

    published = Path(__file__).resolve().parents[1] / "leaderboards"
    rows = [p for p in sorted(published.glob("*.csv")) if not p.name.endswith("_comparisons.csv")]
    want = set().union(*(set(pd.read_csv(p, usecols=["cell_id"])["cell_id"]) for p in rows))
    db = tmp_path / "lost.sqlite"
    run = subprocess.run(
        [sys.executable, "-m", "bench.results", "import", "--store", str(db)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert set(ResultsStore(db).cells()["cell_id"]) == want
    assert "_comparisons.csv: skipped" in run.stdout
