"""Shared parts of ``swinunetr_ssl`` and ``saca``: the Swin UNETR SSL augmentations, heads and losses.

Everything here follows shared/METHODS.md §3 (MONAI research-contributions ``SwinUNETR/Pretrain``: ``utils/ops.py``,
``models/ssl_head.py``, ``losses/loss.py``); SA-Swin (§4) reuses the same ops. Re-implemented, not copied.

Tensor layout: a batch is [B, C, X, Y, Z] with the harness's RAS+ axes (X = left-right, Y = anterior-posterior,
Z = inferior-superior); one sample is [C, X, Y, Z], which is the official code's [C, H, W, D].

- Rotation (``rot_rand``): per sample k ~ U{0..3}, ``rot90(k)`` of the *sample* in the plane of its tensor dims
  (2, 3) = (Y, Z), i.e. about the first spatial axis X, as the official code does (``axis="x"``). The paper says
  "along the z-axis": ``axis="z"`` rotates in the (X, Y) plane (sample dims (1, 2)). Label = k.
- Cutout (``aug_rand`` -> ``patch_rand_drop``), per sample i in batch order: pass 1 fills random boxes with Gaussian
  noise min-max normalised to [0, 1] within the box until the summed box volume (overlaps counted twice) reaches
  u * |V|, u ~ U(0, max_drop); then j ~ U{0..B-1} and, if j != i, pass 2 repeats with a fresh u but fills each box
  with the same-location voxels of sample j of the partially augmented batch (already augmented if j < i). Box
  corner per axis in [0, S - floor(tol S)), side in [floor(tol S), floor(max_block S)), clipped to the volume:
  sizes are relative to the ROI (S = 96: sides [4, 24)). For S < 20 (tests only) the side range is widened to at
  least [1, 2) so that the loop always terminates; for every ROI the harness allows (multiples of 32) it is the
  official range.
- Heads (``SSLHeads``, the official ``SSLHead`` with ``upsample="vae"``): hs[4] flattened to tokens in h-w-d
  row-major order (``tokens``); rotation Linear(D, 4) on token 0, contrastive Linear(D, 512) on token 1, and the
  "vae" decoder: 5 x [Conv3d k3 -> InstanceNorm3d -> LeakyReLU -> trilinear x2] with widths
  D -> D/2 -> D/4 -> D/8 -> D/16 -> D/16, then a 1x1x1 conv to the input channels, no activation.
- NT-Xent (``nt_xent``): SimCLR over the 2N L2-normalised projections, cosine / tau (0.5), the positive of view-1
  sample i is view-2 sample i, the denominator runs over the 2N - 1 non-self entries (positive included), mean over
  the 2N anchors. Computed as a cross-entropy over the masked similarity row (same value, stable in fp32).

Random integers (rotations, boxes) come from a numpy ``Generator`` that the methods seed from torch's global RNG
(``step_rng``), so the engine's seeding and checkpoint/resume of the RNG states make a run reproducible; the noise
itself is drawn with torch on the batch's device.

- [0]: Tang et al., Self-Supervised Pre-Training of Swin Transformers for 3D Medical Image Analysis, CVPR 2022,
  arXiv 2111.14791
- [1]: Chen et al., A Simple Framework for Contrastive Learning of Visual Representations (SimCLR), ICML 2020
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: rotation plane, as dims of one [C, X, Y, Z] sample
ROTATION_PLANES = {"x": (2, 3), "z": (1, 2)}

Box = tuple[slice, slice, slice]


def step_rng() -> np.random.Generator:
    """A numpy generator seeded from torch's global RNG (reproducible under the engine's seeding and resume)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,))))


def flatten_crops(x: torch.Tensor) -> torch.Tensor:
    """[B, K, C, *S] (K crops per volume, ``crops_per_volume`` > 1) -> [B*K, C, *S]; [B, C, *S] unchanged."""
    return x.flatten(0, 1) if x.ndim == 6 else x


def check_rotation(axis: str, spatial: Sequence[int]) -> tuple[int, int]:
    if axis not in ROTATION_PLANES:
        raise ValueError(f"rotation_axis must be one of {', '.join(ROTATION_PLANES)}; got {axis!r}")
    a, b = ROTATION_PLANES[axis]
    if spatial[a - 1] != spatial[b - 1]:
        raise ValueError(
            f"rotation_axis={axis!r} rotates the plane of spatial axes {a - 1} and {b - 1}, which must be "
            f"equal for 90-degree rotations; the ROI is {tuple(spatial)}"
        )
    return a, b


def rotate(x: torch.Tensor, k: Sequence[int], axis: str = "x") -> torch.Tensor:
    """Rotate sample i of [B, C, X, Y, Z] by k[i] * 90 degrees (``torch.rot90`` of the sample in its plane)."""
    a, b = check_rotation(axis, x.shape[2:])
    return torch.stack([x[i].rot90(int(k[i]), (a, b)) for i in range(x.shape[0])])


def rot_rand(
    xs: Sequence[torch.Tensor], rng: np.random.Generator, axis: str = "x"
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One k ~ U{0..3} per sample, applied to every tensor of ``xs`` alike (``rot_rand`` / ``rot_rand_for_double``).

    Returns the rotated tensors and the labels k (int64, on the tensors' device).
    """
    n = xs[0].shape[0]
    k = rng.integers(0, 4, size=n)
    return [rotate(x, k, axis) for x in xs], torch.as_tensor(k, dtype=torch.long, device=xs[0].device)


@dataclass
class CutoutSpec:
    max_drop: float = 0.3  # u ~ U(0, max_drop) of the volume per pass
    max_block: float = 0.25  # box side < floor(max_block * S)
    tolerance: float = 0.05  # box side >= floor(tolerance * S); corner < S - floor(tolerance * S)


def draw_boxes(
    spatial: Sequence[int], rng: np.random.Generator, spec: CutoutSpec, fraction: float | None = None
) -> list[Box]:
    """Random boxes until their summed volume reaches ``fraction`` (default u ~ U(0, max_drop)) of the volume."""
    u = rng.uniform(0, spec.max_drop) if fraction is None else fraction
    target = u * math.prod(spatial)
    lo = [max(int(spec.tolerance * s), 1) for s in spatial]
    hi = [max(int(spec.max_block * s), low + 1) for s, low in zip(spatial, lo)]
    boxes: list[Box] = []
    total = 0
    while total < target:
        corner = [int(rng.integers(0, s - low)) for s, low in zip(spatial, lo)]
        end = [min(c + int(rng.integers(low, h)), s) for c, low, h, s in zip(corner, lo, hi, spatial)]
        boxes.append(tuple(slice(c, e) for c, e in zip(corner, end)))  # type: ignore[arg-type]
        total += math.prod(e - c for c, e in zip(corner, end))
    return boxes


def patch_rand_drop(
    x: torch.Tensor,
    rng: np.random.Generator,
    spec: CutoutSpec,
    source: torch.Tensor | None = None,
    fraction: float | None = None,
) -> list[Box]:
    """In place on one sample [C, *S]: noise boxes (``source`` None) or same-location voxels of ``source``."""
    boxes = draw_boxes(x.shape[1:], rng, spec, fraction)
    for box in boxes:
        sl = (slice(None),) + box
        if source is None:
            noise = torch.empty_like(x[sl]).normal_()
            lo, hi = noise.min(), noise.max()
            x[sl] = (noise - lo) / (hi - lo).clamp_min(1e-12)
        else:
            x[sl] = source[sl]
    return boxes


@dataclass
class CutoutRecord:
    """What ``aug_rand`` did to one sample (for tests and diagnostics)."""

    noise: list[Box]
    source: int | None = None  # j of pass 2, None when j == i
    paste: list[Box] = field(default_factory=list)


def aug_rand(
    x: torch.Tensor, rng: np.random.Generator, spec: CutoutSpec | None = None
) -> tuple[torch.Tensor, list[CutoutRecord]]:
    """The official ``aug_rand`` on a batch [B, C, *S]: returns the augmented copy and per-sample records."""
    spec = spec or CutoutSpec()
    out = x.detach().clone()
    records = []
    n = out.shape[0]
    for i in range(n):
        rec = CutoutRecord(noise=patch_rand_drop(out[i], rng, spec))
        j = int(rng.integers(0, n))
        if j != i:
            rec.source = j
            rec.paste = patch_rand_drop(out[i], rng, spec, source=out[j])
        records.append(rec)
    return out, records


def tokens(h: torch.Tensor) -> torch.Tensor:
    """[B, D, h, w, d] -> [B, h*w*d, D], h-w-d row-major (token 0 = (0, 0, 0), token 1 = (0, 0, 1))."""
    return h.flatten(2).transpose(1, 2)


def vae_decoder(dim: int, out_channels: int) -> nn.Sequential:
    """The official ``upsample="vae"`` decoder: x32 upsampling of the hs[4] map to the input resolution."""
    widths = [dim, dim // 2, dim // 4, dim // 8, dim // 16, dim // 16]
    if widths[-1] < 1:
        raise ValueError(f"the vae decoder needs feature_dim >= 16; got {dim}")
    layers: list[nn.Module] = []
    for cin, cout in zip(widths[:-1], widths[1:]):
        layers += [
            nn.Conv3d(cin, cout, kernel_size=3, stride=1, padding=1),
            nn.InstanceNorm3d(cout),
            nn.LeakyReLU(),
            nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
        ]
    layers.append(nn.Conv3d(widths[-1], out_channels, kernel_size=1, stride=1))
    return nn.Sequential(*layers)


class SSLHeads(nn.Module):
    """Rotation (token 0), contrastive (token 1) and inpainting ("vae") heads of the official ``SSLHead``."""

    def __init__(self, dim: int, in_channels: int, proj_dim: int = 512) -> None:
        super().__init__()
        self.rotation_head = nn.Linear(dim, 4)
        self.contrastive_head = nn.Linear(dim, proj_dim)
        self.conv = vae_decoder(dim, in_channels)

    def rotation(self, tok: torch.Tensor) -> torch.Tensor:
        return self.rotation_head(tok[:, 0])

    def contrastive(self, tok: torch.Tensor) -> torch.Tensor:
        return self.contrastive_head(tok[:, 1])

    def reconstruct(self, tok: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        b, _, d = tok.shape
        return self.conv(tok.transpose(1, 2).reshape(b, d, *grid))


def check_roi(spatial: Sequence[int], method: str) -> None:
    if any(s % 32 for s in spatial):
        raise ValueError(f"{method}: the ROI {tuple(spatial)} must be divisible by 32 (Swin UNETR's 5 stages of 2x)")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """SimCLR NT-Xent over 2N views; the official ``Contrast`` loss (fp32)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.t() / tau
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)
