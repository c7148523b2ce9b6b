"""Rendering a leaderboard from a results store, and publishing it with its figures, rows and comparisons."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd

from bench.leaderboard.analysis import COMPARISONS_SUFFIX, Options, analyse, comparisons
from bench.leaderboard.figures import _slug, figure_files, file_stem, write_figures
from bench.leaderboard.analysis import Leaderboard
from bench.leaderboard.report import markdown
from bench.provenance import git_sha
from bench.registry import DATASETS, SUITES, UnknownNameError
from bench.metrics import value_problem
from bench.results import PREDICTION_METRICS, PREDICTIONS_SUFFIX, check_rows
from bench.suites import Suite
from bench.types import naming_the_file, temp_sibling


def render(
    suite: str | Suite,
    metrics: pd.DataFrame,
    cells: pd.DataFrame,
    *,
    now: dt.datetime | str | None = None,
    git: str | None = None,
    class_names: dict[str, dict[int, str]] | None = None,
    figures: bool = False,
    options: Options = Options(),
) -> str:
    """The leaderboard Markdown. ``now`` and ``git`` default to the current time and commit; ``class_names``
    maps task -> {class id: name} and defaults to the labels of the task's registered dataset (``{}``: ids);
    ``figures`` links the PNGs that :func:`publish` writes."""
    refuse_bad_values(metrics)
    lb = analyse(_suite(suite), metrics, cells, options)
    return _markdown(lb, now, git, class_names, figures)


def refuse_bad_values(metrics: pd.DataFrame) -> None:
    """A board is never rendered over a value that is not a result (a store written before the checks at every
    way in, or edited by hand): one non-finite value would make its method's mean NaN and its CI nonsense."""
    bad = [
        r
        for r in metrics[["cell_id", "case_id", "class", "metric", "value"]].to_dict("records")
        if value_problem(str(r["metric"]), r["value"]) is not None
    ]
    if bad:
        r = bad[0]
        check_rows(
            [r | {"case": r["case_id"]}], f"the results store's cell {r['cell_id']} (the board was not rendered)"
        )


def write(suite_name: str | Suite, store, out_dir: Path, **kwargs: Any) -> Path:
    """Write ``<out_dir>/<stem>.md`` (no figures; stem: :func:`file_stem`) and return its path."""
    suite = _suite(suite_name)
    out_dir = Path(out_dir)
    text = render(suite, store.metrics(suite.name), store.cells(suite.name), **kwargs)  # a refusal writes nothing
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{file_stem(suite)}.md"
    _atomic_write(path, text)
    return path


def publish(
    suite_name: str | Suite,
    store,
    out_dir: Path,
    *,
    now: dt.datetime | str | None = None,
    git: str | None = None,
    class_names: dict[str, dict[int, str]] | None = None,
    options: Options = Options(),
) -> Path:
    """Write ``<out_dir>/<stem>.md`` with its figures (``<out_dir>/<stem>/*.png``) and the exact result rows
    it used (``<out_dir>/<stem>.csv``, and the per-image predictions of set-level cells in
    ``<out_dir>/<stem>_predictions.csv.gz``; :func:`from_csv` reads them back into the same Markdown). The stem
    is the suite's name, with ``_v<k>`` for an earlier version's record (:func:`file_stem`)."""
    from bench import plots

    suite = _suite(suite_name)
    out_dir = Path(out_dir)
    metrics = store.metrics(suite.name)
    refuse_bad_values(metrics)  # before any file is touched
    lb = analyse(suite, metrics, store.cells(suite.name), options)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = file_stem(suite)
    files = figure_files(lb)
    fig_dir = out_dir / _slug(stem)
    fig_dir.mkdir(exist_ok=True)
    for stale in set(fig_dir.glob("*.png")) - {out_dir / f for f in files.values()}:
        stale.unlink()
    for s in lb.sections:
        write_figures(plots, s, files, out_dir)
    # the per-image predictions of set-level cells go to their own gzipped file: they outnumber the scores by
    # orders of magnitude, and the scores' CSV stays small enough to read on a code host
    is_pred = lb.rows["metric"].isin(PREDICTION_METRICS)
    _atomic_csv(lb.rows[~is_pred], out_dir / f"{stem}.csv")
    _atomic_csv(comparisons(lb), out_dir / f"{stem}{COMPARISONS_SUFFIX}")
    preds = out_dir / f"{stem}{PREDICTIONS_SUFFIX}"
    if is_pred.any():
        _atomic_csv(lb.rows[is_pred], preds)
    else:
        preds.unlink(missing_ok=True)
    path = out_dir / f"{stem}.md"
    _atomic_write(path, _markdown(lb, now, git, class_names, True))
    return path


def _atomic_csv(rows: pd.DataFrame, path: Path) -> None:
    tmp = temp_sibling(path)
    # mtime 0: the same rows give the same bytes, so a republished file only shows in a diff when it changed
    try:
        with naming_the_file(path):
            rows.to_csv(
                tmp, index=False, compression={"method": "gzip", "mtime": 0} if path.name.endswith(".gz") else None
            )
            tmp.replace(path)
    finally:  # a failed write leaves no partial temporary behind
        tmp.unlink(missing_ok=True)


def _markdown(lb: Leaderboard, now, git, class_names, figures: bool) -> str:
    if class_names is None:
        class_names = dataset_class_names(lb.suite)
    return markdown(
        lb,
        now=now if now is not None else dt.datetime.now(dt.UTC),
        git=git if git is not None else git_sha(),
        class_names=class_names,
        figures=figures,
    )


def _suite(suite: str | Suite) -> Suite:
    return suite if isinstance(suite, Suite) else SUITES.get(suite)


def dataset_class_names(suite: Suite) -> dict[str, dict[int, str]]:
    """task -> {class id: name} from the registered datasets' label maps (tasks whose dataset is unknown: none)."""
    out = {}
    for t in suite.tasks:
        try:
            info = getattr(DATASETS.get(t.dataset), "info", None)
        except UnknownNameError:
            continue
        labels = getattr(info, "labels", None)
        if labels:
            out[t.name] = {int(k): str(v) for k, v in labels.items()}
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = temp_sibling(path)
    try:
        with naming_the_file(path):
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
