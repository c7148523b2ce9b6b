"""LUNA16 (lung CT, a pretraining corpus) exactly as the zenodo archives unpack (shared/DATA.md A.5).

``root`` (or ``$SSLBENCH_LUNA16_ROOT``) holds ``subset0/`` .. ``subset9/`` of ``<seriesuid>.mhd`` + ``.raw`` and
``annotations.csv`` (top level or in ``CSVFILES/``; optional). Splits: ``pretrain`` = every scan found, and
``subsetK`` = the official cross-validation fold K (fold = subset). The scans are read by
``datasets.metaimage`` and reoriented to RAS+ like every NIfTI adapter.

``annotations.csv`` rows (``seriesuid,coordX,coordY,coordZ,diameter_mm``) are world mm in ITK's LPS frame
(the same frame as the header's ``Offset``). Each record carries them in ``meta['nodules_world']``; ``load``
adds ``nodules_voxel``, the continuous (i, j, k) indices into the returned (RAS+) array.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from bench.registry import DATASETS
from datasets.base import DataError, DatasetAdapter, DatasetInfo, Record, spacing_of, wrong_dims
from datasets.metaimage import read_metaimage_canonical, world_to_voxel
from datasets.msd import is_junk

SUBSETS = tuple(f"subset{k}" for k in range(10))
_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


def read_annotations(path: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """seriesuid -> [(x, y, z, diameter_mm)] in world mm (LPS)."""
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing columns {missing}; expected header {','.join(_COLUMNS)}")
        for n, row in enumerate(reader, start=2):
            try:
                vals = tuple(float(row[c]) for c in _COLUMNS[1:])
            except (TypeError, ValueError):
                raise DataError(f"{path}: line {n}: non-numeric coordinate in {row}") from None
            out.setdefault(row["seriesuid"], []).append(vals)  # type: ignore[arg-type]
    return out


@DATASETS.register("luna16")
class LUNA16(DatasetAdapter):
    info = DatasetInfo(modality="CT", spatial_dims=3, task="segmentation", labels={})
    root_env = "SSLBENCH_LUNA16_ROOT"

    def scans(self) -> dict[str, list[Path]]:
        subsets = {s: self.root / s for s in SUBSETS if (self.root / s).is_dir()}
        if not subsets:
            raise DataError(f"{self.root}: not a LUNA16 folder; expected subset0/ .. subset9/ of .mhd/.raw")
        return {s: sorted(p for p in d.glob("*.mhd") if not is_junk(p.name)) for s, d in subsets.items()}

    def prepare(self, progress: bool = True) -> None:
        super().prepare(progress)
        self.scans()

    def annotations(self) -> dict[str, list[tuple[float, float, float, float]]]:
        for path in (self.root / "annotations.csv", self.root / "CSVFILES" / "annotations.csv"):
            if path.is_file():
                return read_annotations(path)
        return {}

    def split_names(self) -> tuple[str, ...]:
        return ("pretrain",) + SUBSETS

    def expected_count(self, split: str) -> int | None:
        return None

    def split_ids(self, split: str) -> list[str]:
        return [r.id for r in self.records(split)]

    def records(self, split: str) -> list[Record]:
        scans = self.scans()
        if split == "pretrain":
            chosen = [p for s in SUBSETS for p in scans.get(s, [])]
        elif split in SUBSETS:
            chosen = scans.get(split, [])
        else:
            raise DataError(f"dataset 'luna16' has no split {split!r}; it has {list(self.split_names())}")
        ann = self.annotations()
        return [
            Record(
                p.stem,
                p.stem,
                str(p),
                None,
                meta={"subset": p.parent.name, "nodules_world": tuple(ann.get(p.stem, ()))},
            )
            for p in chosen
        ]

    def load(self, record: Record) -> dict[str, Any]:
        arr, affine = read_metaimage_canonical(record.image)
        if arr.ndim != 3:
            raise DataError(f"{record.image}: {wrong_dims(arr.shape)}")
        nodules = np.asarray(record.meta.get("nodules_world", ()), float).reshape(-1, 4)
        return {
            "id": record.id,
            "image": arr.astype(np.float32)[None],
            "spacing": spacing_of(affine),
            "affine": affine,
            "label": None,
            "nodules_voxel": world_to_voxel(nodules[:, :3], affine) if len(nodules) else np.zeros((0, 3)),
            "nodules_diameter_mm": nodules[:, 3],
        }
