"""What every protocol receives and returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.data import Preprocess, PreprocessedCache, preprocess
from bench.options import check_types
from bench.registry import PROTOCOLS
from bench.suites import Cell
from bench.types import DatasetAdapter

TASK_KINDS = ("segmentation", "classification")


@dataclass
class TransferContext:
    export_path: Path
    dataset: DatasetAdapter
    cell: Cell
    run_dir: Path
    device: torch.device
    preprocess: Preprocess
    roi: tuple[int, ...]
    steps: int
    batch_size: int
    num_workers: int = 0
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)  # preprocessed volumes shared across cells
    disk_cache: PreprocessedCache | None = None  # preprocessed volumes shared across runs
    evaluations: int | None = None  # validations over training when a protocol's eval_every is 0 (budget key)

    def eval_every(self, every: int, default_evaluations: int) -> int:
        """Steps between validations: the protocol's ``eval_every``, else steps / the budget's evaluations
        (else the protocol's default count)."""
        return every or max(1, self.steps // (self.evaluations or default_evaluations))

    def preprocessed(self, record) -> dict[str, Any]:
        """A record after the suite's preprocessing: from memory, else from the disk cache, else computed."""
        key = f"{self.dataset.registry_name}/{record.id}/{self.preprocess.key()}"
        if key not in self.cache:
            self.cache[key] = (
                self.disk_cache.get(self.dataset, record, self.preprocess)
                if self.disk_cache
                else preprocess(self.dataset.load(record), self.preprocess)
            )
        return self.cache[key]


@dataclass
class ProtocolResult:
    rows: list[dict[str, Any]]  # per case and class: {"case", "class", "metric", "value"}
    summary: dict[str, float]  # e.g. {"dice": mean over cases and classes}
    train_wall_s: float = 0.0
    params: int = 0
    trainable_params: int = 0


class Protocol:
    """Base class: ``Config`` holds the protocol's settings (same for every method of a suite)."""

    @dataclass
    class Config:
        pass

    registry_name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ()  # task kinds it serves
    # False: the protocol picks its own labelled examples (few_shot: k per class from the whole train split), so a
    # smaller label fraction would repeat the same run; it runs at the task's largest fraction only
    uses_label_fraction: ClassVar[bool] = True
    # True: given the same encoder and labelled data, the result does not depend on the transfer seed (kNN: no
    # training, no sampling). Its cells for several transfer seeds would be one run stored as several, so the runner
    # runs it at the first seed only, and a leaderboard counts its replicates by pretraining seed
    deterministic: ClassVar[bool] = False

    def __init__(self, cfg: Any = None) -> None:
        self.cfg: Any = cfg if cfg is not None else self.Config()  # the subclass's own Config

    @classmethod
    def make_config(cls, values: dict[str, Any] | None) -> Any:
        values = {k: v for k, v in dict(values or {}).items() if k != "name"}
        valid = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(
                f"protocol {cls.registry_name!r} has no option(s) {', '.join(unknown)}; "
                f"valid options: {', '.join(sorted(valid))}"
            )
        check_types(cls.Config, values)
        return cls.Config(**values)

    def run(self, ctx: TransferContext) -> ProtocolResult:
        raise NotImplementedError


class ProtocolFamily:
    """The protocols that share one public name across task kinds.

    ``linear_probe`` means a frozen encoder for every task, but a segmentation task trains a decoder and a
    classification task a linear head on pooled features: two classes, one name on the leaderboard and on the
    command line. Its YAML holds one section per kind (``segmentation:``, ``classification:``).
    """

    def __init__(self, name: str) -> None:
        self.registry_name = name
        self.members: dict[str, type[Protocol]] = {}

    def add(self, kind: str, cls: type[Protocol]) -> None:
        if kind not in TASK_KINDS:
            raise ValueError(f"protocol {self.registry_name!r}: unknown task kind {kind!r}; known: {TASK_KINDS}")
        if kind in self.members:
            raise ValueError(
                f"duplicate protocol {self.registry_name!r} for {kind} tasks: {self.members[kind]!r} and {cls!r}"
            )
        self.members[kind] = cls

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.members)

    def for_kind(self, kind: str) -> type[Protocol]:
        if kind not in self.members:
            raise ValueError(
                f"protocol {self.registry_name!r} has no implementation for {kind} tasks; "
                f"it serves: {', '.join(self.members)}"
            )
        return self.members[kind]

    def __repr__(self) -> str:
        return f"ProtocolFamily({self.registry_name!r}, {sorted(self.members)})"


def register_protocol(name: str, kind: str):
    """Register a Protocol class as the ``kind`` member of the family ``name`` (created on first use)."""

    def deco(cls: type[Protocol]) -> type[Protocol]:
        if name not in PROTOCOLS:
            PROTOCOLS.register(name, tags=())(ProtocolFamily(name))
        family = PROTOCOLS.get(name)
        if not isinstance(family, ProtocolFamily):
            raise ValueError(f"protocol {name!r} is already registered as a single class {family!r}")
        family.add(kind, cls)
        cls.registry_name = name
        cls.kinds = (kind,)
        return cls

    return deco


def resolve_protocol(name: str, kind: str) -> type[Protocol]:
    """The class that runs protocol ``name`` on a task of ``kind`` (a family member or a single class)."""
    entry = PROTOCOLS.get(name)
    if isinstance(entry, ProtocolFamily):
        return entry.for_kind(kind)
    if entry.kinds and kind not in entry.kinds:
        raise ValueError(f"protocol {name!r} serves {', '.join(entry.kinds)} tasks, not {kind}")
    return entry


def is_deterministic(protocol: str, kind: str) -> bool:
    """Whether protocol ``protocol`` on a task of ``kind`` gives the same result for every transfer seed, given the
    same encoder (see :attr:`Protocol.deterministic`); False for a name or kind the registry does not know, since
    nothing can be claimed about a protocol that is not loaded."""
    from bench.registry import UnknownNameError

    try:
        return bool(resolve_protocol(protocol, kind).deterministic)
    except (UnknownNameError, ValueError):
        return False


def protocol_values(values: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """A protocol YAML's options for one task kind: its ``<kind>:`` section, or the whole file if flat."""
    values = {k: v for k, v in dict(values or {}).items() if k != "name"}
    if any(k in TASK_KINDS for k in values):
        section = values.get(kind)
        return dict(section or {})
    return values
