"""A user's own unlabelled pretraining corpus: a folder (searched recursively) of NIfTI or MetaImage volumes.

``root`` from ``data.root=...`` or ``$SSLBENCH_FOLDER_ROOT``. Every ``*.nii``, ``*.nii.gz``, ``*.mhd`` and ``*.mha``
is one record of the only split, ``pretrain``; dot files (macOS ``._*`` junk) are skipped. Record ids are
the path relative to the root without the extension, ``/`` replaced by ``__`` (unique, stable).

This module also holds the BTCV suite and its ``btcv_liu`` adapter: BTCV's own module belongs to another
change, and the suite needs a split with a ``test`` list (see ``datasets/splits/btcv_liu.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.registry import DATASETS, SUITES
from bench.suites import PROBES_3D, Suite, Task, protocols_added
from datasets.base import DataError, DatasetAdapter, DatasetInfo, Record, read_nifti, spacing_of, wrong_dims
from datasets.btcv import BTCV
from datasets.metaimage import read_metaimage_canonical
from datasets.msd import ASA_PREPROCESSING

EXTENSIONS = (".nii.gz", ".nii", ".mhd", ".mha")


@DATASETS.register("folder")
class Folder(DatasetAdapter):
    info = DatasetInfo(modality="CT", spatial_dims=3, task="segmentation", labels={})
    root_env = "SSLBENCH_FOLDER_ROOT"

    def files(self) -> list[Path]:
        if not self.root.is_dir():
            raise DataError(f"{self.root}: folder corpus root does not exist")
        out = sorted(
            p
            for p in self.root.rglob("*")
            if p.is_file()
            and p.name.endswith(EXTENSIONS)
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )
        if not out:
            raise DataError(f"{self.root}: no {', '.join(EXTENSIONS)} files under this folder")
        return out

    def split_names(self) -> tuple[str, ...]:
        return ("pretrain",)

    def expected_count(self, split: str) -> int | None:
        return None

    def split_ids(self, split: str) -> list[str]:
        return [r.id for r in self.records(split)]

    def records(self, split: str) -> list[Record]:
        if split != "pretrain":
            raise DataError(f"dataset 'folder' is an unlabelled corpus with only the 'pretrain' split, not {split!r}")
        out = []
        for p in self.files():
            rel = str(p.relative_to(self.root))
            stem = next(rel[: -len(e)] for e in EXTENSIONS if rel.endswith(e))
            rid = stem.replace("/", "__")
            out.append(Record(rid, rid, str(p), None))
        return out

    def load(self, record: Record) -> dict[str, Any]:
        if str(record.image).endswith((".mhd", ".mha")):
            arr, affine = read_metaimage_canonical(record.image)
        else:
            arr, affine = read_nifti(record.image)
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3:
            raise DataError(f"{record.image}: expected a 3D volume, got {wrong_dims(arr.shape)}")
        return {
            "id": record.id,
            "image": arr.astype(np.float32)[None],
            "spacing": spacing_of(affine),
            "affine": affine,
            "label": None,
        }


@DATASETS.register("btcv_liu")
class BTCVLiu(BTCV):
    """BTCV under Liu et al.'s split (test img0023-0028) with a ``test`` list, as the btcv suite needs."""

    split_name = "btcv_liu"


SUITES.register("btcv")(
    protocols_added(
        Suite(
            name="btcv",
            version=2,  # 2: the representation probes (voxel_probe, knn_seg)
            data_version=1,
            pretrain_dataset="btcv_liu",
            pretrain_splits=("pretrain",),
            description="BTCV, 13 organs, ASA Table 1: Liu et al.'s split (test img0023-0028, train the other 24); "
            "pretraining on the 24 train images; ASA preprocessing (1.5x1.5x2.0 mm, HU -175..250)",
            tasks=(
                Task(
                    name="organs13",
                    dataset="btcv_liu",
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
