"""Real-dataset adapters on tiny files fabricated in each release's exact on-disk layout (shared/DATA.md A.9)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import bench.types as types
import datasets.base as base
from bench.registry import DATASETS, SUITES
from datasets.base import DataError, read_nifti
from datasets.metaimage import LPS_TO_RAS, read_metaimage, read_metaimage_canonical, world_to_voxel

SHAPE = (6, 5, 4)
# LPS-origin CT as NIfTI stores it: x and y flipped, so reorientation to RAS+ is exercised
CT_AFFINE = np.array([[-0.8, 0, 0, 40.0], [0, -0.8, 0, 30.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])


def write_nii(path: Path, arr: np.ndarray, affine: np.ndarray = CT_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(arr, affine).to_filename(str(path))
    return path


def ct(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, SHAPE).astype(np.int16)


def seg(values: tuple[int, ...], seed: int = 0) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    for i, v in enumerate(values):
        lab[i % SHAPE[0], :, i % SHAPE[2]] = v
    return lab


# ---------------------------------------------------------------- MetaImage reader


def write_mhd(
    path: Path,
    arr_xyz: np.ndarray,
    spacing,
    offset,
    matrix=(1, 0, 0, 0, 1, 0, 0, 0, 1),
    etype: str = "MET_SHORT",
    msb: bool = False,
    compressed: bool = False,
    local: bool = False,
) -> Path:
    """MetaImage as ITK writes it: x-fastest bytes (numpy [z, y, x] C order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(arr_xyz.transpose(2, 1, 0)).astype(arr_xyz.dtype.newbyteorder(">" if msb else "<"))
    blob = zlib.compress(data.tobytes()) if compressed else data.tobytes()
    datafile = "LOCAL" if local else path.with_suffix(".zraw" if compressed else ".raw").name
    header = (
        "\n".join(
            [
                "ObjectType = Image",
                "NDims = 3",
                "BinaryData = True",
                f"BinaryDataByteOrderMSB = {msb}",
                f"CompressedData = {compressed}",
                "TransformMatrix = " + " ".join(map(str, matrix)),
                "Offset = " + " ".join(map(str, offset)),
                "CenterOfRotation = 0 0 0",
                "AnatomicalOrientation = RAI",
                "ElementSpacing = " + " ".join(map(str, spacing)),
                "DimSize = " + " ".join(map(str, arr_xyz.shape)),
                f"ElementType = {etype}",
                f"ElementDataFile = {datafile}",
            ]
        )
        + "\n"
    )
    if local:
        path.write_bytes(header.encode() + blob)
    else:
        path.write_text(header)
        (path.parent / datafile).write_bytes(blob)
    return path


@pytest.mark.parametrize(
    "opts", [{}, {"msb": True}, {"compressed": True}, {"local": True}, {"matrix": (1, 0, 0, 0, -1, 0, 0, 0, -1)}]
)
def test_metaimage_matches_nibabel_on_the_same_volume(tmp_path, opts):
    arr = ct(1)
    spacing, offset = (0.7, 0.9, 2.5), (-170.5, -120.25, -300.0)
    mhd = write_mhd(tmp_path / "vol.mhd", arr, spacing, offset, **opts)
    # the independent reference: the same voxels as NIfTI, LPS world (ITK) turned into NIfTI's RAS world
    direction = np.asarray(opts.get("matrix", (1, 0, 0, 0, 1, 0, 0, 0, 1)), float).reshape(3, 3).T
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(spacing)
    lps[:3, 3] = offset
    nii = write_nii(tmp_path / "vol.nii.gz", arr, LPS_TO_RAS @ lps)
    raw, raw_aff = read_metaimage(mhd)
    np.testing.assert_array_equal(raw, arr)
    ref, ref_aff = read_nifti(nii)
    got, got_aff = read_metaimage_canonical(mhd)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(got_aff, ref_aff, atol=1e-5)
    assert got.dtype == np.int16


def test_metaimage_errors_name_the_file(tmp_path):
    arr = ct(2)
    mhd = write_mhd(tmp_path / "a.mhd", arr, (1, 1, 1), (0, 0, 0))
    raw = tmp_path / "a.raw"
    raw.write_bytes(raw.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"a\.raw: truncated"):
        read_metaimage(mhd)
    raw.unlink()
    with pytest.raises(DataError, match=r"a\.raw: data file named by a\.mhd"):
        read_metaimage(mhd)
    mhd.write_text(mhd.read_text().replace("MET_SHORT", "MET_BOGUS"))
    with pytest.raises(DataError, match=r"a\.mhd: ElementType 'MET_BOGUS'"):
        read_metaimage(mhd)


# ---------------------------------------------------------------- LUNA16


def test_luna16_world_mm_to_voxel_by_hand(tmp_path, monkeypatch):
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"
    arr = np.full(SHAPE, -1000, np.int16)
    ijk = (4, 1, 2)  # file index order (x, y, z)
    arr[ijk] = 777
    spacing, offset = (0.7, 0.6, 2.5), (-195.3, -180.0, -340.25)
    write_mhd(tmp_path / "subset3" / f"{uid}.mhd", arr, spacing, offset)
    write_mhd(tmp_path / "subset0" / "1.2.3.mhd", ct(3), (1, 1, 1), (0, 0, 0))
    (tmp_path / "subset0" / "._1.2.3.mhd").write_bytes(b"\x00junk")
    # world mm of the marked voxel, computed by hand: Offset + index * ElementSpacing (identity direction)
    world = [offset[a] + ijk[a] * spacing[a] for a in range(3)]  # [-192.5, -179.4, -335.25]
    assert world == pytest.approx([-192.5, -179.4, -335.25])
    (tmp_path / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n" + f"{uid},{world[0]},{world[1]},{world[2]},5.4\n"
    )
    monkeypatch.setenv("SSLBENCH_LUNA16_ROOT", str(tmp_path))
    ds = DATASETS.get("luna16")(root=None, cache_dir=tmp_path / "cache")
    assert [r.id for r in ds.records("pretrain")] == ["1.2.3", uid]  # subset order, junk skipped
    assert [r.id for r in ds.records("subset3")] == [uid]
    rec = ds.records("subset3")[0]
    s = ds.load(rec)
    assert s["image"].shape == (1,) + SHAPE
    # RAS+ reorientation flips x and y of an LPS-stored scan: index i -> n - 1 - i
    expect = (SHAPE[0] - 1 - ijk[0], SHAPE[1] - 1 - ijk[1], ijk[2])
    np.testing.assert_allclose(s["nodules_voxel"], [expect], atol=1e-6)
    assert s["image"][0][expect] == 777
    assert s["spacing"] == pytest.approx(spacing)
    assert s["nodules_diameter_mm"].tolist() == [5.4]
    # the raw-file frame: (coord - Offset) / ElementSpacing, reversed for numpy's [z, y, x]
    _, file_affine = read_metaimage(rec.image)
    vox = world_to_voxel(world, file_affine)[0]
    np.testing.assert_allclose(vox, ijk, atol=1e-6)
    np.testing.assert_allclose(vox[::-1], [(world[a] - offset[a]) / spacing[a] for a in (2, 1, 0)], atol=1e-6)
    assert not ds.validate()


def test_luna16_bad_csv_and_layout(tmp_path):
    with pytest.raises(DataError, match="not a LUNA16 folder"):
        DATASETS.get("luna16")(root=tmp_path).records("pretrain")
    write_mhd(tmp_path / "subset0" / "9.9.mhd", ct(3), (1, 1, 1), (0, 0, 0))
    (tmp_path / "annotations.csv").write_text("seriesuid,x,y,z\n9.9,1,2,3\n")
    with pytest.raises(DataError, match=r"annotations\.csv: missing columns"):
        DATASETS.get("luna16")(root=tmp_path).records("pretrain")


# ---------------------------------------------------------------- MSD


def make_msd_task(root: Path, folder: str, stem: str, n: int, channels: int = 1, labels=None) -> Path:
    task = root / folder
    training = []
    for i in range(n):
        img = ct(i) if channels == 1 else np.stack([ct(i + 10 * c) for c in range(channels)], -1)
        write_nii(task / "imagesTr" / f"{stem}_{i}.nii.gz", img)
        write_nii(task / "labelsTr" / f"{stem}_{i}.nii.gz", seg((1, 0, 1), i))
        training.append({"image": f"./imagesTr/{stem}_{i}.nii.gz", "label": f"./labelsTr/{stem}_{i}.nii.gz"})
    write_nii(task / "imagesTs" / f"{stem}_100.nii.gz", ct(99) if channels == 1 else np.stack([ct(99)] * channels, -1))
    # macOS resource-fork junk as some tars contain it
    (task / "imagesTr" / f"._{stem}_2.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    (task / "labelsTr" / f"._{stem}_2.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    doc = {
        "name": stem,
        "tensorImageSize": "4D" if channels > 1 else "3D",
        "modality": {"0": "CT"},
        "labels": labels or {"0": "background", "1": "spleen"},
        "numTraining": n,
        "numTest": 1,
        "training": training,
        "test": [f"./imagesTs/{stem}_100.nii.gz"],
    }
    (task / "dataset.json").write_text(json.dumps(doc))
    return task


def test_msd_spleen_records_skip_junk_and_derive_split(tmp_path, monkeypatch):
    make_msd_task(tmp_path, "Task09_Spleen", "spleen", 12)
    monkeypatch.setenv("SSLBENCH_MSD_ROOT", str(tmp_path))
    ds = DATASETS.get("msd_spleen")(root=None)
    split = {s: [r.id for r in ds.records(s)] for s in ("train", "val", "test", "pretrain")}
    # natural order spleen_0 .. spleen_11: i%5==0 test, i%10==1 val
    assert split["test"] == ["spleen_0", "spleen_5", "spleen_10"]
    assert split["val"] == ["spleen_1", "spleen_11"]
    assert split["pretrain"] == split["train"] + ["spleen_100"]
    assert not any(r.startswith(".") for ids in split.values() for r in ids)
    rec = ds.records("test")[0]
    s = ds.load(rec)
    ref = nib.load(rec.image)
    assert s["image"].shape == (1,) + SHAPE
    # RAS+: the LPS-stored x and y axes come back flipped
    np.testing.assert_array_equal(s["image"][0], np.asarray(ref.dataobj)[::-1, ::-1, :])
    assert set(np.unique(s["label"])) == {0, 1}
    assert s["spacing"] == pytest.approx((0.8, 0.8, 2.5))
    assert not ds.validate()
    # the task folder itself is a valid root too
    assert len(DATASETS.get("msd_spleen")(root=tmp_path / "Task09_Spleen").records("train")) == len(split["train"])


def test_msd_4d_channel_last_loads_channel_first(tmp_path):
    make_msd_task(
        tmp_path, "Task05_Prostate", "prostate", 5, channels=2, labels={"0": "background", "1": "PZ", "2": "TZ"}
    )
    ds = DATASETS.get("msd_prostate")(root=tmp_path)
    rec = ds.records("train")[0]
    s = ds.load(rec)
    assert s["image"].shape == (2,) + SHAPE
    on_disk = np.asarray(nib.load(rec.image).dataobj)  # (x, y, z, c)
    for c in range(2):
        np.testing.assert_array_equal(s["image"][c], on_disk[::-1, ::-1, :, c])
    # a 3D file where the task is 4D: one clear error naming the file
    write_nii(Path(rec.image), ct(0))
    with pytest.raises(DataError, match=rf"{Path(rec.image).name}: expected a 4D channel-last image"):
        ds.load(rec)
    # and the reverse for a 3D task
    spleen = make_msd_task(tmp_path, "Task09_Spleen", "spleen", 5)
    write_nii(spleen / "imagesTr" / "spleen_2.nii.gz", np.stack([ct(0)] * 2, -1))
    sp = DATASETS.get("msd_spleen")(root=tmp_path)
    bad = next(r for r in sp.records("train") if r.id == "spleen_2")
    with pytest.raises(DataError, match=r"spleen_2\.nii\.gz: expected a 3D image"):
        sp.load(bad)


def test_validate_reports_every_problem_at_once_naming_files(tmp_path):
    task = make_msd_task(tmp_path, "Task09_Spleen", "spleen", 10)
    ds = DATASETS.get("msd_spleen")(root=tmp_path)
    assert not ds.validate()
    (task / "labelsTr" / "spleen_3.nii.gz").unlink()  # missing file
    write_nii(task / "labelsTr" / "spleen_4.nii.gz", np.zeros((6, 5, 3), np.uint8))  # shape mismatch
    moved = CT_AFFINE.copy()
    moved[0, 3] += 5.0
    write_nii(task / "labelsTr" / "spleen_6.nii.gz", seg((1,)), moved)  # affine mismatch
    write_nii(task / "labelsTr" / "spleen_7.nii.gz", seg((1, 7)))  # label outside map
    huge = CT_AFFINE.copy()
    huge[2, 2] = 12.0
    write_nii(task / "imagesTr" / "spleen_8.nii.gz", ct(8), huge)
    write_nii(task / "labelsTr" / "spleen_8.nii.gz", seg((1,)), huge)  # spacing 12 mm
    doc = json.loads((task / "dataset.json").read_text())
    doc["numTraining"] = 11  # wrong count
    (task / "dataset.json").write_text(json.dumps(doc))
    problems = ds.validate()
    text = "\n".join(problems)
    assert len(problems) == 6, text
    assert any("labelsTr/spleen_3.nii.gz: file not found" in p for p in problems), text
    assert any(
        "labelsTr/spleen_4.nii.gz" in p and "label shape (6, 5, 3) != image shape (6, 5, 4)" in p for p in problems
    ), text
    assert any("labelsTr/spleen_6.nii.gz" in p and "label affine" in p and "shape" not in p for p in problems), text
    assert any("labelsTr/spleen_7.nii.gz: label values [7] outside the label map [0, 1]" in p for p in problems), text
    assert any("imagesTr/spleen_8.nii.gz: implausible spacing" in p for p in problems), text
    assert any("dataset.json: numTraining = 11 but the 'training' list has 10" in p for p in problems), text


def test_validate_counts_records_against_the_committed_split_file(tmp_path, monkeypatch):
    """A split file that names a case the data lacks: the count and the missing file are both reported."""
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "lits.json").write_text(
        json.dumps({"splits": {"train": ["volume-0", "volume-28"], "val": [], "test": ["volume-1"]}})
    )
    monkeypatch.setattr(types, "SPLITS_DIR", splits)  # where load_split_file looks
    root = tmp_path / "lits"
    make_lits(root, (0, 28))
    ds = DATASETS.get("lits")(root=root)

    class Short(type(ds)):
        def records(self, split):  # an adapter that silently drops a case must not pass validate()
            return super().records(split)[:1]

    problems = ds.validate()
    assert problems == [
        f"{root / 'Training Batch 1' / 'volume-1.nii'}: file not found (record volume-1, split 'test')",
        f"{root / 'Training Batch 1' / 'segmentation-1.nii'}: file not found (record volume-1, split 'test')",
    ]
    short = Short(root=root).validate()
    assert any("split 'train' of lits: 1 records found, the split file names 2" in p for p in short), short


# ---------------------------------------------------------------- LiTS


def make_lits(root: Path, numbers) -> None:
    for n in numbers:
        batch = root / ("Training Batch 1" if n <= 27 else "Training Batch 2")
        write_nii(batch / f"volume-{n}.nii", ct(n).astype(np.float32))
        write_nii(batch / f"segmentation-{n}.nii", seg((1, 2, 1)).astype(np.float32))


def test_lits_batches_with_spaces_and_uncompressed_nii(tmp_path, monkeypatch):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "lits.json").write_text(
        json.dumps(
            {"splits": {"train": ["volume-0", "volume-28"], "val": [], "test": ["volume-27"], "pretrain": ["volume-0"]}}
        )
    )
    monkeypatch.setattr(types, "SPLITS_DIR", splits)  # where load_split_file looks
    root = tmp_path / "LiTS"
    make_lits(root, (0, 27, 28))
    monkeypatch.setenv("SSLBENCH_LITS_ROOT", str(root))
    ds = DATASETS.get("lits")()
    train = ds.records("train")
    assert [Path(r.image).relative_to(root).as_posix() for r in train] == [
        "Training Batch 1/volume-0.nii",
        "Training Batch 2/volume-28.nii",
    ]
    assert Path(train[1].label).name == "segmentation-28.nii"
    assert ds.records("pretrain")[0].label is None
    assert (Path(train[0].image).read_bytes()[344:348]) == b"n+1\x00"  # really an uncompressed .nii
    s = ds.load(train[0])
    assert s["image"].shape == (1,) + SHAPE and set(np.unique(s["label"])) == {0, 1, 2}
    assert not ds.validate()
    with pytest.raises(DataError, match="not a LiTS folder"):
        DATASETS.get("lits")(root=tmp_path).records("train")


def test_committed_lits_split_covers_the_131_volumes_once():
    sp = base.load_split_file("lits")
    labelled = sp["train"] + sp["val"] + sp["test"]
    assert sorted(labelled, key=base.natural_key) == [f"volume-{i}" for i in range(131)]
    assert len(set(labelled)) == 131 and sp["pretrain"] == sp["train"]


# ---------------------------------------------------------------- AMOS


def test_amos_doubled_folder_ct_only_and_released_labels(tmp_path, monkeypatch):
    base_dir = tmp_path / "amos22" / "amos22"
    training, validation = [], []
    for cid in (1, 2, 507):
        write_nii(base_dir / "imagesTr" / f"amos_{cid:04d}.nii.gz", ct(cid))
        write_nii(base_dir / "labelsTr" / f"amos_{cid:04d}.nii.gz", seg((8, 9, 15)))
        training.append({"image": f"./imagesTr/amos_{cid:04d}.nii.gz", "label": f"./labelsTr/amos_{cid:04d}.nii.gz"})
    for cid in (3, 4, 5, 6, 10, 508):
        write_nii(base_dir / "imagesVa" / f"amos_{cid:04d}.nii.gz", ct(cid))
        write_nii(base_dir / "labelsVa" / f"amos_{cid:04d}.nii.gz", seg((1, 13)))
        validation.append({"image": f"./imagesVa/amos_{cid:04d}.nii.gz", "label": f"./labelsVa/amos_{cid:04d}.nii.gz"})
    write_nii(base_dir / "imagesTs" / "amos_0009.nii.gz", ct(9))
    doc = {
        "name": "AMOS",
        "licence": "CC-BY-SA 4.0",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in DATASETS.get("amos").info.labels.items()},
        "numTraining": 3,
        "numValidation": 6,
        "numTest": 1,
        "training": training,
        "validation": validation,
        "test": [{"image": "./imagesTs/amos_0009.nii.gz"}],
    }
    (base_dir / "dataset.json").write_text(json.dumps(doc))
    monkeypatch.setenv("SSLBENCH_AMOS_ROOT", str(tmp_path))
    ds = DATASETS.get("amos")()
    assert [r.id for r in ds.records("train")] == ["amos_0001", "amos_0002"]  # 0507 is MRI
    assert [r.id for r in ds.records("val")] == ["amos_0003", "amos_0010"]  # every 4th validation case
    assert [r.id for r in ds.records("test")] == ["amos_0004", "amos_0005", "amos_0006"]
    assert [r.id for r in ds.records("unlabelled")] == ["amos_0009"]
    assert all(r.label is None for r in ds.records("pretrain"))
    mr = DATASETS.get("amos")(root=tmp_path / "amos22", include_mr=True)
    assert [r.id for r in mr.records("train")] == ["amos_0001", "amos_0002", "amos_0507"]
    labels = ds.info.labels
    assert (labels[8], labels[9], labels[4], len(labels)) == ("arota", "postcava", "gall bladder", 16)
    s = ds.load(ds.records("train")[0])
    assert set(np.unique(s["label"])) == {0, 8, 9, 15}
    assert not ds.validate()
    doc["numValidation"] = 120
    (base_dir / "dataset.json").write_text(json.dumps(doc))
    assert any("dataset.json: numValidation = 120" in p for p in ds.validate())


# ---------------------------------------------------------------- BraTS


def make_brats(root: Path, year: int, n: int, values: tuple[int, ...]) -> list[str]:
    ids = []
    for i in range(n):
        if year == 2021:
            cid, sep, mods = f"BraTS2021_{i:05d}", "_", ("t1", "t1ce", "t2", "flair")
        else:
            cid, sep, mods = f"BraTS-GLI-{i:05d}-000", "-", ("t1n", "t1c", "t2w", "t2f")
        d = root / cid
        for c, m in enumerate(mods):
            write_nii(d / f"{cid}{sep}{m}.nii.gz", np.full(SHAPE, 100 * (c + 1), np.int16), np.eye(4))
        write_nii(d / f"{cid}{sep}seg.nii.gz", seg(values), np.eye(4))
        ids.append(cid)
    return ids


def test_brats_2021_and_2023_map_to_the_same_regions(tmp_path):
    make_brats(tmp_path / "b21" / "BraTS2021_Training_Data", 2021, 5, (1, 2, 4))
    make_brats(tmp_path / "b23", 2023, 5, (1, 2, 3))
    d21 = DATASETS.get("brats2021")(root=tmp_path / "b21")
    d23 = DATASETS.get("brats2023")(root=tmp_path / "b23")
    s21 = d21.load(d21.records("train")[0])
    s23 = d23.load(d23.records("train")[0])
    assert s21["image"].shape == s23["image"].shape == (4,) + SHAPE
    # channel order T1, T1 post-contrast, T2, FLAIR in both years
    assert [float(c.mean()) for c in s21["image"]] == [100, 200, 300, 400] == [float(c.mean()) for c in s23["image"]]
    np.testing.assert_array_equal(s21["label"], s23["label"])
    assert set(np.unique(s21["label"])) == {0, 1, 2, 3}
    raw21 = np.asarray(nib.load(d21.records("train")[0].label).dataobj)
    from datasets.brats import REGIONS

    # the 2021 regions, from the raw file's own values: WT {1,2,4}, TC {1,4}, ET {4}
    for region, raw_values in (("WT", (1, 2, 4)), ("TC", (1, 4)), ("ET", (4,))):
        np.testing.assert_array_equal(np.isin(s21["label"], REGIONS[region]), np.isin(raw21, raw_values))
    assert not d21.validate() and not d23.validate()
    # a value of the other year's convention is an error naming the file
    bad = d21.records("test")[0]
    write_nii(Path(bad.label), seg((1, 3)), np.eye(4))
    assert [
        p
        for p in d21.validate()
        if "label values [3] outside the brats2021 convention [0, 1, 2, 4]" in p and Path(bad.label).name in p
    ]


# ---------------------------------------------------------------- folder corpus and suites


def test_folder_corpus_recursive_skips_junk(tmp_path, monkeypatch):
    write_nii(tmp_path / "a" / "scan1.nii.gz", ct(1))
    write_nii(tmp_path / "b" / "scan2.nii", ct(2))
    write_mhd(tmp_path / "c" / "scan3.mhd", ct(3), (0.7, 0.7, 1.0), (0, 0, 0))
    (tmp_path / "a" / "._scan1.nii.gz").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.setenv("SSLBENCH_FOLDER_ROOT", str(tmp_path))
    ds = DATASETS.get("folder")()
    recs = ds.records("pretrain")
    assert [r.id for r in recs] == ["a__scan1", "b__scan2", "c__scan3"]
    assert all(ds.load(r)["image"].shape == (1,) + SHAPE for r in recs)
    assert not ds.validate()
    write_nii(tmp_path / "b" / "scan2.nii", np.stack([ct(2)] * 2, -1))
    gz = tmp_path / "a" / "scan1.nii.gz"
    gz.write_bytes(gz.read_bytes()[:-40])  # a truncated download
    problems = ds.validate()
    assert len(problems) == 2, problems
    assert any("b/scan2.nii: expected a 3D volume" in p for p in problems)
    assert any("a/scan1.nii.gz: unreadable NIfTI" in p for p in problems)


def test_missing_root_names_the_env_var(monkeypatch):
    monkeypatch.delenv("SSLBENCH_AMOS_ROOT", raising=False)
    with pytest.raises(DataError, match=r"data\.root=PATH or set \$SSLBENCH_AMOS_ROOT"):
        DATASETS.get("amos")()


def test_btcv_liu_split_and_suites():
    sp = base.load_split_file("btcv_liu")
    assert sp["test"] == [f"img{i:04d}" for i in range(23, 29)]
    assert not set(sp["test"]) & set(sp["train"]) and len(sp["train"]) == 24 and sp["pretrain"] == sp["train"]
    for name in ("btcv", "amos", "pancreas", "lits"):
        suite = SUITES.get(name)
        assert tuple(suite.preprocessing["spacing"]) == (1.5, 1.5, 2.0)
        assert (suite.preprocessing["a_min"], suite.preprocessing["a_max"]) == (-175.0, 250.0)
        assert suite.pretrain_dataset in DATASETS
    btcv = SUITES.get("btcv")
    assert btcv.tasks[0].protocols == ("finetune", "linear_probe", "voxel_probe", "knn_seg") and btcv.seeds == (0, 1, 2)
    assert len(DATASETS.get(btcv.tasks[0].dataset).info.labels) == 14
    amos = SUITES.get("amos").tasks[0]
    assert amos.label_fractions == (0.05, 0.1, 0.2, 0.5, 1.0) and amos.draws == 5
    assert SUITES.get("pancreas").tasks[0].dataset == "msd_pancreas"
    assert {t.protocols for n in ("pancreas", "lits") for t in SUITES.get(n).tasks} == {
        ("finetune", "linear_probe", "voxel_probe", "knn_seg")
    }
