"""Preprocessing and loaders shared by pretraining and the protocols.

Volumes are preprocessed once (HU window to [0, 1], optional resampling to a target spacing or resizing
to a fixed grid), kept on disk by ``PreprocessedCache`` for later runs and in memory within a run; 3D training
samples are random ROI crops, evaluation runs on whole volumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Preprocess:
    a_min: float = -175.0
    a_max: float = 250.0
    spacing: tuple[float, ...] | None = None  # resample to this spacing (mm); None keeps the native grid
    size: tuple[int, ...] | None = None  # resize to this grid (2D images: the budget's input size)

    @classmethod
    def from_config(cls, values: dict[str, Any]) -> Preprocess:
        """From a suite's ``preprocessing`` mapping (YAML lists become the tuples the cache keys use)."""
        kw = dict(values)
        for k in ("spacing", "size"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def key(self) -> str:
        spacing = "x".join(f"{v:g}" for v in self.spacing) if self.spacing else "native"
        key = f"w{self.a_min:g}_{self.a_max:g}_s{spacing}"
        return key + (f"_r{'x'.join(map(str, self.size))}" if self.size else "")


def preprocess(sample: dict[str, Any], pp: Preprocess) -> dict[str, Any]:
    image = sample["image"].astype(np.float32)
    label = sample.get("label")
    spacing = tuple(sample["spacing"])
    if pp.spacing is not None and tuple(pp.spacing) != spacing:
        from scipy import ndimage

        zoom = [s / t for s, t in zip(spacing, pp.spacing)]
        image = np.stack([ndimage.zoom(c, zoom, order=1) for c in image])
        if label is not None:
            label = ndimage.zoom(label, zoom, order=0)
        spacing = tuple(pp.spacing)
    if pp.size is not None and tuple(image.shape[1:]) != tuple(pp.size):
        from scipy import ndimage

        if len(pp.size) != image.ndim - 1:
            raise ValueError(f"{sample.get('id', 'image')}: cannot resize a {image.ndim - 1}D image to {pp.size}")
        zoom = [t / s for s, t in zip(image.shape[1:], pp.size)]
        # order-1 zoom after a Gaussian pre-filter of the downsampled axes (no aliasing of fine texture)
        sigma = [max(0.0, (1 / z - 1) / 2) for z in zoom]
        image = np.stack(
            [
                ndimage.zoom(
                    ndimage.gaussian_filter(c, sigma) if any(sigma) else c,
                    zoom,
                    order=1,
                    grid_mode=True,
                    mode="nearest",
                )
                for c in image
            ]
        )
        if label is not None:
            label = ndimage.zoom(label, zoom, order=0, grid_mode=True, mode="nearest")
        spacing = tuple(sp / z for sp, z in zip(spacing, zoom))
    image = np.clip((image - pp.a_min) / (pp.a_max - pp.a_min), 0.0, 1.0).astype(np.float32)
    out = dict(sample, image=image, spacing=spacing)
    if label is not None:
        out["label"] = label.astype(np.int64)
    return out


def pad_to(image: np.ndarray, roi: Sequence[int], value: float = 0.0) -> np.ndarray:
    """Pad the spatial dims of [C, *S] (or [*S]) symmetrically up to ``roi``."""
    spatial = image.shape[-len(roi) :]
    pads = [(0, 0)] * (image.ndim - len(roi)) + [
        ((max(r - s, 0)) // 2, max(r - s, 0) - (max(r - s, 0)) // 2) for s, r in zip(spatial, roi)
    ]
    return np.pad(image, pads, constant_values=value) if any(p != (0, 0) for p in pads) else image


def random_crop(
    arrays: list[np.ndarray], roi: Sequence[int], rng: np.random.Generator, center: Sequence[int] | None = None
) -> list[np.ndarray]:
    """Crop the same ROI from each [.., *S] array; ``center`` (voxel) biases the crop to contain it."""
    spatial = arrays[0].shape[-len(roi) :]
    starts = []
    for i, (s, r) in enumerate(zip(spatial, roi)):
        hi = s - r
        if center is None:
            starts.append(int(rng.integers(0, hi + 1)))
        else:
            starts.append(int(np.clip(center[i] - r // 2 + rng.integers(-r // 4, r // 4 + 1), 0, hi)))
    sl = tuple(slice(a, a + r) for a, r in zip(starts, roi))
    return [a[(Ellipsis,) + sl] for a in arrays]


class PretrainDataset(Dataset):
    """Corpus volumes -> method views; ``samples`` sets the epoch length of a plain sampler.

    Item ``k`` is drawn from ``k`` and ``seed`` alone (which volume, and the method's random views), never from a
    process's or worker's RNG, so that the shards of :class:`bench.distributed.StreamSampler` on N processes hold
    exactly the samples one process would draw, and a resumed stream continues the same draws. ``labels`` (one
    label map per volume) is given only for a method that pretrains with labels: its sample then holds ``label``
    too; ``volume_labels`` (one int per volume) only for a method that uses a per-volume label: its sample then holds
    ``volume_label``; without either the sample is ``image`` and ``roi`` alone.
    """

    def __init__(
        self,
        volumes: list[np.ndarray],
        roi: Sequence[int],
        views: Callable[[dict, np.random.Generator], dict],
        samples: int,
        seed: int,
        labels: list[np.ndarray] | None = None,
        volume_labels: list[int] | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(volumes):
            raise ValueError(f"{len(labels)} label maps for {len(volumes)} volumes")
        if volume_labels is not None and len(volume_labels) != len(volumes):
            raise ValueError(f"{len(volume_labels)} volume labels for {len(volumes)} volumes")
        self.volumes, self.roi, self.views, self.samples, self.seed = volumes, tuple(roi), views, samples, seed
        self.labels, self.volume_labels = labels, volume_labels

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, i])
        k = int(rng.integers(len(self.volumes)))
        sample = {"image": self.volumes[k], "roi": self.roi}
        if self.labels is not None:
            sample["label"] = self.labels[k]
        if self.volume_labels is not None:
            sample["volume_label"] = self.volume_labels[k]
        return self.views(sample, rng)


def compact_label(label: np.ndarray) -> np.ndarray:
    """A label map in the smallest integer type that holds it (uint8 for up to 255 classes): a corpus's label maps
    stay in memory for a whole pretraining, at an eighth of their preprocessed int64 size."""
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return label.astype(dtype, copy=False)
    return label


POSITIVE_CROPS = ("foreground", "class")


def check_positive_crops(value: str) -> str:
    if value not in POSITIVE_CROPS:
        raise ValueError(f"positive_crops must be one of {', '.join(POSITIVE_CROPS)}; got {value!r}")
    return value


class SegTrainDataset(Dataset):
    """Random ROI crops from labelled volumes; ``pos_fraction`` of them centred on a labelled voxel.

    ``positive_crops`` picks that voxel: ``"foreground"`` uniformly among all labelled voxels (Swin UNETR's
    RandCropByPosNegLabeld, so large organs dominate), ``"class"`` a class present in the case first, uniformly,
    then one of its voxels (MONAI's RandCropByLabelClassesd with equal ratios; nnU-Net's foreground oversampling),
    so a short schedule sees the small organs as often as the liver.
    """

    def __init__(
        self,
        cases: list[dict[str, Any]],
        roi: Sequence[int],
        samples: int,
        pos_fraction: float = 0.5,
        intensity_aug: bool = True,
        positive_crops: str = "foreground",
        seed: int = 0,
    ) -> None:
        check_positive_crops(positive_crops)
        self.cases, self.roi, self.samples, self.seed = cases, tuple(roi), samples, seed
        self.pos_fraction, self.intensity_aug = pos_fraction, intensity_aug
        # per case, the voxel groups a positive crop draws from (one group first, then a voxel); none if unlabelled
        if positive_crops == "foreground":
            groups = [[np.argwhere(c["label"] > 0)] for c in cases]
        else:
            groups = [[np.argwhere(c["label"] == k) for k in np.unique(c["label"]) if k > 0] for c in cases]
        self.fg = [[g for g in case if len(g)] for case in groups]

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        # drawn from the key alone, as PretrainDataset's items are (data-parallel shards, exact resume)
        rng = np.random.default_rng([self.seed, i])
        k = int(rng.integers(len(self.cases)))
        image = pad_to(self.cases[k]["image"], self.roi)
        label = pad_to(self.cases[k]["label"], self.roi)
        center = None
        groups = self.fg[k]
        if rng.random() < self.pos_fraction and groups:
            voxels = groups[int(rng.integers(len(groups)))]
            off = [(p - s) // 2 for p, s in zip(image.shape[1:], self.cases[k]["image"].shape[1:])]
            center = voxels[int(rng.integers(len(voxels)))] + np.asarray(off)
        image, label = random_crop([image, label], self.roi, rng, center)
        image = np.ascontiguousarray(image)
        if self.intensity_aug:
            image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
        return {
            "image": torch.from_numpy(np.asarray(image, np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(label)[None].astype(np.int64)),
        }


def subsample(ids: list[str], fraction: float, draw: int) -> list[str]:
    """A reproducible subset of ``ids`` (at least one) for label-efficiency cells.

    It depends on (fraction, draw) only, so every method and seed trains on the same cases and
    comparisons between methods stay paired.
    """
    if fraction >= 1.0:
        return list(ids)
    n = max(1, int(round(fraction * len(ids))))
    rng = np.random.default_rng([draw, int(round(fraction * 1e6)), 7919])
    return sorted(rng.choice(sorted(ids), size=n, replace=False).tolist())


def match_channels(image: np.ndarray, channels: int, what: str = "image") -> np.ndarray:
    """An image with more channels than the encoder takes is averaged to one (RGB into a grey encoder)."""
    if image.shape[0] == channels:
        return image
    if channels == 1:
        return image.mean(0, keepdims=True)
    raise ValueError(f"{what}: {image.shape[0]} channel(s), the encoder takes {channels}")


class PreprocessedCache:
    """Preprocessed records on disk, keyed by dataset, record, source files and the preprocessing config.

    Resampling a CT volume costs far more than reading a ``.npy``, so each (record, preprocessing) pair is
    computed once per machine and shared by every later run, method and cell. The key includes the source
    files' path, size and modification time: an edited file is preprocessed again, never served stale. A
    record whose image is not a plain file (e.g. a slice of a shared array) is preprocessed without the cache.
    Writes are atomic (temporary folder, then rename), so a killed run leaves no half-written entry.
    """

    VERSION = 1  # bump when preprocess() changes what it computes
    _warned = False  # an unwritable cache is said once per process, not once per volume

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @staticmethod
    def _fingerprint(record) -> str | None:
        paths = [record.image] if isinstance(record.image, (str, os.PathLike)) else list(record.image)
        if record.label is not None:
            paths.append(record.label)
        parts = []
        for p in paths:
            try:
                st = os.stat(p)
            except (OSError, TypeError, ValueError):
                return None
            if not os.path.isfile(p):
                return None
            parts.append(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def entry(self, dataset: str, record, pp: Preprocess) -> Path | None:
        fp = self._fingerprint(record)
        if fp is None:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in record.id)
        return self.root / f"v{self.VERSION}" / dataset / pp.key() / f"{safe}-{fp}"

    def get(self, adapter, record, pp: Preprocess, raw: dict[str, Any] | None = None) -> dict[str, Any]:
        """The preprocessed sample of ``record``; ``raw`` is its already loaded sample, if the caller has it."""
        path = self.entry(adapter.registry_name, record, pp)
        if path is not None and (path / "meta.json").is_file():
            try:
                meta = json.loads((path / "meta.json").read_text())
                out = dict(meta, image=np.load(path / "image.npy"), affine=np.asarray(meta["affine"]))
                out["spacing"] = tuple(meta["spacing"])
                out["label"] = np.load(path / "label.npy") if meta["has_label"] else None
                out.pop("has_label")
                return out
            except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
                # a damaged entry (a disk fault, a hand edit) is reported and replaced, not re-read on every run
                warnings.warn(
                    f"preprocessing cache entry {path} is damaged ({type(e).__name__}); recomputing and replacing it",
                    stacklevel=2,
                )
                shutil.rmtree(path, ignore_errors=True)
        sample = preprocess(raw if raw is not None else adapter.load(record), pp)
        if path is not None:
            self._write(path, sample)
        return sample

    def _write(self, path: Path, sample: dict[str, Any]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
            np.save(tmp / "image.npy", sample["image"])
            if sample.get("label") is not None:
                np.save(tmp / "label.npy", sample["label"])
            extra = {
                k: v
                for k, v in sample.items()
                if k not in ("image", "label", "affine") and isinstance(v, (str, int, float, bool, list, tuple))
            }
            affine = sample.get("affine")
            meta = dict(
                extra,
                spacing=list(sample["spacing"]),
                has_label=sample.get("label") is not None,
                affine=np.asarray(affine).tolist() if affine is not None else np.eye(4).tolist(),
            )
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.rename(tmp, path)
            except OSError:  # another process wrote the same entry first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as e:  # an unwritable cache folder only costs recomputing next time: said, not hidden
            if not PreprocessedCache._warned:
                PreprocessedCache._warned = True
                warnings.warn(
                    f"preprocessing cache {self.root} cannot be written ({e}); volumes are recomputed each run",
                    stacklevel=2,
                )
