"""``swinunetr_ssl``: Swin UNETR self-supervised pre-training (Tang et al., CVPR 2022).

Recipe (shared/METHODS.md §3; [V] official code MONAI research-contributions ``SwinUNETR/Pretrain``, [P] paper,
[I] harness choice). The shared ops are in ``methods/_swin_ssl.py``.

- Data [V]: random ROI crops of the preprocessed volume (``views``; the official loader windows HU [-1000, 1000] to
  [0, 1], pads to the ROI, crops the foreground and draws ``sw_batch_size`` = 2 random crops per volume).
  ``crops_per_volume`` (default 1 [I]; 2 at budget=paper) sets how many crops one loader sample holds; the
  contrastive batch is N = batch_size * crops_per_volume crops.
- Per step, on the device [V]: two views per crop with independent rotations, x1 = rot(x), x2 = rot'(x) (k*90
  degrees per sample, 4 classes), then v1 = cutout(x1), v2 = cutout(x2) (noise boxes, then an in-batch paste).
- Network [V]: the backbone's Swin encoder, hs[4] flattened to tokens; rotation Linear(D, 4) on token 0, contrastive
  Linear(D, 512) on token 1, the "vae" inpainting decoder on the hs[4] map (D = feature_dim = 16 * feature_size:
  768 for swin_unetr_base as in the paper, 192 for swin_unetr_tiny).
- Losses [V]: CE(rotation logits of v1 and v2, k) + NT-Xent(tau 0.5) over the 2N projections + L1 over the *whole*
  volume between the reconstructions of v1, v2 and the rotated, un-cut-out x1, x2; weights 1 / 1 / 1.
- Optimiser [V] (conf/method/swinunetr_ssl.yaml): AdamW lr 4e-4 (README multi-GPU run: 6e-6), weight decay 0.1,
  500 warmup steps of 100k (warmup_fraction 0.005), cosine to 0; gradient clipping off (the code's ``--grad_clip``
  is optional and only used without AMP).

Choices where paper and code differ (each a flag, default = the code):

- ``rotation_axis="x"``: rot90 in the plane of the sample's tensor dims (2, 3), i.e. about the first spatial axis
  (X, left-right under RAS+), as ``rot_rand`` does. The paper says "along the z-axis": ``rotation_axis="z"``
  rotates in the (X, Y) plane instead.

Departures from the official loader, each a flag (default = the harness's, the official value at budget=paper,
conf/method_budget/swinunetr_ssl_paper.yaml):

- ``corpus_window`` (default None: the suite's window, e.g. HU [-175, 250], which serves the transfer task): the
  pretraining corpus's intensity window, ``[-1000, 1000]`` as the official ``ScaleIntensityRanged`` (to [0, 1],
  clipped). An HU window: refused unless the corpus's modality is CT (``corpus_preprocessing``, which the runner
  calls). It changes the corpus's preprocessing and thus the pretraining cache key; transfer keeps the suite's
  window.
- ``foreground_crop`` (default False): before the random crops, the official ``CropForegroundd`` (``k_divisible`` =
  the ROI; ``foreground_crop``): the bounding box of the voxels > 0 after the window, i.e. above its lower bound
  (HU -1000 with the official window), grown about its centre to a multiple of the ROI and zero-padded. A volume
  with no such voxel is kept whole (MONAI would crop it to nothing). Per sample in the loader workers, as the
  official loader does; it reads only the windowed volume, so it also works on a non-CT corpus.
- No flag: the corpus keeps the suite's spacing (e.g. 1.5 x 1.5 x 2 mm), where the official loader does not
  resample (its ``Spacingd`` arguments are unused): the ROI then covers the transfer task's physical extent, and
  native-resolution CT would multiply the corpus the runner holds in memory several times over.

Harness notes [I]:

- The two views go through the encoder as one batch of 2N (the code runs two forward passes; the network has no
  batch-coupled layer - InstanceNorm only - so the outputs are the same).
- Export: ``export_encoder`` returns the whole backbone. The official SSL model has no UNETR decoder, so the
  exported decoder is untrained (as the released ``model_swinvit.pt`` holds only the encoder). The SSL heads are
  not exported.
- Losses are computed in fp32; the engine's bf16 autocast on CUDA still applies to the networks (the code: fp16 AMP).
- A loss weight of 0 skips its head entirely (the code's ``--use_*`` flags of SA-Swin's copy).

- [0]: Tang et al., Self-Supervised Pre-Training of Swin Transformers for 3D Medical Image Analysis, CVPR 2022,
  arXiv 2111.14791
- [1]: Hatamizadeh et al., Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors in MRI Images,
  BrainLes 2021, arXiv 2201.01266
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from bench.backbones import SwinUNETRBackbone
from bench.data import pad_to, random_crop
from bench.registry import METHODS
from methods._swin_ssl import (
    CutoutSpec,
    SSLHeads,
    aug_rand,
    check_roi,
    check_rotation,
    flatten_crops,
    nt_xent,
    rot_rand,
    step_rng,
    tokens,
)
from methods.base import PretrainMethod, StepInfo, StepOutput


def foreground_crop(image: np.ndarray, k: Sequence[int]) -> np.ndarray:
    """MONAI's ``CropForeground(k_divisible=k)`` of [C, *S] (select ``x > 0`` over all channels, margin 0): the box
    of the positive voxels, grown about its centre (the extra floor-halved before it) to a multiple of ``k`` per
    axis, zero-padded where it leaves the volume. Without a positive voxel the volume is returned as it is.

    The official loader pads to the ROI first (``SpatialPadd``); that changes nothing here: the padding is background
    and the grown box is zero-padded where it leaves the volume alike."""
    fg = (image > 0).any(0)
    if not fg.any():
        return image
    box = []
    for ax in range(fg.ndim):
        hit = np.flatnonzero(fg.any(axis=tuple(a for a in range(fg.ndim) if a != ax)))
        lo, size = int(hit[0]), int(hit[-1]) + 1 - int(hit[0])
        grown = -(-size // k[ax]) * k[ax]
        lo -= (grown - size) // 2
        box.append((lo, lo + grown))
    inside = image[(slice(None),) + tuple(slice(max(a, 0), min(b, s)) for (a, b), s in zip(box, fg.shape))]
    pads = [(0, 0)] + [(max(-a, 0), max(b - s, 0)) for (a, b), s in zip(box, fg.shape)]
    return np.pad(inside, pads) if any(p != (0, 0) for p in pads) else inside


def check_window(window: Sequence[float] | None) -> tuple[float, float] | None:
    if window is None:
        return None
    if len(window) != 2 or not float(window[0]) < float(window[1]):
        raise ValueError(f"swinunetr_ssl: corpus_window must be [a_min, a_max] with a_min < a_max; got {window!r}")
    return float(window[0]), float(window[1])


def random_crops(image: np.ndarray, roi: tuple[int, ...], rng: np.random.Generator, k: int) -> torch.Tensor:
    """``k`` random ROI crops of [C, *S] (padded symmetrically first): [C, *roi] for k = 1, else [k, C, *roi]."""
    image = pad_to(image, roi)
    crops = [random_crop([image], roi, rng)[0] for _ in range(k)]
    out = torch.from_numpy(np.ascontiguousarray(np.stack(crops), dtype=np.float32))
    return out[0] if k == 1 else out


@METHODS.register("swinunetr_ssl", tags=("3d",))
class SwinUNETRSSL(PretrainMethod):
    @dataclass
    class Config:
        rotation_axis: str = "x"  # code: about the first spatial axis; "z": the paper's wording
        tau: float = 0.5  # NT-Xent temperature
        proj_dim: int = 512  # contrastive head width
        max_drop: float = 0.3  # cutout: volume fraction u ~ U(0, max_drop) per pass
        max_block: float = 0.25  # cutout: box side < max_block * ROI side
        tolerance: float = 0.05  # cutout: box side >= tolerance * ROI side
        w_rot: float = 1.0
        w_con: float = 1.0
        w_rec: float = 1.0
        crops_per_volume: int = 1  # code: sw_batch_size = 2 crops per volume
        corpus_window: tuple[float, float] | None = None  # None: the suite's; code: HU [-1000, 1000] (CT only)
        foreground_crop: bool = False  # code: CropForegroundd (k_divisible = ROI) before the random crops

        def __post_init__(self) -> None:
            self.corpus_window = check_window(self.corpus_window)

    capabilities: ClassVar[frozenset[str]] = frozenset({"3d"})

    def __init__(self, backbone: SwinUNETRBackbone, cfg: Config | None = None) -> None:
        super().__init__(backbone, cfg)
        check_rotation(self.cfg.rotation_axis, (1, 1, 1))
        if self.cfg.crops_per_volume < 1:
            raise ValueError(f"swinunetr_ssl: crops_per_volume must be >= 1; got {self.cfg.crops_per_volume}")
        self.heads = SSLHeads(backbone.feature_dim, backbone.in_channels, self.cfg.proj_dim)

    @classmethod
    def corpus_preprocessing(cls, cfg: Config, suite: dict[str, Any], modality: str) -> dict[str, Any]:
        if cfg.corpus_window is None:
            return suite
        if modality != "CT":
            raise ValueError(
                f"corpus_window={list(cfg.corpus_window)} is an HU window, for a CT corpus; the pretraining corpus "
                f"is {modality}: method.config.corpus_window=null keeps the suite's window"
            )
        return dict(suite, a_min=cfg.corpus_window[0], a_max=cfg.corpus_window[1])

    def views(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        roi = tuple(sample["roi"])
        image = sample["image"]
        if self.cfg.foreground_crop:
            image = foreground_crop(image, roi)
        return {"image": random_crops(image, roi, rng, self.cfg.crops_per_volume)}

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> StepOutput:
        cfg = self.cfg
        x = flatten_crops(batch["image"])
        check_roi(x.shape[2:], "swinunetr_ssl")
        n = x.shape[0]
        rng = step_rng()
        spec = CutoutSpec(cfg.max_drop, cfg.max_block, cfg.tolerance)
        (x1,), k1 = rot_rand([x], rng, cfg.rotation_axis)
        (x2,), k2 = rot_rand([x], rng, cfg.rotation_axis)
        v1, _ = aug_rand(x1, rng, spec)
        v2, _ = aug_rand(x2, rng, spec)
        hs4 = self.backbone.encode(torch.cat([v1, v2]))[4]
        tok = tokens(hs4)
        zero = hs4.new_zeros((), dtype=torch.float32)
        loss_rot = loss_con = loss_rec = zero
        logs: dict[str, Any] = {}
        if cfg.w_rot:
            logits = self.heads.rotation(tok).float()
            target = torch.cat([k1, k2])
            loss_rot = F.cross_entropy(logits, target)
            logs["rot_acc"] = (logits.argmax(1) == target).float().mean().detach()
        if cfg.w_con:
            z = self.heads.contrastive(tok)
            loss_con = nt_xent(z[:n], z[n:], cfg.tau)
        if cfg.w_rec:
            rec = self.heads.reconstruct(tok, hs4.shape[2:]).float()
            loss_rec = F.l1_loss(rec, torch.cat([x1, x2]).float())
        loss = cfg.w_rot * loss_rot + cfg.w_con * loss_con + cfg.w_rec * loss_rec
        logs.update(loss_rot=loss_rot.detach(), loss_con=loss_con.detach(), loss_rec=loss_rec.detach())
        return StepOutput(loss, logs)
