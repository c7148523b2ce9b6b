"""The PretrainMethod contract.

A method turns a batch of views into a loss. It never calls backward, an optimizer, autocast, save
or a logger: the engine (bench/engine.py) owns all of that, for every method alike.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bench.backbones import Backbone
from bench.engine import DEFAULT_NO_DECAY
from bench.options import check_types
from bench.types import StepInfo, StepOutput  # noqa: F401  (part of the method contract)


class PretrainMethod(nn.Module):
    """Base class of every pretraining method.

    Subclasses set ``Config`` (a dataclass of the method's own hyper-parameters with the paper's
    defaults) and implement ``training_step``. Method-specific state (queues, centres) must be a
    parameter or buffer so that checkpoints carry it without the engine knowing about it.
    """

    @dataclass
    class Config:
        pass

    #: Declared, never inferred: e.g. {"3d"}, {"2d"}, {"ema"}.
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: False only for baselines that do no pretraining (``random``).
    pretrains: ClassVar[bool] = True
    #: True for a method that pretrains with the corpus's label maps (``supervised``, a positive control, not SSL):
    #: the runner then refuses a corpus without labels, calls ``bind_labels`` and passes each sample's ``label``.
    needs_corpus_labels: ClassVar[bool] = False
    #: True for a method that uses a per-volume label of the corpus where the corpus has one (SA-Swin's health label,
    #: 1 healthy / 0 patient): the runner calls ``bind_volume_labels`` and, where the corpus has them, passes each
    #: sample's ``volume_label``. Unlike ``needs_corpus_labels``, a corpus without them is no error by itself.
    wants_volume_labels: ClassVar[bool] = False
    registry_name: ClassVar[str]

    def __init__(self, backbone: Backbone, cfg: Any = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg if cfg is not None else self.Config()

    @classmethod
    def make_config(cls, overrides: dict[str, Any] | None) -> Any:
        """Build ``Config`` from YAML/CLI values; an unknown key is an error naming the valid ones."""
        overrides = dict(overrides or {})
        valid = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(
                f"method {cls.registry_name!r} has no option(s) {', '.join(unknown)}; "
                f"valid options: {', '.join(sorted(valid)) or '(none)'}"
            )
        check_types(cls.Config, overrides)  # a wrong type is refused here, not at the first training step
        return cls.Config(**overrides)

    @classmethod
    def check_inputs(cls, cfg: Any, make_backbone: Any) -> None:
        """Called when the plan is made, before any data generation or training: a method that reads a file the
        user names (``external``'s checkpoint) checks it here, so that a bad one is refused by name before any
        work. ``make_backbone()`` builds the plan's backbone. An error is a ValueError. Default: nothing to check."""

    @classmethod
    def cache_identity(cls, cfg: Any) -> dict[str, Any]:
        """What, beyond ``cfg`` itself, decides this method's export (e.g. the sha256 of a weights file a path
        names); the runner merges it into the pretraining cache key and the export metadata. Default: nothing."""
        return {}

    @classmethod
    def corpus_preprocessing(cls, cfg: Any, suite: dict[str, Any], modality: str) -> dict[str, Any]:
        """The preprocessing of this method's pretraining corpus (``bench.data.Preprocess`` keys), given the
        suite's, which transfer keeps, and the corpus's modality ("CT", "MR", ...): a method whose official
        loader has its own window (Swin UNETR SSL's HU [-1000, 1000]) says so here; an error is a ValueError. The
        runner preprocesses the corpus with it and keys the pretraining cache and export metadata with it.
        Default: the suite's."""
        return suite

    # --- the contract -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> StepOutput:
        raise NotImplementedError

    def views(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Data-side view construction; runs in loader workers.

        ``sample`` holds the preprocessed volume ``image`` [C, *S] (numpy) and the budget's ``roi``; for a method
        with ``needs_corpus_labels`` also its label map ``label`` [*S] (integer numpy), never for any other; for a
        method with ``wants_volume_labels`` on a corpus that has them, its volume's ``volume_label`` (an int).
        Default: one random ROI crop (padded first if the volume is smaller).
        """
        from bench.data import pad_to, random_crop

        image = pad_to(sample["image"], sample["roi"])
        (crop,) = random_crop([image], sample["roi"], rng)
        return {"image": torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))}

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) pairs; the engine updates teachers after each real optimizer step."""
        return []

    def ema_momentum(self, progress: float) -> float:
        base = getattr(self.cfg, "ema_momentum", 0.996)
        return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1) / 2

    def after_optimizer_step(self, step: StepInfo) -> None:
        """Queues, centring and the like; default nothing."""

    def bind_corpus(self, n_volumes: int, volumes_per_step: int) -> None:
        """Told by the runner before training: corpus size and volumes per optimizer step, for schedules
        counted in corpus epochs (ASA's phase blocks). Default: not needed."""

    def bind_labels(self, labels: dict[int, str]) -> None:
        """Told by the runner before training (before ``param_groups`` and any resumed checkpoint), for a method with
        ``needs_corpus_labels``: the corpus's label map {id: name}, background 0 included, so that it can build
        its head for that many classes. Default: not needed."""

    def bind_volume_labels(self, available: bool) -> dict[str, Any]:
        """Told by the runner before training (before ``param_groups`` and any resumed checkpoint), for a method with
        ``wants_volume_labels``: whether each sample will carry its volume's label. Returns the objective this
        settles, which the export's metadata records (e.g. ``{"symmetry_target": "label"}``); a ValueError where
        the method cannot train without them. Default: nothing."""
        return {}

    def export_extras(self) -> dict[str, Any]:
        """Pre-trained modules beyond the backbone that a protocol may use (SACA's block); default none."""
        return {}

    def export_encoder(self) -> Backbone:
        """What transfer receives. EMA methods return their teacher backbone, as in the papers."""
        return self.backbone

    def param_groups(self, weight_decay: float, no_decay: Sequence[str] = DEFAULT_NO_DECAY) -> list[dict[str, Any]]:
        """Two groups, with and without weight decay. ``no_decay`` is the method's own rule (its YAML's
        ``train.no_decay``, the official code's): "1d" exempts every parameter of one dimension or fewer (biases,
        norms); any other entry exempts the parameters whose name ends with it (``token``,
        ``relative_position_bias_table``); an empty list decays every parameter (Swin UNETR SSL, sa-swin)."""
        rules = set(no_decay)
        suffixes = tuple(r for r in rules if r != "1d")
        decay, exempt = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            skip = ("1d" in rules and p.ndim <= 1) or (bool(suffixes) and name.endswith(suffixes))
            (exempt if skip else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def make_teacher(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` for EMA (initialised as the student, as ASA and ACE do)."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
