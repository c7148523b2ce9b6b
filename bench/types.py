"""The harness's contracts: what it hands a method, what it reads from a dataset, and the project's paths.

``datasets/`` and ``methods/`` import these from here (and re-export them for their authors); ``bench/`` never imports
``datasets/`` or ``methods/`` (``tests/test_layout.py``), except the tools under ``bench/tools/``. The datasets and
methods are registered by whoever runs the harness: ``run_bench.py`` imports both packages before the command line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from bench.provenance import PROJECT_ROOT

SPLITS_DIR = PROJECT_ROOT / "datasets" / "splits"  # committed split files, one JSON per dataset


def temp_sibling(path: Path) -> Path:
    """A temporary name beside ``path`` for an atomic write (write it, then ``os.replace`` onto ``path``), unique per
    process and call: two runs writing the same file at once (the same method's export, a board published twice)
    must not replace or delete each other's half-written file."""
    return path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


@contextmanager
def naming_the_file(path: Path | str) -> Iterator[None]:
    """An OSError inside names ``path``: a write refused mid-stream (a full disk under gzip or torch.save) raises
    one without a file name, and the user must learn which file could not be written."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """``path`` holds ``text`` or what it held before, never a part: a crash or a second writer cannot break it."""
    tmp = temp_sibling(path)
    try:
        with naming_the_file(path):
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class DataError(Exception):
    """A problem with the user's data: the message names the file and what is wrong."""


@dataclass(frozen=True)
class DatasetInfo:
    modality: str  # "CT" | "MR" | "XR"
    spatial_dims: int
    task: str  # "segmentation" | "multiclass" | "multilabel" | "binary"
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


@runtime_checkable
class DatasetAdapter(Protocol):
    """What the harness calls on a dataset (``datasets.base.DatasetAdapter`` is the implementation to subclass)."""

    info: ClassVar[DatasetInfo]
    registry_name: ClassVar[str]
    split_name: ClassVar[str | None]
    has_corpus_labels: ClassVar[bool]  # corpus_with_labels serves label maps of the pretraining splits
    corpus_labels: ClassVar[dict[int, str] | None]  # their label map where it is not info.labels (corpus_label_map)

    def prepare(self, progress: bool = True) -> None: ...
    def records(self, split: str) -> list[Record]: ...
    def corpus_with_labels(self, split: str, progress: bool = True) -> list[Record]: ...
    def load(self, record: Record) -> dict[str, Any]: ...
    def validate(self, splits: tuple[str, ...] | None = None) -> list[str]: ...


def corpus_label_map(adapter: Any) -> dict[int, str]:
    """The label map {id: name} (background 0 included) of the label maps that ``corpus_with_labels`` serves: the
    dataset's ``corpus_labels`` where it names one, else its own ``info.labels``. A corpus may be labelled for
    another task than its dataset's own: ``brain`` classifies a lesion's side, its corpus's label maps are the
    lesion masks."""
    return dict(getattr(adapter, "corpus_labels", None) or adapter.info.labels)


def no_corpus_labels(dataset: str) -> str:
    """The one wording for a pretraining corpus without labels, asked for by a method that pretrains with them."""
    return (
        f"dataset {dataset!r} has no labels for its pretraining corpus; a method that pretrains with labels needs a "
        f"labelled pretraining corpus"
    )


@dataclass
class StepOutput:
    """What a method's training step returns: the loss the engine optimises and scalars to log."""

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)


@dataclass
class StepInfo:
    """What the engine tells a method about the step it is on."""

    step: int  # optimizer steps done so far
    total_steps: int

    @property
    def progress(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))


def folder_problem(path: Path) -> str | None:
    """Why the run could not write into folder ``path`` (it, or the nearest part of it that exists, is a file or is
    not writable), or None. Nothing is created."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        return f"not a folder ({p} is a file)"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{p} is not writable"
    try:  # access() says yes to root everywhere, even on /proc or a read-only mount: a real try, undone at once
        os.rmdir(tempfile.mkdtemp(dir=p, prefix=".sslbench-probe-"))
    except OSError as e:
        return f"{p} does not take new folders ({e.strerror})"
    return None


def default_data_dir() -> Path:
    """Where generated data and preprocessing caches live: $SSLBENCH_DATA or ./data."""
    return Path(os.environ.get("SSLBENCH_DATA", PROJECT_ROOT / "data"))


def load_split_file(name: str) -> dict[str, list[str]]:
    """The splits of ``datasets/splits/<name>.json``; a missing or unreadable file is one DataError naming it."""
    path = SPLITS_DIR / f"{name}.json"
    if not path.is_file():
        raise DataError(f"{path}: split file missing")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    return doc["splits"]
