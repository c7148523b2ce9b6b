"""Representation probes for 3D segmentation: ``voxel_probe`` and ``knn_seg``.

Both measure the frozen encoder and nothing else. ``linear_probe`` trains the UNETR decoder, whose first skip
convolves the raw image at full resolution, so a random encoder scores about what a pretrained one does; here every
prediction is a function of the encoder's features alone:

- the encoder's stage features (hs[0..4] of Swin UNETR, strides 2 to 32) are resampled to one grid of
  ``grid_stride`` voxels (area averaging down, trilinear up) and concatenated; a volume is encoded by Gaussian-
  weighted sliding windows of the budget's ROI, as the other protocols infer, once per volume and export (the cells
  of one pretraining share them);
- ``voxel_probe`` (DINOv2's linear segmentation probe, in 3D) fits a linear classifier (a 1x1x1 convolution) on
  standardised features of labelled voxels sampled from the train subjects, by full-batch L-BFGS to convergence:
  the same optimiser and stopping rule for every method, no learning rate to tune;
- ``knn_seg`` (Balazevic et al. 2023's retrieval, per voxel) lets each test voxel of the grid take the
  similarity-weighted vote of its k nearest labelled voxels in a memory bank of sampled train voxels.

Voxels are sampled class-balanced (each class present in a subject equally, so that small organs are seen), and the
sampling is undone at prediction: the probe's class scores are re-weighted by (true class frequency / sampled
frequency) of the train subjects, which turns a balanced-sample posterior into the population one. Class scores on
the grid are upsampled trilinearly to full resolution (the classifier is linear, so this equals classifying the
interpolated features) and scored with Dice, NSD and HD95 like every other segmentation protocol.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import distributed
from bench.backbones import Backbone, on_grid
from bench.data import match_channels, subsample
from bench.export import load_export
from bench.protocols.base import Protocol, ProtocolResult, TransferContext, register_protocol
from bench.types import write_text_atomic


class GridFeatures(nn.Module):
    """An ROI crop -> the encoder's stage features on one grid of ``stride`` voxels, concatenated by channel."""

    def __init__(self, backbone: Backbone, stride: int) -> None:
        super().__init__()
        self.backbone, self.stride = backbone, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return on_grid(self.backbone.encode(x), [s // self.stride for s in x.shape[2:]])


@dataclass
class Encoded:
    """One case: its features on the grid (float16, CPU, [C, *grid]), its label and the shape to score at."""

    id: str
    features: torch.Tensor
    label: np.ndarray | None
    spacing: Any
    shape: tuple[int, ...]  # the case's own spatial shape (the grid covers it, padded up to whole grid cells)


def _padded(image: np.ndarray, roi: tuple[int, ...], stride: int) -> np.ndarray:
    """At least the ROI on every side (sliding windows need it) and a whole number of grid cells, padded at the end
    so that voxel i of the case is voxel i of the padded volume."""
    target = [max(r, math.ceil(s / stride) * stride) for s, r in zip(image.shape[1:], roi)]
    return np.pad(image, [(0, 0)] + [(0, t - s) for s, t in zip(image.shape[1:], target)])


@torch.no_grad()
def encode_case(net: GridFeatures, case: dict[str, Any], ctx: TransferContext, overlap: float) -> Encoded:
    from monai.inferers import sliding_window_inference

    image = _padded(match_channels(case["image"], net.backbone.in_channels, case["id"]), ctx.roi, net.stride)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(ctx.device)
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.device.type == "cuda"):
        feats = sliding_window_inference(
            x, ctx.roi, max(1, ctx.batch_size), net, overlap=overlap, mode="gaussian", sw_device=ctx.device
        )
    if not isinstance(feats, torch.Tensor):
        raise TypeError(f"the feature network must return a tensor, got {type(feats).__name__}")
    return Encoded(case["id"], feats[0].half().cpu(), case.get("label"), case["spacing"], case["image"].shape[1:])


def encoded_split(
    ctx: TransferContext, net: GridFeatures, split: str, overlap: float, ids: list[str] | None = None
) -> list[Encoded]:
    """The grid features of a split's cases (``ids`` only, when given), computed once per export for every cell of
    the run that asks for them with the same grid and overlap."""
    from tqdm.auto import tqdm

    records = [r for r in ctx.dataset.records(split) if ids is None or r.id in ids]
    out = []
    for rec in tqdm(records, desc=f"encode {split}", unit="vol", disable=not ctx.progress, leave=False):
        key = f"grid/{ctx.export_path}/{ctx.dataset.registry_name}/{rec.id}/{ctx.preprocess.key()}/{ctx.roi}"
        key += f"/{net.stride}/{overlap}"
        if key not in ctx.cache:
            ctx.cache[key] = encode_case(net, ctx.preprocessed(rec), ctx, overlap)
        out.append(ctx.cache[key])
    return out


def _grid_coords(points: np.ndarray, grid: tuple[int, ...], stride: int) -> torch.Tensor:
    """Voxel indices [N, 3] -> grid_sample coordinates (x, y, z order, align_corners=False): voxel i's centre lies at
    (i + 0.5) / stride grid cells, the convention F.interpolate(trilinear) upsamples with."""
    p = (points.astype(np.float64) + 0.5) / stride
    norm = 2 * p / np.asarray(grid, dtype=np.float64) - 1
    return torch.from_numpy(norm[:, ::-1].copy()).float()


def sample_voxels(
    cases: list[Encoded], n_classes: int, per_class: int, stride: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Up to ``per_class`` voxels of every class present in each case, drawn uniformly within the class; returns
    their features [N, C] (trilinear at the voxel centre), their classes [N] and the true voxel count of every class
    over the cases (the prior that the balanced sample distorts)."""
    feats, ys = [], []
    counts = np.zeros(n_classes, dtype=np.float64)
    for case in cases:
        assert case.label is not None
        lab = case.label.reshape(case.label.shape[-3:])
        counts += np.bincount(lab.ravel().astype(np.int64), minlength=n_classes)[:n_classes]
        volume = case.features[None].float()
        for k in np.unique(lab):
            where = np.flatnonzero(lab.ravel() == k)
            pick = rng.choice(where, size=min(per_class, len(where)), replace=False)
            points = np.stack(np.unravel_index(np.sort(pick), lab.shape), 1)
            grid = case.features.shape[1:]
            coords = _grid_coords(points, grid, stride).view(1, -1, 1, 1, 3)
            f = F.grid_sample(volume, coords, mode="bilinear", padding_mode="border", align_corners=False)
            feats.append(f[0, :, :, 0, 0].T)
            ys.append(torch.full((len(pick),), int(k), dtype=torch.long))
    return torch.cat(feats), torch.cat(ys), counts


def prior_weights(counts: np.ndarray, sampled: torch.Tensor) -> torch.Tensor:
    """(true frequency / sampled frequency) per class: what turns a balanced sample's posterior into the population
    one. A class never sampled gets 0, so it is never predicted."""
    n = np.bincount(sampled.numpy(), minlength=len(counts)).astype(np.float64)
    w = np.where(n > 0, (counts / counts.sum()) / np.maximum(n / n.sum(), 1e-12), 0.0)
    return torch.from_numpy(w).float()


def standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of the sampled train features (features of every method on one scale,
    so that one L2 penalty and one temperature serve all)."""
    return x.mean(0), x.std(0).clamp_min(1e-6)


@torch.no_grad()
def _score_cases(
    cases: list[Encoded], scores_fn: Any, stride: int, tolerance_mm: float, fg: list[int], device: torch.device
) -> list[dict[str, Any]]:
    """Per-case, per-class rows: the class scores on each case's grid, upsampled to the padded volume, cropped to the
    case and turned into labels."""
    from bench import metrics

    rows: list[dict[str, Any]] = []
    for case in cases:
        scores = scores_fn(case.features.to(device).float())  # [K, *grid]
        full = [g * stride for g in case.features.shape[1:]]
        up = F.interpolate(scores[None], size=full, mode="trilinear", align_corners=False)[0]
        pred = up.argmax(0)[tuple(slice(0, s) for s in case.shape)].cpu().numpy()
        assert case.label is not None
        ref = case.label.reshape(case.label.shape[-3:])
        for r in metrics.segmentation_case_metrics(pred, ref, fg, case.spacing, tolerance_mm):
            rows.append({"case": case.id, **r})
    return rows


def _encoder(backbone: Backbone) -> nn.Module:
    """The part of the backbone the probes read (Swin UNETR: the Swin transformer, not the decoder)."""
    encoder = getattr(backbone, "encoder", backbone)
    return encoder if isinstance(encoder, nn.Module) else backbone


class _Probe(Protocol):
    @dataclass
    class Config:
        grid_stride: int = 4
        sw_overlap: float = 0.25
        nsd_tolerance_mm: float = 2.0
        voxels_per_class: int = 500  # per train subject and class present in it

        def __post_init__(self) -> None:
            if self.grid_stride < 1 or self.voxels_per_class < 1:
                raise ValueError("grid_stride and voxels_per_class must be positive")
            if not 0 <= self.sw_overlap < 1:
                raise ValueError(f"sw_overlap must be in [0, 1); got {self.sw_overlap}")

    # the sampled voxels (and, for knn_seg, the memory bank) come from the cell's transfer seed: seeds differ
    deterministic: ClassVar[bool] = False

    def run(self, ctx: TransferContext) -> ProtocolResult:
        if not distributed.is_main():  # no training loop to share: the main process probes, the others store nothing
            return ProtocolResult(rows=[], summary={})
        backbone, _ = load_export(ctx.export_path)
        return self.probe(ctx, backbone)

    def probe(self, ctx: TransferContext, backbone: Backbone) -> ProtocolResult:
        """The probe on a frozen ``backbone`` (``run`` loads it from the cell's export)."""
        labels = ctx.dataset.info.labels
        n_classes, fg = max(labels) + 1, sorted(k for k in labels if k != 0)
        if not hasattr(backbone, "encode") or backbone.spatial_dims != 3:
            raise ValueError(f"{self.registry_name} needs a 3D encoder; {type(backbone).__name__} is not one")
        net = GridFeatures(backbone, self.cfg.grid_stride).eval().to(ctx.device)
        for p in net.parameters():
            p.requires_grad_(False)
        t0 = time.time()
        train_ids = subsample([r.id for r in ctx.dataset.records("train")], ctx.cell.label_fraction, ctx.cell.draw)
        train = encoded_split(ctx, net, "train", self.cfg.sw_overlap, train_ids)
        rng = np.random.default_rng([ctx.cell.seed, ctx.cell.draw, 0x5EC])
        x, y, counts = sample_voxels(train, n_classes, self.cfg.voxels_per_class, self.cfg.grid_stride, rng)
        mean, std = standardiser(x)
        scores_fn, trainable, report = self.fit((x - mean) / std, y, counts, ctx.device, rng)
        wall = time.time() - t0
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(ctx.run_dir / "probe.json", json.dumps(report | {"fit_wall_s": wall}, indent=1))
        test = encoded_split(ctx, net, "test", self.cfg.sw_overlap)
        m, s = mean.to(ctx.device), std.to(ctx.device)

        def case_scores(f: torch.Tensor) -> torch.Tensor:
            z = (f - m.view(-1, 1, 1, 1)) / s.view(-1, 1, 1, 1)
            return scores_fn(z)

        rows = _score_cases(test, case_scores, self.cfg.grid_stride, self.cfg.nsd_tolerance_mm, fg, ctx.device)
        dice = [r["value"] for r in rows if r["metric"] == "dice"]
        return ProtocolResult(
            rows=rows,
            summary={"dice": float(np.mean(dice)) if dice else float("nan")},
            train_wall_s=wall,
            params=sum(p.numel() for p in _encoder(backbone).parameters()) + trainable,
            trainable_params=trainable,
        )

    def fit(
        self, z: torch.Tensor, y: torch.Tensor, counts: np.ndarray, device: torch.device, rng: np.random.Generator
    ) -> tuple[Any, int, dict[str, Any]]:
        """From standardised sampled features ``z`` [N, C], their classes ``y`` and the train subjects' voxel count
        per class: a function from standardised grid features [C, *grid] to class scores [K, *grid], and the trained
        parameter count and what to report of the fit."""
        raise NotImplementedError


@register_protocol("voxel_probe", "segmentation")
class VoxelProbe(_Probe):
    """A linear classifier (1x1x1 convolution) on the frozen encoder's multi-scale grid features.

    Multinomial logistic regression with an L2 penalty ``l2`` on the weights, fitted by full-batch L-BFGS (strong
    Wolfe line search) until the gradient's largest entry is below ``tolerance`` or ``max_iter`` iterations: a convex
    problem solved to its optimum, so no learning rate or step count favours one encoder over another.
    """

    @dataclass
    class Config(_Probe.Config):
        l2: float = 1.0e-3  # on the weights (not the biases), per sample: loss = mean CE + l2 / 2 * ||W||^2
        max_iter: int = 500
        tolerance: float = 1.0e-5

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.l2 < 0 or self.max_iter < 1 or self.tolerance <= 0:
                raise ValueError("l2 must be >= 0, max_iter >= 1 and tolerance > 0")

    def fit(
        self, z: torch.Tensor, y: torch.Tensor, counts: np.ndarray, device: torch.device, rng: np.random.Generator
    ) -> tuple[Any, int, dict[str, Any]]:
        cfg = self.cfg
        w, b, report = logistic_regression(z.to(device), y.to(device), len(counts), cfg.l2, cfg.max_iter, cfg.tolerance)
        prior = prior_weights(counts, y).to(device)
        bias = b + torch.log(prior).clamp_min(-1e4)  # a class never sampled: never predicted

        def scores(f: torch.Tensor) -> torch.Tensor:
            return torch.einsum("kc,c...->k...", w, f) + bias.view(-1, *([1] * (f.dim() - 1)))

        return scores, w.numel() + b.numel(), report | {"samples": len(y)}


def logistic_regression(
    z: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int, tolerance: float
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Weights [K, C] and biases [K] minimising mean cross-entropy + l2 / 2 * ||W||^2, by L-BFGS from zero, and
    how the fit ended (iterations, final objective, largest gradient entry: the run's probe.json keeps it)."""
    w = torch.zeros(n_classes, z.shape[1], device=z.device, requires_grad=True)
    b = torch.zeros(n_classes, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        final = float(closure().detach())
    assert w.grad is not None and b.grad is not None
    grad = max(float(w.grad.abs().max()), float(b.grad.abs().max()))
    iters = int(opt.state[opt._params[0]].get("n_iter", 0))
    return w.detach(), b.detach(), {"iterations": iters, "objective": final, "max_abs_grad": grad}


@register_protocol("knn_seg", "segmentation")
class KnnSeg(_Probe):
    """Each test voxel of the grid takes the vote of its ``k`` most similar labelled voxels in a memory bank of
    sampled train voxels (cosine similarity of standardised features; vote exp(similarity / ``temperature``), as DINO's
    kNN), re-weighted from the bank's class mix to the train subjects' one. No training."""

    @dataclass
    class Config(_Probe.Config):
        k: int = 20
        temperature: float = 0.07
        bank_size: int = 20000  # at most; every class present in the train subjects gets an equal share
        query_chunk: int = 4096  # grid voxels compared with the bank at once (memory: chunk x bank floats)

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.k < 1 or self.bank_size < 1 or self.query_chunk < 1 or self.temperature <= 0:
                raise ValueError("k, bank_size and query_chunk must be positive and temperature > 0")

    def fit(
        self, z: torch.Tensor, y: torch.Tensor, counts: np.ndarray, device: torch.device, rng: np.random.Generator
    ) -> tuple[Any, int, dict[str, Any]]:
        n_classes = len(counts)
        bank, classes = _bank(z, y, self.cfg.bank_size, n_classes, rng)
        weight = prior_weights(counts, classes).to(device)  # from the bank's class mix, not the sample's
        bank = F.normalize(bank.to(device), dim=1)
        classes = classes.to(device)
        k, temp, chunk = min(self.cfg.k, len(bank)), self.cfg.temperature, self.cfg.query_chunk

        def scores(f: torch.Tensor) -> torch.Tensor:
            grid = f.shape[1:]
            q = F.normalize(f.reshape(f.shape[0], -1).T, dim=1)
            out = torch.empty(len(q), n_classes, device=f.device)
            for i in range(0, len(q), chunk):
                sim, idx = (q[i : i + chunk] @ bank.T).topk(k, dim=1)
                votes = torch.zeros(len(sim), n_classes, device=f.device)
                votes.scatter_add_(1, classes[idx], torch.exp(sim / temp))
                out[i : i + chunk] = votes * weight
            return out.T.reshape(n_classes, *grid)

        return scores, 0, {"samples": len(y), "bank": len(bank)}


def _bank(
    z: torch.Tensor, y: torch.Tensor, size: int, n_classes: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``size`` of the sampled voxels, an equal share per class present (a class with fewer gives all of
    them), drawn uniformly from the sample of every train subject."""
    present = [k for k in range(n_classes) if (y == k).any()]
    share = max(1, size // max(1, len(present)))
    keep = []
    for k in present:
        pool = np.flatnonzero(y.numpy() == k)
        keep.append(np.sort(rng.choice(pool, size=min(share, len(pool)), replace=False)))
    idx = torch.from_numpy(np.concatenate(keep))
    return z[idx], y[idx]
