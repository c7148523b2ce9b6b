"""Data-parallel training with torchrun: processes really started by torchrun (gloo on the CPU), compared with one
process at the global batch.

The fast tests check the sharding arithmetic and the engine's step under two processes (tests/ddp_check.py); the slow
ones run the command line: 2 processes at per-process batch B against 1 process at batch 2B for simmim3d and for an
EMA method (asa), a kill -9 of one process and its resume, and the whole pipeline's writes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import distributed
from bench.data import PretrainDataset

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env(data: Path) -> dict[str, str]:
    # one thread per process: two processes on two cores, as a shared host would want them
    return dict(os.environ, SSLBENCH_DATA=str(data), HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1")


def _run(cmd: list[str], data: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(data), capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ sharding arithmetic


def test_stream_shards_of_n_processes_are_the_one_process_stream(monkeypatch):
    """Step for step, the union of the processes' keys is what one process at the global batch draws, in order;
    and a resumed stream starts at the global batch a checkpoint counted."""

    def keys(rank: int, size: int, local: int, start: int = 0, n: int = 12) -> list[int]:
        monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank, size))
        s = distributed.StreamSampler(local)
        s.start_at(start)
        it = iter(s)
        return [next(it) for _ in range(n)]

    one = keys(0, 1, 4, n=24)
    r0, r1 = keys(0, 2, 2), keys(1, 2, 2)
    for step in range(6):
        assert r0[2 * step : 2 * step + 2] + r1[2 * step : 2 * step + 2] == one[4 * step : 4 * step + 4]
    assert keys(0, 1, 4, start=3, n=4) == one[12:16]
    assert keys(1, 2, 2, start=3, n=2) == one[14:16]


def test_shards_of_a_global_batch_cover_it_once(monkeypatch):
    for n, size in [(8, 2), (7, 2), (5, 3), (3, 3)]:
        parts = []
        for rank in range(size):
            monkeypatch.setattr(distributed, "world", lambda rank=rank, size=size: distributed.World(rank, size))
            parts.append(distributed.shard(n))
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_a_batch_the_processes_cannot_split_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(0, 4))
    assert distributed.per_device(8, "budget.pretrain.batch_size") == 2
    with pytest.raises(ValueError, match=r"budget.pretrain.batch_size=6 does not divide among 4 processes"):
        distributed.per_device(6, "budget.pretrain.batch_size")


def test_a_pretraining_sample_depends_on_its_key_alone():
    """Whatever the process's RNG state (each process has its own), item k is the same sample."""
    rng = np.random.default_rng(0)
    vols = [rng.random((1, 20, 20, 20), dtype=np.float32) for _ in range(3)]

    def views(s, r):
        return {"image": torch.from_numpy(s["image"][:, :8, :8, :8] * r.random())}

    ds = PretrainDataset(vols, (8, 8, 8), views, samples=10, seed=5)
    torch.manual_seed(1)
    a = ds[7]["image"]
    torch.manual_seed(2)
    assert torch.equal(a, ds[7]["image"])
    assert not torch.equal(a, ds[8]["image"])


# --------------------------------------------------------------------------------- the engine on 2 processes


def test_engine_step_on_two_processes_matches_the_global_batch(tmp_path):
    """Two processes (gloo) with shards of 3 and 1 samples, two accumulated micro-batches: the same SGD step as one
    process on the whole batches; a loss that is NaN on one process only drops the step on both; after fit each
    process draws from its own RNG stream, and both hold the same weights."""
    p = _run(TORCHRUN + ["tests/ddp_check.py", str(tmp_path)], tmp_path / "data", timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    from ddp_check import X, Y

    torch.manual_seed(0)
    ref = torch.nn.Linear(3, 1)
    losses = [((ref(X[i * 4 : (i + 1) * 4]) - Y[i * 4 : (i + 1) * 4]) ** 2).mean() for i in range(2)]
    (sum(losses) / 2).backward()
    with torch.no_grad():
        expected = {k: v - 0.1 * v.grad for k, v in ref.named_parameters()}
    for r in (r0, r1):
        assert r["dropped"]
        assert r["samples"] == 8
        assert r["loss"] == pytest.approx(float(sum(losses).detach() / 2), rel=1e-6)
        for k, v in expected.items():
            torch.testing.assert_close(r["state"][k], v, rtol=1e-6, atol=1e-7)
        for k in r0["fit_state"]:
            assert torch.equal(r0["fit_state"][k], r1["fit_state"][k])
    assert not torch.equal(r0["draw"], r1["draw"])
    ckpt = torch.load(tmp_path / "fit" / "last.ckpt", weights_only=True)
    assert len(ckpt["rng_ranks"]) == 2 and ckpt["drawn"] == 2


def test_torchrun_refuses_a_sweep_and_an_uneven_batch_before_any_work(tmp_path):
    data = tmp_path / "data"
    env = _env(data) | {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    p = subprocess.run(
        [sys.executable, "run_bench.py", "-m", "seed=0,1", f"runs_dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "-m/--multirun under torchrun" in p.stderr, p.stderr
    args = ["run_bench.py", "suite=smoke", "budget=quick", "device=cpu", "budget.pretrain.batch_size=3"]
    p = _run(TORCHRUN + [*args, f"runs_dir={tmp_path / 'runs'}"], data, timeout=300)
    assert p.returncode != 0
    lines = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert lines and all("budget.pretrain.batch_size=3 does not divide among 2 processes" in x for x in lines), p.stderr
    assert not (tmp_path / "runs" / "pretrain").exists() and not (data / "smoke").exists()


# --------------------------------------------------------------------------- the command line, 2 vs 1 process

STEPS = 3
PRETRAIN = [
    "suite=smoke",
    "stage=pretrain",
    "budget=quick",
    "device=cpu",
    "progress=false",
    "budget.roi=[32,32,32]",
    "budget.pretrain.batch_size=2",
]
METHOD_ARGS = {
    "simmim3d": ["method=simmim3d"],
    # narrow projectors for speed; phase 1 only: phase 2's local loss is a mean over the overlapping tokens of each
    # process's shard, as in the official code, so 2 processes weight tokens differently from one process there
    "asa": ["method=asa", "method.config.global_dim=256", "method.config.local_dim=64", "method.config.phase_steps=8"],
}


def _pretrain(cmd: list[str], method: str, runs: Path, data: Path, steps: int = STEPS) -> Path:
    args = ["run_bench.py", *METHOD_ARGS[method], *PRETRAIN, f"budget.pretrain.steps={steps}", f"runs_dir={runs}"]
    p = _run(cmd + args, data)
    assert p.returncode == 0, p.stderr[-3000:]
    (export,) = runs.glob(f"pretrain/{method}/*/export.pt")
    return export


def _losses(export: Path) -> list[float]:
    rows = [json.loads(x) for x in (export.parent / "scalars.jsonl").read_text().splitlines()]
    return [r[next(k for k in r if k.endswith("/loss"))] for r in rows]


def _weights(export: Path) -> dict[str, torch.Tensor]:
    return torch.load(export, weights_only=True)["state_dict"]


def _init_weights(method: str) -> dict[str, torch.Tensor]:
    """The encoder as the runner builds it before training (seeded with the pretraining seed, 0)."""
    from bench.backbones import build_backbone
    from bench.engine import seed_everything
    from bench.plan import compose, make_plan

    plan = make_plan(compose([*METHOD_ARGS[method], *PRETRAIN]))
    seed_everything(0)
    return build_backbone(plan.backbone, **plan.backbone_kwargs).state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simmim3d", "asa"])
def test_two_processes_at_batch_b_train_as_one_process_at_batch_2b(method, tmp_path):
    """Same loss curve (relative 1e-5) and the same export: the two runs differ by less than 10 % of how far training
    moved the weights (a run on half the batch differs by ~80 %). Adam moves a weight whose gradient is near zero by
    about lr either way, so float rounding in the gradient's sum order shows up there, not a tighter bound; asa
    (SGD; its export is the EMA teacher) agrees far more closely."""
    data = tmp_path / "data"
    one = _pretrain([sys.executable], method, tmp_path / "one", data)
    two = _pretrain(TORCHRUN, method, tmp_path / "two", data)
    assert len(_losses(one)) == STEPS
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-5)
    w1, w2, w0 = _weights(one), _weights(two), _init_weights(method)
    keys = [k for k in w0 if w0[k].is_floating_point()]
    moved = math.sqrt(sum(float(((w1[k] - w0[k]).double() ** 2).sum()) for k in keys))
    apart = math.sqrt(sum(float(((w2[k] - w1[k]).double() ** 2).sum()) for k in keys))
    assert moved > 0 and apart < 0.1 * moved, (apart, moved)
    meta = torch.load(two, weights_only=True)["meta"]
    assert meta["world_size"] == 2


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker ``rank`` (read from its environment)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == parent and f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


BLOCKED_RANK = """
import sys, time
import torch, torch.distributed as dist
from bench import cli
cli._stop_on_sigterm()
dist.init_process_group("gloo")
if dist.get_rank() == 1:
    time.sleep(600)
print("rank 0 waits in a receive", file=sys.stderr, flush=True)
dist.recv(torch.zeros(4), src=1)
"""


FORKED_WORKER = """
import os, signal, sys, time
from bench import cli
cli._stop_on_sigterm()
pid = os.fork()
if pid == 0:
    time.sleep(60)
    os._exit(0)
time.sleep(0.5)
os.kill(pid, signal.SIGTERM)
_, status = os.waitpid(pid, 0)
time.sleep(1)  # the watcher would have stopped this process by now
print("parent alive", os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
"""


def test_a_forked_workers_sigterm_does_not_stop_its_rank(tmp_path):
    """A forked child shares the wakeup pipe: without the at-fork reset its SIGTERM would reach the parent's watcher
    and end the rank with the torchrun message."""
    script = tmp_path / "fork.py"
    script.write_text(FORKED_WORKER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "parent alive True", (done.stdout, done.stderr)
    assert "stopped by torchrun" not in done.stderr


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_a_rank_blocked_in_a_collective_says_why_it_stops_on_sigterm(tmp_path):
    """torchrun gives the other ranks of a failed job 30 s after SIGTERM, then SIGKILL. A rank waiting in a gloo
    receive does not return to Python, so a plain Python signal handler never runs there and the line is lost; the
    watcher thread of cli._stop_on_sigterm must act at once."""
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKED_RANK)
    env = dict(_env(tmp_path / "data"), PYTHONPATH=str(ROOT))
    job = subprocess.Popen(TORCHRUN + [str(script)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert job.stderr is not None
        for line in job.stderr:  # rank 0 is in its receive once it said so (the receive blocks on rank 1's sleep)
            if "rank 0 waits in a receive" in line:
                break
        time.sleep(1)
        pid = _rank_pid(job.pid, 0)
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 20  # well inside torchrun's 30 s grace
        while _running(pid) and time.time() < deadline:
            time.sleep(0.2)
        assert not _running(pid), "rank 0 ignored SIGTERM while blocked in a receive"
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert "error: rank 0 of 2: stopped by torchrun because another process of this job failed" in err, err[-2000:]


@pytest.mark.slow
def test_kill_of_one_process_ends_the_job_and_a_rerun_resumes_to_the_same_result(tmp_path):
    data = tmp_path / "data"
    steps = 12  # checkpoints every 3 steps
    args = ["run_bench.py", *METHOD_ARGS["simmim3d"], *PRETRAIN, f"budget.pretrain.steps={steps}"]
    runs = tmp_path / "killed"
    job = subprocess.Popen(
        TORCHRUN + [*args, f"runs_dir={runs}"], cwd=ROOT, env=_env(data), stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not list(runs.glob("pretrain/simmim3d/*/last.ckpt")) and time.time() < deadline:
        time.sleep(0.5)
    pid = _rank_pid(job.pid, 1)
    assert pid is not None and list(runs.glob("pretrain/simmim3d/*/last.ckpt"))
    os.kill(pid, signal.SIGKILL)
    _, err = job.communicate(timeout=300)
    assert job.returncode != 0
    assert "error: rank 0 of 2: stopped by torchrun because another process of this job failed" in err, err[-3000:]
    assert "rank      : 1 (local_rank: 1)" in err and "SIGKILL" in err
    assert not list(runs.glob("pretrain/simmim3d/*/export.pt"))

    resumed = _pretrain(TORCHRUN, "simmim3d", runs, data, steps=steps)
    whole = _pretrain(TORCHRUN, "simmim3d", tmp_path / "whole", data, steps=steps)
    # the checkpoint carries each process's RNG and the samples drawn: the resumed run repeats the uninterrupted one
    assert _losses(resumed)[-steps:] == _losses(whole)
    w1, w2 = _weights(resumed), _weights(whole)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.slow
def test_pipeline_under_torchrun_writes_once(tmp_path):
    """Pretraining and the four segmentation protocols on 2 processes (two trained, two probes that the main process
    runs): one row per cell with its world size, one run folder's files, one Hydra run folder, one line per cell on
    the console."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    args = [*METHOD_ARGS["simmim3d"], *[a for a in PRETRAIN if a != "stage=pretrain"], "budget.pretrain.steps=2"]
    args += ["budget.transfer.steps=2", "budget.transfer.batch_size=2", "seed=0", f"runs_dir={runs}"]
    p = _run(TORCHRUN + ["run_bench.py", *args], data)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("[transfer] smoke/") == 4, p.stdout
    with sqlite3.connect(runs / "results.sqlite") as db:
        cells = db.execute("SELECT protocol, world_size, per_device_batch, wall_s, cpu_hours FROM cells").fetchall()
    assert sorted(c[0] for c in cells) == ["finetune", "knn_seg", "linear_probe", "voxel_probe"]
    for _, world, per_device, wall, cpu_hours in cells:
        assert (world, per_device) == (2, 1)
        assert cpu_hours == pytest.approx(2 * wall / 3600)
    assert len(list((runs / "hydra").glob("*/*"))) == 1
    for cell in runs.glob("cells/**/metrics.json"):
        assert (cell.parent / "per_case.csv").is_file()
