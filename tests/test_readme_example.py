"""The README's "adding a method" example, run exactly as written on the smoke suite."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from test_cli import FAST, run_bench

ROOT = Path(__file__).resolve().parent.parent


def readme_examples() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- example:(\S+) -->\n```\w+\n(.*?)```", text, flags=re.S)}


# a run_bench.py subprocess on a copy of the tree (25-95 s on 2 cores): `make test-all`; test_cli's smoke run
# keeps run_bench.py end to end in `make test`
@pytest.mark.slow
def test_readme_method_example_runs(data_dir, tmp_path):
    ex = readme_examples()
    assert set(ex) == {"methods/toy_ae.py", "conf/method/toy_ae.yaml", "methods/__init__.py"}
    repo = tmp_path / "repo"
    for name in ("bench", "methods", "datasets", "conf", "run_bench.py"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / name)
    (repo / "methods" / "toy_ae.py").write_text(ex["methods/toy_ae.py"])
    (repo / "conf" / "method" / "toy_ae.yaml").write_text(ex["conf/method/toy_ae.yaml"])
    with open(repo / "methods" / "__init__.py", "a") as f:
        f.write(ex["methods/__init__.py"])
    p = run_bench(
        ["method=toy_ae", "protocol=linear_probe", f"runs_dir={tmp_path / 'runs'}", *FAST], data_dir, cwd=repo
    )
    assert p.returncode == 0, p.stderr[-3000:]
    con = sqlite3.connect(tmp_path / "runs" / "results.sqlite")
    assert con.execute("SELECT method, protocol FROM cells").fetchall() == [("toy_ae", "linear_probe")]
