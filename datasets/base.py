"""Dataset adapters: read a dataset exactly as its users downloaded it (or as a generator wrote it).

An adapter lists records of a committed split (``datasets/splits/<name>.json``, patient-level,
never computed at load time) and loads one record as numpy arrays in RAS+ orientation.
"""

from __future__ import annotations

import json
import os

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

# the harness's contracts, defined in bench and re-exported here for dataset authors
from bench.types import (
    PROJECT_ROOT,  # noqa: F401
    SPLITS_DIR,  # noqa: F401
    DataError,
    DatasetInfo,
    Record,
    default_data_dir,
    load_split_file,
    temp_sibling,
)


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
    split_name: ClassVar[str | None] = None  # defaults to the registry name

    def __init__(
        self, root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, **options: Any
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else default_data_dir()
        env = os.environ.get(self.root_env) if self.root_env else None
        self.root = Path(root or env or self.default_root())
        self.options = options

    def default_root(self) -> Path:
        if self.info.synthetic:
            return self.cache_dir / self.registry_name
        raise DataError(
            f"dataset {self.registry_name!r}: no root given; pass data.root=PATH"
            + (f" or set ${self.root_env}" if self.root_env else "")
        )

    def prepare(self, progress: bool = True) -> None:
        """Make the data available (generate a synthetic set); real datasets only check the root."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root of {self.registry_name!r} does not exist")

    def split_ids(self, split: str) -> list[str]:
        splits = load_split_file(self.split_name or self.registry_name)
        if split not in splits:
            raise DataError(
                f"split file {self.split_name or self.registry_name}.json has no split {split!r}; "
                f"it has {sorted(splits)}"
            )
        return list(splits[split])

    def records(self, split: str) -> list[Record]:
        raise NotImplementedError

    def load(self, record: Record) -> dict[str, Any]:
        """One record as {'image': float32 [C, *spatial] raw units, 'label': int array or None, 'spacing'}."""
        image, affine = read_nifti(record.image)
        if image.ndim == 3:
            image = image[None]
        out: dict[str, Any] = {
            "id": record.id,
            "image": image.astype(np.float32),
            "spacing": spacing_of(affine),
            "affine": affine,
            "label": None,
        }
        if record.label is not None:
            label, laff = read_nifti(record.label)
            check_label_geometry(record, image.shape[1:], affine, label.shape, laff)
            out["label"] = label.astype(np.int16)
        return out

    def split_names(self) -> tuple[str, ...]:
        """Every split this adapter serves (validate checks them all by default)."""
        return tuple(load_split_file(self.split_name or self.registry_name))

    def expected_count(self, split: str) -> int | None:
        """How many records the split file says ``split`` has (None where no split file fixes it)."""
        try:
            return len(self.split_ids(split))
        except DataError:
            return None

    def index_problems(self) -> list[str]:
        """Problems of the dataset's own index (e.g. counts in dataset.json); subclasses extend."""
        return []

    def validate(self, splits: tuple[str, ...] | None = None) -> list[str]:
        """Check every file of ``splits`` (default: those of train/val/test this adapter has); return all
        problems at once. Pass e.g. ``splits=("pretrain",)`` to check a pretraining corpus too.

        Checks: every file exists and reads; image and label shapes and affines agree; label values lie
        inside ``info.labels``; spacing is positive and below ``MAX_SPACING_MM``; each split has as many
        records as its split file names. Every message names the file (or split file) it is about; a file
        shared by several splits is checked once.
        """
        problems: list[str] = list(self.index_problems())
        known = set(self.info.labels)
        seen: set[tuple] = set()
        if splits is None:
            names = self.split_names()
            # a corpus without train/val/test (LUNA16, a folder) is checked whole
            splits = tuple(s for s in ("train", "val", "test") if s in names) or tuple(names)
        for split in splits:
            try:
                recs = self.records(split)
            except DataError as e:
                problems.append(str(e))
                continue
            want = self.expected_count(split)
            # a split file may list patients with several records each (2D slices): either count must agree
            if want is not None and want not in (len(recs), len({r.patient_id for r in recs})):
                problems.append(
                    f"split {split!r} of {self.split_name or self.registry_name}: {len(recs)} records "
                    f"found, the split file names {want}"
                )
            for rec in recs:
                key = (rec.id, str(rec.image), rec.label)
                if key in seen:
                    continue
                seen.add(key)
                paths = [rec.image] if isinstance(rec.image, (str, os.PathLike)) else list(rec.image)
                missing = [p for p in paths + ([rec.label] if rec.label else []) if not os.path.isfile(p)]
                if missing:
                    problems += [f"{p}: file not found (record {rec.id}, split {split!r})" for p in missing]
                    continue
                try:
                    s = self.load(rec)
                except DataError as e:
                    problems.append(str(e))
                    continue
                if s["label"] is not None and known:
                    bad = sorted(set(np.unique(s["label"]).tolist()) - known)
                    if bad:
                        problems.append(f"{rec.label}: label values {bad} outside the label map {sorted(known)}")
                if any(not (0 < v < MAX_SPACING_MM) for v in s["spacing"]):
                    problems.append(
                        f"{paths[0]}: implausible spacing {tuple(round(v, 4) for v in s['spacing'])} mm "
                        f"(each must be > 0 and < {MAX_SPACING_MM:g})"
                    )
        return problems


def natural_key(text: str) -> tuple:
    """Sort ``case_2`` before ``case_10``."""
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def positional_split(ids: list[str]) -> dict[str, list[str]]:
    """The deterministic split used where a dataset ships no labelled val/test ids (MSD, LiTS, BraTS).

    Over the ids in natural order, position ``i % 5 == 0`` goes to test (20 %), ``i % 10 == 1`` to val
    (10 %), the rest to train (70 %). It depends on the id list only -- never random, identical on
    every machine holding the same release.
    """
    ordered = sorted(ids, key=natural_key)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, cid in enumerate(ordered):
        out["test" if i % 5 == 0 else "val" if i % 10 == 1 else "train"].append(cid)
    return out


MAX_SPACING_MM = 10.0  # no CT/MR volume of these benchmarks has a voxel side of 1 cm or more


def check_label_geometry(
    record: Record,
    image_shape: tuple[int, ...],
    image_affine: np.ndarray,
    label_shape: tuple[int, ...],
    label_affine: np.ndarray,
    atol: float = 1e-3,
) -> None:
    """Raise one DataError listing every disagreement between a label and its image (shape and affine)."""
    image_path = record.image if isinstance(record.image, (str, os.PathLike)) else record.image[0]
    problems = []
    if tuple(label_shape) != tuple(image_shape):
        problems.append(f"label shape {tuple(label_shape)} != image shape {tuple(image_shape)} of {image_path}")
    if not np.allclose(np.asarray(label_affine), np.asarray(image_affine), atol=atol):
        problems.append(
            f"label affine {np.round(np.asarray(label_affine)[:3], 3).tolist()} != image affine "
            f"{np.round(np.asarray(image_affine)[:3], 3).tolist()} of {image_path}"
        )
    if problems:
        raise DataError(f"{record.label}: " + "; ".join(problems))


def atomic_write_json(path: Path, doc: Any) -> None:
    tmp = temp_sibling(path)
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
