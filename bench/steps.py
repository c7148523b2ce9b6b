"""What a training step receives and returns: the engine's side of the method contract.

Kept apart from ``methods/`` so that the engine and the protocols can import it without importing (and so
registering) every method; ``methods.base`` re-exports both for method authors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)


@dataclass
class StepInfo:
    step: int          # optimizer steps done so far
    total_steps: int

    @property
    def progress(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))
