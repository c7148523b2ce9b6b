"""BraTS 2021 and 2023 (GLI) glioma MRI exactly as released (shared/DATA.md A.8).

Layouts under ``root`` (``$SSLBENCH_BRATS2021_ROOT`` / ``$SSLBENCH_BRATS2023_ROOT``), case folders directly
or inside one wrapper folder (e.g. ``BraTS2021_Training_Data/``):

- 2021: ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``, seg labels {0, 1 NCR, 2 ED, 4 ET};
- 2023: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``, seg {0, 1 NETC, 2 SNFH, 3 ET}.

Both load as a 4-channel image in the same order (T1, T1 post-contrast, T2, FLAIR) and one label map
``{0 background, 1 necrotic / non-enhancing core, 2 edema / SNFH, 3 enhancing tumour}``: 2021's 4 becomes 3
(as nnU-Net's Dataset137 does), so the evaluation regions are the same for both years: whole tumour
``WT = {1, 2, 3}``, tumour core ``TC = {1, 3}``, enhancing tumour ``ET = {3}`` (``REGIONS``). A seg value
outside the year's own convention (3 in 2021, 4 = resection cavity of 2024 in 2023) is an error, not
silently merged.

Validation/test labels are hidden, so train/val/test are derived from the case folders found on disk by
``datasets.base.positional_split`` (deterministic, never random); ``pretrain`` = the train images.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.registry import DATASETS
from datasets.base import (
    DataError,
    DatasetAdapter,
    DatasetInfo,
    Record,
    check_label_geometry,
    label_array,
    positional_split,
    read_nifti,
    spacing_of,
    wrong_dims,
)

BRATS_LABELS = {0: "background", 1: "necrotic / non-enhancing tumour core", 2: "edema / SNFH", 3: "enhancing tumour"}
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


class _BraTS(DatasetAdapter):
    info = DatasetInfo(modality="MR", spatial_dims=3, task="segmentation", labels=BRATS_LABELS, n_channels=4)
    prefix: ClassVar[str]
    case_pattern: ClassVar[str]  # a case folder's full name (not the wrapper folder)
    split_name = "brats"  # the split rule file; the ids come from the case folders
    sep: ClassVar[str]
    modalities: ClassVar[tuple[str, ...]]
    raw_labels: ClassVar[dict[int, int]]  # on-disk value -> unified value

    def case_dirs(self) -> dict[str, Path]:
        if not self.root.is_dir():
            what = "is a file, not a folder" if Path(self.root).is_file() else "does not exist"
            raise DataError(f"{self.root}: dataset root of {self.registry_name!r} {what}")
        for base in [self.root] + sorted(p for p in self.root.iterdir() if p.is_dir()):
            found = {p.name: p for p in base.iterdir() if p.is_dir() and re.fullmatch(self.case_pattern, p.name)}
            if found:
                return found
        raise DataError(f"{self.root}: no {self.prefix}* case folders here or one level down")

    def prepare(self, progress: bool = True) -> None:
        super().prepare(progress)
        self.case_dirs()

    def split_names(self) -> tuple[str, ...]:
        return ("train", "val", "test", "pretrain")

    def expected_count(self, split: str) -> int | None:
        return None

    def split_ids(self, split: str) -> list[str]:
        parts = positional_split(list(self.case_dirs()))
        parts["pretrain"] = parts["train"]
        if split not in parts:
            raise DataError(f"dataset {self.registry_name!r} has no split {split!r}; it has {list(parts)}")
        return parts[split]

    def records(self, split: str) -> list[Record]:
        dirs = self.case_dirs()
        out = []
        for cid in self.split_ids(split):
            d = dirs[cid]
            images = tuple(str(d / f"{cid}{self.sep}{m}.nii.gz") for m in self.modalities)
            label = str(d / f"{cid}{self.sep}seg.nii.gz") if split != "pretrain" else None
            out.append(Record(cid, cid, images, label))
        return out

    def load(self, record: Record) -> dict[str, Any]:
        chans, affine = [], None
        for path in record.image:
            arr, aff = read_nifti(path)
            if arr.ndim != 3:
                raise DataError(f"{path}: {wrong_dims(arr.shape)}")
            if chans and (arr.shape != chans[0].shape or not np.allclose(aff, affine, atol=1e-3)):
                raise DataError(f"{path}: shape/affine {arr.shape} differ from {record.image[0]}")
            chans.append(arr.astype(np.float32))
            affine = aff if affine is None else affine
        image = np.stack(chans)
        out: dict[str, Any] = {
            "id": record.id,
            "image": image,
            "spacing": spacing_of(affine),
            "affine": affine,
            "label": None,
        }
        if record.label is not None:
            raw, laff = read_nifti(record.label)
            check_label_geometry(record, image.shape[1:], affine, raw.shape, laff)
            raw = label_array(record.label, raw)
            values = set(np.unique(raw).tolist())
            bad = sorted(values - set(self.raw_labels))
            if bad:
                raise DataError(
                    f"{record.label}: label values {bad} outside the {self.registry_name} convention "
                    f"{sorted(self.raw_labels)}"
                )
            lut = np.zeros(max(self.raw_labels) + 1, np.int16)
            for k, v in self.raw_labels.items():
                lut[k] = v
            out["label"] = lut[raw.astype(np.int64)]
        return out


@DATASETS.register("brats2021")
class BraTS2021(_BraTS):
    root_env = "SSLBENCH_BRATS2021_ROOT"
    prefix, sep, case_pattern = "BraTS2021_", "_", r"BraTS2021_\d+"
    modalities = ("t1", "t1ce", "t2", "flair")
    raw_labels = {0: 0, 1: 1, 2: 2, 4: 3}


@DATASETS.register("brats2023")
class BraTS2023(_BraTS):
    root_env = "SSLBENCH_BRATS2023_ROOT"
    prefix, sep, case_pattern = "BraTS-GLI-", "-", r"BraTS-GLI-\d+-\d+"
    modalities = ("t1n", "t1c", "t2w", "t2f")
    raw_labels = {0: 0, 1: 1, 2: 2, 3: 3}
