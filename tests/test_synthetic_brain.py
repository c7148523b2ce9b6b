"""Tests of the brain symmetry generator (datasets/synthetic/brain.py)."""

from __future__ import annotations

import sys
from functools import cache

import nibabel as nib
import numpy as np
import pytest

from datasets.synthetic import brain
from datasets.synthetic.brain import CLASSES, LABELS, BrainConfig, class_of, generate_subject, write_layout

CFG = BrainConfig()


@cache
def subject(seed: int, label: int | None = None):
    return generate_subject(seed, CFG, label)


def signed_asymmetry(image):
    a = image.astype(np.float32)
    return a - a[::-1]


def test_constants():
    assert LABELS == {0: "background", 1: "lesion"}
    assert CLASSES == {0: "none", 1: "right", 2: "left"}


def test_template_found_without_importing_nilearn():
    imported_before = "nilearn" in sys.modules
    paths = brain.template_paths()
    assert set(paths) == {"t1", "gm", "wm"}
    for p in paths.values():
        assert p.is_file() and p.name.endswith("_sym_09a_converted.nii.gz")
        assert "nilearn" in p.parts
    tpl = brain.load_template(CFG)
    if not imported_before:
        assert "nilearn" not in sys.modules
    # the downsampled template stays voxel-exactly mirror symmetric about the volume's x centre
    assert np.array_equal(tpl.t1, tpl.t1[::-1])
    assert tpl.t1.shape == CFG.shape


def test_missing_template_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(brain, "template_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"):
        brain.template_paths()


def test_outputs_and_determinism():
    a = subject(3)
    b = generate_subject(3, CFG)
    for k in ("image", "lesion"):
        assert np.array_equal(a[k], b[k])
    assert a["label"] == b["label"] == class_of(3, CFG)
    assert a["image"].shape == CFG.shape and a["image"].dtype == np.int16
    assert a["lesion"].dtype == np.uint8 and set(np.unique(a["lesion"])) <= {0, 1}
    assert np.allclose(a["affine"], CFG.affine)
    assert a["image"].min() == 0  # skull-stripped background
    wm_like = np.percentile(a["image"][a["image"] > 0], 90)
    assert 300 < wm_like < 2500  # int16 T1-like intensities
    other = generate_subject(4, CFG)
    assert not np.array_equal(a["image"], other["image"])


def test_affine_is_ras_and_centred_on_the_midline():
    aff = CFG.affine
    assert np.allclose(np.diag(aff)[:3], CFG.spacing_mm)
    x_first = aff[0, 3]
    x_last = aff[0, 3] + aff[0, 0] * (CFG.shape[0] - 1)
    assert x_first == pytest.approx(-x_last)  # flip about axis 0 mirrors about x = 0


@pytest.mark.parametrize("seed", [0, 1])
def test_lesion_side_matches_label(seed):
    # NIfTI/MNI world x > 0 is the patient's RIGHT (RAS+); the class's name must match the lesion's side there
    for label, sign in ((1, +1), (2, -1)):
        s = subject(seed, label)
        assert s["label"] == label and CLASSES[label] == ("right" if sign > 0 else "left")
        assert np.allclose(s["affine"][:3, :3], np.diag([CFG.spacing_mm] * 3))  # positive steps: RAS+
        les = np.argwhere(s["lesion"])
        assert len(les) > 20
        x_mm = CFG.affine[0, 0] * les[:, 0] + CFG.affine[0, 3]
        assert sign * x_mm.mean() > 10
        assert (sign * x_mm > 0).mean() > 0.97  # the lesion stays in one hemisphere
        assert (s["image"][s["lesion"] > 0] > 0).all()  # inside the brain
    h = subject(seed, 0)
    assert h["label"] == 0 and not h["lesion"].any()


def test_class_fractions_follow_lesion_prob():
    n = 3000
    counts = np.bincount([class_of(s, CFG) for s in range(n)], minlength=3) / n
    p = CFG.lesion_prob
    assert counts[0] == pytest.approx(1 - p, abs=0.03)
    assert counts[1] == pytest.approx(p / 2, abs=0.03)
    assert counts[2] == pytest.approx(p / 2, abs=0.03)
    assert class_of(7, BrainConfig(lesion_prob=0.0)) == 0


def test_healthy_brains_are_not_mirror_symmetric():
    """Without the asymmetric warp |x - flip(x)| would be exactly 0 for a healthy subject."""
    tpl = brain.load_template(CFG)
    assert np.abs(tpl.t1 - tpl.t1[::-1]).max() == 0.0
    for seed in (0, 2):
        img = subject(seed, 0)["image"].astype(np.float32)
        brain_mask = img > 0
        rel = np.abs(signed_asymmetry(img))[brain_mask].mean() / img[brain_mask].mean()
        assert rel > 0.05, rel


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lesion_adds_asymmetry_on_its_side(seed):
    """Same subject (same warp, bias and noise) with and without its lesion."""
    label = 1 + seed % 2
    healthy = subject(seed, 0)["image"].astype(np.float32)
    s = subject(seed, label)
    img = s["image"].astype(np.float32)
    les = s["lesion"].astype(bool)
    region = les | les[::-1]  # the lesion and its mirror image
    S, S_h = signed_asymmetry(img), signed_asymmetry(healthy)
    # the lesion raises the asymmetry energy above the warped healthy baseline
    assert (S[region] ** 2).sum() > 1.1 * (S_h[region] ** 2).sum()
    # and it is one-sided: the lesion's hemisphere becomes darker than its mirror (hypointense T1 lesion)
    wm = np.percentile(healthy[healthy > 0], 90)
    assert (S[les].mean() - S_h[les].mean()) / wm < -0.04
    assert S[les].mean() < 0
    # what changed relative to the healthy twin lies on the lesion's side of the midline
    d = (img - healthy) ** 2
    half = CFG.shape[0] // 2
    on_side = d[half:].sum() if label == 1 else d[:half].sum()
    assert on_side / d.sum() > 0.7


def test_write_layout(tmp_path):
    out = write_layout(tmp_path, [("case_a", 1), ("case_b", 2)], progress=False, cfg=CFG)
    assert out == {"case_a": class_of(1, CFG), "case_b": class_of(2, CFG)}
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "imagesTr/case_a.nii.gz",
        "imagesTr/case_b.nii.gz",
        "labelsTr/case_a.nii.gz",
        "labelsTr/case_b.nii.gz",
    ]
    img = nib.load(tmp_path / "imagesTr" / "case_a.nii.gz")
    lab = nib.load(tmp_path / "labelsTr" / "case_a.nii.gz")
    assert np.allclose(img.affine, CFG.affine)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    ref = subject(1)
    assert np.array_equal(np.asarray(img.dataobj), ref["image"])
    assert np.array_equal(np.asarray(lab.dataobj), ref["lesion"])
    assert np.asarray(lab.dataobj).dtype == np.uint8
