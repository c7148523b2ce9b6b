"""ChestX-ray14, MedMNIST and the embedded chest_xray / brain suites, on tiny files in the exact layouts."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

import datasets  # noqa: F401  (registers everything)
from bench.registry import DATASETS, SUITES
from datasets.base import DataError

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def write_cxr14(root, rows, train_val, test, header=HEADER, skip_png=()):
    (root / "images").mkdir(parents=True)
    lines = [header]
    for name, findings, pid in rows:
        # the 2017 file has a trailing empty field after the 11 real ones
        lines.append(f"{name},{findings},0,{pid},50,M,PA,20,16,0.2,0.1,")
        if name not in skip_png:
            arr = np.full((8, 10), int(name[:8]) % 250, np.uint8)
            arr[0, 0] = 7
            arr[-1, -1] = 255  # never a constant image (validate refuses those), whatever the patient id
            Image.fromarray(arr).save(root / "images" / name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("".join(n + "\n" for n in train_val))
    (root / "test_list.txt").write_text("".join(n + "\n" for n in test))


def cxr_fixture(tmp_path, **kw):
    rows = [
        (f"{p:08d}_{f:03d}.png", lab, p)
        for p, f, lab in [
            (1, 0, "Cardiomegaly"),
            (1, 1, "Cardiomegaly|Effusion"),
            (2, 0, "No Finding"),
            (3, 0, "Hernia|Atelectasis"),
            (4, 0, "No Finding"),
            (5, 0, "Pleural_Thickening"),
            (6, 0, "Nodule"),
            (7, 0, "No Finding"),
            (8, 0, "Mass"),
            (9, 0, "No Finding"),
            (10, 0, "Edema"),
            (11, 0, "Emphysema"),
            (12, 0, "No Finding"),
        ]
    ]
    test = ["00000002_000.png", "00000003_000.png"]
    train_val = [r[0] for r in rows if r[0] not in test]
    write_cxr14(tmp_path, rows, train_val, test, **kw)
    return rows


def test_cxr14_records_classes_and_patient_split(tmp_path):
    cxr_fixture(tmp_path)
    ds = DATASETS.get("chestxray14")(root=tmp_path)
    assert ds.info.task == "multilabel" and len(ds.info.labels) == 14
    assert ds.info.labels[0] == "Atelectasis" and ds.info.labels[13] == "Hernia"
    test = {r.id: r for r in ds.records("test")}
    assert test["00000003_000"].classes == (0, 13)  # Atelectasis, Hernia by official index
    assert test["00000002_000"].classes == ()  # No Finding
    assert test["00000002_000"].label is None
    tr, va = ds.records("train"), ds.records("val")
    # val = patients whose sha256(id) % 10 == 0, computed independently here
    want_val = {
        p
        for p in ["1", "4", "5", "6", "7", "8", "9", "10", "11", "12"]
        if int(hashlib.sha256(p.encode()).hexdigest(), 16) % 10 == 0
    }
    assert {r.patient_id for r in va} == want_val
    pats = [{r.patient_id for r in ds.records(s)} for s in ("train", "val", "test")]
    assert not (pats[0] & pats[1]) and not (pats[0] & pats[2]) and not (pats[1] & pats[2])
    assert len(tr) + len(va) == 11
    by_id = {r.id: r for r in tr + va}
    assert by_id["00000001_001"].classes == (1, 2)
    assert by_id["00000001_000"].patient_id == by_id["00000001_001"].patient_id == "1"
    assert all(r.classes is None for r in ds.records("pretrain"))


def test_cxr14_load_shapes_and_spacing(tmp_path):
    cxr_fixture(tmp_path)
    ds = DATASETS.get("chestxray14")(root=tmp_path)
    rec = next(r for r in ds.records("test") if r.id == "00000003_000")
    s = ds.load(rec)
    assert s["image"].shape == (1, 8, 10) and s["image"].dtype == np.float32
    assert s["image"][0, 0, 0] == 7.0 and s["image"][0, 1, 1] == 3.0  # raw units
    # original 20 x 16 px (W, H) at (x 0.2, y 0.1) mm stored as 10 x 8 -> (y, x) = (0.1*16/8, 0.2*20/10)
    assert s["spacing"] == pytest.approx((0.2, 0.4))
    assert s["label"] is None
    assert ds.validate() == []


def test_cxr14_16bit_and_rgb_png(tmp_path):
    from datasets.chestxray14 import read_png

    a16 = np.array([[0, 65535], [1000, 2]], np.uint16)
    Image.fromarray(a16).save(tmp_path / "a.png")
    assert read_png(tmp_path / "a.png").tolist() == [[[0.0, 65535.0], [1000.0, 2.0]]]
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 9
    rgba[..., 1] = 200
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "b.png")
    out = read_png(tmp_path / "b.png")
    assert out.shape == (1, 2, 3) and (out == 9).all()


def test_cxr14_errors(tmp_path):
    a, b, c, d = (tmp_path / x for x in "abcd")
    cxr_fixture(a, header=HEADER.replace("Patient ID", "PatientID"))
    with pytest.raises(DataError, match=r"Data_Entry_2017.csv: missing column.*Patient ID"):
        DATASETS.get("chestxray14")(root=a).records("train")
    cxr_fixture(b, skip_png=("00000002_000.png",))
    with pytest.raises(DataError, match=r"images.*missing.*00000002_000.png"):
        DATASETS.get("chestxray14")(root=b).records("test")
    cxr_fixture(c)
    (c / "test_list.txt").write_text("00000099_000.png\n")
    with pytest.raises(DataError, match=r"test_list.txt.*not in Data_Entry_2017.csv.*00000099_000"):
        DATASETS.get("chestxray14")(root=c).records("test")
    cxr_fixture(d)
    (d / "Data_Entry_2017.csv").write_text(HEADER + "\n00000001_000.png,Cardiomegally,0,1,5,M,PA,1,1,1,1\n")
    with pytest.raises(DataError, match=r"line 2.*unknown finding.*Cardiomegally"):
        DATASETS.get("chestxray14")(root=d).records("train")
    with pytest.raises(DataError, match="no root given"):
        DATASETS.get("chestxray14")()


# ---------------------------------------------------------------------------------------------- MedMNIST


def write_npz(path, n=(3, 2, 2), shape=(28, 28, 28), n_lab=11, multilabel=False, rgb=False, drop=None):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, *shape, *((3,) if rgb else ())), dtype=np.uint8)
        arrays[f"{split}_labels"] = (
            rng.integers(0, 2, (k, n_lab)) if multilabel else (np.arange(k) % n_lab)[:, None]
        ).astype(np.int64)
    if drop:
        arrays.pop(drop)
    np.savez_compressed(path, **arrays)
    return arrays


def test_medmnist_3d_records_and_load(tmp_path, monkeypatch):
    arrs = write_npz(tmp_path / "organmnist3d.npz")
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path))
    ds = DATASETS.get("organmnist3d")()
    assert ds.info.task == "multiclass" and ds.info.labels[0] == "liver" and len(ds.info.labels) == 11
    recs = ds.records("train")
    assert [r.classes for r in recs] == [(0,), (1,), (2,)]
    s = ds.load(recs[2])
    assert s["image"].shape == (1, 28, 28, 28) and s["image"].dtype == np.float32
    np.testing.assert_array_equal(s["image"][0], arrs["train_images"][2])
    assert s["spacing"] == (1.0, 1.0, 1.0)
    assert len(ds.records("test")) == 2 and ds.validate() == []


def test_medmnist_size_option_multilabel_and_rgb(tmp_path):
    arrs = write_npz(tmp_path / "chestmnist_64.npz", shape=(64, 64), n_lab=14, multilabel=True)
    ds = DATASETS.get("chestmnist")(root=tmp_path, size=64)
    recs = ds.records("val")
    for r in recs:
        assert r.classes == tuple(np.flatnonzero(arrs["val_labels"][r.meta["row"]]).tolist())
    assert ds.load(recs[0])["image"].shape == (1, 64, 64)
    write_npz(tmp_path / "pneumoniamnist.npz", shape=(28, 28), n_lab=2, rgb=True)
    s = DATASETS.get("pneumoniamnist")(root=tmp_path).load(
        DATASETS.get("pneumoniamnist")(root=tmp_path).records("test")[1]
    )
    assert s["image"].shape == (3, 28, 28)


def test_medmnist_errors(tmp_path):
    write_npz(tmp_path / "nodulemnist3d.npz", n_lab=2, drop="val_labels")
    ds = DATASETS.get("nodulemnist3d")(root=tmp_path)
    with pytest.raises(DataError, match=r"nodulemnist3d.npz: missing key 'val_labels'"):
        ds.records("val")
    assert len(ds.records("train")) == 3
    with pytest.raises(DataError, match=r"adrenalmnist3d.npz: MedMNIST file not found"):
        DATASETS.get("adrenalmnist3d")(root=tmp_path).records("train")
    (tmp_path / "vesselmnist3d.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="vesselmnist3d.npz: not a valid .npz"):
        DATASETS.get("vesselmnist3d")(root=tmp_path).records("train")
    write_npz(tmp_path / "synapsemnist3d.npz", n_lab=5)  # labels 0..4 for a binary flag
    with pytest.raises(DataError, match=r"synapsemnist3d.npz: train_labels values 0..2 outside 0..1"):
        DATASETS.get("synapsemnist3d")(root=tmp_path).records("train")
    with pytest.raises(DataError, match="size='big' is not an integer"):
        DATASETS.get("synapsemnist3d")(root=tmp_path, size="big")


def test_medmnist3d_corpus_and_suite(tmp_path):
    write_npz(tmp_path / "organmnist3d.npz")
    write_npz(tmp_path / "fracturemnist3d.npz", n=(4, 1, 1), n_lab=3)
    corpus = DATASETS.get("medmnist3d")(root=tmp_path)
    recs = corpus.records("pretrain")
    assert len(recs) == 7 and all(r.classes is None for r in recs)
    assert corpus.load(recs[-1])["image"].shape == (1, 28, 28, 28)
    suite = SUITES.get("medmnist3d")
    assert {t.dataset for t in suite.tasks} == {
        "organmnist3d",
        "nodulemnist3d",
        "adrenalmnist3d",
        "fracturemnist3d",
        "vesselmnist3d",
        "synapsemnist3d",
    }
    assert all(t.kind == "classification" and t.metric == "auroc" for t in suite.tasks)


def test_derived_split_files_name_the_served_splits():
    # the runner hashes these files and reads their keys to find the val/test splits to leakage-check
    from datasets.base import load_split_file

    for name in ("chestxray14", "medmnist"):
        assert set(load_split_file(name)) == {"train", "val", "test", "pretrain"}
    assert DATASETS.get("organmnist3d").split_name == DATASETS.get("medmnist3d").split_name == "medmnist"


# ------------------------------------------------------------------------------------- embedded suites


def test_chest_xray_split_file_and_suite():
    from datasets import chest_xray as cx

    ds = DATASETS.get("chest_xray")()
    ids = {s: ds.split_ids(s) for s in ("train", "val", "test", "pretrain")}
    assert len(ids["pretrain"]) >= 2000
    pats = {s: {cx.parse_name(n)[0] for n in v} for s, v in ids.items()}
    for a in pats:
        for b in pats:
            if a < b:
                assert not (pats[a] & pats[b]), (a, b)
    assert cx.build_split()["splits"] == {k: ds.split_ids(k) for k in ds.split_names()}
    suite = SUITES.get("chest_xray")
    assert suite.pretrain_dataset == "chest_xray" and suite.tasks[0].kind == "classification"
    assert suite.preprocessing == {"a_min": 0.0, "a_max": 255.0}


def test_chest_xray_generates_and_reads(tmp_path, monkeypatch):
    from datasets import chest_xray as cx
    from datasets.synthetic import chest_xray as gen

    splits = {
        "train": ["00000001_000.png", "00000001_001.png"],
        "val": [],
        "test": ["00000002_000.png"],
        "pretrain": ["00010001_000.png"],
    }
    monkeypatch.setattr(cx, "load_split_file", lambda name: splits)
    small = gen.CXRConfig(size=(64, 64))
    real_write = gen.write_cxr14_layout
    monkeypatch.setattr(gen, "write_cxr14_layout", lambda *a, **k: real_write(*a, **{**k, "cfg": small}))
    ds = DATASETS.get("chest_xray")(cache_dir=tmp_path)
    ds.prepare(progress=False)
    tr = ds.records("train")
    assert [r.patient_id for r in tr] == ["1", "1"]
    for r in tr + ds.records("test"):
        want = gen.findings_of(cx.seed_of(r.image.rsplit("/", 1)[1]))
        assert r.classes == tuple(i for i, k in enumerate(gen.FINDINGS) if want[k])
    s = ds.load(tr[0])
    assert s["image"].shape == (1, 64, 64) and 0 <= s["image"].min() and s["image"].max() <= 255
    assert (tmp_path / "chest_xray" / "Data_Entry_2017.csv").read_text().count("\n") == 5
    assert ds.validate(("train", "test", "pretrain")) == []


def test_brain_split_suite_and_generation(tmp_path, monkeypatch):
    from datasets import brain as br
    from datasets.synthetic import brain as gen

    full = br.build_split()["splits"]
    assert {k: len(v) for k, v in full.items()} == {"train": 168, "val": 24, "test": 48, "pretrain": 300}
    suite = SUITES.get("brain")
    kinds = {t.kind: t for t in suite.tasks}
    assert kinds["classification"].metric == "auroc" and kinds["segmentation"].metric == "dice"
    assert kinds["segmentation"].protocols == ("finetune", "linear_probe", "voxel_probe", "knn_seg")

    splits = {"train": ["brain0001"], "val": [], "test": ["brain0002"], "pretrain": ["brain0300"]}
    monkeypatch.setattr("datasets.base.load_split_file", lambda name: splits)
    monkeypatch.setattr(
        gen,
        "generate_subject",
        lambda seed, cfg=None, label=None: {
            "image": np.full((6, 5, 4), seed % 1000, np.int16),
            "lesion": np.zeros((6, 5, 4), np.uint8),
            "label": gen.class_of(seed),
            "affine": np.diag([2.0, 2.0, 2.0, 1.0]),
        },
    )
    cls = DATASETS.get("brain")(cache_dir=tmp_path)
    cls.prepare(progress=False)
    rec = cls.records("test")[0]
    assert rec.classes == (gen.class_of(br.SEED_OFFSET + 2),) and rec.label is None
    s = cls.load(rec)
    assert s["image"].shape == (1, 6, 5, 4) and s["image"][0, 0, 0, 0] == 2 and s["spacing"] == (2.0, 2.0, 2.0)
    seg = DATASETS.get("brain_lesion")(cache_dir=tmp_path)
    assert seg.root == cls.root
    srec = seg.records("train")[0]
    assert srec.label and seg.load(srec)["label"].shape == (6, 5, 4)
    assert seg.records("pretrain")[0].label is None
