"""Classification transfer for 2D and 3D encoders: ``linear_probe``, ``finetune``, ``knn`` and ``few_shot``.

Every image of a split is preprocessed once (the suite's window, then resized to the budget's ROI) and kept in
``ctx.cache``; the frozen-encoder protocols (linear probe, kNN, few-shot) compute pooled encoder features once per
(export, split) and share them across cells. Settings are the same for every method of a suite.

Metrics are set-level: per-class one-vs-rest AUROC and their mean (rows with class -1), plus accuracy for
single-label tasks. A row's ``case`` is ``"__set__"`` (the whole test split); beside them a set-level cell stores
each test image's predicted probability and label per scored class (``pred_score`` / ``pred_target`` rows, case =
image id), so the leaderboard bootstraps test images for its intervals and paired tests. ``few_shot`` stores one
"case" per draw of its labelled subset, so the leaderboard's intervals include the draw-to-draw spread.

Input channels: an image with more channels than the encoder takes (RGB MedMNIST into a 1-channel encoder) is
averaged to grey, as a 1-channel encoder's users would convert it; fewer channels than it takes is an error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import distributed, metrics
from bench.backbones import Backbone
from bench.data import subsample
from bench.engine import TrainConfig, fit
from bench.export import load_export, load_extras
from bench.protocols.base import Protocol, ProtocolResult, TransferContext, register_protocol
from bench.registry import HEADS
from bench.results import PRED_SCORE, PRED_TARGET
from bench.types import StepInfo, StepOutput

SET = "__set__"
OVERALL = -1


# ------------------------------------------------------------------------------------------------------ data


@dataclass
class Split:
    ids: list[str]
    images: torch.Tensor  # [N, C, *roi] float32 in [0, 1]
    targets: np.ndarray  # multilabel: [N, K] {0,1}; otherwise [N] class column


class LabelSpace:
    """Columns of the score matrix: the dataset's class indices in sorted order."""

    def __init__(self, task: str, labels: dict[int, str]) -> None:
        if task not in ("multilabel", "multiclass", "binary"):
            raise ValueError(f"classification protocols need a multilabel, multiclass or binary dataset, got {task!r}")
        if len(labels) < 2 and task != "multilabel":
            raise ValueError(f"a {task} dataset needs at least two classes, got {labels}")
        self.task = task
        self.classes = sorted(labels)
        self.column = {c: i for i, c in enumerate(self.classes)}

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def n_out(self) -> int:
        return len(self.classes)

    def target(self, classes: tuple[int, ...] | None, record_id: str) -> np.ndarray | int:
        if classes is None:
            raise ValueError(f"record {record_id}: no class labels")
        unknown = [c for c in classes if c not in self.column]
        if unknown:
            raise ValueError(f"record {record_id}: class(es) {unknown} not in the label map {self.classes}")
        if self.multilabel:
            y = np.zeros(self.n_out, np.float32)
            y[[self.column[c] for c in classes]] = 1.0
            return y
        if len(classes) != 1:
            raise ValueError(f"record {record_id}: a {self.task} record needs exactly one class, got {classes}")
        return self.column[classes[0]]

    def onehot(self, targets: np.ndarray) -> np.ndarray:
        """Targets as a float32 [N, columns] 0/1 matrix (multi-label targets already are one)."""
        if self.multilabel:
            return targets.astype(np.float32)
        return np.eye(self.n_out, dtype=np.float32)[targets]

    def scored_columns(self) -> list[int]:
        """Columns that get an AUROC row: every label, or only the positive class of a binary task."""
        return [1] if self.task == "binary" else list(range(self.n_out))


def _resize(image: np.ndarray, roi: tuple[int, ...]) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if tuple(x.shape[2:]) != tuple(roi):
        mode = "bilinear" if len(roi) == 2 else "trilinear"
        x = F.interpolate(x, size=tuple(roi), mode=mode, align_corners=False, antialias=len(roi) == 2)
    return x[0]


def _match_channels(x: torch.Tensor, channels: int, record_id: str) -> torch.Tensor:
    if x.shape[0] == channels:
        return x
    if channels == 1:
        return x.mean(0, keepdim=True)
    raise ValueError(f"record {record_id}: image has {x.shape[0]} channel(s), the encoder takes {channels}")


def load_split(ctx: TransferContext, split: str, channels: int, ids: list[str] | None = None) -> Split:
    """Preprocessed, resized images and targets of a split (cached across the cells of a run)."""
    space = LabelSpace(ctx.dataset.info.task, ctx.dataset.info.labels)
    key = f"cls/{ctx.dataset.registry_name}/{split}/{ctx.preprocess.key()}/{'x'.join(map(str, ctx.roi))}/c{channels}"
    if key not in ctx.cache:
        records = ctx.dataset.records(split)
        imgs, ys, rid = [], [], []
        for rec in records:
            sample = ctx.preprocessed(rec)
            imgs.append(_match_channels(_resize(sample["image"], ctx.roi), channels, rec.id))
            ys.append(space.target(rec.classes, rec.id))
            rid.append(rec.id)
        if not imgs:
            raise ValueError(f"dataset {ctx.dataset.registry_name}: split {split!r} is empty")
        ctx.cache[key] = Split(rid, torch.stack(imgs), np.stack(ys) if space.multilabel else np.asarray(ys))
    full: Split = ctx.cache[key]
    if ids is None:
        return full
    keep = set(ids)
    idx = [i for i, r in enumerate(full.ids) if r in keep]
    return Split([full.ids[i] for i in idx], full.images[idx], full.targets[idx])


def inference_batch(ctx: TransferContext) -> int:
    """Images per no-grad forward: twice the training batch (32 for 2D at quick, 4 for 3D). A fixed 32 ran
    32 3D volumes (64 with SACA's mirror) through the Swin encoder at once: over 24 GB of attention weights."""
    return max(1, 2 * ctx.batch_size)


@torch.no_grad()
def encode(backbone: Backbone, images: torch.Tensor, device: torch.device, batch: int = 32) -> torch.Tensor:
    """Pooled features of ``images``, in order; under torchrun each process encodes its shard and all gather."""
    backbone.eval().to(device)
    mine = images[distributed.shard(len(images))]
    out = []
    for i in range(0, len(mine), batch):
        x = mine[i : i + batch].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(backbone.pooled(x).float().cpu())
    parts = distributed.gather_objects(torch.cat(out) if out else None)  # None: more processes than images
    return torch.cat([p for p in parts if p is not None])


def cached_features(ctx: TransferContext, backbone: Backbone, split: str) -> tuple[list[str], torch.Tensor, np.ndarray]:
    """Pooled features of a whole split, computed once per encoder export."""
    data = load_split(ctx, split, backbone.in_channels)
    key = f"feat/{ctx.export_path}/{ctx.dataset.registry_name}/{split}/{ctx.preprocess.key()}/{ctx.roi}"
    if key not in ctx.cache:
        ctx.cache[key] = encode(backbone, data.images, ctx.device, inference_batch(ctx))
    return data.ids, ctx.cache[key], data.targets


# --------------------------------------------------------------------------------------------------- scoring


def probabilities(logits: torch.Tensor, space: LabelSpace) -> np.ndarray:
    logits = logits.float()
    return (torch.sigmoid(logits) if space.multilabel else torch.softmax(logits, -1)).numpy()


def mean_auroc(scores: np.ndarray, targets: np.ndarray, space: LabelSpace) -> float:
    per_class, mean = _aurocs(scores, targets, space)
    return mean


def _aurocs(scores: np.ndarray, targets: np.ndarray, space: LabelSpace) -> tuple[dict[int, float], float]:
    onehot = space.onehot(targets)
    cols = space.scored_columns()
    per = {space.classes[c]: metrics.auroc(scores[:, c], onehot[:, c]) for c in cols}
    defined = [v for v in per.values() if not np.isnan(v)]
    return per, (float(np.mean(defined)) if defined else float("nan"))


def result_rows(
    scores: np.ndarray, targets: np.ndarray, space: LabelSpace, case: str = SET, ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """Per-class AUROC rows, the mean AUROC (class -1) and, for single-label tasks, accuracy (class -1); with
    ``ids`` (the test images, in row order) also each image's probability and label per scored class."""
    per, mean = _aurocs(scores, targets, space)
    rows = [{"case": case, "class": c, "metric": "auroc", "value": v} for c, v in per.items() if not np.isnan(v)]
    rows.append({"case": case, "class": OVERALL, "metric": "auroc", "value": mean})
    if not space.multilabel:
        rows.append(
            {"case": case, "class": OVERALL, "metric": "accuracy", "value": metrics.accuracy(scores.argmax(1), targets)}
        )
    if ids is not None:
        onehot = space.onehot(targets)
        for c in space.scored_columns():
            rows += prediction_rows(ids, scores[:, c], onehot[:, c], space.classes[c])
    return rows


def prediction_rows(ids: list[str], score: np.ndarray, target: np.ndarray, cls: int) -> list[dict[str, Any]]:
    """Each test image's score and 0/1 label for one class, the rows a set-level leaderboard resamples."""
    if len(ids) != len(score) or len(set(ids)) != len(ids):
        raise ValueError(f"{len(ids)} image ids (unique: {len(set(ids))}) for {len(score)} score rows")
    return [{"case": i, "class": cls, "metric": PRED_SCORE, "value": float(v)} for i, v in zip(ids, score)] + [
        {"case": i, "class": cls, "metric": PRED_TARGET, "value": float(v)} for i, v in zip(ids, target)
    ]


def summary_of(rows: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in ("auroc", "accuracy"):
        vals = [r["value"] for r in rows if r["metric"] == m and r["class"] == OVERALL]
        if vals:
            out[m] = float(np.mean(vals))
    return out


def loss_fn(space: LabelSpace):
    if space.multilabel:
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits.float(), y.float())
    return lambda logits, y: F.cross_entropy(logits.float(), y.long())


# ------------------------------------------------------------------------------------------------- protocols


class _Sampler(torch.utils.data.IterableDataset):
    """Endless shuffled mini-batches of (x, y) tensors; the engine draws ``steps`` of them.

    Under torchrun every process draws the same global batches (same seed, same augmentation draws) and keeps its
    shard of each (:func:`bench.distributed.shard`), so the processes together train on the one process's batches.
    """

    def __init__(self, x: torch.Tensor, y: np.ndarray, batch: int, seed: int, augment: bool = False) -> None:
        self.x, self.y, self.batch, self.seed, self.augment = x, torch.from_numpy(np.asarray(y)), batch, seed, augment
        distributed.check_shards(min(batch, len(x)), "training image(s)")

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        n = len(self.x)
        while True:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, self.batch):
                idx = perm[i : i + self.batch]
                if len(idx) < min(self.batch, n):
                    break
                x = self.x[idx]
                if self.augment:
                    x = _augment(x, g)
                part = distributed.shard(len(idx))
                yield {"x": x[part], "y": self.y[idx][part]}


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild, label-preserving: intensity scale/shift and a small translation (no flips: laterality is a label
    in the brain suite and anatomy is not mirror-symmetric in chest X-rays)."""
    b = x.shape[0]
    shape = (b,) + (1,) * (x.ndim - 1)
    x = x * (0.9 + 0.2 * torch.rand(shape, generator=g)) + (0.1 * torch.rand(shape, generator=g) - 0.05)
    spatial = x.shape[2:]
    shifts = [int(torch.randint(-max(1, s // 16), max(1, s // 16) + 1, (1,), generator=g)) for s in spatial]
    return torch.roll(x, shifts=shifts, dims=tuple(range(2, x.ndim)))


def _train_cfg(
    steps: int, lr: float, weight_decay: float, eval_every: int, warmup_fraction: float, optimizer: str = "adamw"
) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=int(warmup_fraction * steps),
        eval_every=eval_every,
        checkpoint_every=max(1, eval_every or steps // 4),
        log_every=max(1, min(10, steps // 10)),
    )


class _FeatureHead(nn.Module):
    """A linear head on standardised features (MAE's linear probe: BatchNorm without affine, then linear)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_out: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), n_out)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.linear((f - self.mean) / self.std)


def train_linear_head(
    ctx: TransferContext,
    feats: torch.Tensor,
    y: np.ndarray,
    space: LabelSpace,
    cfg: Any,
    steps: int,
    run_dir,
    val: tuple[torch.Tensor, np.ndarray] | None,
    seed: int,
    desc: str,
) -> _FeatureHead:
    mean, std = feats.mean(0), feats.std(0, unbiased=False).clamp_min(1e-6)
    head = _FeatureHead(mean, std, space.n_out)
    crit = loss_fn(space)

    def step_fn(batch: dict[str, torch.Tensor], info: StepInfo) -> StepOutput:
        return StepOutput(crit(head(batch["x"]), batch["y"]))

    def val_score() -> float:
        assert val is not None  # passed to fit only with a validation split
        head.eval()
        with torch.no_grad():
            s = probabilities(head(val[0].to(ctx.device)).cpu(), space)
        head.train()
        score = mean_auroc(s, val[1], space)
        return -1.0 if np.isnan(score) else score

    eval_every = max(1, steps // 5) if val is not None else 0
    loader = torch.utils.data.DataLoader(_Sampler(feats, y, min(cfg.batch_size, len(feats)), seed), batch_size=None)
    fit(
        head,
        step_fn,
        [{"params": list(head.linear.parameters())}],
        loader,
        _train_cfg(steps, cfg.lr, cfg.weight_decay, eval_every, 0.0),
        run_dir,
        device=ctx.device,
        eval_fn=val_score if val is not None else None,
        desc=desc,
        log_prefix="transfer/head",
        progress=ctx.progress,
    )
    return head.eval()


@register_protocol("linear_probe", "classification")
class LinearProbe(Protocol):
    """Frozen encoder, linear head on its pooled features (computed once); model selection on val mean AUROC."""

    @dataclass
    class Config:
        steps: int = 500
        batch_size: int = 256
        lr: float = 1e-2  # Adam on standardised features: 1e-3 leaves toy-separable data unfitted
        weight_decay: float = 0.0

    def run(self, ctx: TransferContext) -> ProtocolResult:
        space = LabelSpace(ctx.dataset.info.task, ctx.dataset.info.labels)
        backbone, _ = load_export(ctx.export_path)
        ids, feats, y = cached_features(ctx, backbone, "train")
        keep = set(subsample(ids, ctx.cell.label_fraction, ctx.cell.draw))
        idx = [i for i, r in enumerate(ids) if r in keep]
        _, vf, vy = cached_features(ctx, backbone, "val")
        test_ids, tf, ty = cached_features(ctx, backbone, "test")
        t0 = time.time()
        head = train_linear_head(
            ctx,
            feats[idx],
            y[idx],
            space,
            self.cfg,
            self.cfg.steps,
            ctx.run_dir,
            (vf, vy),
            ctx.cell.seed,
            f"linear_probe {ctx.cell.key}",
        )
        with torch.no_grad():
            scores = probabilities(head(tf.to(ctx.device)).cpu(), space)
        rows = result_rows(scores, ty, space, ids=test_ids)
        return ProtocolResult(
            rows,
            summary_of(rows),
            train_wall_s=time.time() - t0,
            params=sum(p.numel() for p in backbone.parameters())
            + head.linear.weight.numel()
            + head.linear.bias.numel(),
            trainable_params=head.linear.weight.numel() + head.linear.bias.numel(),
        )


@HEADS.register("linear")
class _Classifier(nn.Module):
    """A linear layer on the encoder's pooled features (the default head)."""

    def __init__(self, backbone: Backbone, n_out: int, extras: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.pooled(x))


@register_protocol("finetune", "classification")
class Finetune(Protocol):
    """Every weight trained (encoder and a linear head), mild augmentation, model selection on val mean AUROC."""

    @dataclass
    class Config:
        lr: float = 1e-4
        head_lr_scale: float = 10.0  # the new head starts from scratch
        weight_decay: float = 0.05
        warmup_fraction: float = 0.1
        eval_every: int = 0  # 0: five validations over training
        augment: bool = True
        head: str = "linear"  # a HEADS entry, e.g. "saca" (SA-Swin's head, fixed by the brain suite)

    def run(self, ctx: TransferContext) -> ProtocolResult:
        cfg = self.cfg
        space = LabelSpace(ctx.dataset.info.task, ctx.dataset.info.labels)
        make_head = HEADS.get(cfg.head)
        backbone, _ = load_export(ctx.export_path)
        train_ids = subsample([r.id for r in ctx.dataset.records("train")], ctx.cell.label_fraction, ctx.cell.draw)
        train = load_split(ctx, "train", backbone.in_channels, train_ids)
        val = load_split(ctx, "val", backbone.in_channels)
        test = load_split(ctx, "test", backbone.in_channels)
        # extras: what the export carries beyond the encoder (SACA's pre-trained block); a head uses them or not
        model = make_head(backbone, space.n_out, load_extras(ctx.export_path))
        crit = loss_fn(space)

        def step_fn(batch: dict[str, torch.Tensor], info: StepInfo) -> StepOutput:
            return StepOutput(crit(model(batch["x"]), batch["y"]))

        @torch.no_grad()
        def predict(images: torch.Tensor) -> np.ndarray:
            was = model.training
            model.eval()
            out = []
            step = inference_batch(ctx)
            for i in range(0, len(images), step):
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.device.type == "cuda"):
                    out.append(model(images[i : i + step].to(ctx.device)).float().cpu())
            model.train(was)
            return probabilities(torch.cat(out), space)

        def val_score() -> float:
            s = mean_auroc(predict(val.images), val.targets, space)
            return -1.0 if np.isnan(s) else s

        eval_every = ctx.eval_every(cfg.eval_every, 5)
        loader = torch.utils.data.DataLoader(
            _Sampler(train.images, train.targets, min(ctx.batch_size, len(train.ids)), ctx.cell.seed, cfg.augment),
            batch_size=None,
        )
        encoder_ids = {id(p) for p in backbone.parameters()}
        groups = [
            {"params": list(backbone.parameters())},
            {"params": [p for p in model.parameters() if id(p) not in encoder_ids], "lr": cfg.lr * cfg.head_lr_scale},
        ]
        t0 = time.time()
        fit(
            model,
            step_fn,
            groups,
            loader,
            _train_cfg(ctx.steps, cfg.lr, cfg.weight_decay, eval_every, cfg.warmup_fraction),
            ctx.run_dir,
            device=ctx.device,
            eval_fn=val_score,
            desc=f"finetune {ctx.cell.key}",
            log_prefix="transfer/finetune",
            progress=ctx.progress,
        )
        wall = time.time() - t0
        # under torchrun the main process tests and stores; the others return no rows
        rows = result_rows(predict(test.images), test.targets, space, ids=test.ids) if distributed.is_main() else []
        n = sum(p.numel() for p in model.parameters())
        return ProtocolResult(rows, summary_of(rows), train_wall_s=wall, params=n, trainable_params=n)


def knn_scores(
    train_f: torch.Tensor, train_y: np.ndarray, test_f: torch.Tensor, space: LabelSpace, k: int, temperature: float
) -> np.ndarray:
    """Cosine kNN with similarity-weighted votes (weights exp(sim / T), as DINO's kNN evaluation).

    Scores are the weighted share of the neighbours' labels per class, in [0, 1].
    """
    a = F.normalize(train_f.float(), dim=1)
    b = F.normalize(test_f.float(), dim=1)
    sim = b @ a.T
    k = min(k, len(a))
    top, idx = sim.topk(k, dim=1)
    w = torch.exp(top / temperature)
    onehot = torch.from_numpy(space.onehot(train_y))
    votes = (w[..., None] * onehot[idx]).sum(1)
    return (votes / w.sum(1, keepdim=True)).numpy()


@register_protocol("knn", "classification")
class KNN(Protocol):
    """Cosine k-nearest neighbours (k = 20) on frozen pooled features; no training.

    Deterministic: the encoder runs in eval mode, the labelled subset depends on (fraction, draw) only and the vote
    is closed-form, so the transfer seed changes nothing (one run per encoder, whatever seeds are asked for).
    """

    deterministic: ClassVar[bool] = True

    @dataclass
    class Config:
        k: int = 20
        temperature: float = 0.07

    def run(self, ctx: TransferContext) -> ProtocolResult:
        space = LabelSpace(ctx.dataset.info.task, ctx.dataset.info.labels)
        backbone, _ = load_export(ctx.export_path)
        ids, feats, y = cached_features(ctx, backbone, "train")
        keep = set(subsample(ids, ctx.cell.label_fraction, ctx.cell.draw))
        idx = [i for i, r in enumerate(ids) if r in keep]
        test_ids, tf, ty = cached_features(ctx, backbone, "test")
        scores = knn_scores(feats[idx], y[idx], tf, space, self.cfg.k, self.cfg.temperature)
        rows = result_rows(scores, ty, space, ids=test_ids)
        return ProtocolResult(rows, summary_of(rows), params=sum(p.numel() for p in backbone.parameters()))


def few_shot_indices(targets: np.ndarray, space: LabelSpace, shots: int, seed: int) -> np.ndarray:
    """``shots`` training examples per class (multi-label: per label, positives), drawn without replacement.

    A class with fewer examples contributes all of them; an example chosen for two labels counts once.
    """
    rng = np.random.default_rng([seed, shots, 104729])
    chosen: list[int] = []
    for col in range(space.n_out):
        pool = np.flatnonzero(targets[:, col] > 0 if space.multilabel else targets == col)
        pool = np.setdiff1d(pool, chosen)
        if len(pool):
            chosen += rng.choice(pool, size=min(shots, len(pool)), replace=False).tolist()
    if space.multilabel:  # a few "no finding" examples, or the head never sees a negative-only image
        pool = np.setdiff1d(np.flatnonzero(targets.sum(1) == 0), chosen)
        if len(pool):
            chosen += rng.choice(pool, size=min(shots, len(pool)), replace=False).tolist()
    return np.sort(np.asarray(chosen, dtype=int))


@register_protocol("few_shot", "classification")
class FewShot(Protocol):
    """``shots`` labelled examples per class, ``draws`` independent draws, a linear head on frozen features.

    Each draw is stored as one "case" (``draw<d>``), so the spread over draws enters the leaderboard's CIs.
    No validation split is used: with k examples per class there is none to spare, as in the few-shot literature.
    """

    @dataclass
    class Config:
        shots: int = 5
        draws: int = 5
        steps: int = 200
        batch_size: int = 256
        lr: float = 1e-2  # Adam on standardised features: 1e-3 leaves toy-separable data unfitted
        weight_decay: float = 0.0

    uses_label_fraction: ClassVar[bool] = False

    def run(self, ctx: TransferContext) -> ProtocolResult:
        cfg = self.cfg
        space = LabelSpace(ctx.dataset.info.task, ctx.dataset.info.labels)
        backbone, _ = load_export(ctx.export_path)
        _, feats, y = cached_features(ctx, backbone, "train")
        _, tf, ty = cached_features(ctx, backbone, "test")
        rows: list[dict[str, Any]] = []
        t0 = time.time()
        for d in range(cfg.draws):
            idx = few_shot_indices(y, space, cfg.shots, seed=1000 * ctx.cell.seed + d)
            head = train_linear_head(
                ctx,
                feats[idx],
                y[idx],
                space,
                cfg,
                cfg.steps,
                ctx.run_dir / f"draw{d}",
                None,
                ctx.cell.seed,
                f"few_shot {ctx.cell.key} draw {d}",
            )
            with torch.no_grad():
                scores = probabilities(head(tf.to(ctx.device)).cpu(), space)
            rows += result_rows(scores, ty, space, case=f"draw{d}")
        return ProtocolResult(
            rows, summary_of(rows), train_wall_s=time.time() - t0, params=sum(p.numel() for p in backbone.parameters())
        )
