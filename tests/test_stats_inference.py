"""Run-level inference (bench.stats: run_mean, paired_run_difference, set_run_mean, set_run_difference, verdict,
minimal_detectable_effect, bayes_signed_rank, friedman_exact, hierarchical_bootstrap_means, rank_probabilities,
average_precision).

References checked against:
- The null behaviour of the run-level t and of the old pooled per-case Wilcoxon, simulated under the variance
  structure of these benchmarks: x[m, r, c] = mu + case_c + run_{m,r} + e_{m,r,c}, sd 0.1, 0.03, 0.02, C = 20.
- baycomp 1.0.3's SignedRankTest (Benavoli et al., JMLR 18(77), 2017): its probabilities on the same differences.
- Exact Friedman null distribution (Siegel & Castellan 1988; Hollander & Wolfe 1999): k = 3, N = 3,
  P(chi2_F >= 6.0) = 0.028; k = 3, N = 4, P(chi2_F >= 6.5) = 0.042 and P(chi2_F >= 8.0) = 0.0046; and perfect
  agreement of two blocks, p = 1 / k!.
- sklearn's average precision and a hand-computed worked example.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as ss

from bench import stats as S

SD_CASE, SD_RUN, SD_E, N_CASE = 0.1, 0.03, 0.02, 20


def _tables(rng: np.random.Generator, n_tables: int, n_run: int) -> np.ndarray:
    """Null tables of two methods with equal means: [T, 2, R, C]."""
    case = rng.normal(0, SD_CASE, (n_tables, 1, 1, N_CASE))
    run = rng.normal(0, SD_RUN, (n_tables, 2, n_run, 1))
    return 0.5 + case + run + rng.normal(0, SD_E, (n_tables, 2, n_run, N_CASE))


def _same(x: S.Difference, y: S.Difference, exact: bool = True) -> bool:
    """Field-wise equality with NaN equal to NaN (``exact=False``: floats to rounding)."""
    for u, v in zip(x, y):
        if isinstance(u, (str, int)):
            if u != v:
                return False
        elif not (np.isnan(u) and np.isnan(v)) and (u != v if exact else u != pytest.approx(v, rel=1e-12, abs=1e-15)):
            return False
    return True


# ------------------------------------------------------------------------------- behaviour under the null


@pytest.mark.parametrize("n_run", [2, 3, 5])
def test_paired_run_difference_t_holds_its_level_under_the_null(n_run):
    x = _tables(np.random.default_rng(10 + n_run), 800, n_run)
    p = np.array([S.paired_run_difference(t[0], t[1], method="t").p for t in x])
    assert 0.02 <= np.mean(p < 0.05) <= 0.09


@pytest.mark.parametrize("n_run", [2, 3, 5])
def test_run_mean_t_interval_covers_the_true_mean(n_run):
    x = _tables(np.random.default_rng(20 + n_run), 800, n_run)
    res = [S.run_mean(t[0], method="t") for t in x]
    assert np.mean([r.low <= 0.5 <= r.high for r in res]) >= 0.90


def test_old_pooled_per_case_wilcoxon_rejects_a_true_null_far_too_often():
    """The bug this API fixes: (run, case) pairs pooled as independent replicates."""
    x = _tables(np.random.default_rng(3), 200, 3)
    p = np.array([S.paired_wilcoxon(t[0].ravel(), t[1].ravel())[1] for t in x])
    assert np.mean(p < 0.05) > 0.3
    p_run = np.array([S.paired_run_difference(t[0], t[1]).p for t in x])
    assert np.mean(p_run < 0.05) < 0.1


# ----------------------------------------------------------------------------------- run_mean, t and edges


def _anova_reference(x: np.ndarray, ci: float = 0.95) -> tuple[float, float, float, float]:
    """Two-way ANOVA written out with sums: (se, df, low, high) of the grand mean, as documented: with a unit
    component c, Banerjee's interval grand +- sqrt(t_{R-1}^2 v_run + t_{G-1}^2 c)."""
    r, g = x.shape
    grand = sum(sum(row) for row in x) / (r * g)
    rows = [sum(row) / g for row in x]
    cols = [sum(x[i][j] for i in range(r)) / r for j in range(g)]
    ms_run = g * sum((m - grand) ** 2 for m in rows) / (r - 1)
    ms_unit = r * sum((u - grand) ** 2 for u in cols) / (g - 1)
    ms_e = sum((x[i][j] - rows[i] - cols[j] + grand) ** 2 for i in range(r) for j in range(g)) / ((r - 1) * (g - 1))
    v_run, v_unit, v_e = ms_run / (r * g), ms_unit / (r * g), ms_e / (r * g)
    q = 0.5 + ci / 2
    if v_unit > v_e:
        c = v_unit - v_e
        var = v_run + c
        df = var**2 / (v_run**2 / (r - 1) + v_unit**2 / (g - 1) + v_e**2 / ((r - 1) * (g - 1)))
        half = (ss.t.ppf(q, r - 1) ** 2 * v_run + ss.t.ppf(q, g - 1) ** 2 * c) ** 0.5
    else:
        var, df = v_run, r - 1
        half = ss.t.ppf(q, df) * var**0.5
    return var**0.5, df, grand - half, grand + half


def test_run_mean_t_matches_the_two_way_anova_written_out():
    rng = np.random.default_rng(0)
    x = 0.7 + rng.normal(0, 0.1, 12) + rng.normal(0, 0.03, (4, 1)) + rng.normal(0, 0.02, (4, 12))
    res = S.run_mean(x, method="t", ci=0.9)
    se, df, low, high = _anova_reference(x, ci=0.9)
    assert res.interval == "t" and (res.runs, res.units) == (4, 12)
    assert res.estimate == pytest.approx(x.mean())
    assert (res.se, res.df, res.low, res.high) == pytest.approx((se, df, low, high))
    # the p-value is the level at which the interval just reaches 0
    at_p = S.run_mean(x, method="t", ci=1 - res.p)
    assert at_p.low == pytest.approx(0.0, abs=1e-9)


def test_run_mean_without_a_unit_component_is_the_one_sample_t_over_runs():
    run_means = np.array([0.61, 0.66, 0.58, 0.64])
    x = np.repeat(run_means[:, None], 7, axis=1)  # no unit variation: c = 0
    res = S.run_mean(x - 0.6, method="t")
    ref = ss.ttest_1samp(run_means - 0.6, 0.0)
    assert res.df == 3 and res.p == pytest.approx(ref.pvalue)
    low, high = ref.confidence_interval(0.95)
    assert (res.low, res.high) == pytest.approx((low, high))


def test_run_mean_with_one_run_gives_the_estimate_only():
    res = S.run_mean(np.array([[0.2, 0.4, 0.6]]))
    assert res.interval == "none" and res.runs == 1 and res.units == 3
    assert res.estimate == pytest.approx(0.4)
    assert all(np.isnan(v) for v in (res.low, res.high, res.p, res.se, res.df))
    assert S.verdict(res.low, res.high, 0.01) == "untested"
    assert S.run_mean(np.array([0.2, 0.4])).interval == "none"  # [C] is one run


def test_run_mean_drops_case_columns_holding_nan():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8))
    y = x.copy()
    y[1, 2] = np.nan
    y[0, 5] = np.nan
    keep = [0, 1, 3, 4, 6, 7]
    for method in ("t", "bootstrap"):
        got = S.run_mean(y, method=method, n_resamples=500)
        assert _same(got, S.run_mean(x[:, keep], method=method, n_resamples=500))
        assert got.units == 6
    nan_b = x.copy()
    nan_b[2, 0] = np.nan
    assert S.paired_run_difference(x, nan_b).units == 7
    assert S.run_mean(np.full((3, 2), np.nan)).interval == "none"


def test_run_mean_groups_average_the_cases_of_a_patient_first():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 6))
    groups = ["p1", "p1", "p2", "p3", "p3", "p3"]
    by_hand = np.stack([x[:, :2].mean(1), x[:, 2], x[:, 3:].mean(1)], axis=1)
    got = S.run_mean(x, groups=groups, method="t")
    assert _same(got, S.run_mean(by_hand, method="t"), exact=False)
    assert got.units == 3
    assert got.estimate != pytest.approx(x.mean())  # patients weigh equally, not slices
    # a NaN slice drops its column before grouping
    y = x.copy()
    y[0, 1] = np.nan
    assert _same(
        S.run_mean(y, groups=groups, method="t"),
        S.run_mean(np.stack([x[:, 0], x[:, 2], x[:, 3:].mean(1)], axis=1), method="t"),
        exact=False,
    )
    with pytest.raises(ValueError):
        S.run_mean(x, groups=["a", "b"])


def test_zero_spread_and_a_single_unit():
    x = np.full((3, 4), 0.25)
    res = S.run_mean(x, method="t")
    assert (res.low, res.high, res.se, res.p) == (0.25, 0.25, 0.0, 0.0)
    assert S.paired_run_difference(x, x, method="t").p == 1.0
    one = S.run_mean(np.array([[0.1], [0.3], [0.2]]), method="t")  # G == 1: run term only
    ref = ss.ttest_1samp([0.1, 0.3, 0.2], 0.0)
    assert one.units == 1 and one.df == 2 and one.p == pytest.approx(ref.pvalue)


def test_run_mean_bootstrap_is_the_crossed_bootstrap_and_auto_switches():
    rng = np.random.default_rng(4)
    x = rng.normal(0.1, 0.2, (4, 15))
    res = S.run_mean(x, method="bootstrap", n_resamples=2000, seed=7)
    boots = S.hierarchical_bootstrap_means([x], n_resamples=2000, seed=7)[0]
    assert res.interval == "bootstrap" and np.isnan(res.df)
    assert (res.low, res.high) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])))
    assert res.se == pytest.approx(boots.std(ddof=1))
    assert res.p == S.bootstrap_p(boots)
    assert _same(res, S.run_mean(x, method="bootstrap", n_resamples=2000, seed=7))
    assert S.run_mean(x).interval == "t"
    big = rng.normal(0, 1, (S.BOOTSTRAP_MIN_RUNS, 5))
    assert S.run_mean(big, n_resamples=200).interval == "bootstrap"
    assert S.run_mean(big[:-1], n_resamples=200).interval == "t"


def test_paired_run_difference_is_run_mean_of_the_difference_and_checks_shapes():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(3, 10)), rng.normal(size=(3, 10))
    assert _same(S.paired_run_difference(a, b), S.run_mean(a - b))
    with pytest.raises(ValueError):
        S.paired_run_difference(a, b[:, :9])
    with pytest.raises(ValueError):
        S.run_mean(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError):
        S.run_mean(a, method="wilcoxon")
    with pytest.raises(ValueError):
        S.run_mean(a, ci=1.5)


# -------------------------------------------------------------------------------------- set-level AUROC


def _set_data(seed: int, n_run: int = 3, n: int = 60, shift: float = 0.0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 2))
    y[: n // 3, 0] = 1
    y[n // 4 : n // 2, 1] = 1
    image = rng.normal(0, 1, (n, 2))
    a = image + y * (1.0 + shift) + rng.normal(0, 0.8, (n_run, n, 2))
    b = image + y + rng.normal(0, 0.8, (n_run, n, 2))
    return a, b, y


def test_set_run_difference_t_and_bootstrap():
    a, b, y = _set_data(0, shift=1.5)
    d = S.mean_auroc(a, y) - S.mean_auroc(b, y)
    for method in ("t", "bootstrap"):
        res = S.set_run_difference(a, b, y, method=method, n_resamples=400, seed=1)
        assert res.interval == method and (res.runs, res.units) == (3, 60)
        assert res.estimate == pytest.approx(d.mean())
        assert res.low < res.estimate < res.high and res.se > 0
        assert S.verdict(res.low, res.high, 0.01) == "better"
        assert _same(res, S.set_run_difference(a, b, y, method=method, n_resamples=400, seed=1))
    t = S.set_run_difference(a, b, y, method="t", n_resamples=400, seed=1)
    assert t.df >= 2 and t.p < 0.05
    same = S.set_run_difference(a, a, y, method="t", n_resamples=200)
    assert (same.estimate, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)


def test_set_run_mean_and_one_run():
    a, _, y = _set_data(1)
    res = S.set_run_mean(a, y, method="t", n_resamples=300)
    assert res.estimate == pytest.approx(np.mean(S.mean_auroc(a, y)))
    assert res.low < res.estimate < res.high < 1.0
    one = S.set_run_mean(a[0], y)
    assert one.interval == "none" and one.runs == 1 and np.isnan(one.low)
    assert S.set_run_difference(a[:1], a[:1], y).interval == "none"
    with pytest.raises(ValueError):
        S.set_run_difference(a, a[:, :50], y)
    with pytest.raises(ValueError):
        S.set_run_mean(a, y[:50])


def test_set_groups_draw_patients_as_clusters():
    """A patient scanned twice (two identical images) must not count as two independent cases."""
    a, b, y = _set_data(2, n_run=2, n=40)
    dup = lambda s: np.repeat(s, 2, axis=-2)  # noqa: E731
    patients = np.repeat(np.arange(40), 2)
    once = S.set_auroc_ci(a, y, n_resamples=500, seed=3)
    assert S.set_auroc_ci(dup(a), dup(y), n_resamples=500, seed=3, groups=patients) == once
    naive = S.set_auroc_ci(dup(a), dup(y), n_resamples=500, seed=3)
    assert naive[1] - naive[0] < once[1] - once[0]
    assert S.paired_set_auroc_test(
        dup(a), dup(b), dup(y), n_resamples=500, seed=3, groups=patients
    ) == S.paired_set_auroc_test(a, b, y, n_resamples=500, seed=3)
    # one group per image draws exactly as no groups
    assert S.set_auroc_ci(a, y, n_resamples=300, groups=list(range(40))) == S.set_auroc_ci(a, y, n_resamples=300)
    res = S.set_run_difference(dup(a), dup(b), dup(y), groups=patients, method="bootstrap", n_resamples=300)
    assert res.units == 40
    assert _same(res, S.set_run_difference(a, b, y, method="bootstrap", n_resamples=300))


# ----------------------------------------------------------------------------- verdict and detectability


def test_verdict_five_outcomes():
    assert S.verdict(0.01, 0.05, 0.005) == "better"
    assert S.verdict(-0.05, -0.01, 0.005) == "worse"
    assert S.verdict(-0.01, 0.02, 0.005) == "inconclusive"
    assert S.verdict(0.001, 0.004, 0.005) == "equivalent"  # excludes 0, but inside the margin
    assert S.verdict(-0.004, 0.004, 0.005) == "equivalent"
    assert S.verdict(float("nan"), 0.1, 0.005) == "untested"
    assert S.verdict(-0.01, 0.02, 0.0) == "inconclusive"


def test_minimal_detectable_effect():
    assert S.minimal_detectable_effect(0.01, np.inf) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-5)
    assert S.minimal_detectable_effect(0.02, 4) == pytest.approx((ss.t.ppf(0.975, 4) + ss.t.ppf(0.8, 4)) * 0.02)
    assert np.isnan(S.minimal_detectable_effect(float("nan"), 3))
    assert np.isnan(S.minimal_detectable_effect(0.1, float("nan")))


# --------------------------------------------------------------------------------- Bayesian signed rank


# baycomp 1.0.3's SignedRankTest.probs(zeros, d, rope, prior=prior, nsamples=200_000, random_state=0) on these
# differences (computed once in a separate environment: baycomp's wheel installs a top-level `tests` package that
# would shadow this project's, so it is not a test dependency); with rope 0 baycomp returns (left, right) only.
@pytest.mark.parametrize(
    "d, rope, prior, baycomp",
    [
        (
            np.array([0.012, 0.03, -0.004, 0.021, 0.008, 0.015, -0.01, 0.027, 0.005, 0.019]),
            0.01,
            1.0,
            (0.0, 0.3828, 0.6172),
        ),
        (
            np.array([0.012, 0.03, -0.004, 0.021, 0.008, 0.015, -0.01, 0.027, 0.005, 0.019]),
            0.0,
            1.0,
            (0.0024, 0.0, 0.9976),
        ),
        (np.array([-0.02, 0.004, -0.011, -0.006, 0.002, -0.015, 0.009]), 0.005, 0.5, (0.6291, 0.3512, 0.0197)),
        (np.array([0.003, -0.002, 0.001, 0.004, -0.001, 0.0]), 0.01, 1.0, (0.0, 1.0, 0.0)),
    ],
)
def test_bayes_signed_rank_agrees_with_baycomp(d, rope, prior, baycomp):
    ours = S.bayes_signed_rank(d, rope, prior_strength=prior, n_samples=50_000, seed=0)
    assert sum(ours) == pytest.approx(1.0)
    assert ours == pytest.approx(baycomp, abs=0.01)


def test_bayes_signed_rank_is_seeded_and_validates():
    d = np.array([0.02, 0.01, 0.03, np.nan])
    first = S.bayes_signed_rank(d, 0.005, n_samples=2000, seed=1)
    assert first == S.bayes_signed_rank(d, 0.005, n_samples=2000, seed=1)
    assert S.bayes_signed_rank(np.zeros(5), 0.01, n_samples=1000) == (0.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        S.bayes_signed_rank(np.array([np.nan]), 0.01)
    with pytest.raises(ValueError):
        S.bayes_signed_rank(d, -0.1)


# ------------------------------------------------------------------------------------------ exact Friedman


def _brute_force_friedman_p(scores: np.ndarray) -> float:
    """Every joint permutation of the blocks' rank vectors, counted one by one."""
    ranks = ss.rankdata(-scores, axis=1)
    n, k = ranks.shape
    stat = lambda rs: np.sum(rs.sum(0) ** 2)  # noqa: E731
    observed = stat(ranks)
    perms = list(itertools.permutations(range(k)))
    hits = total = 0
    for combo in itertools.product(perms, repeat=n):
        total += 1
        hits += stat(np.stack([ranks[i, list(p)] for i, p in enumerate(combo)])) >= observed - 1e-9
    return hits / total


def test_friedman_exact_reference_values():
    chi2, p, kind = S.friedman_exact(np.array([[3, 2, 1], [3, 2, 1.0]]))
    assert (chi2, kind) == (4.0, "exact") and p == pytest.approx(1 / 6)
    chi2, p, _ = S.friedman_exact(np.array([[4, 3, 2, 1], [4, 3, 2, 1.0]]))
    assert chi2 == 6.0 and p == pytest.approx(1 / 24)
    # k = 3, N = 3, perfect agreement: chi2_F = 6.0, P = 0.028 in the exact tables (1/36)
    chi2, p, _ = S.friedman_exact(np.tile([3.0, 2.0, 1.0], (3, 1)))
    assert chi2 == pytest.approx(6.0) and p == pytest.approx(0.028, abs=5e-4)
    # k = 3, N = 4, rank sums (4, 9, 11): chi2_F = 6.5, P = 0.042; perfect agreement: chi2_F = 8.0, P = 0.0046
    ranks = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 3, 2]], dtype=float)
    chi2, p, _ = S.friedman_exact(ranks, lower_is_better=True)
    assert chi2 == pytest.approx(6.5) and p == pytest.approx(0.042, abs=5e-4)
    chi2, p, _ = S.friedman_exact(np.tile([1.0, 2.0, 3.0], (4, 1)))
    assert chi2 == pytest.approx(8.0) and p == pytest.approx(0.0046, abs=5e-5)


def test_friedman_exact_with_ties_matches_brute_force_and_monte_carlo():
    scores = np.array([[0.8, 0.8, 0.6, 0.1], [0.9, 0.7, 0.7, 0.2], [0.5, 0.6, 0.4, 0.4]])
    chi2, p, kind = S.friedman_exact(scores)
    assert kind == "exact" and chi2 == pytest.approx(S.friedman(scores).chi2)
    assert p == pytest.approx(_brute_force_friedman_p(scores))
    chi2_mc, p_mc, kind_mc = S.friedman_exact(scores, max_enumeration=0, n_permutations=40_000, seed=1)
    assert kind_mc == "monte carlo" and chi2_mc == chi2 and p_mc == pytest.approx(p, abs=0.01)
    assert S.friedman_exact(scores[:1]) == (S.friedman(scores[:1]).chi2, 1.0, "exact")


def test_friedman_exact_approaches_chi2_for_many_blocks():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 3)) + np.array([0.0, 0.2, 0.4])
    chi2, p, kind = S.friedman_exact(scores, n_permutations=20_000)
    assert kind == "monte carlo"
    assert p == pytest.approx(S.friedman(scores).chi2_p, abs=0.03)
    with pytest.raises(ValueError):
        S.friedman_exact(np.zeros((3, 1)))


# ------------------------------------------------------------------------------- bootstrap rankings


def test_hierarchical_bootstrap_means_shares_units_and_runs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 12))
    boots = S.hierarchical_bootstrap_means([a, a + 0.1], n_resamples=500, seed=2)
    assert boots.shape == (2, 500)
    np.testing.assert_allclose(boots[1] - boots[0], 0.1)  # same cases and the same runs
    assert abs(boots[0].mean() - a.mean()) < 0.05
    unequal = S.hierarchical_bootstrap_means([a, (a + 0.1)[:2]], n_resamples=500, seed=2)
    assert np.std(unequal[1] - unequal[0]) > 0  # runs drawn independently
    # groups of one case draw as no groups; NaN cases are skipped in the means
    assert np.array_equal(
        S.hierarchical_bootstrap_means([a], groups=list(range(12)), n_resamples=100),
        S.hierarchical_bootstrap_means([a], n_resamples=100),
    )
    b = a.copy()
    b[0, 3] = np.nan
    nb = S.hierarchical_bootstrap_means([b], n_resamples=300, seed=1)[0]
    assert np.isfinite(nb).all() and abs(nb.mean() - np.nanmean(b)) < 0.05
    with pytest.raises(ValueError):
        S.hierarchical_bootstrap_means([a, a[:, :5]])


def test_rank_probabilities_by_hand():
    boots = np.array([[3.0, 1, 2, 2], [1, 2, 2, 3], [2, 3, 1, 2]])
    p, best = S.rank_probabilities(boots)
    np.testing.assert_allclose(p, [[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]])
    np.testing.assert_allclose(best, [0.5, 0.5, 0.25])
    _, best = S.rank_probabilities(boots, margin=1.0)
    np.testing.assert_allclose(best, [0.75, 0.75, 1.0])
    p_low, best_low = S.rank_probabilities(-boots, lower_is_better=True)
    np.testing.assert_allclose(p_low, p)
    np.testing.assert_allclose(best_low, [0.5, 0.5, 0.25])
    with_nan = np.concatenate([boots, np.array([[np.nan], [1.0], [2.0]])], axis=1)
    assert np.array_equal(S.rank_probabilities(with_nan)[0], p)


# ---------------------------------------------------------------------------------- average precision


def test_average_precision_worked_examples():
    """y = [0, 0, 1, 1], scores = [0.1, 0.4, 0.35, 0.8] (sklearn's docs): by descending threshold
    0.8: P = 1, R = 0.5; 0.4: P = 1/2, R = 0.5; 0.35: P = 2/3, R = 1; 0.1: P = 1/2, R = 1, so
    AP = 0.5 * 1 + 0 * 1/2 + 0.5 * 2/3 + 0 = 0.8333.
    Ties, y = [1, 0, 1, 0], scores = [0.9, 0.9, 0.5, 0.1]: the tied pair is one threshold, 0.9: P = 1/2,
    R = 0.5; 0.5: P = 2/3, R = 1; so AP = 0.5 * 1/2 + 0.5 * 2/3 = 0.5833."""
    ap = S.average_precision(np.array([0.1, 0.4, 0.35, 0.8])[:, None], np.array([0, 0, 1, 1])[:, None])
    assert ap == pytest.approx(0.8333, abs=1e-4)
    ap = S.average_precision(np.array([0.9, 0.9, 0.5, 0.1])[:, None], np.array([1, 0, 1, 0])[:, None])
    assert ap == pytest.approx(0.5833, abs=1e-4)


def test_average_precision_matches_sklearn_batched():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.3).astype(float)
    y[:, 2] = 0  # no positive: left out
    s = np.round(rng.random((2, 60, 3)), 1)  # many ties
    got = S.average_precision(s, y)
    ref = [np.mean([average_precision_score(y[:, c], s[r, :, c]) for c in range(2)]) for r in range(2)]
    np.testing.assert_allclose(got, ref)
    assert np.isnan(S.average_precision(s[0], np.zeros((60, 3))))
