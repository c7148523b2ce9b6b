"""The generated-data cache: corrupt or missing files regenerate, half-written sets are never valid."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from datasets.base import DataError
from datasets.synthetic.cache import MANIFEST, ensure_generated


def _writers(calls: list[str]):
    def make(name: str):
        def write(p: Path) -> None:
            calls.append(name)
            tmp = p.with_name(".tmp-" + p.name)
            tmp.write_text(f"content of {name}")
            os.replace(tmp, p)

        return write

    return {f"imagesTr/{n}.txt": make(n) for n in ("a", "b", "c")}


def test_generates_once_then_reuses(tmp_path):
    calls: list[str] = []
    ensure_generated(tmp_path, "v1", _writers(calls), "t", progress=False)
    assert calls == ["a", "b", "c"] and (tmp_path / MANIFEST).is_file()
    ensure_generated(tmp_path, "v1", _writers(calls), "t", progress=False)
    assert calls == ["a", "b", "c"]


def test_corrupted_or_truncated_file_is_regenerated(tmp_path):
    calls: list[str] = []
    ensure_generated(tmp_path, "v1", _writers(calls), "t", progress=False)
    (tmp_path / "imagesTr/b.txt").write_text("content of")  # truncated
    ensure_generated(tmp_path, "v1", _writers(calls), "t", progress=False)
    assert calls[3:] == ["b"]
    assert (tmp_path / "imagesTr/b.txt").read_text() == "content of b"


def test_new_generator_version_regenerates_everything(tmp_path):
    calls: list[str] = []
    ensure_generated(tmp_path, "v1", _writers(calls), "t", progress=False)
    ensure_generated(tmp_path, "v2", _writers(calls), "t", progress=False)
    assert calls[3:] == ["a", "b", "c"]
    assert json.loads((tmp_path / MANIFEST).read_text())["version"] == "v2"


def test_killed_generation_leaves_no_valid_set(tmp_path):
    calls: list[str] = []
    items = _writers(calls)

    def dies(p: Path) -> None:
        raise KeyboardInterrupt  # the process is killed while writing c

    items["imagesTr/c.txt"] = dies
    with pytest.raises(KeyboardInterrupt):
        ensure_generated(tmp_path, "v1", items, "t", progress=False)
    assert not (tmp_path / MANIFEST).exists() and not (tmp_path / "imagesTr/c.txt").exists()
    ensure_generated(tmp_path, "v1", _writers(calls), "t", progress=False)
    assert (tmp_path / MANIFEST).is_file() and (tmp_path / "imagesTr/c.txt").read_text() == "content of c"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_cache_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(DataError, match="cannot write the data cache"):
        ensure_generated(ro / "set", "v1", _writers([]), "t", progress=False)


def test_unwritable_cache_is_a_clear_error_even_as_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(DataError, match="cannot write the data cache.*data.cache_dir"):
        ensure_generated(blocker / "set", "v1", _writers([]), "t", progress=False)


def test_unknown_suite_is_listed(data_dir):
    from bench.registry import SUITES, UnknownNameError

    with pytest.raises(UnknownNameError, match="abdomen"):
        SUITES.get("abdomenn")
