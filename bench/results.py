"""Results store: one SQLite file by default (``runs/results.sqlite``).

A cell's row and all its per-case metrics are written in one transaction, so a crashed cell leaves
nothing a leaderboard would read. A cell already complete with the same config hash is skipped.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    config_hash TEXT NOT NULL,
    suite TEXT NOT NULL, suite_version INTEGER NOT NULL, task TEXT NOT NULL,
    method TEXT NOT NULL, protocol TEXT NOT NULL, label_fraction REAL NOT NULL, draw INTEGER NOT NULL,
    pretrain_seed INTEGER NOT NULL DEFAULT 0, seed INTEGER NOT NULL, budget TEXT NOT NULL, status TEXT NOT NULL,
    git_sha TEXT, split_hash TEXT, start_time TEXT, end_time TEXT, device TEXT,
    wall_s REAL, gpu_hours REAL, cpu_hours REAL, peak_memory_mb REAL, params INTEGER,
    pretrain_hash TEXT, leakage_override INTEGER DEFAULT 0, run_dir TEXT,
    pretrain_device TEXT, pretrain_wall_s REAL, pretrain_gpu_hours REAL, pretrain_cpu_hours REAL
);
CREATE TABLE IF NOT EXISTS case_metrics (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id) ON DELETE CASCADE,
    case_id TEXT NOT NULL, class INTEGER NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (cell_id, case_id, class, metric)
);
CREATE INDEX IF NOT EXISTS cells_suite ON cells(suite, suite_version);
"""

# Per-image rows a set-level classification cell stores beside its AUROC rows: case = image id, class = the
# dataset's class index, value = the predicted probability / the 0-1 label. With them a leaderboard bootstraps
# the test images (a set-level AUROC alone is one number per cell, with no spread to bootstrap).
PRED_SCORE, PRED_TARGET = "pred_score", "pred_target"
PREDICTION_METRICS = (PRED_SCORE, PRED_TARGET)

CELL_COLUMNS = ("cell_id", "config_hash", "suite", "suite_version", "task", "method", "protocol", "label_fraction",
                "draw", "pretrain_seed", "seed", "budget", "status", "git_sha", "split_hash", "start_time", "end_time",
                "device", "wall_s", "gpu_hours", "cpu_hours", "peak_memory_mb", "params", "pretrain_hash",
                "leakage_override", "run_dir", "pretrain_device", "pretrain_wall_s", "pretrain_gpu_hours",
                "pretrain_cpu_hours")
# columns added after the first stores were written: an older store gains them when it is opened, NULL in its rows
# except where the declaration gives a default (its cells were all run at pretraining seed 0, the only one before
# the seed was part of a cell's identity)
ADDED_COLUMNS = {"pretrain_device": "TEXT", "pretrain_wall_s": "REAL", "pretrain_gpu_hours": "REAL",
                 "pretrain_cpu_hours": "REAL", "pretrain_seed": "INTEGER NOT NULL DEFAULT 0"}


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars (sqlite3 would store numpy integers as blobs)."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


class ResultsStore:
    def __init__(self, url: str | Path) -> None:
        url = str(url)
        if url.startswith("sqlite:///"):
            url = url[len("sqlite:///"):]
        elif "://" in url:
            raise ValueError(f"results.url {url!r}: only SQLite files (a path or sqlite:///PATH) are supported")
        self.path = Path(url)
        self._ready = False

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
                con.execute(f"INSERT INTO cells ({', '.join(CELL_COLUMNS)}) "
                            f"VALUES ({', '.join('?' * len(CELL_COLUMNS))})", [cell[c] for c in CELL_COLUMNS])
                con.executemany("INSERT INTO case_metrics VALUES (?, ?, ?, ?, ?)",
                                [(cell["cell_id"], str(r["case"]), int(r["class"]), r["metric"], float(r["value"]))
                                 for r in rows])

    @staticmethod
    def _cell_row(cell: dict[str, Any]) -> dict[str, Any]:
        missing = [c for c in ("cell_id", "config_hash", "suite", "suite_version", "task", "method", "protocol",
                               "label_fraction", "draw", "seed", "budget") if c not in cell]
        if missing:
            raise ValueError(f"cell row lacks {missing}")
        row = {c: _plain(cell.get(c)) for c in CELL_COLUMNS} | {"status": "complete"}
        # a row from before the pretraining seed was recorded (a published CSV without the column, or with it
        # empty) was run at pretraining seed 0, the only one then
        p = row["pretrain_seed"]
        row["pretrain_seed"] = 0 if p is None or p != p else int(p)
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
        q = ("SELECT c.suite, c.suite_version, c.task, c.method, c.protocol, c.label_fraction, c.draw, "
             "c.pretrain_seed, c.seed, c.budget, c.leakage_override, m.cell_id, m.case_id, m.class, m.metric, m.value "
             "FROM case_metrics m JOIN cells c ON c.cell_id = m.cell_id WHERE c.status = 'complete'")
        args = []
        if suite:
            q += " AND c.suite = ?"
            args.append(suite)
        with closing(self._connect()) as con:
            return pd.read_sql_query(q, con, params=args)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.results import leaderboards/<suite>.csv [...] [--store runs/results.sqlite]``."""
    import argparse
    import sys

    from bench.leaderboard import import_published

    parser = argparse.ArgumentParser(
        prog="python -m bench.results",
        description="Put published leaderboard rows (leaderboards/<suite>.csv, with its _predictions.csv.gz) into a "
                    "results store, so that your own runs join them on one leaderboard or a lost store is rebuilt.")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="import published CSVs into a results store")
    imp.add_argument("csv", nargs="+", type=Path, help="published CSV(s) of result rows")
    imp.add_argument("--store", default="runs/results.sqlite",
                     help="results store to import into (default: runs/results.sqlite, run_bench.py's default)")
    imp.add_argument("--replace", action="store_true",
                     help="replace cells the store already holds (default: keep them and skip the imported copy)")
    args = parser.parse_args(argv)
    try:
        store = ResultsStore(args.store)
        reports = import_published(args.csv, store, replace=args.replace)
    except ValueError as e:          # a file that is no published CSV (PublishedCSVError), or a bad store URL
        print(f"error: {e}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as e:
        print(f"error: {args.store}: not a usable results store ({e}); nothing was imported", file=sys.stderr)
        return 2
    for r in reports:
        n = len(r.added) + len(r.replaced) + len(r.kept)
        kept = f", {len(r.kept)} kept (already in the store; --replace overwrites them)" if r.kept else ""
        replaced = f", {len(r.replaced)} replaced" if r.replaced else ""
        print(f"{r.path}: {n} cells ({r.rows} rows): {len(r.added)} added{replaced}{kept}")
    print(f"into {store.path}; render with: python run_bench.py stage=leaderboard suite=SUITE "
          f"results.url={store.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
