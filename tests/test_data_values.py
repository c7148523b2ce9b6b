"""Data validation covers values, not only shapes: NaN/inf voxels, constant images, a 4D image where a 3D volume is
expected, a zero or negative spacing and label values outside the label map are each one line naming the file, in
``DatasetAdapter.validate`` (``stage=validate``) and so before any training, for every adapter."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import datasets  # noqa: F401  (registers every adapter)
from bench.registry import DATASETS
from datasets.base import DataError, image_problems, label_array, read_nifti, spacing_problem, wrong_dims
from datasets.metaimage import read_metaimage

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (8, 8, 4)
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])
BTCV_IDS = [f"img{i:04d}" for i in (*range(1, 11), *range(21, 41))]


def ct(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, shape).astype(np.int16)


def seg(seed: int, values: tuple[int, ...] = (0, 1, 6, 13)) -> np.ndarray:
    return np.random.default_rng(seed).choice(values, SHAPE).astype(np.uint8)


def write_nii(path: Path, arr: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(arr, affine).to_filename(str(path))
    return path


def write_raw_nii(path: Path, arr: np.ndarray, pixdim: tuple[float, ...], srow: np.ndarray | None = None) -> Path:
    """A NIfTI exactly as given, header fields included: nibabel's writer would repair a zero or negative pixdim
    and refuses a degenerate affine, but files written by other tools can hold either."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(arr.shape)
    hdr.set_data_dtype(arr.dtype)
    hdr["pixdim"][1 : 1 + len(pixdim)] = pixdim
    hdr["qform_code"] = 1
    if srow is not None:
        hdr["sform_code"] = 1
        hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = srow[0], srow[1], srow[2]
    hdr["vox_offset"] = 352
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if path.name.endswith(".gz") else open)(path, "wb") as f:
        hdr.write_to(f)
        f.write(b"\0" * 4)  # no extensions
        f.write(arr.tobytes(order="F"))
    return path


def make_btcv(root: Path) -> tuple[Path, Path]:
    """A BTCV download (``RawData/Training/{img,label}``) of tiny, valid cases."""
    img, lab = root / "RawData" / "Training" / "img", root / "RawData" / "Training" / "label"
    for i, cid in enumerate(BTCV_IDS):
        write_nii(img / f"{cid}.nii.gz", ct(i))
        write_nii(lab / f"label{cid[3:]}.nii.gz", seg(i))
    return img, lab


def break_btcv(img: Path, lab: Path) -> dict[str, tuple[str, ...]]:
    """One problem per file (all in btcv_liu's train split); returns file name -> words its message must hold."""
    nan = ct(1).astype(np.float32)
    nan[2, 3, 1] = np.nan
    write_nii(img / "img0001.nii.gz", nan)
    inf = ct(2).astype(np.float32)
    inf[0, 0, 0] = np.inf
    write_nii(img / "img0002.nii.gz", inf)
    write_nii(img / "img0003.nii.gz", np.full(SHAPE, -1000, np.int16))
    write_nii(img / "img0004.nii.gz", np.stack([ct(4), ct(40)], -1))
    write_raw_nii(img / "img0005.nii.gz", ct(5), (0.8, 0.0, 2.5))
    write_nii(lab / "label0006.nii.gz", seg(6, (0, 1, 99)))
    return {
        "img0001.nii.gz": ("1 non-finite voxel", "1 NaN, 0 inf"),
        "img0002.nii.gz": ("1 non-finite voxel", "0 NaN, 1 inf"),
        "img0003.nii.gz": ("constant image", "every voxel is -1000"),
        "img0004.nii.gz": ("a 4D image (shape (8, 8, 4, 2)) where a 3D volume is expected",),
        "img0005.nii.gz": ("spacing (0.8, 0.0, 2.5) mm (pixdim)", "zero, negative or NaN"),
        "label0006.nii.gz": ("label values [99] outside the label map [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]",),
    }


def assert_one_line_per_problem(problems: list[str], want: dict[str, tuple[str, ...]]) -> None:
    text = "\n".join(problems)
    assert len(problems) == len(want), text
    assert all("\n" not in p for p in problems)
    for name, words in want.items():
        mine = [p for p in problems if f"/{name}:" in p or f"/{name} (record" in p]
        assert len(mine) == 1, (name, text)
        assert all(w in mine[0] for w in words), (name, words, mine[0])


# ---------------------------------------------------------------------------------------------- every problem, BTCV


def test_valid_btcv_copy_passes(tmp_path):
    make_btcv(tmp_path)
    for name in ("btcv", "btcv_liu"):
        assert DATASETS.get(name)(root=tmp_path).validate() == []


def test_btcv_each_bad_value_is_one_message_naming_the_file(tmp_path):
    want = break_btcv(*make_btcv(tmp_path))
    ds = DATASETS.get("btcv_liu")(root=tmp_path)
    assert_one_line_per_problem(ds.validate(), want)
    # loading for training refuses what a cast or nibabel would otherwise hide (the others are validate's to find)
    recs = {r.id: r for r in ds.records("train")}
    with pytest.raises(DataError, match=r"img0004\.nii\.gz: a 4D image \(shape \(8, 8, 4, 2\)\) where a 3D volume"):
        ds.load(recs["img0004"])
    with pytest.raises(DataError, match=r"img0005\.nii\.gz: spacing .*zero"):
        ds.load(recs["img0005"])


def test_validate_stage_exits_2_with_one_line_and_writes_nothing(tmp_path):
    """Through the real command line: ``stage=validate suite=btcv data.root=...`` on the broken copy."""
    root = tmp_path / "BTCV"
    want = break_btcv(*make_btcv(root))
    runs = tmp_path / "runs"
    env = dict(os.environ, SSLBENCH_DATA=str(tmp_path / "cache"), HYDRA_FULL_ERROR="0")
    args = ["stage=validate", "suite=btcv", "method=random", f"data.root={root}", f"runs_dir={runs}", "progress=false"]
    p = subprocess.run(
        [sys.executable, "run_bench.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"{len(want)} data problem(s)" in lines[0], lines[0]
    problems = lines[0].split(": ", 1)[1].split(" | ")
    assert_one_line_per_problem(problems, want)
    # nothing but Hydra's own log of the composed config: no store, no pretraining, no cell, no board
    written = sorted(str(f.relative_to(runs)) for f in runs.rglob("*") if f.is_file()) if runs.exists() else []
    assert all(f.startswith("hydra/") for f in written), written
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))


# ---------------------------------------------------------------------------------------------- other adapters


def test_msd_single_and_multichannel(tmp_path):
    def task(folder: str, stem: str, channels: int, labels: dict[str, str]) -> Path:
        base = tmp_path / folder
        training = []
        for i in range(6):
            img = ct(i) if channels == 1 else np.stack([ct(i + 10 * c) for c in range(channels)], -1)
            write_nii(base / "imagesTr" / f"{stem}_{i}.nii.gz", img)
            write_nii(base / "labelsTr" / f"{stem}_{i}.nii.gz", seg(i, (0, 1)))
            training.append({"image": f"./imagesTr/{stem}_{i}.nii.gz", "label": f"./labelsTr/{stem}_{i}.nii.gz"})
        doc = {"labels": labels, "numTraining": 6, "training": training}
        (base / "dataset.json").write_text(json.dumps(doc))
        return base

    spleen = task("Task09_Spleen", "spleen", 1, {"0": "background", "1": "spleen"})
    prostate = task("Task05_Prostate", "prostate", 2, {"0": "background", "1": "PZ", "2": "TZ"})
    sp, pr = DATASETS.get("msd_spleen")(root=tmp_path), DATASETS.get("msd_prostate")(root=tmp_path)
    assert sp.validate() == [] and pr.validate() == []
    bad = ct(1).astype(np.float64)
    bad[1, 1, 1] = -np.inf
    write_nii(spleen / "imagesTr" / "spleen_1.nii.gz", bad)
    write_nii(spleen / "imagesTr" / "spleen_2.nii.gz", np.stack([ct(2)] * 2, -1))
    lab = seg(3, (0, 1)).astype(np.float32)
    lab[0, 0, 0] = np.nan
    write_nii(spleen / "labelsTr" / "spleen_3.nii.gz", lab)
    assert_one_line_per_problem(
        sp.validate(),
        {
            "spleen_1.nii.gz": ("0 NaN, 1 inf",),
            "spleen_2.nii.gz": ("a 4D image (shape (8, 8, 4, 2)) where a 3D volume is expected",),
            "spleen_3.nii.gz": ("label map has 1 non-finite value(s)",),
        },
    )
    two = np.stack([ct(4), ct(14)], -1).astype(np.float32)
    two[..., 1][3, 3, 3] = np.nan
    write_nii(prostate / "imagesTr" / "prostate_4.nii.gz", two)
    write_nii(prostate / "imagesTr" / "prostate_5.nii.gz", np.full(SHAPE + (2,), 7, np.int16))
    assert_one_line_per_problem(
        pr.validate(),
        {
            "prostate_4.nii.gz": ("1 non-finite voxel(s) in channel 1 (1 NaN, 0 inf)",),
            "prostate_5.nii.gz": ("constant image (every voxel is 7",),
        },
    )


def test_brats_names_the_modality_file(tmp_path):
    for i in range(5):
        cid = f"BraTS2021_{i:05d}"
        for c, m in enumerate(("t1", "t1ce", "t2", "flair")):
            write_nii(tmp_path / cid / f"{cid}_{m}.nii.gz", ct(10 * i + c))
        write_nii(tmp_path / cid / f"{cid}_seg.nii.gz", seg(i, (0, 1, 2, 4)))
    ds = DATASETS.get("brats2021")(root=tmp_path)
    assert ds.validate() == []
    case = ds.records("train")[0].id
    t2 = ct(0).astype(np.float32)
    t2[0, 1, 2] = np.nan
    write_nii(tmp_path / case / f"{case}_t2.nii.gz", t2)
    assert_one_line_per_problem(ds.validate(), {f"{case}_t2.nii.gz": ("1 NaN",)})


def write_mhd(path: Path, arr: np.ndarray, spacing: tuple[float, ...], etype: str = "MET_SHORT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "ElementSpacing = " + " ".join(map(str, spacing)),
        "DimSize = " + " ".join(map(str, arr.shape)),
        f"ElementType = {etype}",
        f"ElementDataFile = {path.with_suffix('.raw').name}",
    ]
    path.write_text("\n".join(header) + "\n")
    path.with_suffix(".raw").write_bytes(np.ascontiguousarray(arr.transpose(2, 1, 0)).tobytes())
    return path


def test_folder_and_luna16_corpora(tmp_path):
    folder = tmp_path / "folder"
    write_nii(folder / "a.nii.gz", ct(1))
    write_mhd(folder / "b.mhd", ct(2), (0.7, 0.7, 1.0))
    nan = ct(3).astype(np.float32)
    nan[:2] = np.nan
    write_nii(folder / "c.nii.gz", nan)
    write_mhd(folder / "d.mhd", np.zeros(SHAPE, np.int16), (0.7, 0.7, 1.0))
    write_mhd(folder / "e.mhd", ct(5), (0.7, -0.7, 1.0))
    write_raw_nii(folder / "f.nii", ct(6), (0.8, 0.8, 2.5), srow=np.diag([0.8, 0.0, 2.5, 1.0])[:3])
    write_nii(folder / "g.nii.gz", np.stack([ct(7)] * 3, -1))
    assert_one_line_per_problem(
        DATASETS.get("folder")(root=folder).validate(),
        {
            "c.nii.gz": ("64 non-finite voxel(s) (64 NaN, 0 inf) of 256",),
            "d.mhd": ("constant image (every voxel is 0",),
            "e.mhd": ("spacing (0.7, -0.7, 1.0) mm (ElementSpacing)", "zero, negative or NaN"),
            "f.nii": ("spacing (0.8, 0.0, 2.5) mm", "zero, negative or NaN"),
            "g.nii.gz": ("a 4D image (shape (8, 8, 4, 3)) where a 3D volume is expected",),
        },
    )
    luna = tmp_path / "luna"
    write_mhd(luna / "subset0" / "1.1.mhd", ct(1), (0.7, 0.7, 2.5))
    write_mhd(luna / "subset1" / "1.2.mhd", np.full(SHAPE, -1000, np.int16), (0.7, 0.7, 2.5))
    write_mhd(luna / "subset1" / "1.3.mhd", ct(3), (0.7, 0.0, 2.5))
    assert_one_line_per_problem(
        DATASETS.get("luna16")(root=luna).validate(),
        {"1.2.mhd": ("constant image",), "1.3.mhd": ("(ElementSpacing)", "zero, negative or NaN")},
    )


def test_2d_adapters_name_the_image_or_the_record(tmp_path):
    # ChestX-ray14: a blank PNG
    root = tmp_path / "cxr"
    (root / "images").mkdir(parents=True)
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    names = [f"{p:08d}_000.png" for p in range(1, 6)]
    rows = [f"{n},No Finding,0,{i + 1},50,M,PA,16,16,0.2,0.2," for i, n in enumerate(names)]
    (root / "Data_Entry_2017.csv").write_text("\n".join([header, *rows]) + "\n")
    (root / "train_val_list.txt").write_text("".join(n + "\n" for n in names[:4]))
    (root / "test_list.txt").write_text(names[4] + "\n")
    for i, n in enumerate(names):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16), dtype=np.uint8)).save(root / "images" / n)
    ds = DATASETS.get("chestxray14")(root=root)
    assert ds.validate() == []
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / names[4])
    assert_one_line_per_problem(ds.validate(), {names[4]: ("constant image (every voxel is 0, shape (16, 16))",)})
    # MedMNIST: many records in one file, so the message names the record as well
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in (("train", 3), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, 6, 6, 6), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % 2)[:, None]
    arrays["train_images"][1] = 9
    np.savez_compressed(tmp_path / "nodulemnist3d.npz", **arrays)
    problems = DATASETS.get("nodulemnist3d")(root=tmp_path).validate()
    assert len(problems) == 1 and "nodulemnist3d.npz (record nodulemnist3d_train_1): constant image" in problems[0]


# ---------------------------------------------------------------------------------------------- the pieces


def test_helpers_wording_and_cheap_paths():
    assert wrong_dims((8, 8, 4, 2)) == "a 4D image (shape (8, 8, 4, 2)) where a 3D volume is expected"
    assert wrong_dims((5, 5, 3), 2) == "a 3D image (shape (5, 5, 3)) where a 2D image is expected"
    assert spacing_problem((0.8, 0.8, 2.5)) is None
    for bad in ((0.8, 0.0, 2.5), (0.8, -1.0, 2.5), (0.8, float("nan"), 2.5)):
        assert "zero, negative or NaN side" in (spacing_problem(bad) or "")
    assert "implausible spacing" in (spacing_problem((0.8, 0.8, 12.0)) or "")
    from bench.types import DatasetInfo

    info = DatasetInfo(modality="CT", spatial_dims=3, task="segmentation")
    good = ct(0).astype(np.float32)[None]
    assert image_problems(good, (1.0, 1.0, 1.0), info, ["x.nii.gz"], "x.nii.gz") == []
    both = good.copy()
    both[0, 0, 0, 0], both[0, 1, 0, 0] = np.nan, -np.inf
    assert image_problems(both, (1.0, 1.0, 1.0), info, ["x"], "x") == ["x: 2 non-finite voxel(s) (1 NaN, 1 inf) of 256"]
    assert image_problems(good[:, :, :, :0], (1.0, 1.0, 1.0), info, ["x"], "x") == [
        "x: empty image (shape (1, 8, 8, 0))"
    ]
    assert image_problems(good, (1.0, 1.0), info, ["x"], "x") == ["x: spacing (1.0, 1.0) has 2 values for a 3D image"]


def test_label_maps_that_a_cast_would_change(tmp_path):
    assert label_array("l.nii.gz", np.array([[0.0, 2.0]])).dtype == np.int16
    with pytest.raises(DataError, match=r"l\.nii\.gz: label map has 1 non-integer value\(s\), e\.g\. 0\.5"):
        label_array("l.nii.gz", np.array([0.0, 0.5, 1.0]))
    with pytest.raises(DataError, match=r"l\.nii\.gz: label values 0\.\.40000 lie beyond"):
        label_array("l.nii.gz", np.array([0, 40000], np.uint16))


def test_read_nifti_refuses_what_nibabel_would_repair(tmp_path):
    ok = write_raw_nii(tmp_path / "ok.nii", ct(0), (0.8, 0.8, 2.5))
    assert read_nifti(ok)[0].shape == SHAPE
    for name, pixdim in (("zero.nii.gz", (0.8, 0.0, 2.5)), ("neg.nii", (-0.8, 0.8, 2.5))):
        path = write_raw_nii(tmp_path / name, ct(1), pixdim)
        with pytest.raises(DataError, match=rf"{name}: spacing .* mm \(pixdim\) has a zero, negative or NaN side"):
            read_nifti(path)
    # with an sform the affine is the sform's, whatever pixdim says; a degenerate one names the spacing
    fine = write_raw_nii(tmp_path / "sform.nii", ct(2), (0.0, 0.0, 0.0), srow=AFFINE[:3])
    assert read_nifti(fine)[0].shape == SHAPE
    flat = write_raw_nii(tmp_path / "flat.nii", ct(2), (0.8, 0.8, 2.5), srow=np.diag([0.8, 0.8, 0.0, 1.0])[:3])
    with pytest.raises(DataError, match=r"flat\.nii: spacing \(0\.8, 0\.8, 0\.0\) mm has a zero"):
        read_nifti(flat)
    mhd = write_mhd(tmp_path / "m.mhd", ct(3), (0.7, 0.0, 1.0))
    with pytest.raises(DataError, match=r"m\.mhd: spacing \(0\.7, 0\.0, 1\.0\) mm \(ElementSpacing\)"):
        read_metaimage(mhd)
