"""``random``: no pretraining; the transfer protocols start from a randomly initialised backbone.

The baseline every SSL method must beat (``from scratch`` in the papers' tables).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bench.registry import METHODS
from methods.base import PretrainMethod, StepInfo, StepOutput


@METHODS.register("random", tags=("3d", "2d"))
class RandomInit(PretrainMethod):
    @dataclass
    class Config:
        pass

    capabilities: ClassVar[frozenset[str]] = frozenset({"3d", "2d"})
    pretrains: ClassVar[bool] = False

    def training_step(self, batch: dict, step: StepInfo) -> StepOutput:
        raise RuntimeError("the random baseline does no pretraining; the engine never calls its training_step")
