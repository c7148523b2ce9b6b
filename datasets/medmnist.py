"""MedMNIST v2 / MedMNIST+ ``.npz`` files as downloaded (DATA.md A.7), 2D and 3D.

One dataset per flag (``organmnist3d``, ..., ``chestmnist``, ``pneumoniamnist``). The root (``data.root``
or ``$MEDMNIST_ROOT``) holds ``<flag>.npz`` (28 px) or ``<flag>_<size>.npz`` (MedMNIST+, option
``size=64`` etc.). Each file has the keys ``{train,val,test}_{images,labels}``.

Spec choices:

* the official splits are the npz's own; a record is one row: id ``<flag>_<split>_<row>``, ``meta``
  ``{"split", "row"}``. Each row is its own patient id (MedMNIST publishes no patient ids).
* labels ``[N, 1]`` give ``classes = (k,)`` (binary or multiclass); chestmnist's ``[N, 14]`` gives the
  tuple of positive indices (empty = no finding).
* images are uint8 returned as float32 raw 0..255: ``[N, H, W]`` -> ``[1, H, W]``, RGB ``[N, H, W, 3]``
  -> ``[3, H, W]``, 3D ``[N, D, H, W]`` -> ``[1, D, H, W]``; spacing is 1 per axis (MedMNIST resamples to a
  fixed grid and drops the physical spacing).
* ``medmnist3d`` is the pretraining corpus of the ``medmnist3d`` suite: the train images of every 3D
  flag present under the root (unlabelled).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.registry import DATASETS, SUITES
from bench.suites import Suite, Task
from datasets.base import DataError, DatasetAdapter, DatasetInfo, Record

SPLITS = ("train", "val", "test")

# label maps and order as in the medmnist package INFO table (info.py)
FLAGS: dict[str, dict[str, Any]] = {
    "organmnist3d": {
        "modality": "CT",
        "dims": 3,
        "task": "multiclass",
        "labels": [
            "liver",
            "kidney-right",
            "kidney-left",
            "femur-right",
            "femur-left",
            "bladder",
            "heart",
            "lung-right",
            "lung-left",
            "spleen",
            "pancreas",
        ],
    },
    "nodulemnist3d": {"modality": "CT", "dims": 3, "task": "binary", "labels": ["benign", "malignant"]},
    "adrenalmnist3d": {"modality": "CT", "dims": 3, "task": "binary", "labels": ["normal", "hyperplasia"]},
    "fracturemnist3d": {
        "modality": "CT",
        "dims": 3,
        "task": "multiclass",
        "labels": ["buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture"],
    },
    "vesselmnist3d": {"modality": "MR", "dims": 3, "task": "binary", "labels": ["vessel", "aneurysm"]},
    "synapsemnist3d": {
        "modality": "EM",
        "dims": 3,
        "task": "binary",
        "labels": ["inhibitory synapse", "excitatory synapse"],
    },
    "chestmnist": {
        "modality": "XR",
        "dims": 2,
        "task": "multilabel",
        "labels": [
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ],
    },
    "pneumoniamnist": {"modality": "XR", "dims": 2, "task": "binary", "labels": ["normal", "pneumonia"]},
}
FLAGS_3D = tuple(f for f, v in FLAGS.items() if v["dims"] == 3)


class MedMNIST(DatasetAdapter):
    """One MedMNIST flag. Options: ``size`` (28 default; 64/128/224 read ``<flag>_<size>.npz``)."""

    flag: str
    root_env = "MEDMNIST_ROOT"
    split_name = "medmnist"  # a derived split file: the splits live in each npz

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.options.get("size", 28)
        try:
            self.size = int(size)
        except (TypeError, ValueError):
            raise DataError(f"dataset {self.registry_name!r}: option size={size!r} is not an integer") from None
        self._arrays: dict[str, np.ndarray] = {}

    def npz_path(self) -> Path:
        name = f"{self.flag}.npz" if self.size == 28 else f"{self.flag}_{self.size}.npz"
        return self.root / name

    def split_names(self) -> tuple[str, ...]:
        return SPLITS

    def expected_count(self, split: str) -> int | None:
        return None

    def _keys(self) -> list[str]:
        path = self.npz_path()
        if not path.is_file():
            raise DataError(f"{path}: MedMNIST file not found (flag {self.flag!r}, size {self.size})")
        try:
            with zipfile.ZipFile(path) as z:
                return [n[:-4] if n.endswith(".npy") else n for n in z.namelist()]
        except zipfile.BadZipFile:
            raise DataError(f"{path}: not a valid .npz (zip) file") from None

    def _array(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            path = self.npz_path()
            keys = self._keys()
            if key not in keys:
                raise DataError(
                    f"{path}: missing key {key!r}; it has {sorted(keys)} "
                    f"(expected {[f'{s}_{k}' for s in SPLITS for k in ('images', 'labels')]})"
                )
            try:
                with np.load(path) as z:
                    self._arrays[key] = z[key]
            except Exception as e:  # truncated members raise zlib/zipfile/ValueError
                raise DataError(f"{path}: cannot read {key!r} ({type(e).__name__}: {e})") from None
        return self._arrays[key]

    def _classes(self, labels: np.ndarray, row: int) -> tuple[int, ...]:
        y = labels[row].reshape(-1)
        if self.info.task == "multilabel":
            return tuple(int(i) for i in np.flatnonzero(y))
        return (int(y[0]),)

    def records(self, split: str) -> list[Record]:
        if split not in SPLITS:
            raise DataError(f"dataset {self.registry_name!r} has no split {split!r}; it has {list(SPLITS)}")
        path = self.npz_path()
        images, labels = self._array(f"{split}_images"), self._array(f"{split}_labels")
        n_lab = len(self.info.labels)
        want_cols = n_lab if self.info.task == "multilabel" else 1
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[1] != want_cols:
            raise DataError(f"{path}: {split}_labels has shape {labels.shape}, expected (N, {want_cols})")
        if len(images) != len(labels):
            raise DataError(f"{path}: {split}_images has {len(images)} rows but {split}_labels {len(labels)}")
        want_ndim = 1 + self.info.spatial_dims
        if images.ndim not in (want_ndim, want_ndim + 1):
            raise DataError(
                f"{path}: {split}_images has shape {images.shape}, expected (N, "
                f"{', '.join(['S'] * self.info.spatial_dims)}[, C]) for a {self.info.spatial_dims}D flag"
            )
        if self.info.task != "multilabel" and len(labels) and not (0 <= labels.min() and labels.max() < n_lab):
            raise DataError(
                f"{path}: {split}_labels values {int(labels.min())}..{int(labels.max())} outside "
                f"0..{n_lab - 1} for {self.flag}"
            )
        out = []
        for row in range(len(images)):
            rid = f"{self.flag}_{split}_{row}"
            out.append(
                Record(
                    id=rid,
                    patient_id=rid,
                    image=str(path),
                    classes=self._classes(labels, row),
                    meta={"split": split, "row": row},
                )
            )
        return out

    def load(self, record: Record) -> dict[str, Any]:
        arr = self._array(f"{record.meta['split']}_images")[record.meta["row"]]
        if arr.ndim == self.info.spatial_dims + 1:  # channel-last RGB
            image = np.moveaxis(arr, -1, 0)
        else:
            image = arr[None]
        return {
            "id": record.id,
            "image": image.astype(np.float32),
            "spacing": (1.0,) * self.info.spatial_dims,
            "label": None,
        }


def _register(flag: str) -> type[MedMNIST]:
    spec = FLAGS[flag]
    cls = type(
        f"MedMNIST_{flag}",
        (MedMNIST,),
        {
            "flag": flag,
            "__doc__": f"MedMNIST {flag} ({spec['task']}, {len(spec['labels'])} labels).",
            "info": DatasetInfo(
                modality=spec["modality"],
                spatial_dims=spec["dims"],
                task=spec["task"],
                labels=dict(enumerate(spec["labels"])),
            ),
        },
    )
    return DATASETS.register(flag)(cls)


for _flag in FLAGS:
    _register(_flag)


@DATASETS.register("medmnist3d")
class MedMNIST3DCorpus(DatasetAdapter):
    """The unlabelled train images of every 3D flag found under the root (split ``pretrain``)."""

    info = DatasetInfo(modality="mixed", spatial_dims=3, task="multiclass")
    root_env = "MEDMNIST_ROOT"
    split_name = "medmnist"

    def split_names(self) -> tuple[str, ...]:
        return ("pretrain",)

    def expected_count(self, split: str) -> int | None:
        return None

    def _flags(self) -> list[MedMNIST]:
        adapters = [DATASETS.get(f)(root=self.root, cache_dir=self.cache_dir, **self.options) for f in FLAGS_3D]
        found = [a for a in adapters if a.npz_path().is_file()]
        if not found:
            raise DataError(
                f"{self.root}: no MedMNIST 3D file found (looked for {[a.npz_path().name for a in adapters]})"
            )
        return found

    def records(self, split: str) -> list[Record]:
        if split != "pretrain":
            raise DataError(f"dataset 'medmnist3d' has only the split 'pretrain', not {split!r}")
        self._by_flag = {a.flag: a for a in self._flags()}
        return [
            Record(r.id, r.patient_id, r.image, meta={**r.meta, "flag": a.flag})
            for a in self._by_flag.values()
            for r in a.records("train")
        ]

    def load(self, record: Record) -> dict[str, Any]:
        if not hasattr(self, "_by_flag"):
            self._by_flag = {a.flag: a for a in self._flags()}
        return self._by_flag[record.meta["flag"]].load(record)


SUITES.register("medmnist3d")(
    Suite(
        name="medmnist3d",
        version=1,
        pretrain_dataset="medmnist3d",
        pretrain_splits=("pretrain",),
        description="MedMNIST v2 3D flags (28^3 unless data.size is set): one classification task per flag on its "
        "official test split; pretraining on the unlabelled train images of all six",
        tasks=tuple(
            Task(
                name=f.replace("mnist3d", ""),
                dataset=f,
                kind="classification",
                protocols=("linear_probe", "finetune", "knn", "few_shot"),
                label_fractions=(0.1, 1.0),
                metric="auroc",
            )
            for f in FLAGS_3D
        ),
        seeds=(0, 1, 2),
        preprocessing={"a_min": 0.0, "a_max": 255.0},
    )
)
