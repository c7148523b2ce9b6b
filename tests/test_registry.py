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


@pytest.mark.parametrize("group, registry", [("method", METHODS), ("backbone", BACKBONES), ("suite", SUITES),
                                             ("protocol", PROTOCOLS)])
def test_config_group_stems_equal_registry(group, registry):
    stems = {p.stem for p in (CONF / group).glob("*.yaml")}
    assert stems == set(registry.names())


@pytest.mark.parametrize("group", ["method", "backbone", "suite", "protocol"])
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
                resolve_protocol(p, t.kind)   # raises unless the protocol serves the task's kind


def test_bench_never_dispatches_on_names():
    import re

    bench = Path(__file__).resolve().parent.parent / "bench"
    pat = re.compile(r"""(method|name|dataset|suite)(\.name)?\s*==\s*["']""")
    for f in bench.rglob("*.py"):
        assert not pat.search(f.read_text()), f"{f} dispatches on a name"
