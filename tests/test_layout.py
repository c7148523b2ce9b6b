"""The rooms keep their walls: the harness (bench/) imports neither datasets/ nor methods/.

Only the tools under bench/tools/ may, since they measure particular methods and datasets. Every import is checked,
top-level or inside a function, in every form (``import x``, ``import x.y``, ``from x import``, ``from x.y import``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
FORBIDDEN = ("datasets", "methods")


def outside_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import of a forbidden package in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in FORBIDDEN]
    return sorted(found)


MODULES = sorted(p for p in BENCH.rglob("*.py") if "tools" not in p.relative_to(BENCH).parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(BENCH.parent)))
def test_bench_imports_neither_datasets_nor_methods(path):
    bad = outside_imports(path.read_text(encoding="utf-8"))
    assert not bad, f"{path.relative_to(BENCH.parent)} imports " + ", ".join(f"{m} (line {n})" for n, m in bad)


def test_the_check_finds_every_form_of_import():
    src = "import datasets\nimport methods.base as m\ndef f():\n    from datasets.base import Record\n" \
          "from methods import asa\nimport datasetsx\nfrom bench.types import Record\n"
    assert outside_imports(src) == [(1, "datasets"), (2, "methods.base"), (4, "datasets.base"), (5, "methods")]


def test_the_tools_are_the_only_exception():
    assert MODULES and all("tools" not in p.parts for p in MODULES)
    assert any(outside_imports(p.read_text()) for p in (BENCH / "tools").glob("*.py"))
