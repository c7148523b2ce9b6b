"""A throwaway PostgreSQL server for the results-store tests: ``pg_server`` (session) and ``pg_url`` (a fresh
database per test). Imported by the test modules that use it, not by conftest.py.

The server runs from the PostgreSQL binaries of this machine (``initdb``, ``pg_ctl``; Debian/Ubuntu:
``apt-get install -y postgresql``), on a free loopback port with trust authentication, in a temporary directory
removed afterwards. initdb refuses to run as root, so as root the server runs as the unprivileged ``postgres``
user (or ``nobody``) through ``runuser``. Without the binaries, or as root without such a user, the tests skip and
say why.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL = "apt-get install -y postgresql"
USER = "bench"  # the server's superuser, as the tests connect


@dataclass(frozen=True)
class Server:
    host: str
    port: int

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{db}"


def _bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: on the PATH, else the newest /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"], user
    pytest.skip("running as root and no unprivileged user (postgres, nobody) to run the PostgreSQL server as")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    bins = _bin_dir()
    if bins is None:
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl) not found; CI needs: {INSTALL}")
    prefix, user = _run_as()
    if prefix and shutil.which("runuser") is None:
        pytest.skip("running as root and runuser (util-linux) is missing")
    # not under pytest's tmp_path: its folders are private to root, which the server's user cannot enter
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, log = root / "data", root / "server.log"
    port = _free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)

    try:
        p = run(str(bins / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        if p.returncode:
            pytest.fail(f"initdb failed: {p.stderr[-2000:]}")
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        p = run(str(bins / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start")
        if p.returncode:
            pytest.fail(f"pg_ctl start failed: {p.stderr[-2000:]}\n{log.read_text() if log.exists() else ''}")
        yield Server("127.0.0.1", port)
    finally:
        if (data / "postmaster.pid").exists():
            run(str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: Server) -> Iterator[str]:
    """The URL of a new, empty database on the session's server (dropped after the test)."""
    import psycopg

    db = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url(), autocommit=True) as con:
        con.execute(f"CREATE DATABASE {db}")
    yield pg_server.url(db)
    with contextlib.suppress(psycopg.Error), psycopg.connect(pg_server.url(), autocommit=True) as con:
        con.execute(f"DROP DATABASE {db} WITH (FORCE)")
