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


def is_tool(path: Path) -> bool:
    """Whether ``path`` is in the ``bench/tools/`` subtree, the only exempt place (not a ``tools`` folder elsewhere)."""
    return path.relative_to(BENCH).parts[0] == "tools"


MODULES = sorted(p for p in BENCH.rglob("*.py") if not is_tool(p))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(BENCH.parent)))
def test_bench_imports_neither_datasets_nor_methods(path):
    bad = outside_imports(path.read_text(encoding="utf-8"))
    assert not bad, f"{path.relative_to(BENCH.parent)} imports " + ", ".join(f"{m} (line {n})" for n, m in bad)


def test_the_check_finds_every_form_of_import():
    src = (
        "import datasets\nimport methods.base as m\ndef f():\n    from datasets.base import Record\n"
        "from methods import asa\nimport datasetsx\nfrom bench.types import Record\n"
    )
    assert outside_imports(src) == [(1, "datasets"), (2, "methods.base"), (4, "datasets.base"), (5, "methods")]


def test_the_tools_are_the_only_exception():
    exempt = sorted(set(BENCH.rglob("*.py")) - set(MODULES))
    assert MODULES and exempt and all(p.is_relative_to(BENCH / "tools") for p in exempt)
    assert any(outside_imports(p.read_text()) for p in (BENCH / "tools").glob("*.py"))


def test_only_the_top_level_tools_folder_is_exempt():
    # exactly the bench/tools/ subtree: a tools folder or a tools.py elsewhere under bench/ is still checked
    assert is_tool(BENCH / "tools" / "perf.py") and is_tool(BENCH / "tools" / "sub" / "x.py")
    for p in ("protocols/tools/x.py", "leaderboard/tools/tools.py", "tools.py", "toolsx/x.py", "runner.py"):
        assert not is_tool(BENCH / p), p
