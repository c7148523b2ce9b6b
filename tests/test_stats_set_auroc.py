"""Set-level AUROC statistics (bench.stats.mean_auroc, set_auroc_ci, paired_set_auroc_test).

References checked against:
- Hanley & McNeil, The meaning and use of the area under a ROC curve, Radiology 143, 1982, Table 1: CT ratings of
  58 normal and 51 abnormal cases on a 5-point scale, AUC 0.893 with standard error 0.032.
- DeLong, DeLong & Clarke-Pearson, Comparing the areas under two or more correlated ROC curves, Biometrics 44,
  1988: the variance of a paired AUC difference from the structural components; implemented here, in the test,
  as an independent reference for the paired bootstrap.
- sklearn.metrics.roc_auc_score for the point value with ties.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as ss
from sklearn.metrics import roc_auc_score

from bench import stats as S


def _hanley_mcneil() -> tuple[np.ndarray, np.ndarray]:
    normal = [33, 6, 6, 11, 2]  # ratings 1 (definitely normal) .. 5 (definitely abnormal)
    abnormal = [3, 2, 2, 11, 33]
    ratings = np.arange(1, 6)
    scores = np.concatenate([np.repeat(ratings, normal), np.repeat(ratings, abnormal)]).astype(float)
    targets = np.concatenate([np.zeros(58), np.ones(51)])
    return scores[:, None], targets[:, None]


def _delong_paired(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """DeLong et al. (1988): AUC difference a - b and its two-sided normal p-value."""
    pos, neg = y == 1, y == 0
    comps = []
    for s in (a, b):
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        comps.append((psi.mean(1), psi.mean(0), psi.mean()))
    v10 = np.cov(np.stack([comps[0][0], comps[1][0]]))
    v01 = np.cov(np.stack([comps[0][1], comps[1][1]]))
    var = (v10[0, 0] + v10[1, 1] - 2 * v10[0, 1]) / pos.sum() + (v01[0, 0] + v01[1, 1] - 2 * v01[0, 1]) / neg.sum()
    delta = comps[0][2] - comps[1][2]
    return delta, float(2 * ss.norm.sf(abs(delta) / np.sqrt(var)))


def test_mean_auroc_reproduces_hanley_mcneil_and_sklearn_with_ties():
    s, t = _hanley_mcneil()
    assert S.mean_auroc(s, t) == pytest.approx(0.893, abs=5e-4)
    assert S.mean_auroc(s, t) == pytest.approx(roc_auc_score(t[:, 0], s[:, 0]), abs=1e-12)


def test_mean_auroc_skips_classes_with_one_label_and_matches_sklearn_per_class():
    rng = np.random.default_rng(0)
    t = (rng.random((60, 3)) < 0.3).astype(float)
    t[:, 2] = 0.0  # no positive: undefined, left out of the mean
    s = np.round(rng.random((60, 3)) + t, 1)  # rounding makes ties
    want = np.mean([roc_auc_score(t[:, c], s[:, c]) for c in (0, 1)])
    assert S.mean_auroc(s, t) == pytest.approx(want, abs=1e-12)
    batched = S.mean_auroc(np.stack([s, s[::-1]]), t)  # leading run dimension
    assert batched[0] == pytest.approx(want, abs=1e-12)


def test_set_auroc_ci_matches_hanley_mcneil_standard_error():
    s, t = _hanley_mcneil()
    low, high = S.set_auroc_ci(s, t, n_resamples=10_000, seed=0)
    # Hanley & McNeil's normal interval: 0.893 -/+ 1.96 * 0.032 = [0.830, 0.956]; the percentile bootstrap is
    # skewed towards 0.5 near the ceiling, so its upper end sits a little lower
    assert low == pytest.approx(0.893 - 1.96 * 0.032, abs=0.012)
    assert high == pytest.approx(0.893 + 1.96 * 0.032, abs=0.02)
    assert low < S.mean_auroc(s, t) < high


def test_set_auroc_ci_is_seeded_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.4).astype(float)
    s = rng.normal(size=2000) + 1.2 * y
    small = S.set_auroc_ci(s[:200, None], y[:200, None], n_resamples=2000, seed=3)
    assert small == S.set_auroc_ci(s[:200, None], y[:200, None], n_resamples=2000, seed=3)
    large = S.set_auroc_ci(s[:, None], y[:, None], n_resamples=2000, seed=3)
    assert (large[1] - large[0]) < 0.5 * (small[1] - small[0])  # width ~ 1/sqrt(n): 10x the images


def test_set_auroc_ci_over_runs_includes_the_spread_between_runs():
    rng = np.random.default_rng(2)
    y = (rng.random(300) < 0.5).astype(float)
    base = rng.normal(size=300)
    same = np.stack([base + 1.0 * y] * 3)[..., None]
    spread = np.stack([base + k * y for k in (0.2, 1.0, 2.5)])[..., None]
    w_same = np.subtract(*S.set_auroc_ci(same, y[:, None], n_resamples=2000)[::-1])
    w_spread = np.subtract(*S.set_auroc_ci(spread, y[:, None], n_resamples=2000)[::-1])
    assert w_spread > 2 * w_same


@pytest.mark.parametrize("shift", [0.0, 0.15, 0.3, 0.6])
def test_paired_set_auroc_test_agrees_with_delong(shift):
    rng = np.random.default_rng(4)
    n = 400
    y = (rng.random(n) < 0.35).astype(float)
    common = rng.normal(size=n)  # what both classifiers share: correlated ROC curves
    a = common + (0.8 + shift) * y + 0.7 * rng.normal(size=n)
    b = common + 0.8 * y + 0.7 * rng.normal(size=n)
    want_delta, want_p = _delong_paired(a, b, y)
    delta, p = S.paired_set_auroc_test(a[:, None], b[:, None], y[:, None], n_resamples=10_000, seed=0)
    assert delta == pytest.approx(want_delta, abs=1e-12)
    assert p == pytest.approx(want_p, abs=0.03 + 0.15 * want_p)
    assert (p < 0.05) == (want_p < 0.05)


def test_paired_set_auroc_test_identical_methods_and_clear_winner():
    rng = np.random.default_rng(5)
    y = (rng.random(200) < 0.5).astype(float)
    a = rng.normal(size=(2, 200, 1)) + 2.0 * y[None, :, None]
    delta, p = S.paired_set_auroc_test(a, a, y[:, None], n_resamples=1000)
    assert delta == 0.0 and p == 1.0
    weak = rng.normal(size=(2, 200, 1)) + 0.2 * y[None, :, None]
    delta, p = S.paired_set_auroc_test(a, weak, y[:, None], n_resamples=1000)
    assert delta > 0.2 and p == pytest.approx(2 / 1001)  # no resample crosses zero: the smallest p


def test_set_rank_stability_is_high_for_well_separated_methods_and_low_for_equal_ones():
    rng = np.random.default_rng(6)
    y = (rng.random(300) < 0.5).astype(float)
    noise = rng.normal(size=(3, 1, 300, 1))
    apart = noise + np.array([0.3, 1.0, 2.0])[:, None, None, None] * y[None, None, :, None]
    tau = S.set_rank_stability(apart, y[:, None], n_boot=500)
    assert tau.shape == (500,) and np.mean(tau) > 0.99
    equal = noise + 1.0 * y[None, None, :, None]  # same signal, independent noise: the order is chance
    assert np.mean(S.set_rank_stability(equal, y[:, None], n_boot=500)) < 0.8


def test_set_statistics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="targets"):
        S.set_auroc_ci(np.zeros((2, 10, 3)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="targets"):
        S.paired_set_auroc_test(np.zeros((10, 1)), np.zeros((11, 1)), np.zeros((10, 1)))


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_auroc_of_draw_counts_equals_auroc_of_the_resampled_images(ties):
    rng = np.random.default_rng(8)
    s = rng.normal(size=80)
    s = np.round(s, 1) if ties else s
    y = (rng.random(80) < 0.3).astype(float)
    idx = rng.integers(0, 80, size=(50, 80))
    got = S._weighted_auroc(S._sorted_scores(s, y), S.draw_counts(idx, 80))
    want = np.array([roc_auc_score(y[i], s[i]) if 0 < y[i].sum() < 80 else np.nan for i in idx])
    assert np.allclose(got, want, atol=1e-12, equal_nan=True)


def test_bootstrap_p_is_twice_the_smaller_tail_with_the_plus_one_correction():
    # one of four resampled differences at or below 0: 2 * (1 + 1) / (1 + 4)
    assert S.bootstrap_p([1.0, 2.0, 3.0, -1.0]) == pytest.approx(0.8)
    assert S.bootstrap_p([0.5] * 99) == pytest.approx(2 / 100)  # never 0
    assert S.bootstrap_p([-1.0, 1.0, np.nan]) == 1.0  # NaN ignored, capped at 1
    assert np.isnan(S.bootstrap_p([np.nan, np.nan]))
