"""Statistics for leaderboards: pure, seeded, vectorised functions over numpy arrays.

No file I/O, plotting or Markdown here (rliable style). Higher is better unless
``lower_is_better=True``; rank 1 is best. Every random function takes ``seed``; bootstraps draw
index arrays in chunks instead of looping over resamples.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from scipy import stats as ss

_CHUNK = 1000


def _resample_stat(x: np.ndarray, stat: Callable, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``stat`` of ``n_resamples`` bootstrap samples of the 1-D ``x`` (stat must take ``axis``)."""
    out = np.empty(n_resamples)
    n = len(x)
    for start in range(0, n_resamples, _CHUNK):
        m = min(_CHUNK, n_resamples - start)
        out[start:start + m] = stat(x[rng.integers(0, n, size=(m, n))], axis=1)
    return out


def bootstrap_ci(x, stat: Callable = np.mean, n_resamples: int = 10_000, ci: float = 0.95, method: str = "bca",
                 seed: int = 0) -> tuple[float, float]:
    """Bootstrap CI of ``stat`` over the 1-D sample ``x`` [n].

    ``method="bca"``: bias-corrected and accelerated (Efron & Tibshirani 1993, ch. 14; acceleration
    from the jackknife). ``"percentile"``: plain percentile interval.
    """
    x = np.asarray(x, float).ravel()
    theta = float(stat(x, axis=0))
    if len(x) < 2 or np.all(x == x[0]):
        return theta, theta
    rng = np.random.default_rng(seed)
    boots = _resample_stat(x, stat, n_resamples, rng)
    alpha = (1 - ci) / 2
    if method not in ("bca", "percentile"):
        raise ValueError(f"unknown bootstrap method {method!r}; known: bca, percentile")
    if method in ("percentile",):
        lo, hi = np.quantile(boots, [alpha, 1 - alpha])
        return float(lo), float(hi)
    prop = (np.sum(boots < theta) + 0.5 * np.sum(boots == theta)) / n_resamples
    z0 = ss.norm.ppf(np.clip(prop, 1e-12, 1 - 1e-12))
    n = len(x)
    jack_idx = np.arange(n)[None, :].repeat(n, 0)
    jack_idx = jack_idx[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    jack = stat(x[jack_idx], axis=1)
    d = jack.mean() - jack
    denom = 6.0 * (np.sum(d ** 2) ** 1.5)
    a = np.sum(d ** 3) / denom if denom > 0 else 0.0
    z = ss.norm.ppf([alpha, 1 - alpha])
    adj = ss.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    lo, hi = np.quantile(boots, adj)
    return float(lo), float(hi)


def hierarchical_bootstrap_ci(scores, stat: Callable = np.nanmean, n_resamples: int = 10_000, ci: float = 0.95,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the grand mean of ``scores`` [seed, case]: resample seeds, then cases within each.

    NaN entries (a case missing for a seed) are ignored.
    """
    s = np.asarray(scores, float)
    if s.ndim == 1:
        s = s[None]
    n_seed, n_case = s.shape
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        m = min(_CHUNK, n_resamples - start)
        si = rng.integers(0, n_seed, size=(m, n_seed))
        ci_ = rng.integers(0, n_case, size=(m, n_seed, n_case))
        vals = s[si[:, :, None], ci_]
        out[start:start + m] = stat(vals.reshape(m, -1), axis=1)
    alpha = (1 - ci) / 2
    lo, hi = np.nanquantile(out, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired_wilcoxon(a, b, alternative: str = "two-sided") -> tuple[float, float]:
    """Wilcoxon signed-rank test of paired samples (scipy, ``zero_method="wilcox"``: zero differences
    are dropped). All differences zero -> (0.0, 1.0) instead of an error."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[~np.isnan(d)]
    if len(d) == 0 or np.all(d == 0):
        return 0.0, 1.0
    r = ss.wilcoxon(d, zero_method="wilcox", alternative=alternative)
    return float(r.statistic), float(r.pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values: monotone, capped at 1, original order; NaN kept."""
    p = np.asarray(pvalues, float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = len(q)
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def mean_ranks(scores, lower_is_better: bool = False) -> np.ndarray:
    """Mean rank of each method over blocks; ``scores`` [block, method]; ties get average ranks."""
    s = np.asarray(scores, float)
    ranks = ss.rankdata(s if lower_is_better else -s, axis=1)
    return ranks.mean(0)


class FriedmanResult(NamedTuple):
    mean_ranks: np.ndarray
    chi2: float
    chi2_p: float
    ff: float
    ff_p: float


def friedman(scores, lower_is_better: bool = False) -> FriedmanResult:
    """Friedman test on ``scores`` [block, method] (Demšar 2006, eqs. in §3.2.2).

    chi2_F = 12N/(k(k+1)) [sum_j R_j^2 - k(k+1)^2/4] (no tie correction) and the Iman–Davenport
    F_F = (N-1) chi2_F / (N(k-1) - chi2_F) with (k-1, (k-1)(N-1)) degrees of freedom.
    """
    s = np.asarray(scores, float)
    n, k = s.shape
    r = mean_ranks(s, lower_is_better)
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(r ** 2) - k * (k + 1) ** 2 / 4)
    chi2_p = float(ss.chi2.sf(chi2, k - 1))
    denom = n * (k - 1) - chi2
    ff = (n - 1) * chi2 / denom if denom > 0 else np.inf
    ff_p = float(ss.f.sf(ff, k - 1, (k - 1) * (n - 1))) if np.isfinite(ff) else 0.0
    return FriedmanResult(r, float(chi2), chi2_p, float(ff), ff_p)


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of mean ranks (Demšar 2006): q_alpha sqrt(k(k+1)/(6n)),
    q_alpha = studentized range quantile (k groups, infinite df) / sqrt(2)."""
    q = ss.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(k * (k + 1) / (6 * n)))


def bonferroni_dunn_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Bonferroni–Dunn critical difference vs one control (Demšar 2006): q = z_{1 - alpha/(2(k-1))}."""
    q = ss.norm.ppf(1 - alpha / (2 * (k - 1)))
    return float(q * np.sqrt(k * (k + 1) / (6 * n)))


def iqm(x, axis=None):
    """Interquartile mean: the 25% trimmed mean (rliable)."""
    return ss.trim_mean(np.asarray(x, float), 0.25, axis=axis)


def stratified_bootstrap_ci(scores, aggregate: Callable = iqm, n_resamples: int = 2000, ci: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """rliable's stratified bootstrap: ``scores`` [run, task], runs resampled within each task.

    ``aggregate`` takes an array [..., run*task] flattened on its last axis with ``axis=-1``.
    """
    s = np.asarray(scores, float)
    n_run, n_task = s.shape
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    cols = np.arange(n_task)[None, None, :]
    for start in range(0, n_resamples, _CHUNK):
        m = min(_CHUNK, n_resamples - start)
        idx = rng.integers(0, n_run, size=(m, n_run, n_task))
        out[start:start + m] = aggregate(s[idx, cols].reshape(m, -1), axis=-1)
    alpha = (1 - ci) / 2
    lo, hi = np.quantile(out, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _poi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) per task for x [..., n, task], y [..., m, task]."""
    gt = (x[..., :, None, :] > y[..., None, :, :]).mean((-3, -2))
    eq = (x[..., :, None, :] == y[..., None, :, :]).mean((-3, -2))
    return gt + 0.5 * eq


def probability_of_improvement(x, y) -> float:
    """rliable's probability of improvement of X over Y: mean over tasks of the Mann–Whitney
    U / (n m) for runs x [run, task] and y [run, task]."""
    return float(_poi(np.asarray(x, float), np.asarray(y, float)).mean())


def probability_of_improvement_ci(x, y, n_resamples: int = 2000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Stratified bootstrap CI (runs resampled within each task, independently for x and y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    t = np.arange(x.shape[1])[None, None, :]
    for start in range(0, n_resamples, 250):
        m = min(250, n_resamples - start)
        xb = x[rng.integers(0, x.shape[0], size=(m, x.shape[0], x.shape[1])), t]
        yb = y[rng.integers(0, y.shape[0], size=(m, y.shape[0], y.shape[1])), t]
        out[start:start + m] = _poi(xb, yb).mean(-1)
    alpha = (1 - ci) / 2
    lo, hi = np.quantile(out, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _kendall_tau_b(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between each row of ``a`` [r, k] and the vector ``b`` [k]."""
    da = np.sign(a[:, :, None] - a[:, None, :])
    db = np.sign(b[:, None] - b[None, :])[None]
    iu = np.triu_indices(a.shape[1], 1)
    da, db = da[:, iu[0], iu[1]], db[:, iu[0], iu[1]]
    num = (da * db).sum(1)
    den = np.sqrt((da != 0).sum(1) * (db != 0).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, 1.0)


def rank_stability(scores, n_boot: int = 1000, seed: int = 0, lower_is_better: bool = False) -> np.ndarray:
    """Kendall's tau between the ranking on each bootstrap sample of cases and the full-data ranking
    (challengeR, Wiesenfarth et al. 2021). ``scores`` [case, method] -> tau [n_boot]."""
    s = np.asarray(scores, float)
    sign = 1.0 if lower_is_better else -1.0
    full = ss.rankdata(sign * np.nanmean(s, 0))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, s.shape[0], size=(n_boot, s.shape[0]))
    means = np.nanmean(s[idx], axis=1)
    ranks = ss.rankdata(sign * means, axis=1)
    return _kendall_tau_b(ranks, full)
