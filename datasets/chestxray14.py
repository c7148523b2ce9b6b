"""``chestxray14``: NIH ChestX-ray14 as downloaded (DATA.md A.6), a 14-label multi-label task.

Layout under the root: ``images/NNNNNNNN_FFF.png``, ``Data_Entry_2017.csv`` (or the ``_v2020`` file),
``train_val_list.txt`` and ``test_list.txt``.

Spec choices:

* The CSV header has unquoted commas inside ``OriginalImage[Width,Height]`` and
  ``OriginalImagePixelSpacing[x,y]``: the header has 9 names but rows 11 fields (the 2017 file may add a
  trailing empty one). Columns are therefore found by position in the comma-split header, which is
  the same for the header and the rows up to the bracketed columns.
* Labels are the 14 official findings in the official order (``CXR14_LABELS``); ``No Finding`` is the
  empty tuple. ``Record.label`` is None.
* test = ``test_list.txt``. Only ``train_val_list.txt`` is given for training, so val is carved out of it
  by patient: a patient goes to val iff ``sha256(str(patient id)) mod 10 == 0`` (about 10 %). The rule
  depends on the patient id only, so every copy of the release gets the same split and no patient is in
  two splits. ``pretrain`` is the train images without labels. The rule is recorded in the derived split
  file ``datasets/splits/chestxray14.json`` (empty lists: only the user holds the file list), so a run's
  split hash changes when the rule does.
* An image is returned as float32 [1, H, W] in raw units (8-bit PNG 0..255, 16-bit PNG 0..65535); files
  with extra channels keep channel 0 (as torchxrayvision does). Spacing (mm) is the CSV's original
  pixel spacing scaled by the original / stored image width and height.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from bench.registry import DATASETS, SUITES
from bench.suites import Suite, Task
from datasets.base import DataError, DatasetAdapter, DatasetInfo, Record

CXR14_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
CSV_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
VAL_MODULUS = 10  # a patient is in val iff sha256(patient id) % VAL_MODULUS == 0


def is_val_patient(patient_id: str) -> bool:
    """The documented val carve-out rule for the real dataset (patient-level, id-only, deterministic)."""
    return int(hashlib.sha256(str(int(patient_id)).encode()).hexdigest(), 16) % VAL_MODULUS == 0


def read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def read_data_entry(path: Path, label_names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Parse Data_Entry CSV -> {image name: {"patient_id", "classes", "spacing", "orig_size"}}."""
    import csv

    if not path.is_file():
        raise DataError(f"{path}: Data_Entry CSV not found")
    index = {n: i for i, n in enumerate(label_names)}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(f"{path}: empty CSV")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} in the header {header}")
    col = {c: header.index(c) for c in REQUIRED_COLUMNS}
    # after the quirky split, spacing x/y sit right after 'OriginalImagePixelSpacing[x'; sizes likewise
    sp_col = next((i for i, h in enumerate(header) if h.startswith("OriginalImagePixelSpacing")), None)
    sz_col = next((i for i, h in enumerate(header) if h.startswith("OriginalImage[")), None)
    out: dict[str, dict[str, Any]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(col.values()):
            raise DataError(f"{path}: line {line_no} has {len(row)} fields, fewer than the header needs")
        name = row[col["Image Index"]].strip()
        findings = [t.strip() for t in row[col["Finding Labels"]].split("|") if t.strip()]
        unknown = [t for t in findings if t != NO_FINDING and t not in index]
        if unknown:
            raise DataError(
                f"{path}: line {line_no} ({name}): unknown finding(s) {unknown}; "
                f"known: {list(label_names)} or {NO_FINDING!r}"
            )
        if NO_FINDING in findings and len(findings) > 1:
            raise DataError(f"{path}: line {line_no} ({name}): {NO_FINDING!r} together with findings {findings}")
        try:
            pid = str(int(row[col["Patient ID"]]))
        except ValueError:
            raise DataError(
                f"{path}: line {line_no} ({name}): Patient ID {row[col['Patient ID']]!r} is not an integer"
            ) from None
        entry: dict[str, Any] = {
            "patient_id": pid,
            "classes": tuple(sorted(index[t] for t in findings if t != NO_FINDING)),
        }
        try:
            if sp_col is not None and len(row) > sp_col + 1:
                entry["spacing"] = (float(row[sp_col + 1]), float(row[sp_col]))  # (y, x) like [H, W]
            if sz_col is not None and len(row) > sz_col + 1:
                entry["orig_size"] = (float(row[sz_col + 1]), float(row[sz_col]))
        except ValueError:
            pass  # size/spacing are optional metadata; a malformed value only loses the mm scale
        if name in out:
            raise DataError(f"{path}: image {name} listed twice (line {line_no})")
        out[name] = entry
    return out


def read_png(path: str | os.PathLike) -> np.ndarray:
    """A PNG as float32 [1, H, W] in raw units; extra channels are dropped (channel 0 kept)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: unreadable PNG ({type(e).__name__}: {e})") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2D greyscale image, got shape {arr.shape}")
    return arr.astype(np.float32)[None]


@DATASETS.register("chestxray14")
class ChestXray14(DatasetAdapter):
    info = DatasetInfo(modality="XR", spatial_dims=2, task="multilabel", labels=dict(enumerate(CXR14_LABELS)))
    root_env = "CHESTXRAY14_ROOT"
    label_names: tuple[str, ...] = CXR14_LABELS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._entries: dict[str, dict[str, Any]] | None = None

    # ---- index
    def csv_path(self) -> Path:
        for n in CSV_NAMES:
            if (self.root / n).is_file():
                return self.root / n
        return self.root / CSV_NAMES[0]

    def entries(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = read_data_entry(self.csv_path(), self.label_names)
        return self._entries

    def split_names(self) -> tuple[str, ...]:
        return ("train", "val", "test", "pretrain")

    def expected_count(self, split: str) -> int | None:
        return None

    def split_ids(self, split: str) -> list[str]:
        """Image names of ``split``, computed from the official lists and the val rule above."""
        if split not in self.split_names():
            raise DataError(f"dataset {self.registry_name!r} has no split {split!r}; it has {list(self.split_names())}")
        if split == "test":
            return read_list(self.root / "test_list.txt")
        entries = self.entries()
        tv = read_list(self.root / "train_val_list.txt")
        unknown = [n for n in tv if n not in entries]
        if unknown:
            raise DataError(
                f"{self.root / 'train_val_list.txt'}: {len(unknown)} image(s) not in "
                f"{self.csv_path().name}, e.g. {unknown[:3]}"
            )
        want_val = split == "val"
        return [n for n in tv if is_val_patient(entries[n]["patient_id"]) == want_val]

    def image_path(self, name: str) -> Path:
        return self.root / "images" / name

    def records(self, split: str) -> list[Record]:
        names = self.split_ids(split)
        entries = self.entries()
        list_file = "test_list.txt" if split == "test" else "train_val_list.txt"
        unknown = [n for n in names if n not in entries]
        if unknown:
            raise DataError(
                f"{self.root / list_file}: {len(unknown)} image(s) not in {self.csv_path().name}, e.g. {unknown[:3]}"
            )
        missing = [n for n in names if not self.image_path(n).is_file()]
        if missing:
            raise DataError(
                f"{self.root / 'images'}: {len(missing)} image(s) of split {split!r} listed in "
                f"{list_file} are missing, e.g. {missing[:3]}"
            )
        out = []
        for n in names:
            e = entries[n]
            meta = {k: e[k] for k in ("spacing", "orig_size") if k in e}
            out.append(
                Record(
                    id=n[:-4] if n.endswith(".png") else n,
                    patient_id=e["patient_id"],
                    image=str(self.image_path(n)),
                    classes=None if split == "pretrain" else e["classes"],
                    meta=meta,
                )
            )
        return out

    def load(self, record: Record) -> dict[str, Any]:
        image = read_png(record.image)
        spacing: tuple[float, ...] = (1.0, 1.0)
        sp, size = record.meta.get("spacing"), record.meta.get("orig_size")
        if sp and size and all(v > 0 for v in size):
            spacing = tuple(float(s * o / n) for s, o, n in zip(sp, size, image.shape[1:]))
        return {"id": record.id, "image": image, "spacing": spacing, "label": None}


PREPROCESSING_8BIT = {"a_min": 0.0, "a_max": 255.0}

SUITES.register("chestxray14")(
    Suite(
        name="chestxray14",
        version=1,
        pretrain_dataset="chestxray14",
        pretrain_splits=("pretrain",),
        description="NIH ChestX-ray14: 14-finding multi-label classification on the official test list; val carved "
        "from train_val by a patient-id hash; pretraining on the unlabelled train images",
        tasks=(
            Task(
                name="findings14",
                dataset="chestxray14",
                kind="classification",
                protocols=("linear_probe", "finetune", "knn", "few_shot"),
                label_fractions=(0.01, 0.1, 1.0),
                metric="auroc",
                patient_pattern=r"^(\d+)_",
            ),
        ),
        seeds=(0, 1, 2),
        preprocessing=dict(PREPROCESSING_8BIT),
    )
)
