"""3D segmentation transfer: ``finetune`` (all weights trained) and ``linear_probe``.

``linear_probe`` follows ASA's definition: the pretrained Swin encoder is frozen and the CNN decoder
(plus the output conv) is trained — not a single linear layer. Both select the checkpoint with the
best mean foreground Dice on the val split and report per-case, per-class Dice, NSD and HD95 on
the test split, predicted by sliding-window inference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


from bench import distributed
from bench.data import SegTrainDataset, check_positive_crops, subsample
from bench.engine import TrainConfig, fit
from bench.export import load_export
from bench.protocols.base import Protocol, ProtocolResult, TransferContext, register_protocol
from bench.types import StepInfo, StepOutput


class SegmentationModel(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        channels = backbone.decoder_channels
        if not isinstance(channels, int):
            raise TypeError(f"{type(backbone).__name__}.decoder_channels must be an int, got {type(channels).__name__}")
        self.head = nn.Conv3d(channels, n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def load_cases(ctx: TransferContext, split: str, ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Preprocessed cases of a split, cached in ``ctx.cache`` across the cells of a run."""
    out = []
    for rec in ctx.dataset.records(split):
        if ids is not None and rec.id not in ids:
            continue
        out.append(ctx.preprocessed(rec))
    return out


class _Segmentation(Protocol):
    @dataclass
    class Config:
        lr: float = 1e-4
        weight_decay: float = 1e-5
        warmup_fraction: float = 0.1
        eval_every: int = 0  # 0: evaluate on val 4 times over training
        sw_overlap: float = 0.25
        sw_batch_size: int = 4
        nsd_tolerance_mm: float = 2.0
        grad_clip: float | None = 1.0
        positive_crops: str = "foreground"  # foreground (Swin UNETR) | class (a present class first, then a voxel)

        def __post_init__(self) -> None:
            check_positive_crops(self.positive_crops)  # at config time, before any training

    freeze_encoder: ClassVar[bool] = False

    def run(self, ctx: TransferContext) -> ProtocolResult:
        labels = ctx.dataset.info.labels
        fg = sorted(k for k in labels if k != 0)
        model = self._model(ctx, max(labels) + 1)
        train, val, test = _splits(ctx)
        params = [p for p in model.parameters() if p.requires_grad]
        wall = self._train(ctx, model, params, train, val, fg)
        rows = self._test_rows(ctx, model, test, fg)
        dice = [r["value"] for r in rows if r["metric"] == "dice"]
        return ProtocolResult(
            rows=rows,
            summary={"dice": float(np.mean(dice)) if dice else float("nan")},
            train_wall_s=wall,
            params=sum(p.numel() for p in model.parameters()),
            trainable_params=sum(p.numel() for p in params),
        )

    def _model(self, ctx: TransferContext, n_classes: int) -> SegmentationModel:
        """The export's backbone under a fresh head; ``linear_probe`` freezes the encoder here, before the optimizer
        is built, so that only the decoder and head get parameter groups."""
        backbone, _ = load_export(ctx.export_path)
        model = SegmentationModel(backbone, n_classes)
        if self.freeze_encoder:
            encoder = backbone.encoder
            if not isinstance(encoder, nn.Module):
                raise TypeError(f"{type(backbone).__name__}.encoder must be a module, got {type(encoder).__name__}")
            for p in encoder.parameters():
                p.requires_grad_(False)
        return model

    def _train(
        self,
        ctx: TransferContext,
        model: SegmentationModel,
        params: list[nn.Parameter],
        train: list[dict[str, Any]],
        val: list[dict[str, Any]],
        fg: list[int],
    ) -> float:
        """Train on random crops and keep the checkpoint with the best val Dice; returns the training wall time
        (only the fit: the test inference is not training compute)."""
        from monai.losses import DiceCELoss

        loader = _train_loader(ctx, train, self.cfg.positive_crops)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

        def step_fn(batch: dict[str, torch.Tensor], info: StepInfo) -> StepOutput:
            logits = model(batch["image"])
            return StepOutput(loss_fn(logits.float(), batch["label"]))

        def val_score() -> float:
            return _val_dice(model, val, fg, ctx, self.cfg)

        tcfg = self._train_config(ctx, bool(val))
        t0 = time.time()
        fit(
            model,
            step_fn,
            [{"params": params}],
            loader,
            tcfg,
            ctx.run_dir,
            device=ctx.device,
            eval_fn=val_score if val else None,
            desc=f"{self.registry_name} {ctx.cell.key}",
            log_prefix=f"transfer/{self.registry_name}",
            progress=ctx.progress,
        )
        return time.time() - t0

    def _train_config(self, ctx: TransferContext, has_val: bool) -> TrainConfig:
        """The budget's steps with the protocol's optimiser; a checkpoint at every validation, so that a resumed
        cell restarts from its last one, and no model selection when the dataset has no val split."""
        cfg = self.cfg
        eval_every = ctx.eval_every(cfg.eval_every, 4)
        return TrainConfig(
            steps=ctx.steps,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=int(cfg.warmup_fraction * ctx.steps),
            grad_clip=cfg.grad_clip,
            eval_every=eval_every if has_val else 0,
            checkpoint_every=max(1, eval_every),
            log_every=max(1, min(10, ctx.steps // 10)),
        )

    def _test_rows(
        self, ctx: TransferContext, model: SegmentationModel, test: list[dict[str, Any]], fg: list[int]
    ) -> list[dict[str, Any]]:
        """Per-case, per-class rows, so that the leaderboard can pair methods on the same cases. Under torchrun the
        main process evaluates and the others return no rows (they store nothing)."""
        from bench import metrics

        rows: list[dict[str, Any]] = []
        if not distributed.is_main():
            return rows
        for case in test:
            pred = _segment(model, case, ctx, self.cfg)
            for r in metrics.segmentation_case_metrics(
                pred, case["label"], fg, case["spacing"], self.cfg.nsd_tolerance_mm
            ):
                rows.append({"case": case["id"], **r})
        return rows


def _splits(ctx: TransferContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Train cases subsampled to the cell's label fraction (its draw picks which); val and test always whole, so
    every cell of a table is scored on the same cases."""
    train_ids = subsample([r.id for r in ctx.dataset.records("train")], ctx.cell.label_fraction, ctx.cell.draw)
    return load_cases(ctx, "train", train_ids), load_cases(ctx, "val"), load_cases(ctx, "test")


def _train_loader(
    ctx: TransferContext, train: list[dict[str, Any]], positive_crops: str
) -> torch.utils.data.DataLoader:
    """An endless stream of random crops drawn from the cell's seed; under torchrun each process takes its shard of
    every global batch."""
    return distributed.loader(
        SegTrainDataset(
            train, ctx.roi, samples=max(ctx.batch_size * 50, 1), positive_crops=positive_crops, seed=ctx.cell.seed
        ),
        ctx.batch_size,
        "budget.transfer.batch_size",
        num_workers=ctx.num_workers,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=ctx.num_workers > 0,
    )


@torch.no_grad()
def _predict(model: nn.Module, image: np.ndarray, ctx: TransferContext, cfg: Any) -> np.ndarray:
    """Whole-volume labels by Gaussian-weighted sliding windows: the model was trained on roi-sized crops, so
    inference tiles the volume at that size."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(image)[None].to(ctx.device)
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.device.type == "cuda"):
        logits = sliding_window_inference(x, ctx.roi, cfg.sw_batch_size, model, overlap=cfg.sw_overlap, mode="gaussian")
    if not isinstance(logits, torch.Tensor):  # a tuple or dict only from a model that returns one
        raise TypeError(f"the segmentation model must return a tensor, got {type(logits).__name__}")
    return logits.argmax(1)[0].cpu().numpy()


def _pad(img: np.ndarray, roi: tuple[int, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Sliding windows need every side >= roi: pad a small volume, and remember how to crop the prediction back."""
    spatial = img.shape[1:]
    extra = [max(r - s, 0) for s, r in zip(spatial, roi)]
    pads = [(0, 0)] + [(e // 2, e - e // 2) for e in extra]
    crop = tuple(slice(p[0], p[0] + s) for p, s in zip(pads[1:], spatial))
    return np.pad(img, pads), crop


def _segment(model: nn.Module, case: dict[str, Any], ctx: TransferContext, cfg: Any) -> np.ndarray:
    """A case's predicted label map at its own size, whatever padding inference needed."""
    img, crop = _pad(case["image"], ctx.roi)
    return _predict(model, img, ctx, cfg)[crop]


def _val_dice(model: nn.Module, val: list[dict[str, Any]], fg: list[int], ctx: TransferContext, cfg: Any) -> float:
    """Mean foreground Dice over val cases and classes: the model-selection score."""
    from bench import metrics

    scores = []
    for c in val:
        pred = _segment(model, c, ctx, cfg)  # one inference per case, shared by its classes
        scores += [metrics.dice(pred == k, c["label"] == k) for k in fg]
    return float(np.mean(scores))


@register_protocol("finetune", "segmentation")
class Finetune(_Segmentation):
    """All weights trained (encoder, decoder and head)."""


@register_protocol("linear_probe", "segmentation")
class LinearProbe(_Segmentation):
    """ASA's linear probing: frozen Swin encoder, trained CNN decoder and head."""

    freeze_encoder: ClassVar[bool] = True
