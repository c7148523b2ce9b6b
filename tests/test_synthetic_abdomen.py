"""Tests of the SynthAbdomen generator (datasets/synthetic/abdomen.py)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from datasets.synthetic.abdomen import (
    LABELS,
    AbdomenConfig,
    _T,
    _render,
    generate_subject,
    inter_subject_dice,
    write_btcv_layout,
)

SMALL = AbdomenConfig(shape=(48, 40, 36), spacing=(7.2, 7.2, 7.0))  # same field of view, 8x fewer voxels
DEFAULT = AbdomenConfig()
SEEDS = (0, 1, 2, 3)


@cache
def subject(seed: int, layout: str = "atlas", small: bool = False):
    return _render(seed, SMALL if small else DEFAULT, layout)


def centroid_mm(label: np.ndarray, affine: np.ndarray, lab: int) -> np.ndarray:
    idx = np.array(np.nonzero(label == lab), float)
    assert idx.size, f"label {lab} ({LABELS[lab]}) missing"
    return affine[:3, :3] @ idx.mean(1) + affine[:3, 3]


def test_label_map_is_btcv():
    assert LABELS[0] == "background" and len(LABELS) == 14
    assert LABELS[1] == "spleen" and LABELS[2] == "right kidney" and LABELS[3] == "left kidney"
    assert LABELS[6] == "liver" and LABELS[8] == "aorta" and LABELS[13] == "left adrenal gland"


def test_same_seed_is_bit_identical():
    a = generate_subject(7, SMALL)
    b = generate_subject(7, SMALL)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)
    s = generate_subject(7, SMALL, "shuffled")
    t = generate_subject(7, SMALL, "shuffled")
    assert np.array_equal(s[0], t[0]) and np.array_equal(s[1], t[1])


def test_different_seeds_differ():
    a_img, a_lab, a_aff = generate_subject(7, SMALL)
    b_img, b_lab, b_aff = generate_subject(8, SMALL)
    assert not np.array_equal(a_img, b_img)
    assert not np.array_equal(a_lab, b_lab)
    assert np.array_equal(a_aff, b_aff)


def test_outputs_types_and_affine():
    s = subject(0)
    assert s.image.dtype == np.int16 and s.label.dtype == np.uint8
    assert s.image.shape == DEFAULT.shape == s.label.shape
    assert np.allclose(s.affine[:3, :3], np.diag(DEFAULT.spacing))  # the atlas grid (x toward the left)
    out = generate_subject(0, SMALL)[2]
    assert np.allclose(out[:3, :3], np.diag([-7.2, 7.2, 7.0]))  # written: LAS, x step negative
    assert np.allclose(out[:3, :3] @ (np.array(SMALL.shape) - 1) / 2 + out[:3, 3], 0)  # centred on the origin
    assert set(np.unique(s.label)) <= set(LABELS)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_all_labels_present_in_atlas_layout(seed):
    present = set(np.unique(subject(seed).label).tolist())
    assert present == set(LABELS), f"missing {sorted(set(LABELS) - present)}"


def test_hu_ranges_plausible():
    for seed in SEEDS[:2]:
        s = subject(seed)
        img = s.image.astype(float)
        liver = img[s.label == 6].mean()
        assert 60 <= liver <= 160, liver
        fat = img[s.tissue == _T["fat_sc"]]
        assert np.median(fat) < -40
        lung = img[s.tissue == _T["lung"]]
        assert lung.size and np.median(lung) < -600
        gas = img[s.tissue == _T["gas"]]
        assert gas.size and np.median(gas) < -400
        assert img[s.tissue == _T["air"]].mean() < -900
        aorta = img[s.label == 8].mean()
        assert aorta > liver  # contrast-enhanced vessel


def test_left_right_and_craniocaudal_layout():
    dz = []
    for seed in SEEDS:
        s = subject(seed)
        rk = centroid_mm(s.label, s.affine, 2)
        lk = centroid_mm(s.label, s.affine, 3)
        liver = centroid_mm(s.label, s.affine, 6)
        spleen = centroid_mm(s.label, s.affine, 1)
        aorta = centroid_mm(s.label, s.affine, 8)
        ivc = centroid_mm(s.label, s.affine, 9)
        assert lk[0] > rk[0], "left kidney must lie toward +x (the atlas's x points to the patient's left)"
        assert liver[0] < 0 < spleen[0], "liver on the patient's right, spleen on the left"
        assert ivc[0] < aorta[0]
        dz.append(lk[2] - rk[2])
    assert np.mean(dz) > 5.0, f"right kidney should be lower on average, got {dz}"


def test_written_files_put_organs_on_their_anatomical_side_for_a_ras_reader(tmp_path):
    # NIfTI world coordinates are RAS+: x > 0 is the patient's right. Real CT has the liver, the IVC and the
    # right kidney there; suite v1 wrote a RAS+ affine over left-pointing arrays and so mirrored all three.
    import nibabel as nib

    from datasets.base import read_nifti

    write_btcv_layout(tmp_path, [("img0001", 0)], SMALL, progress=False)
    label, aff = read_nifti(tmp_path / "labelsTr" / "label0001.nii.gz")
    assert nib.aff2axcodes(nib.load(str(tmp_path / "imagesTr" / "img0001.nii.gz")).affine) == ("L", "A", "S")
    assert nib.aff2axcodes(aff) == ("R", "A", "S")  # what the harness reads
    c = {k: centroid_mm(np.asarray(label), aff, k) for k in (1, 2, 3, 6, 8, 9)}
    assert c[6][0] > 0 > c[1][0], "liver on the patient's right (x > 0), spleen on the left"
    assert c[2][0] > 0 > c[3][0], "label 2 (right kidney) on the patient's right"
    assert c[9][0] > c[8][0], "IVC right of the aorta"
    assert c[6][2] > c[2][2] and c[6][1] > c[2][1], "liver above and anterior to the right kidney"


def test_adrenals_superomedial_to_kidneys():
    for seed in SEEDS[:3]:
        s = subject(seed)
        for kid, adr, sign in ((2, 12, -1), (3, 13, +1)):
            k = centroid_mm(s.label, s.affine, kid)
            a = centroid_mm(s.label, s.affine, adr)
            assert a[2] > k[2], "adrenal above its kidney"
            assert sign * a[0] < sign * k[0], "adrenal medial to its kidney"
            assert (s.label == adr).sum() < 0.2 * (s.label == kid).sum()


def test_liver_is_largest_organ():
    s = subject(1)
    counts = np.bincount(s.label.ravel(), minlength=14)
    assert counts[1:].argmax() + 1 == 6


def test_shuffled_layout_moves_organs_more_than_atlas():
    organs = (1, 2, 3, 6, 7)

    def spread(layout):
        cents = []
        for seed in SEEDS:
            s = subject(seed, layout, small=True)
            c = []
            for lab in organs:
                m = s.label == lab
                c.append(
                    s.affine[:3, :3] @ np.array(np.nonzero(m), float).mean(1) + s.affine[:3, 3]
                    if m.any()
                    else np.full(3, np.nan)
                )
            cents.append(c)
        cents = np.array(cents)  # (seeds, organs, 3)
        return np.nanmean(np.linalg.norm(cents - np.nanmean(cents, 0), axis=-1))

    atlas, shuffled = spread("atlas"), spread("shuffled")
    assert shuffled > 2.5 * atlas, (atlas, shuffled)


def test_shuffled_keeps_primitives_and_intensities():
    a = subject(2, "atlas", small=True)
    s = subject(2, "shuffled", small=True)
    # the same tissue intensities (same subject draws), organs moved
    assert np.allclose(a.hu_jit, s.hu_jit) and a.contrast == s.contrast
    assert not np.array_equal(a.label, s.label)


def test_inter_subject_dice_small():
    d = inter_subject_dice(3, SMALL)
    assert set(d) == {v for k, v in LABELS.items() if k}
    assert d["liver"] > 0.3
    assert all(0.0 <= v <= 1.0 for v in d.values() if not np.isnan(v))


def test_write_btcv_layout(tmp_path):
    import nibabel as nib

    from datasets.base import read_nifti

    cases = [("img0001", 11), ("img0002", 12)]
    write_btcv_layout(tmp_path, cases, SMALL, progress=False)
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["img0001.nii.gz", "img0002.nii.gz", "label0001.nii.gz", "label0002.nii.gz"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp") or p.suffix == ".tmp"]
    for case_id, seed in cases:
        img, aff = read_nifti(tmp_path / "imagesTr" / f"{case_id}.nii.gz")
        lab, laff = read_nifti(tmp_path / "labelsTr" / f"label{case_id[3:]}.nii.gz")
        assert img.dtype == np.int16 and lab.dtype == np.uint8
        assert img.shape == lab.shape == SMALL.shape
        assert np.allclose(aff, laff)
        ref_img, ref_lab, ref_aff = generate_subject(seed, SMALL)
        raw = nib.load(str(tmp_path / "imagesTr" / f"{case_id}.nii.gz"))
        assert np.array_equal(np.asanyarray(raw.dataobj), ref_img) and np.allclose(raw.affine, ref_aff)
        # the reader reorients the LAS file to RAS+: axis 0 reversed, the same world coordinates
        assert np.array_equal(img, ref_img[::-1]) and np.array_equal(lab, ref_lab[::-1])
        assert np.allclose(aff @ [0, 0, 0, 1], ref_aff @ [SMALL.shape[0] - 1, 0, 0, 1])
    # unlabelled writing leaves labelsTr alone
    write_btcv_layout(tmp_path / "u", [("img0003", 13)], SMALL, labelled=False, progress=False)
    assert sorted(p.name for p in (tmp_path / "u").rglob("*") if p.is_file()) == ["img0003.nii.gz"]


def test_rejects_bad_layout():
    with pytest.raises(ValueError):
        generate_subject(0, SMALL, "mirrored")
