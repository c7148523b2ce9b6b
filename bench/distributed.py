"""Data parallelism on PyTorch's own engine: ``torchrun`` starts the processes, ``torch.distributed`` joins them.

``torchrun --nproc_per_node=N run_bench.py ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`init` then joins
the process group (NCCL on CUDA, gloo on the CPU) and picks this process's GPU. A plain ``python run_bench.py`` has
no such variables: world size 1, no process group, and every function here is a no-op, so a single process trains
exactly as before.

The contract with the rest of the harness:

- configured batch sizes are *global*; each process takes ``batch / world_size`` (:func:`per_device`), so the
  learning rate a recipe ties to its batch follows the global batch and a step counts global samples;
- every epoch of every training loader is split into disjoint per-process shards by :class:`StreamSampler` (map-style
  datasets keyed by sample) or :func:`shard` (loaders that yield whole batches): the union of the shards of one
  optimizer step is the batch a single process would have drawn at the same step;
- only the main process (rank 0) writes files, the results store and leaderboards; :func:`main_first` lets it
  prepare shared data before the others read it.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

# a rank evaluating (validation, the test set) keeps the others waiting at their next collective: long enough for a
# whole test set's sliding-window inference, short enough that a hung job ends the same day
TIMEOUT = dt.timedelta(minutes=int(os.environ.get("BENCH_DIST_TIMEOUT_MIN", "120")))


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """True in a process that torchrun started with more than one process in the job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> World:
    if tdist.is_available() and tdist.is_initialized():
        return World(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def is_main() -> bool:
    return world().main


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this process's device: ``cuda`` becomes ``cuda:LOCAL_RANK``.

    Outside torchrun this returns ``device`` unchanged. A CUDA device with fewer GPUs than local processes is refused
    (two processes on one GPU would each hold a model and halve the memory the budget was sized for)."""
    if not launched():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"device: local rank {local} has no GPU of its own (this node has {torch.cuda.device_count()}); "
                f"start at most {torch.cuda.device_count()} processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        tdist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    return device


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier() -> None:
    if world().distributed:
        tdist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (e.g. generating or caching data), then the others, which then read
    what it wrote instead of racing it."""
    w = world()
    if w.distributed and not w.main:
        tdist.barrier()
    yield
    if w.distributed and w.main:
        tdist.barrier()


def per_device(global_batch: int, option: str) -> int:
    """This process's share of a configured (global) batch; a batch the processes cannot split evenly is refused
    with the option's name, as uneven shards would weight samples unequally."""
    n = world().size
    if global_batch % n:
        raise ValueError(
            f"{option}={global_batch} does not divide among {n} processes: set it to a multiple of {n} "
            f"(it is the global batch; each process takes {option}/{n})"
        )
    return global_batch // n


def check_shards(batch: int, what: str) -> None:
    """Refuse a global batch of fewer ``what`` than processes (a process with an empty shard would have no loss)."""
    procs = world().size
    if batch < procs:
        raise ValueError(f"a batch of {batch} {what} cannot be shared by {procs} processes")


def shard(n: int) -> slice:
    """This process's contiguous part of a global batch of ``n`` samples (sizes differ by at most one)."""
    w = world()
    q, r = divmod(n, w.size)
    start = w.rank * q + min(w.rank, r)
    return slice(start, start + q + (w.rank < r))


def reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums of ``values`` over the processes (the values themselves in a single process)."""
    if not world().distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order (``[obj]`` in a single process)."""
    w = world()
    if not w.distributed:
        return [obj]
    out: list[Any] = [None] * w.size
    tdist.all_gather_object(out, obj)
    return out


def mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the mean of ``tensor`` over the processes (for statistics a method keeps of its batches, such as
    DINO's centre, which the official code all-reduces)."""
    w = world()
    if w.distributed:
        tdist.all_reduce(tensor)
        tensor /= w.size
    return tensor


class StreamSampler(torch.utils.data.Sampler[int]):
    """Endless sample keys for a map-style dataset whose item ``k`` depends only on ``k`` (and the dataset's seed).

    The keys of one process are its shard of a global stream 0, 1, 2, ...: global batch ``b`` (of ``batch`` keys,
    ``batch = per-process batch × world size``) holds keys ``b*batch .. (b+1)*batch - 1`` and rank ``r`` takes the
    ``r``-th contiguous block of it. So N processes at per-process batch B draw, step for step, exactly the samples
    one process at batch N*B draws, and :meth:`start_at` resumes the stream where a checkpoint left it.
    """

    def __init__(self, local_batch: int) -> None:
        w = world()
        self.local_batch, self.rank, self.size = local_batch, w.rank, w.size
        self.next_batch = 0  # global batches already handed out (the loader's prefetch included)

    def start_at(self, batches: int) -> None:
        """Continue with global batch ``batches`` (the micro-batches a resumed run had already drawn)."""
        self.next_batch = batches

    def __iter__(self) -> Iterator[int]:
        while True:
            base = (self.next_batch * self.size + self.rank) * self.local_batch
            self.next_batch += 1
            yield from range(base, base + self.local_batch)


def loader(dataset: torch.utils.data.Dataset, global_batch: int, option: str, **kw: Any) -> torch.utils.data.DataLoader:
    """A training loader over keyed samples: this process's shard of each global batch (:class:`StreamSampler`)."""
    local = per_device(global_batch, option)
    return torch.utils.data.DataLoader(dataset, batch_size=local, sampler=StreamSampler(local), **kw)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch, as DINO's official code converts it: on CUDA only, since PyTorch's
    SyncBatchNorm has no CPU kernel; with gloo on the CPU each process normalises its own shard (documented in
    docs/scaling.md)."""
    if world().distributed and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
