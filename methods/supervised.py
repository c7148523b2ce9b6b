"""``supervised``: the encoder pretrained with labels on the pretraining corpus; a positive control, not SSL.

A representation probe (linear probe, kNN, a voxel probe) that cannot rank this encoder above ``random`` cannot
tell good representations from bad ones: supervised pretraining on the corpus's own label maps is the reference
it must find. The method needs a corpus with labels (``needs_corpus_labels``): the synthetic suites generate
theirs (``abdomen``, ``abdomen_shuffled``; ``brain``: its subjects' lesion masks; ``smoke`` uses its train
labels); on any other corpus the run is refused when it is planned, with one line naming the dataset.

Recipe: Swin UNETR's supervised segmentation training (BTCV) [0], as the ``finetune`` protocol trains:
- the backbone's encoder and UNETR decoder (``backbone(x)``) and a 1x1x1 conv head for the corpus's classes
  (background included), built when the runner binds the corpus's label map (``bind_labels``);
- deep supervision of the encoder (``encoder_head``, on by default, not in Swin UNETR's recipe): a second 1x1x1
  conv head on the encoder's stage features resampled to one grid (``bench.backbones.on_grid``, what the voxel
  probe reads), upsampled to the crop, with its own DiceCE. A positive control must put the labels into the
  encoder, and the UNETR decoder's full-resolution skip from the raw image lets a short schedule learn without it;
- DiceCE loss (MONAI ``DiceCELoss``, one-hot labels, softmax);
- random ROI crops, ``pos_fraction`` (0.5) of them centred on a foreground voxel (RandCropByPosNegLabeld with
  pos = neg = 1), a random intensity scale and shift (as the finetune protocol's crops);
- AdamW lr 1e-4, wd 1e-5 (conf/method/supervised.yaml); at budget=quick lr 1e-3
  (conf/method_budget/supervised_quick.yaml), the finetune protocol's quick setting.
The export is the backbone (encoder and decoder) without the heads, like every other method's.

- [0]: Hatamizadeh et al., Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors in MRI
  Images, BrainLes 2021, arXiv 2201.01266 (the BTCV recipe of its code)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import SwinUNETRBackbone, on_grid
from bench.data import pad_to, random_crop
from bench.registry import METHODS
from methods.base import PretrainMethod, StepInfo, StepOutput


@METHODS.register("supervised", tags=("3d",))
class Supervised(PretrainMethod):
    @dataclass
    class Config:
        pos_fraction: float = 0.5  # crops centred on a foreground voxel (Swin UNETR: pos = neg = 1)
        intensity_aug: bool = True  # random intensity scale U(0.9, 1.1) and shift U(-0.1, 0.1)
        # a second, linear head on the encoder's stage features (on a grid of encoder_grid voxels, upsampled to the
        # crop), its DiceCE added to the decoder's: the decoder's first skip reads the raw image at full
        # resolution, so without it 200 steps train the decoder and leave the encoder near its init (a voxel probe
        # of that encoder scored 0.421 mean Dice on abdomen against 0.402 for random init)
        encoder_head: bool = True
        encoder_grid: int = 4

        def __post_init__(self) -> None:  # refused when the run is planned, before any data work
            if not 0.0 <= self.pos_fraction <= 1.0:
                raise ValueError(f"supervised: pos_fraction must lie in [0, 1], got {self.pos_fraction}")

    capabilities: ClassVar[frozenset[str]] = frozenset({"3d", "supervised"})
    needs_corpus_labels: ClassVar[bool] = True

    def __init__(self, backbone: SwinUNETRBackbone, cfg: Config | None = None) -> None:
        super().__init__(backbone, cfg)
        from monai.losses import DiceCELoss

        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.head: nn.Conv3d | None = None  # built by bind_labels, for the corpus's classes
        self.encoder_head: nn.Conv3d | None = None

    def bind_labels(self, labels: dict[int, str]) -> None:
        """A 1x1x1 conv head for label ids 0..max(labels) (background 0 included)."""
        ids = sorted(int(k) for k in labels)
        if len(ids) < 2 or ids[0] < 0:
            raise ValueError(f"supervised: the corpus's label map needs background 0 and a class, got {labels}")
        n = ids[-1] + 1
        if self.head is None or self.head.out_channels != n:
            self.head = nn.Conv3d(self.backbone.decoder_channels, n, kernel_size=1)
            if self.cfg.encoder_head:
                self.encoder_head = nn.Conv3d(sum(self.backbone.stage_channels), n, kernel_size=1)

    def views(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """One ROI crop of the image and its label map (the same voxels), centred on a foreground voxel with
        probability ``pos_fraction``."""
        if sample.get("label") is None:
            raise ValueError("supervised: the sample has no label map; the runner passes one for each corpus volume")
        roi = tuple(sample["roi"])
        image = pad_to(sample["image"], roi)
        label = pad_to(sample["label"], roi)
        center = None
        if rng.random() < self.cfg.pos_fraction:
            fg = np.flatnonzero(label > 0)
            if fg.size:
                center = np.unravel_index(fg[int(rng.integers(fg.size))], label.shape)
        image, label = random_crop([image, label], roi, rng, center)
        image = np.asarray(image, np.float32)
        if self.cfg.intensity_aug:
            image = image * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-0.1, 0.1))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)[None]),
        }

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> StepOutput:
        if self.head is None:
            raise RuntimeError("supervised: no label map bound; the runner calls bind_labels before training")
        x = batch["image"]
        hs = self.backbone.encode(x)
        loss = self.loss_fn(self.head(self.backbone.decode(x, hs)).float(), batch["label"])
        logs = {"dice_ce": loss.detach()}
        if self.encoder_head is not None:
            grid = on_grid(hs, [s // self.cfg.encoder_grid for s in x.shape[2:]])
            coarse = self.encoder_head(grid)
            logits = F.interpolate(coarse, size=list(x.shape[2:]), mode="trilinear", align_corners=False)
            encoder_loss = self.loss_fn(logits.float(), batch["label"])
            logs["encoder_dice_ce"] = encoder_loss.detach()
            loss = loss + encoder_loss
        return StepOutput(loss, logs)
