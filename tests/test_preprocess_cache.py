"""The on-disk preprocessing cache: computed once, never stale, never half-written."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench.data import Preprocess, PreprocessedCache, preprocess
from datasets.base import Record


class Counting:
    registry_name = "toy"

    def __init__(self, value: float = 100.0) -> None:
        self.loads, self.value = 0, value

    def load(self, rec):
        self.loads += 1
        img = np.full((1, 6, 5, 4), self.value, np.float32)
        img[0, 0, 0, 0] = -500.0
        return {
            "id": rec.id,
            "image": img,
            "spacing": (1.0, 1.0, 2.0),
            "affine": np.diag([1.0, 1, 2, 1]),
            "label": np.ones((6, 5, 4), np.int16),
        }


@pytest.fixture
def rec(tmp_path):
    f = tmp_path / "case 1.nii.gz"
    f.write_bytes(b"v1")
    return Record("case 1", "p1", str(f))


PP = Preprocess(a_min=-175, a_max=250, spacing=(2.0, 2.0, 2.0))


def test_second_get_reads_the_cache_and_equals_the_computation(tmp_path, rec):
    ds, cache = Counting(), PreprocessedCache(tmp_path / "pp")
    first = cache.get(ds, rec, PP)
    second = PreprocessedCache(tmp_path / "pp").get(ds, rec, PP)
    assert ds.loads == 1
    expect = preprocess(Counting().load(rec), PP)
    for s in (first, second):
        np.testing.assert_array_equal(s["image"], expect["image"])
        np.testing.assert_array_equal(s["label"], expect["label"])
        assert s["spacing"] == (2.0, 2.0, 2.0) and s["image"].shape == expect["image"].shape == (1, 3, 2, 4)


def test_a_changed_file_or_config_is_preprocessed_again(tmp_path, rec):
    ds, cache = Counting(), PreprocessedCache(tmp_path / "pp")
    cache.get(ds, rec, PP)
    cache.get(ds, rec, Preprocess(a_min=-100, a_max=100, spacing=(2.0, 2.0, 2.0)))
    assert ds.loads == 2
    with open(rec.image, "wb") as f:
        f.write(b"v2 is longer")
    ds.value = 0.0
    out = cache.get(ds, rec, PP)
    assert ds.loads == 3 and out["image"][0, 1, 1, 1] == pytest.approx(175 / 425)


def test_a_damaged_entry_is_recomputed_and_leftovers_of_a_killed_write_are_ignored(tmp_path, rec):
    ds, cache = Counting(), PreprocessedCache(tmp_path / "pp")
    cache.get(ds, rec, PP)
    entry = cache.entry("toy", rec, PP)
    (entry / "image.npy").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="is damaged"):
        assert cache.get(ds, rec, PP)["image"].shape == (1, 3, 2, 4) and ds.loads == 2
    # a write killed before its rename leaves only a .tmp-* folder, which is never read as an entry
    other = Record("case 2", "p2", rec.image)
    half = cache.entry("toy", other, PP).parent / ".tmp-killed"
    half.mkdir()
    (half / "image.npy").write_bytes(b"partial")
    cache.get(ds, other, PP)
    assert ds.loads == 3


def test_records_without_a_plain_file_and_unwritable_folders_still_work(tmp_path, rec):
    ds = Counting()
    odd = Record("slice 3", "p", str(tmp_path / "volume.npz") + "#3")
    cache = PreprocessedCache(tmp_path / "pp")
    assert cache.entry("toy", odd, PP) is None
    cache.get(ds, odd, PP)
    cache.get(ds, odd, PP)
    assert ds.loads == 2
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        out = PreprocessedCache(ro / "pp").get(ds, rec, PP)
        assert out["image"].shape == (1, 3, 2, 4)
    finally:
        os.chmod(ro, 0o700)


def test_a_damaged_entry_is_reported_once_and_replaced(tmp_path, rec):
    """Not ignored and recomputed on every run: the entry is named, replaced by a good one, and read from then on."""
    ds, cache = Counting(), PreprocessedCache(tmp_path / "pp")
    cache.get(ds, rec, PP)
    entry = cache.entry("toy", rec, PP)
    (entry / "image.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(UserWarning, match=r"preprocessing cache entry .* is damaged .*replacing it"):
        again = cache.get(ds, rec, PP)
    np.testing.assert_array_equal(again["image"], preprocess(Counting().load(rec), PP)["image"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the replacement is good: no second report
        cache.get(ds, rec, PP)
    assert ds.loads == 2


def test_an_unwritable_cache_is_said_not_hidden(tmp_path, rec, monkeypatch):
    ds = Counting()
    (tmp_path / "file").write_bytes(b"x")
    monkeypatch.setattr(PreprocessedCache, "_warned", False)
    with pytest.warns(UserWarning, match=r"preprocessing cache .*file.* cannot be written"):
        PreprocessedCache(tmp_path / "file" / "pp").get(ds, rec, PP)
