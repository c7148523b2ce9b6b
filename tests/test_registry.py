from __future__ import annotations

from pathlib import Path

import pytest

from bench.registry import BACKBONES, DATASETS, METHODS, PROTOCOLS, SUITES, Registry, UnknownNameError

CONF = Path(__file__).resolve().parent.parent / "conf"
METHODS_DIR = Path(__file__).resolve().parent.parent / "methods"


def test_duplicate_name_raises():
    r: Registry = Registry("thing")
    r.register("a")(object())
    with pytest.raises(ValueError, match="duplicate thing name 'a'"):
        r.register("a")(object())


def test_unknown_name_lists_known_and_closest():
    r: Registry = Registry("thing")
    for n in ("alpha", "beta", "gamma"):
        r.register(n)(type(n, (), {}))
    with pytest.raises(UnknownNameError) as e:
        r.get("betta")
    msg = str(e.value)
    assert "Did you mean 'beta'" in msg and "alpha, beta, gamma" in msg


def test_names_filter_and_identifier_rule():
    r: Registry = Registry("thing")
    r.register("swin_a", tags=("3d",))(type("A", (), {}))
    r.register("vit_b", tags=("2d",))(type("B", (), {}))
    assert r.names("swin_*") == ["swin_a"]
    assert r.names(tag="2d") == ["vit_b"]
    with pytest.raises(ValueError):
        r.register("not-an-identifier")


@pytest.mark.parametrize(
    "group, registry", [("method", METHODS), ("backbone", BACKBONES), ("suite", SUITES), ("protocols", PROTOCOLS)]
)
def test_config_group_stems_equal_registry(group, registry):
    stems = {p.stem for p in (CONF / group).glob("*.yaml")}
    assert stems == set(registry.names())


@pytest.mark.parametrize("group", ["method", "backbone", "suite", "protocols"])
def test_config_name_key_equals_stem(group):
    from omegaconf import OmegaConf

    for p in (CONF / group).glob("*.yaml"):
        assert OmegaConf.load(p).name == p.stem, p


def test_every_method_module_is_imported_and_registers():
    import methods

    init = (METHODS_DIR / "__init__.py").read_text()
    for f in METHODS_DIR.glob("*.py"):
        if f.name.startswith("_") or f.stem == "base":
            continue
        assert f"from methods import {f.stem}" in init, f"{f.name} is not imported in methods/__init__.py"
        mod = getattr(methods, f.stem)
        # a method module registers a method, or (LooseLocationSS, a weakly supervised recipe) a protocol
        from bench.protocols.base import ProtocolFamily

        registered = list(map(METHODS.get, METHODS.names()))
        for entry in map(PROTOCOLS.get, PROTOCOLS.names()):
            registered += list(entry.members.values()) if isinstance(entry, ProtocolFamily) else [entry]
        assert any(getattr(obj, "__module__", None) == mod.__name__ for obj in registered), f


def test_suites_reference_registered_datasets_and_protocols():
    from bench.protocols.base import resolve_protocol

    for name in SUITES.names():
        s = SUITES.get(name)
        assert s.pretrain_dataset in DATASETS
        for t in s.tasks:
            assert t.dataset in DATASETS
            for p in t.protocols:
                resolve_protocol(p, t.kind)  # raises unless the protocol serves the task's kind


def test_bench_never_dispatches_on_names():
    import re

    bench = Path(__file__).resolve().parent.parent / "bench"
    pat = re.compile(r"""(method|name|dataset|suite)(\.name)?\s*==\s*["']""")
    for f in bench.rglob("*.py"):
        assert not pat.search(f.read_text()), f"{f} dispatches on a name"


def test_every_project_module_imports_first_in_a_fresh_interpreter():
    """A library user may import any module first (``from bench.export import load_export``); a circular import
    that only the CLI's import order hides must fail here. One subprocess, project modules purged between."""
    import subprocess
    import sys

    root = METHODS_DIR.parent
    mods = sorted(
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for pkg in ("bench", "methods", "datasets")
        for p in (root / pkg).rglob("*.py")
        if "synthetic" not in p.parts or p.name != "__main__.py"
    )
    code = (
        "import importlib, sys\nfailed = []\nfor m in sys.argv[1:]:\n"
        "    for k in [k for k in sys.modules if k.split('.')[0] in ('bench', 'methods', 'datasets')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n        importlib.import_module(m)\n"
        "    except Exception as e:\n        failed.append(f'{m}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed)); sys.exit(1 if failed else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *mods], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
