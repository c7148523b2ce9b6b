"""Results store: one SQLite file by default (``runs/results.sqlite``), or a PostgreSQL database
(``results.url=postgresql://user@host:port/db``), both through SQLAlchemy Core.

A cell's row and all its per-case metrics are written in one transaction, so a crashed cell leaves
nothing a leaderboard would read. A cell already complete with the same config hash is written once: a second
write of it is a no-op (see :class:`ResultsStore`).
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import time
import zlib
from collections.abc import Collection, Iterable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url

from bench.metrics import value_problem
from bench.types import DataError, folder_problem


@dataclass(frozen=True)
class Column:
    """One column of the ``cells`` table: the single definition from which the schema, the published CSV's columns
    and every list of column names are made."""

    name: str
    sql: str  # TEXT, INTEGER or REAL, then [PRIMARY KEY] [NOT NULL] [DEFAULT x]: SQLite's type and constraints
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
    # what the pretraining optimised where a method settles it from its corpus (saca: symmetry_target=label on a
    # corpus with health labels, self elsewhere); NULL for every other method
    Column("pretrain_objective", "TEXT", info=True, added=True),
    Column("split_hash", "TEXT"),
    Column("peak_memory_mb", "REAL"),
    Column("run_dir", "TEXT"),
)
CELL_COLUMNS = tuple(c.name for c in CELLS)
ADDED_COLUMNS = {c.name: c.sql for c in CELLS if c.added}
IDENTITY = [c.name for c in CELLS if c.identity]  # what names a cell, in publishing order
NUMERIC_IDENTITY = [c.name for c in CELLS if c.identity and not c.text]
NUMERIC_IDENTITY_WHOLE = [c for c in NUMERIC_IDENTITY if c != "label_fraction"]
CASE_COLUMNS = ["cell_id", "case_id", "class", "metric", "value"]
METRIC_COLUMNS = IDENTITY + CASE_COLUMNS  # a published row, before its cell's provenance
CELL_INFO_COLUMNS = [c.name for c in CELLS if c.info]
INTEGER_INFO_COLUMNS = [c.name for c in CELLS if c.info and c.sql.startswith("INTEGER")]
TEXT_COLUMNS = [c.name for c in CELLS if c.text and (c.identity or c.info)] + ["cell_id", "case_id", "metric"]
REQUIRED = ["cell_id"] + [
    c.name for c in CELLS if "NOT NULL" in c.sql and c.name != "status" and "DEFAULT" not in c.sql
]

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


# ------------------------------------------------------------------------------------ the store's tables

_SQL = re.compile(r"(?P<type>TEXT|INTEGER|REAL)(?P<pk> PRIMARY KEY)?(?P<nn> NOT NULL)?(?: DEFAULT (?P<default>\S+))?")
# SQLite keeps the affinities it always had (so a new store's file is laid out as before); PostgreSQL gets 64-bit
# integers (a model's parameter count) and double precision (its REAL is 4 bytes)
_TYPES: dict[str, Any] = {
    "TEXT": sa.Text(),
    "INTEGER": sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
    "REAL": sa.Double().with_variant(sa.REAL(), "sqlite"),
}


def _column(c: Column) -> sa.Column:
    """The SQLAlchemy column of a ``cells`` column, read from its SQL declaration (the one definition)."""
    m = _SQL.fullmatch(c.sql)
    if m is None:
        raise ValueError(f"cells column {c.name}: unsupported declaration {c.sql!r}")
    default = m["default"]
    return sa.Column(
        c.name,
        _TYPES[m["type"]],
        primary_key=bool(m["pk"]),
        nullable=not (m["nn"] or m["pk"]),
        server_default=sa.text(default) if default is not None else None,
    )


META = sa.MetaData()
CELLS_TABLE = sa.Table("cells", META, *(_column(c) for c in CELLS))
CASE_METRICS = sa.Table(
    "case_metrics",
    META,
    sa.Column("cell_id", sa.Text(), sa.ForeignKey("cells.cell_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("case_id", sa.Text(), primary_key=True),
    sa.Column("class", _TYPES["INTEGER"], primary_key=True, autoincrement=False),
    sa.Column("metric", sa.Text(), primary_key=True),
    sa.Column("value", _TYPES["REAL"], nullable=False),
)
CELLS_SUITE = sa.Index("cells_suite", CELLS_TABLE.c.suite, CELLS_TABLE.c.suite_version)
# A cell's latest run that has not (yet) stored a complete cell: running, or failed with its error's first line.
# Storing the complete cell deletes its row.
ATTEMPTS = sa.Table(
    "attempts",
    META,
    sa.Column("cell_id", sa.Text(), primary_key=True),
    sa.Column("config_hash", sa.Text(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False),  # 'running' | 'failed'
    sa.Column("host", sa.Text()),
    sa.Column("pid", _TYPES["INTEGER"]),
    sa.Column("job_id", sa.Text()),  # SLURM_JOB_ID (JOBID_TASKID in an array), NULL outside SLURM
    sa.Column("started", sa.Text(), nullable=False),  # ISO 8601, UTC
    sa.Column("updated", sa.Text(), nullable=False),
    sa.Column("error", sa.Text()),  # one line
)
ATTEMPT_COLUMNS = [c.name for c in ATTEMPTS.columns]

CONNECT_TIMEOUT_S = 5  # PostgreSQL: an unreachable server is reported by check() within this, before any training
BUSY_TIMEOUT_S = 60  # SQLite: how long a writer waits for another one's transaction
_SCHEMA_LOCK = 0x5E1F_BE4C  # PostgreSQL advisory lock: two jobs opening a new store create its tables once
_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _one_line(text: Any) -> str:
    """The first non-empty line of an error, stripped."""
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")


def _masked(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: for messages, even when the URL does not parse."""
    return re.sub(r"(://[^/@:]*:)[^@/]*@", r"\1***@", url)


def _db_error(e: sa.exc.DBAPIError) -> str:
    """The driver's own message (one line), without SQLAlchemy's statement and link."""
    return _one_line(e.orig) or type(e.orig).__name__


class ResultsStore:
    """The results of every cell, in an SQLite file (the default) or a PostgreSQL database, through SQLAlchemy.

    ``url``: a file path or ``sqlite:///PATH``, or ``postgresql://user[:password]@host[:port]/db`` (driven by
    psycopg 3; ``?sslmode=...`` and other libpq options pass through). The tables (``cells``, ``case_metrics``,
    ``attempts``) are created on first use, and a store written before a column of :data:`CELLS` existed gains it
    then (``added``): on both backends, once, under a lock. A bad URL is reported by :meth:`check`, which every run
    calls before any work.

    SQLite runs in WAL mode with a busy timeout, so that parallel local jobs (a sweep's array on one machine) read
    while one writes and queue their writes. SQLite's locking needs a local disk: for jobs on several machines use
    PostgreSQL.

    Writing a cell (:meth:`write_cell`, :meth:`write_cells`) is one transaction: the cell's row, all its metric
    rows, and the deletion of its attempt row land together or not at all. Write-once: the cell row is written with
    ``INSERT ... ON CONFLICT (cell_id) DO UPDATE ... WHERE`` the stored row is not already a complete cell with the
    same config hash. That single statement decides atomically (PostgreSQL locks the row, so a second writer of the
    same cell waits for the first to commit and then sees its row; SQLite writes one transaction at a time,
    ``BEGIN IMMEDIATE``), so when two workers finish the same cell at once the first write is kept and the second
    is a no-op (``write_cell`` returns False). A stored cell with a different config hash (a changed option) is
    replaced, its metric rows deleted before the new ones are inserted; ``force=True`` replaces even a cell with
    the same hash (importing a re-published CSV with ``--replace``). The metric rows' primary key (cell, case,
    class, metric) rules out duplicates in any case.
    """

    def __init__(self, url: str | Path) -> None:
        raw = str(url)
        self.path: Path | None = None  # the SQLite file; None for PostgreSQL
        self.where = _masked(raw)  # what messages call the store: its path, or its URL with the password masked
        self._url: sa.URL | None = None
        self._problem: str | None = None  # a bad URL: raised by check() and by any use
        self._engine: sa.Engine | None = None
        self._pid = os.getpid()
        self._ready = False
        if "://" not in raw or raw.startswith("sqlite:///"):
            self.path = Path(raw.removeprefix("sqlite:///"))
            self.where = str(self.path)
            self._url = sa.URL.create("sqlite+pysqlite", database=str(self.path))
            return
        scheme = raw.split("://", 1)[0].lower()
        if scheme not in _SCHEMES:
            self._problem = (
                f"results.url {self.where}: unknown scheme {scheme!r}; give a file path, sqlite:///PATH or "
                "postgresql://user@host:port/db"
            )
            return
        try:
            parsed = make_url(raw)
            parsed.port  # noqa: B018  (a non-numeric port raises here)
        except (sa.exc.ArgumentError, ValueError) as e:
            self._problem = f"results.url {self.where}: not a valid URL ({_one_line(e)})"
            return
        if not parsed.database:
            self._problem = f"results.url {self.where}: no database named (postgresql://user@host:port/DB)"
            return
        self._url = parsed.set(drivername="postgresql+psycopg")
        self.where = parsed.render_as_string(hide_password=True)

    @property
    def postgres(self) -> bool:
        return self.path is None

    def check(self) -> None:
        """Refuse, before any work, a store that could not take the results, with one line naming results.url: a
        bad URL; for SQLite a directory, a file that is not an SQLite database, an unwritable file or folder; for
        PostgreSQL a server that cannot be reached or refuses the connection (within a few seconds). Reads only:
        a store that does not exist yet is not created (a run that stops at validation leaves none behind)."""
        if self._problem:
            raise ValueError(self._problem)
        where = f"results.url {self.where}"
        if self.path is None:
            try:
                with self._connect() as con:
                    con.execute(sa.text("SELECT 1"))
            except sa.exc.DBAPIError as e:
                raise ValueError(f"{where}: cannot use the PostgreSQL server: {_db_error(e)}") from None
            return
        if self.path.is_dir():
            raise ValueError(f"{where}: a directory, not an SQLite file (give a file path, e.g. runs/results.sqlite)")
        if self.path.exists():
            try:
                with closing(sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro", uri=True)) as con:
                    con.execute("SELECT name FROM sqlite_master").fetchall()
            except sqlite3.DatabaseError as e:
                raise ValueError(f"{where}: not an SQLite results store ({e})") from None
            if not os.access(self.path, os.W_OK):
                raise ValueError(f"{where}: the file is not writable")
            return
        if (why := folder_problem(self.path.parent)) is not None:
            raise ValueError(f"{where}: the store's folder {self.path.parent}: {why}")

    # ------------------------------------------------------------------------------------ connections

    def _get_engine(self) -> sa.Engine:
        if self._problem:
            raise ValueError(self._problem)
        if self._engine is not None and self._pid != os.getpid():
            # a forked child: leave the parent's pooled connections to the parent, open its own
            self._engine.dispose(close=False)
            self._engine = None
        if self._engine is None:
            assert self._url is not None
            self._pid = os.getpid()
            if self.path is None:
                args = {} if "connect_timeout" in self._url.query else {"connect_timeout": CONNECT_TIMEOUT_S}
                self._engine = sa.create_engine(self._url, connect_args=args, pool_pre_ping=True)
            else:
                # a connection per use, as sqlite3 was used before: nothing held open between writes
                self._engine = sa.create_engine(self._url, poolclass=sa.NullPool)
                sa.event.listen(self._engine, "connect", _sqlite_connect)
                sa.event.listen(self._engine, "begin", _sqlite_begin)
        return self._engine

    def _connect(self) -> sa.Connection:
        """A connection (no schema set-up: :meth:`check` uses it too)."""
        return self._get_engine().connect()

    def _ensure_schema(self) -> None:
        # created on first use, so a run that stops at validation leaves no store behind
        if self._ready:
            return
        engine = self._get_engine()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _sqlite_wal(engine)
        with engine.execution_options(write=True).begin() as con:
            if self.path is None:
                con.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
            META.create_all(con, checkfirst=True)
            CELLS_SUITE.create(con, checkfirst=True)
            have = {c["name"] for c in sa.inspect(con).get_columns("cells")}
            for c in CELLS:
                if c.added and c.name not in have:
                    # the declaration as written (NOT NULL DEFAULT 0 fills the older rows), in the backend's type
                    kind = CELLS_TABLE.c[c.name].type.compile(dialect=con.dialect)
                    rest = c.sql.split(" ", 1)[1] if " " in c.sql else ""
                    con.exec_driver_sql(f"ALTER TABLE cells ADD COLUMN {c.name} {kind} {rest}".rstrip())
        self._ready = True

    def _read(self) -> sa.Connection:
        self._ensure_schema()
        return self._connect()

    def _write(self) -> Any:
        """A write transaction (SQLite: ``BEGIN IMMEDIATE``, so that it waits for other writers up front)."""
        self._ensure_schema()
        return self._get_engine().execution_options(write=True).begin()

    def close(self) -> None:
        """Close the pooled connections (PostgreSQL); the store opens new ones if used again."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # ------------------------------------------------------------------------------------ cells

    def is_complete(self, cell_id: str, config_hash: str) -> bool:
        t = CELLS_TABLE
        with self._read() as con:
            row = con.execute(sa.select(t.c.config_hash, t.c.status).where(t.c.cell_id == cell_id)).first()
        return row is not None and row[0] == config_hash and row[1] == "complete"

    def write_cell(self, cell: dict[str, Any], rows: Iterable[dict[str, Any]], *, force: bool = False) -> bool:
        """Store a complete cell and its metric rows atomically, and clear its attempt. Returns False (and writes
        nothing) where the store already holds this cell complete with the same config hash, unless ``force``:
        another worker finished it first. A cell with another config hash is replaced."""
        return self.write_cells([(cell, rows)], force=force)[0]

    def write_cells(
        self, items: Iterable[tuple[dict[str, Any], Iterable[dict[str, Any]]]], *, force: bool = False
    ) -> list[bool]:
        """:meth:`write_cell` for each (cell, metric rows) pair, all in one transaction: either every cell lands or
        none. Returns, for each pair, whether it was written (False: already stored complete with its hash). A
        cell given twice is taken from the later pair."""
        given = [(self._cell_row(cell), list(rows)) for cell, rows in items]
        for cell, rows in given:  # every way in (a run, an import) is checked here: nothing non-finite is stored
            check_rows(rows, f"cell {cell['cell_id']}")
        latest = {cell["cell_id"]: (cell, rows) for cell, rows in given}
        written: dict[str, bool] = {}
        t, m = CELLS_TABLE, CASE_METRICS
        insert = pg_insert if self.postgres else sqlite_insert
        with self._write() as con:
            for cell_id in sorted(latest):  # one lock order in every job: two jobs' batches cannot deadlock
                cell, rows = latest[cell_id]
                new = insert(t).values(**cell)
                upsert = new.on_conflict_do_update(
                    index_elements=[t.c.cell_id],
                    set_={c: new.excluded[c] for c in CELL_COLUMNS if c != "cell_id"},
                    # write-once: a complete cell with this config hash stays as stored (the update is skipped and
                    # no row is returned)
                    where=None if force else (t.c.status != "complete") | (t.c.config_hash != new.excluded.config_hash),
                )
                written[cell_id] = con.execute(upsert.returning(t.c.cell_id)).first() is not None
                if written[cell_id]:
                    con.execute(sa.delete(m).where(m.c.cell_id == cell_id))
                    values = [
                        {"cell_id": cell_id, "case_id": str(r["case"]), "class": int(r["class"])}
                        | {"metric": str(r["metric"]), "value": float(r["value"])}
                        for r in rows
                    ]
                    if values:
                        con.execute(sa.insert(m), values)
                con.execute(sa.delete(ATTEMPTS).where(ATTEMPTS.c.cell_id == cell_id))  # complete either way
        return [written[cell["cell_id"]] if latest[cell["cell_id"]][0] is cell else False for cell, _ in given]

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
        t = CELLS_TABLE
        with self._read() as con:
            return set(con.execute(sa.select(t.c.cell_id).where(t.c.status == "complete")).scalars())

    def cells(self, suite: str | None = None) -> pd.DataFrame:
        t = CELLS_TABLE
        q = sa.select(t).where(t.c.status == "complete")
        if suite:
            q = q.where(t.c.suite == suite)
        with self._read() as con:
            return pd.read_sql_query(q, con)

    def metrics(self, suite: str | None = None) -> pd.DataFrame:
        """Per-case metrics joined with their cell's identity (complete cells only)."""
        t, m = CELLS_TABLE, CASE_METRICS
        q = (
            sa.select(*(t.c[c] for c in IDENTITY), *(m.c[c] for c in CASE_COLUMNS))
            .select_from(m.join(t, t.c.cell_id == m.c.cell_id))
            .where(t.c.status == "complete")
        )
        if suite:
            q = q.where(t.c.suite == suite)
        with self._read() as con:
            return pd.read_sql_query(q, con)

    # ------------------------------------------------------------------------------------ attempts

    def start_attempt(self, cell_id: str, config_hash: str, host: str, pid: int, job_id: str | None) -> None:
        """Mark a cell as running here (replacing an earlier attempt's row, failed or running)."""
        now = _now()
        row = {"cell_id": cell_id, "config_hash": config_hash, "status": "running", "host": host, "pid": int(pid)}
        row |= {"job_id": job_id, "started": now, "updated": now, "error": None}
        insert = pg_insert if self.postgres else sqlite_insert
        stmt = insert(ATTEMPTS).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[ATTEMPTS.c.cell_id], set_={c: stmt.excluded[c] for c in ATTEMPT_COLUMNS[1:]}
        )
        with self._write() as con:
            con.execute(stmt)

    def fail_attempt(self, cell_id: str, error: str) -> None:
        """Mark a cell's attempt as failed, with the error's first line (nothing where no attempt was started)."""
        a = ATTEMPTS
        with self._write() as con:
            con.execute(
                sa.update(a)
                .where(a.c.cell_id == cell_id)
                .values(status="failed", error=_one_line(error)[:1000], updated=_now())
            )

    def attempts(self) -> pd.DataFrame:
        """Every cell running or failed (not yet stored complete), one row each: :data:`ATTEMPT_COLUMNS`."""
        with self._read() as con:
            return pd.read_sql_query(sa.select(ATTEMPTS).order_by(ATTEMPTS.c.cell_id), con)


def _sqlite_connect(dbapi_con: sqlite3.Connection, _record: Any) -> None:
    dbapi_con.isolation_level = None  # transactions are begun by _sqlite_begin, not by the sqlite3 module
    dbapi_con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    dbapi_con.execute("PRAGMA foreign_keys = ON")


def _sqlite_wal(engine: sa.Engine) -> None:
    """Put the file in WAL mode (the file keeps it). Several jobs opening a new store at once can each hold a shared
    lock while asking for the exclusive one the switch needs; SQLite answers that deadlock with "database is locked"
    at once, without waiting out busy_timeout, so the switch is retried here for as long as a writer would wait."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        raw = engine.raw_connection()  # outside a transaction, as SQLite requires
        try:
            con = raw.driver_connection
            assert isinstance(con, sqlite3.Connection)
            if con.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            con.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        finally:
            raw.close()
        time.sleep(random.uniform(0.01, 0.1))  # apart, so the jobs do not meet again at the same instant


def _sqlite_begin(con: sa.Connection) -> None:
    con.exec_driver_sql("BEGIN IMMEDIATE" if con.get_execution_options().get("write") else "BEGIN")


class ResultValueError(DataError, ValueError):
    """A metric value that cannot be a result (not finite, or outside its metric's range): the cell failed."""


def check_rows(rows: Iterable[dict[str, Any]], where: str) -> None:
    """Every value of a cell's metric rows finite and within its metric's range (bench.metrics.METRIC_RANGES), else
    a :class:`ResultValueError` that begins with ``where`` and names the first bad value and how many there are."""
    bad = [(r, why) for r in rows if (why := value_problem(str(r["metric"]), r["value"])) is not None]
    if bad:
        r, why = bad[0]
        more = f" ({len(bad)} such values)" if len(bad) > 1 else ""
        raise ResultValueError(
            f"{where}: the {r['metric']} of case {r['case']!r}, class {r['class']}, {why}{more}; a metric that is not "
            "a finite value in its range is a failed computation, not a score, so nothing was stored"
        )


# ------------------------------------------------------------------------------------ published results (CSV)


def from_csv(path: str | Path, *, located: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a published CSV of result rows (with its ``<suite>_predictions.csv.gz`` beside it, if any) back as
    (metrics, cells) frames for :func:`render`; ``located`` keeps each row's file and line (``LOCATION``)."""
    path = Path(path)
    kw = dict(
        dtype={c: str for c in TEXT_COLUMNS},
        keep_default_na=False,
        na_values={c: [""] for c in CELL_INFO_COLUMNS},
        float_precision="round_trip",
    )
    rows = _located(pd.read_csv(path, **kw), path)
    preds = path.with_name(path.name.removesuffix(".csv") + PREDICTIONS_SUFFIX)
    if preds.is_file():
        try:
            more = pd.read_csv(preds, compression="gzip", **kw)
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as e:  # ParserError is a ValueError
            # a truncated or damaged gzip: the file is named, not left to a traceback
            raise PublishedCSVError(f"{preds}: not a readable gzip CSV of predictions ({_one_line(e)})") from None
        rows = pd.concat([rows, _located(more, preds)], ignore_index=True)
    # a CSV published before the pretraining seed was part of a run's identity: every cell pretrained with seed 0
    if "pretrain_seed" not in rows:
        rows["pretrain_seed"] = 0
    # a CSV published before a column existed reads back with that column empty
    cells = rows.reindex(columns=["cell_id", *CELL_INFO_COLUMNS]).drop_duplicates("cell_id")
    return rows[METRIC_COLUMNS + (LOCATION if located else [])], cells


LOCATION = ["_file", "_line"]  # where a row was read: an import error names the file and line


def _located(rows: pd.DataFrame, path: Path) -> pd.DataFrame:
    return rows.assign(_file=str(path), _line=range(2, len(rows) + 2))  # line 1 is the header


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


def read_published(
    path: str | Path, suites: Collection[str] | None = None
) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """A published CSV (with its predictions file beside it, if any) as {cell_id: (cell row, metric rows)} in the
    results store's layout. Raises :class:`PublishedCSVError`, naming the file and line, for a file that is missing
    or is not one: a blank or non-numeric field, a fractional class or seed, a value that is not finite or outside
    its metric's range, a row given twice, or (with ``suites``, the registered names) a suite not among them."""
    path = Path(path)
    if path.is_dir():
        raise PublishedCSVError(f"{path}: is a directory, not a published results CSV")
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
        metrics, cells = from_csv(path, located=True)
    except PublishedCSVError:
        raise
    except ValueError as e:  # pandas' ParserError is one
        raise PublishedCSVError(f"{path}: unreadable rows ({e})") from None
    metrics = metrics.copy()
    raw = metrics.copy()

    def at(i: Any, what: str) -> PublishedCSVError:
        return PublishedCSVError(f"{raw.at[i, '_file']}, line {raw.at[i, '_line']}: {what}")

    for c in NUMERIC_IDENTITY + ["class"]:
        metrics[c] = pd.to_numeric(metrics[c], errors="coerce")
    needed = metrics[IDENTITY + ["case_id", "class", "metric"]]
    blank = needed.isna() | needed.eq("")
    if blank.any(axis=None):
        row = blank.any(axis=1).idxmax()
        col = blank.columns[blank.loc[row]][0]
        raise at(
            row,
            f"column {col} of a row of cell {metrics.at[row, 'cell_id']!r} is {raw.at[row, col]!r}: empty or not a "
            f"number ({int(blank.any(axis=1).sum())} such rows)",
        )
    whole = NUMERIC_IDENTITY_WHOLE + ["class"]
    frac = metrics[whole].ne(metrics[whole].round())
    if frac.any(axis=None):
        row = frac.any(axis=1).idxmax()
        col = frac.columns[frac.loc[row]][0]
        raise at(row, f"column {col} is {raw.at[row, col]!r}: it must be a whole number")
    for i, (m, v) in enumerate(zip(metrics["metric"], metrics["value"])):
        if (why := value_problem(str(m), v)) is not None:
            row = metrics.index[i]
            raise at(
                row,
                f"column value: the {m} of case {raw.at[row, 'case_id']!r} of cell "
                f"{raw.at[row, 'cell_id']!r} {why}; nothing was imported",
            )
    metrics["value"] = pd.to_numeric(metrics["value"])
    key = ["cell_id", "case_id", "class", "metric"]
    dup = metrics.duplicated(key)
    if dup.any():
        b = metrics.index[dup][0]
        same = (metrics[key] == metrics.loc[b, key]).all(axis=1)
        a = metrics.index[same][0]
        raise at(
            b,
            f"repeats the row at line {raw.at[a, '_line']} of {raw.at[a, '_file']} (cell {raw.at[a, 'cell_id']!r}, "
            f"case {raw.at[a, 'case_id']!r}, class {raw.at[a, 'class']}, {raw.at[a, 'metric']}); a published file "
            "holds each value once",
        )
    unknown = sorted(set(metrics["suite"]) - set(suites)) if suites is not None else []
    if unknown:
        row = metrics.index[metrics["suite"].eq(unknown[0])][0]
        raise at(row, f"suite {unknown[0]!r} is not a registered suite (known: {', '.join(sorted(suites or []))})")
    identity = metrics.groupby("cell_id")[IDENTITY].nunique()
    mixed = identity.index[(identity > 1).any(axis=1)]
    if len(mixed):
        raise PublishedCSVError(
            f"{path}: the rows of cell {mixed[0]!r} disagree on its "
            f"{', '.join(identity.columns[identity.loc[mixed[0]] > 1])}"
        )
    metrics = metrics.drop(columns=LOCATION).astype({c: int for c in NUMERIC_IDENTITY_WHOLE} | {"class": int})
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


def import_published(
    paths: list[str | Path], store, *, replace: bool = False, suites: Collection[str] | None = None
) -> list[ImportReport]:
    """Put the cells of published CSVs into a results store, so that new runs join published ones on one
    leaderboard (or a lost store is rebuilt from what was published). Every file is read and checked before
    anything is written, and all cells are written in one transaction. A cell the store already holds is kept
    unless ``replace``; a cell in two of the files is taken from the later one."""
    read = [(Path(p), read_published(p, suites)) for p in paths]
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
    store.write_cells(todo.values(), force=replace)  # replace: even a cell imported before (the same hash)
    return reports


if __name__ == "__main__":
    # `python -m bench.results import` is the spelling people reach for; without this it would run nothing, silently
    from bench.tools.results import main

    raise SystemExit(main())
