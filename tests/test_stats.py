"""bench.stats against published worked examples and scipy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as ss

from bench import stats as S


def test_friedman_demsar_2006_worked_example():
    """Demšar, JMLR 7 (2006), §3.2.2: four classifiers on 14 data sets with mean ranks
    3.143, 2.000, 2.893, 1.964 give chi2_F = 9.28 and F_F = 3.69."""
    r = np.array([3.143, 2.000, 2.893, 1.964])
    n, k = 14, 4
    # friedman() computes from scores; build scores whose per-block ranks reproduce these means is
    # awkward, so check the formulas through a scores matrix with exactly these mean ranks' sums:
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(r ** 2) - k * (k + 1) ** 2 / 4)
    assert chi2 == pytest.approx(9.28, abs=0.01)
    ff = (n - 1) * chi2 / (n * (k - 1) - chi2)
    assert ff == pytest.approx(3.69, abs=0.01)


def test_friedman_matches_formula_and_scipy_without_ties():
    rng = np.random.default_rng(0)
    x = rng.random((14, 4))
    res = S.friedman(x)
    # scipy ranks ascending; Friedman's statistic is symmetric in the direction
    sp = ss.friedmanchisquare(*x.T)
    assert res.chi2 == pytest.approx(sp.statistic)
    assert res.chi2_p == pytest.approx(sp.pvalue)
    n, k = x.shape
    assert res.ff == pytest.approx((n - 1) * res.chi2 / (n * (k - 1) - res.chi2))
    assert res.ff_p == pytest.approx(ss.f.sf(res.ff, k - 1, (k - 1) * (n - 1)))
    # rank 1 = best = highest score
    best = np.argmax(x, 1)
    assert np.all(ss.rankdata(-x, axis=1)[np.arange(n), best] == 1)
    assert res.mean_ranks.sum() == pytest.approx(k * (k + 1) / 2)


@pytest.mark.parametrize("k, q", [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850), (7, 2.949),
                                  (8, 3.031), (9, 3.102), (10, 3.164)])
def test_nemenyi_critical_values_demsar_table5(k, q):
    """Demšar 2006, Table 5(a): q_0.05 for the two-tailed Nemenyi test."""
    cd = S.nemenyi_cd(k, 6)
    assert cd / np.sqrt(k * (k + 1) / 36) == pytest.approx(q, abs=2e-3)


@pytest.mark.parametrize("k, q", [(2, 1.960), (3, 2.241), (4, 2.394), (5, 2.498), (6, 2.576)])
def test_bonferroni_dunn_critical_values_demsar_table5(k, q):
    """Demšar 2006, Table 5(b): q_0.05 for the two-tailed Bonferroni–Dunn test."""
    assert S.bonferroni_dunn_cd(k, 6) / np.sqrt(k * (k + 1) / 36) == pytest.approx(q, abs=2e-3)


def test_critical_differences_demsar_example():
    """Demšar 2006 §3.2.2 example (k=4, N=14): Nemenyi CD = 1.25; Bonferroni–Dunn
    CD = 2.394 * sqrt(4*5/(6*14)) (the paper prints the rounded 1.16)."""
    assert S.nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.01)
    assert S.bonferroni_dunn_cd(4, 14) == pytest.approx(2.394 * np.sqrt(20 / 84), abs=2e-3)


def test_holm_hand_computed():
    # sorted p: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    adj = S.holm([0.01, 0.04, 0.03, 0.005])
    assert np.allclose(adj, [0.03, 0.06, 0.06, 0.02])
    assert np.all(S.holm([0.5, 0.9, 0.8]) <= 1.0) and S.holm([0.5, 0.9, 0.8]).max() == 1.0
    out = S.holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], [0.02, 0.02])


def test_paired_wilcoxon_matches_scipy_and_degenerate():
    rng = np.random.default_rng(3)
    a, b = rng.random(30), rng.random(30)
    assert S.paired_wilcoxon(a, b) == pytest.approx(tuple(ss.wilcoxon(a, b)))
    assert S.paired_wilcoxon(a, a) == (0.0, 1.0)


def test_bootstrap_percentile_normal_theory():
    x = np.random.default_rng(0).normal(10, 2, 2000)
    lo, hi = S.bootstrap_ci(x, method="percentile", seed=1)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - half, abs=0.02)
    assert hi == pytest.approx(x.mean() + half, abs=0.02)


def test_bootstrap_bca_matches_scipy_on_skewed_sample():
    x = np.random.default_rng(1).exponential(size=50)
    ours = S.bootstrap_ci(x, seed=0)
    ref = ss.bootstrap((x,), np.mean, method="BCa", n_resamples=10_000, random_state=0).confidence_interval
    assert ours[0] == pytest.approx(ref.low, rel=0.05) and ours[1] == pytest.approx(ref.high, rel=0.05)
    assert S.bootstrap_ci(x, seed=0) == S.bootstrap_ci(x, seed=0)
    assert S.bootstrap_ci(np.ones(10)) == (1.0, 1.0)


def test_iqm_is_25_percent_trimmed_mean():
    x = np.random.default_rng(2).random(37)
    assert S.iqm(x) == pytest.approx(ss.trim_mean(x, 0.25))
    # rliable's definition on 8 values: mean of the middle 4
    assert S.iqm(np.arange(8.0)) == pytest.approx(np.mean([2, 3, 4, 5]))


def test_probability_of_improvement_hand_computed_and_symmetric():
    # pairs (1,0) > , (1,2) <, (2,0) >, (2,2) = -> (1 + 0 + 1 + 0.5) / 4
    assert S.probability_of_improvement([[1], [2]], [[0], [2]]) == pytest.approx(0.625)
    rng = np.random.default_rng(0)
    x, y = rng.random((5, 3)), rng.random((5, 3))
    assert S.probability_of_improvement(x, y) + S.probability_of_improvement(y, x) == pytest.approx(1.0)
    lo, hi = S.probability_of_improvement_ci(x + 1, y, n_resamples=200)
    assert lo == hi == 1.0


def test_rank_stability_separated_methods_is_one():
    s = np.random.default_rng(0).random((50, 4)) * 0.01 + np.arange(4)
    tau = S.rank_stability(s, n_boot=300)
    assert tau.shape == (300,) and np.all(tau == 1.0)
    noisy = S.rank_stability(np.random.default_rng(1).random((20, 5)), n_boot=300)
    assert noisy.min() < 1.0


def test_hierarchical_bootstrap_covers_and_is_wider_with_seed_effects():
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.05, (5, 1))
    scores = 0.7 + seed_effect + rng.normal(0, 0.02, (5, 100))
    lo, hi = S.hierarchical_bootstrap_ci(scores, n_resamples=4000)
    assert lo < scores.mean() < hi
    flat = S.bootstrap_ci(scores.ravel(), method="percentile", n_resamples=4000)
    assert (hi - lo) > 2 * (flat[1] - flat[0])


def test_stratified_bootstrap_ci_contains_point_estimate():
    s = np.random.default_rng(0).random((5, 4))
    lo, hi = S.stratified_bootstrap_ci(s, n_resamples=500)
    assert lo <= S.iqm(s.ravel()) <= hi
