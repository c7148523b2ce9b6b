"""Dataset adapters: read a dataset exactly as its users downloaded it (or as a generator wrote it).

An adapter lists records of a committed split (``datasets/splits/<name>.json``, patient-level,
never computed at load time) and loads one record as numpy arrays in RAS+ orientation.
"""

from __future__ import annotations

import json
import os

from collections import Counter
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
    no_corpus_labels,
    temp_sibling,
)


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI as (array in RAS+ orientation, 4x4 affine); errors name the file.

    A voxel side that is zero, negative or not finite is an error: nibabel would silently turn a zero
    ``pixdim`` into 1 mm and a negative one into its absolute value, and cannot reorient a degenerate affine.
    """
    import nibabel as nib

    header_problem = _header_spacing_problem(path)
    if header_problem:
        raise DataError(f"{path}: {header_problem}")
    try:
        img: Any = nib.load(str(path))  # a NIfTI image: it has an affine
        spacing = spacing_of(img.affine)
        if not all(v > 0 for v in spacing):  # a degenerate affine (a zero or NaN column): no orientation to read
            raise DataError(f"{path}: {spacing_problem(spacing)}")
        img = nib.as_closest_canonical(img)
        arr = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # nibabel raises many types for corrupt or truncated files
        raise DataError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})") from None
    return arr, img.affine


def _header_spacing_problem(path: str | Path) -> str | None:
    """The ``pixdim`` voxel sides as the file stores them, where they define the affine (no sform): nibabel's own
    header check rewrites them on load, so they are read raw (the first 540 bytes) before it runs."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path), "rb") as f:
            block = f.read(540)
        for klass in (nib.Nifti1Header, nib.Nifti2Header):
            if klass.may_contain_header(block):
                hdr = klass(block[: klass.sizeof_hdr], check=False)
                break
        else:
            return None
        if hdr["magic"] not in (b"n+1", b"ni1", b"n+2", b"ni2") or int(hdr["sform_code"]) != 0:
            return None
        n = int(np.clip(hdr["dim"][0], 1, 3))
        sides = tuple(float(v) for v in hdr["pixdim"][1 : 1 + n])
        return None if all(v > 0 for v in sides) else spacing_problem(sides, source="pixdim")
    except Exception:  # unreadable or truncated headers: nibabel's load names the problem
        return None


def spacing_of(affine: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)))


def spacing_problem(spacing: tuple[float, ...] | list[float], source: str = "") -> str | None:
    """What is wrong with voxel sides in mm (None if nothing): a side that is zero, negative or NaN, or one that is
    not below ``MAX_SPACING_MM``. ``source`` names where the values were read (e.g. ``pixdim``)."""
    shown = tuple(round(float(v), 4) for v in spacing)
    where = f" ({source})" if source else ""
    if not all(float(v) > 0 for v in spacing):  # NaN fails the comparison too
        return f"spacing {shown} mm{where} has a zero, negative or NaN side (each must be > 0)"
    if not all(float(v) < MAX_SPACING_MM for v in spacing):
        return f"implausible spacing {shown} mm{where} (each must be > 0 and < {MAX_SPACING_MM:g})"
    return None


def wrong_dims(shape: tuple[int, ...], spatial_dims: int = 3) -> str:
    """The one wording for an image of the wrong dimensionality, e.g. 'a 4D image (shape (8, 8, 4, 2)) where a 3D
    volume is expected'."""
    want = "a 3D volume" if spatial_dims == 3 else f"a {spatial_dims}D image"
    return f"a {len(shape)}D image (shape {tuple(int(v) for v in shape)}) where {want} is expected"


def label_array(path: str | os.PathLike, raw: np.ndarray) -> np.ndarray:
    """A label map as int16; values that a cast would change (NaN/inf, fractions, beyond int16) name the file."""
    if raw.size and raw.dtype.kind == "f":
        finite = np.isfinite(raw)
        if not finite.all():
            raise DataError(f"{path}: label map has {int(raw.size - finite.sum())} non-finite value(s) (NaN or inf)")
        if not np.array_equal(raw, np.round(raw)):
            frac = raw[raw != np.round(raw)]
            raise DataError(f"{path}: label map has {frac.size} non-integer value(s), e.g. {float(frac[0]):g}")
    if raw.size and raw.dtype.kind in "fiu":
        lo, hi = raw.min(), raw.max()
        if lo < np.iinfo(np.int16).min or hi > np.iinfo(np.int16).max:
            raise DataError(f"{path}: label values {lo:g}..{hi:g} lie beyond any label map (int16)")
    return np.asarray(raw).astype(np.int16)


def image_problems(
    image: np.ndarray, spacing: tuple[float, ...], info: DatasetInfo, files: list[str], name: str
) -> list[str]:
    """Value checks of one loaded image ``[C, *spatial]``, one line per problem, each naming the file.

    Dimensions and channel count, non-finite voxels (NaN/inf), a constant image (every voxel equal, which carries
    nothing and makes intensity scaling divide by zero), and the spacing. ``files`` are the image's files (one per
    channel where each channel is its own file), ``name`` how a message names the record's file. One min and one
    max per channel, vectorised; the counts of a failing image are computed only then.
    """
    out: list[str] = []
    if image.ndim != info.spatial_dims + 1:
        return [f"{name}: {wrong_dims(image.shape[1:], info.spatial_dims)}"]
    if image.shape[0] != info.n_channels:
        out.append(f"{name}: {image.shape[0]} channel(s) where the dataset has {info.n_channels} (shape {image.shape})")
    if image.size == 0:
        return out + [f"{name}: empty image (shape {tuple(image.shape)})"]
    axes = tuple(range(1, image.ndim))
    lo, hi = image.min(axis=axes), image.max(axis=axes)  # per channel, no copy; NaN propagates into both, inf into one
    finite = np.isfinite(lo) & np.isfinite(hi)
    for c in np.flatnonzero(~finite):
        n_nan, n_inf = int(np.isnan(image[c]).sum()), int(np.isinf(image[c]).sum())
        where = files[c] if len(files) == image.shape[0] > 1 else name
        chan = f" in channel {c}" if image.shape[0] > 1 and len(files) != image.shape[0] else ""
        out.append(f"{where}: {n_nan + n_inf} non-finite voxel(s){chan} ({n_nan} NaN, {n_inf} inf) of {image[c].size}")
    if finite.all() and lo.min() == hi.max():
        out.append(f"{name}: constant image (every voxel is {float(lo.min()):g}, shape {tuple(image.shape[1:])})")
    if len(spacing) != info.spatial_dims:
        out.append(f"{name}: spacing {tuple(spacing)} has {len(spacing)} values for a {info.spatial_dims}D image")
    elif problem := spacing_problem(spacing):
        out.append(f"{name}: {problem}")
    return out


def labels_outside(label: np.ndarray, known: set[int]) -> list[int]:
    """Values of ``label`` outside ``known`` (sorted); the usual case (min..max all known) costs a min and a max."""
    if not label.size:
        return []
    lo, hi = int(label.min()), int(label.max())
    if all(v in known for v in range(lo, hi + 1)):
        return []
    return sorted(set(np.unique(label).tolist()) - known)


class DatasetAdapter:
    """Base adapter. Subclasses set ``info`` and implement ``records``.

    ``root`` comes from ``data.root=...`` or an environment variable named in the subclass; a
    synthetic dataset defaults to a folder under the data cache and generates itself on first use.
    """

    info: ClassVar[DatasetInfo]
    registry_name: ClassVar[str]
    root_env: ClassVar[str | None] = None
    split_name: ClassVar[str | None] = None  # defaults to the registry name
    #: True where ``corpus_with_labels`` serves the label maps of the pretraining corpus (a method that pretrains
    #: with labels, ``supervised``, is refused on any other corpus when its run is planned, before any data work)
    has_corpus_labels: ClassVar[bool] = False
    #: the label map of those label maps where it is not ``info.labels`` (a classification corpus whose label maps
    #: segment something); None: ``info.labels`` (``bench.types.corpus_label_map`` reads it)
    corpus_labels: ClassVar[dict[int, str] | None] = None
    #: True where ``volume_labels`` serves a per-volume health label of the pretraining corpus (SA-Swin's official
    #: symmetry target); a method that can use it (``wants_volume_labels``) then gets it, any other never
    has_volume_labels: ClassVar[bool] = False

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
            what = "is a file, not a folder" if Path(self.root).is_file() else "does not exist"
            raise DataError(f"{self.root}: dataset root of {self.registry_name!r} {what}")

    def split_ids(self, split: str) -> list[str]:
        splits = load_split_file(self.split_name or self.registry_name)
        if split not in splits:
            raise DataError(
                f"split file {self.split_name or self.registry_name}.json has no split {split!r}; "
                f"it has {sorted(splits)}"
            )
        return list(splits[split])

    def labelled_ids(self) -> set[str]:
        """The cases of the labelled splits (train, val, test): a corpus case among them keeps its own label file."""
        return {i for s in ("train", "val", "test") for i in self.split_ids(s)}

    def corpus_ids(self) -> set[str]:
        """The pretraining cases outside the labelled splits: those whose label map, if any, is not on disk with the
        labelled ones (a synthetic suite renders them; see ``corpus_label_records``)."""
        return set(self.split_ids("pretrain")) - self.labelled_ids()

    def records(self, split: str) -> list[Record]:
        raise NotImplementedError

    def corpus_with_labels(self, split: str, progress: bool = True) -> list[Record]:
        """The records of the pretraining split ``split`` with their label maps: those of ``records(split)`` (same
        ids and images), each with a ``label``, for a method that pretrains with labels. A dataset that can serve
        them sets ``has_corpus_labels`` and overrides this (a synthetic one may generate them here, on first use).
        Default: the corpus has none, one DataError naming the dataset."""
        raise DataError(no_corpus_labels(self.registry_name))

    def volume_labels(self, split: str) -> dict[str, int]:
        """Each volume of the pretraining split ``split`` with its health label, {record id: 1 healthy, 0 patient}
        (the official SA-Swin label: a subject with a finding is a patient), for every id of ``records(split)``.
        A dataset that knows them sets ``has_volume_labels`` and overrides this. Default: one DataError."""
        raise DataError(f"dataset {self.registry_name!r} has no per-volume health labels for its pretraining corpus")

    def load(self, record: Record) -> dict[str, Any]:
        """One record as {'image': float32 [C, *spatial] raw units, 'label': int array or None, 'spacing'}."""
        image, affine = read_nifti(record.image)
        if image.ndim == self.info.spatial_dims + 1 and image.shape[-1] == 1:
            image = image[..., 0]  # a singleton 4th axis, as some writers store a 3D volume
        if image.ndim != self.info.spatial_dims:
            raise DataError(f"{record.image}: {wrong_dims(image.shape, self.info.spatial_dims)}")
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
            out["label"] = label_array(record.label, label)
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

        Checks: every file exists and reads; image and label shapes and affines agree; the image has the
        dataset's dimensions and channels, finite voxels only (no NaN/inf) and is not constant; label values
        (and a record's classes) lie inside ``info.labels``; spacing is positive and below ``MAX_SPACING_MM``;
        each split has as many records as its split file names. Each problem is one line naming the file (or
        split file) it is about, and the record where the file holds several; a file shared by several splits
        is checked once.
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
            # a file holding several records (an .npz of slices or rows): messages name the record too
            uses = Counter(str(r.image) for r in recs)
            for rec in recs:
                key = (rec.id, str(rec.image), rec.label)
                if key in seen:
                    continue
                seen.add(key)
                problems += self.record_problems(rec, split, known, shared=uses[str(rec.image)] > 1)
        return [" ".join(p.splitlines()) for p in problems]  # one line each, whatever an exception's text held

    def record_problems(self, rec: Record, split: str, known: set[int], shared: bool = False) -> list[str]:
        """Every problem of one record (see ``validate``): a missing or unreadable file stops the checks there."""
        paths = [str(rec.image)] if isinstance(rec.image, (str, os.PathLike)) else [str(p) for p in rec.image]
        missing = [p for p in paths + ([rec.label] if rec.label else []) if not os.path.isfile(p)]
        if missing:
            return [f"{p}: file not found (record {rec.id}, split {split!r})" for p in missing]
        try:
            s = self.load(rec)
        except DataError as e:
            return [str(e)]
        name = f"{paths[0]} (record {rec.id})" if shared else paths[0]
        out = image_problems(np.asarray(s["image"]), tuple(s["spacing"]), self.info, paths, name)
        if s["label"] is not None and known and (bad := labels_outside(s["label"], known)):
            out.append(f"{rec.label}: label values {bad} outside the label map {sorted(known)}")
        if rec.classes and known and (bad := sorted(set(rec.classes) - known)):
            out.append(f"{name}: classes {bad} of record {rec.id} outside the label map {sorted(known)}")
        return out


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
