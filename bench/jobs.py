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


def _holder(owner: Path) -> str:
    try:
        h = json.loads(owner.read_text())
        job = f", SLURM job {h['job_id']}" if h.get("job_id") else ""
        return f"{h['host']} pid {h['pid']}{job} since {h['since']}"
    except (OSError, ValueError, KeyError):
        return "another job"


@contextmanager
def exclusive(lock_path: Path, what: str, say: Any = print) -> Iterator[None]:
    """Hold ``lock_path`` for the block (waiting for another job's hold to end first), telling what it waits for."""
    from filelock import FileLock, Timeout

    if not distributed.is_main():
        distributed.barrier()  # the main process holds the job's lock
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    owner = lock_path.with_suffix(".owner.json")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"[jobs] {what}: held by {_holder(owner)}; waiting for it")
        lock.acquire()
    try:
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        write_text_atomic(owner, json.dumps(whoami() | {"since": since}))
        distributed.barrier()
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
