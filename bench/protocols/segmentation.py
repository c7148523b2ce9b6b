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


from bench.data import SegTrainDataset, check_positive_crops, subsample
from bench.engine import TrainConfig, fit
from bench.export import load_export
from bench.protocols.base import Protocol, ProtocolResult, TransferContext, register_protocol
from bench.types import StepInfo, StepOutput


class SegmentationModel(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv3d(backbone.decoder_channels, n_classes, kernel_size=1)

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
        eval_every: int = 0           # 0: evaluate on val 4 times over training
        sw_overlap: float = 0.25
        sw_batch_size: int = 4
        nsd_tolerance_mm: float = 2.0
        grad_clip: float | None = 1.0
        positive_crops: str = "foreground"   # foreground (Swin UNETR) | class (a present class first, then a voxel)

        def __post_init__(self) -> None:
            check_positive_crops(self.positive_crops)   # at config time, before any training

    freeze_encoder: ClassVar[bool] = False

    def run(self, ctx: TransferContext) -> ProtocolResult:
        from monai.inferers import sliding_window_inference

        from bench import metrics
        from monai.losses import DiceCELoss

        cfg = self.cfg
        labels = ctx.dataset.info.labels
        n_classes = max(labels) + 1
        fg = sorted(k for k in labels if k != 0)
        backbone, _ = load_export(ctx.export_path)
        model = SegmentationModel(backbone, n_classes)
        if self.freeze_encoder:
            for p in backbone.encoder.parameters():
                p.requires_grad_(False)
        train_ids = subsample([r.id for r in ctx.dataset.records("train")], ctx.cell.label_fraction, ctx.cell.draw)
        train = load_cases(ctx, "train", train_ids)
        val = load_cases(ctx, "val")
        test = load_cases(ctx, "test")
        loader = torch.utils.data.DataLoader(
            SegTrainDataset(train, ctx.roi, samples=max(ctx.batch_size * 50, 1), positive_crops=cfg.positive_crops),
            batch_size=ctx.batch_size,
            num_workers=ctx.num_workers, pin_memory=ctx.device.type == "cuda",
            persistent_workers=ctx.num_workers > 0)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

        def step_fn(batch: dict[str, torch.Tensor], info: StepInfo) -> StepOutput:
            logits = model(batch["image"])
            return StepOutput(loss_fn(logits.float(), batch["label"]))

        @torch.no_grad()
        def predict(image: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(image)[None].to(ctx.device)
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.device.type == "cuda"):
                logits = sliding_window_inference(x, ctx.roi, cfg.sw_batch_size, model, overlap=cfg.sw_overlap,
                                                  mode="gaussian")
            return logits.argmax(1)[0].cpu().numpy()

        def pad(img: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
            # sliding windows need every side >= roi; pad and remember how to crop back
            spatial = img.shape[1:]
            extra = [max(r - s, 0) for s, r in zip(spatial, ctx.roi)]
            pads = [(0, 0)] + [(e // 2, e - e // 2) for e in extra]
            crop = tuple(slice(p[0], p[0] + s) for p, s in zip(pads[1:], spatial))
            return np.pad(img, pads), crop

        def segment(case: dict[str, Any]) -> np.ndarray:
            img, crop = pad(case["image"])
            return predict(img)[crop]

        def val_score() -> float:
            scores = []
            for c in val:
                pred = segment(c)   # one inference per case, shared by its classes
                scores += [metrics.dice(pred == k, c["label"] == k) for k in fg]
            return float(np.mean(scores))

        eval_every = ctx.eval_every(cfg.eval_every, 4)
        tcfg = TrainConfig(steps=ctx.steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           warmup_steps=int(cfg.warmup_fraction * ctx.steps), grad_clip=cfg.grad_clip,
                           eval_every=eval_every if val else 0, checkpoint_every=max(1, eval_every),
                           log_every=max(1, min(10, ctx.steps // 10)))
        params = [p for p in model.parameters() if p.requires_grad]
        t0 = time.time()
        fit(model, step_fn, [{"params": params}], loader, tcfg, ctx.run_dir, device=ctx.device,
            eval_fn=val_score if val else None, desc=f"{self.registry_name} {ctx.cell.key}",
            log_prefix=f"transfer/{self.registry_name}", progress=ctx.progress)
        wall = time.time() - t0
        rows = []
        for case in test:
            pred = segment(case)
            for r in metrics.segmentation_case_metrics(pred, case["label"], fg, case["spacing"], cfg.nsd_tolerance_mm):
                rows.append({"case": case["id"], **r})
        dice = [r["value"] for r in rows if r["metric"] == "dice"]
        return ProtocolResult(rows=rows, summary={"dice": float(np.mean(dice)) if dice else float("nan")},
                              train_wall_s=wall, params=sum(p.numel() for p in model.parameters()),
                              trainable_params=sum(p.numel() for p in params))


@register_protocol("finetune", "segmentation")
class Finetune(_Segmentation):
    """All weights trained (encoder, decoder and head)."""


@register_protocol("linear_probe", "segmentation")
class LinearProbe(_Segmentation):
    """ASA's linear probing: frozen Swin encoder, trained CNN decoder and head."""

    freeze_encoder: ClassVar[bool] = True
