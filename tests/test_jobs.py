"""Jobs sharing a runs folder: one pretraining and one run per cell, whatever runs at once; a killed holder never
blocks the next job. Real processes, real flock (bench/jobs.py), no mocks."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HOLD = """
import sys, time
from pathlib import Path
from bench import jobs
with jobs.exclusive(Path(sys.argv[1]), "test work", lambda m: print(m, flush=True)):
    print("got it", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(lock: Path, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        # the script names the work's folder; its lock and owner files are beside it
        [sys.executable, "-c", HOLD, str(lock.with_suffix("")), str(seconds)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_second_job_waits_names_the_holder_and_a_killed_holder_releases(tmp_path):
    lock = tmp_path / "work.lock"
    first = _holder(lock, 60)
    assert first.stdout is not None and first.stdout.readline().strip() == "got it"
    owner = json.loads(lock.with_suffix(".owner.json").read_text())
    assert owner["pid"] == first.pid and owner["host"] and owner["since"]
    second = _holder(lock, 0)
    assert second.stdout is not None
    waiting = second.stdout.readline()
    assert "held by" in waiting and f"pid {first.pid}" in waiting, waiting
    time.sleep(1)
    assert second.poll() is None  # still waiting
    os.kill(first.pid, signal.SIGKILL)  # the kernel drops the dead holder's flock
    first.wait()
    out, _ = second.communicate(timeout=30)
    assert out.strip() == "got it" and second.returncode == 0
    assert not lock.with_suffix(".owner.json").exists()


def _env(data: Path) -> dict[str, str]:
    return dict(os.environ, SSLBENCH_DATA=str(data), HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_two_jobs_started_at_once_pretrain_once_and_store_the_cell_once(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    args = [
        "run_bench.py",
        "method=simmim3d",
        "suite=smoke",
        "budget=quick",
        "device=cpu",
        "progress=false",
        "budget.roi=[32,32,32]",
        "budget.pretrain.steps=3",
        "budget.transfer.steps=2",
        "protocol=finetune",
        "seed=0",
        f"runs_dir={runs}",
    ]
    # the data first, so that both jobs race on the pretraining and the cell, not on generating the dataset
    prep = subprocess.run(
        [sys.executable, "run_bench.py", *args[1:], "stage=validate"], cwd=ROOT, env=_env(data), capture_output=True
    )
    assert prep.returncode == 0, prep.stderr
    jobs = [
        subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(data), stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [j.communicate(timeout=900)[0] for j in jobs]
    assert [j.returncode for j in jobs] == [0, 0], outs
    (scalars,) = runs.glob("pretrain/simmim3d/*/scalars.jsonl")
    steps = [json.loads(x)["step"] for x in scalars.read_text().splitlines()]
    assert steps == [1, 2, 3]  # one job pretrained; the other used its export
    both = "\n".join(outs)
    assert "cached export" in both
    assert both.count("[transfer] smoke/") == 1 and "completed by another job" in both, both
    with sqlite3.connect(runs / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 0


def test_status_tells_running_stopped_failed_and_missing_cells(tmp_path):
    """stage=status from the store's attempts: a live process's cell runs, a dead one's is stopped, a raised one
    failed with its error, the rest missing; the plan's pretraining is missing."""
    import socket

    from bench import status
    from bench.plan import compose, make_plan

    plan = make_plan(
        compose(["method=random", "suite=chest_xray", "budget=quick", "device=cpu", f"runs_dir={tmp_path}"])
    )
    cells = status.cell_states(plan)
    assert len(cells) >= 3 and {c["state"] for c in cells} == {"missing"}
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    plan.store.start_attempt(cells[0]["cell"], cells[0]["config_hash"], host, os.getpid(), "4242")
    plan.store.start_attempt(cells[1]["cell"], cells[1]["config_hash"], host, int(dead.stdout), None)
    plan.store.start_attempt(cells[2]["cell"], cells[2]["config_hash"], host, os.getpid(), None)
    plan.store.fail_attempt(cells[2]["cell"], "ValueError: split 'val' is empty")
    got = {c["cell"]: c for c in status.cell_states(plan)}
    assert got[cells[0]["cell"]]["state"] == "running" and "SLURM job 4242" in got[cells[0]["cell"]]["detail"]
    assert got[cells[1]["cell"]]["state"].startswith("stopped")
    assert got[cells[2]["cell"]]["state"] == "failed" and "split 'val' is empty" in got[cells[2]["cell"]]["detail"]
    text = status.report(plan)
    assert "1 running, 1 stopped, 1 failed" in text and "pretraining random" in text and ": missing" in text
