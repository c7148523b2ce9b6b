"""bench.tools.calibration: variance components of published tables and the null calibration of the statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.tools import calibration as cal

# the published abdomen v1 quick finetune table's components (python -m bench.tools.calibration), rounded, with a
# method x case term added: the run dominates, as in these benchmarks
ABDOMEN = dict(n_cases=20, sd_case=0.004, sd_run=0.026, sd_method_case=0.004, sd_resid=0.005)


def _rows(y: np.ndarray, task: str = "organs13", classes: int = 2, seed: int = 0) -> pd.DataFrame:
    """Published-CSV rows of per-case scores y [M, R, C]: each case's score split over ``classes`` foreground
    classes (their mean is y), plus a background class 0 and a prediction row that must both be ignored."""
    rng = np.random.default_rng(seed)
    out = []
    for m, r, c in np.ndindex(y.shape):
        jitter = rng.normal(0, 0.01, classes)
        jitter -= jitter.mean()
        base = dict(
            suite="toy",
            suite_version=1,
            task=task,
            method=f"m{m}",
            protocol="finetune",
            label_fraction=1.0,
            draw=0,
            seed=r,
            budget="quick",
            case_id=f"case{c:03d}",
            metric="dice",
        )
        out += [{**base, "class": k + 1, "value": y[m, r, c] + jitter[k]} for k in range(classes)]
        out.append({**base, "class": 0, "value": 99.0})
        out.append({**base, "class": 1, "metric": "pred_score", "value": -99.0})
    return pd.DataFrame(out)


def test_variance_components_recovers_known_components():
    truth = dict(sd_case=0.10, sd_run=0.05, sd_method_case=0.03, sd_resid=0.02)
    y = cal.simulate(6, 6, 80, **truth, n_tables=1, seed=1)[0]
    comp = cal.variance_components(_rows(y))
    assert len(comp) == 1
    row = comp.iloc[0]
    assert (row["methods"], row["min_runs"], row["max_runs"], row["cases"]) == (6, 6, 6, 80)
    assert not row["set_level"]
    for name, sd in truth.items():
        assert row[name] == pytest.approx(sd, rel=0.3), name
    assert row["sd_mc_resid"] == pytest.approx(np.hypot(truth["sd_method_case"], truth["sd_resid"]), rel=0.3)


def test_variance_components_unbalanced_runs_and_set_level():
    # one method with one run: sd_run from the repeated methods only
    y = cal.simulate(3, 4, 60, 0.1, 0.05, 0.0, 0.02, n_tables=1, seed=2)[0]
    rows = _rows(y, classes=1)
    rows = rows[~((rows["method"] == "m2") & (rows["seed"] > 0))]
    row = cal.variance_components(rows).iloc[0]
    assert row["runs"] == "m0 4, m1 4, m2 1"
    assert row["sd_run"] == pytest.approx(0.05, rel=0.4)
    assert row["sd_resid"] == pytest.approx(0.02, rel=0.2)
    # every method one run: no run or residual component, their sum with the interaction still estimated
    single = cal.variance_components(_rows(y[:, :1], classes=1)).iloc[0]
    assert np.isnan(single["sd_run"]) and np.isnan(single["sd_resid"]) and np.isnan(single["sd_method_case"])
    assert single["sd_mc_resid"] == pytest.approx(0.02, rel=0.4)
    # a set-level table (class -1 is the score; one case per run): run-level values only
    runs = np.array([[0.50, 0.60, 0.70], [0.52, 0.58, 0.66]])
    set_rows = pd.DataFrame(
        [
            dict(
                suite="toy",
                suite_version=1,
                task="cls",
                method=f"m{m}",
                protocol="knn",
                label_fraction=1.0,
                draw=0,
                seed=r,
                budget="quick",
                case_id="__set__",
                metric="auroc",
                **{"class": k},
                value=runs[m, r] + (k >= 0) * 5.0,
            )
            for m, r in np.ndindex(runs.shape)
            for k in (-1, 0, 1)
        ]
    )
    srow = cal.variance_components(set_rows).iloc[0]
    assert srow["set_level"] and srow["cases"] == 1
    pooled = np.sqrt(np.mean(runs.var(1, ddof=1)))
    assert srow["sd_run"] == pytest.approx(pooled)
    assert srow["mean"] == pytest.approx(runs.mean())
    assert all(np.isnan(srow[c]) for c in ("sd_case", "sd_method_case", "sd_resid"))


def test_simulate_shapes_and_effect():
    y = cal.simulate(3, 4, 5, 0.0, 0.0, 0.0, 0.0, effect=0.25, n_tables=2, seed=0, mu=1.0)
    assert y.shape == (2, 3, 4, 5)
    assert np.all(y[:, 0] == 1.0) and np.all(y[:, 1] == 1.25) and np.all(y[:, 2] == 1.0)
    a = cal.simulate(2, 3, 4, 1, 1, 1, 1, n_tables=3, seed=5)
    assert np.array_equal(a, cal.simulate(2, 3, 4, 1, 1, 1, 1, n_tables=3, seed=5))
    assert not np.array_equal(a, cal.simulate(2, 3, 4, 1, 1, 1, 1, n_tables=3, seed=6))


@pytest.mark.parametrize("runs", [3, 5])
def test_null_false_marks_old_far_above_alpha_new_near_alpha(runs):
    sims = cal.simulate(
        2,
        runs,
        ABDOMEN["n_cases"],
        ABDOMEN["sd_case"],
        ABDOMEN["sd_run"],
        ABDOMEN["sd_method_case"],
        ABDOMEN["sd_resid"],
        n_tables=400,
        seed=runs,
    )
    old = cal.old_procedure(sims, n_resamples=500, seed=0)
    new = cal.new_procedure(sims, n_resamples=500, seed=0)
    assert cal.false_mark_rate(old) > 0.3
    assert 0.01 <= cal.false_mark_rate(new) <= 0.10
    assert 0.01 <= float(np.mean(new.p < 0.05)) <= 0.10  # the test itself, not only the mark
    assert cal.coverage(new, "difference") >= 0.9
    if runs == 3:
        assert cal.coverage(new) >= 0.9
        assert cal.coverage(old) < cal.coverage(new) - 0.1
        assert cal.coverage(old) < 0.85


def test_one_run_is_never_marked():
    sims = cal.simulate(2, 1, 20, 0.004, 0.026, 0.0, 0.005, n_tables=50, seed=3)
    new = cal.new_procedure(sims, n_resamples=200)
    assert not new.marks.any()
    assert np.isnan(new.p).all()
    assert np.isnan(cal.coverage(new)) and np.isnan(cal.coverage(new, "difference"))  # no CI from one run
    assert cal.old_procedure(sims, n_resamples=200).marks.mean() > 0.5  # the old test did mark


def test_power_under_an_effect():
    s = ABDOMEN
    sims = cal.simulate(
        2,
        5,
        s["n_cases"],
        s["sd_case"],
        s["sd_run"],
        s["sd_method_case"],
        s["sd_resid"],
        effect=0.1,
        n_tables=100,
        seed=4,
    )
    new = cal.new_procedure(sims, effect=0.1, n_resamples=200)
    assert cal.false_mark_rate(new) > 0.9  # a true effect of ~4 run sd is found
    assert cal.coverage(new, "difference") >= 0.85


def test_cli_on_a_published_csv(capsys):
    csv = cal.LEADERBOARDS / "chest_xray.csv"
    assert cal.main([str(csv), "--tables", "20", "--runs", "1", "3", "--resamples", "200"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith(
        "Command: `python -m bench.tools.calibration leaderboards/chest_xray.csv --tables 20 --seed 0"
    )
    assert "| table | metric | methods | runs per method | cases | sd_case | sd_run |" in out
    assert "| chest_xray v1 quick findings4 few_shot 100% | auroc | 4 | ace 3, dino 3, mae 3, random 3 | 5 |" in out
    assert "1 (set-level)" in out
    assert "| setting | cases | runs | false marks, old | false marks, new |" in out
    sim = [line for line in out.splitlines() if line.startswith("| chest_xray") and "| 5 | 3 |" in line]
    assert len(sim) == 1
    assert sum(line.startswith("| typical") for line in out.splitlines()) == 2  # runs 1 and 3
    assert sum(line.startswith("| stress") for line in out.splitlines()) == 2
    assert captured.err.count("runs: false marks old") == 6  # one progress line per setting
    one_run = [line for line in out.splitlines() if line.startswith("| chest_xray") and "| 5 | 1 |" in line]
    assert one_run and one_run[0].split("|")[5].strip() == "0.000"  # new: never marks with one run
    assert one_run[0].split("|")[7].strip() == "—"  # ... and gives no CI


def test_cli_without_estimable_runs_prints_components_only(capsys, tmp_path):
    # one run per method: no run component to estimate (a published CSV changes as runs are added, so the
    # one-run table is made here from smoke's rows at seed 0)
    rows = pd.read_csv(cal.LEADERBOARDS / "smoke.csv")
    one = tmp_path / "one_run.csv"
    rows[rows["seed"] == 0].to_csv(one, index=False)
    assert cal.main([str(one), "--tables", "5"]) == 0
    out = capsys.readouterr().out
    assert "| smoke v2 quick seg3 finetune 100% | dice | 5 |" in out
    assert "No table estimates every component." in out


def test_variance_estimators_are_unbiased():
    truth = dict(sd_case=0.05, sd_run=0.03, sd_method_case=0.02, sd_resid=0.01)
    sims = cal.simulate(3, 3, 15, **truth, n_tables=400, seed=7)
    est = [cal._components(list(t)) for t in sims]
    for name, sd in truth.items():
        var = np.mean([e[name] ** 2 for e in est])  # truncation at 0 biases up a little, where it happens
        assert var == pytest.approx(sd**2, rel=0.15), name
