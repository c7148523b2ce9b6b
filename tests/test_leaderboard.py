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
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import leaderboard
from bench.results import ResultsStore
from bench.suites import Suite, Task

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "leaderboard_fixture.csv"
GOLDEN = DATA / "leaderboard_golden.md"
NOW = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc)
GIT = "0123456789ab"
CLASS_NAMES = {"organs": {1: "liver", 2: "spleen", 3: "kidney"}}

SUITE = Suite(
    name="fixture", version=1, synthetic=True, pretrain_dataset="fixture_ct", description="leaderboard test fixture",
    tasks=(Task("organs", "fixture_ct", "segmentation", ("finetune",), (0.25, 1.0), "dice"),
           Task("nodule", "fixture_cls", "classification", ("linear_probe",), (1.0,), "accuracy")),
    seeds=(0, 1, 2))


def make_fixture(path: Path, seed: int = 0) -> None:
    """4 methods (asa clearly better than random, mae better but without seed 2 on organs at 100%, simmim3d like
    random and with a leakage override on one nodule cell), 2 tasks, 3 seeds, 8 cases, 3 classes; per-class Dice
    for organs (at 25% and 100% labels), per-case accuracy (class -1) for nodule."""
    rng = np.random.default_rng(seed)
    effect = {"asa": 0.15, "mae": 0.06, "random": 0.0, "simmim3d": 0.0}
    p_correct = {"asa": 0.9, "mae": 0.75, "random": 0.55, "simmim3d": 0.55}
    pretrain = {"asa": 5400.0, "mae": 1800.0, "random": None, "simmim3d": 900.0}   # pretraining wall seconds
    params = {"asa": 62_187_296, "mae": 61_990_112, "random": 62_187_296, "simmim3d": 62_187_296}
    difficulty = rng.uniform(0.45, 0.75, 8)
    class_offset = np.array([0.05, -0.03, -0.02])
    rows = []
    for method in sorted(effect):
        for task, protocol, fraction in (("organs", "finetune", 0.25), ("organs", "finetune", 1.0),
                                         ("nodule", "linear_probe", 1.0)):
            for s in range(3):
                if method == "mae" and task == "organs" and fraction == 1.0 and s == 2:
                    continue
                cell = {"suite": "fixture", "suite_version": 1, "task": task, "method": method, "protocol": protocol,
                        "label_fraction": fraction, "draw": 0, "seed": s, "budget": "quick",
                        "leakage_override": int(method == "simmim3d" and task == "nodule" and s == 0),
                        "cell_id": f"{method}/{task}/f{fraction:g}/s{s}",
                        "git_sha": "0f9e8d7c6b5a" if method == "mae" else "1a2b3c4d5e6f",
                        "device": "cpu (2 cores)", "start_time": f"2026-01-01T0{s}:00:00+00:00",
                        "end_time": f"2026-01-01T0{s}:10:00+00:00", "wall_s": 600.0, "gpu_hours": 0.0,
                        "cpu_hours": 600.0 / 3600, "params": params[method],
                        "pretrain_hash": f"{method}0123456789"[:16], "pretrain_wall_s": pretrain[method],
                        **({"pretrain_device": "cpu (2 cores)", "pretrain_gpu_hours": 0.0,
                            "pretrain_cpu_hours": pretrain[method] / 3600} if pretrain[method] else {})}
                for c in range(8):
                    case = f"case{c:03d}"
                    if task == "nodule":
                        rows.append(cell | {"case_id": case, "class": -1, "metric": "accuracy",
                                            "value": float(rng.random() < p_correct[method])})
                        continue
                    dice = np.clip(difficulty[c] + class_offset + effect[method] - 0.08 * (fraction < 1)
                                   + rng.normal(0, 0.04, 3), 0, 1)
                    for k in range(3):
                        rows.append(cell | {"case_id": case, "class": k + 1, "metric": "dice",
                                            "value": round(float(dice[k]), 6)})
    pd.DataFrame(rows).to_csv(path, index=False)


class StandInStats:
    """The bench.stats API with trivial deterministic bodies (not statistics): the golden file pins the rendering."""

    FriedmanResult = namedtuple("FriedmanResult", "mean_ranks chi2 chi2_p ff ff_p")

    @staticmethod
    def hierarchical_bootstrap_ci(scores, stat=np.mean, n_resamples=10_000, ci=0.95, seed=0):
        per_seed = np.asarray(scores).mean(1)
        return float(per_seed.min()), float(per_seed.max())

    @staticmethod
    def paired_wilcoxon(a, b, alternative="two-sided"):
        d = np.asarray(a) - np.asarray(b)
        return float(np.abs(d).sum()), float(np.exp(-4 * abs(d.mean()) / (d.std() + 1e-9)))

    @staticmethod
    def holm(pvalues):
        p = np.asarray(pvalues, float)
        return np.minimum(1.0, p * len(p))

    @classmethod
    def friedman(cls, scores, lower_is_better=False):
        ranks = np.argsort(np.argsort(-np.asarray(scores), axis=1), axis=1) + 1.0
        mean_ranks = ranks.mean(0)
        return cls.FriedmanResult(mean_ranks, float(mean_ranks.var()), 0.5, float(mean_ranks.std()), 0.25)

    @staticmethod
    def nemenyi_cd(k, n, alpha=0.05):
        return 2.5 * np.sqrt(k * (k + 1) / (6 * n))

    @staticmethod
    def bonferroni_dunn_cd(k, n, alpha=0.05):
        return 2.2 * np.sqrt(k * (k + 1) / (6 * n))

    @staticmethod
    def iqm(x, axis=None):
        return np.mean(x, axis=axis)

    @staticmethod
    def stratified_bootstrap_ci(scores, aggregate=None, n_resamples=10_000, ci=0.95, seed=0):
        return float(np.min(scores)), float(np.max(scores))

    @staticmethod
    def probability_of_improvement(x, y):
        return float(np.mean(np.asarray(x).mean(0) > np.asarray(y).mean(0)))

    @staticmethod
    def probability_of_improvement_ci(x, y, n_resamples=10_000, ci=0.95, seed=0):
        return 0.0, 1.0

    @staticmethod
    def rank_stability(scores, n_boot=1000, seed=0, lower_is_better=False):
        return np.linspace(0.5, 1.0, n_boot)


def fixture_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    if os.environ.get("UPDATE_FIXTURE") == "1":
        make_fixture(FIXTURE)
    return leaderboard.from_csv(FIXTURE)


def render(metrics: pd.DataFrame, cells: pd.DataFrame, suite: Suite = SUITE, **kwargs) -> str:
    return leaderboard.render(suite, metrics, cells, now=NOW, git=GIT, class_names=kwargs.pop("class_names", {}),
                              **kwargs)


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
    monkeypatch.setattr(leaderboard, "stats", StandInStats)
    md = render(*frames, class_names=CLASS_NAMES, figures=True)
    if os.environ.get("UPDATE_GOLDEN") == "1" or os.environ.get("UPDATE_FIXTURE") == "1":
        GOLDEN.write_text(md, encoding="utf-8")
    assert md == GOLDEN.read_text(encoding="utf-8"), "leaderboard Markdown changed; UPDATE_GOLDEN=1 rewrites it"


def test_csv_published_before_pretraining_compute_renders_without_that_table(frames, tmp_path, monkeypatch):
    monkeypatch.setattr(leaderboard, "stats", StandInStats)
    old = tmp_path / "old.csv"
    pd.read_csv(FIXTURE).drop(columns=[c for c in leaderboard.CELL_INFO_COLUMNS if c.startswith("pretrain_")]
                              ).to_csv(old, index=False)
    md = render(*leaderboard.from_csv(old), class_names=CLASS_NAMES, figures=True)
    golden = GOLDEN.read_text(encoding="utf-8")
    before, rest = golden.split("### Pretraining compute\n", 1)
    assert md == before + "### " + rest.split("\n### ", 1)[1]


def _frame(values: dict[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One segmentation task from per-method value arrays [seed, case, class]."""
    rows = []
    for method, v in values.items():
        for s, c, k in np.ndindex(v.shape):
            rows.append({"suite": "fixture", "suite_version": 1, "task": "organs", "method": method,
                         "protocol": "finetune", "label_fraction": 1.0, "draw": 0, "seed": s, "budget": "quick",
                         "leakage_override": 0, "cell_id": f"{method}/s{s}", "case_id": f"c{c:02d}", "class": k + 1,
                         "metric": "dice", "value": float(v[s, c, k])})
    m = pd.DataFrame(rows)
    cells = m.drop_duplicates("cell_id")[["cell_id"]].assign(git_sha="abc", device="cpu", gpu_hours=0.0,
                                                             cpu_hours=0.1, params=1000)
    return m, cells


def test_better_method_is_marked_and_tied_method_is_not():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.4, 0.7, (3, 12, 2))
    flip = np.where(np.arange(12) % 2 == 0, 1.0, -1.0)[None, :, None]       # symmetric: no shift at all
    md = render(*_frame({"random": base, "better": base + 0.1 + rng.normal(0, 0.01, base.shape),
                         "tied": base + 0.01 * flip}))
    rows = table_rows(md, "organs / finetune / 100% labels")
    header = md.split("| method |", 1)[1].splitlines()[0]
    vs_random = [c.strip() for c in ("method |" + header).strip("|").split("|")].index("vs random")
    assert rows["better"][vs_random].startswith(leaderboard.MARK_BETTER)
    assert not rows["tied"][vs_random].startswith((leaderboard.MARK_BETTER, leaderboard.MARK_WORSE))
    assert rows["random"][vs_random] == "—"
    assert "paired Wilcoxon signed-rank" in md and "Holm-adjusted" in md


def test_single_seed_table_says_its_tests_ignore_training_variation():
    # with one training run per method, a per-case test is significant for any two differently trained networks
    rng = np.random.default_rng(2)
    base = rng.uniform(0.4, 0.7, (1, 20, 2))
    one = render(*_frame({"random": base, "other": base + 0.05 + rng.normal(0, 0.01, base.shape)}))
    three = render(*_frame({"random": np.repeat(base, 3, 0), "other": np.repeat(base, 3, 0) + 0.05}))
    mixed = render(*_frame({"random": np.repeat(base, 3, 0), "other": base + 0.05}))
    assert "One seed: a CI or test that rests on one run per method resamples the test cases only" in one
    assert "One seed" not in three
    assert "One seed for other: " in mixed


def test_significant_mark_whose_direction_flips_between_seeds_is_flagged():
    # measured on abdomen (quick): ASA below random at seeds 0 and 1, above at seed 2, and the pooled Wilcoxon over
    # the 60 (seed, case) pairs still says p < 1e-4; the mark must say that the seeds disagree
    rng = np.random.default_rng(3)
    base = rng.uniform(0.4, 0.7, (3, 12, 2))
    shift = np.array([0.05, 0.05, -0.02])[:, None, None]
    md = render(*_frame({"random": base, "flaky": base + shift,
                         "steady": base + 0.1 + rng.normal(0, 0.002, base.shape)}))
    rows = table_rows(md, "organs / finetune / 100% labels")
    vs_random = 3
    assert rows["flaky"][vs_random].startswith(leaderboard.MARK_BETTER)            # pooled: significant
    assert rows["flaky"][vs_random].endswith(leaderboard.MARK_SPLIT)
    assert leaderboard.MARK_SPLIT not in rows["steady"][vs_random]
    note = md.split(f"{leaderboard.MARK_SPLIT} Significant over the pooled pairs", 1)[1].split("\n", 1)[0]
    assert "flaky vs random: +0.0500 (seed 0), +0.0500 (seed 1), -0.0200 (seed 2)" in note
    assert "steady vs random" not in note and note.count("flaky vs random") == 1
    # random is best here too, so flaky's vs-best test is the same comparison: listed once
    best = render(*_frame({"random": base, "flaky": base - shift}))
    best_note = best.split(f"{leaderboard.MARK_SPLIT} Significant over the pooled pairs", 1)[1].split("\n", 1)[0]
    assert best_note.count("flaky vs random") == 1


def test_seed_split_is_computed_per_seed_for_set_level_tables():
    from bench import stats
    metrics, cells, scores, y = _set_frames({"random": 0.6, "other": 0.6})
    lb = leaderboard.analyse(SET_SUITE, metrics, cells)
    c = lb.sections[0].tables[0].row("other").vs_baseline
    want = [(s, float(stats.mean_auroc(scores["other", s], y) - stats.mean_auroc(scores["random", s], y)))
            for s in (0, 1)]
    assert [sd for sd, _ in c.by_seed] == [0, 1]
    assert [d for _, d in c.by_seed] == pytest.approx([d for _, d in want])
    assert c.split == (min(d for _, d in want) < 0 < max(d for _, d in want))


def test_method_with_fewer_seeds_is_never_ranked_best_on_its_own_seeds():
    # seed 1 is easy for every method: a method run only on seed 1 has a higher mean without being better
    rng = np.random.default_rng(5)
    base = rng.uniform(0.3, 0.4, (3, 12, 2)) + np.array([0.0, 0.3, 0.0])[:, None, None]
    md = render(*_frame({"random": base, "partial": base[1:2] - 0.02}))
    rows = table_rows(md, "organs / finetune / 100% labels")
    assert list(rows) == ["random", "partial"]
    assert rows["random"][4] == "best" and rows["partial"][4] != "best"              # vs best column
    assert leaderboard.MARK_PARTIAL in rows["partial"][0]


def test_method_with_fewer_seeds_is_marked(real_md):
    full = table_rows(real_md, "organs / finetune / 100% labels")
    assert leaderboard.MARK_PARTIAL in full["mae"][0]
    assert full["mae"][5] == "2" and full["asa"][5] == "3"                    # seeds column
    assert "mae: seeds 0, 1 of 0, 1, 2" in real_md
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
    standard = metrics.assign(budget="standard", cell_id=metrics["cell_id"] + "+std",
                              value=np.clip(metrics["value"] + 0.2, 0, 1))
    cells2 = pd.concat([cells, cells.assign(cell_id=cells["cell_id"] + "+std")])
    md = render(pd.concat([metrics, standard]), cells2)
    assert md.splitlines()[0].endswith("budgets quick, standard")
    assert "## Budget `quick`" in md and "## Budget `standard`" in md
    quick = md.split("## Budget `standard`")[0]
    assert table_rows(quick, "organs / finetune / 100% labels")["asa"][1] == \
        table_rows(render(metrics, cells), "organs / finetune / 100% labels")["asa"][1]


def test_class_headers_use_names_when_given(frames, real_md):
    assert "| liver | spleen | kidney |" in real_md
    assert "| 1 | 2 | 3 |" in render(*frames)
    assert "Per-class" not in real_md.split("### nodule")[1].split("###")[0]   # class -1 only: no class columns


def test_method_missing_a_task_is_left_out_of_across_analysis(frames):
    metrics, cells = frames
    md = render(metrics[~((metrics["method"] == "mae") & (metrics["task"] == "nodule"))], cells)
    across = md.split("### Across tasks")[1]
    assert "Left out (missing tables): mae (nodule / linear_probe / 100% labels)" in across
    assert "| mae |" not in across
    assert "Friedman test" in across and "CD =" in across


def test_a_table_with_one_method_is_left_out_of_across_analysis_instead_of_the_other_methods(frames):
    # A new task's first cell (one method) used to leave every other method out, so the analysis vanished.
    metrics, cells = frames
    methods = sorted(metrics["method"].unique())
    one = metrics[(metrics["task"] != "nodule") | (metrics["method"] == methods[0])]
    across = render(one, cells).split("### Across tasks")[1]
    assert (f"Tables left out (too few of the methods ran them): nodule / linear_probe / 100% labels "
            f"(only {methods[0]}).") in across
    assert "Left out (missing tables)" not in across
    assert f"{len(methods)} methods with results in every table" in across
    assert all(f"| {m} |" in across for m in methods)


def test_a_task_some_methods_have_not_run_is_left_out_rather_than_those_methods(frames):
    # Two of four methods on nodule: keeping nodule would rank 2 methods in 3 tables (6 scores), leaving it out
    # ranks 4 methods in 2 tables (8); the rule keeps the most scores.
    metrics, cells = frames
    two = metrics[(metrics["task"] != "nodule") | metrics["method"].isin(["asa", "random"])]
    across = render(two, cells).split("### Across tasks")[1]
    assert "2 tables as blocks: organs / finetune / 25% labels; organs / finetune / 100% labels. 4 methods" in across
    assert "nodule / linear_probe / 100% labels (only asa, random)" in across
    assert "Left out (missing tables)" not in across
    assert all(f"| {m} |" in across for m in ("asa", "mae", "random", "simmim3d"))


@pytest.mark.parametrize("present, kept_tables, kept_methods", [
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
])
def test_complete_blocks_keep_the_most_scores(present, kept_tables, kept_methods):
    Row = namedtuple("Row", "method")
    Tbl = namedtuple("Tbl", "label rows")
    tables = [Tbl(t, [Row(m) for m in ms]) for t, ms in present.items()]
    kept, methods = leaderboard._complete_blocks(tables)
    assert [t.label for t in kept] == kept_tables and methods == kept_methods


def test_tables_that_all_rank_alike_give_an_infinite_iman_davenport_f_said_as_such():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.5, (2, 10, 3))
    m, cells = _frame({"random": base, "good": base + 0.1, "best": base + 0.2})
    quarter = m.assign(label_fraction=0.25, cell_id=m["cell_id"] + "/q")
    md = render(pd.concat([m, quarter]), pd.concat([cells, cells.assign(cell_id=cells["cell_id"] + "/q")]))
    across = md.split("### Across tasks")[1]
    # Demšar's F_F = (N - 1) chi2 / (N (k - 1) - chi2) with chi2 at its maximum N (k - 1): division by zero
    assert "χ²_F = 4.000" in across
    assert "Iman–Davenport F = ∞ (df 2, 2; p < 0.0001 — every table ranks the methods in the same order)" in across


SET_SUITE = Suite(name="fixture_set", version=1, synthetic=True, pretrain_dataset="fixture_cxr",
                  tasks=(Task("findings", "fixture_cxr", "classification", ("finetune",), (1.0,), "auroc"),),
                  seeds=(0, 1))


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
            cell = {"suite": "fixture_set", "suite_version": 1, "task": "findings", "method": method,
                    "protocol": "finetune", "label_fraction": 1.0, "draw": 0, "seed": s, "budget": "quick",
                    "leakage_override": 0, "cell_id": f"{method}/s{s}"}
            rows.append(cell | {"case_id": "__set__", "class": -1, "metric": "auroc", "value": mean_auroc(p, y)})
            for c in range(2):
                rows.append(cell | {"case_id": "__set__", "class": c, "metric": "auroc",
                                    "value": mean_auroc(p[:, [c]], y[:, [c]])})
                for i in range(n):
                    rows.append(cell | {"case_id": f"img{i:04d}", "class": c, "metric": "pred_score", "value": p[i, c]})
                    rows.append(cell | {"case_id": f"img{i:04d}", "class": c, "metric": "pred_target", "value": y[i, c]})
    m = pd.DataFrame(rows)
    cells = m.drop_duplicates("cell_id")[["cell_id"]].assign(git_sha="abc", device="cpu", gpu_hours=0.0,
                                                             cpu_hours=0.1, params=1000)
    return m, cells, scores, y


def test_set_level_tables_bootstrap_test_images_and_test_by_paired_bootstrap():
    from bench import stats
    metrics, cells, scores, y = _set_frames({"random": 0.2, "better": 1.2, "tied": 0.2})
    lb = leaderboard.analyse(SET_SUITE, metrics, cells)
    (table,) = lb.sections[0].tables
    assert table.unit == "images" and table.cases == 120
    better = table.row("better")
    runs = np.stack([scores["better", 0], scores["better", 1]])
    assert (better.low, better.high) == pytest.approx(stats.set_auroc_ci(runs, y, n_resamples=10_000, seed=0))
    assert better.low < better.mean < better.high and better.high - better.low > 0.01   # no longer a point
    assert better.vs_baseline.mark(0.05) == leaderboard.MARK_BETTER
    assert table.row("tied").vs_baseline.mark(0.05) == ""
    assert table.tau is not None and len(table.tau) == 1000
    md = leaderboard.markdown(lb, now=NOW, git=GIT)
    assert "120 test images" in md and "paired bootstrap over test images" in md
    assert "Wilcoxon" not in md.split("### Across", 1)[0]


def test_set_level_table_without_predictions_keeps_the_case_bootstrap():
    metrics, cells, _, _ = _set_frames({"random": 0.2, "better": 1.2})
    old = metrics[~metrics["metric"].isin(["pred_score", "pred_target"])]
    (table,) = leaderboard.analyse(SET_SUITE, old, cells).sections[0].tables
    assert table.unit == "cases" and table.cases == 1
    per_seed = old[old["class"] == -1].groupby("method")["value"]
    for r in table.rows:               # only the two seeds' values to resample: the CI spans them and no more
        assert (r.low, r.high) == pytest.approx((per_seed.min()[r.method], per_seed.max()[r.method]))


def store_of(metrics: pd.DataFrame, cells: pd.DataFrame, path: Path) -> ResultsStore:
    """A results store at ``path`` holding these metric rows, one stored cell per ``cell_id``."""
    store = ResultsStore(path)
    info = cells.set_index("cell_id")
    for cell_id, g in metrics.groupby("cell_id"):
        cell = g.iloc[0][["suite", "suite_version", "task", "method", "protocol", "label_fraction", "draw", "seed",
                          "budget", "leakage_override"]].to_dict()                  # Python scalars for SQLite
        cell |= {"cell_id": cell_id, "config_hash": "h"} | info.loc[cell_id].to_dict()
        store.write_cell(cell, g.rename(columns={"case_id": "case"})[["case", "class", "metric", "value"]]
                         .to_dict("records"))
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
    again = leaderboard.render(SET_SUITE, *leaderboard.from_csv(out / "fixture_set.csv"), now=NOW, git=GIT,
                               figures=True)
    assert again == md and "40 test images" in md


def test_publish_writes_figures_and_csv_that_round_trips(frames, tmp_path):
    metrics, cells = frames
    nsd = metrics[metrics["metric"] == "dice"].assign(metric="nsd")                 # stored, but not the task metric
    store = store_of(pd.concat([metrics, nsd]), cells, tmp_path / "results.sqlite")
    out = tmp_path / "leaderboards"
    path = leaderboard.publish(SUITE, store, out, now=NOW, git=GIT, class_names=CLASS_NAMES)
    md = path.read_text(encoding="utf-8")
    links = [line.split("](", 1)[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert {Path(p).name for p in links} == {
        "quick_organs_finetune_label_efficiency.png", "quick_rank_stability.png",
        "quick_critical_difference.png", "quick_probability_of_improvement.png"}
    for p in links:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert md == render(metrics, cells, class_names=CLASS_NAMES, figures=True)    # store == fixture
    again = leaderboard.render(SUITE, *leaderboard.from_csv(out / "fixture.csv"), now=NOW, git=GIT,
                               class_names=CLASS_NAMES, figures=True)
    assert again == md
    rows = pd.read_csv(out / "fixture.csv")
    assert set(rows["metric"]) == {"dice", "accuracy"}                          # only the rows used
    plain = leaderboard.write(SUITE, store, tmp_path / "plain", now=NOW, git=GIT, class_names=CLASS_NAMES)
    assert "![" not in plain.read_text(encoding="utf-8")


def test_published_csv_imported_into_a_fresh_store_renders_the_same_leaderboard(frames, tmp_path):
    metrics, cells = frames
    out = tmp_path / "lb"
    md = leaderboard.publish(SUITE, store_of(metrics, cells, tmp_path / "a.sqlite"), out, now=NOW, git=GIT,
                             class_names=CLASS_NAMES).read_text(encoding="utf-8")
    fresh = ResultsStore(tmp_path / "b.sqlite")
    (report,) = leaderboard.import_published([out / "fixture.csv"], fresh)
    assert len(report.added) == cells["cell_id"].nunique() and not report.kept and not report.replaced
    again = leaderboard.publish(SUITE, fresh, tmp_path / "lb2", now=NOW, git=GIT, class_names=CLASS_NAMES)
    assert again.read_text(encoding="utf-8") == md and "### Pretraining compute" in md
    got = fresh.cells().set_index("cell_id").sort_index()
    want = cells.set_index("cell_id").sort_index()
    for c in ("git_sha", "wall_s", "cpu_hours", "params", "pretrain_wall_s", "pretrain_device"):
        assert got[c].tolist() == want[c].tolist() or got[c].equals(want[c]), c
    # the published rows carry no config hash, so the runner never takes an imported cell for its own run
    assert set(got["config_hash"]) == {leaderboard.IMPORTED_HASH}


def test_import_brings_the_predictions_file_beside_the_csv(tmp_path):
    metrics, cells, _, _ = _set_frames({"random": 0.2, "better": 1.2}, n=40)
    out = tmp_path / "lb"
    md = leaderboard.publish(SET_SUITE, store_of(metrics, cells, tmp_path / "a.sqlite"), out, now=NOW,
                             git=GIT).read_text(encoding="utf-8")
    fresh = ResultsStore(tmp_path / "b.sqlite")
    leaderboard.import_published([out / "fixture_set.csv"], fresh)
    assert set(fresh.metrics()["metric"]) == {"auroc", "pred_score", "pred_target"}
    again = leaderboard.render(SET_SUITE, fresh.metrics(), fresh.cells(), now=NOW, git=GIT, figures=True)
    assert again == md and "40 test images" in md


def test_import_keeps_the_stores_own_cells_unless_told_to_replace_them(frames, tmp_path):
    metrics, cells = frames
    out = tmp_path / "lb"
    leaderboard.publish(SUITE, store_of(metrics, cells, tmp_path / "a.sqlite"), out, now=NOW, git=GIT)
    mine = metrics[metrics["method"] == "asa"].assign(value=0.5)           # my own run of published cells
    store = store_of(mine, cells[cells["cell_id"].isin(mine["cell_id"])], tmp_path / "b.sqlite")
    asa = set(mine["cell_id"])
    (r,) = leaderboard.import_published([out / "fixture.csv"], store)
    assert set(r.kept) == asa and len(r.added) == cells["cell_id"].nunique() - len(asa)
    m = store.metrics()
    assert (m.loc[m["method"] == "asa", "value"] == 0.5).all()
    assert set(m["method"]) == set(metrics["method"]) and len(m) == len(metrics)
    (r,) = leaderboard.import_published([out / "fixture.csv"], store, replace=True)
    assert set(r.replaced) == set(cells["cell_id"]) and not r.added
    m = store.metrics().sort_values(["cell_id", "case_id", "class"])["value"].to_numpy()
    assert m == pytest.approx(metrics.sort_values(["cell_id", "case_id", "class"])["value"].to_numpy())


@pytest.mark.parametrize("spoil, says", [
    (lambda d: d[["suite", "value"]], "lacks the column(s) suite_version"),
    (lambda d: d.assign(value=d["value"].astype(object).where(d.index != 5, "")), "empty or non-numeric value"),
    (lambda d: d.assign(seed=d["seed"].where(d.index != 0, 7)), "disagree on its seed"),
    (None, "no such file"),
])
def test_import_of_a_bad_file_is_one_error_and_writes_nothing(frames, tmp_path, capsys, spoil, says):
    from bench import results

    metrics, cells = frames
    out = tmp_path / "lb"
    leaderboard.publish(SUITE, store_of(metrics, cells, tmp_path / "a.sqlite"), out, now=NOW, git=GIT)
    bad = tmp_path / "bad.csv"
    if spoil is not None:
        spoil(pd.read_csv(out / "fixture.csv")).to_csv(bad, index=False)
    db = tmp_path / "b.sqlite"
    rc = results.main(["import", str(out / "fixture.csv"), str(bad), "--store", str(db)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {bad}: ") and says in err and err.count("\n") == 1, err
    assert not db.exists() or not ResultsStore(db).cell_ids()        # the good file before it did not land either


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
    assert (out / "fixture.md").read_text(encoding="utf-8") == current               # not overwritten
    assert sorted(p.name for p in (out / "fixture_v1").glob("*.png")) == sorted(
        Path(p).name for p in leaderboard.figure_files(leaderboard.analyse(SUITE, metrics, cells)).values())
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
    from bench import bench_stats

    assert bench_stats.main(["--methods", "3", "--tasks", "2", "--seeds", "2", "--cases", "6", "--classes", "2",
                             "--resamples", "200", "--poi-resamples", "200", "--rank-boots", "20",
                             "--no-per-call"]) == 0
    out = capsys.readouterr().out
    assert "7b publish" in out and "leaderboard end to end" in out


def test_rank_stability_quantiles_skip_resamples_where_tau_is_undefined():
    metrics, cells, _, _ = _set_frames({"random": 0.2, "better": 1.2}, n=40)
    lb = leaderboard.analyse(SET_SUITE, metrics, cells)
    lb.sections[0].tables[0].tau[0] = np.nan          # a resample that tied the methods
    md = leaderboard.markdown(lb, now=NOW, git=GIT)
    assert "Rank stability" in md and "median n/a" not in md
