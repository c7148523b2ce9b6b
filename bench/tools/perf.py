"""Throughput benchmark: the harness engine vs a plain reference loop, side by side.

    python -m bench.tools.perf                          # every 3D method + finetune/linear_probe, budget standard
    python -m bench.tools.perf --budget quick --steps 6 --methods simmim3d   # a small CPU run

For each pretraining method and each transfer protocol it measures, on the same model, ROI and
batch: steps/s, volumes/s, peak GPU memory, the fraction of step time spent waiting for data, and
model FLOPs utilisation (FLOPs of one step from torch.utils.flop_counter / step time / the device's
dense bf16 peak). The reference loop is written the way the official MONAI research scripts train:
fp32, a standard DataLoader whose workers read and preprocess the NIfTI files every step, no cache,
plain (unfused) AdamW. The harness path is bench.engine.fit with its defaults (bf16 autocast on
CUDA, fused AdamW, preprocessed volumes in memory, loader workers with pinned memory).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.backbones import build_backbone
from bench.data import PretrainDataset, Preprocess, SegTrainDataset, preprocess
from bench.engine import TrainConfig, fit, pick_device
from bench.plan import compose
from bench.registry import METHODS
from methods.base import StepInfo, StepOutput

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets (SXM parts).
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak
    return None


@dataclass
class Measure:
    label: str
    path: str
    step_s: float
    volumes_s: float
    data_wait: float
    peak_mem_gb: float | None
    mfu: float | None


def make_corpus(root: Path, n: int, shape: tuple[int, int, int]) -> list[tuple[Path, Path]]:
    """NIfTI volumes at a realistic size (the reference loop reads them every step)."""
    from datasets.synthetic.abdomen import AbdomenConfig, write_btcv_layout

    base = AbdomenConfig()
    fov = np.asarray(base.shape) * np.asarray(base.spacing)
    sx, sy, sz = (float(v) for v in fov / np.asarray(shape))
    cfg = AbdomenConfig(shape=shape, spacing=(sx, sy, sz))
    write_btcv_layout(root, [(f"img{i:04d}", 7000 + i) for i in range(1, n + 1)], cfg=cfg, progress=True)
    return [
        (root / "imagesTr" / f"img{i:04d}.nii.gz", root / "labelsTr" / f"label{i:04d}.nii.gz") for i in range(1, n + 1)
    ]


class ReferenceDataset(torch.utils.data.Dataset):
    """Reads and preprocesses the NIfTI every time (MONAI LoadImage + window), then the views."""

    def __init__(self, files, roi, views: Callable | None, samples: int, with_label: bool) -> None:
        from monai.transforms import (
            Compose,
            EnsureChannelFirstd,
            LoadImaged,
            Orientationd,
            RandCropByPosNegLabeld,
            ScaleIntensityRanged,
            SpatialPadd,
        )

        keys = ["image", "label"] if with_label else ["image"]
        t = [
            LoadImaged(keys),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS"),
            ScaleIntensityRanged("image", -175, 250, 0.0, 1.0, clip=True),
            SpatialPadd(keys, roi),
        ]
        if with_label:
            t.append(RandCropByPosNegLabeld(keys, "label", roi, pos=1, neg=1, num_samples=1))
        self.tf = Compose(t)
        self.files, self.roi, self.views, self.samples, self.with_label = files, roi, views, samples, with_label

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, lab = self.files[i % len(self.files)]
        d = self.tf({"image": str(img), "label": str(lab)} if self.with_label else {"image": str(img)})
        if self.with_label:
            d = d[0]
            return {
                "image": torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32),
                "label": torch.as_tensor(np.asarray(d["label"])).long(),
            }
        rng = np.random.default_rng([i, int(torch.randint(0, 2**31 - 1, (1,)))])
        assert self.views is not None  # given whenever with_label is False
        return self.views({"image": np.asarray(d["image"], np.float32), "roi": self.roi}, rng)


def count_flops(model: torch.nn.Module, step_fn, batch: dict[str, torch.Tensor]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        out = step_fn(batch, StepInfo(0, 1))
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def reference_loop(model, step_fn, params, loader, steps: int, warmup: int, device, lr: float) -> tuple[list, list]:
    """fp32, unfused AdamW, no autocast: the plain research-script loop."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, foreach=False)
    model.to(device).train()
    times, waits = [], []
    it = iter(loader)
    for s in range(steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        batch = {k: v.to(device) for k, v in batch.items()}
        wait = time.perf_counter() - t0
        out = step_fn(batch, StepInfo(s, steps))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        waits.append(wait)
    return times[warmup:], waits[warmup:]


def summarise(label: str, path: str, times, waits, batch: int, flops: float, device, peak_mem) -> Measure:
    step = float(np.mean(times))
    peak = device_peak(device)
    return Measure(
        label,
        path,
        step,
        batch / step,
        float(np.sum(waits) / np.sum(times)),
        peak_mem,
        flops / step / peak if peak else None,
    )


def run(args: argparse.Namespace) -> list[Measure]:
    budget = compose([f"budget={args.budget}"]).budget  # as run_bench.py composes it
    bb_name = args.backbone or budget.backbone.name
    roi = tuple(args.roi or budget.roi)
    batch = args.batch or budget.pretrain.batch_size
    workers = budget.num_workers if args.workers is None else args.workers
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="sslbench-perf-"))
    files = make_corpus(tmp, args.volumes, tuple(args.volume_shape))
    pp = Preprocess()
    from datasets.base import read_nifti, spacing_of

    cached = []
    for img, lab in files:
        image, aff = read_nifti(img)
        label, _ = read_nifti(lab)
        cached.append(preprocess({"image": image[None], "label": label, "spacing": spacing_of(aff)}, pp))
    results: list[Measure] = []
    steps = args.warmup + args.steps
    pin = device.type == "cuda"

    def mem() -> float | None:
        return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    def reset() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    for name in args.methods:
        cls = METHODS.get(name)
        if not cls.pretrains or "3d" not in cls.capabilities:
            continue
        for path in ("harness", "reference"):
            torch.manual_seed(0)
            method = cls(build_backbone(bb_name, use_checkpoint=args.checkpointing), cls.make_config({}))
            # a method that pretrains with labels gets the corpus's (make_corpus writes SynthAbdomen, BTCV labels)
            labels = [c["label"] for c in cached] if cls.needs_corpus_labels else None
            if labels is not None:
                from datasets.synthetic.abdomen import LABELS

                method.bind_labels(LABELS)
            method.to(device)
            reset()
            if path == "harness":
                loader = torch.utils.data.DataLoader(
                    PretrainDataset(
                        [c["image"] for c in cached], roi, method.views, samples=batch * steps, seed=0, labels=labels
                    ),
                    batch_size=batch,
                    num_workers=workers,
                    pin_memory=pin,
                    persistent_workers=workers > 0,
                )
                res = fit(
                    method,
                    method.training_step,
                    method.param_groups(0.05),
                    loader,
                    TrainConfig(steps=steps, lr=1e-4, checkpoint_every=10**9, log_every=10**9, compile=args.compile),
                    tmp / "runs" / name,
                    device=device,
                    ema_pairs=method.ema_pairs(),
                    ema_momentum=method.ema_momentum,
                    progress=False,
                    timing=True,
                )
                times, waits = res.step_times[args.warmup :], res.data_waits[args.warmup :]
            else:
                loader = torch.utils.data.DataLoader(
                    # with labels: MONAI's own crops (RandCropByPosNegLabeld), as Swin UNETR's supervised script
                    ReferenceDataset(files, roi, method.views, batch * steps, with_label=labels is not None),
                    batch_size=batch,
                    num_workers=workers,
                )
                times, waits = reference_loop(
                    method, method.training_step, method.parameters(), loader, steps, args.warmup, device, 1e-4
                )
            peak_mem = mem()
            b = next(
                iter(
                    torch.utils.data.DataLoader(
                        PretrainDataset(
                            [c["image"] for c in cached], roi, method.views, samples=batch, seed=1, labels=labels
                        ),
                        batch_size=batch,
                    )
                )
            )
            b = {k: v.to(device) for k, v in b.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and path == "harness"):
                flops = count_flops(method, method.training_step, b)
            results.append(summarise(f"pretrain {name}", path, times, waits, batch, flops, device, peak_mem))
            print(results[-1], flush=True)
            del method, loader

    for proto, freeze in (("finetune", False), ("linear_probe", True)):
        if proto not in args.protocols:
            continue
        from bench.protocols.segmentation import SegmentationModel
        from monai.losses import DiceCELoss

        for path in ("harness", "reference"):
            torch.manual_seed(0)
            model = SegmentationModel(build_backbone(bb_name, use_checkpoint=args.checkpointing), 14).to(device)
            if freeze:
                for p in model.backbone.encoder.parameters():  # type: ignore[union-attr]  # a Swin UNETR
                    p.requires_grad_(False)
            loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

            def step_fn(b, info, model=model, loss_fn=loss_fn):
                return StepOutput(loss_fn(model(b["image"]).float(), b["label"]))

            params = [p for p in model.parameters() if p.requires_grad]
            reset()
            if path == "harness":
                loader = torch.utils.data.DataLoader(
                    SegTrainDataset(cached, roi, samples=batch * steps),
                    batch_size=batch,
                    num_workers=workers,
                    pin_memory=pin,
                    persistent_workers=workers > 0,
                )
                res = fit(
                    model,
                    step_fn,
                    [{"params": params}],
                    loader,
                    TrainConfig(steps=steps, lr=1e-4, checkpoint_every=10**9, log_every=10**9, compile=args.compile),
                    tmp / "runs" / proto,
                    device=device,
                    progress=False,
                    timing=True,
                )
                times, waits = res.step_times[args.warmup :], res.data_waits[args.warmup :]
            else:
                loader = torch.utils.data.DataLoader(
                    ReferenceDataset(files, roi, None, batch * steps, True), batch_size=batch, num_workers=workers
                )
                times, waits = reference_loop(model, step_fn, params, loader, steps, args.warmup, device, 1e-4)
            peak_mem = mem()
            b = next(iter(torch.utils.data.DataLoader(SegTrainDataset(cached, roi, samples=batch), batch_size=batch)))
            b = {k: v.to(device) for k, v in b.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and path == "harness"):
                flops = count_flops(model, step_fn, b)
            results.append(summarise(f"transfer {proto}", path, times, waits, batch, flops, device, peak_mem))
            print(results[-1], flush=True)
            del model, loader
    return results


def to_markdown(results: list[Measure], args: argparse.Namespace, device: torch.device) -> str:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    lines = [
        f"### {dt.datetime.now(dt.UTC):%Y-%m-%d} — {name}",
        "",
        f"Command: `python -m bench.tools.perf {' '.join(args.argv)}`",
        "",
        f"Budget {args.budget}, backbone {args.backbone or 'budget default'}, ROI {args.roi or 'budget default'}, "
        f"batch {args.batch or 'budget default'}, {args.steps} measured steps after {args.warmup} warm-up steps, "
        f"gradient checkpointing {'on' if args.checkpointing else 'off'}, "
        f"torch.compile {'on' if args.compile else 'off'}.",
        "",
        "| workload | path | s/step | volumes/s | data wait | peak GPU mem (GB) | MFU | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref = {r.label: r for r in results if r.path == "reference"}
    for r in results:
        sp = ref[r.label].step_s / r.step_s if r.label in ref else math.nan
        lines.append(
            f"| {r.label} | {r.path} | {r.step_s:.3f} | {r.volumes_s:.2f} | {r.data_wait:.1%} | "
            f"{'n/a' if r.peak_mem_gb is None else f'{r.peak_mem_gb:.1f}'} | "
            f"{'n/a' if r.mfu is None else f'{r.mfu:.1%}'} | {sp:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    import methods  # noqa: F401  (registers methods)

    ap = argparse.ArgumentParser(
        prog="python -m bench.tools.perf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget", default="standard")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--roi", type=int, nargs=3, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--protocols", nargs="*", default=["finetune", "linear_probe"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--volume-shape", type=int, nargs=3, default=[192, 160, 144])
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the Swin encoder")
    ap.add_argument("--compile", action="store_true", help="torch.compile the harness step function")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="append the Markdown table to this file")
    args = ap.parse_args(argv)
    args.argv = argv
    if args.methods is None:
        args.methods = [m for m in METHODS.names(tag="3d") if METHODS.get(m).pretrains]
    res = run(args)
    md = to_markdown(res, args, pick_device(args.device))
    print(md)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + md)


if __name__ == "__main__":
    main()
