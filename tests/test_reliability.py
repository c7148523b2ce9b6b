"""The reliability battery: bad inputs and faults a new user meets, each through the real entry point.

Every case asserts the user's view: exit code 2, exactly one line on stderr that starts with ``error:`` and names the
culprit (the option, file, row or column) and what is wrong, no traceback, and nothing written: no run directory,
no pretraining, no results store, no generated data, not even Hydra's own log folder. The command line runs
in-process (``bench.cli.main`` as ``run_bench.py`` calls it), which is what ``python run_bench.py ...`` runs, at a
fraction of a subprocess's start-up; the slow faults (kill -9 and resume) are in tests/test_kill_resume.py.
docs/reliability.md lists every case with the message a user sees.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cli import FAST  # the smoke suite, 2 + 2 steps, quick budget, CPU: as the CLI tests run

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    err: str
    out: str

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


def run_cli(args: list[str], data: Path) -> Result:
    """``python run_bench.py ARGS`` in this process, with the generated-data cache at ``data``."""
    import run_bench
    from bench.cli import main

    old_argv, old_env = sys.argv, os.environ.get("SSLBENCH_DATA")
    sys.argv = ["run_bench.py", *args]
    os.environ["SSLBENCH_DATA"] = str(data)
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            run_bench.register()
            try:
                code = main(run_bench.register)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old_argv
        if old_env is None:
            os.environ.pop("SSLBENCH_DATA", None)
        else:
            os.environ["SSLBENCH_DATA"] = old_env
    return Result(code, err.getvalue(), out.getvalue())


def files_under(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


def assert_refused(r: Result, *words: str, code: int = 2) -> None:
    assert r.code == code, (r.code, r.err[-3000:])
    assert "Traceback" not in r.err, r.err[-3000:]
    assert len(r.lines) == 1 and r.lines[0].startswith("error: "), r.err[-3000:]
    for w in words:
        assert w in r.lines[0], (w, r.lines[0])
    if log := os.environ.get("SSLBENCH_RELIABILITY_LOG"):  # docs/reliability.md is made from this record
        case = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::", 1)[-1].removesuffix(" (call)")
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"case": case, "code": r.code, "message": r.lines[0]}) + "\n")


# ------------------------------------------------------------------------------------------------------ options
# (arguments after FAST, words the one line must hold)
OPTIONS: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("unknown method", ["method=nosuch"], ("nosuch", "random")),
    ("unknown suite", ["suite=nosuch"], ("nosuch", "smoke")),
    ("unknown budget", ["budget=nosuch"], ("nosuch", "quick")),
    ("unknown backbone", ["backbone=nosuch"], ("nosuch", "swin_unetr_tiny")),
    ("unknown protocol", ["protocol=fintune"], ("fintune", "finetune")),
    ("unknown protocol in a list", ["protocol=[finetune,nosuch]"], ("nosuch", "finetune")),
    ("protocol the suite lacks", ["protocol=knn"], ("protocol=knn", "smoke", "finetune")),
    ("unknown experiment", ["+experiment=nosuch"], ("nosuch", "brain_lesion_3d_encoders")),
    ("unknown stage", ["stage=pretrian"], ("pretrian", "validate")),
    ("unknown task", ["task=nosuch"], ("task", "nosuch")),
    ("misspelled top-level key", ["sed=0"], ("sed",)),
    ("misspelled budget key", ["budget.pretrain.stepz=3"], ("stepz", "steps")),
    ("misspelled protocol option", ["protocols.finetune.segmentation.lrr=1"], ("lrr",)),
    ("misspelled method option", ["+method.config.mask_ration=0.3"], ("mask_ration", "mask_ratio")),
    ("bare misspelled method option", ["mask_ration=0.3"], ("mask_ration",)),
    ("seed not a number", ["seed=abc"], ("seed", "abc")),
    ("seed negative", ["seed=-1"], ("seed", "-1")),
    ("seed fractional", ["seed=1.5"], ("seed", "1.5")),
    ("pretrain_seed not a number", ["pretrain_seed=abc"], ("pretrain_seed", "tied")),
    ("pretrain_seed negative", ["pretrain_seed=-2"], ("pretrain_seed",)),
    ("label fraction above 1", ["label_fraction=2"], ("label_fraction", "2")),
    ("label fraction zero", ["label_fraction=0"], ("label_fraction",)),
    ("label fraction not a number", ["label_fraction=abc"], ("label_fraction", "abc")),
    ("label fraction the task lacks", ["label_fraction=0.3"], ("label_fraction", "0.3")),
    ("progress not a boolean", ["progress=maybe"], ("progress", "maybe")),
    ("publish not a boolean", ["publish=maybe"], ("publish", "maybe")),
    ("device unknown", ["device=gpu"], ("device", "gpu")),
    ("device index not a number", ["device=cuda:abc"], ("device", "cuda:abc")),
    ("device CUDA without a GPU", ["device=cuda"], ("device", "cuda")),
    ("pretraining steps negative", ["budget.pretrain.steps=-1"], ("budget.pretrain.steps", "-1")),
    ("pretraining steps not a number", ["budget.pretrain.steps=abc"], ("budget.pretrain.steps", "abc")),
    ("pretraining batch zero", ["budget.pretrain.batch_size=0"], ("budget.pretrain.batch_size", "0")),
    ("transfer batch negative", ["budget.transfer.batch_size=-2"], ("budget.transfer.batch_size",)),
    ("ROI of the wrong length", ["suite.budget_caps.roi=[64,64]"], ("roi", "3 whole numbers")),
    ("ROI not a multiple of the patch grid", ["suite.budget_caps.roi=[60,64,64]"], ("roi", "60", "multiple of 32")),
    ("ROI of a budget not a multiple", ["--raw", "suite=brain", "budget.roi=[48,64,64]"], ("budget.roi", "48")),
    ("step cap negative", ["suite.budget_caps.pretrain_steps=-3"], ("suite.budget_caps.pretrain_steps", "-3")),
    ("workers negative", ["budget.num_workers=-1"], ("budget.num_workers",)),
    ("threads zero", ["budget.threads=0"], ("budget.threads",)),
    ("launcher unknown", ["hydra/launcher=nosuch"], ("nosuch", "joblib")),
    ("mask patch odd", ["method=simmim3d", "method.config.mask_patch=15"], ("mask_patch", "15")),
    ("method option of the wrong type", ["method=simmim3d", "method.config.mask_ratio=abc"], ("mask_ratio", "abc")),
    ("method option out of range", ["method=simmim3d", "method.config.mask_ratio=1.5"], ("mask_ratio", "1.5")),
    ("method option of the wrong type (bool)", ["method=simmim3d", "method.config.leak_stem=perhaps"], ("leak_stem",)),
    ("training option misspelled", ["method.train.lrr=1"], ("lrr",)),
    ("training option of the wrong type", ["method.train.lr=fast"], ("lr", "fast")),
    ("optimizer unknown", ["method.train.optimizer=adam"], ("optimizer", "adam")),
    ("no_decay given as a string", ["method.train.no_decay=1d"], ("no_decay",)),
    ("protocol option of the wrong type", ["protocols.finetune.segmentation.lr=fast"], ("lr", "fast")),
    ("leaderboard alpha out of range", ["stage=leaderboard", "leaderboard.alpha=2"], ("alpha", "2")),
    ("leaderboard baseline unknown", ["stage=leaderboard", "leaderboard.baseline=nosuch"], ("baseline", "nosuch")),
    ("suite version not a number", ["stage=leaderboard", "suite_version=abc"], ("suite_version", "abc")),
    ("suite version that never was", ["stage=leaderboard", "suite_version=99"], ("suite_version", "99")),
    ("external without a checkpoint", ["method=external", "stage=pretrain"], ("checkpoint",)),
    ("external format unknown", ["method=external", "format=nosuch"], ("format", "nosuch", "swinunetr_ssl")),
    (
        "external checkpoint missing",
        ["method=external", "checkpoint=/nonexistent.pt"],
        ("/nonexistent.pt", "not exist"),
    ),
    ("external checkpoint a folder", ["method=external", "checkpoint=/tmp"], ("/tmp", "directory")),
    ("corpus labels the corpus lacks", ["--raw", "method=supervised", "suite=lits"], ("supervised", "lits")),
    ("2D method on a 3D suite", ["method=dino"], ("dino", "2D", "3D")),
    ("leaderboard bayesian not a boolean", ["stage=leaderboard", "leaderboard.bayesian=maybe"], ("bayesian",)),
    ("margin negative", ["stage=leaderboard", "+leaderboard.margins.dice=-0.1"], ("margins.dice",)),
    ("allow_leakage not a boolean", ["allow_leakage=maybe"], ("allow_leakage", "maybe")),
    ("results backend unknown", ["results=nosuch"], ("results", "nosuch")),
]


@pytest.mark.parametrize("args, words", [pytest.param(a, w, id=i) for i, a, w in OPTIONS])
def test_bad_option(args, words, tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    base = FAST if args[0] != "--raw" else ["progress=false", "device=cpu"]
    r = run_cli([*base, f"runs_dir={runs}", *[a for a in args if a != "--raw"]], data)
    assert_refused(r, *words)
    assert files_under(runs) == [] and files_under(data) == []


# ------------------------------------------------------------------------------------------------ results files
# A real published file (leaderboards/smoke.csv, 132 rows) with one thing wrong; `python -m bench.tools.results
# import` must name the file, the line and what is wrong, and leave the store as it was (here: not created).
PUBLISHED = ROOT / "leaderboards" / "smoke.csv"
# brain v1's record keeps the classification predictions (version 2's board is segmentation only)
WITH_PREDICTIONS = ROOT / "leaderboards" / "brain_v1.csv"  # and brain_v1_predictions.csv.gz beside it


def run_import(args: list[str]) -> Result:
    from bench.tools.results import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return Result(code, err.getvalue(), out.getvalue())


def edit_csv(src: Path, dst: Path, line: int, column: str | None, value: str | None) -> Path:
    """``dst``: ``src`` with line ``line`` (1 = header) changed: its ``column`` set to ``value``; ``column`` None
    repeats the line; ``value`` None drops the column from every line."""
    import pandas as pd

    rows = pd.read_csv(src, dtype=str, keep_default_na=False)
    i = line - 2
    if column is None:
        rows = pd.concat([rows.iloc[: i + 1], rows.iloc[i : i + 1], rows.iloc[i + 1 :]], ignore_index=True)
    elif value is None:
        rows = rows.drop(columns=[column])
    else:
        rows.loc[i, column] = value
    rows.to_csv(dst, index=False)
    return dst


RESULT_EDITS: list[tuple[str, int, str | None, str | None, tuple[str, ...]]] = [
    ("value inf", 5, "value", "inf", ("line 5", "inf", "not a finite number")),
    ("value -inf", 6, "value", "-inf", ("line 6", "not a finite number")),
    ("value nan", 7, "value", "nan", ("line 7", "nan")),
    ("value below the range", 8, "value", "-5", ("line 8", "-5", "outside [0, 1]")),
    ("value above the range", 9, "value", "1.5", ("line 9", "1.5", "outside [0, 1]")),
    ("value not a number", 10, "value", "abc", ("line 10", "abc", "not a number")),
    ("value empty", 11, "value", "", ("line 11", "not a number")),
    ("hd95 negative", 12, "metric", "hd95", ()),  # replaced below: a dice row relabelled stays in range
    ("class fractional", 13, "class", "1.5", ("line 13", "class", "1.5", "whole number")),
    ("class not a number", 14, "class", "x", ("line 14", "class", "'x'")),
    ("seed fractional", 15, "seed", "0.5", ("line 15", "seed", "whole number")),
    ("seed empty", 16, "seed", "", ("line 16", "seed", "empty")),
    ("label fraction not a number", 17, "label_fraction", "half", ("line 17", "label_fraction", "half")),
    ("case id empty", 18, "case_id", "", ("line 18", "case_id", "empty")),
    ("metric empty", 19, "metric", "", ("line 19", "metric", "empty")),
    ("row repeated", 20, None, "", ("line 21", "repeats the row at line 20")),
    ("suite that does not exist", 22, "suite", "nosuch", ("line 22", "'nosuch'", "not a registered suite")),
    ("rows of a cell disagree", 23, "method", "dino", ("disagree", "method")),
    ("a column missing", 2, "value", None, ("lacks the column", "value")),
]
RESULT_EDITS = [e for e in RESULT_EDITS if e[0] != "hd95 negative"] + [
    ("metric hd95 negative", 12, "value", "-0.5", ("line 12", "-0.5", "outside")),
]


@pytest.mark.parametrize("line, column, value, words", [pytest.param(*e[1:], id=e[0]) for e in RESULT_EDITS])
def test_bad_published_csv(line, column, value, words, tmp_path):
    bad = edit_csv(PUBLISHED, tmp_path / "smoke.csv", line, column, value)
    store = tmp_path / "runs" / "results.sqlite"
    r = run_import(["import", str(bad), "--store", str(store)])
    assert_refused(r, str(bad), *words)
    assert not store.exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


RESULT_FILES: list[tuple[str, Callable[[Path], list[str]], tuple[str, ...]]] = [
    ("no such file", lambda d: [str(d / "nope.csv")], ("nope.csv", "no such file")),
    ("a directory", lambda d: [str(d)], ("is a directory",)),
    ("an empty file", lambda d: [str(_write(d / "e.csv", b""))], ("e.csv", "not a readable CSV")),
    ("binary garbage", lambda d: [str(_write(d / "g.csv", os.urandom(2000)))], ("g.csv",)),
    ("a CSV of something else", lambda d: [str(_write(d / "o.csv", b"a,b\n1,2\n"))], ("o.csv", "lacks the column")),
    ("only a comparisons file", lambda d: [str(_write(d / "x_comparisons.csv", b"a\n1\n"))], ("no published CSV",)),
]


@pytest.mark.parametrize("make, words", [pytest.param(m, w, id=i) for i, m, w in RESULT_FILES])
def test_bad_results_file(make, words, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    store = tmp_path / "runs" / "results.sqlite"
    r = run_import(["import", *make(d), "--store", str(store)])
    assert_refused(r, *words)
    assert not store.exists()


def _brain_with(tmp_path: Path, damage: Callable[[bytes], bytes]) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    csv = d / "brain.csv"
    csv.write_bytes(WITH_PREDICTIONS.read_bytes())
    preds = WITH_PREDICTIONS.with_name("brain_v1_predictions.csv.gz")
    # renamed beside the renamed CSV: the importer reads <stem>_predictions.csv.gz
    (d / "brain_predictions.csv.gz").write_bytes(damage(preds.read_bytes()))
    return csv


@pytest.mark.parametrize(
    "damage, words",
    [
        pytest.param(lambda b: b[: len(b) // 2], ("brain_predictions.csv.gz", "not a readable gzip"), id="truncated"),
        pytest.param(lambda b: b"not gzip at all", ("brain_predictions.csv.gz", "not a readable gzip"), id="not-gzip"),
        pytest.param(
            lambda b: gzip.compress(gzip.decompress(b).replace(b",pred_score,0.", b",pred_score,7.", 1)),
            ("brain_predictions.csv.gz", "pred_score", "outside [0, 1]"),
            id="score-out-of-range",
        ),
    ],
)
def test_bad_predictions_file(damage, words, tmp_path):
    csv = _brain_with(tmp_path, damage)
    store = tmp_path / "runs" / "results.sqlite"
    r = run_import(["import", str(csv), "--store", str(store)])
    assert_refused(r, *words)
    assert not store.exists()


@pytest.mark.parametrize(
    "make_store, words",
    [
        pytest.param(lambda d: str(_write(d / "s.sqlite", b"plain text, not a database")), ("s.sqlite",), id="text"),
        pytest.param(lambda d: str(d), ("not",), id="directory"),
        pytest.param(lambda d: "ftp://host/results", ("ftp",), id="scheme"),
        pytest.param(lambda d: str(_write(d / "f", b"x") / "results.sqlite"), ("results.sqlite",), id="under-a-file"),
    ],
)
def test_bad_store_for_import(make_store, words, tmp_path):
    r = run_import(["import", str(PUBLISHED), "--store", make_store(tmp_path)])
    assert_refused(r, *words)


def test_a_good_import_still_works(tmp_path):
    """The control: the unedited file imports, so the refusals above are about the edit, not the file."""
    store = tmp_path / "runs" / "results.sqlite"
    r = run_import(["import", str(PUBLISHED), "--store", str(store)])
    assert r.code == 0, r.err
    from bench.results import ResultsStore

    assert len(ResultsStore(store).metrics("smoke")) == 132


# ------------------------------------------------------------------------------------- results at store time
def _cell(cell_id: str = "smoke/v3/random/quick/seg3/finetune/f1/d0/s0") -> dict:
    return {
        "cell_id": cell_id,
        "config_hash": "h",
        "suite": "smoke",
        "suite_version": 3,
        "task": "seg3",
        "method": "random",
        "protocol": "finetune",
        "label_fraction": 1.0,
        "draw": 0,
        "pretrain_seed": 0,
        "seed": 0,
        "budget": "quick",
        "git_sha": "x",
    }


@pytest.mark.parametrize(
    "metric, value, words",
    [
        ("dice", float("nan"), ("nan", "failed")),
        ("dice", float("inf"), ("inf",)),
        ("nsd", -0.1, ("outside [0, 1]",)),
        ("hd95", float("inf"), ("inf",)),
        ("auroc", 2.0, ("outside [0, 1]",)),
        ("some_new_metric", float("nan"), ("nan",)),
    ],
)
def test_a_cell_with_a_non_finite_or_out_of_range_metric_is_not_stored(metric, value, words, tmp_path):
    from bench.results import ResultsStore, ResultValueError

    store = ResultsStore(tmp_path / "r.sqlite")
    rows = [{"case": "c1", "class": 1, "metric": metric, "value": 0.5 if metric != "hd95" else 3.0}]
    rows.append({"case": "c2", "class": 2, "metric": metric, "value": value})
    with pytest.raises(ResultValueError) as e:
        store.write_cell(_cell(), rows)
    assert "c2" in str(e.value) and all(w in str(e.value) for w in words) and "\n" not in str(e.value)
    assert store.cell_ids() == set()


def test_a_leaderboard_over_a_non_finite_value_is_refused(tmp_path):
    """A store written before the checks (or edited by hand): the board is not rendered over it."""
    import sqlite3

    from bench.results import ResultsStore

    path = tmp_path / "runs" / "results.sqlite"
    r = run_import(["import", str(PUBLISHED), "--store", str(path)])
    assert r.code == 0, r.err
    ResultsStore(path).close()
    with sqlite3.connect(path) as con:
        con.execute("UPDATE case_metrics SET value = 'Infinity' WHERE rowid = 3")
        con.execute("UPDATE case_metrics SET value = 1e999 WHERE rowid = 3")
    out = tmp_path / "boards"
    res = run_cli(
        ["stage=leaderboard", "suite=smoke", f"results.url={path}", f"runs_dir={tmp_path / 'runs'}", "progress=false"],
        tmp_path / "data",
    )
    assert_refused(res, "inf", "the board was not rendered")
    assert not out.exists() and not (tmp_path / "runs" / "leaderboards").exists()


# -------------------------------------------------------------------------------------------------- checkpoints
def _checkpoint_cases():
    import test_checkpoint_errors as ce

    return [pytest.param(make, problem, id=make.__name__) for make, problem in ce.BAD]


@pytest.mark.parametrize("make, problem", _checkpoint_cases())
def test_bad_checkpoint_through_the_command_line(make, problem, tmp_path):
    ckpt = tmp_path / "released.pt"
    make(ckpt)
    runs, data = tmp_path / "runs", tmp_path / "data"
    r = run_cli([*FAST, "method=external", f"checkpoint={ckpt}", "format=bench", f"runs_dir={runs}"], data)
    assert_refused(r, str(ckpt), problem)
    assert "weights_only" not in r.err
    assert files_under(runs) == [] and files_under(data) == []


def test_a_checkpoint_of_another_format_names_the_keys(tmp_path):
    import torch

    from bench.backbones import build_backbone
    from bench.export import save_export

    ckpt = tmp_path / "enc.pt"
    save_export(build_backbone("swin_unetr_tiny", num_heads=(1, 2, 4, 8)), ckpt, {"method": "random"})
    torch.load(ckpt, weights_only=True)  # a valid file: only the format is wrong
    runs, data = tmp_path / "runs", tmp_path / "data"
    r = run_cli([*FAST, "method=external", f"checkpoint={ckpt}", "format=swinunetr_ssl", f"runs_dir={runs}"], data)
    assert_refused(r, str(ckpt))
    assert files_under(runs) == []


# --------------------------------------------------------------------------------------------------- filesystem
@pytest.mark.parametrize(
    "make, words",
    [
        pytest.param(
            lambda d: [f"runs_dir={_write(d / 'afile', b'x')}"], ("afile", "not a folder"), id="runs-dir-a-file"
        ),
        pytest.param(
            lambda d: [f"runs_dir={_write(d / 'afile', b'x') / 'runs'}"],
            ("afile", "not a folder"),
            id="runs-under-a-file",
        ),
        pytest.param(lambda d: ["runs_dir=/proc/sslbench-runs"], ("/proc/sslbench-runs",), id="runs-dir-unwritable"),
        pytest.param(
            lambda d: [f"runs_dir={d / 'runs'}", "data.cache_dir=/proc/sslbench-data"],
            ("/proc/sslbench-data",),
            id="data-dir-unwritable",
        ),
        pytest.param(
            lambda d: [f"runs_dir={d / 'runs'}", f"data.cache_dir={_write(d / 'dfile', b'x')}"],
            ("dfile", "not a folder"),
            id="data-dir-a-file",
        ),
        pytest.param(
            lambda d: [f"runs_dir={d / 'runs'}", "results.url=/proc/sslbench.sqlite"],
            ("/proc/sslbench.sqlite",),
            id="store-unwritable",
        ),
        pytest.param(
            lambda d: [f"runs_dir={d / 'runs'}", f"results.url={d}"], ("results.url", "directory"), id="store-a-folder"
        ),
    ],
)
def test_unusable_folder(make, words, tmp_path):
    args = make(tmp_path)
    before = files_under(tmp_path)
    r = run_cli([*FAST, *args], tmp_path / "data")
    assert_refused(r, *words)
    assert files_under(tmp_path) == before


# --------------------------------------------------------------------------------------------------------- data
# A BTCV download as its users have it (RawData/Training/{img,label}, tests/test_data_values.py builds a tiny valid
# one) with one file broken; `stage=validate suite=btcv data.root=...` names that file and its problem.
def _btcv_case(break_it: Callable[[Path, Path], None]):
    def make(root: Path) -> Path:
        import test_data_values as dv

        img, lab = dv.make_btcv(root)
        break_it(img, lab)
        return root

    return make


def _nan(img: Path, lab: Path) -> None:
    import numpy as np
    import test_data_values as dv

    a = dv.ct(1).astype(np.float32)
    a[1, 1, 1] = np.nan
    dv.write_nii(img / "img0001.nii.gz", a)


def _arr(name: str, make_array: Callable[[], object], folder: str = "img"):
    def brk(img: Path, lab: Path) -> None:
        import test_data_values as dv

        dv.write_nii((img if folder == "img" else lab) / name, make_array())

    return brk


def _bytes(name: str, data: Callable[[bytes], bytes], folder: str = "img"):
    def brk(img: Path, lab: Path) -> None:
        p = (img if folder == "img" else lab) / name
        p.write_bytes(data(p.read_bytes()))

    return brk


def _np():
    import numpy as np

    return np


def _dv():
    import test_data_values as dv

    return dv


DATA: list[tuple[str, Callable[[Path, Path], None], tuple[str, ...]]] = [
    ("NaN voxel", _nan, ("img0001.nii.gz", "non-finite")),
    ("inf voxel", _arr("img0002.nii.gz", lambda: _dv().ct(2).astype("float32") * _np().inf), ("img0002.nii.gz",)),
    ("constant image", _arr("img0003.nii.gz", lambda: _np().full(_dv().SHAPE, 7, "int16")), ("img0003", "constant")),
    ("4D image", _arr("img0004.nii.gz", lambda: _np().stack([_dv().ct(4)] * 2, -1)), ("img0004", "4D")),
    (
        "zero spacing",
        lambda i, lab: _dv().write_raw_nii(i / "img0005.nii.gz", _dv().ct(5), (0.8, 0.0, 2.5)),
        ("img0005", "spacing"),
    ),
    (
        "negative spacing",
        lambda i, lab: _dv().write_raw_nii(i / "img0006.nii.gz", _dv().ct(6), (0.8, -1.0, 2.5)),
        ("img0006", "spacing"),
    ),
    ("label outside the map", _arr("label0007.nii.gz", lambda: _dv().seg(7, (0, 1, 99)), "label"), ("label0007", "99")),
    (
        "label of another shape",
        _arr("label0008.nii.gz", lambda: _np().zeros((8, 8, 5), "uint8"), "label"),
        ("label0008", "shape"),
    ),
    ("truncated image", _bytes("img0009.nii.gz", lambda b: b[: len(b) // 2]), ("img0009.nii.gz",)),
    ("empty image file", _bytes("img0010.nii.gz", lambda b: b""), ("img0010.nii.gz",)),
    ("not a NIfTI", _bytes("img0021.nii.gz", lambda b: b"<html>404</html>"), ("img0021.nii.gz",)),
    ("missing label", lambda i, lab: (lab / "label0022.nii.gz").unlink(), ("label0022.nii.gz",)),
    ("missing image", lambda i, lab: (i / "img0023.nii.gz").unlink(), ("img0023",)),
    ("label folder missing", lambda i, lab: __import__("shutil").rmtree(lab), ("label",)),
]


@pytest.mark.parametrize("brk, words", [pytest.param(b, w, id=i) for i, b, w in DATA])
def test_bad_dataset_file(brk, words, tmp_path):
    root = _btcv_case(brk)(tmp_path / "BTCV")
    runs, data = tmp_path / "runs", tmp_path / "cache"
    r = run_cli(
        ["stage=validate", "suite=btcv", "method=random", f"data.root={root}", f"runs_dir={runs}", "progress=false"],
        data,
    )
    assert_refused(r, *words)
    assert files_under(runs) == [] and files_under(data) == []


@pytest.mark.parametrize(
    "root, words",
    [
        pytest.param(lambda d: d / "nope", ("nope",), id="root-missing"),
        pytest.param(lambda d: _write(d / "afile", b"x"), ("afile", "is a file"), id="root-a-file"),
        pytest.param(lambda d: (d / "empty").mkdir() or d / "empty", ("empty",), id="root-empty"),
    ],
)
def test_bad_dataset_root(root, words, tmp_path):
    where = root(tmp_path)
    runs, data = tmp_path / "runs", tmp_path / "cache"
    r = run_cli(
        ["stage=validate", "suite=btcv", "method=random", f"data.root={where}", f"runs_dir={runs}", "progress=false"],
        data,
    )
    assert_refused(r, *words)
    assert files_under(runs) == [] and files_under(data) == []


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_partial_file(tmp_path):
    """A file system that refuses a write mid-run: here a file-size limit (RLIMIT_FSIZE with SIGXFSZ ignored, so a
    write past it fails with EFBIG, as one past a full disk fails with ENOSPC), set on a real subprocess. The run
    stops with one line naming the file it could not write; every file it left is whole (the generated data's
    manifest exists only with all its volumes)."""
    import resource
    import signal
    import subprocess

    limit = 64 * 1024  # bytes: more than a smoke volume's header, less than the data the run must write

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    runs, data = tmp_path / "runs", tmp_path / "data"
    env = dict(os.environ, SSLBENCH_DATA=str(data), HYDRA_FULL_ERROR="0")
    p = subprocess.run(
        [sys.executable, "run_bench.py", *FAST, "method=random", f"runs_dir={runs}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=cap,
    )
    r = Result(p.returncode, p.stderr, p.stdout)
    lines = [ln for ln in r.lines if not ln.startswith(("[", "Generating", "generate"))]
    assert r.code == 2 and "Traceback" not in r.err, r.err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "File too large" in lines[0], r.err[-3000:]
    named = lines[0].removeprefix("error: ").split(": ", 1)[0]
    assert named.startswith((str(runs), str(data))), lines[0]
    manifests = list(data.rglob("manifest.json"))
    for m in manifests:  # a data set is declared complete only with every file it lists
        listed = json.loads(m.read_text())
        assert listed and all((m.parent / f).is_file() for f in listed.get("files", {})), m


def test_a_bad_corpus_volume_is_refused_before_pretraining(tmp_path):
    """stage=pretrain validates no task, but the corpus it is about to read is checked like one: a NaN voxel in a
    pretraining volume is one line naming the file, before any pretraining folder exists."""
    root = _btcv_case(_nan)(tmp_path / "BTCV")  # img0001 is in btcv_liu's pretrain split (its train images)
    runs, data = tmp_path / "runs", tmp_path / "cache"
    r = run_cli(
        [
            "stage=pretrain",
            "suite=btcv",
            "method=simmim3d",
            f"data.root={root}",
            f"runs_dir={runs}",
            "progress=false",
            "device=cpu",
        ],
        data,
    )
    assert_refused(r, "pretraining corpus", "img0001.nii.gz", "non-finite")
    assert not (runs / "pretrain").exists()
