"""Generate-once data cache with a checksum manifest.

Every file is written under a temporary name and renamed into place, and the manifest (sha256 of
each file) is written last, so a killed generation never leaves a set that is later read as valid;
a corrupted or truncated file fails its checksum and is generated again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.types import naming_the_file, write_text_atomic
from datasets.base import DataError, DatasetAdapter, Record
from datasets.synthetic._common import atomic_save_nifti  # noqa: F401  (one NIfTI writer for every generator)

MANIFEST = "manifest.json"
CORPUS_LABELS = "labelsCorpus"  # beside a synthetic suite's images: its corpus's label maps (corpus_label_records)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_generated(
    root: Path, version: str, items: dict[str, Callable[[Path], None]], desc: str, progress: bool = True
) -> None:
    """Make sure every relative path in ``items`` exists under ``root`` with a valid checksum.

    Args:
        root: dataset folder.
        version: generator version + config key; a different version regenerates everything.
        items: relative path -> function writing that file (given the final path; it must write atomically).
        desc: progress-bar label.
    """
    manifest_path = root / MANIFEST
    old: dict[str, str] = {}
    if manifest_path.is_file():
        try:
            doc = json.loads(manifest_path.read_text())
            if doc.get("version") == version:
                old = doc.get("files", {})
        except json.JSONDecodeError:
            old = {}
    todo = []
    for rel in items:
        p = root / rel
        if rel not in old or not p.is_file() or sha256(p) != old[rel]:
            todo.append(rel)
    if not todo and set(old) >= set(items):
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise DataError(
            f"{root}: cannot write the data cache ({e.strerror}); set data.cache_dir=PATH "
            f"or $SSLBENCH_DATA to a writable folder"
        ) from None
    if manifest_path.exists():
        manifest_path.unlink()  # invalid until regeneration finishes
    from tqdm.auto import tqdm

    done: set[int] = set()  # one writer may produce several files (an image and its label)
    for rel in tqdm(todo, desc=f"generating {desc}", unit="file", disable=not progress or len(todo) < 2):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if id(items[rel]) not in done:
            with naming_the_file(p):  # a full disk names the file it refused
                items[rel](p)
            done.add(id(items[rel]))
    files = {rel: (old[rel] if rel not in todo else sha256(root / rel)) for rel in items}
    write_text_atomic(manifest_path, json.dumps({"version": version, "files": files}, indent=1))


def corpus_label_records(
    adapter: DatasetAdapter,
    split: str,
    labels_tr: Path,
    file_name: Callable[[str], str],
    render: Callable[[str], tuple[Any, Any]],
    version: str,
    progress: bool = True,
) -> list[Record]:
    """A synthetic suite's corpus with a label map per record (the ``supervised`` positive control's input).

    The maps of the unlabelled corpus cases are rendered from each case's seed on first use into the adapter's
    ``labelsCorpus`` folder (with its own checksum manifest there): the corpus images are neither rewritten nor
    touched, because their content hashes key the caches and the leakage check. A case of a labelled split keeps
    its file in ``labels_tr``.

    Args:
        file_name: case id -> the label file's name (the same name in ``labelsCorpus`` and ``labels_tr``).
        render: case id -> (label array, affine), from the same seed that generated the image.
        version: the generator version the maps depend on; another version renders them again.
    """
    labelled = adapter.labelled_ids()
    folder = adapter.root / CORPUS_LABELS
    items = {}
    for cid in sorted(adapter.corpus_ids()):

        def write(path: Path, cid: str = cid) -> None:
            label, affine = render(cid)
            atomic_save_nifti(label, affine, path)

        items[file_name(cid)] = write
    ensure_generated(folder, version, items, f"{adapter.registry_name} corpus labels", progress)
    return [
        rec
        if rec.label is not None
        else replace(rec, label=str((labels_tr if rec.id in labelled else folder) / file_name(rec.id)))
        for rec in adapter.records(split)
    ]
