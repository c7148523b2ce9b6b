"""Medical Segmentation Decathlon tasks exactly as the ``TaskXX_Name.tar`` archives unpack (shared/DATA.md A.2).

One registry entry per task (``msd_spleen``, ``msd_pancreas``, ``msd_braintumour`` ...), because registry
entries are built as ``cls(root=..., cache_dir=...)``. ``root`` (or ``$SSLBENCH_MSD_ROOT``) is the task folder
itself or a folder holding ``TaskXX_Name/``. The index is the task's ``dataset.json``; macOS ``._*`` junk
and other dot files are never records.

Splits: MSD releases labels for its training list only, so train/val/test are *derived from the
``dataset.json`` training list* by ``datasets.base.positional_split`` (natural id order: every 5th case
test, every 10th from the second val, rest train) -- deterministic, never random. ``pretrain`` = the
train split plus the official unlabelled ``test`` images (never a val/test case of the derived split).

BrainTumour and Prostate images are 4D channel-last NIfTI (x, y, z, c) and load as ``[C, X, Y, Z]``; a 3D
file where 4D is expected (or the reverse) is an error naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.registry import DATASETS, SUITES
from bench.suites import PROBES_3D, Suite, Task, protocols_added
from datasets.base import (
    DataError,
    DatasetAdapter,
    DatasetInfo,
    Record,
    check_label_geometry,
    label_array,
    natural_key,
    positional_split,
    read_nifti,
    spacing_of,
    wrong_dims,
)

ASA_PREPROCESSING = {"spacing": (1.5, 1.5, 2.0), "a_min": -175.0, "a_max": 250.0}  # METHODS.md §1.2 / §3.7

# key -> (folder, modality, channels, labels)
MSD_TASKS: dict[str, tuple[str, str, int, dict[int, str]]] = {
    "braintumour": (
        "Task01_BrainTumour",
        "MR",
        4,
        {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"},
    ),
    "heart": ("Task02_Heart", "MR", 1, {0: "background", 1: "left atrium"}),
    "liver": ("Task03_Liver", "CT", 1, {0: "background", 1: "liver", 2: "cancer"}),
    "hippocampus": ("Task04_Hippocampus", "MR", 1, {0: "background", 1: "Anterior", 2: "Posterior"}),
    "prostate": ("Task05_Prostate", "MR", 2, {0: "background", 1: "PZ", 2: "TZ"}),
    "lung": ("Task06_Lung", "CT", 1, {0: "background", 1: "cancer"}),
    "pancreas": ("Task07_Pancreas", "CT", 1, {0: "background", 1: "pancreas", 2: "cancer"}),
    "hepaticvessel": ("Task08_HepaticVessel", "CT", 1, {0: "background", 1: "Vessel", 2: "Tumour"}),
    "spleen": ("Task09_Spleen", "CT", 1, {0: "background", 1: "spleen"}),
    "colon": ("Task10_Colon", "CT", 1, {0: "background", 1: "colon cancer primaries"}),
}


def is_junk(name: str) -> bool:
    """macOS resource forks (``._x.nii.gz``) and other dot files ship inside some archives."""
    return Path(name).name.startswith(".")


def case_id(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def read_index(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: dataset.json not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("training"), list):
        raise DataError(f"{path}: no 'training' list")
    return doc


def entry_paths(base: Path, entry: Any, index: Path) -> tuple[str, str | None]:
    """(image, label) of one dataset.json entry: a dict or, in ``test`` lists, a bare string."""
    if isinstance(entry, str):
        return str(Path(base, entry).resolve()), None
    if isinstance(entry, dict) and "image" in entry:
        label = entry.get("label")
        return str(Path(base, entry["image"]).resolve()), str(Path(base, label).resolve()) if label else None
    raise DataError(f"{index}: malformed entry {entry!r}")


def count_problems(index: Path, doc: dict[str, Any], pairs: tuple[tuple[str, str], ...]) -> list[str]:
    out = []
    for key, lst in pairs:
        if key in doc and isinstance(doc.get(lst), list) and int(doc[key]) != len(doc[lst]):
            out.append(f"{index}: {key} = {doc[key]} but the {lst!r} list has {len(doc[lst])} entries")
    return out


def load_channels(record: Record, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Image as [C, X, Y, Z] float32 plus its affine; 4D files are channel-last on disk."""
    image, affine = read_nifti(record.image)
    if channels > 1:
        if image.ndim != 4 or image.shape[-1] != channels:
            raise DataError(
                f"{record.image}: expected a 4D channel-last image with {channels} channels, got shape {image.shape}"
            )
        image = np.moveaxis(image, -1, 0)
    else:
        if image.ndim == 4 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim != 3:
            raise DataError(f"{record.image}: expected a 3D image, got {wrong_dims(image.shape)}")
        image = image[None]
    return image.astype(np.float32), affine


class MSDTask(DatasetAdapter):
    task_key: ClassVar[str]
    folder: ClassVar[str]
    root_env = "SSLBENCH_MSD_ROOT"
    split_name = "msd"  # the split rule file; the ids come from dataset.json

    def task_root(self) -> Path:
        for cand in (self.root, self.root / self.folder):
            if (cand / "dataset.json").is_file():
                return cand
        raise DataError(
            f"{self.root}: not an MSD {self.folder} folder; expected {self.folder}/dataset.json "
            f"(or dataset.json directly under the root)"
        )

    def prepare(self, progress: bool = True) -> None:
        super().prepare(progress)
        self.task_root()

    def _index(self) -> tuple[Path, dict[str, Any]]:
        base = self.task_root()
        return base, read_index(base / "dataset.json")

    def _entries(self) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
        base, doc = self._index()
        index = base / "dataset.json"
        train = {}
        for e in doc["training"]:
            img, lab = entry_paths(base, e, index)
            if not is_junk(img):
                train[case_id(img)] = (img, lab)
        tests = [entry_paths(base, e, index)[0] for e in doc.get("test", [])]
        return train, [t for t in tests if not is_junk(t)]

    def split_names(self) -> tuple[str, ...]:
        return ("train", "val", "test", "pretrain")

    def expected_count(self, split: str) -> int | None:
        return None  # derived from dataset.json at load time; index_problems checks its counts

    def split_ids(self, split: str) -> list[str]:
        train, tests = self._entries()
        parts = positional_split(list(train))
        if split == "pretrain":
            return parts["train"] + sorted((case_id(t) for t in tests), key=natural_key)
        if split not in parts:
            raise DataError(f"dataset {self.registry_name!r} has no split {split!r}; it has {list(self.split_names())}")
        return parts[split]

    def records(self, split: str) -> list[Record]:
        train, tests = self._entries()
        if split == "pretrain":
            test_by_id = {case_id(t): t for t in tests}
            return [
                Record(cid, cid, train[cid][0] if cid in train else test_by_id[cid], None)
                for cid in self.split_ids("pretrain")
            ]
        return [Record(cid, cid, train[cid][0], train[cid][1]) for cid in self.split_ids(split)]

    def index_problems(self) -> list[str]:
        try:
            base, doc = self._index()
        except DataError as e:
            return [str(e)]
        out = count_problems(base / "dataset.json", doc, (("numTraining", "training"), ("numTest", "test")))
        labels = doc.get("labels")
        if isinstance(labels, dict) and {int(k) for k in labels} != set(self.info.labels):
            out.append(
                f"{base / 'dataset.json'}: labels {sorted(int(k) for k in labels)} differ from the "
                f"{self.folder} label map {sorted(self.info.labels)}"
            )
        return out

    def load(self, record: Record) -> dict[str, Any]:
        image, affine = load_channels(record, self.info.n_channels)
        out: dict[str, Any] = {
            "id": record.id,
            "image": image,
            "spacing": spacing_of(affine),
            "affine": affine,
            "label": None,
        }
        if record.label is not None:
            label, laff = read_nifti(record.label)
            check_label_geometry(record, image.shape[1:], affine, label.shape, laff)
            out["label"] = label_array(record.label, label)
        return out


def _make(key: str, folder: str, modality: str, channels: int, labels: dict[int, str]) -> type[MSDTask]:
    cls = type(
        f"MSD_{key}",
        (MSDTask,),
        {
            "task_key": key,
            "folder": folder,
            "__doc__": f"MSD {folder} (see module docstring).",
            "info": DatasetInfo(
                modality=modality, spatial_dims=3, task="segmentation", labels=labels, n_channels=channels
            ),
        },
    )
    return DATASETS.register(f"msd_{key}")(cls)


MSD_CLASSES = {k: _make(k, *v) for k, v in MSD_TASKS.items()}

SUITES.register("pancreas")(
    protocols_added(
        Suite(
            name="pancreas",
            version=2,  # 2: the representation probes (voxel_probe, knn_seg)
            data_version=1,
            pretrain_dataset="msd_pancreas",
            pretrain_splits=("pretrain",),
            description="MSD Task07 pancreas (CT, pancreas + cancer), derived 70/10/20 split of dataset.json's "
            "training list; pretraining on its train split plus the unlabelled imagesTs scans; ASA preprocessing",
            tasks=(
                Task(
                    name="pancreas",
                    dataset="msd_pancreas",
                    kind="segmentation",
                    protocols=("finetune", "linear_probe", *PROBES_3D),
                    metric="dice",
                ),
            ),
            seeds=(0, 1, 2),
            preprocessing=dict(ASA_PREPROCESSING),
        ),
        2,
        PROBES_3D,
    )
)
