"""Dataset adapters: read a dataset exactly as its users downloaded it (or as a generator wrote it).

An adapter lists records of a committed split (``datasets/splits/<name>.json``, patient-level,
never computed at load time) and loads one record as numpy arrays in RAS+ orientation.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class DataError(Exception):
    """A problem with the user's data: the message names the file and what is wrong."""


@dataclass(frozen=True)
class DatasetInfo:
    modality: str                       # "CT" | "MR" | "XR"
    spatial_dims: int
    task: str                           # "segmentation" | "multiclass" | "multilabel" | "binary"
    labels: dict[int, str] = field(default_factory=dict)
    n_channels: int = 1
    synthetic: bool = False


@dataclass(frozen=True)
class Record:
    id: str
    patient_id: str
    image: str | tuple[str, ...]
    label: str | None = None
    classes: tuple[int, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def default_data_dir() -> Path:
    """Where generated data and preprocessing caches live: $SSLBENCH_DATA or ./data."""
    return Path(os.environ.get("SSLBENCH_DATA", PROJECT_ROOT / "data"))


def load_split_file(name: str) -> dict[str, list[str]]:
    path = SPLITS_DIR / f"{name}.json"
    if not path.is_file():
        raise DataError(f"{path}: split file missing")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    return doc["splits"]


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI as (array in RAS+ orientation, 4x4 affine); errors name the file."""
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        arr = np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # nibabel raises many types for corrupt or truncated files
        raise DataError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})") from None
    return arr, img.affine


def spacing_of(affine: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)))


class DatasetAdapter:
    """Base adapter. Subclasses set ``info`` and implement ``records``.

    ``root`` comes from ``data.root=...`` or an environment variable named in the subclass; a
    synthetic dataset defaults to a folder under the data cache and generates itself on first use.
    """

    info: ClassVar[DatasetInfo]
    registry_name: ClassVar[str]
    root_env: ClassVar[str | None] = None
    split_name: ClassVar[str | None] = None   # defaults to the registry name

    def __init__(self, root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 **options: Any) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else default_data_dir()
        env = os.environ.get(self.root_env) if self.root_env else None
        self.root = Path(root or env or self.default_root())
        self.options = options

    def default_root(self) -> Path:
        if self.info.synthetic:
            return self.cache_dir / self.registry_name
        raise DataError(f"dataset {self.registry_name!r}: no root given; pass data.root=PATH"
                        + (f" or set ${self.root_env}" if self.root_env else ""))

    def prepare(self, progress: bool = True) -> None:
        """Make the data available (generate a synthetic set); real datasets only check the root."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root of {self.registry_name!r} does not exist")

    def split_ids(self, split: str) -> list[str]:
        splits = load_split_file(self.split_name or self.registry_name)
        if split not in splits:
            raise DataError(f"split file {self.split_name or self.registry_name}.json has no split {split!r}; "
                            f"it has {sorted(splits)}")
        return list(splits[split])

    def records(self, split: str) -> list[Record]:
        raise NotImplementedError

    def load(self, record: Record) -> dict[str, Any]:
        """One record as {'image': float32 [C, *spatial] raw units, 'label': int array or None, 'spacing'}."""
        image, affine = read_nifti(record.image)
        if image.ndim == 3:
            image = image[None]
        out: dict[str, Any] = {"id": record.id, "image": image.astype(np.float32), "spacing": spacing_of(affine),
                               "affine": affine, "label": None}
        if record.label is not None:
            label, laff = read_nifti(record.label)
            if label.shape != image.shape[1:]:
                raise DataError(f"{record.label}: label shape {label.shape} != image shape {image.shape[1:]} "
                                f"of {record.image}")
            out["label"] = label.astype(np.int16)
        return out

    def validate(self, splits: tuple[str, ...] = ("train", "val", "test")) -> list[str]:
        """Check every file of the given splits; return all problems (each names the file)."""
        problems: list[str] = []
        known = set(self.info.labels)
        for split in splits:
            try:
                recs = self.records(split)
            except DataError as e:
                problems.append(str(e))
                continue
            for rec in recs:
                try:
                    s = self.load(rec)
                except DataError as e:
                    problems.append(str(e))
                    continue
                if s["label"] is not None and known:
                    bad = sorted(set(np.unique(s["label"]).tolist()) - known)
                    if bad:
                        problems.append(f"{rec.label}: label values {bad} outside the label map {sorted(known)}")
                if any(not (0.05 <= v <= 20) for v in s["spacing"]):
                    problems.append(f"{rec.image}: implausible spacing {s['spacing']} mm")
        return problems


def atomic_write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
