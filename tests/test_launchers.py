"""Hydra sweeps (``-m``) through the launchers of conf/hydra/launcher/: joblib, submitit's local executor, and SLURM
(a real single-node cluster, tests/slurm_cluster.py), each ending with every cell in the results store and each
pretraining run once."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
METHODS = ("random", "simmim3d")
SEEDS = (0, 1)
PROTOCOLS = ("finetune", "linear_probe")  # the smoke suite's trained ones (its probes would only add time here)
FAST = [
    "suite=smoke",
    "budget=quick",  # given: without it run_bench.py would add one
    "device=cpu",
    "progress=false",
    "suite.budget_caps.pretrain_steps=2",
    "suite.budget_caps.transfer_steps=2",
]
SWEEP = [
    "-m",
    f"method={','.join(METHODS)}",
    f"seed={','.join(map(str, SEEDS))}",
    f"protocol=[{','.join(PROTOCOLS)}]",
    *FAST,
]
# a job of the test cluster: one core, no GPU, a small memory request
SLURM_JOB = [
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=30",
]


def sweep(runs: Path, data: Path, *args: str, cluster=None, timeout: float = 1500, sweep=SWEEP):
    """Run ``run_bench.py -m ...`` to its end. With ``cluster``: fail as soon as the sweep's SLURM jobs have all left
    the queue while the command still waits (a job that died without a result: with no accounting database, sacct
    cannot tell submitit, which would wait for it forever)."""
    env = dict(os.environ, SSLBENCH_DATA=str(data), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    env.update(cluster.env if cluster is not None else {})
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "run_bench.py", *sweep, f"runs_dir={runs}", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
        )
        deadline, idle_since = time.monotonic() + timeout, None
        while proc.poll() is None:
            time.sleep(2)
            if cluster is not None and list(runs.glob("hydra/multirun/*/*/.submitit")):
                idle_since = (idle_since or time.monotonic()) if not cluster.jobs() else None
            stuck = idle_since is not None and time.monotonic() - idle_since > 60
            if stuck or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                logs = "\n".join(f.read_text()[-1500:] for f in runs.glob("hydra/multirun/*/*/.submitit/*/*.err"))
                pytest.fail(f"sweep {'stuck: no job left in the queue' if stuck else 'timed out'}\n{logs}")
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


def assert_sweep_complete(runs: Path) -> None:
    """Every cell of the 4-job sweep is complete in the store, and each method's pretraining ran once."""
    with sqlite3.connect(runs / "results.sqlite") as con:
        rows = con.execute("SELECT method, seed, protocol, status FROM cells").fetchall()
    expected = [(m, s, p, "complete") for m, s, p in itertools.product(METHODS, SEEDS, PROTOCOLS)]
    assert sorted(rows) == expected
    for method in METHODS:
        exports = list(runs.glob(f"pretrain/{method}/*/export.pt"))
        dirs = [d for d in (runs / "pretrain" / method).iterdir() if d.is_dir()]
        assert len(exports) == 1 and len(dirs) == 1, (method, exports, dirs)
    # simmim3d trained once: its log has steps 1 and 2 once each (two concurrent pretrainings would append twice)
    (scalars,) = runs.glob("pretrain/simmim3d/*/scalars.jsonl")
    steps = [json.loads(ln)["step"] for ln in scalars.read_text().splitlines() if '"step"' in ln]
    assert sorted(set(steps)) == [1, 2] and steps.count(1) == 1, steps


def sweep_dir(runs: Path) -> Path:
    (d,) = (runs / "hydra" / "multirun").glob("*/*")
    return d


def compose_launcher(name: str, *overrides: str):
    """hydra.launcher as a sweep job sees it (interpolations resolved)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config", overrides=[f"hydra/launcher={name}", "runs_dir=/r", *overrides], return_hydra_config=True
        )
        HydraConfig.instance().set_config(cfg)
        return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


# --- the configs (fast) ---


def test_local_is_the_default_launcher():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")


def test_joblib_runs_two_jobs_at_a_time_by_default():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    launcher = compose_launcher("joblib")
    assert launcher["n_jobs"] == 2 and launcher["prefer"] == "processes"
    assert compose_launcher("joblib", "hydra.launcher.n_jobs=4")["n_jobs"] == 4


@pytest.mark.parametrize("name", ["slurm", "slurm_ddp"])
def test_slurm_launchers_make_a_valid_sbatch_script(name, tmp_path):
    """Every key of the YAML is a parameter submitit knows (it raises on an unknown one), the submitit folder is under
    the sweep dir, and slurm_ddp starts one task that runs torchrun with gpus_per_node processes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmExecutor

    launcher = compose_launcher(name, "hydra.launcher.partition=gpu", "hydra.launcher.account=proj")
    assert launcher["submitit_folder"].startswith("/r/hydra/multirun/")
    inst = instantiate(launcher)
    # the launcher's own translation of its params into submitit's (SlurmLauncher.launch)
    init = {"submitit_folder", "max_num_timeout"}
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name"}
    base |= {"stderr_to_stdout"}
    params = {(k if k in base else f"slurm_{k}"): v for k, v in inst.params.items() if k not in init}
    params = {k.removeprefix("slurm_"): v for k, v in params.items()}
    params["mem"] = f"{params.pop('mem_gb')}GB"
    params["time"] = params.pop("timeout_min")
    params["job_name"] = params.pop("name")
    params["ntasks_per_node"] = params.pop("tasks_per_node")
    ex = SlurmExecutor(folder=tmp_path, max_num_timeout=launcher["max_num_timeout"])
    ex.update_parameters(**params)  # raises on a key sbatch/submitit does not know
    script = ex._make_submission_file_text("python -u -m submitit.core._submit /f", "uid")
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --account=proj" in script
    assert "#SBATCH --ntasks-per-node=1" in script
    if name == "slurm":
        assert "#SBATCH --gpus-per-node=1" in script and "torch.distributed.run" not in script
    else:
        assert "#SBATCH --gpus-per-node=2" in script and "export NPROC_PER_NODE=2" in script
        assert "torch.distributed.run --standalone" in script


def test_slurm_ddp_wrapper_starts_nproc_ranked_copies(tmp_path):
    """The srun_args of slurm_ddp, run as srun would run them (without SLURM): torchrun starts NPROC_PER_NODE copies
    of the job's command, each with its torchrun rank, and each marked as its own submitit task (SLURM_PROCID)."""
    launcher = compose_launcher("slurm_ddp", "hydra.launcher.gpus_per_node=2")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, sys, pathlib\n"
        "keys = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'SLURM_PROCID', 'MASTER_PORT')\n"
        "pathlib.Path(sys.argv[1], os.environ['RANK']).write_text(' '.join(os.environ.get(k, '-') for k in keys))\n"
    )
    env = dict(os.environ, NPROC_PER_NODE="2", SLURM_PROCID="0", OMP_NUM_THREADS="1")
    cmd = [*launcher["srun_args"], sys.executable, str(probe), str(tmp_path)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    seen = {f.name: f.read_text().split() for f in tmp_path.iterdir() if f.name != "probe.py"}
    assert set(seen) == {"0", "1"}
    for rank, (r, world, local, procid, port) in seen.items():
        assert r == rank == local == procid and world == "2" and port != "-"


# --- real sweeps (minutes on 2 cores) ---


@pytest.mark.slow  # four smoke jobs, two at a time: about a minute and a half on 2 cores
def test_joblib_sweep_two_parallel_jobs(data_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    runs = tmp_path / "runs"
    p = sweep(runs, data_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert p.returncode == 0, p.stderr[-4000:]
    assert_sweep_complete(runs)
    assert sorted(q.name for q in sweep_dir(runs).iterdir() if q.is_dir()) == ["0", "1", "2", "3"]


@pytest.mark.slow  # four smoke jobs as submitit local jobs: about two minutes on 2 cores
def test_submitit_local_sweep(data_dir, tmp_path):
    """The submitit launcher path without a cluster: submitit's local executor runs each job as its own process."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    runs = tmp_path / "runs"
    p = sweep(runs, data_dir, "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1")
    assert p.returncode == 0, p.stderr[-4000:]
    assert_sweep_complete(runs)
    d = sweep_dir(runs)
    assert len(list(d.glob(".submitit/*/*_result.pkl"))) == 4
    assert sorted(q.name for q in d.iterdir() if q.is_dir() and q.name.isdigit()) == ["0", "1", "2", "3"]


@pytest.mark.slow  # four smoke jobs on a real 2-core SLURM node: about two minutes
def test_slurm_sweep_runs_each_job_on_the_cluster(slurm_cluster, data_dir, tmp_path):  # noqa: F811
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    runs = tmp_path / "runs"
    p = sweep(
        runs,
        data_dir,
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={slurm_cluster.partition}",
        *SLURM_JOB,
        cluster=slurm_cluster,
    )
    assert p.returncode == 0, p.stderr[-4000:] + "\n" + slurm_cluster.logs()
    assert_sweep_complete(runs)
    d = sweep_dir(runs)
    # one job array of 4 tasks: submitit's logs under the sweep dir, each job ran inside SLURM
    logs = sorted(d.glob(".submitit/*/*_log.out"))
    assert len(logs) == 4, logs
    assert {f.parent.name.rsplit("_", 1)[1] for f in logs} == {"0", "1", "2", "3"}
    jobs = {f.parent.name.split("_")[0] for f in logs}
    assert len(jobs) == 1 and all(j.isdigit() for j in jobs)
    assert slurm_cluster.jobs() == []


@pytest.mark.slow  # one smoke job, trained by 2 processes (gloo on the CPU) under torchrun inside one SLURM task
def test_slurm_ddp_sweep_runs_torchrun_in_one_task(slurm_cluster, data_dir, tmp_path):  # noqa: F811
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    runs = tmp_path / "runs"
    cell = ["-m", "method=simmim3d", "seed=0", "protocol=linear_probe", *FAST]
    p = sweep(
        runs,
        data_dir,
        "hydra/launcher=slurm_ddp",
        f"hydra.launcher.partition={slurm_cluster.partition}",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=2",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=30",
        'hydra.launcher.setup=["export NPROC_PER_NODE=2"]',
        cluster=slurm_cluster,
        sweep=cell,
    )
    assert p.returncode == 0, p.stderr[-4000:] + "\n" + slurm_cluster.logs()
    with sqlite3.connect(runs / "results.sqlite") as con:
        rows = con.execute("SELECT method, seed, protocol, status, world_size FROM cells").fetchall()
    assert rows == [("simmim3d", 0, "linear_probe", "complete", 2)]
    (export,) = runs.glob("pretrain/simmim3d/*/export.pt")
    import torch

    assert torch.load(export, weights_only=True)["meta"]["world_size"] == 2
