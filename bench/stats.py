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
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as ss

Stat = Callable[..., Any]

_DRAW = 1000                 # resamples whose indices are drawn at once (at most)
_MAX_ELEMENTS = 1 << 22      # elements of one temporary array (4 Mi: 32 MiB as float64)
_BOOTSTRAP_METHODS = ("bca", "percentile")
_LINEAR_MIN_BATCH = 4        # batch size from which a batched bootstrap mean uses draw counts


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


def bootstrap_ci(x: ArrayLike, stat: Stat = np.mean, n_resamples: int = 10_000, ci: float = 0.95,
                 method: str = "bca", seed: int = 0) -> tuple[float, float]:
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
    ss2 = np.sum(d ** 2)
    a = float(np.sum(d ** 3) / (6.0 * ss2 ** 1.5)) if ss2 > 0 else 0.0
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
        out[rows] = stat(x[j[None, :] + (j[None, :] >= i)], axis=-1)      # row i skips x[i]
    return out


_NAN_AWARE: dict[Any, Stat] = {np.mean: np.nanmean, np.median: np.nanmedian}


def hierarchical_bootstrap_ci(scores: ArrayLike, stat: Stat = np.mean, n_resamples: int = 10_000,
                              ci: float = 0.95, seed: int = 0) -> tuple[Any, Any]:
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
    flat = s.reshape(-1, n_seed * n_case)                                   # [L, S*C]
    per = n_seed * n_case
    # The mean is linear: a resample's mean is (draw counts . values) / (valid draws). For a batch this
    # replaces L gathers per resample by one bincount and one product; a single entry gathers directly.
    linear = (fn is np.mean or fn is np.nanmean) and flat.shape[0] >= _LINEAR_MIN_BATCH
    if linear:
        valid = ~np.isnan(flat)
        values = np.ascontiguousarray(np.where(valid, flat, 0.0).T, dtype=np.float64)   # [S*C, L]
        weights = np.ascontiguousarray(valid.T, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boots = np.empty((flat.shape[0], n_resamples))
    with _quiet():
        for start, stop in _blocks(n_resamples, per):
            m = stop - start
            seeds = rng.integers(0, n_seed, size=(m, n_seed, 1))
            cases = rng.integers(0, n_case, size=(m, n_seed, n_case))
            idx = (seeds * n_case + cases).reshape(m, per)                  # flat [seed, case] index
            if linear:
                w = draw_counts(idx, per)                                   # [m, S*C]
                # einsum, not matmul: a threaded BLAS call is slow on a small, busy machine
                total = np.einsum("rp,pl->rl", w, values)
                boots[:, start:stop] = (total / (np.einsum("rp,pl->rl", w, weights) if nan else per)).T
                continue
            for sub in _sub_blocks(m, per * flat.shape[0]):
                boots[:, start + sub.start:start + sub.stop] = fn(flat[:, idx[sub]], axis=-1)
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


def stratified_bootstrap_ci(scores: ArrayLike, aggregate: Stat = iqm, n_resamples: int = 10_000,
                            ci: float = 0.95, seed: int = 0) -> tuple[Any, Any]:
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
    flat = s.reshape(-1, n_run * n_task)                                    # [L, R*T], run-major
    per = n_run * n_task
    rng = np.random.default_rng(seed)
    boots = np.empty((flat.shape[0], n_resamples))
    task = np.arange(n_task)
    for start, stop in _blocks(n_resamples, per):
        m = stop - start
        idx = (rng.integers(0, n_run, size=(m, n_run, n_task)) * n_task + task).reshape(m, per)
        for sub in _sub_blocks(m, per * flat.shape[0]):
            boots[:, start + sub.start:start + sub.stop] = aggregate(flat[:, idx[sub]], axis=-1)
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

    mean_ranks: NDArray[np.float64]    # [k], rank 1 = best
    chi2: float                        # Friedman chi2_F, no tie correction
    chi2_p: float                      # chi2 with k - 1 df
    ff: float                          # Iman-Davenport F_F
    ff_p: float                        # F with (k - 1, (k - 1)(N - 1)) df


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
    chi2 = float(12.0 * n / (k * (k + 1)) * (np.sum(r ** 2) - k * (k + 1) ** 2 / 4.0))
    chi2 = max(chi2, 0.0)                              # rounding can give -1e-15 when all ranks tie
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
    sgn = np.sign(x[..., :, None, :] - y[..., None, :, :])                 # [..., n, m, T]
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


def probability_of_improvement_ci(x: ArrayLike, y: ArrayLike, n_resamples: int = 10_000, ci: float = 0.95,
                                  seed: int = 0) -> tuple[Any, Any]:
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
    g = (np.sign(x[..., :, None, :] - y[..., None, :, :]) + 1.0) / 2.0   # [..., n, m, T]
    rng = np.random.default_rng(seed)
    boots = np.empty((*lead, n_resamples))
    for start, stop in _blocks(n_resamples, (n + m) * n_task):
        r = stop - start
        ix = rng.integers(0, n, size=(r, n, n_task))
        iy = rng.integers(0, m, size=(r, m, n_task))
        wx, wy = _task_counts(ix, n), _task_counts(iy, m)                   # [r, n, T], [r, m, T]
        for sub in _sub_blocks(r, size * max(n, m) * n_task):
            boots[..., start + sub.start:start + sub.stop] = np.einsum(
                "rit,...ijt,rjt->...r", wx[sub], g, wy[sub], optimize=True) / (n * m * n_task)
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
    da = np.sign(a[..., i] - a[..., j])                                      # [..., r, P]
    db = np.sign(b[..., i] - b[..., j])[..., None, :]                        # [..., 1, P]
    num = (da * db).sum(-1)
    den = np.sqrt(np.count_nonzero(da, axis=-1) * np.count_nonzero(db, axis=-1).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def rank_stability(scores: ArrayLike, n_boot: int = 1000, seed: int = 0,
                   lower_is_better: bool = False) -> NDArray[np.float64]:
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
        full = sign * mean(s, axis=-2)                                       # [..., k]
    lead = s.shape[:-2]
    size = int(np.prod(lead, dtype=np.int64))
    rng = np.random.default_rng(seed)
    tau = np.empty((*lead, n_boot))
    for start, stop in _blocks(n_boot, n_case):
        r = stop - start
        idx = rng.integers(0, n_case, size=(r, n_case))
        for sub in _sub_blocks(r, size * n_case * k):
            with _quiet():
                means = sign * mean(s[..., idx[sub], :], axis=-2)            # [..., r, k]
            tau[..., start + sub.start:start + sub.stop] = _kendall_tau_b(means, full)
    return tau


# ------------------------------------------------------------------------- set-level AUROC over images


def _check_set(scores: NDArray[np.floating], targets: NDArray[np.floating]) -> None:
    if scores.ndim != 4 or targets.ndim != 2 or scores.shape[2:] != targets.shape:
        raise ValueError(f"scores must be [methods, runs, images, classes] matching targets [images, classes], "
                         f"got {scores.shape} and {targets.shape}")
    if scores.shape[1] == 0 or scores.shape[2] < 2:
        raise ValueError(f"need at least one run and two images, got {scores.shape}")


class _SortedScores(NamedTuple):
    """One score column sorted once, so every resample's AUROC is a weighted sum (no sort per resample)."""

    order: NDArray[np.integer]          # images by ascending score
    starts: NDArray[np.integer]         # first position of each run of tied scores in ``order``
    pos: NDArray[np.float64]            # target of each image in ``order`` (0/1)


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
    pos = np.add.reduceat(w * col.pos, col.starts, axis=1)                       # [m, groups]
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
    per = np.array([[_weighted_auroc(_sorted_scores(x[:, c], t[:, c]), ones)[0] for c in range(t.shape[1])]
                    for x in flat])
    with _quiet():
        return _out(np.nanmean(per, axis=-1).reshape(lead))


def _set_auroc_boots(scores: NDArray[np.floating], targets: NDArray[np.floating], n_resamples: int,
                     seed: int) -> NDArray[np.float64]:
    """Bootstrap distribution of the run-averaged mean AUROC of each method: scores [M, R, n, C] (method, run,
    image, class) and targets [n, C] -> [M, n_resamples].

    One resample draws R runs and n images with replacement, both shared by every method (the runs are
    matched across methods: same seed, same draw), and recomputes each class's AUROC on the drawn images.
    Each column is sorted once; a resample enters as its draw counts, so a block costs O(resamples x images)
    per column instead of a sort per resample (ChestX-ray14's 25,596 test images x 14 classes stay fast)."""
    n_method, n_run, n_img, n_cls = scores.shape
    cols = [[[_sorted_scores(scores[k, r, :, c], targets[:, c]) for c in range(n_cls)] for r in range(n_run)]
            for k in range(n_method)]
    rng = np.random.default_rng(seed)
    boots = np.empty((n_method, n_resamples))
    for start, stop in _blocks(n_resamples, n_img + n_run):
        m = stop - start
        runs = draw_counts(rng.integers(0, n_run, size=(m, n_run)), n_run) / n_run  # [m, R] run weights
        img = rng.integers(0, n_img, size=(m, n_img))
        per = np.empty((n_method, n_run, m, n_cls))
        for sub in _sub_blocks(m, 4 * n_img):
            w = draw_counts(img[sub], n_img)                                       # [m', n] draw counts
            for k, r, c in np.ndindex(n_method, n_run, n_cls):
                per[k, r, sub, c] = _weighted_auroc(cols[k][r][c], w)
        with _quiet():
            per_run = np.nanmean(per, axis=-1)                                     # [M, R, m]
        boots[:, start:stop] = np.einsum("krm,mr->km", per_run, runs)
    return boots


def set_auroc_ci(scores: ArrayLike, targets: ArrayLike, n_resamples: int = 10_000, ci: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
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

    Returns:
        ``(low, high)``.
    """
    alpha = _check_ci(ci, n_resamples)
    s, t = _floats(scores), _floats(targets)
    s = s[None, None] if s.ndim == 2 else s[None]
    _check_set(s, t)
    return _interval(_set_auroc_boots(s, t, int(n_resamples), seed)[0], alpha)


def paired_set_auroc_test(a: ArrayLike, b: ArrayLike, targets: ArrayLike, n_resamples: int = 10_000,
                          seed: int = 0) -> tuple[float, float]:
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
    boots = _set_auroc_boots(s, t, int(n_resamples), seed)
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
    full = np.mean(mean_auroc(s, t), axis=-1)                                       # [M]
    boots = _set_auroc_boots(s, t, int(n_boot), seed)                              # [M, B]
    return _kendall_tau_b(boots.T, full)
