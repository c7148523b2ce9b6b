"""Tests of the chest radiograph generator (datasets/synthetic/chest_xray.py)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from PIL import Image

from datasets.synthetic import chest_xray as cxr
from datasets.synthetic.chest_xray import (
    CSV_HEADER,
    FINDINGS,
    CXRConfig,
    findings_of,
    generate_image,
    write_cxr14_layout,
)

SMALL = CXRConfig(size=(128, 128))


@cache
def render(seed: int, cfg: CXRConfig = SMALL):
    return cxr._render(seed, cfg)


def ctr_from_silhouettes(res) -> float:
    """Cardiothoracic ratio measured on the projected heart and lung maps (pixels)."""
    heart_cols = np.nonzero((res["maps"]["heart"] > 0).any(0))[0]
    lung_cols = np.nonzero((res["maps"]["lung"] > 0).any(0))[0]
    return (heart_cols.max() - heart_cols.min() + 1) / (lung_cols.max() - lung_cols.min() + 1)


def test_constants():
    assert FINDINGS == ["Nodule", "Cardiomegaly", "Effusion", "Pneumothorax"]
    assert CSV_HEADER.count(",") == 10
    assert CSV_HEADER.startswith("Image Index,Finding Labels,Follow-up #,Patient ID,")


def test_determinism_and_format():
    a, fa = generate_image(5, SMALL)
    b, fb = generate_image(5, SMALL)
    assert a.dtype == np.uint8 and a.shape == (128, 128)
    assert np.array_equal(a, b) and fa == fb
    assert set(fa) == set(FINDINGS) and set(fa.values()) <= {0, 1}
    c, _ = generate_image(6, SMALL)
    assert not np.array_equal(a, c)
    assert a.min() == 0 and a.max() == 255  # windowed to the full 8-bit range
    # non-square sizes work and are deterministic too
    d, _ = generate_image(5, CXRConfig(size=(96, 80)))
    assert d.shape == (96, 80)


def test_prevalence_matches_config():
    n = 2000
    counts = np.zeros(len(FINDINGS))
    for s in range(n):
        f = findings_of(s, SMALL)
        counts += [f[k] for k in FINDINGS]
    for k, p, c in zip(FINDINGS, SMALL.prevalence, counts / n):
        assert c == pytest.approx(p, abs=0.03), k
    custom = CXRConfig(size=(128, 128), prevalence=(0.5, 0.0, 1.0, 0.1))
    f = [findings_of(s, custom) for s in range(400)]
    assert np.mean([x["Nodule"] for x in f]) == pytest.approx(0.5, abs=0.08)
    assert not any(x["Cardiomegaly"] for x in f) and all(x["Effusion"] for x in f)


@pytest.mark.parametrize("seed", range(40))
def test_labels_are_exact(seed):
    """The labels returned with an image are the ones drawn up front, and the phantom has exactly those findings."""
    res = render(seed)
    f = res["findings"]
    assert f == findings_of(seed, SMALL)
    m = res["maps"]
    assert (m["nodule"].max() > 2.0) == bool(f["Nodule"])
    assert (m["effusion"].max() > 2.0) == bool(f["Effusion"])
    assert (m["pneumothorax"].max() > 2.0) == bool(f["Pneumothorax"])
    assert (res["ctr"] > 0.5) == bool(f["Cardiomegaly"])
    assert (ctr_from_silhouettes(res) > 0.5) == bool(f["Cardiomegaly"])


def test_cardiomegaly_widens_the_heart_silhouette():
    normal = CXRConfig(size=(128, 128), prevalence=(0.0, 0.0, 0.0, 0.0))
    big = CXRConfig(size=(128, 128), prevalence=(0.0, 1.0, 0.0, 0.0))
    for seed in range(4):
        a, b = render(seed, normal), render(seed, big)
        assert a["findings"]["Cardiomegaly"] == 0 and b["findings"]["Cardiomegaly"] == 1
        assert a["ctr"] < 0.5 < b["ctr"]
        wa = np.count_nonzero((a["maps"]["heart"] > 0).any(0))
        wb = np.count_nonzero((b["maps"]["heart"] > 0).any(0))
        assert wb > 1.1 * wa  # same patient, wider heart
        assert ctr_from_silhouettes(b) > 0.5 > ctr_from_silhouettes(a)


@pytest.mark.parametrize("seed", [1, 2, 4, 5])
def test_lungs_darker_than_mediastinum(seed):
    res = render(seed)
    img = res["image"].astype(float)
    lung = res["maps"]["lung"]
    lung_px = lung > 0.6 * lung.max()
    rows = np.nonzero(lung_px.any(1))[0]
    # midline column band (spine / mediastinum) over the rows where the lungs are
    W = img.shape[1]
    mid = np.zeros_like(lung_px)
    mid[rows.min() : rows.max() + 1, W // 2 - 3 : W // 2 + 3] = True
    mid &= lung < 1.0
    assert mid.sum() > 50 and lung_px.sum() > 300
    assert img[lung_px].mean() + 50 < img[mid].mean()
    # the background outside the patient is black, like a real radiograph
    assert img[res["maps"]["body"] <= 0].mean() < 10


def test_patient_seed_shares_anatomy():
    a = cxr._render(11, SMALL, patient_seed=3)
    b = cxr._render(12, SMALL, patient_seed=3)
    assert (a["sex"], a["age"]) == (b["sex"], b["age"])
    assert a["phantom"].thorax_width == b["phantom"].thorax_width


def test_write_cxr14_layout(tmp_path):
    pd = pytest.importorskip("pandas")
    items = [
        ("00000001_000.png", 101, 1),
        ("00000001_001.png", 102, 1),
        ("00000002_000.png", 103, 2),
        ("00000003_000.png", 104, 3),
        ("00000004_000.png", 105, 4),
    ]
    out = write_cxr14_layout(tmp_path, items, test=["00000003_000.png", "00000004_000.png"], progress=False, cfg=SMALL)
    assert set(out) == {n for n, _, _ in items}
    # files and no temporaries left behind
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(
        ["Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"] + [f"images/{n}" for n, _, _ in items]
    )
    for name, seed, pid in items:
        im = Image.open(tmp_path / "images" / name)
        assert im.mode == "L" and im.size == (128, 128)
        patient_seed = 101 if pid == 1 else seed  # a patient's images share its first image's anatomy
        assert np.array_equal(np.asarray(im), generate_image(seed, SMALL, patient_seed=patient_seed)[0])
    # the exact ChestX-ray14 header quirk: 9 names, 11 comma-separated fields per row
    lines = (tmp_path / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == CSV_HEADER
    assert len(lines) == len(items) + 1
    for line in lines[1:]:
        assert len(line.split(",")) == 11
    df = pd.read_csv(tmp_path / "Data_Entry_2017.csv")
    assert list(df.columns) == [
        "Image Index",
        "Finding Labels",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
        "OriginalImage[Width",
        "Height]",
        "OriginalImagePixelSpacing[x",
        "y]",
    ]
    assert list(df["Follow-up #"]) == [0, 1, 0, 0, 0]
    assert list(df["Patient ID"]) == [1, 1, 2, 3, 4]
    assert (df["OriginalImage[Width"] == 128).all() and (df["Height]"] == 128).all()
    assert df["OriginalImagePixelSpacing[x"].iloc[0] == pytest.approx(SMALL.spacing_mm, abs=1e-3)
    assert set(df["Patient Gender"]) <= {"M", "F"} and (df["View Position"] == "PA").all()
    p1 = df[df["Patient ID"] == 1]
    assert p1["Patient Gender"].nunique() == 1 and p1["Patient Age"].nunique() == 1
    for _, row in df.iterrows():
        f = out[row["Image Index"]]
        want = "|".join(k for k in FINDINGS if f[k]) or "No Finding"
        assert row["Finding Labels"] == want
    assert (tmp_path / "test_list.txt").read_text().split() == ["00000003_000.png", "00000004_000.png"]
    assert (tmp_path / "train_val_list.txt").read_text().split() == [n for n, _, _ in items[:3]]


def test_write_cxr14_layout_rejects_bad_lists(tmp_path):
    with pytest.raises(ValueError):
        write_cxr14_layout(tmp_path, [("a.png", 1, 1)], test=["b.png"], progress=False, cfg=SMALL)
    with pytest.raises(ValueError):
        write_cxr14_layout(tmp_path, [("a.png", 1, 1), ("a.png", 2, 2)], progress=False, cfg=SMALL)
