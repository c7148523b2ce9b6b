"""The pretraining/test leakage guard: content hashes, the refusal, the override."""

from __future__ import annotations

import dataclasses
import shutil

import nibabel as nib
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from bench import leakage
from bench.registry import DATASETS
from datasets.base import Record

from tests.test_configs import CONF


def test_hash_is_of_the_voxels_not_the_file(tmp_path):
    vol = np.random.default_rng(0).integers(-1000, 1000, (8, 9, 10)).astype(np.int16)
    a, b = tmp_path / "case.nii.gz", tmp_path / "renamed_copy.nii"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), a)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([2, 2, 2, 1.0])), b)  # other dtype, header, encoding
    ha = leakage.content_hash(np.asanyarray(nib.load(a).dataobj))
    hb = leakage.content_hash(np.asanyarray(nib.load(b).dataobj))
    assert ha == hb
    changed = vol.copy()
    changed[3, 3, 3] += 1
    assert leakage.content_hash(changed) != ha
    assert leakage.content_hash(vol.reshape(10, 9, 8)) != ha  # same bytes, other shape


class _Counting:
    def __init__(self, arrays):
        self.arrays, self.loads = arrays, 0

    def load(self, rec):
        self.loads += 1
        return {"image": self.arrays[rec.id]}


def test_hash_cache_reads_each_file_once_and_notices_a_changed_file(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    ds = _Counting({"a": np.zeros(3)})
    rec = Record("a", "a", str(f))
    cache = leakage.HashCache(tmp_path / "memo.json")
    h = cache.record_hash(ds, rec)
    cache.save()
    again = leakage.HashCache(tmp_path / "memo.json")
    assert again.record_hash(ds, rec) == h and ds.loads == 1
    f.write_bytes(b"xy")  # new size: the memo entry no longer applies
    ds.arrays["a"] = np.ones(3)
    assert again.record_hash(ds, rec) != h and ds.loads == 2
    (tmp_path / "memo.json").write_text("{broken")
    assert leakage.HashCache(tmp_path / "memo.json").memo == {}


def test_leaks_lists_the_evaluated_ids_found_in_the_corpus():
    assert leakage.leaks({"h1", "h2"}, {"h2": "test/c2", "h3": "test/c3", "h1": "val/c1"}) == ["test/c2", "val/c1"]
    assert leakage.leaks(set(), {"h": "test/x"}) == []


def _plan(tmp_path, data_dir, *overrides):
    from bench.runner import make_plan

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "suite=smoke",
                "budget=quick",
                "device=cpu",
                "progress=false",
                f"runs_dir={tmp_path / 'runs'}",
                *overrides,
            ],
        )
    return make_plan(cfg)


def test_a_corpus_holding_a_test_case_is_refused_before_pretraining(tmp_path, data_dir, monkeypatch):
    from bench import runner

    plan = _plan(tmp_path, data_dir, "method=simmim3d")
    # the corpus also reads the test split: every test case is in it, by content
    plan.suite = dataclasses.replace(plan.suite, pretrain_splits=("pretrain", "test"))
    monkeypatch.setattr(runner, "fit", lambda *a, **k: pytest.fail("training started despite leakage"))
    with pytest.raises(runner.UserError, match=r"leakage.*test/smoke_0.*allow_leakage=true"):
        runner.pretrain(plan)


def test_a_renamed_copy_is_found_and_the_override_is_recorded(tmp_path, data_dir):
    from bench import runner

    plan = _plan(tmp_path, data_dir, "method=random")
    ds = DATASETS.get("smoke")(cache_dir=data_dir)
    ds.prepare(progress=False)
    test_rec = ds.records("test")[0]
    copy = tmp_path / "copied_under_another_name.nii.gz"
    shutil.copy(test_rec.image, copy)
    corpus = {leakage.content_hash(ds.load(Record("x", "x", str(copy)))["image"])}
    with pytest.raises(runner.UserError, match=f"test/{test_rec.id}"):
        runner.check_leakage(plan, corpus, plan.suite.tasks, {})
    allowed = _plan(tmp_path, data_dir, "method=random", "allow_leakage=true")
    found = runner.check_leakage(allowed, corpus, allowed.suite.tasks, {})
    assert found == {plan.suite.tasks[0].name: [f"test/{test_rec.id}"]}
    # the embedded suite's own corpus is clean
    clean = runner.corpus_hashes(plan, tmp_path / "pre", method_pretrains=True)
    assert len(clean) == len(ds.records("pretrain"))
    assert runner.check_leakage(plan, clean, plan.suite.tasks, {}) == {}
