"""Results store: a store written before a column existed keeps working, and gains the column."""
from __future__ import annotations

import sqlite3

from bench.results import ADDED_COLUMNS, CELL_COLUMNS, ResultsStore

# the cells table as the first stores had it, before the pretraining compute columns
OLD_CELLS = """
CREATE TABLE cells (
    cell_id TEXT PRIMARY KEY, config_hash TEXT NOT NULL,
    suite TEXT NOT NULL, suite_version INTEGER NOT NULL, task TEXT NOT NULL,
    method TEXT NOT NULL, protocol TEXT NOT NULL, label_fraction REAL NOT NULL, draw INTEGER NOT NULL,
    seed INTEGER NOT NULL, budget TEXT NOT NULL, status TEXT NOT NULL,
    git_sha TEXT, split_hash TEXT, start_time TEXT, end_time TEXT, device TEXT,
    wall_s REAL, gpu_hours REAL, cpu_hours REAL, peak_memory_mb REAL, params INTEGER,
    pretrain_hash TEXT, leakage_override INTEGER DEFAULT 0, run_dir TEXT
);
"""


def _cell(cell_id: str, **extra) -> dict:
    return {"cell_id": cell_id, "config_hash": "h", "suite": "s", "suite_version": 1, "task": "t", "method": "m",
            "protocol": "finetune", "label_fraction": 1.0, "draw": 0, "seed": 0, "budget": "quick", **extra}


def test_store_from_before_the_pretraining_columns_gains_them_and_keeps_its_rows(tmp_path):
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as con:
        con.executescript(OLD_CELLS)
        con.execute("INSERT INTO cells (cell_id, config_hash, suite, suite_version, task, method, protocol, "
                    "label_fraction, draw, seed, budget, status, wall_s) "
                    "VALUES ('old', 'h', 's', 1, 't', 'm', 'finetune', 1.0, 0, 0, 'quick', 'complete', 12.0)")
    store = ResultsStore(path)
    store.write_cell(_cell("new", pretrain_device="cpu", pretrain_wall_s=7200.0, pretrain_gpu_hours=0.0,
                           pretrain_cpu_hours=2.0), [{"case": "c0", "class": 1, "metric": "dice", "value": 0.5}])
    cells = store.cells().set_index("cell_id")
    assert set(ADDED_COLUMNS) <= set(cells.columns) and set(ADDED_COLUMNS) <= set(CELL_COLUMNS)
    assert cells.loc["old", "wall_s"] == 12.0 and cells.loc["old", ["pretrain_wall_s", "pretrain_device"]].isna().all()
    assert cells.loc["new", "pretrain_wall_s"] == 7200.0 and cells.loc["new", "pretrain_cpu_hours"] == 2.0
    # opening it again adds nothing twice
    assert len(ResultsStore(path).cells()) == 2
