"""Wall-time benchmark of the statistics behind one leaderboard (a script, not a test).

    python -m bench.bench_stats                      # 12 methods x 4 tasks x 5 seeds x 100 cases x 13 classes
    python -m bench.bench_stats --resamples 2000     # other sizes: see --help

On synthetic per-case, per-class Dice scores it times, part by part:

1. per (task, method): hierarchical bootstrap CI of the mean Dice (classes averaged per case first);
2. per task: paired Wilcoxon of every method against the baseline (method 0) on (seed, case) pairs, Holm;
3. Friedman over [task, method] mean scores, with the Nemenyi and Bonferroni-Dunn critical differences;
4. per method: IQM over [seed, task] run scores with a stratified bootstrap CI;
5. the method-by-method probability-of-improvement matrix with stratified bootstrap CIs;
6. per task: rank stability (Kendall tau over case bootstraps);
7. the whole leaderboard as ``bench/leaderboard.py`` renders it from result rows in the store's format (every
   statistic above, as the renderer calls them, plus the Markdown), and ``publish`` with its figures (PNG) and CSV.

Batched calls share one set of bootstrap indices across all (task, method) entries, so the indices are
drawn once. The target is a total of at most 10 s on 2 CPU cores.
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
    method = np.linspace(-0.05, 0.05, methods)[None, :, None, None, None] + rng.normal(0, 0.01, (tasks, methods, 1, 1, 1))
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
    cell_id = np.char.add(np.char.add(np.array([f"t{i}" for i in range(nt)])[t], method),
                          np.array([f"s{i}" for i in range(ns)])[s])
    metrics = pd.DataFrame({"suite": suite.name, "suite_version": 1, "task": np.array([x.name for x in tasks])[t],
                            "method": method, "protocol": "finetune", "label_fraction": 1.0, "draw": 0, "seed": s,
                            "budget": "quick", "leakage_override": 0, "cell_id": cell_id,
                            "case_id": np.char.add("case", c.astype(str)), "class": k + 1, "metric": "dice",
                            "value": dice.ravel()})
    cells = metrics.drop_duplicates("cell_id")[["cell_id"]].assign(
        git_sha="benchmark", device="cpu", start_time="2026-01-01T00:00:00", end_time="2026-01-01T00:01:00",
        wall_s=60.0, gpu_hours=0.0, cpu_hours=60 / 3600, params=1_000_000)
    return metrics, cells, suite


def _timed(label: str, fn: Callable[[], Any], times: dict[str, float]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    times[label] = time.perf_counter() - t0
    print(f"  {label:<58s} {times[label]:7.3f} s", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_stats", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", type=int, default=12)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--cases", type=int, default=100)
    p.add_argument("--classes", type=int, default=13)
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the CIs")
    p.add_argument("--poi-resamples", type=int, default=10_000, help="resamples of the PoI matrix CIs")
    p.add_argument("--rank-boots", type=int, default=1000, help="bootstraps of the rank stability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the leaderboard renderer and publish (Markdown, figures, CSV) on the same data")
    p.add_argument("--per-call", action=argparse.BooleanOptionalAction, default=True,
                   help="also time part 1 as one call per (task, method), as bench/leaderboard.py calls it")
    a = p.parse_args(argv)

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU cores: os.cpu_count()={os.cpu_count()}, usable by this process={affinity}; "
          f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"data: {a.methods} methods x {a.tasks} tasks x {a.seeds} seeds x {a.cases} cases x {a.classes} classes; "
          f"bootstrap resamples {a.resamples}, PoI CI resamples {a.poi_resamples}, rank-stability boots "
          f"{a.rank_boots}")
    dice = synthetic_dice(a.tasks, a.methods, a.seeds, a.cases, a.classes, a.seed)
    times: dict[str, float] = {}
    nt, nm = a.tasks, a.methods

    # 1. hierarchical CI of the mean Dice per (task, method): classes averaged per case first
    def hierarchical() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        case = dice.mean(-1)                                                 # [task, method, seed, case]
        low, high = stats.hierarchical_bootstrap_ci(case, n_resamples=a.resamples, seed=a.seed)
        return case, low, high

    case, low, high = _timed(f"1 hierarchical CI, {nt * nm} (task, method), 1 batched call", hierarchical, times)
    assert low.shape == (nt, nm) and np.all(low <= case.mean((2, 3))) and np.all(case.mean((2, 3)) <= high)

    # 2. paired Wilcoxon of every method against the baseline on (seed, case) pairs, Holm per task
    def wilcoxon_holm() -> np.ndarray:
        adjusted = np.empty((nt, nm - 1))
        for t in range(nt):
            base = case[t, 0].ravel()
            raw = [stats.paired_wilcoxon(case[t, m].ravel(), base)[1] for m in range(1, nm)]
            adjusted[t] = stats.holm(raw)
        return adjusted

    _timed(f"2 Wilcoxon vs baseline + Holm, {nt} x {nm - 1} tests", wilcoxon_holm, times)

    # 3. Friedman over [task, method] mean scores + critical differences
    def friedman() -> tuple[stats.FriedmanResult, float, float]:
        res = stats.friedman(case.mean((2, 3)))
        return res, stats.nemenyi_cd(nm, nt), stats.bonferroni_dunn_cd(nm, nt)

    fr, cd, cd_bd = _timed(f"3 Friedman [{nt} tasks, {nm} methods] + Nemenyi/B-D CD", friedman, times)

    # 4. IQM over [seed, task] run scores with a stratified bootstrap CI, per method
    runs = case.mean(-1).transpose(1, 2, 0)                                   # [method, seed, task]

    def iqm_ci() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        point = stats.iqm(runs.reshape(nm, -1), axis=-1)
        lo, hi = stats.stratified_bootstrap_ci(runs, aggregate=stats.iqm, n_resamples=a.resamples, seed=a.seed)
        return point, lo, hi

    _timed(f"4 IQM + stratified CI, {nm} methods, 1 batched call", iqm_ci, times)

    # 5. probability-of-improvement matrix with stratified bootstrap CIs
    def poi() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mat = stats.probability_of_improvement(runs[:, None], runs[None])
        lo, hi = stats.probability_of_improvement_ci(runs[:, None], runs[None], n_resamples=a.poi_resamples,
                                                     seed=a.seed)
        return mat, lo, hi

    _timed(f"5 PoI {nm}x{nm} matrix + CIs ({a.poi_resamples} resamples)", poi, times)

    # 6. rank stability per task on [case, method] scores (seeds and classes averaged)
    def rank() -> list[np.ndarray]:
        per_case = case.mean(2).transpose(0, 2, 1)                             # [task, case, method]
        return [stats.rank_stability(per_case[t], n_boot=a.rank_boots, seed=a.seed) for t in range(nt)]

    taus = _timed(f"6 rank stability, {nt} tasks x {a.rank_boots} boots", rank, times)

    if a.render:
        metrics, cells, suite = result_rows(dice)
        from bench import leaderboard

        md = _timed(f"7a leaderboard Markdown from {len(metrics)} result rows", lambda: leaderboard.render(
            suite, metrics, cells, now="2026-01-01", git="benchmark", class_names={}), times)
        assert md.count("\n| ") > nt * nm

        class _Store:
            def metrics(self, name: str):
                return metrics

            def cells(self, name: str):
                return cells

        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            _timed("7b publish: Markdown + figures (PNG) + CSV", lambda: leaderboard.publish(
                suite, _Store(), Path(tmp), now="2026-01-01", git="benchmark", class_names={}), times)

    total = sum(v for k, v in times.items() if not k.startswith("7"))
    print(f"  {'total of 1-6 (the statistics alone)':<58s} {total:7.3f} s   (target <= 10 s)")
    if a.render:
        # 7b recomputes every statistic itself, so it is the end-to-end figure, not an addition to 1-6
        end_to_end = next(v for k, v in times.items() if k.startswith("7b"))
        label = "leaderboard end to end: 7b (stats + Markdown + figures)"
        print(f"  {label:<58s} {end_to_end:7.3f} s   (target <= 10 s)")
    print(f"Friedman chi2={fr.chi2:.2f} p={fr.chi2_p:.2g}, F_F={fr.ff:.2f} p={fr.ff_p:.2g}; Nemenyi CD={cd:.2f}, "
          f"Bonferroni-Dunn CD={cd_bd:.2f}; median tau per task: "
          + ", ".join(f"{np.median(t):.2f}" for t in taus))

    if a.per_call:
        def per_call() -> None:
            for t in range(nt):
                for m in range(nm):
                    stats.hierarchical_bootstrap_ci(case[t, m], n_resamples=a.resamples, seed=a.seed)

        extra: dict[str, float] = {}
        _timed(f"(not in total) 1 as {nt * nm} separate calls", per_call, extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
