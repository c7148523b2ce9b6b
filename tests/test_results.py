"""Results store: a store written before a column existed keeps working, and gains the column."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from bench.results import ADDED_COLUMNS, CELL_COLUMNS, CELLS, ResultsStore, world_sizes

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
    return {
        "cell_id": cell_id,
        "config_hash": "h",
        "suite": "s",
        "suite_version": 1,
        "task": "t",
        "method": "m",
        "protocol": "finetune",
        "label_fraction": 1.0,
        "draw": 0,
        "seed": 0,
        "budget": "quick",
        **extra,
    }


def test_store_from_before_the_pretraining_columns_gains_them_and_keeps_its_rows(tmp_path):
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as con:
        con.executescript(OLD_CELLS)
        con.execute(
            "INSERT INTO cells (cell_id, config_hash, suite, suite_version, task, method, protocol, "
            "label_fraction, draw, seed, budget, status, wall_s) "
            "VALUES ('old', 'h', 's', 1, 't', 'm', 'finetune', 1.0, 0, 0, 'quick', 'complete', 12.0)"
        )
    store = ResultsStore(path)
    store.write_cell(
        _cell("new", pretrain_device="cpu", pretrain_wall_s=7200.0, pretrain_gpu_hours=0.0, pretrain_cpu_hours=2.0),
        [{"case": "c0", "class": 1, "metric": "dice", "value": 0.5}],
    )
    cells = store.cells().set_index("cell_id")
    assert set(ADDED_COLUMNS) <= set(cells.columns) and set(ADDED_COLUMNS) <= set(CELL_COLUMNS)
    assert cells.loc["old", "wall_s"] == 12.0 and cells.loc["old", ["pretrain_wall_s", "pretrain_device"]].isna().all()
    assert cells.loc["new", "pretrain_wall_s"] == 7200.0 and cells.loc["new", "pretrain_cpu_hours"] == 2.0
    # opening it again adds nothing twice
    assert len(ResultsStore(path).cells()) == 2


OLD_CASE_METRICS = """
CREATE TABLE case_metrics (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id) ON DELETE CASCADE,
    case_id TEXT NOT NULL, class INTEGER NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (cell_id, case_id, class, metric)
);
"""


def test_store_from_before_the_pretraining_seed_gains_it_as_0_and_metrics_return_it(tmp_path):
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as con:
        con.executescript(OLD_CELLS + OLD_CASE_METRICS)
        con.execute(
            "INSERT INTO cells (cell_id, config_hash, suite, suite_version, task, method, protocol, "
            "label_fraction, draw, seed, budget, status) "
            "VALUES ('old', 'h', 's', 1, 't', 'm', 'finetune', 1.0, 0, 2, 'quick', 'complete')"
        )
        con.execute("INSERT INTO case_metrics VALUES ('old', 'c0', 1, 'dice', 0.25)")
    store = ResultsStore(path)
    assert store.cells().set_index("cell_id").loc["old", "pretrain_seed"] == 0
    m = store.metrics()
    assert list(m.columns[:10]) == [
        "suite",
        "suite_version",
        "task",
        "method",
        "protocol",
        "label_fraction",
        "draw",
        "pretrain_seed",
        "seed",
        "budget",
    ]
    assert m[["cell_id", "pretrain_seed", "seed", "value"]].values.tolist() == [["old", 0, 2, 0.25]]
    # the column is NOT NULL with default 0 in a migrated store as in a new one
    info = {r[1]: r for r in sqlite3.connect(path).execute("PRAGMA table_info(cells)")}
    assert info["pretrain_seed"][3] == 1 and info["pretrain_seed"][4] == "0"


def test_cells_differing_only_in_pretraining_seed_both_stay(tmp_path):
    from bench.runner import cell_key
    from bench.suites import Cell, Task

    cell = Cell(Task("t", "d", "segmentation", ("finetune",)), "finetune", 1.0, 1)
    assert cell_key(cell, 0) == cell.key == "t/finetune/f1/d0/s1"  # seed 0: the id every older store has
    assert cell_key(cell, 2) == "t/finetune/f1/d0/s1/p2"
    store = ResultsStore(tmp_path / "results.sqlite")
    for p in (0, 2):
        store.write_cell(
            _cell(f"s/v1/m/quick/{cell_key(cell, p)}", seed=1, pretrain_seed=p),
            [{"case": "c0", "class": 1, "metric": "dice", "value": 0.5 + p / 10}],
        )
    m = store.metrics().sort_values("pretrain_seed")
    assert m[["pretrain_seed", "seed", "value"]].values.tolist() == [[0, 1, 0.5], [2, 1, 0.7]]
    assert store.cell_ids() == {"s/v1/m/quick/t/finetune/f1/d0/s1", "s/v1/m/quick/t/finetune/f1/d0/s1/p2"}


def test_a_cell_row_without_a_pretraining_seed_is_seed_0(tmp_path):
    """Published CSVs written before the column existed have none (or an empty one)."""
    store = ResultsStore(tmp_path / "results.sqlite")
    store.write_cells(
        [
            (_cell("a"), []),
            (_cell("b", pretrain_seed=None), []),
            (_cell("c", pretrain_seed=float("nan")), []),
            (_cell("d", pretrain_seed=3.0), []),
        ]
    )
    got = store.cells().set_index("cell_id")["pretrain_seed"].to_dict()
    assert got == {"a": 0, "b": 0, "c": 0, "d": 3}


DATA_PARALLEL = ["world_size", "per_device_batch", "pretrain_world_size"]


def test_store_from_before_data_parallel_training_gains_its_columns_as_null(tmp_path):
    path = tmp_path / "results.sqlite"
    before = ",\n    ".join(f"{c.name} {c.sql}" for c in CELLS if c.name not in DATA_PARALLEL)
    with sqlite3.connect(path) as con:
        con.executescript(f"CREATE TABLE cells (\n    {before}\n);\n" + OLD_CASE_METRICS)
        con.execute(
            "INSERT INTO cells (cell_id, config_hash, suite, suite_version, task, method, protocol, label_fraction, "
            "draw, seed, budget, status, wall_s, pretrain_wall_s) "
            "VALUES ('old', 'h', 's', 1, 't', 'm', 'finetune', 1.0, 0, 0, 'quick', 'complete', 12.0, 60.0)"
        )
    store = ResultsStore(path)
    store.write_cell(
        _cell("new", wall_s=6.0, gpu_hours=12 / 3600, world_size=2, per_device_batch=1, pretrain_world_size=4),
        [{"case": "c0", "class": 1, "metric": "dice", "value": 0.5}],
    )
    info = {r[1]: r[2] for r in sqlite3.connect(path).execute("PRAGMA table_info(cells)")}
    assert {c: info[c] for c in DATA_PARALLEL} == dict.fromkeys(DATA_PARALLEL, "INTEGER")
    cells = store.cells().set_index("cell_id")
    assert cells.loc["old", DATA_PARALLEL].isna().all()  # not rewritten: the default is applied when reading
    assert cells.loc["new", DATA_PARALLEL].tolist() == [2, 1, 4]
    assert world_sizes(cells).to_dict() == {"old": 1, "new": 2}
    assert world_sizes(cells, pretrain=True).to_dict() == {"old": 1, "new": 4}


def test_world_size_reads_as_one_process_only_where_a_cell_has_a_wall_time():
    cells = pd.DataFrame(
        {
            "world_size": [None, None, 4.0],
            "wall_s": [10.0, None, 10.0],
            "pretrain_world_size": [None, 2.0, None],
            "pretrain_wall_s": [None, 5.0, 3.0],
        }
    )
    assert world_sizes(cells).tolist() == [1, pd.NA, 4]
    assert world_sizes(cells, pretrain=True).tolist() == [pd.NA, 2, 1]
    # a frame from before the columns existed at all
    assert world_sizes(cells[["wall_s"]]).tolist() == [1, pd.NA, 1]


def test_a_cell_rows_counts_are_stored_as_whole_numbers(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    store.write_cell(_cell("a", world_size=2.0, per_device_batch=float("nan"), params=1000.0), [])
    got = sqlite3.connect(store.path).execute(
        "SELECT typeof(world_size), world_size, per_device_batch, typeof(params) FROM cells"
    )
    assert got.fetchall() == [("integer", 2, None, "integer")]
    with pytest.raises(ValueError, match="world_size 2.5 is not a whole number"):
        store.write_cell(_cell("b", world_size=2.5), [])
