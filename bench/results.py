"""Results store: one SQLite file by default (``runs/results.sqlite``).

A cell's row and all its per-case metrics are written in one transaction, so a crashed cell leaves
nothing a leaderboard would read. A cell already complete with the same config hash is skipped.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class Column:
    """One column of the ``cells`` table: the single definition from which the schema, the published CSV's columns
    and every list of column names are made."""

    name: str
    sql: str  # SQLite type and constraints
    identity: bool = False  # names the cell: published with every metric row, part of METRIC_COLUMNS
    info: bool = False  # the cell's provenance, published with every row (CELL_INFO_COLUMNS)
    # added after the first stores were written: an older store gains it when opened, NULL in its rows unless the
    # declaration gives a default (pretrain_seed: every older cell ran at pretraining seed 0, the only one then)
    added: bool = False

    @property
    def text(self) -> bool:
        return self.sql.startswith("TEXT")


# Order: the store's columns; identity and info columns are published in this order too.
CELLS = (
    Column("cell_id", "TEXT PRIMARY KEY"),
    Column("config_hash", "TEXT NOT NULL"),
    Column("suite", "TEXT NOT NULL", identity=True),
    Column("suite_version", "INTEGER NOT NULL", identity=True),
    Column("task", "TEXT NOT NULL", identity=True),
    Column("method", "TEXT NOT NULL", identity=True),
    Column("protocol", "TEXT NOT NULL", identity=True),
    Column("label_fraction", "REAL NOT NULL", identity=True),
    Column("draw", "INTEGER NOT NULL", identity=True),
    Column("pretrain_seed", "INTEGER NOT NULL DEFAULT 0", identity=True, added=True),
    Column("seed", "INTEGER NOT NULL", identity=True),
    Column("budget", "TEXT NOT NULL", identity=True),
    Column("leakage_override", "INTEGER DEFAULT 0", identity=True),
    Column("status", "TEXT NOT NULL"),
    Column("git_sha", "TEXT", info=True),
    Column("device", "TEXT", info=True),
    Column("start_time", "TEXT", info=True),
    Column("end_time", "TEXT", info=True),
    Column("wall_s", "REAL", info=True),
    Column("gpu_hours", "REAL", info=True),
    Column("cpu_hours", "REAL", info=True),
    # data-parallel training: the processes that trained the cell (the hours above are device-hours, wall_s x
    # world_size) and each one's batch (the configured global batch / world_size). NULL in a cell written before
    # they were recorded: read as one process where it has a wall time (world_sizes), never rewritten
    Column("world_size", "INTEGER", info=True, added=True),
    Column("per_device_batch", "INTEGER", info=True, added=True),
    Column("params", "INTEGER", info=True),
    Column("pretrain_hash", "TEXT", info=True),
    Column("pretrain_device", "TEXT", info=True, added=True),
    Column("pretrain_wall_s", "REAL", info=True, added=True),
    Column("pretrain_gpu_hours", "REAL", info=True, added=True),
    Column("pretrain_cpu_hours", "REAL", info=True, added=True),
    Column("pretrain_world_size", "INTEGER", info=True, added=True),
    Column("split_hash", "TEXT"),
    Column("peak_memory_mb", "REAL"),
    Column("run_dir", "TEXT"),
)
CELL_COLUMNS = tuple(c.name for c in CELLS)
ADDED_COLUMNS = {c.name: c.sql for c in CELLS if c.added}
IDENTITY = [c.name for c in CELLS if c.identity]  # what names a cell, in publishing order
NUMERIC_IDENTITY = [c.name for c in CELLS if c.identity and not c.text]
CASE_COLUMNS = ["cell_id", "case_id", "class", "metric", "value"]
METRIC_COLUMNS = IDENTITY + CASE_COLUMNS  # a published row, before its cell's provenance
CELL_INFO_COLUMNS = [c.name for c in CELLS if c.info]
INTEGER_INFO_COLUMNS = [c.name for c in CELLS if c.info and c.sql.startswith("INTEGER")]
TEXT_COLUMNS = [c.name for c in CELLS if c.text and (c.identity or c.info)] + ["cell_id", "case_id", "metric"]
REQUIRED = ["cell_id"] + [
    c.name for c in CELLS if "NOT NULL" in c.sql and c.name != "status" and "DEFAULT" not in c.sql
]

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cells (\n    " + ",\n    ".join(f"{c.name} {c.sql}" for c in CELLS) + "\n);\n"
    """CREATE TABLE IF NOT EXISTS case_metrics (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id) ON DELETE CASCADE,
    case_id TEXT NOT NULL, class INTEGER NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (cell_id, case_id, class, metric)
);
CREATE INDEX IF NOT EXISTS cells_suite ON cells(suite, suite_version);
"""
)

# Per-image rows a set-level classification cell stores beside its AUROC rows: case = image id, class = the
# dataset's class index, value = the predicted probability / the 0-1 label. With them a leaderboard bootstraps
# the test images (a set-level AUROC alone is one number per cell, with no spread to bootstrap).
PRED_SCORE, PRED_TARGET = "pred_score", "pred_target"
PREDICTION_METRICS = (PRED_SCORE, PRED_TARGET)
PREDICTIONS_SUFFIX = "_predictions.csv.gz"  # published per-image predictions, beside <suite>.csv


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars (sqlite3 would store numpy integers as blobs)."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


def _whole(v: Any) -> int | None:
    """A count as an int (2.0 -> 2; None or NaN -> None); ValueError for anything that is not a whole number."""
    v = _plain(v)
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{v!r} is not a whole number") from None
    if not f.is_integer():
        raise ValueError(f"{v!r} is not a whole number")
    return int(f)


def world_sizes(cells: pd.DataFrame, *, pretrain: bool = False) -> pd.Series:
    """The processes that trained each cell (``pretrain``: the pretraining that made its encoder), read from a
    frame of cell rows: the recorded ``world_size``, else 1 where the row has a wall time, since a cell written
    before data-parallel training was recorded ran as one process; <NA> where neither is known (nothing ran, or
    its time was not recorded). The default is applied here, when reading: the store and the published CSVs keep
    the value that was recorded."""
    prefix = "pretrain_" if pretrain else ""

    def numeric(c: str) -> pd.Series:
        return pd.to_numeric(cells[c], errors="coerce") if c in cells else pd.Series(float("nan"), index=cells.index)

    n, wall = numeric(f"{prefix}world_size"), numeric(f"{prefix}wall_s")
    one = pd.Series(1.0, index=cells.index).where(wall.notna())
    return n.fillna(one).astype("Int64")


class ResultsStore:
    def __init__(self, url: str | Path) -> None:
        url = str(url)
        if url.startswith("sqlite:///"):
            url = url[len("sqlite:///") :]
        elif "://" in url:
            raise ValueError(f"results.url {url!r}: only SQLite files (a path or sqlite:///PATH) are supported")
        self.path = Path(url)
        self._ready = False

    def check(self) -> None:
        """Refuse, before any work, a store that could not take the results: a directory, a file that is not an
        SQLite database, an unwritable file or folder. Reads only: a store that does not exist yet is not created
        (a run that stops at validation leaves none behind)."""
        where = f"results.url {self.path}"
        if self.path.is_dir():
            raise ValueError(f"{where}: a directory, not an SQLite file (give a file path, e.g. runs/results.sqlite)")
        if self.path.exists():
            try:
                with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as con:
                    con.execute("SELECT name FROM sqlite_master").fetchall()
            except sqlite3.DatabaseError as e:
                raise ValueError(f"{where}: not an SQLite results store ({e})") from None
            if not os.access(self.path, os.W_OK):
                raise ValueError(f"{where}: the file is not writable")
            return
        parent = self.path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ValueError(f"{where}: {parent} is a file, so the store's folder cannot be created")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{where}: the folder {parent} is not writable")

    def _connect(self) -> sqlite3.Connection:
        # created on first use, so a run that stops at validation leaves no store behind
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=60)) as con, con:
                con.executescript(SCHEMA)
                have = {row[1] for row in con.execute("PRAGMA table_info(cells)")}
                for name, kind in ADDED_COLUMNS.items():
                    if name not in have:
                        con.execute(f"ALTER TABLE cells ADD COLUMN {name} {kind}")
            self._ready = True
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("PRAGMA foreign_keys = ON")
        return con

    def is_complete(self, cell_id: str, config_hash: str) -> bool:
        with closing(self._connect()) as con:
            row = con.execute("SELECT config_hash, status FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
        return row is not None and row[0] == config_hash and row[1] == "complete"

    def write_cell(self, cell: dict[str, Any], rows: Iterable[dict[str, Any]]) -> None:
        """Replace the cell and its metrics atomically."""
        self.write_cells([(cell, rows)])

    def write_cells(self, items: Iterable[tuple[dict[str, Any], Iterable[dict[str, Any]]]]) -> None:
        """Replace each (cell, metric rows) pair, all in one transaction: either every cell lands or none."""
        items = [(self._cell_row(cell), rows) for cell, rows in items]
        with closing(self._connect()) as con, con:
            for cell, rows in items:
                con.execute("DELETE FROM case_metrics WHERE cell_id = ?", (cell["cell_id"],))
                con.execute("DELETE FROM cells WHERE cell_id = ?", (cell["cell_id"],))
                con.execute(
                    f"INSERT INTO cells ({', '.join(CELL_COLUMNS)}) VALUES ({', '.join('?' * len(CELL_COLUMNS))})",
                    [cell[c] for c in CELL_COLUMNS],
                )
                con.executemany(
                    "INSERT INTO case_metrics VALUES (?, ?, ?, ?, ?)",
                    [(cell["cell_id"], str(r["case"]), int(r["class"]), r["metric"], float(r["value"])) for r in rows],
                )

    @staticmethod
    def _cell_row(cell: dict[str, Any]) -> dict[str, Any]:
        missing = [c for c in REQUIRED if c not in cell]
        if missing:
            raise ValueError(f"cell row lacks {missing}")
        row = {c: _plain(cell.get(c)) for c in CELL_COLUMNS} | {"status": "complete"}
        # a row from before the pretraining seed was recorded (a published CSV without the column, or with it
        # empty) was run at pretraining seed 0, the only one then
        p = row["pretrain_seed"]
        row["pretrain_seed"] = 0 if p is None or p != p else int(p)
        for c in INTEGER_INFO_COLUMNS:  # counts (a published CSV reads them back as floats)
            try:
                row[c] = _whole(row[c])
            except ValueError as e:
                raise ValueError(f"cell {row['cell_id']!r}: {c} {e}") from None
        return row

    def cell_ids(self) -> set[str]:
        """The ids of every complete cell."""
        with closing(self._connect()) as con:
            return {r[0] for r in con.execute("SELECT cell_id FROM cells WHERE status = 'complete'")}

    def cells(self, suite: str | None = None) -> pd.DataFrame:
        q, args = "SELECT * FROM cells WHERE status = 'complete'", []
        if suite:
            q += " AND suite = ?"
            args.append(suite)
        with closing(self._connect()) as con:
            return pd.read_sql_query(q, con, params=args)

    def metrics(self, suite: str | None = None) -> pd.DataFrame:
        """Per-case metrics joined with their cell's identity (complete cells only)."""
        q = (
            f"SELECT {', '.join('c.' + c for c in IDENTITY)}, {', '.join('m.' + c for c in CASE_COLUMNS)} "
            "FROM case_metrics m JOIN cells c ON c.cell_id = m.cell_id WHERE c.status = 'complete'"
        )
        args = []
        if suite:
            q += " AND c.suite = ?"
            args.append(suite)
        with closing(self._connect()) as con:
            return pd.read_sql_query(q, con, params=args)


# ------------------------------------------------------------------------------------ published results (CSV)


def from_csv(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a published CSV of result rows (with its ``<suite>_predictions.csv.gz`` beside it, if any) back as
    (metrics, cells) frames for :func:`render`."""
    path = Path(path)
    kw = dict(
        dtype={c: str for c in TEXT_COLUMNS},
        keep_default_na=False,
        na_values={c: [""] for c in CELL_INFO_COLUMNS},
        float_precision="round_trip",
    )
    rows = pd.read_csv(path, **kw)
    preds = path.with_name(path.name.removesuffix(".csv") + PREDICTIONS_SUFFIX)
    if preds.is_file():
        rows = pd.concat([rows, pd.read_csv(preds, compression="gzip", **kw)], ignore_index=True)
    # a CSV published before the pretraining seed was part of a run's identity: every cell pretrained with seed 0
    if "pretrain_seed" not in rows:
        rows["pretrain_seed"] = 0
    # a CSV published before a column existed reads back with that column empty
    cells = rows.reindex(columns=["cell_id", *CELL_INFO_COLUMNS]).drop_duplicates("cell_id")
    return rows[METRIC_COLUMNS], cells


# A published row does not carry its cell's config hash, so an imported cell never counts as already run: running
# the same cell here computes it again and replaces the imported copy.
IMPORTED_HASH = "imported"


class PublishedCSVError(ValueError):
    """A file that is not a readable published results CSV (the message names the file and what is wrong)."""


@dataclass
class ImportReport:
    path: Path
    rows: int
    added: list[str]
    replaced: list[str]
    kept: list[str]


def read_published(path: str | Path) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """A published CSV (with its predictions file beside it, if any) as {cell_id: (cell row, metric rows)} in the
    results store's layout. Raises :class:`PublishedCSVError` for a file that is missing or is not one."""
    path = Path(path)
    if not path.is_file():
        raise PublishedCSVError(f"{path}: no such file")
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PublishedCSVError(f"{path}: not a readable CSV ({e})") from None
    # a CSV published before the pretraining seed was recorded lacks that column: every cell of it pretrained with 0
    missing = [c for c in METRIC_COLUMNS if c not in header and c != "pretrain_seed"]
    if missing:
        raise PublishedCSVError(f"{path}: not a published results CSV: it lacks the column(s) {', '.join(missing)}")
    try:
        metrics, cells = from_csv(path)
    except ValueError as e:  # pandas' ParserError is one
        raise PublishedCSVError(f"{path}: unreadable rows ({e})") from None
    metrics = metrics.copy()
    for c in NUMERIC_IDENTITY + ["value"]:
        metrics[c] = pd.to_numeric(metrics[c], errors="coerce")
    needed = metrics[IDENTITY + ["case_id", "class", "value"]]
    blank = needed.isna() | needed.eq("")
    if blank.any(axis=None):
        row = blank.any(axis=1).idxmax()
        col = blank.columns[blank.loc[row]][0]
        raise PublishedCSVError(
            f"{path}: a row of cell {metrics.at[row, 'cell_id']!r} has an empty or non-numeric "
            f"{col} ({int(blank.any(axis=1).sum())} such rows)"
        )
    identity = metrics.groupby("cell_id")[IDENTITY].nunique()
    mixed = identity.index[(identity > 1).any(axis=1)]
    if len(mixed):
        raise PublishedCSVError(
            f"{path}: the rows of cell {mixed[0]!r} disagree on its "
            f"{', '.join(identity.columns[identity.loc[mixed[0]] > 1])}"
        )
    metrics = metrics.astype({c: int for c in NUMERIC_IDENTITY if c != "label_fraction"} | {"class": int})
    info = cells.set_index("cell_id")
    out = {}
    for cell_id, g in metrics.groupby("cell_id", sort=False):
        first = g.iloc[0]
        cell = {c: first[c] for c in IDENTITY} | {"cell_id": cell_id, "config_hash": IMPORTED_HASH}
        for c, v in info.loc[cell_id].items():
            cell[c] = None if pd.isna(v) else v
        for c in INTEGER_INFO_COLUMNS:  # params, world_size, ...: read back as floats where a cell lacks them
            try:
                cell[c] = _whole(cell.get(c))
            except ValueError as e:
                raise PublishedCSVError(f"{path}: cell {cell_id!r}: {c} {e}") from None
        out[cell_id] = (
            cell,
            g.rename(columns={"case_id": "case"})[["case", "class", "metric", "value"]].to_dict("records"),
        )
    return out


def import_published(paths: list[str | Path], store, *, replace: bool = False) -> list[ImportReport]:
    """Put the cells of published CSVs into a results store, so that new runs join published ones on one
    leaderboard (or a lost store is rebuilt from what was published). Every file is read and checked before
    anything is written, and all cells are written in one transaction. A cell the store already holds is kept
    unless ``replace``; a cell in two of the files is taken from the later one."""
    read = [(Path(p), read_published(p)) for p in paths]
    have = store.cell_ids()
    reports, todo = [], {}
    for path, cells in read:
        r = ImportReport(path, sum(len(rows) for _, rows in cells.values()), [], [], [])
        for cell_id, item in cells.items():
            if cell_id in have and not replace:
                r.kept.append(cell_id)
                continue
            (r.replaced if cell_id in have else r.added).append(cell_id)
            todo[cell_id] = item
        reports.append(r)
    store.write_cells(todo.values())
    return reports
