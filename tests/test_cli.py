"""End to end through the real command line, on the smoke suite with capped steps."""

from __future__ import annotations

import os
import signal
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = [
    "suite=smoke",
    "suite.budget_caps.pretrain_steps=2",
    "suite.budget_caps.transfer_steps=2",
    "progress=false",
    "budget=quick",
    "device=cpu",
]


def run_bench(args, env_data: Path, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, SSLBENCH_DATA=str(env_data), HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, "run_bench.py", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "arg, known",
    [
        ("method=nosuch", "random"),
        ("suite=nosuch", "smoke"),
        ("budget=nosuch", "quick"),
        ("protocol=fintune", "finetune"),
        ("+experiment=nosuch", "brain_lesion_3d_encoders"),
        ("protocol.segmentation.lr=1", "protocols.finetune.segmentation.lr"),
    ],
)
def test_unknown_name_is_one_line_exit_2(arg, known, data_dir, tmp_path):
    p = run_bench([arg, f"runs_dir={tmp_path}"], data_dir)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and known in lines[0] and "Traceback" not in p.stderr


@pytest.mark.parametrize(
    "arg, says",
    [
        ("sedd=1", "the run config has no option 'sedd'; its options: allow_leakage"),
        (
            "method.config.mask_ration=0.3",
            "method.config has no option 'mask_ration'; its options: leak_stem, mask_patch",
        ),
        (
            "budget.pretrain.stepz=3",
            "budget.pretrain has no option 'stepz'; its options: batch_size, batch_size_2d, steps",
        ),
        ("protocols.finetune.segmentation.lrr=1", "protocols.finetune.segmentation has no option 'lrr'"),
        ("+method.config.mask_ration=0.3", "has no option(s) mask_ration; valid options: leak_stem"),
        ("seed=abc", "seed='abc': expected a non-negative integer"),
        ("progress=maybe", "progress='maybe': expected true or false"),
        ("device=gpu", "device='gpu': expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_option_is_one_line_naming_it_exit_2_and_nothing_written(arg, says, data_dir, tmp_path):
    """Never Hydra's advice to append an unknown key with `+` (after which it is silently ignored), never a
    traceback: one line naming the option and what that level knows, before any data generation or training."""
    runs = tmp_path / "runs"
    p = run_bench([f"runs_dir={runs}", *FAST, arg], data_dir)  # last: FAST sets progress and device too
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and says in lines[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "+sedd" not in p.stderr
    # nothing of the harness's own: no store, no pretraining, no cell (Hydra's log folder may exist)
    assert not runs.exists() or {q.name for q in runs.iterdir()} <= {"hydra"}


def test_bad_method_option_is_one_line_exit_2(data_dir, tmp_path):
    p = run_bench(["method=simmim3d", "+method.config.mask_ration=0.3", f"runs_dir={tmp_path}", *FAST], data_dir)
    assert p.returncode == 2
    assert "mask_ratio" in p.stderr and "Traceback" not in p.stderr


def test_smoke_end_to_end_and_skip_on_rerun(data_dir, tmp_path):
    runs = tmp_path / "runs"
    p = run_bench(["method=simmim3d", f"runs_dir={runs}", *FAST], data_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    con = sqlite3.connect(runs / "results.sqlite")
    cells = con.execute("SELECT protocol, method, status, budget FROM cells ORDER BY protocol").fetchall()
    assert cells == [
        (protocol, "simmim3d", "complete", "quick")
        for protocol in ("finetune", "knn_seg", "linear_probe", "voxel_probe")
    ]
    rows = con.execute("SELECT metric, COUNT(*), MIN(value), MAX(value) FROM case_metrics GROUP BY metric").fetchall()
    by = {r[0]: r[1:] for r in rows}
    # 4 protocols x 2 test cases x 3 foreground classes
    assert set(by) == {"dice", "nsd", "hd95"} and all(v[0] == 24 for v in by.values())
    assert 0.0 <= by["dice"][1] <= by["dice"][2] <= 1.0
    board = (runs / "leaderboards" / "smoke.md").read_text()
    assert "synthetic data" in board and all(p in board for p in ("finetune", "linear_probe", "voxel_probe", "knn_seg"))
    # both cells carry the compute of the one pretraining they transferred, as its export recorded it
    import torch

    (export,) = runs.glob("pretrain/simmim3d/*/export.pt")
    meta = torch.load(export, weights_only=True)["meta"]
    pre = con.execute(
        "SELECT DISTINCT pretrain_hash, pretrain_device, pretrain_wall_s, pretrain_gpu_hours, "
        "pretrain_cpu_hours, device FROM cells"
    ).fetchall()
    assert pre == [(export.parent.name, meta["device"], meta["wall_s"], 0.0, meta["wall_s"] / 3600, meta["device"])]
    assert meta["wall_s"] > 0 and meta["device_type"] == "cpu"
    assert "### Pretraining compute" in board and f"| simmim3d | `{export.parent.name}` |" in board
    run_dirs = list((runs / "cells").rglob("metrics.json"))
    assert len(run_dirs) == 4
    for m in run_dirs:
        # a trained protocol logs its steps; a probe, how its fit ended
        fit = "probe.json" if any(p in m.parent.parent.name for p in ("voxel_probe", "knn_seg")) else "scalars.jsonl"
        for f in ("config.yaml", "per_case.csv", fit, "cell.json"):
            assert (m.parent / f).is_file(), (m, f)
    again = run_bench(["method=simmim3d", f"runs_dir={runs}", *FAST], data_dir)
    assert again.returncode == 0
    assert again.stdout.count("[transfer] skip") == 4 and "cached export" in again.stdout
    # the export deleted (disk freed, or another machine writing to the same store): every cell is complete, so the
    # rerun does not pretrain again only to skip them all
    shutil.rmtree(export.parent)
    gone = run_bench(["method=simmim3d", f"runs_dir={runs}", *FAST], data_dir)
    assert gone.returncode == 0, gone.stderr[-3000:]
    assert "not pretrained again" in gone.stdout and "[transfer] smoke/" not in gone.stdout, gone.stdout
    assert not export.parent.exists()
    status = run_bench(["method=simmim3d", f"runs_dir={runs}", *FAST, "stage=status"], data_dir)
    assert status.returncode == 0 and "not needed (no export, but every cell is complete)" in status.stdout, status
    # but a cell the store lacks (finetune at transfer seed 1) needs the encoder: it pretrains, then runs that one
    more = run_bench(["method=simmim3d", f"runs_dir={runs}", *FAST, "protocol=finetune", "seed=1"], data_dir)
    assert more.returncode == 0, more.stderr[-3000:]
    assert export.is_file() and "not pretrained again" not in more.stdout
    assert con.execute("SELECT COUNT(*) FROM cells WHERE seed = 1").fetchone()[0] == 1


@pytest.mark.slow  # minutes of real training on 2 cores; run by make test-all (CI)
def test_kill_during_pretraining_resumes(data_dir, tmp_path):
    runs = tmp_path / "runs"
    args = ["method=simmim3d", "stage=pretrain", f"runs_dir={runs}", "suite.budget_caps.pretrain_steps=8", *FAST[2:]]
    env = dict(os.environ, SSLBENCH_DATA=str(data_dir))
    proc = subprocess.Popen(
        [sys.executable, "run_bench.py", "suite=smoke", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    ckpts: list[Path] = []
    while time.time() < deadline and not ckpts:
        ckpts = list(runs.glob("pretrain/simmim3d/*/last.ckpt"))
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpts, "no checkpoint written during pretraining"
    run_dir = ckpts[0].parent
    assert not (run_dir / "export.pt").exists()
    p = run_bench(["suite=smoke", *args], data_dir)
    assert p.returncode == 0, p.stderr[-2000:]
    import json

    steps = [json.loads(ln)["step"] for ln in (run_dir / "scalars.jsonl").read_text().splitlines()]
    assert steps[-1] == 8 and (run_dir / "export.pt").is_file()
    # the rerun continued after the checkpoint instead of starting at step 1 again
    assert steps.count(1) == 1, steps


@pytest.mark.slow  # minutes of real training on 2 cores; run by make test-all (CI)
def test_resumed_cell_records_the_compute_of_the_interrupted_run(data_dir, tmp_path):
    import torch

    runs = tmp_path / "runs"
    args = ["method=random", "protocol=finetune", f"runs_dir={runs}", *FAST]
    assert run_bench(args, data_dir).returncode == 0
    db = runs / "results.sqlite"
    # as if the first process had trained for 1000 s and died during the test evaluation: its checkpoint is at
    # the last step, and the store has no row for the cell
    (ckpt,) = runs.glob("cells/smoke/random/quick/*finetune*/*/last.ckpt")
    ck = torch.load(ckpt, weights_only=True)
    ck["history"][-1]["wall_s"] = 1000.0
    torch.save(ck, ckpt)
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM case_metrics")
        con.execute("DELETE FROM cells")
    p = run_bench(args, data_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    ((wall, cpu_h),) = sqlite3.connect(db).execute("SELECT wall_s, cpu_hours FROM cells").fetchall()
    assert 1000.0 < wall < 1300.0 and cpu_h == pytest.approx(wall / 3600)


@pytest.mark.slow  # minutes of real training on 2 cores; run by make test-all (CI)
def test_random_baseline_runs_without_pretraining(data_dir, tmp_path):
    runs = tmp_path / "runs"
    p = run_bench(["method=random", "protocol=linear_probe", f"runs_dir={runs}", *FAST], data_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    con = sqlite3.connect(runs / "results.sqlite")
    assert con.execute("SELECT method, protocol FROM cells").fetchall() == [("random", "linear_probe")]
    assert con.execute("SELECT pretrain_device, pretrain_wall_s, pretrain_cpu_hours FROM cells").fetchall() == [
        (None, None, None)
    ]
    exports = list(runs.glob("pretrain/random/*/export.pt"))
    assert len(exports) == 1 and not list(runs.glob("pretrain/random/*/scalars.jsonl"))


def test_external_without_checkpoint_is_one_line_exit_2(data_dir, tmp_path):
    p = run_bench(["method=external", "stage=pretrain", f"runs_dir={tmp_path}", *FAST], data_dir)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "checkpoint" in p.stderr and "Traceback" not in p.stderr


def test_bare_method_options_become_method_config_overrides():
    from bench.cli import bare_method_options

    got = bare_method_options(["method=external", "checkpoint=/x/model_swinvit.pt", "format=asa", "seed=0"])
    assert got == [
        "method=external",
        "++method.config.checkpoint=/x/model_swinvit.pt",
        "++method.config.format=asa",
        "seed=0",
    ]
    # top-level keys and other methods' options are left to Hydra (which rejects what it does not know)
    assert bare_method_options(["method=simmim3d", "checkpoint=/x", "mask_ratio=0.6", "seed=1"]) == [
        "method=simmim3d",
        "checkpoint=/x",
        "++method.config.mask_ratio=0.6",
        "seed=1",
    ]
    assert bare_method_options(["mask_ratio=0.6"]) == ["++method.config.mask_ratio=0.6"]  # default method simmim3d


def test_an_experiment_keeps_its_own_budget():
    """Without budget= the command line gets the machine's default budget, but an experiment pins its own: a default
    appended to the command line would win over the experiment's `override /budget` by Hydra's precedence."""
    from bench.cli import preflight
    from bench.plan import compose

    assert any(a.startswith("budget=") for a in preflight(["method=random"]))
    args = preflight(["+experiment=brain_lesion_3d_encoders"])
    assert not any(a.startswith("budget=") for a in args)
    assert compose(args).budget.name == "quick"


def test_external_checkpoint_short_form_end_to_end(data_dir, tmp_path):
    """``method=external checkpoint=PATH format=bench`` loads our own export and transfers it."""
    import torch

    from bench.backbones import build_backbone
    from bench.export import save_export

    bb = build_backbone("swin_unetr_tiny", num_heads=(1, 2, 4, 8))  # as conf/backbone/swin_unetr_tiny.yaml builds it
    save_export(bb, tmp_path / "enc.pt", {"method": "random"})
    p = run_bench(
        [
            "method=external",
            f"checkpoint={tmp_path / 'enc.pt'}",
            "format=bench",
            "stage=pretrain",
            f"runs_dir={tmp_path / 'runs'}",
            *FAST,
        ],
        data_dir,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    exports = list((tmp_path / "runs" / "pretrain" / "external").glob("*/export.pt"))
    assert len(exports) == 1
    state = torch.load(exports[0], weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in bb.state_dict().items())


def test_bad_real_data_is_one_error_before_training_and_nothing_is_stored(data_dir, tmp_path):
    """A user's BTCV copy with a 4D image where 3D is expected, a label of another shape and a truncated file:
    exit 2, one line naming each file and the problem, no pretraining started and no results store written."""
    import nibabel as nib
    import numpy as np

    root = tmp_path / "BTCV"
    img, lab = root / "RawData" / "Training" / "img", root / "RawData" / "Training" / "label"
    img.mkdir(parents=True)
    lab.mkdir(parents=True)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    for i in range(1, 41):
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), affine), img / f"img{i:04d}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), affine), lab / f"label{i:04d}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.int16), affine), img / "img0001.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 5), np.uint8), affine), lab / "label0002.nii.gz")
    gz = img / "img0003.nii.gz"
    gz.write_bytes(gz.read_bytes()[:-20])
    runs = tmp_path / "runs"
    p = run_bench(["suite=btcv", "method=random", f"data.root={root}", f"runs_dir={runs}", "progress=false"], data_dir)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for name in ("img0001.nii.gz", "label0002.nii.gz", "img0003.nii.gz"):
        assert name in lines[0], lines[0]
    assert not (runs / "results.sqlite").exists() and not (runs / "pretrain").exists()


@pytest.mark.parametrize("bad", ["abc", "-1"])
def test_bad_pretrain_seed_is_one_line_exit_2(bad, data_dir, tmp_path):
    p = run_bench([f"pretrain_seed={bad}", f"runs_dir={tmp_path}", *FAST], data_dir)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "pretrain_seed" in lines[0] and "tied" in lines[0] and "Traceback" not in p.stderr
