"""Statistics for leaderboards: pure, seeded, vectorised functions over numpy arrays.

Conventions (rliable style):

- Higher is better unless ``lower_is_better=True``; rank 1 is best.
- Every random function takes ``seed`` and draws from ``np.random.default_rng(seed)``.
- Bootstraps never loop over single resamples. Index arrays are drawn in blocks of at most ``_DRAW``
  resamples (the block size depends only on the size of one resample's indices, so a batched call and
  a call per entry see the same indices), and the gathered values are reduced in sub-blocks that keep
  each temporary array below ``_MAX_ELEMENTS`` elements. Linear statistics of a batch (the mean in
  :func:`hierarchical_bootstrap_ci`, the pair average in :func:`probability_of_improvement_ci`) weigh
  the data by per-resample draw counts (one ``bincount``) instead of gathering every entry.
- Functions whose docstring shows leading ``...`` dimensions are batched: every leading entry is
  bootstrapped with the *same* resample indices and the result keeps the leading shape. With no leading
  dimensions they return Python floats.
- No file I/O, plotting or Markdown in this module.

References:

- [0]: Efron & Tibshirani, An Introduction to the Bootstrap, 1993 (ch. 13 percentile, ch. 14 BCa).
- [1]: Holm, A simple sequentially rejective multiple test procedure, Scand. J. Statist., 1979.
- [2]: Demšar, Statistical Comparisons of Classifiers over Multiple Data Sets, JMLR 7, 2006.
- [3]: Agarwal et al., Deep Reinforcement Learning at the Edge of the Statistical Precipice (rliable),
  NeurIPS 2021, arXiv:2108.13264.
- [4]: Wiesenfarth et al., Methods and open-source toolkit for analyzing and visualizing challenge results
  (challengeR), Scientific Reports 11, 2021.
- [5]: Satterthwaite, An approximate distribution of estimates of variance components, Biometrics Bulletin 2(6),
  1946.
- [6]: Benavoli, Corani, Demšar & Zaffalon, Time for a change: a tutorial for comparing multiple classifiers
  through Bayesian analysis, JMLR 18(77), 2017 (and Benavoli et al., A Bayesian Wilcoxon signed-rank test
  based on the Dirichlet process, ICML 2014); as implemented in baycomp 1.0.3.
- [7]: Owen, The pigeonhole bootstrap, Annals of Applied Statistics 1(2), 2007 (crossed random effects).
- [8]: Exact null distribution of the Friedman statistic: Hollander & Wolfe, Nonparametric Statistical Methods,
  2nd ed., 1999; Siegel & Castellan, Nonparametric Statistics for the Behavioral Sciences, 2nd ed., 1988.
- [9]: Banerjee, On confidence interval for two-means problem based on separate estimates of variances and
  tabulated values of t-table, Sankhya A 23, 1961 (a conservative interval for a sum of variance components).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as ss

Stat = Callable[..., Any]

_DRAW = 1000  # resamples whose indices are drawn at once (at most)
_MAX_ELEMENTS = 1 << 22  # elements of one temporary array (4 Mi: 32 MiB as float64)
_BOOTSTRAP_METHODS = ("bca", "percentile")
_LINEAR_MIN_BATCH = 4  # batch size from which a batched bootstrap mean uses draw counts


# --------------------------------------------------------------------------------------------- helpers


def _floats(x: ArrayLike) -> NDArray[np.floating]:
    """``x`` as a float array; float32 stays float32 (gathers on it are cheaper), the rest becomes float64."""
    a = np.asarray(x)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _check_ci(ci: float, n_resamples: int) -> float:
    """Validates ``ci`` and ``n_resamples``; returns the lower tail probability ``(1 - ci) / 2``."""
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    return (1.0 - ci) / 2.0


def _blocks(n_resamples: int, per_resample: int) -> Iterator[tuple[int, int]]:
    """Yields ``(start, stop)`` blocks of resamples whose ``per_resample`` indices are drawn together."""
    size = max(1, min(_DRAW, _MAX_ELEMENTS // max(1, per_resample)))
    for start in range(0, n_resamples, size):
        yield start, min(start + size, n_resamples)


def _sub_blocks(m: int, per_resample: int) -> Iterator[slice]:
    """Slices of a block of ``m`` resamples such that ``per_resample`` elements each stay under the cap."""
    size = max(1, _MAX_ELEMENTS // max(1, per_resample))
    for start in range(0, m, size):
        yield slice(start, min(start + size, m))


def _interval(boots: NDArray[np.floating], alpha: float) -> tuple[Any, Any]:
    """Percentile interval over the last axis of ``boots`` [..., n_resamples]; NaN resamples are ignored."""
    quantile = np.nanquantile if np.isnan(boots).any() else np.quantile
    with _quiet():
        lo, hi = quantile(boots, [alpha, 1.0 - alpha], axis=-1)
    return _out(lo), _out(hi)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences numpy's RuntimeWarnings (empty NaN slices, 0/0) inside bootstraps; NaN results stay NaN."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _out(v: Any) -> Any:
    """A 0-d result as a Python float, anything else as an ndarray."""
    v = np.asarray(v, dtype=np.float64)
    return float(v) if v.ndim == 0 else v


def draw_counts(idx: NDArray[np.integer], size: int) -> NDArray[np.float64]:
    """How often each of ``size`` items is drawn in each row: idx [r, p] in [0, size) -> counts [r, size]."""
    r = idx.shape[0]
    key = idx + (np.arange(r) * size)[:, None]
    return np.bincount(key.ravel(), minlength=r * size).reshape(r, size).astype(np.float64)


# ---------------------------------------------------------------------------------------- bootstraps


def bootstrap_ci(
    x: ArrayLike, stat: Stat = np.mean, n_resamples: int = 10_000, ci: float = 0.95, method: str = "bca", seed: int = 0
) -> tuple[float, float]:
    """Bootstrap confidence interval of ``stat`` over one sample.

    ``method="percentile"`` is the percentile interval ([0] ch. 13). ``method="bca"`` is the bias-corrected
    and accelerated interval ([0] ch. 14): the bias correction ``z0 = Phi^-1(#{theta* < theta} / B)``
    (ties count one half, as scipy does) and the acceleration
    ``a = sum(d^3) / (6 sum(d^2)^1.5)`` with ``d = mean(theta_(.)) - theta_(i)`` from the jackknife
    ([0] eq. 14.15). The jackknife costs ``n`` evaluations of ``stat`` on ``n - 1`` values (vectorised,
    in blocks), except for ``np.mean`` whose leave-one-out means are computed in closed form.

    Args:
        x: The sample, shape [n] (any shape is flattened).
        stat: Statistic; called as ``stat(values, axis=-1)`` on values [r, n] and must reduce that axis,
            so all resamples of a block are evaluated at once.
        n_resamples: Number of bootstrap resamples B.
        ci: Coverage of the two-sided interval.
        method: ``"bca"`` or ``"percentile"``.
        seed: Seed of ``np.random.default_rng``.

    Returns:
        ``(low, high)``. When all values are equal (or n == 1) this is ``(v, v)`` with ``v = stat(x)``.

    Raises:
        ValueError: On an empty sample, an unknown method or ``ci`` outside (0, 1).
    """
    method = method.lower()
    if method not in _BOOTSTRAP_METHODS:
        raise ValueError(f"unknown bootstrap method {method!r}; valid: {', '.join(_BOOTSTRAP_METHODS)}")
    alpha = _check_ci(ci, n_resamples)
    x = _floats(x).ravel()
    n = x.size
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    theta = float(stat(x[None], axis=-1)[0])
    if n == 1 or bool(np.all(x == x[0])):
        return theta, theta
    rng = np.random.default_rng(seed)
    boots = np.empty(n_resamples)
    for start, stop in _blocks(n_resamples, n):
        idx = rng.integers(0, n, size=(stop - start, n))
        boots[start:stop] = stat(x[idx], axis=-1)
    if method != _BOOTSTRAP_METHODS[0]:  # percentile interval; BCa below
        return _interval(boots, alpha)

    prop = (np.sum(boots < theta) + 0.5 * np.sum(boots == theta)) / n_resamples
    z0 = ss.norm.ppf(np.clip(prop, 1.0 / (2 * n_resamples), 1.0 - 1.0 / (2 * n_resamples)))
    jack = _jackknife(x, stat)
    d = jack.mean() - jack
    ss2 = np.sum(d**2)
    a = float(np.sum(d**3) / (6.0 * ss2**1.5)) if ss2 > 0 else 0.0
    z = ss.norm.ppf([alpha, 1.0 - alpha])
    levels = ss.norm.cdf(z0 + (z0 + z) / (1.0 - a * (z0 + z)))
    if not np.all(np.isfinite(levels)):
        levels = np.array([alpha, 1.0 - alpha])
    lo, hi = np.quantile(boots, np.clip(levels, 0.0, 1.0))
    return float(lo), float(hi)


def _jackknife(x: NDArray[np.floating], stat: Stat) -> NDArray[np.float64]:
    """Leave-one-out values of ``stat`` over ``x`` [n] -> [n]."""
    n = x.size
    if stat is np.mean:
        return (x.sum(dtype=np.float64) - x) / (n - 1)
    out = np.empty(n)
    j = np.arange(n - 1)
    for rows in _sub_blocks(n, n - 1):
        i = np.arange(rows.start, rows.stop)[:, None]
        out[rows] = stat(x[j[None, :] + (j[None, :] >= i)], axis=-1)  # row i skips x[i]
    return out


_NAN_AWARE: dict[Any, Stat] = {np.mean: np.nanmean, np.median: np.nanmedian}


def hierarchical_bootstrap_ci(
    scores: ArrayLike, stat: Stat = np.mean, n_resamples: int = 10_000, ci: float = 0.95, seed: int = 0
) -> tuple[Any, Any]:
    """Two-level bootstrap percentile interval: resample seeds, then cases within each resampled seed.

    One resample draws ``S`` seeds with replacement and, for each drawn seed slot independently, ``C``
    cases with replacement; ``stat`` is applied to the ``S * C`` values so drawn. Seed-to-seed variation
    (training randomness) and case-to-case variation (test-set sampling) both enter the interval.

    Args:
        scores: Per-case scores, shape [..., S, C] (seed, case); [C] is read as one seed. NaN marks a
            case missing for a seed; with ``np.mean`` (``np.median``) the NaN-ignoring ``np.nanmean``
            (``np.nanmedian``) is used. Leading dimensions are batched with shared resample indices.
        stat: Statistic; called as ``stat(values, axis=-1)`` on values [..., r, S * C].
        n_resamples: Number of bootstrap resamples.
        ci: Coverage of the two-sided interval.
        seed: Seed of ``np.random.default_rng``.

    Returns:
        ``(low, high)``: floats for [S, C] input, arrays of the leading shape [...] otherwise.
    """
    alpha = _check_ci(ci, n_resamples)
    s = _floats(scores)
    if s.ndim == 1:
        s = s[None]
    *lead, n_seed, n_case = s.shape
    if n_seed == 0 or n_case == 0:
        raise ValueError(f"hierarchical_bootstrap_ci needs at least one seed and one case, got {s.shape}")
    nan = bool(np.isnan(s).any())
    fn = _NAN_AWARE.get(stat, stat) if nan else stat
    flat = s.reshape(-1, n_seed * n_case)  # [L, S*C]
    per = n_seed * n_case
    # The mean is linear: a resample's mean is (draw counts . values) / (valid draws). For a batch this
    # replaces L gathers per resample by one bincount and one product; a single entry gathers directly.
    linear = (fn is np.mean or fn is np.nanmean) and flat.shape[0] >= _LINEAR_MIN_BATCH
    if linear:
        valid = ~np.isnan(flat)
        values = np.ascontiguousarray(np.where(valid, flat, 0.0).T, dtype=np.float64)  # [S*C, L]
        weights = np.ascontiguousarray(valid.T, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boots = np.empty((flat.shape[0], n_resamples))
    with _quiet():
        for start, stop in _blocks(n_resamples, per):
            m = stop - start
            seeds = rng.integers(0, n_seed, size=(m, n_seed, 1))
            cases = rng.integers(0, n_case, size=(m, n_seed, n_case))
            idx = (seeds * n_case + cases).reshape(m, per)  # flat [seed, case] index
            if linear:
                w = draw_counts(idx, per)  # [m, S*C]
                # einsum, not matmul: a threaded BLAS call is slow on a small, busy machine
                total = np.einsum("rp,pl->rl", w, values)
                boots[:, start:stop] = (total / (np.einsum("rp,pl->rl", w, weights) if nan else per)).T
                continue
            for sub in _sub_blocks(m, per * flat.shape[0]):
                boots[:, start + sub.start : start + sub.stop] = fn(flat[:, idx[sub]], axis=-1)
    return _interval(boots.reshape(*lead, n_resamples), alpha)


def iqm(x: ArrayLike, axis: int | None = None) -> Any:
    """Interquartile mean: the mean of the middle 50% of values, ``scipy.stats.trim_mean(x, 0.25)`` (rliable).

    Args:
        x: Scores, any shape, e.g. [R, T] (run, task).
        axis: Axis to reduce; ``None`` pools all values (rliable's ``aggregate_iqm``).

    Returns:
        A float for ``axis=None``, else an array with ``axis`` removed.
    """
    return _out(ss.trim_mean(_floats(x), 0.25, axis=axis))


def stratified_bootstrap_ci(
    scores: ArrayLike, aggregate: Stat = iqm, n_resamples: int = 10_000, ci: float = 0.95, seed: int = 0
) -> tuple[Any, Any]:
    """rliable's stratified bootstrap percentile interval ([3]): runs are resampled within each task.

    For each task independently, ``R`` runs are drawn with replacement, so every resample keeps the task
    mix of the data.

    Args:
        scores: Scores, shape [..., R, T] (run, task); leading dimensions are batched with shared
            resample indices.
        aggregate: Aggregate over the pooled scores of a resample; called as ``aggregate(values, axis=-1)``
            on values [..., r, R * T].
        n_resamples: Number of bootstrap resamples.
        ci: Coverage of the two-sided interval.
        seed: Seed of ``np.random.default_rng``.

    Returns:
        ``(low, high)``: floats for [R, T] input, arrays of the leading shape [...] otherwise.
    """
    alpha = _check_ci(ci, n_resamples)
    s = _floats(scores)
    if s.ndim < 2:
        raise ValueError(f"stratified_bootstrap_ci needs scores [..., run, task], got shape {s.shape}")
    *lead, n_run, n_task = s.shape
    flat = s.reshape(-1, n_run * n_task)  # [L, R*T], run-major
    per = n_run * n_task
    rng = np.random.default_rng(seed)
    boots = np.empty((flat.shape[0], n_resamples))
    task = np.arange(n_task)
    for start, stop in _blocks(n_resamples, per):
        m = stop - start
        idx = (rng.integers(0, n_run, size=(m, n_run, n_task)) * n_task + task).reshape(m, per)
        for sub in _sub_blocks(m, per * flat.shape[0]):
            boots[:, start + sub.start : start + sub.stop] = aggregate(flat[:, idx[sub]], axis=-1)
    return _interval(boots.reshape(*lead, n_resamples), alpha)


# ------------------------------------------------------------------------------------ tests and ranks


def paired_wilcoxon(a: ArrayLike, b: ArrayLike, alternative: str = "two-sided") -> tuple[float, float]:
    """Wilcoxon signed-rank test of paired samples, a thin wrapper on ``scipy.stats.wilcoxon``.

    Zero differences are handled as ``zero_method="wilcox"`` (scipy's default, Wilcoxon's original
    rule): pairs with ``a == b`` are discarded, here *before* calling scipy, so the test is exactly
    ``scipy.stats.wilcoxon(d[d != 0], alternative=alternative)`` on the ``n'`` nonzero differences ``d``
    and scipy's ``method="auto"`` can use the exact null distribution (``n' <= 50``, no ties) instead
    of switching to the normal approximation because zeros were present. Without zero differences
    this is identical to ``scipy.stats.wilcoxon(a, b, alternative=alternative)``. Pairs where either
    value is NaN are dropped. The statistic is scipy's: ``min(W+, W-)`` for ``"two-sided"``, ``W+``
    (rank sum of the positive ``a - b``) otherwise.

    Args:
        a: Scores of the first method, shape [n].
        b: Scores of the second method on the same cases, shape [n].
        alternative: ``"two-sided"``, ``"greater"`` (a tends to exceed b) or ``"less"``.

    Returns:
        ``(statistic, pvalue)``; ``(0.0, 1.0)`` when no nonzero difference is left (all pairs tie, or no
        complete pair), where scipy would raise or return NaN.

    Raises:
        ValueError: If ``a`` and ``b`` differ in shape.
    """
    a, b = _floats(a).ravel(), _floats(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.shape[0]} and {b.shape[0]}")
    d = a - b
    d = d[~np.isnan(d) & (d != 0)]
    if d.size == 0:
        return 0.0, 1.0
    res = ss.wilcoxon(d, zero_method="wilcox", alternative=alternative)
    return float(res.statistic), float(res.pvalue)


def holm(pvalues: ArrayLike) -> NDArray[np.float64]:
    """Holm (1979) step-down adjusted p-values ([1]).

    With the ``m`` non-NaN p-values sorted ascending, ``p_adj(i) = min(1, max_{j <= i} (m - j + 1) p(j))``
    (1-based ``i``): monotone in the sorted order and capped at 1. Rejecting ``p_adj <= alpha`` is Holm's
    procedure at family-wise level ``alpha``.

    Args:
        pvalues: Raw p-values, any shape. NaN entries are not counted in ``m`` and stay NaN.

    Returns:
        Adjusted p-values, same shape and order as ``pvalues``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    out = np.full(flat.shape, np.nan)
    ok = ~np.isnan(flat)
    q = flat[ok]
    m = q.size
    if m:
        order = np.argsort(q, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return out.reshape(p.shape)


def mean_ranks(scores: ArrayLike, lower_is_better: bool = False) -> NDArray[np.float64]:
    """Mean rank of each method over blocks (rank 1 = best; ties get the average of their ranks).

    Args:
        scores: Scores, shape [N, k] (block, method); no NaN.
        lower_is_better: Rank the lowest score first.

    Returns:
        Mean ranks, shape [k]; they sum to ``k (k + 1) / 2``.

    Raises:
        ValueError: If ``scores`` is not 2-D or holds NaN.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be [block, method], got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores hold NaN; rank only complete blocks")
    return np.asarray(ss.rankdata(s if lower_is_better else -s, axis=1).mean(0), dtype=np.float64)


class FriedmanResult(NamedTuple):
    """Friedman test result (Demšar 2006, §3.2.2)."""

    mean_ranks: NDArray[np.float64]  # [k], rank 1 = best
    chi2: float  # Friedman chi2_F, no tie correction
    chi2_p: float  # chi2 with k - 1 df
    ff: float  # Iman-Davenport F_F
    ff_p: float  # F with (k - 1, (k - 1)(N - 1)) df


def friedman(scores: ArrayLike, lower_is_better: bool = False) -> FriedmanResult:
    """Friedman test with the Iman-Davenport correction, as in Demšar (2006) §3.2.2 ([2]).

    ``chi2_F = 12 N / (k (k + 1)) [sum_j R_j^2 - k (k + 1)^2 / 4]`` from the mean ranks ``R_j`` (average
    ranks for ties, no tie correction of the statistic; without ties it equals
    ``scipy.stats.friedmanchisquare``), and ``F_F = (N - 1) chi2_F / (N (k - 1) - chi2_F)`` on
    ``(k - 1, (k - 1)(N - 1))`` degrees of freedom. When every block ranks the methods identically
    ``F_F`` is infinite and its p-value 0.

    Args:
        scores: Scores, shape [N, k] (block = data set or task, method); no NaN.
        lower_is_better: Rank the lowest score first (changes only ``mean_ranks``, not the statistics).

    Returns:
        :class:`FriedmanResult`.

    Raises:
        ValueError: With fewer than 2 methods or 1 block, or NaN scores.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 2:
        raise ValueError(f"friedman needs scores [block, method] with >= 1 block and >= 2 methods, got {s.shape}")
    n, k = s.shape
    r = mean_ranks(s, lower_is_better)
    chi2 = float(12.0 * n / (k * (k + 1)) * (np.sum(r**2) - k * (k + 1) ** 2 / 4.0))
    chi2 = max(chi2, 0.0)  # rounding can give -1e-15 when all ranks tie
    chi2_p = float(ss.chi2.sf(chi2, k - 1))
    denom = n * (k - 1) - chi2
    if denom > 1e-12 * n * k:
        ff = (n - 1) * chi2 / denom
        ff_p = float(ss.f.sf(ff, k - 1, (k - 1) * (n - 1))) if n > 1 else float("nan")
    else:
        ff, ff_p = float("inf"), 0.0
    return FriedmanResult(r, chi2, chi2_p, float(ff), ff_p)


def _check_kn(k: int, n: int, alpha: float) -> None:
    if k < 2 or n < 1:
        raise ValueError(f"critical differences need k >= 2 methods and n >= 1 blocks, got k={k}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of mean ranks for all pairwise comparisons (Demšar 2006 eq. 3, [2]).

    ``CD = q_alpha sqrt(k (k + 1) / (6 n))`` with ``q_alpha`` the studentized range quantile for ``k``
    groups and infinite degrees of freedom divided by ``sqrt(2)`` (Demšar's Table 5a).

    Args:
        k: Number of methods.
        n: Number of blocks (data sets or tasks).
        alpha: Significance level.

    Returns:
        The critical difference.
    """
    _check_kn(k, n, alpha)
    q = ss.studentized_range.ppf(1.0 - alpha, k, np.inf) / np.sqrt(2.0)
    return float(q * np.sqrt(k * (k + 1) / (6.0 * n)))


def bonferroni_dunn_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Bonferroni-Dunn critical difference of mean ranks against one control (Demšar 2006 §3.2.2, [2]).

    ``CD = q_alpha sqrt(k (k + 1) / (6 n))`` with ``q_alpha = Phi^-1(1 - alpha / (2 (k - 1)))``
    (Demšar's Table 5b).

    Args:
        k: Number of methods, the control included.
        n: Number of blocks (data sets or tasks).
        alpha: Significance level.

    Returns:
        The critical difference.
    """
    _check_kn(k, n, alpha)
    q = ss.norm.ppf(1.0 - alpha / (2.0 * (k - 1)))
    return float(q * np.sqrt(k * (k + 1) / (6.0 * n)))


# ------------------------------------------------------------------------------------------- rliable


def _poi(x: NDArray[np.floating], y: NDArray[np.floating]) -> NDArray[np.float64]:
    """P(X > Y) + P(X = Y) / 2 per task: x [..., n, T], y [..., m, T] -> [..., T]."""
    sgn = np.sign(x[..., :, None, :] - y[..., None, :, :])  # [..., n, m, T]
    return (sgn.mean(axis=(-3, -2), dtype=np.float64) + 1.0) / 2.0


def _check_runs(x: NDArray[np.floating], y: NDArray[np.floating]) -> None:
    if x.ndim < 2 or y.ndim < 2 or x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must be [..., run, task] with the same tasks, got {x.shape} and {y.shape}")


def probability_of_improvement(x: ArrayLike, y: ArrayLike) -> Any:
    """rliable's probability of improvement of X over Y ([3]).

    Per task, ``P(X > Y) + P(X = Y) / 2`` over all run pairs, i.e. the Mann-Whitney ``U / (n m)``;
    then the mean over tasks.

    Args:
        x: Scores of X, shape [..., n, T] (run, task).
        y: Scores of Y, shape [..., m, T]; leading dimensions broadcast against x's, e.g.
            ``x[:, None]`` and ``y[None]`` give a method-by-method matrix.

    Returns:
        A float for 2-D inputs, else an array of the broadcast leading shape.
    """
    x, y = _floats(x), _floats(y)
    _check_runs(x, y)
    return _out(_poi(x, y).mean(-1))


def probability_of_improvement_ci(
    x: ArrayLike, y: ArrayLike, n_resamples: int = 10_000, ci: float = 0.95, seed: int = 0
) -> tuple[Any, Any]:
    """Stratified bootstrap percentile interval of :func:`probability_of_improvement` ([3]).

    Each resample draws, for every task independently, the runs of X and (independently) the runs of Y
    with replacement.

    Args:
        x: Scores of X, shape [..., n, T] (run, task).
        y: Scores of Y, shape [..., m, T]; leading dimensions broadcast as in
            :func:`probability_of_improvement` and share the resample indices.
        n_resamples: Number of bootstrap resamples.
        ci: Coverage of the two-sided interval.
        seed: Seed of ``np.random.default_rng``.

    Returns:
        ``(low, high)``: floats for 2-D inputs, arrays of the broadcast leading shape otherwise.
    """
    alpha = _check_ci(ci, n_resamples)
    x, y = _floats(x), _floats(y)
    _check_runs(x, y)
    (n, n_task), m = x.shape[-2:], y.shape[-2]
    lead = np.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    size = int(np.prod(lead, dtype=np.int64))
    # P(X_i > Y_j) + P(X_i = Y_j) / 2 for every run pair, once; a resample then weighs the pairs by how
    # often it draws each run: PoI_t = wx_t . g_t . wy_t / (n m), an einsum instead of new comparisons
    g = (np.sign(x[..., :, None, :] - y[..., None, :, :]) + 1.0) / 2.0  # [..., n, m, T]
    rng = np.random.default_rng(seed)
    boots = np.empty((*lead, n_resamples))
    for start, stop in _blocks(n_resamples, (n + m) * n_task):
        r = stop - start
        ix = rng.integers(0, n, size=(r, n, n_task))
        iy = rng.integers(0, m, size=(r, m, n_task))
        wx, wy = _task_counts(ix, n), _task_counts(iy, m)  # [r, n, T], [r, m, T]
        for sub in _sub_blocks(r, size * max(n, m) * n_task):
            boots[..., start + sub.start : start + sub.stop] = np.einsum(
                "rit,...ijt,rjt->...r", wx[sub], g, wy[sub], optimize=True
            ) / (n * m * n_task)
    return _interval(boots, alpha)


def _task_counts(idx: NDArray[np.integer], n: int) -> NDArray[np.float64]:
    """Draw counts per task: idx [r, k, T] (runs drawn for each task) -> counts [r, n, T]."""
    r, _, n_task = idx.shape
    return draw_counts(idx.transpose(0, 2, 1).reshape(r * n_task, -1), n).reshape(r, n_task, n).transpose(0, 2, 1)


# ------------------------------------------------------------------------------------ rank stability


def _kendall_tau_b(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    """Kendall's tau-b between rows: a [..., r, k] and b [..., k] -> [..., r]; NaN where undefined.

    Only the pairwise order matters, so ``a`` and ``b`` may be scores or ranks.
    """
    i, j = np.triu_indices(a.shape[-1], 1)
    da = np.sign(a[..., i] - a[..., j])  # [..., r, P]
    db = np.sign(b[..., i] - b[..., j])[..., None, :]  # [..., 1, P]
    num = (da * db).sum(-1)
    den = np.sqrt(np.count_nonzero(da, axis=-1) * np.count_nonzero(db, axis=-1).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def rank_stability(
    scores: ArrayLike, n_boot: int = 1000, seed: int = 0, lower_is_better: bool = False
) -> NDArray[np.float64]:
    """Bootstrap rank stability as in challengeR ([4]).

    Cases are resampled with replacement; on each resample the methods are ranked by their mean score
    (NaN-ignoring), and Kendall's tau-b between that ranking and the ranking on all cases is recorded.
    Ties in the means are tied ranks. tau is undefined (NaN, as in ``scipy.stats.kendalltau``) when
    either ranking ties all methods.

    Args:
        scores: Per-case scores, shape [..., C, k] (case, method); leading dimensions are batched with
            shared resample indices.
        n_boot: Number of bootstrap resamples.
        seed: Seed of ``np.random.default_rng``.
        lower_is_better: Rank the lowest mean first. tau compares two rankings made the same way, so
            the direction does not change it; the argument is kept for symmetry with the rest of the API.

    Returns:
        tau, shape [..., n_boot].
    """
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    s = _floats(scores)
    if s.ndim < 2 or s.shape[-1] < 2 or s.shape[-2] < 1:
        raise ValueError(f"rank_stability needs scores [..., case, method] with >= 2 methods, got {s.shape}")
    sign = -1.0 if lower_is_better else 1.0
    n_case, k = s.shape[-2:]
    nan = bool(np.isnan(s).any())
    mean = np.nanmean if nan else np.mean
    with _quiet():
        full = sign * mean(s, axis=-2)  # [..., k]
    lead = s.shape[:-2]
    size = int(np.prod(lead, dtype=np.int64))
    rng = np.random.default_rng(seed)
    tau = np.empty((*lead, n_boot))
    for start, stop in _blocks(n_boot, n_case):
        r = stop - start
        idx = rng.integers(0, n_case, size=(r, n_case))
        for sub in _sub_blocks(r, size * n_case * k):
            with _quiet():
                means = sign * mean(s[..., idx[sub], :], axis=-2)  # [..., r, k]
            tau[..., start + sub.start : start + sub.stop] = _kendall_tau_b(means, full)
    return tau


# ------------------------------------------------------------------------- set-level AUROC over images


def _check_set(scores: NDArray[np.floating], targets: NDArray[np.floating]) -> None:
    if scores.ndim != 4 or targets.ndim != 2 or scores.shape[2:] != targets.shape:
        raise ValueError(
            f"scores must be [methods, runs, images, classes] matching targets [images, classes], "
            f"got {scores.shape} and {targets.shape}"
        )
    if scores.shape[1] == 0 or scores.shape[2] < 2:
        raise ValueError(f"need at least one run and two images, got {scores.shape}")


class _SortedScores(NamedTuple):
    """One score column sorted once, so every resample's AUROC is a weighted sum (no sort per resample)."""

    order: NDArray[np.integer]  # images by ascending score
    starts: NDArray[np.integer]  # first position of each run of tied scores in ``order``
    pos: NDArray[np.float64]  # target of each image in ``order`` (0/1)


def _sorted_scores(scores: NDArray[np.floating], targets: NDArray[np.floating]) -> _SortedScores:
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return _SortedScores(order, starts, targets[order].astype(np.float64))


def _weighted_auroc(col: _SortedScores, weights: NDArray[np.floating]) -> NDArray[np.float64]:
    """AUROC of one score column with each image counted ``weights`` [m, n] times (a bootstrap resample's
    draw counts) -> [m]: the Mann-Whitney U over tie groups, ``sum_pos w_i (W_neg below + W_neg tied / 2)``,
    equal to the AUROC of the resampled images (sklearn's value, ties one half); NaN where a resample holds one
    label only."""
    w = weights[:, col.order]
    pos = np.add.reduceat(w * col.pos, col.starts, axis=1)  # [m, groups]
    neg = np.add.reduceat(w, col.starts, axis=1) - pos
    below = np.cumsum(neg, axis=1) - neg
    u = (pos * (below + 0.5 * neg)).sum(1)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with _quiet():
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def mean_auroc(scores: ArrayLike, targets: ArrayLike) -> Any:
    """Mean over classes of the per-class AUROC, classes without both labels left out (NaN if none has both).

    Args:
        scores: [..., n, C] (image, class).
        targets: [n, C] binary labels.
    """
    s, t = _floats(scores), _floats(targets)
    lead = s.shape[:-2]
    flat = s.reshape(-1, *s.shape[-2:])
    ones = np.ones((1, t.shape[0]))
    per = np.array(
        [[_weighted_auroc(_sorted_scores(x[:, c], t[:, c]), ones)[0] for c in range(t.shape[1])] for x in flat]
    )
    with _quiet():
        return _out(np.nanmean(per, axis=-1).reshape(lead))


def _set_auroc_boots(
    scores: NDArray[np.floating],
    targets: NDArray[np.floating],
    n_resamples: int,
    seed: int,
    groups: NDArray[np.integer] | None = None,
    resample_runs: bool = True,
    by_run: bool = False,
) -> NDArray[np.float64]:
    """Bootstrap distribution of the run-averaged mean AUROC of each method: scores [M, R, n, C] (method, run,
    image, class) and targets [n, C] -> [M, n_resamples].

    One resample draws R runs and n images with replacement, both shared by every method (the runs are
    matched across methods: same seed, same draw), and recomputes each class's AUROC on the drawn images.
    Each column is sorted once; a resample enters as its draw counts, so a block costs O(resamples x images)
    per column instead of a sort per resample (ChestX-ray14's 25,596 test images x 14 classes stay fast).

    ``groups`` [n] (codes ``0 .. G-1``, e.g. from :func:`_group_codes`) makes the image draw a cluster draw:
    G groups (patients) are drawn with replacement and a drawn group brings all its images. With
    ``resample_runs=False`` the runs are held fixed (each weighs ``1 / R``) and only the images are drawn;
    ``by_run=True`` (with fixed runs) returns each run's resampled mean AUROC, [M, R, n_resamples]. The
    defaults draw exactly the indices they always drew."""
    n_method, n_run, n_img, n_cls = scores.shape
    n_unit = n_img if groups is None else int(groups.max()) + 1
    cols = [
        [[_sorted_scores(scores[k, r, :, c], targets[:, c]) for c in range(n_cls)] for r in range(n_run)]
        for k in range(n_method)
    ]
    if by_run and resample_runs:
        raise ValueError("per-run resamples need the runs held fixed (resample_runs=False)")
    rng = np.random.default_rng(seed)
    boots = np.empty((n_method, n_run, n_resamples) if by_run else (n_method, n_resamples))
    for start, stop in _blocks(n_resamples, n_img + n_run):
        m = stop - start
        if resample_runs:
            runs = draw_counts(rng.integers(0, n_run, size=(m, n_run)), n_run) / n_run  # [m, R] run weights
        else:
            runs = np.full((m, n_run), 1.0 / n_run)
        img = rng.integers(0, n_unit, size=(m, n_unit))
        per = np.empty((n_method, n_run, m, n_cls))
        for sub in _sub_blocks(m, 4 * n_img):
            w = draw_counts(img[sub], n_unit)  # [m', n] draw counts
            if groups is not None:
                w = w[:, groups]  # a group's count, per image
            for k, r, c in np.ndindex(n_method, n_run, n_cls):
                per[k, r, sub, c] = _weighted_auroc(cols[k][r][c], w)
        with _quiet():
            per_run = np.nanmean(per, axis=-1)  # [M, R, m]
        if by_run:
            boots[:, :, start:stop] = per_run
        else:
            boots[:, start:stop] = np.einsum("krm,mr->km", per_run, runs)
    return boots


def set_auroc_ci(
    scores: ArrayLike,
    targets: ArrayLike,
    n_resamples: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> tuple[float, float]:
    """Percentile interval of a set-level mean AUROC, bootstrapping runs (seeds) and then test images.

    A classification cell scores the whole test split at once, so the cell has one AUROC and no per-case
    spread; the uncertainty that matters is the test set's. As in :func:`hierarchical_bootstrap_ci`, a
    resample draws the runs with replacement, then the images with replacement (the same images for every
    run: all runs share one test split), and recomputes each class's AUROC on them ([0] ch. 13). Classes
    whose resample holds a single label are left out of that resample's mean.

    Args:
        scores: Per-image scores [R, n, C] (run, image, class); [n, C] is one run.
        targets: Binary labels [n, C] (one-hot for single-label tasks).
        n_resamples, ci, seed: As in :func:`bootstrap_ci`.
        groups: Optional cluster labels [n] (hashable, e.g. patient ids): images are then drawn as clusters,
            a drawn patient bringing all its images. ``None`` draws single images.

    Returns:
        ``(low, high)``.
    """
    alpha = _check_ci(ci, n_resamples)
    s, t = _floats(scores), _floats(targets)
    s = s[None, None] if s.ndim == 2 else s[None]
    _check_set(s, t)
    codes = None if groups is None else _group_codes(groups, s.shape[2])
    return _interval(_set_auroc_boots(s, t, int(n_resamples), seed, groups=codes)[0], alpha)


def paired_set_auroc_test(
    a: ArrayLike,
    b: ArrayLike,
    targets: ArrayLike,
    n_resamples: int = 10_000,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> tuple[float, float]:
    """Paired bootstrap test of two methods' set-level mean AUROC on the same test images.

    Both methods are scored on the same resampled runs and images, so what the images have in common
    (the correlation of two classifiers on one test set, which DeLong's test models for a single class)
    cancels in the difference. The two-sided p-value is the percentile bootstrap's: twice the smaller
    share of resampled differences on either side of zero (``(1 + count) / (1 + B)`` each, so p > 0),
    capped at 1; so ``p < alpha`` exactly when zero lies outside the ``1 - alpha`` percentile interval of
    the difference.

    Args:
        a, b: Per-image scores [R, n, C] of the two methods, runs matched (same seed and draw) by position.
        targets: Binary labels [n, C].
        n_resamples, seed: As in :func:`bootstrap_ci`.
        groups: Optional cluster labels [n] (e.g. patient ids), as in :func:`set_auroc_ci`.

    Returns:
        ``(delta, p)``: the observed mean AUROC difference ``a - b`` (run-averaged) and the p-value.
    """
    a, b, t = _floats(a), _floats(b), _floats(targets)
    if a.shape != b.shape:
        raise ValueError(f"the two methods' scores differ in shape ({a.shape} vs {b.shape}); targets {t.shape}")
    s = np.stack([a, b])
    if s.ndim == 3:
        s = s[:, None]
    _check_set(s, t)
    delta = float(np.mean(mean_auroc(s[0], t)) - np.mean(mean_auroc(s[1], t)))
    codes = None if groups is None else _group_codes(groups, s.shape[2])
    boots = _set_auroc_boots(s, t, int(n_resamples), seed, groups=codes)
    return delta, bootstrap_p(boots[0] - boots[1])


def bootstrap_p(differences: ArrayLike) -> float:
    """Two-sided p-value of a paired percentile bootstrap from its resampled differences.

    Twice the smaller share of differences on either side of zero (``(1 + count) / (1 + B)`` each, so p > 0),
    capped at 1; NaN resamples are ignored, and p is NaN when none is finite.
    """
    d = _floats(differences).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    return float(min(1.0, 2.0 * (1.0 + tail) / (1.0 + d.size)))


def set_rank_stability(scores: ArrayLike, targets: ArrayLike, n_boot: int = 1000, seed: int = 0) -> NDArray[np.float64]:
    """:func:`rank_stability` for set-level AUROC: methods ranked by their run-averaged mean AUROC on each
    resample of runs and test images (shared by all methods), Kendall's tau-b against the full-set ranking.

    Args:
        scores: [M, R, n, C] (method, run, image, class), runs matched across methods by position.
        targets: Binary labels [n, C].

    Returns:
        tau, shape [n_boot].
    """
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    s, t = _floats(scores), _floats(targets)
    _check_set(s, t)
    if s.shape[0] < 2:
        raise ValueError(f"set_rank_stability needs >= 2 methods, got {s.shape[0]}")
    full = np.mean(mean_auroc(s, t), axis=-1)  # [M]
    boots = _set_auroc_boots(s, t, int(n_boot), seed)  # [M, B]
    return _kendall_tau_b(boots.T, full)


# ---------------------------------------------------------------------------------- run-level inference
#
# Run-level inference. The replicate of a benchmark is a training run (pretraining seed x transfer seed); the
# test cases are shared by every run and method. A run-level table x[r, g] (run r, unit g = case, or patient
# when ``groups`` is given) is a two-way crossed design, x = mu + a_r + b_g + e_rg, and its grand mean has
# variance sigma_a^2 / R + sigma_b^2 / G + sigma_e^2 / (R G). Pooling the R x G values as if independent (the
# per-case Wilcoxon over all (run, case) pairs) ignores that a_r is shared by the G cases of a run: with
# R = 3 runs it rejects a true null in most tables (test_stats_inference.py asserts > 0.3).
#
# Default below BOOTSTRAP_MIN_RUNS: a t on the run-level variance with the case term. From the mean squares
# of the table, v_run = var(run means) / R = MS_run / (R G) (it holds sigma_e^2 / (R G) once),
# v_unit = var(unit means) / G = MS_unit / (R G) and v_e = MS_e / (R G); the unit component is
# c = v_unit - v_e (estimates sigma_b^2 / G), se^2 = v_run + max(c, 0), on Satterthwaite's [5] df for this
# linear combination of mean squares (the R - 1, G - 1 and (R - 1)(G - 1) df); when c <= 0 the interval is
# the exact run-level t on R - 1 df. This departs from the first draft, se^2 = v_run + v_unit (which counts
# sigma_e^2 / (R G) twice) on a two-term Welch-Satterthwaite df. That draft rejected a true null in 11% of
# tables at R = 2 (table below): with one df the run term is often estimated near 0, and the extra noise
# term then both props up se and drives the df towards G - 1, exactly when the run variance is
# underestimated. With t_{R-1} at two or three runs (12.7 for df = 1), the interval keeps its coverage where
# the crossed bootstrap ([7]: runs and units drawn independently with replacement, percentile interval)
# cannot: the bootstrap shrinks the run term by (R - 1) / R, uses normal quantiles, and its resampled mean
# of R = 2 runs takes only three distinct run averages. The set-level functions use the same split, with
# the between-run covariance of an image bootstrap (runs fixed) as the unit component.
#
# Measured once (not in the tests): sd(case) = 0.1, sd(run) = 0.03, sd(e) = 0.02, C = 20 cases, 2,000
# tables per R, two methods with equal means; coverage of run_mean's 95% interval of mu, and false-positive
# rate (p < 0.05) of paired_run_difference; bootstrap with 2,000 resamples, seed 0:
#
#     for R in (2, 3, 5, 10, 20, 30, 50):
#         rng = np.random.default_rng(1000 + R)
#         for _ in range(2000):
#             x = 0.5 + rng.normal(0, .1, 20) + rng.normal(0, .03, (2, R, 1)) + rng.normal(0, .02, (2, R, 20))
#             run_mean(x[0], method=m, n_resamples=2000); paired_run_difference(x[0], x[1], method=m, ...)
#
#     R                              2      3      5      10     20     30     50
#     coverage   t                 0.930  0.940  0.949  0.946  0.951  0.959  0.949
#                bootstrap         0.872  0.909  0.920  0.925  0.931  0.939  0.927
#     FPR        t                 0.052  0.046  0.047  0.048  0.048  0.048  0.054
#                bootstrap         0.378  0.218  0.136  0.089  0.065  0.054  0.059
#                t, first draft    0.112  0.056  0.049  0.048  0.047  0.045  0.051
#
# (Monte Carlo sd about 0.005.) The bootstrap's coverage of the mean stays near 0.93 even with many runs; the
# 20 cases hold it down (their draw, too, shrinks the case term by (G - 1) / G, and its quantiles are normal
# ones). Its false-positive rate comes within 0.01 of nominal from about 30 runs, so ``method="auto"`` uses it
# only from BOOTSTRAP_MIN_RUNS = 30 runs on, where it no longer relies on the normality of R run means; the t
# was never worse in this model. Set level (set_run_difference, n = 200 images, 400 tables, 400 resamples):
# FPR of the t 0.052, 0.052, 0.062, 0.037 at R = 2, 3, 5, 10.
# A known limit of a Satterthwaite df with R = 2: when a real unit component exists but the single-df run
# term dominates and G is large, the t is liberal (sd(unit) 0.03, sd(run) 0.01, sd(e) 0.02, G = 100: FPR
# 0.117 over 20,000 tables; the first draft 0.108). Banerjee's (1961) interval,
# est +- sqrt(t_{R-1}^2 v_run + t_{G-1}^2 c), stayed at or below 0.05 in every setting checked, but it was about
# 3x as wide at R = 2 when the cases dominate.


BOOTSTRAP_MIN_RUNS: int = 30

_RUN_METHODS = ("auto", "t", "bootstrap")


class Difference(NamedTuple):
    """Run-level estimate of a mean (or of a difference ``a - b``) with its interval and test of 0."""

    estimate: float  # mean over runs and units of a - b (for run_mean: the mean of a)
    low: float  # CI bounds; NaN when not estimable
    high: float
    p: float  # two-sided p-value of "no difference" (H0: 0); NaN when not testable
    se: float  # standard error (bootstrap: sd of the resampled estimates); NaN when not estimable
    df: float  # degrees of freedom of the t reference (NaN for bootstrap / none)
    runs: int  # runs used
    units: int  # cases, or patient groups when groups is given
    interval: str  # "t" | "bootstrap" | "none" (R < 2: too few runs to test)


def _group_codes(groups: ArrayLike, n: int) -> NDArray[np.intp]:
    """Hashable labels [n] -> integer codes ``0 .. G-1`` in order of first appearance."""
    labels = list(cast(Iterable[Any], groups))  # hashable labels: a sequence or a 1-D array, never a scalar
    if len(labels) != n:
        raise ValueError(f"groups must hold one label per case/image ({n}), got {len(labels)}")
    index: dict[Any, int] = {}
    return np.array([index.setdefault(v, len(index)) for v in labels], dtype=np.intp)


def _group_means(s: NDArray[np.float64], codes: NDArray[np.integer]) -> NDArray[np.float64]:
    """NaN-ignoring mean of the cases of each group within each row: s [R, C], codes [C] -> [R, G]."""
    n_group = int(codes.max()) + 1 if codes.size else 0
    onehot = np.zeros((s.shape[1], n_group))
    onehot[np.arange(s.shape[1]), codes] = 1.0
    valid = ~np.isnan(s)
    with _quiet():
        return np.einsum("rc,cg->rg", np.where(valid, s, 0.0), onehot) / np.einsum(
            "rc,cg->rg", valid.astype(np.float64), onehot
        )


def _run_table(scores: ArrayLike, groups: ArrayLike | None) -> NDArray[np.float64]:
    """Per-case scores [R, C] ([C] is one run) -> unit table [R, G]: case columns holding any NaN dropped,
    then the cases of each group averaged within each run."""
    s = np.asarray(_floats(scores), dtype=np.float64)
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"scores must be [run, case] with at least one run, got shape {s.shape}")
    codes = None if groups is None else _group_codes(groups, s.shape[1])
    keep = ~np.isnan(s).any(axis=0)
    s = s[:, keep]
    if codes is None:
        return s
    _, codes = np.unique(codes[keep], return_inverse=True)
    return _group_means(s, codes.ravel())


def _check_method(method: str) -> str:
    method = method.lower()
    if method not in _RUN_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(_RUN_METHODS)}")
    return method


def _untested(estimate: float, runs: int, units: int, interval: str = "none") -> Difference:
    """The estimate alone: low, high, p, se and df NaN."""
    nan = float("nan")
    return Difference(float(estimate), nan, nan, nan, nan, nan, int(runs), int(units), interval)


def _t_result(
    estimate: float, v_run: float, v_unit: float, v_e: float, n_run: int, n_unit: int, alpha: float
) -> Difference:
    """t interval and test of 0 from the two-way mean squares of a run x unit table, scaled by 1 / (R G).

    ``v_run = MS_run / (R G)``, ``v_unit = MS_unit / (R G)``, ``v_e = MS_e / (R G)`` with ``R - 1``,
    ``G - 1`` and ``(R - 1)(G - 1)`` degrees of freedom. The unit component ``c = v_unit - v_e`` estimates
    ``sigma_unit^2 / G``. With ``c <= 0`` the unit component is taken as 0: ``se^2 = v_run`` on ``R - 1`` df,
    the exact run-level t. With ``c > 0`` the interval is Banerjee's (1961, [9]),
    ``estimate +- sqrt(t_{R-1}^2 v_run + t_{G-1}^2 c)``, which keeps its level whatever the ratio of the two
    components (a Satterthwaite df estimated from one run df is liberal at R = 2, see the section comment), and
    the p-value is the level at which that interval just reaches 0; ``se = sqrt(v_run + c)`` and ``df`` is
    Satterthwaite's [5] ``se^4 / (v_run^2 / (R - 1) + v_unit^2 / (G - 1) + v_e^2 / ((R - 1)(G - 1)))``, kept
    for the minimal detectable effect. With se == 0 the interval is the point and p is 1 (estimate 0) or 0."""
    if not (np.isfinite(estimate) and np.isfinite(v_run) and np.isfinite(v_unit) and np.isfinite(v_e)):
        return _untested(estimate, n_run, n_unit, "t")
    c = v_unit - v_e if n_unit > 1 else 0.0
    if c > 0:
        var = v_run + c
        df = var**2 / (v_run**2 / (n_run - 1) + v_unit**2 / (n_unit - 1) + v_e**2 / ((n_run - 1) * (n_unit - 1)))
    else:
        var, df = v_run, float(n_run - 1)
    if var <= 0:
        p = 1.0 if estimate == 0 else 0.0
        return Difference(
            float(estimate), float(estimate), float(estimate), p, 0.0, float(df), int(n_run), int(n_unit), "t"
        )
    se = float(np.sqrt(var))
    if c <= 0:
        q = float(ss.t.ppf(1.0 - alpha, df))
        p = float(min(1.0, 2.0 * ss.t.sf(abs(estimate) / se, df)))
        return Difference(
            float(estimate),
            float(estimate - q * se),
            float(estimate + q * se),
            p,
            se,
            float(df),
            int(n_run),
            int(n_unit),
            "t",
        )

    def half(tail: float) -> float:
        return float(np.sqrt(ss.t.ppf(1.0 - tail, n_run - 1) ** 2 * v_run + ss.t.ppf(1.0 - tail, n_unit - 1) ** 2 * c))

    h = half(alpha)
    if estimate == 0:
        p = 1.0
    else:
        # half(p / 2) == |estimate|: half falls from infinity to 0 as p goes from 0 to 1
        from scipy.optimize import brentq

        lo, hi = 1e-15, 1.0 - 1e-12
        f = lambda a: half(a / 2.0) - abs(estimate)  # noqa: E731
        p = lo if f(lo) < 0 else 1.0 if f(hi) > 0 else float(brentq(f, lo, hi, xtol=1e-12))
    return Difference(
        float(estimate), float(estimate - h), float(estimate + h), float(p), se, float(df), int(n_run), int(n_unit), "t"
    )


def _boot_result(estimate: float, boots: NDArray[np.float64], alpha: float, runs: int, units: int) -> Difference:
    """Percentile interval, :func:`bootstrap_p` and the resamples' sd as se."""
    finite = boots[np.isfinite(boots)]
    if finite.size == 0:
        return _untested(estimate, runs, units, "bootstrap")
    low, high = _interval(finite, alpha)
    se = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    return Difference(
        float(estimate),
        float(low),
        float(high),
        bootstrap_p(finite),
        se,
        float("nan"),
        int(runs),
        int(units),
        "bootstrap",
    )


def _crossed_boots(tables: list[NDArray[np.float64]], n_resamples: int, seed: int) -> NDArray[np.float64]:
    """Crossed (two-way) bootstrap of grand means ([7]): tables [R_m, G] (NaN = missing) -> [M, n_resamples].

    Each resample draws the G units with replacement once, shared by all tables and runs, then the runs with
    replacement: the same run indices for every table when all R_m are equal (runs matched by position),
    independently per table otherwise. The mean is linear, so a resample's mean is
    ``sum_rg wr_r x_rg wg_g / sum_rg wr_r valid_rg wg_g`` from the draw counts ``wr`` and ``wg``.
    """
    n_unit = tables[0].shape[1]
    n_runs = [t.shape[0] for t in tables]
    shared = len(set(n_runs)) == 1
    prepared = []
    for t in tables:
        present = ~np.isnan(t)
        prepared.append((np.where(present, t, 0.0), None if present.all() else present.astype(np.float64)))
    rng = np.random.default_rng(seed)
    boots = np.empty((len(tables), n_resamples))
    with _quiet():
        for start, stop in _blocks(n_resamples, n_unit + (n_runs[0] if shared else sum(n_runs))):
            m = stop - start
            wg = draw_counts(rng.integers(0, n_unit, size=(m, n_unit)), n_unit)  # [m, G]
            if shared:
                wr = draw_counts(rng.integers(0, n_runs[0], size=(m, n_runs[0])), n_runs[0])
            for k, (values, valid) in enumerate(prepared):
                r = n_runs[k]
                if not shared:
                    wr = draw_counts(rng.integers(0, r, size=(m, r)), r)  # [m, R_k]
                # einsum, not matmul: a threaded BLAS call is slow on a small, busy machine
                total = (np.einsum("br,rg->bg", wr, values) * wg).sum(1)
                count = (np.einsum("br,rg->bg", wr, valid) * wg).sum(1) if valid is not None else r * n_unit
                boots[k, start:stop] = total / count
    return boots


def _interval_kind(requested: str, n_run: int) -> str:
    """``"t"`` or ``"bootstrap"``: ``"auto"`` picks the bootstrap from :data:`BOOTSTRAP_MIN_RUNS` runs on."""
    if requested in ("t", "bootstrap"):
        return requested
    return "bootstrap" if n_run >= BOOTSTRAP_MIN_RUNS else "t"


def _run_inference(x: NDArray[np.float64], alpha: float, method: str, n_resamples: int, seed: int) -> Difference:
    n_run, n_unit = x.shape
    if n_unit == 0:
        return _untested(float("nan"), n_run, 0)
    estimate = float(x.mean())
    if n_run < 2:
        return _untested(estimate, n_run, n_unit)
    if _interval_kind(method, n_run) == "t":
        m, u = x.mean(axis=1), x.mean(axis=0)
        v_run = float(np.var(m, ddof=1)) / n_run
        if n_unit < 2:
            return _t_result(estimate, v_run, 0.0, 0.0, n_run, n_unit, alpha)
        v_unit = float(np.var(u, ddof=1)) / n_unit
        resid = x - m[:, None] - u[None, :] + estimate
        v_e = float(np.sum(resid**2)) / ((n_run - 1) * (n_unit - 1) * n_run * n_unit)
        return _t_result(estimate, v_run, v_unit, v_e, n_run, n_unit, alpha)
    boots = _crossed_boots([x], int(n_resamples), seed)[0]
    return _boot_result(estimate, boots, alpha, n_run, n_unit)


def run_mean(
    scores: ArrayLike,
    groups: ArrayLike | None = None,
    ci: float = 0.95,
    method: str = "auto",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Difference:
    """Run-level mean of one method's per-case scores with an interval and a test of 0.

    ``method="t"``: with x[r, g] the (grouped) scores, run means ``m_r = mean_g x[r, g]``, unit means
    ``u_g = mean_r x[r, g]`` and residual mean square ``MS_e`` of the two-way table (df ``(R-1)(G-1)``):
    ``v_run = var(m) / R``, ``v_unit = var(u) / G`` (ddof 1), ``v_e = MS_e / (R G)``; the unit component
    ``c = v_unit - v_e``; ``se^2 = v_run + c`` on Satterthwaite's df
    ``se^4 / (v_run^2 / (R - 1) + v_unit^2 / (G - 1) + v_e^2 / ((R - 1)(G - 1)))`` when ``c > 0``, else
    ``se^2 = v_run`` on ``R - 1`` df (also for G == 1); interval ``estimate +- t_{df} se``,
    ``p = 2 t.sf(|estimate| / se, df)``. With se == 0 the interval is ``[estimate, estimate]`` and p is 1 for
    an estimate of 0, else 0. (Why not ``v_run + v_unit``: see the section comment; it is liberal at R = 2.)
    ``method="bootstrap"``: each resample draws R runs and G units with replacement (the same units for
    every drawn run), percentile interval, :func:`bootstrap_p` of the resampled means, se their sd.
    ``method="auto"``: the bootstrap from :data:`BOOTSTRAP_MIN_RUNS` runs on, else the t (see the section
    comment for the coverage behind it).

    Args:
        scores: Per-case scores [R, C] (run, case; the same cases in every run); [C] is one run. NaN marks a
            case missing for a run: case columns holding any NaN are dropped.
        groups: Optional labels [C] (hashable, e.g. patient ids): the cases of a group are averaged within
            each run first, so the unit is the group.
        ci: Coverage of the two-sided interval.
        method: ``"auto"``, ``"t"`` or ``"bootstrap"``.
        n_resamples: Bootstrap resamples (``"bootstrap"`` only).
        seed: Seed of ``np.random.default_rng``.

    Returns:
        :class:`Difference`. With fewer than two runs only the estimate is given (method ``"none"``, the
        rest NaN); with no complete case column the estimate is NaN too.

    Raises:
        ValueError: On scores that are not [R, C], groups of the wrong length, an unknown method or ``ci``
            outside (0, 1).
    """
    alpha = _check_ci(ci, n_resamples)
    return _run_inference(_run_table(scores, groups), alpha, _check_method(method), int(n_resamples), seed)


def paired_run_difference(
    a: ArrayLike,
    b: ArrayLike,
    groups: ArrayLike | None = None,
    ci: float = 0.95,
    method: str = "auto",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Difference:
    """Run-level mean difference ``a - b`` of two methods: :func:`run_mean` of ``a - b``.

    Args:
        a, b: Per-case scores [R, C] of the two methods, runs matched by row (same pretraining and transfer
            seed), cases by column. Case columns where either holds NaN are dropped.
        groups, ci, method, n_resamples, seed: As in :func:`run_mean`.

    Returns:
        :class:`Difference` of ``a - b``.

    Raises:
        ValueError: If ``a`` and ``b`` differ in shape, or as :func:`run_mean`.
    """
    a, b = _floats(a), _floats(b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same [run, case] shape, got {a.shape} and {b.shape}")
    return run_mean(np.asarray(a, dtype=np.float64) - b, groups, ci, method, n_resamples, seed)


def _set_inference(
    s: NDArray[np.floating],
    t: NDArray[np.floating],
    groups: ArrayLike | None,
    ci: float,
    method: str,
    n_resamples: int,
    seed: int,
) -> Difference:
    """Set-level AUROC inference for s [M, R, n, K] (M = 1: the mean, M = 2: the difference 0 - 1)."""
    alpha = _check_ci(ci, n_resamples)
    method = _check_method(method)
    _check_set(s, t)
    n_run, n_img = s.shape[1], s.shape[2]
    codes = None if groups is None else _group_codes(groups, n_img)
    n_unit = n_img if codes is None else int(codes.max()) + 1
    per_run = np.asarray(mean_auroc(s, t), dtype=np.float64).reshape(s.shape[0], n_run)  # [M, R]
    d = per_run[0] - per_run[1] if s.shape[0] == 2 else per_run[0]
    estimate = float(np.mean(d))
    if n_run < 2 or not np.isfinite(estimate):
        return _untested(estimate, n_run, n_unit)
    if _interval_kind(method, n_run) == "bootstrap":
        boots = _set_auroc_boots(s, t, int(n_resamples), seed, groups=codes)
        return _boot_result(estimate, boots[0] - boots[1] if s.shape[0] == 2 else boots[0], alpha, n_run, n_unit)
    # t: runs held fixed, images resampled; per-run resampled values give the image covariance between runs
    boots = _set_auroc_boots(s, t, int(n_resamples), seed, groups=codes, resample_runs=False, by_run=True)
    bd = boots[0] - boots[1] if s.shape[0] == 2 else boots[0]  # [R, B]
    bd = bd[:, np.isfinite(bd).all(axis=0)]
    v_run = float(np.var(d, ddof=1)) / n_run
    if bd.shape[1] < 2:
        return _t_result(estimate, v_run, float("nan"), float("nan"), n_run, n_unit, alpha)
    v_unit = float(np.var(bd.mean(axis=0), ddof=1))  # var of the run average
    v_each = float(np.mean(np.var(bd, axis=1, ddof=1)))  # mean per-run variance
    v_e = max(0.0, (v_each - v_unit) / (n_run - 1))
    return _t_result(estimate, v_run, v_unit, v_e, n_run, n_unit, alpha)


def _set_stack(arrays: list[ArrayLike], targets: ArrayLike) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    xs = [_floats(x) for x in arrays]
    if any(x.shape != xs[0].shape for x in xs):
        raise ValueError(f"the methods' scores differ in shape: {[x.shape for x in xs]}")
    s = np.stack(xs)
    return (s[:, None] if s.ndim == 3 else s), _floats(targets)


def set_run_mean(
    scores: ArrayLike,
    targets: ArrayLike,
    groups: ArrayLike | None = None,
    ci: float = 0.95,
    method: str = "auto",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Difference:
    """Run-level mean of a set-level metric: one mean AUROC per run (:func:`mean_auroc`), averaged over runs.

    ``method="t"``: an image bootstrap with the runs held fixed (images drawn with replacement, as clusters
    when ``groups`` is given) gives each run's resampled AUROC; ``v_img`` is the variance of their run
    average and ``v_e = (mean_r var(AUROC*_r) - v_img) / (R - 1)`` its run-specific part, so
    ``c = v_img - v_e`` is the image covariance between runs. Then as :func:`run_mean`'s t with
    ``v_run = var(AUROC_r) / R``: ``se^2 = v_run + c`` on Satterthwaite's df with ``R - 1``, ``G - 1`` and
    ``(R - 1)(G - 1)`` (G images or groups) [5] when ``c > 0``, else ``se^2 = v_run`` on ``R - 1`` df.
    ``method="bootstrap"``: runs and images (clusters) resampled jointly (:func:`set_auroc_ci`'s
    resamples), percentile interval, :func:`bootstrap_p`. ``"auto"`` as in :func:`run_mean`. The p-value
    tests a mean of 0, as everywhere in :class:`Difference`; it is meaningful for differences only.

    Args:
        scores: Per-image scores [R, n, K] (run, image, class); [n, K] is one run.
        targets: Binary labels [n, K].
        groups: Optional cluster labels [n] (e.g. patient ids).
        ci, method, n_resamples, seed: As in :func:`run_mean`; the t method uses ``n_resamples`` image
            resamples for ``v_img``.

    Returns:
        :class:`Difference`; method ``"none"`` with fewer than two runs.
    """
    s, t = _set_stack([scores], targets)
    return _set_inference(s, t, groups, ci, method, n_resamples, seed)


def set_bootstrap_means(
    scores: ArrayLike, targets: ArrayLike, groups: ArrayLike | None = None, n_resamples: int = 10_000, seed: int = 0
) -> NDArray[np.float64]:
    """Bootstrap replicates of each method's run-averaged set-level mean AUROC, for rank probabilities.

    The set-level counterpart of :func:`hierarchical_bootstrap_means`: one resample draws the runs (matched
    across methods by position) and the test images (as patient clusters with ``groups``), both shared by every
    method, and recomputes every AUROC on them.

    Args:
        scores: [M, R, n, K] (method, run, image, class) predicted scores.
        targets: [n, K] binary labels.
        groups: [n] patient labels of the images, or None.
        n_resamples, seed: As in :func:`bootstrap_ci`.

    Returns:
        Replicates [M, n_resamples].
    """
    s, t = _floats(scores), _floats(targets)
    _check_set(s, t)
    codes = None if groups is None else _group_codes(groups, t.shape[0])
    return _set_auroc_boots(s, t, int(n_resamples), seed, groups=codes)


def set_run_difference(
    a: ArrayLike,
    b: ArrayLike,
    targets: ArrayLike,
    groups: ArrayLike | None = None,
    ci: float = 0.95,
    method: str = "auto",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Difference:
    """Run-level difference of a set-level metric: ``d_r = AUROC(a_r) - AUROC(b_r)``, averaged over runs.

    As :func:`set_run_mean` with ``d_r`` for the run AUROCs; both methods see the same resampled images
    (and runs), so what the images have in common cancels in the difference.

    Args:
        a, b: Per-image scores [R, n, K] of the two methods, runs matched by position.
        targets: Binary labels [n, K].
        groups, ci, method, n_resamples, seed: As in :func:`set_run_mean`.

    Returns:
        :class:`Difference` of ``a - b``.

    Raises:
        ValueError: If ``a`` and ``b`` differ in shape or do not match ``targets``.
    """
    s, t = _set_stack([a, b], targets)
    return _set_inference(s, t, groups, ci, method, n_resamples, seed)


def verdict(low: float, high: float, margin: float) -> str:
    """Reading of an interval of a difference oriented so that > 0 is better.

    Returns:
        ``"untested"`` if a bound is NaN; ``"equivalent"`` if ``-margin < low`` and ``high < margin`` (a
        difference inside the margin is a tie, even if 0 is excluded); else ``"better"`` if ``low > 0``,
        ``"worse"`` if ``high < 0``, ``"inconclusive"`` otherwise.
    """
    if np.isnan(low) or np.isnan(high):
        return "untested"
    if -margin < low and high < margin:
        return "equivalent"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "inconclusive"


def minimal_detectable_effect(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference a two-sided t test at level ``alpha`` detects with probability ``power``:
    ``(t_{1 - alpha/2, df} + t_{power, df}) se``; ``df = inf`` is the normal. NaN if se or df is NaN."""
    if np.isnan(se) or np.isnan(df):
        return float("nan")
    return float((ss.t.ppf(1.0 - alpha / 2.0, df) + ss.t.ppf(power, df)) * se)


def bayes_signed_rank(
    d: ArrayLike, rope: float, prior_strength: float = 1.0, n_samples: int = 50_000, seed: int = 0
) -> tuple[float, float, float]:
    """Bayesian signed-rank test of Benavoli et al. ([6]), as baycomp's ``SignedRankTest`` defines it.

    The posterior of the distribution of the differences is a Dirichlet process with one pseudo-observation at
    0 of weight ``prior_strength``: a sample is a Dirichlet(prior_strength, 1, ..., 1) weight vector ``w``
    over ``z = (0, d_1, ..., d_n)``. Its masses of the pairwise means (Walsh averages, ``i == j``
    included) are ``theta_left = sum_ij w_i w_j H(-(z_i + z_j) - 2 rope)``,
    ``theta_right = sum_ij w_i w_j H(z_i + z_j - 2 rope)`` (``H`` the step with ``H(0) = 1/2``) and
    ``theta_rope = 1 - theta_left - theta_right`` (with ``rope == 0``: ``theta_left = 1 - theta_right``,
    ``theta_rope = 0``). The returned probabilities are the shares of ``n_samples`` posterior samples in which
    each region has the largest mass (ties go to the first), as baycomp reports them.

    Args:
        d: Paired differences [n] (e.g. per data set or per run), > 0 where the first method is better;
            NaN dropped.
        rope: Half-width of the region of practical equivalence, >= 0.
        prior_strength: Weight of the pseudo-observation at 0 (baycomp's ``prior``), >= 0.
        n_samples: Monte Carlo samples of the posterior.
        seed: Seed of ``np.random.default_rng``.

    Returns:
        ``(P(d < -rope), P(|d| <= rope), P(d > rope))``; the middle one is 0 when ``rope == 0``.

    Raises:
        ValueError: With no finite difference, a negative rope or prior strength, or ``n_samples < 1``.
    """
    x = np.asarray(_floats(d), dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise ValueError("bayes_signed_rank needs at least one finite difference")
    if rope < 0 or prior_strength < 0 or int(n_samples) < 1:
        raise ValueError(
            f"need rope >= 0, prior_strength >= 0 and n_samples >= 1, got {rope}, {prior_strength}, {n_samples}"
        )
    if prior_strength > 0:
        z, alpha = np.r_[0.0, x], np.r_[float(prior_strength), np.ones(x.size)]
    else:
        z, alpha = x, np.ones(x.size)
    sums = z[:, None] + z[None, :]
    above = (sums > 2 * rope) + 0.5 * (sums == 2 * rope)
    below = (-sums > 2 * rope) + 0.5 * (-sums == 2 * rope)
    rng = np.random.default_rng(seed)
    wins = np.zeros(3)
    for start, stop in _blocks(int(n_samples), z.size):
        w = rng.dirichlet(alpha, size=stop - start)  # [m, n + 1]
        right = (np.einsum("bi,ij->bj", w, above) * w).sum(1)
        if rope > 0:
            left = (np.einsum("bi,ij->bj", w, below) * w).sum(1)
            probs = np.stack([left, 1.0 - left - right, right], axis=1)
        else:
            probs = np.stack([1.0 - right, np.zeros_like(right), right], axis=1)
        wins += np.bincount(np.argmax(probs, axis=1), minlength=3)
    p = wins / int(n_samples)
    return float(p[0]), float(p[1]), float(p[2])


def friedman_exact(
    scores: ArrayLike,
    lower_is_better: bool = False,
    max_enumeration: int = 2_000_000,
    n_permutations: int = 200_000,
    seed: int = 0,
) -> tuple[float, float, str]:
    """Friedman chi2_F with its permutation p-value ([8]; exact for few blocks where chi2 is poor).

    The statistic is :func:`friedman`'s (average ranks for ties within a block). Under H0 each block's
    observed rank vector is permuted independently and uniformly; chi2_F is a function of the rank sums, so
    ``p = P(sum_j S_j^2 >= observed)`` with S_j the permuted rank sums. Exact when
    ``(k!)^(N - 1) <= max_enumeration``: the first block is fixed (chi2 is symmetric in the methods) and the
    distribution of the rank-sum vector is built block by block, merging equal vectors (a dynamic programme;
    ranks are doubled so that tied half-ranks stay integers and the comparison is exact). Else Monte Carlo
    over ``n_permutations`` seeded permutations, ``p = (1 + count) / (1 + B)``.

    Args:
        scores: Scores [N, k] (block, method); no NaN.
        lower_is_better: Rank the lowest score first (chi2 and p do not depend on it).
        max_enumeration: Largest number of rank configurations enumerated exactly.
        n_permutations: Monte Carlo permutations B.
        seed: Seed of ``np.random.default_rng`` (Monte Carlo only).

    Returns:
        ``(chi2, p, "exact" | "monte carlo")``.

    Raises:
        ValueError: As :func:`friedman`, or ``n_permutations < 1``.
    """
    import itertools
    import math

    res = friedman(scores, lower_is_better)
    s = np.asarray(scores, dtype=np.float64)
    n, k = s.shape
    ranks = np.rint(2.0 * ss.rankdata(s if lower_is_better else -s, axis=1)).astype(np.int64)  # doubled
    observed = int(np.sum(ranks.sum(axis=0) ** 2))
    size = 1
    for _ in range(n - 1):  # (k!)^(N-1), stopping once it passes the limit
        size *= math.factorial(k)
        if size > max_enumeration:
            break
    if size <= max_enumeration:
        if n == 1:
            return res.chi2, 1.0, "exact"
        perms = np.array(list(itertools.permutations(range(k))))  # [k!, k]
        weights: np.ndarray
        states, weights = ranks[:1], np.ones(1)
        for b in range(1, n):
            rows, counts = np.unique(ranks[b][perms], axis=0, return_counts=True)  # distinct orders
            new = (states[:, None, :] + rows[None]).reshape(-1, k)
            w = (weights[:, None] * counts[None]).ravel()
            states, inverse = np.unique(new, axis=0, return_inverse=True)
            weights = np.bincount(inverse.ravel(), weights=w)
        stat = np.sum(states**2, axis=1)
        return res.chi2, float(min(1.0, weights[stat >= observed].sum() / weights.sum())), "exact"
    if int(n_permutations) < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    rng = np.random.default_rng(seed)
    count = 0
    for start, stop in _blocks(int(n_permutations), n * k):
        m = stop - start
        order = np.argsort(rng.random((m, n, k)), axis=-1)
        perm = np.take_along_axis(np.broadcast_to(ranks, (m, n, k)), order, axis=-1)
        count += int(np.sum(np.sum(perm.sum(axis=1) ** 2, axis=-1) >= observed))
    return res.chi2, (1.0 + count) / (1.0 + int(n_permutations)), "monte carlo"


def hierarchical_bootstrap_means(
    scores: list[ArrayLike], groups: ArrayLike | None = None, n_resamples: int = 10_000, seed: int = 0
) -> NDArray[np.float64]:
    """Crossed bootstrap replicates of each method's grand mean, for rankings over shared cases ([7]).

    Every resample draws the units (cases, or groups) with replacement once, shared by all methods and runs;
    the runs are drawn with replacement per method, with the same run indices for all methods when every
    R_m is equal (runs matched by position) and independently otherwise. Means are NaN-ignoring: a
    resample's mean is over its drawn non-NaN entries (NaN if none).

    Args:
        scores: M arrays [R_m, C] (run, case), the same C cases in every column order; [C] is one run.
        groups: Optional labels [C] (e.g. patient ids): the cases of a group are averaged (NaN-ignoring)
            within each run first, and the groups are the units drawn.
        n_resamples: Number of bootstrap resamples B.
        seed: Seed of ``np.random.default_rng``.

    Returns:
        Replicates [M, B].

    Raises:
        ValueError: With no method, methods over different cases, or a method without runs.
    """
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    tables = []
    for x in scores:
        t = np.asarray(_floats(x), dtype=np.float64)
        tables.append(t[None] if t.ndim == 1 else t)
    if not tables or any(t.ndim != 2 or t.shape[0] == 0 or t.shape[1] != tables[0].shape[1] for t in tables):
        raise ValueError(
            f"scores must be a non-empty list of [run, case] arrays over the same cases, got "
            f"{[t.shape for t in tables]}"
        )
    if tables[0].shape[1] == 0:
        raise ValueError("hierarchical_bootstrap_means needs at least one case")
    if groups is not None:
        codes = _group_codes(groups, tables[0].shape[1])
        tables = [_group_means(t, codes) for t in tables]
    return _crossed_boots(tables, int(n_resamples), seed)


def rank_probabilities(
    boots: ArrayLike, lower_is_better: bool = False, margin: float = 0.0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Rank distribution of M methods over bootstrap replicates (e.g. from
    :func:`hierarchical_bootstrap_means`).

    Args:
        boots: Replicates [M, B]; replicates (columns) holding any NaN are left out.
        lower_is_better: Rank the lowest value first.
        margin: A method counts as best in a replicate when it is within ``margin`` (>= 0) of that
            replicate's best value.

    Returns:
        ``(P, p_best)``: P [M, M] with ``P[i, j]`` the share of replicates where method i has rank j + 1
        (competition ranks, ``scipy.stats.rankdata(method="min")``: tied methods share the best of their
        ranks, so a row sums to 1 and a column may not); p_best [M] the share where method i is the best or
        within ``margin`` of it. NaN when no replicate is complete.
    """
    b = np.asarray(_floats(boots), dtype=np.float64)
    if b.ndim != 2 or b.shape[0] == 0:
        raise ValueError(f"boots must be [methods, replicates], got shape {b.shape}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    n_method = b.shape[0]
    b = b[:, ~np.isnan(b).any(axis=0)]
    n_boot = b.shape[1]
    if n_boot == 0:
        return np.full((n_method, n_method), np.nan), np.full(n_method, np.nan)
    v = b if lower_is_better else -b  # lower v is better
    ranks = ss.rankdata(v, method="min", axis=0).astype(np.int64) - 1  # [M, B], 0-based
    key = np.arange(n_method)[:, None] * n_method + ranks
    p = np.bincount(key.ravel(), minlength=n_method * n_method).reshape(n_method, n_method) / n_boot
    p_best = np.mean(v <= v.min(axis=0) + margin, axis=1)
    return p.astype(np.float64), p_best.astype(np.float64)


def average_precision(scores: ArrayLike, targets: ArrayLike) -> Any:
    """Mean over classes of the average precision, as ``sklearn.metrics.average_precision_score`` defines it.

    Per class, with the distinct scores as thresholds (tied scores are one threshold), ``AP = sum_t (R_t -
    R_{t-1}) P_t`` over descending thresholds t, P and R the precision and recall of ``score >= t``; the step
    rule, no interpolation. Equivalently, each positive contributes ``1 / n_pos`` times the precision at the
    lowest score of its tie group. Classes without a positive are left out (NaN if none has one).

    Args:
        scores: Scores [..., n, K] (image, class); leading dimensions (e.g. runs) are batched.
        targets: Binary labels [n, K].

    Returns:
        A float for [n, K] input, else an array of the leading shape.
    """
    s = np.asarray(_floats(scores), dtype=np.float64)
    t = np.asarray(_floats(targets), dtype=np.float64)
    if s.ndim < 2 or t.ndim != 2 or s.shape[-2:] != t.shape:
        raise ValueError(
            f"scores must be [..., images, classes] matching targets [images, classes], got {s.shape} and {t.shape}"
        )
    n = t.shape[0]
    x = np.moveaxis(s, -1, -2)  # [..., K, n]
    y = np.broadcast_to(t.T, x.shape)
    order = np.argsort(-x, axis=-1, kind="stable")  # descending
    xs = np.take_along_axis(x, order, axis=-1)
    ys = np.take_along_axis(y, order, axis=-1)
    tp = np.cumsum(ys, axis=-1)
    pos = np.arange(n)
    end = np.ones(xs.shape, dtype=bool)
    end[..., :-1] = xs[..., 1:] != xs[..., :-1]  # last of a tie group
    # each position's tie-group end: the first end at or after it (a reverse running minimum)
    last = np.minimum.accumulate(np.where(end, pos, n)[..., ::-1], axis=-1)[..., ::-1]
    precision = np.take_along_axis(tp / (pos + 1.0), last, axis=-1)
    n_pos = t.sum(axis=0)
    with _quiet():
        ap = np.where(n_pos > 0, (ys * precision).sum(-1) / n_pos, np.nan)  # [..., K]
        return _out(np.nanmean(ap, axis=-1))
