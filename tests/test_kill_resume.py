"""Faults lose nothing (issue 30, item 4): a run killed with SIGKILL at any point -- data generation, the
preprocessing cache, pretraining (before and after a checkpoint, mid-checkpoint), the export write, a transfer cell
(before and after its checkpoint), the cell's files, the results-store transaction, the leaderboard and its
publication -- leaves only complete files, and rerunning the same command ends with the stored results of an
uninterrupted run, bit for bit (CPU, fixed seeds, one intra-op thread: see ARGS).

How a kill point is hit, without any hook in the harness:

* ``external``: the run is started in its own session and the test watches the files it makes (a generated volume,
  ``corpus_hashes.json``, ``last.ckpt``, the cell's ``cell.json``); when one appears it SIGKILLs the process group.
* ``inject``: the run is started through a small bootstrap (``kr_boot.py``, written by this module next to a copy of
  the code) that wraps ``os.replace`` / ``os.rename`` or listens to SQLAlchemy's events, and, at the chosen write,
  truncates the half-made temporary file to half its size (what a kill in the middle of writing it leaves) and
  SIGKILLs its own process. These points are too short to hit reliably from outside (an export is written in
  milliseconds), and this way every run hits the same point.

The kill points follow one another as one job would meet them: each rerun of the same command resumes what the
previous one left, and is itself killed at the next point; the last rerun finishes. So each kill is checked for
complete files at once, and the end result is compared with the uninterrupted reference run, exactly (a divergence
introduced by any resume would show in the final metrics); the intermediate products (the generated data's
checksums, the export's weights) are compared too, which points at the stage if they differ.

Every run uses a copy of the code in a temporary folder: ``publish=true`` writes into the code's own
``leaderboards/`` (never this checkout's), and the runs of the module all see one version of the code.

Each trial is written to a Markdown table (``$KILL_RESUME_REPORT``, default ``runs/kill_resume_report.md`` in the
checkout, the git-ignored folder of run outputs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# as tests/test_cli.py makes a run small: the smoke suite, 2 pretraining and 2 transfer steps, the quick budget, CPU
from test_cli import FAST  # noqa: E402

# The machine's threads (two on CI): bench.engine.seed_everything turns on PyTorch's deterministic CPU kernels, without
# which the backward of Swin's relative-position bias gather sums in a thread-dependent order and two uninterrupted
# runs already differ in the last bits (tests/test_engine.py); bit equality after a kill is checked on top of that.
ARGS = ["method=simmim3d", "protocol=finetune", "seed=0", *FAST]
PUBLISH = [*ARGS, "stage=leaderboard", "publish=true"]
SUITE = "smoke"
CELL = "smoke/v3/simmim3d/quick/seg3/finetune/f1/d0/s0"
REPORT = Path(os.environ.get("KILL_RESUME_REPORT", ROOT / "runs" / "kill_resume_report.md"))
CODE = ("bench", "conf", "datasets", "methods", "run_bench.py")

BOOT = r'''
"""Run run_bench.py, SIGKILLing this process at one write named by $KR_KILL (tests/test_kill_resume.py)."""
import fnmatch, os, runpy, signal, sys


def _truncate(src):
    """What a kill in the middle of writing ``src`` leaves: its first half (a folder: its largest file's)."""
    if os.path.isdir(src):
        files = [os.path.join(src, f) for f in os.listdir(src)]
        files = [f for f in files if os.path.isfile(f)]
        if not files:
            return
        src = max(files, key=os.path.getsize)
    with open(src, "r+b") as f:
        f.truncate(os.path.getsize(src) // 2)


def _die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


spec = os.environ.get("KR_KILL")
if spec:
    kind, pattern, nth = spec.split("|")
    nth, seen = int(nth), [0]
    if kind in ("replace", "rename"):  # pathlib's Path.replace/rename call these too
        orig = getattr(os, kind)

        def hooked(src, dst, *a, _orig=orig, **k):
            if fnmatch.fnmatch(os.fspath(dst), pattern):
                seen[0] += 1
                if seen[0] == nth:
                    print(f"[kr_boot] SIGKILL at {kind} {os.fspath(src)} -> {os.fspath(dst)}", flush=True)
                    _truncate(os.fspath(src))
                    _die()
            return _orig(src, dst, *a, **k)

        setattr(os, kind, hooked)
    elif kind == "commit":  # the nth commit of a transaction that ran a statement matching pattern
        import sqlalchemy as sa
        from sqlalchemy import event

        armed = [False]

        @event.listens_for(sa.engine.Engine, "before_cursor_execute")
        def _statement(conn, cursor, statement, parameters, context, executemany):
            if fnmatch.fnmatch(" ".join(statement.split()).lower(), pattern):
                armed[0] = True

        @event.listens_for(sa.engine.Engine, "commit")
        def _commit(conn):
            if armed[0]:
                armed[0] = False
                seen[0] += 1
                if seen[0] == nth:
                    print(f"[kr_boot] SIGKILL before the commit of a transaction with {pattern!r}", flush=True)
                    _die()
    else:
        raise SystemExit(f"kr_boot: unknown kill kind {kind!r}")

sys.argv[0] = "run_bench.py"
sys.path.insert(0, os.getcwd())
runpy.run_path("run_bench.py", run_name="__main__")
'''


# ---------------------------------------------------------------------------------------------- the record


@dataclass
class Trial:
    name: str
    stage: str
    how: str
    left: str = ""
    rerun: str = ""
    equal: str = ""
    seconds: float = 0.0


@dataclass
class Record:
    t0: float = field(default_factory=time.time)
    trials: list[Trial] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def write_report(rec: Record) -> None:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Kill-and-resume trials (issue 30, item 4)",
        "",
        f"Generated by `tests/test_kill_resume.py` on {time.strftime('%Y-%m-%d %H:%M %Z')}. Command of every run "
        f"(from a copy of the code): `run_bench.py {' '.join(ARGS)}` (publication: `... stage=leaderboard "
        f"publish=true`). Kills are SIGKILL. *external*: the test watched the run's files and killed its process "
        f"group; *inject*: a bootstrap wrapping `os.replace`/`os.rename` (temporary file cut to half first) or "
        f"SQLAlchemy's commit event killed the process at that exact write.",
        "",
        "| # | stage | kill point (how hit) | what the kill left | rerun | same results as the uninterrupted run | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, t in enumerate(rec.trials, 1):
        lines.append(
            f"| {i} | {cell(t.stage)} | {cell(t.how)} | {cell(t.left)} | {cell(t.rerun)} | {cell(t.equal)} "
            f"| {t.seconds:.0f} |"
        )
    lines += ["", "## Timings", ""]
    lines += [f"- {k}: {v:.0f} s" for k, v in rec.timings.items()]
    lines += [f"- whole module: {time.time() - rec.t0:.0f} s", "", "## Notes", ""]
    lines += [f"- {n}" for n in rec.notes] or ["- none"]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Env:
    repo: Path  # the copy of the code every run uses
    logs: Path
    record: Record
    n: int = 0

    def env(self, data: Path, kill: str | None = None) -> dict[str, str]:
        env = dict(os.environ, SSLBENCH_DATA=str(data), HYDRA_FULL_ERROR="0", OMP_WAIT_POLICY="PASSIVE")
        env.pop("KR_KILL", None)
        if kill:
            env["KR_KILL"] = kill
        return env

    def log(self) -> Path:
        self.n += 1
        return self.logs / f"run{self.n:02d}.log"

    def run(self, args: list[str], data: Path) -> tuple[int, str]:
        """A run to its end: (exit status, output)."""
        log = self.log()
        with open(log, "w") as out:
            p = subprocess.run(
                [sys.executable, "run_bench.py", *args],
                cwd=self.repo,
                env=self.env(data),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
            )
        return p.returncode, log.read_text()

    def inject(self, args: list[str], data: Path, kill: str) -> str:
        """A run that SIGKILLs itself at the write named by ``kill`` (see BOOT); returns its output."""
        log = self.log()
        with open(log, "w") as out:
            p = subprocess.run(
                [sys.executable, "kr_boot.py", *args],
                cwd=self.repo,
                env=self.env(data, kill),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
            )
        text = log.read_text()
        assert p.returncode == -signal.SIGKILL, f"kill point {kill} not reached (exit {p.returncode}):\n{text[-3000:]}"
        return text

    def kill_when(self, args: list[str], data: Path, seen: Callable[[], str | None], timeout: float = 600) -> str:
        """Start a run in its own session; SIGKILL its process group as soon as ``seen()`` names something."""
        log = self.log()
        with open(log, "w") as out:
            p = subprocess.Popen(
                [sys.executable, "run_bench.py", *args],
                cwd=self.repo,
                env=self.env(data),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            t0 = time.time()
            try:
                while True:
                    what = seen()
                    if what:
                        os.killpg(p.pid, signal.SIGKILL)
                        break
                    if p.poll() is not None:
                        raise AssertionError(f"the run ended (exit {p.returncode}) before the kill point")
                    if time.time() - t0 > timeout:
                        raise AssertionError("the kill point was not reached in time")
                    time.sleep(0.05)
            finally:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        assert p.returncode == -signal.SIGKILL, log.read_text()[-3000:]
        return what


# ---------------------------------------------------------------------------------------------- checks


def is_temp(p: Path) -> bool:
    """An atomic writer's temporary name: ``<name>.<pid>.<hex>.tmp`` (bench.types.temp_sibling) or ``.tmp-*``
    (the NIfTI writer, the preprocessing cache's folders)."""
    return p.name.endswith(".tmp") or p.name.startswith(".tmp-")


def load_file(p: Path) -> None:
    """Raise if ``p`` is not a complete file of its kind."""
    import numpy as np

    name = p.name
    if name.endswith(".json"):
        json.loads(p.read_text())
    elif name.endswith(".jsonl"):
        for ln in p.read_text().splitlines():
            if ln.strip():
                json.loads(ln)
    elif name.endswith((".yaml", ".yml")):
        import yaml

        yaml.safe_load(p.read_text())
    elif name.endswith((".pt", ".ckpt")):
        import torch

        torch.load(p, map_location="cpu", weights_only=True)
    elif name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        np.asarray(nib.load(p).dataobj)
    elif name.endswith(".npy"):
        np.load(p)
    elif name.endswith((".csv", ".csv.gz")):
        import pandas as pd

        pd.read_csv(p)
    elif name.endswith(".png"):
        from PIL import Image

        with Image.open(p) as im:
            im.load()
    elif name.endswith(".md"):
        p.read_text(encoding="utf-8")
    elif name.endswith(".sqlite"):
        assert store_state(p)["integrity"] == "ok"


def check_complete(*roots: Path) -> tuple[list[str], int]:
    """Every file under ``roots`` with a final name loads as its kind (a temp file is skipped: no reader opens it);
    the generated data's manifest, where present, matches every file. Returns the temps left and the count."""
    temps, n, bad = [], 0, []
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            for sub in list(dirnames):
                if is_temp(d / sub):
                    temps.append(str((d / sub).relative_to(root.parent)) + "/")
                    dirnames.remove(sub)
            for f in filenames:
                p = d / f
                if is_temp(p):
                    temps.append(str(p.relative_to(root.parent)))
                    continue
                if "tfevents" in f or f.endswith((".lock", ".log", "-wal", "-shm", "-journal")):
                    continue  # TensorBoard's append-only records, lock files, logs, SQLite's side files
                n += 1
                try:
                    load_file(p)
                except Exception as e:  # noqa: BLE001 - any failure to read it is the finding
                    bad.append(f"{p}: {type(e).__name__}: {str(e)[:200]}")
            if (d / "manifest.json").is_file():
                doc = json.loads((d / "manifest.json").read_text())
                for rel, sha in doc["files"].items():
                    if not (d / rel).is_file() or sha256(d / rel) != sha:
                        bad.append(f"{d / rel}: does not match the manifest that lists it")
    assert not bad, "incomplete files after the kill:\n" + "\n".join(bad)
    return sorted(temps), n


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def store_state(db: Path) -> dict:
    """The store as a reader after the kill sees it, read from a copy (the original, WAL included, is left for the
    rerun exactly as the kill left it)."""
    snap = db.parent / f".snapshot-{os.getpid()}"
    shutil.rmtree(snap, ignore_errors=True)
    snap.mkdir()
    try:
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db}{suffix}").is_file():
                shutil.copy2(f"{db}{suffix}", snap / f"{db.name}{suffix}")
        con = sqlite3.connect(snap / db.name)
        try:
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
            cells = con.execute("SELECT cell_id, status, run_dir FROM cells").fetchall()
            counts = dict(con.execute("SELECT cell_id, COUNT(*) FROM case_metrics GROUP BY cell_id").fetchall())
            attempts = con.execute("SELECT * FROM attempts").fetchall()
        finally:
            con.close()
    finally:
        shutil.rmtree(snap, ignore_errors=True)
    complete = {c for c, s, _ in cells if s == "complete"}
    # a row in the store always has its metric rows and its files; no metric row without its complete cell
    for c, s, run_dir in cells:
        if s == "complete":
            assert counts.get(c, 0) > 0, f"complete cell {c} without metric rows"
            for f in ("metrics.json", "per_case.csv", "cell.json", "config.yaml"):
                assert (Path(run_dir) / f).is_file(), f"complete cell {c} without its {f}"
    assert set(counts) <= complete, f"metric rows of incomplete cells: {set(counts) - complete}"
    return {
        "integrity": integrity,
        "complete": sorted(complete),
        "metric_rows": sum(counts.values()),
        "attempts": len(attempts),
    }


def checkpoint_step(p: Path) -> int | None:
    import torch

    return int(torch.load(p, map_location="cpu", weights_only=True)["step"]) if p.is_file() else None


def metric_rows(db: Path):
    from bench.results import ResultsStore

    store = ResultsStore(db)
    try:
        m = store.metrics(SUITE)
        c = store.cells(SUITE)[["cell_id", "config_hash", "pretrain_hash", "status"]]
    finally:
        store.close()
    keys = ["cell_id", "case_id", "class", "metric"]
    return m.sort_values(keys).reset_index(drop=True), c.sort_values("cell_id").reset_index(drop=True)


def same_results(db: Path, ref_db: Path) -> str:
    """The store's metric rows and cell identities equal the reference's, exactly."""
    import pandas as pd

    got, got_cells = metric_rows(db)
    want, want_cells = metric_rows(ref_db)
    assert len(want) > 0
    pd.testing.assert_frame_equal(got_cells, want_cells)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    return f"yes: {len(got)} metric rows of {len(got_cells)} cell(s) identical (exact)"


def export_state(runs: Path):
    import torch

    (export,) = runs.glob("pretrain/simmim3d/*/export.pt")
    doc = torch.load(export, map_location="cpu", weights_only=True)
    return export, doc["state_dict"], doc["meta"]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def record():
    rec = Record()
    yield rec
    write_report(rec)


@pytest.fixture(scope="module")
def env(tmp_path_factory, record) -> Env:
    base = tmp_path_factory.mktemp("kill_resume")
    repo = base / "repo"
    for name in CODE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            repo.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    (repo / "leaderboards").mkdir()
    (repo / "kr_boot.py").write_text(BOOT)
    logs = base / "logs"
    logs.mkdir()
    return Env(repo, logs, record)


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """One uninterrupted run in a fresh runs folder and a fresh data folder."""
    base = tmp_path_factory.mktemp("reference")
    runs, data = base / "runs", base / "data"
    t0 = time.time()
    rc, out = env.run([*ARGS, f"runs_dir={runs}"], data)
    env.record.timings["uninterrupted reference run (data generation + pretraining + transfer + board)"] = (
        time.time() - t0
    )
    assert rc == 0, out[-3000:]
    assert f"[transfer] {CELL}" in out
    return runs, data


# ---------------------------------------------------------------------------------------------- the trials


@pytest.mark.slow  # minutes of real runs on 2 cores; run by make test-all (CI)
def test_killed_anywhere_in_the_pipeline_resumes_to_the_same_results(env, reference, tmp_path):
    ref_runs, ref_data = reference
    runs, data = tmp_path / "runs", tmp_path / "data"
    args = [*ARGS, f"runs_dir={runs}"]
    smoke = data / "smoke"
    db = runs / "results.sqlite"

    def pre_dir() -> Path | None:
        found = list(runs.glob("pretrain/simmim3d/*/config.json"))
        return found[0].parent if found else None

    def cell_dir() -> Path | None:
        found = list(runs.glob("cells/smoke/simmim3d/quick/*/*/cell.json"))
        return found[0].parent if found else None

    def volumes() -> str | None:
        n = len(list(smoke.glob("*/smoke_*.nii.gz")))
        return f"{n} generated volumes in place" if n >= 3 else None

    def corpus_hashed() -> str | None:
        d = pre_dir()
        return (
            "corpus_hashes.json written (corpus loaded, training about to start)"
            if d and (d / "corpus_hashes.json").is_file()
            else None
        )

    def pre_ckpt() -> str | None:
        d = pre_dir()
        return "pretraining last.ckpt appeared" if d and (d / "last.ckpt").is_file() else None

    def cell_started() -> str | None:
        return "the cell's cell.json appeared" if cell_dir() else None

    def cell_ckpt() -> str | None:
        d = cell_dir()
        return "the cell's last.ckpt appeared" if d and (d / "last.ckpt").is_file() else None

    def left_pretrain() -> str:
        d = pre_dir()
        if d is None:
            return "no pretraining folder"
        step = checkpoint_step(d / "last.ckpt")
        ckpt = f"last.ckpt at step {step}" if step else "no last.ckpt"
        return ckpt + ("; export.pt" if (d / "export.pt").is_file() else "; no export")

    def left_cell() -> str:
        d = cell_dir()
        if d is None:
            return "no cell folder"
        have = [f for f in ("last.ckpt", "best.pt", "metrics.json", "per_case.csv") if (d / f).is_file()]
        step = checkpoint_step(d / "last.ckpt")
        return f"cell folder with {', '.join(have) or 'no checkpoint'}" + (f" (step {step})" if step else "")

    def left_store() -> str:
        if not db.is_file():
            return "no store"
        s = store_state(db)
        return (
            f"store integrity {s['integrity']}, complete cells {len(s['complete'])}, metric rows {s['metric_rows']}, "
            f"attempt rows {s['attempts']}"
        )

    # (stage, how it is hit, external watch or injected kill, what to check and tell about the state it left)
    def after_volumes():
        assert not (smoke / "manifest.json").exists()
        return f"{len(list(smoke.glob('*/smoke_*.nii.gz')))} complete volumes, no manifest (set not valid yet)"

    def after_label_cut():
        assert not (smoke / "manifest.json").exists() and not (smoke / "labelsTr" / "smoke_005.nii.gz").exists()
        return "half-written labelsTr/.tmp-*-smoke_005.nii.gz, no manifest"

    def after_manifest_cut():
        assert not (smoke / "manifest.json").exists()
        return f"all {len(list(smoke.glob('*/smoke_*.nii.gz')))} volumes, half-written manifest temp, no manifest"

    def after_cache_cut():
        entries = [p for p in data.glob("preprocessed/*/smoke/*/*") if not is_temp(p)]
        return f"{len(entries)} complete preprocessed entries, one half-written .tmp-* entry folder"

    def after_early():
        assert pre_dir() is not None and not (pre_dir() / "last.ckpt").exists()
        return left_pretrain()

    def after_ckpt():
        assert checkpoint_step(pre_dir() / "last.ckpt") == 1, "killed later than the first checkpoint"
        return left_pretrain()

    def after_ckpt_cut():
        assert checkpoint_step(pre_dir() / "last.ckpt") == 1  # the cut step-2 checkpoint left step 1's in place
        return "half-written step-2 checkpoint temp; " + left_pretrain()

    def after_export_cut():
        assert not (pre_dir() / "export.pt").exists() and checkpoint_step(pre_dir() / "last.ckpt") == 2
        return "half-written export temp; " + left_pretrain()

    def after_cell_start():
        assert not (cell_dir() / "last.ckpt").exists()
        return left_cell() + "; " + left_store()

    def after_cell_ckpt():
        assert checkpoint_step(cell_dir() / "last.ckpt") == 1, "killed later than the cell's first checkpoint"
        return left_cell() + "; " + left_store()

    def after_metrics_cut():
        assert not (cell_dir() / "metrics.json").exists() and store_state(db)["complete"] == []
        return "half-written metrics.json temp; " + left_cell() + "; " + left_store()

    def after_store_cut():
        s = store_state(db)
        assert s["complete"] == [] and s["metric_rows"] == 0 and (cell_dir() / "per_case.csv").is_file()
        return left_cell() + "; " + left_store()

    def after_board_cut():
        assert store_state(db)["complete"] == [CELL] and not (runs / "leaderboards" / "smoke.md").exists()
        return "half-written smoke.md temp, no board; " + left_store()

    trials = [
        ("data generation", "external: >= 3 volumes written", ("watch", volumes), after_volumes),
        (
            "data generation",
            "inject: writing labelsTr/smoke_005.nii.gz",
            ("inject", "replace|*/smoke/labelsTr/smoke_005.nii.gz|1"),
            after_label_cut,
        ),
        (
            "data generation",
            "inject: writing the data manifest",
            ("inject", "replace|*/smoke/manifest.json|1"),
            after_manifest_cut,
        ),
        (
            "preprocessing cache",
            "inject: renaming the 3rd preprocessed entry into place",
            ("inject", "rename|*/preprocessed/*|3"),
            after_cache_cut,
        ),
        (
            "pretraining, early",
            "external: corpus_hashes.json appeared (before step 1)",
            ("watch", corpus_hashed),
            after_early,
        ),
        (
            "pretraining, after a checkpoint",
            "external: last.ckpt appeared (step 1 of 2)",
            ("watch", pre_ckpt),
            after_ckpt,
        ),
        (
            "pretraining, mid-checkpoint",
            "inject: writing the step-2 last.ckpt",
            ("inject", "replace|*/pretrain/*/last.ckpt|1"),
            after_ckpt_cut,
        ),
        ("export write", "inject: writing export.pt", ("inject", "replace|*/pretrain/*/export.pt|1"), after_export_cut),
        (
            "transfer, before the cell's checkpoint",
            "external: the cell's cell.json appeared",
            ("watch", cell_started),
            after_cell_start,
        ),
        (
            "transfer, after the cell's checkpoint",
            "external: the cell's last.ckpt appeared (step 1 of 2)",
            ("watch", cell_ckpt),
            after_cell_ckpt,
        ),
        (
            "cell files",
            "inject: writing the cell's metrics.json",
            ("inject", "replace|*/cells/*/metrics.json|1"),
            after_metrics_cut,
        ),
        (
            "results store write",
            "inject: SQLite transaction with the cell's metric rows, before its commit",
            ("inject", "commit|insert into case_metrics*|1"),
            after_store_cut,
        ),
        (
            "leaderboard write",
            "inject: writing runs/leaderboards/smoke.md",
            ("inject", "replace|*/leaderboards/smoke.md|1"),
            after_board_cut,
        ),
    ]
    t0 = time.time()
    seen_temps: set[str] = set()
    for stage, how, (kind, what), check in trials:
        t = Trial(name=how, stage=stage, how=how)
        env.record.trials.append(t)
        ts = time.time()
        if kind == "watch":
            seen = env.kill_when(args, data, what)
            t.how = f"{how} [{seen}]"
        else:
            env.inject(args, data, what)
        left = check()
        temps, n = check_complete(runs, data)
        new_temps = sorted(set(temps) - seen_temps)
        seen_temps |= set(temps)
        t.left = f"{left}; {n} files checked loadable" + (f"; new temps: {', '.join(new_temps)}" if new_temps else "")
        t.rerun = "the next row's run (the same command) resumed from here"
        t.equal = "compared at the final rerun"
        t.seconds = time.time() - ts
    env.record.trials[-1].rerun = "the final rerun resumed from here"
    ts = time.time()
    rc, out = env.run(args, data)
    assert rc == 0, out[-3000:]
    temps, n = check_complete(runs, data)
    env.record.timings["pipeline chain: 13 killed runs + final rerun"] = time.time() - t0
    final = Trial(
        name="final",
        stage="final rerun (no kill)",
        how="-",
        left=f"{n} files loadable; temps still there (never read, never cleaned): {len(temps)}",
    )
    env.record.trials.append(final)
    if temps:
        env.record.notes.append(
            "SIGKILL leaves the temporaries of the writes it cut (" + ", ".join(temps) + "); they are never read "
            "(no reader globs them) and `*.tmp` is git-ignored, but no rerun deletes them."
        )
    # every intermediate product and the stored results equal the uninterrupted run's
    ref_manifest = json.loads((ref_data / "smoke" / "manifest.json").read_text())
    assert json.loads((smoke / "manifest.json").read_text()) == ref_manifest, "regenerated data differ"
    ref_export, ref_state, ref_meta = export_state(ref_runs)
    export, state, meta = export_state(runs)
    assert export.parent.name == ref_export.parent.name
    differ = [k for k in ref_state if not state[k].equal(ref_state[k])]
    assert state.keys() == ref_state.keys() and not differ, f"export weights differ: {differ[:5]}"
    # the export's metadata other than the run's own clock: recorded, not asserted (the store holds no loss)
    meta_diff = {k: (ref_meta.get(k), meta.get(k)) for k in ref_meta.keys() | meta.keys() if k != "wall_s"}
    meta_diff = {k: v for k, v in meta_diff.items() if v[0] != v[1]}
    if meta_diff:
        env.record.notes.append(
            f"export metadata differs from the uninterrupted run's (reference, resumed): {meta_diff}"
        )
    assert "[transfer] skip" in out  # the cell was stored by the killed run before the board; not run again
    (per_case,) = runs.glob("cells/**/per_case.csv")
    (ref_per_case,) = ref_runs.glob("cells/**/per_case.csv")
    assert per_case.read_text() == ref_per_case.read_text()
    summary = json.loads((per_case.parent / "metrics.json").read_text())["summary"]
    assert summary == json.loads((ref_per_case.parent / "metrics.json").read_text())["summary"]
    final.equal = (
        "data manifest (sha256 of every volume) equal; export weights equal; per_case.csv and summary equal; "
        + same_results(db, ref_runs / "results.sqlite")
    )
    for log in sorted(runs.glob("**/scalars.jsonl")):
        rows = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
        keys = [(r["step"], tuple(sorted(r))) for r in rows]
        again = sorted({k[0] for k in keys if keys.count(k) > 1})
        env.record.notes.append(
            f"`{log.relative_to(runs)}`: {len(rows)} rows, steps {[r['step'] for r in rows]}"
            + (f"; step(s) {again} logged twice (after the last checkpoint, then again on resume)" if again else "")
        )
    final.rerun = "exit 0; cell skipped as complete, board written"
    final.seconds = time.time() - ts


@pytest.mark.slow  # minutes of real runs on 2 cores; run by make test-all (CI)
def test_killed_while_publishing_republishes_the_same_board(env, reference, tmp_path):
    ref_runs, ref_data = reference
    boards = env.repo / "leaderboards"
    args = [*PUBLISH, f"runs_dir={ref_runs}"]
    ref_db = ref_runs / "results.sqlite"
    before, _ = metric_rows(ref_db)
    t0 = time.time()
    rc, out = env.run(args, ref_data)
    assert rc == 0, out[-3000:]
    ref_board = tmp_path / "published"
    shutil.move(boards, ref_board)
    boards.mkdir()
    trials = [
        ("replace|*/leaderboards/smoke.csv|1", "writing smoke.csv (the board's result rows)"),
        ("replace|*/leaderboards/smoke_comparisons.csv|1", "writing smoke_comparisons.csv"),
        ("replace|*/leaderboards/smoke.md|1", "writing smoke.md (the last file)"),
    ]
    for kill, how in trials:
        t = Trial(name=how, stage="leaderboard publish", how=f"inject: {how}")
        env.record.trials.append(t)
        ts = time.time()
        env.inject(args, ref_data, kill)
        temps, n = check_complete(boards)
        final = sorted(str(p.relative_to(boards)) for p in boards.rglob("*") if p.is_file() and not is_temp(p))
        assert "smoke.md" not in final
        t.left = f"complete files: {', '.join(final) or 'none'}; temps: {', '.join(temps) or 'none'}"
        t.rerun = "the next row's run (the same command) resumed from here"
        t.equal = "compared at the final publish"
        t.seconds = time.time() - ts
    env.record.trials[-1].rerun = "the final publish resumed from here"
    rc, out = env.run(args, ref_data)
    assert rc == 0, out[-3000:]
    check_complete(boards)
    env.record.timings["publish chain: reference publish + 3 killed + final"] = time.time() - t0
    for name in ("smoke.csv", "smoke_comparisons.csv"):
        assert (boards / name).read_bytes() == (ref_board / name).read_bytes(), name

    def body(p: Path) -> list[str]:
        return [ln for ln in p.read_text().splitlines() if not ln.startswith("| generated |")]

    assert body(boards / "smoke.md") == body(ref_board / "smoke.md")
    after, _ = metric_rows(ref_db)
    import pandas as pd

    pd.testing.assert_frame_equal(after, before, check_exact=True)
    env.record.trials.append(
        Trial(
            name="final publish",
            stage="final publish (no kill)",
            how="-",
            left="smoke.md, smoke.csv, smoke_comparisons.csv; temps of the cut writes remain (git-ignored *.tmp)",
            rerun="exit 0",
            equal="smoke.csv and smoke_comparisons.csv byte-identical to an uninterrupted publish; smoke.md "
            "identical but for its `generated` time line; store unchanged",
        )
    )
