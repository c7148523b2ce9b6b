"""Markdown leaderboards from the results store; ``publish`` adds the figures, the result rows used and the tests.

The replicate is a whole pipeline run: one pretraining seed x one transfer seed (x one label-subset draw), scored on
test cases that every run and every method shares. Every interval and test below is an inference over runs, never
over pooled (run, case) pairs as if they were independent (``bench.stats``, "Run-level inference"), and what the
board concludes is judged by how it behaves when there is no difference (docs/statistics.md).

``<out_dir>/<suite>.md`` opens with its provenance (suite and version, synthetic or real data, budget, commits,
hardware, date, cells, statistical settings) and then, one section per budget (budgets are never pooled):

* per task, protocol and label fraction, a methods table: the mean over runs and its run-level 95% CI, the paired
  difference to the baseline over matched runs on the same cases (patients, where a task has several images per
  patient) with its 95% CI, a verdict against the metric's declared margin of practical equivalence (better /
  equivalent / worse / inconclusive, or "too few runs to test"), the minimal detectable effect at the runs the
  table has, P(best) from a bootstrap of runs and cases, a boundary metric beside Dice and AUPRC beside AUROC,
  per-class means, compute and parameters; notes say when every method has one pretraining run, when a
  deterministic protocol's transfer seeds are one run, and when an AUROC is below chance;
* negative controls: a method's runs split into two halves and compared like two methods, the observed rate of
  marks beside alpha;
* across tasks: one pre-declared primary table per task, scores normalised per task, ranks with ties within the
  margin, the Friedman test with an exact (permutation) p-value, pairwise Wilcoxon tests over tasks with Holm's
  adjustment (only where enough tasks make a rejection possible), IQM and probability of improvement, and which
  tasks share test subjects;
* with figures (``publish``): label-efficiency curves, a pairwise significance map per table and the probability
  of improvement across tasks, as PNGs under ``<out_dir>/<suite>/``; the comparisons with their p-values (raw and
  Holm-adjusted) and the Bayesian signed-rank probabilities go to ``<out_dir>/<suite>_comparisons.csv``.

The per-case score is the mean of the task's metric over the case's stored classes (foreground classes for
segmentation: a class-0 row is ignored); where a task stores a class ``-1`` row (a classification case's overall
value), that row is the score and the other classes only fill the per-class columns. A classification "case" that
is the whole test set (``__set__``) or a few-shot draw (``draw<d>``) is part of its run, not a test case: its run's
score is their mean, and the test images enter through the stored per-image predictions where there are any.

Rendering only: every statistic comes from ``bench.stats`` and every figure from ``bench.plots``. The output is
deterministic (fixed bootstrap seeds, sorted rows, fixed float formats); the date and the renderer's commit are
parameters, so a golden file can pin it.
"""

from bench.leaderboard.analysis import (
    CHANCE,
    DEFAULT_MARGINS,
    IDEAL,
    KEYS,
    LOWER_IS_BETTER,
    METRIC_LABELS,
    RUN,
    Across,
    Comparison,
    Control,
    Leaderboard,
    MethodRow,
    Options,
    Section,
    Table,
    analyse,
    comparisons,
    margin_ranks,
    normalised,
    select_rows,
)
from bench.leaderboard.figures import figure_files, file_stem
from bench.leaderboard.publish import dataset_class_names, publish, render, write
from bench.leaderboard.report import MARK_CHANCE, MARK_LEAKAGE, MARK_PARTIAL, markdown

__all__ = [
    "CHANCE",
    "DEFAULT_MARGINS",
    "IDEAL",
    "KEYS",
    "LOWER_IS_BETTER",
    "MARK_CHANCE",
    "MARK_LEAKAGE",
    "MARK_PARTIAL",
    "METRIC_LABELS",
    "RUN",
    "Across",
    "Comparison",
    "Control",
    "Leaderboard",
    "MethodRow",
    "Options",
    "Section",
    "Table",
    "analyse",
    "comparisons",
    "dataset_class_names",
    "figure_files",
    "file_stem",
    "margin_ranks",
    "markdown",
    "normalised",
    "publish",
    "render",
    "select_rows",
    "write",
]
