"""SynthColon generator and the ``colon`` adapter: determinism, label/location consistency, records, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datasets.base import DataError, load_split_file
from datasets.colon import SEED_OFFSET, Colon
from datasets.synthetic import colon as gen

SMALL = gen.ColonConfig(size=48, pixel_mm=7.5, slices=10, min_tumour_px=2)
# with SMALL: c002, c003, c006, c008 have a tumour; c003, c004, c007, c008 have three phases
TINY_SPLITS = {
    "pretrain": ["c000"],
    "train": ["c002", "c003", "c004"],
    "val": ["c005", "c006"],
    "test": ["c007", "c008"],
}


class TinyColon(Colon):
    gen_config = SMALL

    def split_ids(self, split):
        return list(TINY_SPLITS[split])


def _tumour_seed(cfg=SMALL, want=True) -> int:
    return next(s for s in range(SEED_OFFSET, SEED_OFFSET + 100) if gen.has_tumour(s, cfg) == want)


def test_same_seed_is_bit_identical_and_seeds_differ():
    a, b = gen.generate_patient(7, SMALL), gen.generate_patient(7, SMALL)
    assert np.array_equal(a["image"], b["image"]) and a["annotation"] == b["annotation"]
    c = gen.generate_patient(8, SMALL)
    assert a["image"].shape[1:] == c["image"].shape[1:] and not np.array_equal(a["image"][0], c["image"][0])


def test_phases_share_anatomy_with_small_shifts_and_differ_in_contrast():
    seed = next(s for s in range(100) if len(gen.generate_patient(s, SMALL)["annotation"]["phases"]) == 3)
    img = gen.generate_patient(seed, SMALL)["image"].astype(np.float32)
    n, a, p = img
    body = n > -500
    # same anatomy (registered up to ~1 px): the body masks almost coincide
    assert (body & (a > -500)).sum() / body.sum() > 0.95
    # the arterial phase opacifies the aorta: its brightest voxels are far above the non-contrast ones
    assert np.percentile(a, 99.9) > np.percentile(n[n < 400], 99.9) + 80


def test_tumour_labels_are_consecutive_and_locations_lie_in_their_boxes():
    seed = _tumour_seed()
    ann = gen.generate_patient(seed, SMALL)["annotation"]
    pos = [z for z, v in enumerate(ann["labels"]) if v]
    assert ann["tumour"] and 1 <= len(pos) <= 6
    assert pos == list(range(pos[0], pos[-1] + 1))  # one lesion spanning consecutive slices
    for z in range(SMALL.slices):
        loc, box = ann["loc"]["N"][z], ann["box"]["N"][z]
        assert (loc is None) == (box is None) == (ann["labels"][z] == 0)
        if loc:
            assert box[0] <= loc[0] <= box[2] and box[1] <= loc[1] <= box[3]
            for ph in ann["phases"]:  # the other phases see the same lesion, shifted by about a pixel
                other = ann["loc"][ph][z]
                if other:
                    assert abs(other[0] - loc[0]) < 4 / SMALL.size and abs(other[1] - loc[1]) < 4 / SMALL.size


def test_normal_patient_has_no_positive_slice():
    ann = gen.generate_patient(_tumour_seed(want=False), SMALL)["annotation"]
    assert not ann["tumour"] and not any(ann["labels"])
    assert all(v is None for ph in ann["phases"] for v in ann["loc"][ph])


def test_intensities_are_ct_like():
    img = gen.generate_patient(3, SMALL)["image"]
    assert img.dtype == np.int16
    n = img[0].astype(np.float32)
    assert n.min() < -900  # air outside the body and in the bowel
    assert -130 < np.median(n[(n > -200) & (n < -50)]) < -70  # fat
    assert n.max() > 500  # cortical bone


def test_committed_split_is_patient_level_and_disjoint():
    splits = load_split_file("colon")
    assert set(splits) == {"pretrain", "train", "val", "test"}
    seen: set[str] = set()
    for ids in splits.values():
        assert not seen & set(ids)
        seen |= set(ids)
    for s in ("train", "val", "test"):  # both classes in every labelled split
        flags = {gen.has_tumour(SEED_OFFSET + int(p[1:])) for p in splits[s]}
        assert flags == {True, False}


def test_adapter_records_and_load(tmp_path):
    ds = TinyColon(cache_dir=tmp_path)
    ds.prepare(progress=False)
    recs = ds.records("train")
    assert len(recs) == 3 * SMALL.slices
    r = recs[SMALL.slices + 3]
    assert r.id == "c003_03" and r.patient_id == "c003" and r.meta["slice"] == 3 and r.meta["phase"] == "N"
    for rec in recs:
        ann = json.loads((tmp_path / "colon" / f"{rec.patient_id}.json").read_text())
        assert rec.classes == (ann["labels"][rec.meta["slice"]],)
        assert rec.meta["loc"] == (tuple(ann["loc"]["N"][rec.meta["slice"]]) if rec.classes[0] else None)
    s = ds.load(r)
    P = r.meta["phases"]
    assert s["image"].shape == (1, SMALL.size, SMALL.size) and s["image"].dtype == np.float32
    assert P == 3 and s["phases"].shape == (P, SMALL.size, SMALL.size)
    assert np.array_equal(s["image"][0], s["phases"][0]) and s["label"] is None
    direct = gen.generate_patient(SEED_OFFSET + 3, SMALL)["image"]
    assert np.array_equal(s["phases"], direct[:, 3].astype(np.float32))
    pre = ds.records("pretrain")  # every phase of every slice, unlabelled
    assert len(pre) == SMALL.slices * pre[0].meta["phases"] and pre[0].classes is None
    assert not ds.validate()


def test_corrupted_volume_is_regenerated_and_read_errors_name_the_file(tmp_path):
    ds = TinyColon(cache_dir=tmp_path)
    ds.prepare(progress=False)
    path = tmp_path / "colon" / "c002.npz"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="c002.npz"):
        TinyColon(cache_dir=tmp_path).volume("c002")
    TinyColon(cache_dir=tmp_path).prepare(progress=False)  # checksum mismatch: generated again
    assert path.read_bytes() == good
    (tmp_path / "colon" / "c003.json").write_text("{not json")
    with pytest.raises(DataError, match="c003.json"):
        TinyColon(cache_dir=tmp_path).annotation("c003")


def test_suite_registration():
    from bench.registry import DATASETS, SUITES

    suite = SUITES.get("colon")
    (task,) = suite.tasks
    assert task.kind == "classification" and task.metric == "auroc"
    assert task.protocols == ("finetune", "lls_two_stage") and suite.seeds == (0, 1, 2)
    assert suite.pretrain_splits == ("pretrain",) and DATASETS.get("colon").info.spatial_dims == 2
    assert suite.preprocessing == {"a_min": -140.0, "a_max": 260.0}
    assert Path(gen.__file__).name == "colon.py"
