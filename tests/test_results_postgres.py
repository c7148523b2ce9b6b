"""The results store on PostgreSQL (a real server, started by tests/pg_server.py) and on SQLite in WAL mode:
concurrent writers lose nothing and duplicate nothing, a cell is written once, older stores gain the added
columns, a bad URL or an unreachable server is one line from check(), and attempts round-trip."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
import time
from contextlib import closing
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from pg_server import _free_port, pg_server, pg_url  # noqa: F401  (fixtures)
from test_results import OLD_CASE_METRICS, OLD_CELLS, _cell

from bench.results import ADDED_COLUMNS, ATTEMPT_COLUMNS, ResultsStore

# metric names without a range: the values here are markers of which writer wrote a row (0, 1, 2, ...)
CASES, CLASSES, METRICS = 3, 2, ("score_a", "score_b")
ROWS_PER_CELL = CASES * CLASSES * len(METRICS)


def _rows(value: float) -> list[dict[str, Any]]:
    return [
        {"case": f"case{k}", "class": c, "metric": m, "value": value}
        for k in range(CASES)
        for c in range(1, CLASSES + 1)
        for m in METRICS
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A new store on each backend."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "results.sqlite")


def _writer(url: str, cell_ids: list[str], value: float, start: Any, out: Any) -> None:
    """One worker (a spawned process): wait for the others, then write each cell in its own transaction."""
    store = ResultsStore(url)
    store.check()
    start.wait(timeout=60)
    written = {cid: store.write_cell(_cell(cid, wall_s=value), _rows(value)) for cid in cell_ids}
    store.close()
    out.put((value, written))


def _race(url: str, jobs: list[list[str]]) -> list[tuple[float, dict[str, bool]]]:
    """Run one writer per list of cell ids at once (spawned processes); each writes its value into its cells."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, ids, float(w), start, out)) for w, ids in enumerate(jobs)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def _counts(url: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every row of both tables, read directly (not through the store's joins)."""
    engine = sa.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://") if "://" in url else f"sqlite:///{url}"
    )
    with engine.connect() as con:
        cells = pd.read_sql_query(sa.text("SELECT cell_id, config_hash, status, wall_s FROM cells"), con)
        metrics = pd.read_sql_query(sa.text("SELECT * FROM case_metrics"), con)
    engine.dispose()
    return cells, metrics


@pytest.mark.parametrize("backend, writers", [("sqlite", 4), ("postgresql", 8)])
def test_concurrent_writers_lose_no_cell_and_duplicate_none(backend, writers, request, tmp_path):
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else str(tmp_path / "results.sqlite")
    jobs = [[f"w{w}/c{i}" for i in range(50)] for w in range(writers)]
    got = _race(url, jobs)
    assert all(all(written.values()) for _, written in got)
    cells, metrics = _counts(url)
    assert len(cells) == cells["cell_id"].nunique() == writers * 50
    assert set(cells["cell_id"]) == {c for ids in jobs for c in ids} and set(cells["status"]) == {"complete"}
    assert len(metrics) == writers * 50 * ROWS_PER_CELL
    assert not metrics.duplicated(["cell_id", "case_id", "class", "metric"]).any()
    assert (metrics.groupby("cell_id").size() == ROWS_PER_CELL).all()
    store = ResultsStore(url)
    assert len(store.metrics()) == writers * 50 * ROWS_PER_CELL and len(store.cell_ids()) == writers * 50
    store.close()
    if backend == "sqlite":
        assert sqlite3.connect(url).execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_finishing_the_same_cells_store_each_once(backend, request, tmp_path):
    """Write-once: for each cell exactly one worker's write lands (its call returns True, the other's False), with
    all of that worker's metric rows and none of the other's."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else str(tmp_path / "results.sqlite")
    ids = [f"same/c{i}" for i in range(50)]
    got = _race(url, [ids, ids])
    for cid in ids:
        assert sum(written[cid] for _, written in got) == 1, cid
    winner = {cid: value for value, written in got for cid, ok in written.items() if ok}
    cells, metrics = _counts(url)
    assert sorted(cells["cell_id"]) == sorted(ids)
    assert (
        len(metrics) == 50 * ROWS_PER_CELL and not metrics.duplicated(["cell_id", "case_id", "class", "metric"]).any()
    )
    by_cell = metrics.groupby("cell_id")["value"].agg(["min", "max", "size"])
    assert (by_cell["size"] == ROWS_PER_CELL).all()
    assert (by_cell["min"] == by_cell["max"]).all()  # one writer's rows, never a mix
    assert by_cell["min"].to_dict() == winner
    assert cells.set_index("cell_id")["wall_s"].to_dict() == winner  # the cell row from the same writer


def test_a_new_sqlite_store_opened_while_another_job_holds_a_write_lock_waits_instead_of_failing(tmp_path):
    """Switching a new file to WAL needs the exclusive lock. While another job holds the write lock, SQLite answers
    the switch with "database is locked" at once (a possible deadlock, so busy_timeout is not waited out): jobs of a
    sweep opening a new store together failed that way (1 in 5 races of 8 writers). The switch must wait instead."""
    path = tmp_path / "results.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    holder.execute("CREATE TABLE other_job (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO other_job VALUES (1)")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        t0 = time.monotonic()
        store = ResultsStore(str(path))
        assert store.write_cell(_cell("c0", wall_s=1.0), _rows(1.0))
        assert time.monotonic() - t0 >= 0.4  # it waited for the other job's transaction
    finally:
        release.join()
        holder.close()
    cells, metrics = _counts(str(path))
    assert list(cells["cell_id"]) == ["c0"] and len(metrics) == ROWS_PER_CELL
    with closing(sqlite3.connect(path)) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_write_once_keeps_a_complete_cell_with_the_same_hash_and_replaces_another(url):
    store = ResultsStore(url)
    assert store.write_cell(_cell("a"), _rows(1.0)) is True
    assert store.write_cell(_cell("a", wall_s=9.0), _rows(2.0)) is False  # same hash: kept as it was
    assert set(store.metrics()["value"]) == {1.0} and store.cells()["wall_s"].isna().all()
    changed = _rows(3.0)[:2]
    assert store.write_cell(_cell("a", config_hash="h2"), changed) is True  # another hash: replaced
    m = store.metrics()
    assert len(m) == 2 and set(m["value"]) == {3.0}  # none of the old rows left
    assert store.is_complete("a", "h2") and not store.is_complete("a", "h")
    assert store.write_cell(_cell("a", config_hash="h2"), _rows(4.0), force=True) is True
    assert set(store.metrics()["value"]) == {4.0} and len(store.metrics()) == ROWS_PER_CELL
    # a batch: one flag per pair, in the order given
    assert store.write_cells([(_cell("b"), _rows(1.0)), (_cell("a", config_hash="h2"), [])]) == [True, False]
    store.close()


def test_a_failing_batch_writes_none_of_its_cells(url):
    store = ResultsStore(url)
    twice = _rows(1.0)[:1] * 2  # the same (case, class, metric) twice: the primary key refuses it
    with pytest.raises(sa.exc.IntegrityError):
        store.write_cells([(_cell("a"), _rows(1.0)), (_cell("b"), twice)])
    assert store.cell_ids() == set() and store.metrics().empty
    store.close()


def test_attempts_round_trip_and_a_stored_cell_clears_its_own(url):
    store = ResultsStore(url)
    assert list(store.attempts().columns) == ATTEMPT_COLUMNS and store.attempts().empty
    store.start_attempt("a", "h", "node1", 101, "4242_3")
    store.start_attempt("b", "h", "node2", 202, None)
    store.fail_attempt("b", "RuntimeError: out of memory\nTraceback (most recent call last):\n  ...")
    got = store.attempts().set_index("cell_id")
    assert got.loc["a", ["config_hash", "status", "host", "pid", "job_id"]].tolist() == [
        "h",
        "running",
        "node1",
        101,
        "4242_3",
    ]
    assert pd.isna(got.loc["a", "error"]) and pd.isna(got.loc["b", "job_id"])
    assert got.loc["b", "status"] == "failed" and got.loc["b", "error"] == "RuntimeError: out of memory"
    assert got.loc["b", "started"] <= got.loc["b", "updated"] and got.loc["b", "started"].endswith("+00:00")
    store.start_attempt("b", "h", "node3", 303, "7")  # a retry replaces the failed row
    assert store.attempts().set_index("cell_id").loc["b", ["status", "host"]].tolist() == ["running", "node3"]
    assert pd.isna(store.attempts().set_index("cell_id").loc["b", "error"])
    store.write_cell(_cell("a"), _rows(1.0))
    assert store.attempts()["cell_id"].tolist() == ["b"]
    store.fail_attempt("zzz", "never started")  # no row to mark: nothing happens
    assert store.attempts()["cell_id"].tolist() == ["b"]
    store.close()


def test_an_older_postgresql_store_gains_the_added_columns_and_the_attempts_table(pg_url):  # noqa: F811
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(OLD_CELLS + OLD_CASE_METRICS)
        con.execute(
            "INSERT INTO cells (cell_id, config_hash, suite, suite_version, task, method, protocol, "
            "label_fraction, draw, seed, budget, status, wall_s) "
            "VALUES ('old', 'h', 's', 1, 't', 'm', 'finetune', 1.0, 0, 2, 'quick', 'complete', 12.0)"
        )
        con.execute("INSERT INTO case_metrics VALUES ('old', 'c0', 1, 'dice', 0.25)")
    store = ResultsStore(pg_url)
    assert store.write_cell(_cell("new", pretrain_wall_s=7200.0, world_size=2), _rows(0.5))
    cells = store.cells().set_index("cell_id")
    assert set(ADDED_COLUMNS) <= set(cells.columns)
    assert cells.loc["old", "pretrain_seed"] == 0 and cells.loc["old", ["pretrain_wall_s", "world_size"]].isna().all()
    assert cells.loc["new", "pretrain_wall_s"] == 7200.0 and cells.loc["new", "world_size"] == 2
    assert store.metrics().set_index("cell_id").loc["old", ["pretrain_seed", "seed", "value"]].tolist() == [0, 2, 0.25]
    store.start_attempt("x", "h", "node", 1, None)
    store.close()
    with psycopg.connect(pg_url) as con:
        info = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT column_name, is_nullable, column_default, data_type FROM information_schema.columns "
                "WHERE table_name = 'cells'"
            )
        }
    assert info["pretrain_seed"][:2] == ("NO", "0")  # NOT NULL DEFAULT 0, as in a new store
    assert info["params"][2] == "integer" and info["world_size"][2] == "bigint"  # the old column is kept as it was
    assert info["pretrain_wall_s"][2] == "double precision"
    assert len(ResultsStore(pg_url).cells()) == 2  # opening it again adds nothing twice


def test_a_new_postgresql_store_has_64_bit_counts_and_double_precision(pg_url):  # noqa: F811
    import psycopg

    store = ResultsStore(pg_url)
    big = 3_000_000_000  # a parameter count over 2**31
    store.write_cell(_cell("a", params=big, wall_s=1 / 3), _rows(0.1234567890123))
    row = store.cells().iloc[0]
    assert row["params"] == big and row["wall_s"] == 1 / 3
    assert store.metrics()["value"].iloc[0] == 0.1234567890123
    store.close()
    with psycopg.connect(pg_url) as con:
        kinds = dict(
            con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'cells'")
        )
    assert kinds["params"] == "bigint" and kinds["label_fraction"] == "double precision"


@pytest.mark.parametrize(
    "bad, says",
    [
        (
            "mysql://ann:s3cret@db.example/results",
            "results.url mysql://ann:***@db.example/results: unknown scheme 'mysql'",
        ),
        (
            "postgresql://ann:s3cret@db.example:port/results",
            "results.url postgresql://ann:***@db.example:port/results: not a valid URL",
        ),
        (
            "postgresql://ann:s3cret@db.example:5432",
            "results.url postgresql://ann:***@db.example:5432: no database named",
        ),
    ],
)
def test_a_bad_url_is_one_line_from_check_with_the_password_masked(bad, says):
    store = ResultsStore(bad)  # the constructor accepts it; check() (run before any work) says what is wrong
    with pytest.raises(ValueError) as e:
        store.check()
    msg = str(e.value)
    assert msg.startswith(says) and "\n" not in msg and "s3cret" not in msg, msg
    with pytest.raises(ValueError, match="results.url"):  # any other use says the same
        store.cell_ids()


def test_an_unreachable_postgresql_server_is_one_line_from_check_within_seconds():
    port = _free_port()  # closed: nothing listens there
    store = ResultsStore(f"postgresql://ann:s3cret@127.0.0.1:{port}/results")
    t = time.monotonic()
    with pytest.raises(ValueError) as e:
        store.check()
    msg = str(e.value)
    assert time.monotonic() - t < 10
    assert msg.startswith(
        f"results.url postgresql://ann:***@127.0.0.1:{port}/results: cannot use the PostgreSQL server"
    )
    assert "\n" not in msg and "s3cret" not in msg, msg


def test_check_passes_on_a_reachable_server_and_creates_nothing(pg_url):  # noqa: F811
    store = ResultsStore(pg_url)
    store.check()
    store.close()
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()
