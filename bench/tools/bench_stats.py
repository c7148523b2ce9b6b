"""Wall-time benchmark of the statistics behind one leaderboard (a script, not a test).

    python -m bench.tools.bench_stats                      # 12 methods x 4 tasks x 5 seeds x 100 cases x 13 classes
    python -m bench.tools.bench_stats --resamples 2000     # other sizes: see --help

On synthetic per-case, per-class Dice scores (classes averaged per case first, as the leaderboard scores a case;
one run per seed, method 0 the baseline) it times, part by part, the run-level statistics (``bench.stats``,
"Run-level inference") that ``bench.leaderboard`` computes, called as it calls them (a comparison's verdict and
minimal detectable effect through the leaderboard's own ``_compare``):

1. per (task, method): ``run_mean`` of the method's [run, case] scores (the mean column and its CI);
2. per task: ``paired_run_difference`` of every method against the baseline, Holm's adjustment over those
   comparisons, the minimal detectable effect and the Bayesian signed-rank test (``bayes_signed_rank``, 50,000
   posterior samples) on the per-run mean differences, with the margin as the rope;
3. per task: ``paired_run_difference`` of every pair of methods, with its verdict and minimal detectable effect
   (the pairwise significance map; the leaderboard reads the baseline comparisons of 2 from these, so 1-6 counts
   them twice);
4. per task: ``hierarchical_bootstrap_means`` (runs and cases resampled, cases shared by all methods) and
   ``rank_probabilities`` with the margin (P(best));
5. across tasks: ranks with ties within the margin (``leaderboard.margin_ranks``) and ``friedman_exact`` over
   them; the pairwise Wilcoxon over tasks with Holm where the tasks allow a rejection (6 or more); on the run
   scores normalised per task (0 = the baseline, 1 = perfect), the IQM with its stratified bootstrap CI per
   method, the probability-of-improvement matrix and its CIs against the baseline;
6. per (task, method): the negative control, ``paired_run_difference`` of the method's two halves of runs
   (alternate runs, from 4 runs on) with its minimal detectable effect;
7. the whole leaderboard as ``bench.leaderboard`` renders it from result rows in the store's format (every
   statistic above, with the leaderboard's own settings: 10,000 resamples for every bootstrap, plus the
   Markdown), and ``publish`` with its figures (PNG) and CSVs.

Below ``stats.BOOTSTRAP_MIN_RUNS`` (30) runs, ``run_mean`` and ``paired_run_difference`` use the t on the
run-level variance, so ``--resamples`` reaches parts 1-3 and 6 only from 30 seeds on; ``--per-call`` adds the
bootstrap (the method from 30 runs on) for part 1, one call per (task, method), outside the total. The target:
the leaderboard end to end (7b) at most 10 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy

from bench import stats


def synthetic_dice(tasks: int, methods: int, seeds: int, cases: int, classes: int, seed: int = 0) -> np.ndarray:
    """Synthetic Dice scores [task, method, seed, case, class] in [0, 1]: case and class difficulty, a
    method effect, a seed effect and noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.beta(8, 2, (tasks, 1, 1, cases, classes))
    method = np.linspace(-0.05, 0.05, methods)[None, :, None, None, None] + rng.normal(
        0, 0.01, (tasks, methods, 1, 1, 1)
    )
    seed_effect = rng.normal(0, 0.01, (tasks, methods, seeds, 1, 1))
    noise = rng.normal(0, 0.03, (tasks, methods, seeds, cases, classes))
    return np.clip(difficulty + method + seed_effect + noise, 0.0, 1.0)


def result_rows(dice: np.ndarray):
    """The synthetic scores as the results store returns them: (metrics rows, cells rows, a Suite)."""
    import pandas as pd

    from bench.suites import Suite, Task

    nt, nm, ns, nc, nk = dice.shape
    tasks = tuple(Task(f"task{t}", "synthetic", "segmentation", ("finetune",), metric="dice") for t in range(nt))
    suite = Suite("bench_stats", 1, tasks, seeds=tuple(range(ns)), pretrain_dataset="synthetic", synthetic=True)
    t, m, s, c, k = np.indices(dice.shape).reshape(5, -1)
    method = np.array(["random"] + [f"method{i:02d}" for i in range(1, nm)])[m]
    cell_id = np.char.add(
        np.char.add(np.array([f"t{i}" for i in range(nt)])[t], method), np.array([f"s{i}" for i in range(ns)])[s]
    )
    metrics = pd.DataFrame(
        {
            "suite": suite.name,
            "suite_version": 1,
            "task": np.array([x.name for x in tasks])[t],
            "method": method,
            "protocol": "finetune",
            "label_fraction": 1.0,
            "draw": 0,
            "seed": s,
            "budget": "quick",
            "leakage_override": 0,
            "cell_id": cell_id,
            "case_id": np.char.add("case", c.astype(str)),
            "class": k + 1,
            "metric": "dice",
            "value": dice.ravel(),
        }
    )
    cells = metrics.drop_duplicates("cell_id")[["cell_id"]].assign(
        git_sha="benchmark",
        device="cpu",
        start_time="2026-01-01T00:00:00",
        end_time="2026-01-01T00:01:00",
        wall_s=60.0,
        gpu_hours=0.0,
        cpu_hours=60 / 3600,
        params=1_000_000,
    )
    return metrics, cells, suite


def _timed(label: str, fn: Callable[[], Any], times: dict[str, float]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    times[label] = time.perf_counter() - t0
    print(f"  {label:<58s} {times[label]:7.3f} s", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tools.bench_stats", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", type=int, default=12)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--seeds", type=int, default=5, help="runs per (task, method), one per seed")
    p.add_argument("--cases", type=int, default=100)
    p.add_argument("--classes", type=int, default=13)
    p.add_argument(
        "--resamples",
        type=int,
        default=10_000,
        help="bootstrap resamples: the IQM CIs, and run_mean / paired_run_difference from 30 seeds on",
    )
    p.add_argument("--poi-resamples", type=int, default=10_000, help="resamples of the PoI CIs against the baseline")
    p.add_argument(
        "--rank-boots",
        type=int,
        default=None,
        help="resamples of hierarchical_bootstrap_means for P(best) (default: --resamples)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--render",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the leaderboard renderer and publish (Markdown, figures, CSV) on the same data",
    )
    p.add_argument(
        "--per-call",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time part 1 with method='bootstrap' (the leaderboard's from 30 runs on), one "
        "run_mean call per (task, method), --resamples resamples (not in the total)",
    )
    a = p.parse_args(argv)
    rank_boots = a.resamples if a.rank_boots is None else a.rank_boots

    # the leaderboard's own helpers: _compare gives a comparison's verdict and minimal detectable effect
    from bench.leaderboard.analysis import (
        DEFAULT_MARGINS,
        MIN_CONTROL_RUNS,
        Options,
        _compare,
        margin_ranks,
        normalised,
    )

    opts = Options()
    margin, alpha, ci = opts.margin("dice"), opts.alpha, opts.ci
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"CPU cores: os.cpu_count()={os.cpu_count()}, usable by this process={affinity}; "
        f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print(
        f"data: {a.methods} methods x {a.tasks} tasks x {a.seeds} seeds x {a.cases} cases x {a.classes} classes; "
        f"bootstrap resamples {a.resamples}, PoI CI resamples {a.poi_resamples}, P(best) resamples "
        f"{rank_boots}; Dice margin {margin} (DEFAULT_MARGINS['dice'] = {DEFAULT_MARGINS['dice']})"
    )
    dice = synthetic_dice(a.tasks, a.methods, a.seeds, a.cases, a.classes, a.seed)
    case = dice.mean(-1)  # [task, method, run, case]
    times: dict[str, float] = {}
    nt, nm, ns = a.tasks, a.methods, a.seeds
    n_res = dict(n_resamples=a.resamples, seed=a.seed)

    # 1. run-level mean and CI per (task, method)
    def means() -> list[list[stats.Difference]]:
        return [[stats.run_mean(case[t, m], ci=ci, **n_res) for m in range(nm)] for t in range(nt)]

    mean = _timed(f"1 run_mean, {nt * nm} (task, method), one call each", means, times)
    grand = np.array([[d.estimate for d in row] for row in mean])  # [task, method]
    assert all(d.low <= d.estimate <= d.high for row in mean for d in row if np.isfinite(d.low))

    # 2. every method against the baseline (method 0): difference, Holm, MDE, Bayesian signed-rank
    def vs_baseline() -> list[tuple[list[Any], np.ndarray, list[Any]]]:
        out = []
        for t in range(nt):
            base = case[t, 0]
            diffs = [stats.paired_run_difference(case[t, m], base, ci=ci, **n_res) for m in range(1, nm)]
            raw = np.array([d.p for d in diffs], dtype=float)
            adjusted = np.full(len(raw), np.nan)
            ok = np.isfinite(raw)
            if ok.any():
                adjusted[ok] = np.asarray(stats.holm(raw[ok]), dtype=float)
            compared = [_compare(d, "baseline", margin, alpha) for d in diffs]  # verdict + MDE
            bayes = [
                stats.bayes_signed_rank((case[t, m] - base).mean(1), margin, n_samples=50_000, seed=a.seed)
                if ns >= 2
                else None
                for m in range(1, nm)
            ]
            out.append((compared, adjusted, bayes))
        return out

    baseline = _timed(f"2 vs baseline + Holm + MDE + Bayes, {nt} x {nm - 1} comparisons", vs_baseline, times)

    # 3. every pair of methods per task: the significance map
    def pairwise() -> dict[tuple[int, int, int], Any]:
        out = {}
        for t in range(nt):
            for i in range(nm):
                for j in range(i + 1, nm):
                    d = stats.paired_run_difference(case[t, i], case[t, j], ci=ci, **n_res)
                    out[t, i, j] = _compare(d, str(j), margin, alpha)
        return out

    pairs = _timed(f"3 pairwise differences, {nt} x {nm * (nm - 1) // 2} pairs", pairwise, times)

    # 4. P(best): crossed bootstrap of the methods' means, rank probabilities with the margin
    def best() -> np.ndarray:
        p_best = np.empty((nt, nm))
        for t in range(nt):
            boots = stats.hierarchical_bootstrap_means(list(case[t]), n_resamples=rank_boots, seed=a.seed)
            p_best[t] = stats.rank_probabilities(boots, margin=margin)[1]
        return p_best

    p_best = _timed(f"4 bootstrap means + P(best), {nt} tasks x {rank_boots} resamples", best, times)

    # 5. across tasks: margin ranks + exact Friedman, (Wilcoxon + Holm,) IQM + CI, PoI matrix + CIs
    def across() -> dict[str, Any]:
        ranks = np.array([margin_ranks(grand[t], margin) for t in range(nt)])
        chi2, fp, how = stats.friedman_exact(-ranks, seed=a.seed)
        norm = np.array([[normalised(grand[t, m], grand[t, 0], "dice") for m in range(nm)] for t in range(nt)])
        wilcoxon = None
        if 2.0 / 2**nt <= alpha:  # as the leaderboard: a rejection possible
            raw = [stats.paired_wilcoxon(norm[:, i], norm[:, j])[1] for i in range(nm) for j in range(i + 1, nm)]
            wilcoxon = stats.holm(np.array(raw))
        # normalised run scores [method, run, task]
        runs = np.stack(
            [[[normalised(v, grand[t, 0], "dice") for v in case[t, m].mean(1)] for t in range(nt)] for m in range(nm)]
        ).transpose(0, 2, 1)
        iqm = [
            (stats.iqm(runs[m]), *stats.stratified_bootstrap_ci(runs[m], aggregate=stats.iqm, ci=ci, **n_res))
            for m in range(nm)
        ]
        poi = np.full((nm, nm), np.nan)
        for i in range(nm):
            for j in range(nm):
                if i != j:
                    poi[i, j] = stats.probability_of_improvement(runs[i], runs[j])
        poi_ci = [
            stats.probability_of_improvement_ci(runs[m], runs[0], n_resamples=a.poi_resamples, ci=ci, seed=a.seed)
            for m in range(1, nm)
        ]
        return dict(chi2=chi2, p=fp, how=how, wilcoxon=wilcoxon, iqm=iqm, poi=poi, poi_ci=poi_ci)

    acr = _timed(f"5 margin ranks + Friedman, IQM + CIs, PoI {nm}x{nm} + CIs", across, times)

    # 6. negative controls: each method's alternate runs as two halves (the leaderboard's split with one
    #    pretraining seed), from MIN_CONTROL_RUNS runs on
    def controls() -> list[Any]:
        out: list[Any] = []
        if ns < MIN_CONTROL_RUNS:
            return out
        first, second = np.arange(0, ns, 2), np.arange(1, ns, 2)
        n = min(len(first), len(second))
        for t in range(nt):
            for m in range(nm):
                d = stats.paired_run_difference(case[t, m, first[:n]], case[t, m, second[:n]], ci=ci, **n_res)
                out.append(_compare(d, str(m), margin, alpha))
        return out

    ctrl = _timed(f"6 negative controls, {nt * nm if ns >= MIN_CONTROL_RUNS else 0} (task, method)", controls, times)

    if a.render:
        metrics, cells, suite = result_rows(dice)
        from bench import leaderboard

        md = _timed(
            f"7a leaderboard Markdown from {len(metrics)} result rows",
            lambda: leaderboard.render(suite, metrics, cells, now="2026-01-01", git="benchmark", class_names={}),
            times,
        )
        assert md.count("\n| ") > nt * nm

        class _Store:
            def metrics(self, name: str):
                return metrics

            def cells(self, name: str):
                return cells

        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            _timed(
                "7b publish: Markdown + figures (PNG) + CSV",
                lambda: leaderboard.publish(
                    suite, _Store(), Path(tmp), now="2026-01-01", git="benchmark", class_names={}
                ),
                times,
            )

    total = sum(v for k, v in times.items() if not k.startswith("7"))
    print(f"  {'total of 1-6 (the statistics alone)':<58s} {total:7.3f} s")
    if a.render:
        # 7b recomputes every statistic itself, so it is the end-to-end figure, not an addition to 1-6
        end_to_end = next(v for k, v in times.items() if k.startswith("7b"))
        label = "leaderboard end to end: 7b (stats + Markdown + figures)"
        print(f"  {label:<58s} {end_to_end:7.3f} s   (target <= 10 s)")
    better = sum(
        int(np.sum((p < alpha) & np.array([c.diff.estimate > 0 for c in compared]))) for compared, p, _ in baseline
    )
    marked = sum(c.marked for c in pairs.values())
    ctrl_marked = sum(c.marked for c in ctrl)
    print(
        f"better than the baseline (Holm p < {alpha}): {better} of {nt * (nm - 1)}; pairs marked better/worse: "
        f"{marked} of {len(pairs)}; controls marked: {ctrl_marked} of {len(ctrl)}; max P(best) per task: "
        + ", ".join(f"{v:.2f}" for v in p_best.max(1))
    )
    print(
        f"Friedman on margin ranks chi2={acr['chi2']:.2f} p={acr['p']:.2g} ({acr['how']}); Wilcoxon over tasks: "
        + (
            "not testable with fewer than 6 tasks"
            if acr["wilcoxon"] is None
            else f"{int(np.sum(np.asarray(acr['wilcoxon']) < alpha))} pairs Holm p < {alpha}"
        )
        + f"; IQM of the best method {max(v[0] for v in acr['iqm']):.3f}"
    )

    if a.per_call:

        def per_call() -> None:
            for t in range(nt):
                for m in range(nm):
                    stats.run_mean(case[t, m], ci=ci, method="bootstrap", **n_res)

        extra: dict[str, float] = {}
        _timed(f"(not in total) 1 bootstrap, {nt * nm} calls x {a.resamples}", per_call, extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
