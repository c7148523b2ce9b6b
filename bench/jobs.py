"""Jobs that share a runs folder (a joblib or SLURM sweep, two terminals): one job at a time per pretraining and per
cell.

The lock is the ``filelock`` package's file lock, an ``flock`` on a file next to the work: the kernel releases it when
its holder exits, however it exits (kill -9 included), so a dead job's lock never blocks the next one and there is no
stale lock to break. A job that finds the lock held says who holds it (host, pid, SLURM job, since when) and waits;
when it gets the lock it looks again for the product (an export, a complete cell), so the work is done once, and a
job that takes over from a dead holder resumes from its checkpoint. ``flock`` works across nodes on NFSv4 and on
cluster file systems that support it (Lustre with ``flock``, GPFS, BeeGFS); on one without it, run ``stage=pretrain``
as its own sweep first, then ``stage=transfer`` (README, Scaling out).

Under torchrun only the main process takes the lock (the job's other processes wait for it at a barrier).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import distributed
from bench.types import write_text_atomic


def whoami() -> dict[str, Any]:
    """This job: host, pid and SLURM job id (None outside SLURM; ``JOBID_TASKID`` for an array task)."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return {"host": socket.gethostname(), "pid": os.getpid(), "job_id": job}


def _lock(work: Path) -> Path:
    """The lock of the work whose folder is ``work``: beside it, so that taking it makes no folder of the work."""
    return work.with_name(f"{work.name}.lock")


def _owner(work: Path) -> Path:
    return work.with_name(f"{work.name}.owner.json")


def holder(work: Path) -> dict[str, Any] | None:
    """Who holds the lock of ``work`` (host, pid, job_id, since), or None when nobody does (or it cannot be read)."""
    try:
        h = json.loads(_owner(work).read_text())
    except (OSError, ValueError):
        return None
    return h if isinstance(h, dict) else None


def describe(who: dict[str, Any]) -> str:
    """``host pid N, SLURM job J`` of a lock holder or a store's attempt row (the same keys)."""
    job = f", SLURM job {who['job_id']}" if who.get("job_id") else ""
    return f"{who.get('host')} pid {who.get('pid')}{job}"


@contextmanager
def exclusive(work: Path, what: str, say: Any = print) -> Iterator[None]:
    """Hold the lock of the work in folder ``work`` for the block (waiting for another job's hold to end first),
    telling what it waits for."""
    from filelock import FileLock, Timeout

    if not distributed.is_main():
        distributed.barrier()  # the main process holds the job's lock
        yield
        return
    work.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(_lock(work)))
    owner = _owner(work)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = holder(work)
        held = f"{describe(who)} since {who.get('since')}" if who else "another job"
        say(f"[jobs] {what}: held by {held}; waiting for it")
        lock.acquire()
    try:
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        write_text_atomic(owner, json.dumps(whoami() | {"since": since}))
        distributed.barrier()
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
