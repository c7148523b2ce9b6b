"""What every protocol receives and returns."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.data import Preprocess
from bench.suites import Cell
from datasets.base import DatasetAdapter


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
    cache: dict[str, Any] = field(default_factory=dict)   # preprocessed volumes shared across cells


@dataclass
class ProtocolResult:
    rows: list[dict[str, Any]]            # per case and class: {"case", "class", "metric", "value"}
    summary: dict[str, float]             # e.g. {"dice": mean over cases and classes}
    train_wall_s: float = 0.0
    params: int = 0
    trainable_params: int = 0


class Protocol:
    """Base class: ``Config`` holds the protocol's settings (same for every method of a suite)."""

    @dataclass
    class Config:
        pass

    registry_name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ()   # task kinds it serves

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg if cfg is not None else self.Config()

    @classmethod
    def make_config(cls, values: dict[str, Any] | None) -> Any:
        values = {k: v for k, v in dict(values or {}).items() if k != "name"}
        valid = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"protocol {cls.registry_name!r} has no option(s) {', '.join(unknown)}; "
                             f"valid options: {', '.join(sorted(valid))}")
        return cls.Config(**values)

    def run(self, ctx: TransferContext) -> ProtocolResult:
        raise NotImplementedError
