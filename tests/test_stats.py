"""bench.stats against published worked examples, scipy, and hand-computable matrices (rliable style).

Sources cited below:

- Demšar, "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR 7:1-30, 2006 (§3.2.2,
  Table 5, Table 6).
- Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6:65-70, 1979.
- Efron & Tibshirani, "An Introduction to the Bootstrap", 1993 (ch. 13 percentile, ch. 14 BCa).
- Agarwal et al., "Deep RL at the Edge of the Statistical Precipice" (rliable), NeurIPS 2021.
- Wiesenfarth et al., "Methods and open-source toolkit for analyzing and visualizing challenge results"
  (challengeR), Sci. Rep. 11, 2021.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as ss

from bench import stats as S

# ------------------------------------------------------------------------------------ Friedman (Demšar)

# Demšar 2006 Table 6 reports, for C4.5, C4.5+m, C4.5+cf, C4.5+m+cf over 14 data sets, the mean ranks
# 3.143, 2.000, 2.893, 1.964 (rank sums 44, 28, 40.5, 27.5). The AUC values themselves are not
# reproduced here; this rank matrix [14 data sets, 4 classifiers] has exactly the paper's rank sums (one
# tie, as the .5 sums require), so friedman() must reproduce the paper's statistics end to end.
DEMSAR_RANKS = np.array(
    [
        [2, 1, 3.5, 3.5],
        [4, 1, 3, 2],
        [4, 1, 2, 3],
        [4, 1, 3, 2],
        [2, 3, 4, 1],
        [4, 2, 3, 1],
        [4, 2, 1, 3],
        [4, 2, 3, 1],
        [1, 3, 4, 2],
        [4, 2, 1, 3],
        [3, 2, 4, 1],
        [3, 4, 1, 2],
        [3, 1, 4, 2],
        [2, 3, 4, 1],
    ]
)


def test_friedman_formulas_from_demsar_2006_mean_ranks():
    """Demšar 2006 §3.2.2 / Table 6: mean ranks 3.143, 2.000, 2.893, 1.964 with N = 14, k = 4 give
    chi2_F = 9.28 and F_F = 3.69 (F with 3 and 39 degrees of freedom)."""
    r = np.array([3.143, 2.000, 2.893, 1.964])
    n, k = 14, 4
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(r**2) - k * (k + 1) ** 2 / 4)
    assert chi2 == pytest.approx(9.28, abs=0.01)
    assert (n - 1) * chi2 / (n * (k - 1) - chi2) == pytest.approx(3.69, abs=0.01)


def test_friedman_reproduces_demsar_2006_table6_statistics():
    """Demšar 2006 Table 6 / §3.2.2: mean ranks 3.143, 2.000, 2.893, 1.964; chi2_F = 9.28; F_F = 3.69;
    the paper's critical F(3, 39) at 0.05 is 2.85, so the null hypothesis is rejected."""
    res = S.friedman(5 - DEMSAR_RANKS)  # higher score = better = rank 1
    assert np.round(res.mean_ranks, 3) == pytest.approx([3.143, 2.000, 2.893, 1.964])
    assert res.chi2 == pytest.approx(9.28, abs=0.01)
    assert res.ff == pytest.approx(3.69, abs=0.01)
    assert ss.f.ppf(0.95, 3, 39) == pytest.approx(2.85, abs=0.01)
    assert res.ff_p < 0.05
    assert res.ff_p == pytest.approx(ss.f.sf(res.ff, 3, 39))
    assert res.chi2_p == pytest.approx(ss.chi2.sf(res.chi2, 3))
    # lower_is_better on the ranks themselves gives the same ranking
    assert S.friedman(DEMSAR_RANKS, lower_is_better=True).mean_ranks == pytest.approx(res.mean_ranks)


@pytest.mark.parametrize("shape", [(14, 4), (5, 12), (30, 3)])
def test_friedman_matches_scipy_without_ties(shape):
    """Without ties Demšar's chi2_F equals scipy.stats.friedmanchisquare (the tie correction is 1)."""
    rng = np.random.default_rng(shape[1])
    x = rng.random(shape)
    res = S.friedman(x)
    sp = ss.friedmanchisquare(*x.T)
    assert res.chi2 == pytest.approx(sp.statistic)
    assert res.chi2_p == pytest.approx(sp.pvalue)
    n, k = shape
    assert res.ff == pytest.approx((n - 1) * res.chi2 / (n * (k - 1) - res.chi2))
    assert res.ff_p == pytest.approx(ss.f.sf(res.ff, k - 1, (k - 1) * (n - 1)))
    assert res.mean_ranks == pytest.approx(ss.rankdata(-x, axis=1).mean(0))
    assert res.mean_ranks.sum() == pytest.approx(k * (k + 1) / 2)
    # the statistic does not depend on the direction; the ranks mirror
    low = S.friedman(x, lower_is_better=True)
    assert low.chi2 == pytest.approx(res.chi2) and low.mean_ranks == pytest.approx(k + 1 - res.mean_ranks)


def test_mean_ranks_hand_computed_with_ties():
    # block 1: 0.9 > 0.5 = 0.5 -> ranks 1, 2.5, 2.5; block 2: 0.1 < 0.2 < 0.3 -> ranks 3, 2, 1
    s = [[0.9, 0.5, 0.5], [0.1, 0.2, 0.3]]
    assert S.mean_ranks(s) == pytest.approx([2.0, 2.25, 1.75])
    assert S.mean_ranks(s, lower_is_better=True) == pytest.approx([2.0, 1.75, 2.25])
    with pytest.raises(ValueError):
        S.mean_ranks([[0.1, np.nan]])


def test_friedman_edge_cases():
    # identical ranking in every block: chi2_F = N (k - 1), F_F infinite
    res = S.friedman(np.tile([3.0, 2.0, 1.0], (6, 1)))
    assert res.chi2 == pytest.approx(6 * 2) and res.ff == np.inf and res.ff_p == 0.0
    # all methods tie everywhere: no evidence
    res = S.friedman(np.ones((5, 4)))
    assert res.chi2 == 0.0 and res.chi2_p == pytest.approx(1.0) and res.ff == 0.0
    with pytest.raises(ValueError):
        S.friedman(np.ones((5, 1)))


# ---------------------------------------------------------------------------------- critical differences


def _q(cd: float, k: int, n: int) -> float:
    return cd / np.sqrt(k * (k + 1) / (6 * n))


@pytest.mark.parametrize(
    "k, q05, q10",
    [
        (2, 1.960, 1.645),
        (3, 2.343, 2.052),
        (4, 2.569, 2.291),
        (5, 2.728, 2.459),
        (6, 2.850, 2.589),
        (7, 2.949, 2.693),
        (8, 3.031, 2.780),
        (9, 3.102, 2.855),
        (10, 3.164, 2.920),
    ],
)
def test_nemenyi_critical_values_demsar_table5a(k, q05, q10):
    """Demšar 2006 Table 5(a): critical values q_alpha of the two-tailed Nemenyi test (alpha 0.05, 0.10)."""
    assert _q(S.nemenyi_cd(k, 6), k, 6) == pytest.approx(q05, abs=2e-3)
    assert _q(S.nemenyi_cd(k, 6, alpha=0.10), k, 6) == pytest.approx(q10, abs=2e-3)


@pytest.mark.parametrize(
    "k, q05, q10",
    [
        (2, 1.960, 1.645),
        (3, 2.241, 1.960),
        (4, 2.394, 2.128),
        (5, 2.498, 2.241),
        (6, 2.576, 2.326),
        (7, 2.638, 2.394),
        (8, 2.690, 2.450),
    ],
)
def test_bonferroni_dunn_critical_values_demsar_table5b(k, q05, q10):
    """Demšar 2006 Table 5(b): critical values q_alpha of the two-tailed Bonferroni-Dunn test."""
    assert _q(S.bonferroni_dunn_cd(k, 6), k, 6) == pytest.approx(q05, abs=2e-3)
    assert _q(S.bonferroni_dunn_cd(k, 6, alpha=0.10), k, 6) == pytest.approx(q10, abs=2e-3)


def test_critical_differences_demsar_worked_example():
    """Demšar 2006 §3.2.2 example (k = 4 classifiers, N = 14 data sets): Nemenyi CD = 2.569 sqrt(4*5/(6*14))
    = 1.25; Bonferroni-Dunn CD = 2.394 sqrt(4*5/(6*14)) = 1.16 as printed (1.168 unrounded)."""
    assert S.nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)
    assert S.bonferroni_dunn_cd(4, 14) == pytest.approx(1.16, abs=0.01)
    assert S.bonferroni_dunn_cd(4, 14) == pytest.approx(2.394 * np.sqrt(20 / 84), abs=1e-3)
    # with the Table 6 mean ranks, C4.5 vs C4.5+m+cf differ by 1.179 < 1.25: not significant under Nemenyi
    assert 3.143 - 1.964 < S.nemenyi_cd(4, 14)
    with pytest.raises(ValueError):
        S.nemenyi_cd(1, 14)


# ------------------------------------------------------------------------------------------------- Holm


def test_holm_hand_computed():
    """Holm 1979: with m = 4 sorted p 0.005, 0.01, 0.03, 0.04 the step-down multipliers are 4, 3, 2, 1:
    0.02, 0.03, 0.06, 0.04 -> running maximum 0.02, 0.03, 0.06, 0.06; returned in the input order."""
    adj = S.holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # cap at 1
    assert S.holm([0.5, 0.9, 0.8]) == pytest.approx([1.0, 1.0, 1.0])
    # NaN is not counted in m and stays in place
    out = S.holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.02])
    assert S.holm([]).shape == (0,)
    np.testing.assert_allclose(S.holm(np.array([[0.01, 0.04], [0.03, 0.005]])), [[0.03, 0.06], [0.06, 0.02]])


def test_holm_matches_step_down_procedure():
    """Holm 1979: reject H_(1..j) while p_(i) <= alpha / (m - i + 1); adjusted p <= alpha must give the same
    rejections, and the adjusted values are max-accumulated (m - i + 1) p_(i), monotone, capped at 1."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = int(rng.integers(1, 15))
        p = rng.random(m) ** 3
        adj = S.holm(p)
        order = np.argsort(p)
        expected = np.minimum(1, np.maximum.accumulate([(m - i) * p[order][i] for i in range(m)]))
        assert adj[order] == pytest.approx(expected)
        assert np.all(np.diff(adj[order]) >= 0) and np.all(adj <= 1) and np.all(adj >= p)
        for alpha in (0.01, 0.05, 0.1):
            reject = np.zeros(m, bool)
            for i, j in enumerate(order):
                if p[j] > alpha / (m - i):
                    break
                reject[j] = True
            assert np.array_equal(adj <= alpha, reject)


# ----------------------------------------------------------------------------------------------- Wilcoxon


@pytest.mark.parametrize("n", [20, 120])  # exact and normal-approximation p-values in scipy
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_paired_wilcoxon_matches_scipy(n, alternative):
    rng = np.random.default_rng(n)
    a = rng.random(n)
    b = a - 0.05 + rng.normal(0, 0.1, n)
    ref = ss.wilcoxon(a, b, alternative=alternative)
    assert S.paired_wilcoxon(a, b, alternative) == pytest.approx((ref.statistic, ref.pvalue))


def test_paired_wilcoxon_zero_differences_nan_pairs_and_degenerate():
    rng = np.random.default_rng(3)
    a, b = rng.random(30), rng.random(30)
    b[:5] = a[:5]  # five zero differences: dropped (zero_method="wilcox")
    ref = ss.wilcoxon(a[5:], b[5:])  # 25 nonzero differences: scipy's exact p-value
    assert S.paired_wilcoxon(a, b) == pytest.approx((ref.statistic, ref.pvalue))
    # the same statistic as scipy with zero_method="wilcox" on all pairs (scipy then uses the normal
    # approximation because zeros are present, so only the statistic is compared)
    assert S.paired_wilcoxon(a, b)[0] == pytest.approx(ss.wilcoxon(a, b, zero_method="wilcox").statistic)
    a2 = a.copy()
    a2[10] = np.nan  # an incomplete pair is dropped
    keep = np.arange(30) != 10
    assert S.paired_wilcoxon(a2, b) == pytest.approx(S.paired_wilcoxon(a[keep], b[keep]))
    assert S.paired_wilcoxon(a, a) == (0.0, 1.0)
    assert S.paired_wilcoxon([], []) == (0.0, 1.0)
    with pytest.raises(ValueError):
        S.paired_wilcoxon(a, b[:-1])


# ---------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_percentile_matches_normal_theory():
    """Efron & Tibshirani 1993 ch. 13: for the mean of a large sample the percentile interval is close to
    the normal interval mean +- 1.96 sd / sqrt(n)."""
    x = np.random.default_rng(0).normal(10, 2, 2000)
    lo, hi = S.bootstrap_ci(x, method="percentile", seed=1)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)


@pytest.mark.parametrize("stat", [np.mean, np.median, np.std])
def test_bootstrap_bca_matches_scipy_on_skewed_sample(stat):
    """BCa (Efron & Tibshirani 1993 ch. 14) against scipy.stats.bootstrap(method='BCa'), same B = 10,000.
    The resamples differ, so the endpoints agree only up to Monte Carlo error (about 1% here)."""
    x = np.random.default_rng(1).exponential(size=60)
    ours = S.bootstrap_ci(x, stat=stat, n_resamples=10_000, seed=0)
    ref = ss.bootstrap((x,), stat, method="BCa", n_resamples=10_000, random_state=0).confidence_interval
    assert ours[0] == pytest.approx(ref.low, rel=0.03) and ours[1] == pytest.approx(ref.high, rel=0.03)
    pct = S.bootstrap_ci(x, stat=stat, method="percentile", seed=0)
    ref = ss.bootstrap((x,), stat, method="percentile", n_resamples=10_000, random_state=0).confidence_interval
    assert pct[0] == pytest.approx(ref.low, rel=0.03) and pct[1] == pytest.approx(ref.high, rel=0.03)


def test_bootstrap_bca_corrects_towards_the_skew():
    """For the mean of a right-skewed sample BCa shifts both endpoints up relative to the percentile interval
    (positive acceleration; Efron & Tibshirani 1993 §14.3)."""
    x = np.random.default_rng(2).lognormal(0, 1, 40)
    bca, pct = S.bootstrap_ci(x, seed=0), S.bootstrap_ci(x, method="percentile", seed=0)
    assert bca[0] > pct[0] and bca[1] > pct[1]


def test_bootstrap_jackknife_matches_leave_one_out():
    x = np.random.default_rng(0).random(23)
    loo = np.array([np.median(np.delete(x, i)) for i in range(len(x))])
    assert S._jackknife(x, np.median) == pytest.approx(loo)
    loo = np.array([np.mean(np.delete(x, i)) for i in range(len(x))])
    assert S._jackknife(x, np.mean) == pytest.approx(loo)


def test_bootstrap_deterministic_and_degenerate():
    x = np.random.default_rng(1).exponential(size=50)
    assert S.bootstrap_ci(x, seed=0) == S.bootstrap_ci(x, seed=0)
    assert S.bootstrap_ci(x, seed=0) != S.bootstrap_ci(x, seed=1)
    assert S.bootstrap_ci(np.full(10, 0.7)) == (0.7, 0.7)
    assert S.bootstrap_ci(np.full(10, 0.7), method="percentile") == (0.7, 0.7)
    assert S.bootstrap_ci([3.0]) == (3.0, 3.0)
    with pytest.raises(ValueError, match="bca, percentile"):
        S.bootstrap_ci(x, method="basic")
    with pytest.raises(ValueError):
        S.bootstrap_ci(x, ci=1.5)


def test_hierarchical_bootstrap_covers_and_is_wider_with_seed_effects():
    """Seeds that differ systematically widen the two-level interval well beyond a flat case bootstrap,
    which treats the 500 values as independent."""
    rng = np.random.default_rng(0)
    scores = 0.7 + rng.normal(0, 0.05, (5, 1)) + rng.normal(0, 0.02, (5, 100))
    lo, hi = S.hierarchical_bootstrap_ci(scores, n_resamples=4000)
    assert lo < scores.mean() < hi
    flat = S.bootstrap_ci(scores.ravel(), method="percentile", n_resamples=4000)
    assert (hi - lo) > 2 * (flat[1] - flat[0])
    assert S.hierarchical_bootstrap_ci(scores, n_resamples=500, seed=3) == S.hierarchical_bootstrap_ci(
        scores, n_resamples=500, seed=3
    )


def test_hierarchical_bootstrap_batched_nan_and_degenerate():
    rng = np.random.default_rng(1)
    scores = rng.random((3, 2, 4, 30))  # [task, method, seed, case]
    lo, hi = S.hierarchical_bootstrap_ci(scores, n_resamples=1500, seed=7)
    assert lo.shape == hi.shape == (3, 2)
    for t in range(3):
        for m in range(2):  # the same indices for every entry
            assert (lo[t, m], hi[t, m]) == pytest.approx(
                S.hierarchical_bootstrap_ci(scores[t, m], n_resamples=1500, seed=7)
            )
    # a batch of >= 4 means uses draw counts instead of gathers: the same numbers, NaN included
    holes = scores.reshape(6, 4, 30).copy()
    holes[2, 1, :7] = np.nan
    lo, hi = S.hierarchical_bootstrap_ci(holes, n_resamples=700, seed=1)
    gathered = [
        S.hierarchical_bootstrap_ci(h, stat=lambda v, axis: np.nanmean(v, axis=axis), n_resamples=700, seed=1)
        for h in holes
    ]
    assert np.column_stack([lo, hi]) == pytest.approx(np.array(gathered))
    s = scores[0, 0].copy()
    s[1, :5] = np.nan  # cases missing for one seed are ignored
    lo, hi = S.hierarchical_bootstrap_ci(s, n_resamples=1000)
    assert np.isfinite([lo, hi]).all() and lo < np.nanmean(s) < hi
    assert S.hierarchical_bootstrap_ci(np.full((3, 10), 0.5), n_resamples=100) == (0.5, 0.5)
    # a 1-D input is one seed
    lo, hi = S.hierarchical_bootstrap_ci(s[0], stat=np.median, n_resamples=500)
    assert lo <= np.median(s[0]) <= hi


# ------------------------------------------------------------------------------------------------ rliable


def test_iqm_is_25_percent_trimmed_mean():
    """rliable: IQM = scipy.stats.trim_mean(scores, proportiontocut=0.25) over all runs and tasks."""
    x = np.random.default_rng(2).random((5, 7))
    assert S.iqm(x) == pytest.approx(ss.trim_mean(x, 0.25, axis=None))
    assert S.iqm(x, axis=0) == pytest.approx(ss.trim_mean(x, 0.25, axis=0))
    assert isinstance(S.iqm(x), float)
    # 8 values: drop the lowest 2 and the highest 2, mean of the middle 4
    assert S.iqm(np.arange(8.0)) == pytest.approx(np.mean([2, 3, 4, 5]))
    assert S.iqm([1, 2, 3, 4, 100, -100, 3, 2]) == pytest.approx(np.mean([2, 2, 3, 3]))


def test_stratified_bootstrap_ci():
    """rliable's stratified bootstrap resamples runs within each task: when all runs of a task agree, every
    resample equals the data and the interval collapses (an unstratified bootstrap would not)."""
    s = np.random.default_rng(0).random((5, 4))
    lo, hi = S.stratified_bootstrap_ci(s, n_resamples=500)
    assert lo <= S.iqm(s) <= hi
    const = np.tile(np.array([0.1, 0.5, 0.6, 0.9]), (6, 1))  # [run, task]
    lo, hi = S.stratified_bootstrap_ci(const, n_resamples=300)
    assert lo == pytest.approx(S.iqm(const)) and hi == pytest.approx(S.iqm(const))
    batch = np.random.default_rng(1).random((3, 5, 4))
    lo, hi = S.stratified_bootstrap_ci(batch, aggregate=np.mean, n_resamples=800, seed=2)
    assert lo.shape == (3,)
    assert (lo[1], hi[1]) == pytest.approx(S.stratified_bootstrap_ci(batch[1], np.mean, n_resamples=800, seed=2))


def test_probability_of_improvement_hand_computed():
    """rliable: P(X > Y) = mean over tasks of P(X_m > Y_m) + P(X_m = Y_m) / 2. Pairs (1,0) >, (1,2) <, (2,0) >,
    (2,2) = give (1 + 0 + 1 + 0.5) / 4."""
    assert S.probability_of_improvement([[1], [2]], [[0], [2]]) == pytest.approx(0.625)
    # two tasks: the first as above (0.625), the second X always better (1.0)
    assert S.probability_of_improvement([[1, 5], [2, 6]], [[0, 1], [2, 2]]) == pytest.approx((0.625 + 1) / 2)


def test_probability_of_improvement_matches_mann_whitney_and_is_symmetric():
    """rliable computes U / (n m) with scipy.stats.mannwhitneyu per task, averaged over tasks."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, (6, 3)).astype(float), rng.integers(0, 5, (4, 3)).astype(float)  # ties
    ref = np.mean([ss.mannwhitneyu(x[:, t], y[:, t]).statistic / (6 * 4) for t in range(3)])
    assert S.probability_of_improvement(x, y) == pytest.approx(ref)
    assert S.probability_of_improvement(x, y) + S.probability_of_improvement(y, x) == pytest.approx(1.0)
    runs = rng.random((4, 5, 3))  # [method, run, task]
    mat = S.probability_of_improvement(runs[:, None], runs[None])
    assert mat.shape == (4, 4) and np.diag(mat) == pytest.approx(0.5)
    assert mat + mat.T == pytest.approx(np.ones((4, 4)))
    assert mat[1, 2] == pytest.approx(S.probability_of_improvement(runs[1], runs[2]))


def test_probability_of_improvement_ci():
    rng = np.random.default_rng(0)
    x, y = rng.random((5, 3)), rng.random((5, 3))
    assert S.probability_of_improvement_ci(x + 1, y, n_resamples=200) == (1.0, 1.0)
    lo, hi = S.probability_of_improvement_ci(x, y, n_resamples=2000)
    assert lo <= S.probability_of_improvement(x, y) <= hi
    runs = rng.random((3, 5, 3))
    lo, hi = S.probability_of_improvement_ci(runs[:, None], runs[None], n_resamples=600, seed=4)
    assert lo.shape == (3, 3)
    assert (lo[0, 2], hi[0, 2]) == pytest.approx(S.probability_of_improvement_ci(runs[0], runs[2], 600, seed=4))


# ----------------------------------------------------------------------------------------- rank stability


def test_kendall_tau_b_matches_scipy():
    rng = np.random.default_rng(0)
    b = rng.integers(0, 4, 7).astype(float)
    a = rng.integers(0, 4, (20, 7)).astype(float)  # ties in both
    ours = S._kendall_tau_b(a, b)
    ref = [ss.kendalltau(row, b).statistic for row in a]  # scipy's default variant is tau-b
    assert ours == pytest.approx(ref, nan_ok=True)


def test_rank_stability():
    """challengeR (Wiesenfarth et al. 2021): Kendall's tau between the ranking on each bootstrap sample of
    cases and the full-data ranking."""
    rng = np.random.default_rng(0)
    separated = rng.random((50, 4)) * 0.01 + np.arange(4)
    tau = S.rank_stability(separated, n_boot=200)
    assert tau.shape == (200,) and np.all(tau == 1.0)
    assert np.all(S.rank_stability(separated, n_boot=50, lower_is_better=True) == 1.0)
    close = rng.normal(0, 1, (30, 5)) + np.linspace(0, 0.3, 5)
    tau = S.rank_stability(close, n_boot=300, seed=1)
    assert tau.min() < 1.0 and np.all((tau >= -1) & (tau <= 1))
    assert np.array_equal(tau, S.rank_stability(close, n_boot=300, seed=1))
    # the bootstrap ranking on one resample, computed by hand
    idx = np.random.default_rng(1).integers(0, 30, size=(300, 30))
    k = 17
    ref = ss.kendalltau(ss.rankdata(-close[idx[k]].mean(0)), ss.rankdata(-close.mean(0))).statistic
    assert tau[k] == pytest.approx(ref)
    batch = np.stack([close, close[::-1] * 2])  # [task, case, method]
    tb = S.rank_stability(batch, n_boot=300, seed=1)
    assert tb.shape == (2, 300) and np.array_equal(tb[0], tau)


def test_inestimable_interval_is_all_nan_not_an_error():
    """A t interval from non-finite variance components (set-level AUROC with < 2 finite image resamples) and a
    bootstrap without a finite resample: the estimate with NaN bounds, p, se and df, not a TypeError."""
    nan = float("nan")
    d = S._t_result(0.1, 0.01, nan, nan, 3, 20, 0.05)
    assert d.estimate == 0.1 and (d.runs, d.units, d.interval) == (3, 20, "t")
    assert all(np.isnan(v) for v in (d.low, d.high, d.p, d.se, d.df))
    b = S._boot_result(0.2, np.full(10, nan), 0.05, 4, 30)
    assert b.estimate == 0.2 and (b.runs, b.units, b.interval) == (4, 30, "bootstrap")
    assert all(np.isnan(v) for v in (b.low, b.high, b.p, b.se, b.df))
