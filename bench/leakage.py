"""Pretraining/test leakage guard: volumes are compared by content, never by file name.

A test case copied into a pretraining folder under another name, or a dataset whose unlabelled release overlaps
another's test split, is found because the hash is of the loaded voxel array (as float32, with its shape), not of
the path or the file bytes (a re-compressed or re-encoded copy of the same voxels hashes the same).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from bench.types import DatasetAdapter, Record, temp_sibling


def content_hash(array: np.ndarray) -> str:
    a = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    h = hashlib.sha256()
    h.update(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:32]


def _file_key(record: Record) -> str | None:
    """Path, size and modification time of every file of a record: a changed file gets a new key."""
    paths = record.image if isinstance(record.image, (tuple, list)) else (record.image,)
    parts = [record.id]
    for p in paths:
        try:
            st = os.stat(p)
        except (OSError, TypeError):
            return None
        parts.append(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


class HashCache:
    """Record content hashes memoised on disk (by path, size and mtime), so each file is read once."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.memo: dict[str, str] = {}
        if path is not None and path.is_file():
            try:
                self.memo = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                self.memo = {}  # a damaged memo is only a cache: recompute
        self.dirty = False

    def known(self, record: Record) -> bool:
        key = _file_key(record)
        return key is not None and key in self.memo

    def record_hash(self, ds: DatasetAdapter, record: Record, image: np.ndarray | None = None) -> str:
        key = _file_key(record)
        if key is not None and key in self.memo:
            return self.memo[key]
        if image is None:
            image = ds.load(record)["image"]
        h = content_hash(image)
        if key is not None:
            self.memo[key] = h
            self.dirty = True
        return h

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_sibling(self.path)
            tmp.write_text(json.dumps(self.memo))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError as e:  # an unwritable cache folder only costs re-reading next time: said, not hidden
            warnings.warn(
                f"content-hash cache {self.path} cannot be written ({e}); files are hashed again next run", stacklevel=2
            )


def split_hashes(ds: DatasetAdapter, splits: Iterable[str], cache: HashCache) -> dict[str, str]:
    """content hash -> record id for every record of the given splits."""
    out: dict[str, str] = {}
    for split in splits:
        for rec in ds.records(split):
            out.setdefault(cache.record_hash(ds, rec), f"{split}/{rec.id}")
    return out


def leaks(corpus: Iterable[str], evaluated: dict[str, str]) -> list[str]:
    """The evaluated record ids (``split/id``) whose content is in the pretraining corpus, sorted."""
    corpus = set(corpus)
    return sorted(rid for h, rid in evaluated.items() if h in corpus)
