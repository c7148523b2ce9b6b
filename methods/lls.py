"""LooseLocationSS (MICCAI 2024) as the transfer protocol ``lls_two_stage`` (METHODS.md §6).

LooseLocationSS is not label-free pretraining: it is a two-stage supervised 2D slice classifier (tumour vs normal)
with self-supervised consistency terms on a patch-level lesion-location head. It therefore enters the harness as a
protocol on top of any pretrained 2D encoder export, compared on the colon suite with the plain ``finetune``
classifier (same backbone, same steps and batch size).

Model (§6.3): the export's backbone; an image head (linear on ``backbone.pooled``, the generic classifier's path); a
patch head (1x1 conv C->hidden, BN, ReLU, 1x1 conv hidden->hidden/2, BN, ReLU, 1x1 conv ->2) on the last feature map
of ``backbone.encode`` (one cell per feature-map position: 7x7 for ConvNeXt at 224, 8x8 for a ViT/16 at 128).

Stage 1 (§6.5, ``--mode NAP``): image-level CE on slices of every phase, pooled as separate 1-channel images; it trains
the backbone and the image head (the patch head is in neither its graph nor its optimizer).
Stage 2 (``--mode N --p_cls``), from the stage-1 weights selected on val, trains all three: main input the
non-contrast (N) slice, with its neighbour volume [first other phase at the matched z, N at z-1, N at z+1, second
other phase at the matched z] (§6.1: [A, N-1, N+1, P]; the matched z is the dataset's per-phase slice
correspondence, ``annotation(patient)["slice_match"]``, as the release reads each phase's own lesion slice index;
the identity where a dataset gives none, and on the synthetic colon suite, whose phases share their table positions);
``L = w_cls * L_cls + w_con * (L_patch + L_tm) + w_loop * L_loop`` with (§6.4)

- ``L_cls``: CE of the image logits of the (augmented) main slices;
- ``L_patch``: negatives: every cell -> class 0; the first ``floor(annotation_ratio * n_pos)`` positives of the
  batch: CE against the one-hot lesion cell; the other positives: the fuzzy loss mean(p0 * p1);
- ``L_tm`` (positives only): per-cell JS divergence (KL with eps over the 2 classes) between M*p_j and M*p_c for each
  neighbour j, where M is 1 except on the (2r+1)^2 neighbourhood of the current slice's argmax cell; mean over
  cells, then over the valid (sample, neighbour) pairs; gradients flow into both sides;
- ``L_loop`` (positives only): the input region of the argmax cell is zeroed and the masked slice, re-classified by
  the image head, is pushed to "normal".

Augmentation (§6.2, ``augment=release``, both stages, :class:`ReleaseAugment`): the release's albumentations
pipeline re-implemented on torch sampling grids, HorizontalFlip 0.5, ShiftScaleRotate 0.5 (shift 0.0625, scale 0.1,
45 deg), GaussNoise 0.5 (variance up to 0.01, clipped to [0, 1]), OneOf(GridDistortion 5 steps +-0.3,
ElasticTransform's alpha_affine=50 px at 224 px) 0.75; the lesion box moves with the slice (its pixels warped as a
mask, as albumentations does for distortions) and so does the centroid, so the supervised cell is the one of the
lesion in the augmented slice. One sampling grid composes the warps (one interpolation instead of three), reflection
padding stands for reflect-101, the noise is added after the distortion rather than before it, and ElasticTransform's
field (alpha=1, sigma=50: under 0.01 px) is left out.

Deviations from the released code, each following the paper or fixing a defect:

- The release computes ``loss_cls`` before the forward pass defines the outputs (and validates with ``len_sup``
  before assigning it); here every loss is computed after the forward pass, as the paper describes.
- The supervised cell is the lesion's centroid cell, not the cell of the box's top-left corner read with x as the
  row (the release's ``box[0], box[1]``, a likely x/y swap); the paper describes a lesion-location cell
  (``supervised_cell=release_corner`` restores the release's).
- Neighbour slices get the main slice's warp (``neighbour_augment=shared``, no noise): the release rotates each
  sample's neighbour volume by its own angle of {0, +-15, +-30, +-60} deg, so its neighbour maps are not aligned with
  the main slice (METHODS.md §6.2 observation; ``neighbour_augment=release`` restores it).
- The cross-phase correspondence is used for every slice; the release has it for lesion slices only and takes the
  same index for the others (identical on the colon suite).
- A neighbour that does not exist (the first/last slice of a volume, a patient without an arterial phase) is left
  out of the mean instead of being padded.
- Schedule: the harness's warmup + cosine AdamW via the one engine (``weight_decay=0`` is Adam); the heads use
  ``head_lr_scale`` times the backbone lr, as in the generic ``finetune``, so the two protocols differ only in the
  method. The budget's steps are split between the stages by ``stage1_fraction``.

Sampling (§6.2, ``paper_sampling``): per training patient, every lesion slice plus 3-5 random other slices for a
tumour patient and 10-20 random slices for a normal one, drawn once per cell seed.

Evaluation (§6.6) on the N slices of the test split: slice-level AUROC and accuracy at p >= 0.5; patient-level AUROC
of the paper's statistic, the number of slices with p >= 0.5 (its rule "positive if count > t" is a threshold on
it), with the mean slice probability only breaking ties; ``loc_acc``: the fraction of positive slices whose argmax
cell overlaps the lesion's box. All rows are set-level (``case="__set__"``, ``class=-1``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import distributed, metrics
from bench.data import preprocess, subsample
from bench.protocols.base import Protocol, ProtocolResult, TransferContext, register_protocol
from bench.protocols.classification import prediction_rows
from methods.base import StepInfo, StepOutput

SET = "__set__"
OVERALL = -1
N_NEIGHBOURS = 4


# ------------------------------------------------------------------------------------------------ neighbours


def neighbour_plan(phases: Sequence[str], main: str = "N") -> list[tuple[str | None, int]]:
    """The four neighbours of a main-phase slice as (phase, z offset): [other_1 z, main z-1, main z+1, other_2 z].

    With phases (N, A, P) and main N this is §6.1's [A, N-1, N+1, P]. ``phases`` is the canonical order of every
    phase the suite may hold; a patient lacking one simply has no such neighbour.
    """
    others = [p for p in phases if p != main] + [None, None]
    return [(others[0], 0), (main, -1), (main, +1), (others[1], 0)]


def neighbour_indices(
    items: Sequence[tuple[str, str, int]],
    plan: Sequence[tuple[str | None, int]],
    match: Mapping[str, Mapping[str, Sequence[int | None]]] | None = None,
) -> np.ndarray:
    """For each item (patient, phase, z) of a flat list, the flat indices of its neighbours; -1 where none exists.

    A neighbour in the item's own phase is (same patient, phase, z + offset). One in another phase is that phase's
    slice matched to z, ``match[patient][phase][z]`` (the release reads the match from per-phase annotation files,
    §6.1: the phases of one patient are separate acquisitions whose slice indices need not agree), plus the offset;
    without a match for the patient, the same index. Neighbours never cross patients; a slice past either end of
    its volume, an unmatched slice (None) or a phase the patient lacks is -1.
    """
    index = {it: i for i, it in enumerate(items)}
    out = np.full((len(items), len(plan)), -1, np.int64)
    for i, (pid, own, z) in enumerate(items):
        for j, (ph, dz) in enumerate(plan):
            if ph is None:
                continue
            zz: int | None = z
            if ph != own and match is not None and pid in match:
                m = match[pid].get(ph)
                zz = m[z] if m is not None and 0 <= z < len(m) else None
            if zz is not None:
                out[i, j] = index.get((pid, ph, zz + dz), -1)
    return out


def slice_match(ann: dict[str, Any], main: str, n_slices: int) -> dict[str, list[int | None]]:
    """Per phase, the index of the main phase's slice z in that phase (``ann["slice_match"]``, the dataset's
    per-phase correspondence; the identity where the annotation has none)."""
    given = ann.get("slice_match") or {}
    out = {}
    for ph in ann["phases"]:
        m = list(range(n_slices)) if ph == main or ph not in given else list(given[ph])
        if len(m) != n_slices:
            raise ValueError(f"slice_match[{ph!r}] has {len(m)} entries for {n_slices} {main} slices")
        out[ph] = [None if v is None else int(v) for v in m]
    return out


# ------------------------------------------------------------------------------------------------ loss terms


def lesion_cell(loc: Sequence[float] | None, grid: tuple[int, int]) -> tuple[int, int]:
    """Grid cell (row, col) of a normalised location; (-1, -1) for none."""
    if loc is None:
        return (-1, -1)
    return (
        min(grid[0] - 1, max(0, int(math.floor(loc[0] * grid[0])))),
        min(grid[1] - 1, max(0, int(math.floor(loc[1] * grid[1])))),
    )


def corner_cell(box: Sequence[float] | None, grid: tuple[int, int]) -> tuple[int, int]:
    """The release's supervised cell: ``floor(g * box[0]), floor(g * box[1])`` of an (x_min, y_min, ...) box used as
    (row, col), i.e. in this harness's (r0, c0, r1, c1) boxes the row from c0 and the column from r0 (§6.4, a likely
    x/y swap, kept here only to reproduce the release); (-1, -1) for none."""
    if box is None:
        return (-1, -1)
    return (
        min(grid[0] - 1, max(0, int(math.floor(box[1] * grid[0])))),
        min(grid[1] - 1, max(0, int(math.floor(box[0] * grid[1])))),
    )


def supervised_cell(
    loc: Sequence[float] | None, box: Sequence[float] | None, grid: tuple[int, int], rule: str
) -> tuple[int, int]:
    """The lesion cell L_patch supervises: the centroid's cell (``centroid``) or the release's corner cell."""
    return lesion_cell(loc, grid) if rule == "centroid" else corner_cell(box, grid)


def argmax_cells(p: torch.Tensor) -> torch.Tensor:
    """(row, col) [B, 2] of the most tumour-like cell of patch probabilities p [B, 2, h, w]."""
    w = p.shape[-1]
    flat = p[:, 1].flatten(1).argmax(1)
    return torch.stack([flat // w, flat % w], 1)


def loose_mask(p_main: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """[B, h, w]: 1 everywhere except the (2r+1)^2 neighbourhood of each slice's argmax cell (0 there)."""
    b, _, h, w = p_main.shape
    cells = argmax_cells(p_main.detach())
    rows = torch.arange(h, device=p_main.device)[None, :, None]
    cols = torch.arange(w, device=p_main.device)[None, None, :]
    near = ((rows - cells[:, 0, None, None]).abs() <= radius) & ((cols - cells[:, 1, None, None]).abs() <= radius)
    return (~near).to(p_main.dtype)


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-cell Jensen-Shannon divergence over the class dim (-3) of [..., 2, h, w] -> [..., h, w]."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * (torch.log(a + eps) - torch.log(b + eps))).sum(-3)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def location_consistency(
    p_main: torch.Tensor, p_nb: torch.Tensor, valid: torch.Tensor, radius: int = 1, eps: float = 1e-8
) -> torch.Tensor:
    """L_tm: p_main [B, 2, h, w], p_nb [B, K, 2, h, w], valid [B, K] bool -> scalar (0 with no valid pair)."""
    m = loose_mask(p_main, radius)[:, None, None]  # [B, 1, 1, h, w]
    js = js_divergence(m * p_nb, m * p_main[:, None], eps).mean((-2, -1))  # [B, K]
    v = valid.to(js.dtype)
    return (js * v).sum() / v.sum().clamp_min(1.0)


def cell_box(cell: Sequence[int], grid: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel rows [r0, r1) and cols [c0, c1) of a grid cell on an image of ``size``."""
    (i, j), (gh, gw), (hh, ww) = cell, grid, size
    return (i * hh // gh, (i + 1) * hh // gh, j * ww // gw, (j + 1) * ww // gw)


def loopback_mask(cells: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, H, W]: 0 on the pixels of each slice's cell, 1 elsewhere (the mask-correction loopback's input mask)."""
    mask = torch.ones((len(cells), 1, *size), device=cells.device)
    for b, (i, j) in enumerate(cells.tolist()):
        r0, r1, c0, c1 = cell_box((i, j), grid, size)
        mask[b, :, r0:r1, c0:c1] = 0.0
    return mask


def patch_loss(logits: torch.Tensor, y: torch.Tensor, cells: torch.Tensor, ratio: float) -> torch.Tensor:
    """L_patch over a batch: logits [B, 2, h, w], y [B], cells [B, 2] (-1 where unknown)."""
    b, _, h, w = logits.shape
    zero = logits.sum() * 0.0
    neg = y == 0
    loss = (
        F.cross_entropy(logits[neg], torch.zeros((int(neg.sum()), h, w), dtype=torch.long, device=logits.device))
        if neg.any()
        else zero
    )
    pos = torch.nonzero(y == 1).flatten()
    n_sup = int(math.floor(ratio * len(pos)))
    sup = [int(i) for i in pos[:n_sup] if cells[i, 0] >= 0]
    if sup:
        target = torch.zeros((len(sup), h, w), dtype=torch.long, device=logits.device)
        for k, i in enumerate(sup):
            target[k, cells[i, 0], cells[i, 1]] = 1
        loss = loss + F.cross_entropy(logits[sup], target)
    unsup = pos[n_sup:]
    if len(unsup):
        p = logits[unsup].float().softmax(1)
        loss = loss + (p[:, 0] * p[:, 1]).mean()
    return loss


# ------------------------------------------------------------------------------------------------ augmentation

AUGMENT_MODES = ("release", "intensity", "none")
NEIGHBOUR_MODES = ("shared", "release")
CELL_RULES = ("centroid", "release_corner")


@dataclass(frozen=True)
class ReleaseAugment:
    """The release's box-aware training augmentation (§6.2), re-implemented on torch sampling grids.

    The release composes albumentations' HorizontalFlip(p=0.5), ShiftScaleRotate(p=0.5), GaussNoise(var_limit=0.01,
    p=0.5) and OneOf([GridDistortion, ElasticTransform], p=0.75), every other argument at the albumentations 1.x
    default; pixel sizes here are fractions of the side, the release's at its 224-px slices.
    """

    p_flip: float = 0.5  # HorizontalFlip: the columns
    p_ssr: float = 0.5  # ShiftScaleRotate
    shift: float = 0.0625  # shift_limit: up to this fraction of the side per axis
    scale: float = 0.1  # scale_limit: zoom 1 +- this
    rotate: float = 45.0  # rotate_limit, degrees
    p_noise: float = 0.5  # GaussNoise
    noise_var: float = 0.01  # var_limit: variance ~ U(0, this) on the [0, 1] image, then clipped to [0, 1]
    p_distort: float = 0.75  # OneOf: GridDistortion or ElasticTransform, with equal odds
    grid_steps: int = 5  # GridDistortion num_steps
    grid_limit: float = 0.3  # distort_limit: each grid step stretched by 1 +- this
    # ElasticTransform: alpha_affine=50 px (at 224 px) jitters three anchor points a third of the side from the
    # centre; its field (alpha=1, sigma=50 px) moves pixels by under 0.01 px and is left out
    elastic_affine: float = 50 / 224
    # the neighbour volume's own rotation in the release (scipy ndimage.rotate, reshape=False, clipped to [0, 1])
    neighbour_angles: tuple[float, ...] = (-60.0, -30.0, -15.0, 0.0, 15.0, 30.0, 60.0)


def _centred(lin: torch.Tensor, shift: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[n, 3, 3] forward pixel maps x -> c + lin (x - c) + shift about the image centre c, in (x=col, y=row)."""
    h, w = size
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=lin.dtype)
    m = torch.zeros(len(lin), 3, 3, dtype=lin.dtype)
    m[:, :2, :2] = lin
    m[:, :2, 2] = c - lin @ c + shift
    m[:, 2, 2] = 1.0
    return m


def _rotations(deg: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    t = torch.deg2rad(deg.double())
    cos, sin = torch.cos(t) * scale, torch.sin(t) * scale
    return torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)


def _pixels(n: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """[n, h, w, 2] pixel-centre coordinates (x = column, y = row)."""
    h, w = size
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return torch.stack([xs, ys], -1).expand(n, h, w, 2).clone()


def _pull(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Where each output point of pts [n, h, w, 2] comes from under the forward maps m [n, 3, 3]: m^-1 pts."""
    inv = torch.linalg.inv(m.double()).float().to(pts.device)
    return torch.einsum("nij,nhwj->nhwi", inv[:, :2, :2], pts) + inv[:, None, None, :2, 2]


def _grid_axis(stretch: np.ndarray, length: int) -> np.ndarray:
    """GridDistortion along one axis: the output is cut into ``len(stretch)`` steps of ``length // steps`` pixels,
    step k fetches a stretch[k] times longer stretch of the input, piecewise linearly; a remainder at the end
    runs to the image edge."""
    k = len(stretch)
    step = length // k
    out_knots = [j * step for j in range(k + 1)]
    in_knots = np.concatenate([[0.0], np.cumsum(step * stretch)])
    if k * step < length:
        out_knots.append(length)
        in_knots = np.append(in_knots, float(length))
    return np.interp(np.arange(length, dtype=np.float64), out_knots, in_knots)


def release_geometry(
    n: int, size: tuple[int, int], g: torch.Generator, aug: ReleaseAugment, device: torch.device | None = None
) -> torch.Tensor:
    """Source pixel coordinates [n, h, w, 2] (x = column, y = row) of every output pixel of n slices.

    The release flips, then shifts-scales-rotates, then distorts, so an output pixel is fetched through the
    distortion's pull-back first and the flip's last. Every draw is made for every slice on the CPU generator,
    whatever applies, so the stream and the result do not depend on the outcome or on the device.
    """
    h, w = size
    device = device or torch.device("cpu")
    side = float(min(h, w))
    flip = torch.rand(n, generator=g) < aug.p_flip
    ssr = torch.rand(n, generator=g) < aug.p_ssr
    deg = (2 * torch.rand(n, generator=g) - 1) * aug.rotate
    zoom = 1 + (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1) * aug.scale
    shift = (2 * torch.rand(n, 2, generator=g, dtype=torch.float64) - 1) * aug.shift * torch.tensor([w, h])
    distort = torch.rand(n, generator=g) < aug.p_distort
    use_grid = torch.rand(n, generator=g) < 0.5
    stretch = 1 + (2 * torch.rand(n, 2, aug.grid_steps, generator=g, dtype=torch.float64) - 1) * aug.grid_limit
    jitter = (2 * torch.rand(n, 3, 2, generator=g, dtype=torch.float64) - 1) * aug.elastic_affine * side

    pts = _pixels(n, size, device)
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    arm = side / 3
    anchors = torch.stack([c + arm, c + torch.tensor([arm, -arm]), c - arm])  # three points about the centre
    lhs = torch.cat([anchors, torch.ones(3, 1, dtype=torch.float64)], 1)
    for i in torch.nonzero(distort).flatten().tolist():
        if use_grid[i]:
            gx = torch.from_numpy(_grid_axis(stretch[i, 0].numpy(), w)).float().to(device)
            gy = torch.from_numpy(_grid_axis(stretch[i, 1].numpy(), h)).float().to(device)
            pts[i, ..., 0], pts[i, ..., 1] = gx[None, :].expand(h, w), gy[:, None].expand(h, w)
        else:
            m = torch.eye(3, dtype=torch.float64)
            m[:2] = torch.linalg.solve(lhs, anchors + jitter[i]).T  # the affine taking the anchors to their jitter
            pts[i] = _pull(m[None], pts[i : i + 1])[0]
    if ssr.any():
        keep = ssr.to(device)
        pts[keep] = _pull(_centred(_rotations(deg[ssr], zoom[ssr]), shift[ssr], size), pts[keep])
    pts[..., 0] = torch.where(flip.to(device)[:, None, None], (w - 1) - pts[..., 0], pts[..., 0])
    return pts


def _grid(src: torch.Tensor) -> torch.Tensor:
    """grid_sample's normalised grid (align_corners=False) of source pixel coordinates [n, h, w, 2]."""
    h, w = src.shape[1:3]
    return (src + 0.5) * torch.tensor([2.0 / w, 2.0 / h], device=src.device) - 1.0


def _sample(img: torch.Tensor, grid: torch.Tensor, padding: str) -> torch.Tensor:
    return F.grid_sample(img, grid.to(img.dtype), mode="bilinear", padding_mode=padding, align_corners=False)


def warp_boxes(
    boxes: Sequence[Sequence[float] | None], locs: Sequence[Sequence[float] | None], src: torch.Tensor
) -> tuple[list[tuple[float, ...] | None], list[tuple[float, float] | None]]:
    """The lesion boxes and centroids (normalised (r0, c0, r1, c1), (row, col)) after the warp whose source pixel
    coordinates are src [n, h, w, 2]: a box is the extent of its pixels warped as a mask (zeros outside the image,
    so a mirrored copy is not the lesion), a centroid the output pixel that fetches from nearest to it. A lesion
    warped out of the image has neither."""
    n, h, w, _ = src.shape
    out_b: list[tuple[float, ...] | None] = [None] * n
    out_l: list[tuple[float, float] | None] = [None] * n
    have = [i for i in range(n) if boxes[i] is not None]
    if have:
        masks = torch.zeros(len(have), 1, h, w, device=src.device)
        for k, i in enumerate(have):
            r0, c0, r1, c1 = boxes[i]
            span = slice(int(math.floor(r0 * h)), int(math.ceil(r1 * h)))
            masks[k, 0, span, int(math.floor(c0 * w)) : int(math.ceil(c1 * w))] = 1
        warped = (_sample(masks, _grid(src[have]), "zeros")[:, 0] > 1e-3).cpu()
        for k, i in enumerate(have):
            rows, cols = torch.nonzero(warped[k].any(1)).flatten(), torch.nonzero(warped[k].any(0)).flatten()
            if len(rows):
                r0, r1, c0, c1 = rows[0].item(), rows[-1].item() + 1, cols[0].item(), cols[-1].item() + 1
                out_b[i] = (r0 / h, c0 / w, r1 / h, c1 / w)
    for i, loc in enumerate(locs):
        if loc is None or (boxes[i] is not None and out_b[i] is None):
            continue
        p = torch.tensor([loc[1] * w - 0.5, loc[0] * h - 0.5], device=src.device)
        at = int(((src[i] - p) ** 2).sum(-1).flatten().argmin())
        out_l[i] = ((at // w + 0.5) / h, (at % w + 0.5) / w)
    return out_b, out_l


def augment_batch(
    x: torch.Tensor,
    g: torch.Generator,
    mode: str,
    nb: torch.Tensor | None = None,
    boxes: Sequence[Any] | None = None,
    locs: Sequence[Any] | None = None,
    neighbour_mode: str = "shared",
    aug: ReleaseAugment = ReleaseAugment(),
) -> tuple[torch.Tensor, torch.Tensor | None, list[Any] | None, list[Any] | None]:
    """Augment main slices x [n, 1, h, w], their neighbours nb [n, K, 1, h, w] and lesion boxes / centroids, on
    x's device with every random draw from the CPU generator g.

    ``release``: the release's geometric and noise augmentation of the main slice, the box and centroid moved with
    it; neighbours either get the main slice's warp (``shared``: aligned, no noise) or, as in the release, their own
    rotation by an angle of ``aug.neighbour_angles`` (zeros outside, clipped to [0, 1]; not aligned with the main
    slice). ``intensity``: one random scale and shift per slice, shared with its neighbours, nothing moves.
    ``none``: unchanged.
    """
    boxes = None if boxes is None else list(boxes)
    locs = None if locs is None else list(locs)
    n, dev = len(x), x.device
    if mode == "none":
        return x, nb, boxes, locs
    if mode == "intensity":
        scale = (0.9 + 0.2 * torch.rand((n, 1, 1, 1), generator=g)).to(dev)
        shift = (0.1 * torch.rand((n, 1, 1, 1), generator=g) - 0.05).to(dev)
        return x * scale + shift, (None if nb is None else nb * scale[:, None] + shift[:, None]), boxes, locs
    if mode != "release":
        raise ValueError(f"augment must be one of {AUGMENT_MODES}; got {mode!r}")
    size = (int(x.shape[-2]), int(x.shape[-1]))
    src = release_geometry(n, size, g, aug, dev)
    grid = _grid(src)
    out = _sample(x, grid, "reflection")
    noisy = torch.rand(n, generator=g) < aug.p_noise
    sigma = (torch.rand(n, generator=g) * aug.noise_var).sqrt()
    if noisy.any():
        k = int(noisy.sum())
        noise = torch.randn((k, *out.shape[1:]), generator=g) * sigma[noisy][:, None, None, None]
        out[noisy.to(dev)] += noise.to(dev, out.dtype)
    out = out.clamp(0.0, 1.0)
    if nb is not None:
        if neighbour_mode == "shared":
            nb = _sample(nb.flatten(1, 2), grid, "reflection").view(nb.shape)
        elif neighbour_mode == "release":
            angles = torch.tensor(aug.neighbour_angles, dtype=torch.float64)
            deg = angles[torch.randint(len(angles), (n,), generator=g)]
            m = _centred(
                _rotations(deg, torch.ones(n, dtype=torch.float64)), torch.zeros(n, 2, dtype=torch.float64), size
            )
            rot = _grid(_pull(m, _pixels(n, size, dev)))
            nb = _sample(nb.flatten(1, 2), rot, "zeros").clamp(0.0, 1.0).view(nb.shape)
        else:
            raise ValueError(f"neighbour_augment must be one of {NEIGHBOUR_MODES}; got {neighbour_mode!r}")
    if boxes is not None:
        boxes, locs = warp_boxes(boxes, locs if locs is not None else [None] * n, src)
    return out, nb, boxes, locs


# ------------------------------------------------------------------------------------------------------ model


def last_map(features: Any) -> torch.Tensor:
    f = features[-1] if isinstance(features, (list, tuple)) else features
    if f.ndim != 4:
        raise ValueError(
            f"lls_two_stage needs a 2D backbone whose encode() gives [B, C, h, w] maps; got {tuple(f.shape)}"
        )
    return f


class LLSNet(nn.Module):
    def __init__(self, backbone: nn.Module, channels: int, hidden: int = 256, n_classes: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, n_classes)
        self.patch_head = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden // 2, 1),
            nn.BatchNorm2d(hidden // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden // 2, n_classes, 1),
        )

    def image_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.pooled(x))

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_head(last_map(self.backbone.encode(x)))


# ------------------------------------------------------------------------------------------------------- data


class SliceSet:
    """The N/A/P slices of some patients, preprocessed, as one flat tensor with (patient, phase, z) items.

    ``match[patient][phase][z]`` is the index in ``phase`` of the main phase's slice z (the dataset's per-phase
    correspondence, :func:`slice_match`), ``main_z[i]`` the main-phase slice item i stands for (-1: none matches it);
    a slice's label is its main-phase slice's (the diagnosed phase defines it)."""

    def __init__(
        self, ctx: TransferContext, patients: list[str], phase_order: Sequence[str], main_phase: str = "N"
    ) -> None:
        ds = ctx.dataset
        for need in ("annotation", "volume"):
            if not hasattr(ds, need):
                raise ValueError(
                    f"lls_two_stage needs a multi-phase slice dataset with {need}(patient) "
                    f"(e.g. 'colon'); dataset {ds.registry_name!r} has none"
                )
        self.items: list[tuple[str, str, int]] = []
        self.main_z: list[int] = []
        self.match: dict[str, dict[str, list[int | None]]] = {}
        self.labels: list[int] = []
        self.locs: list[Any] = []
        self.boxes: list[Any] = []
        chunks = []
        for pid in patients:
            ann = ds.annotation(pid)
            vol = _preprocessed_volume(ctx, pid)  # [P, Z, h, w]
            self.match[pid] = slice_match(ann, main_phase, len(ann["labels"]))
            for ph in ann["phases"]:
                if ph not in phase_order:
                    raise ValueError(f"patient {pid}: phase {ph!r} not in {list(phase_order)}")
                inverse = {zp: z for z, zp in enumerate(self.match[pid][ph]) if zp is not None}
                for z in range(vol.shape[1]):
                    mz = inverse.get(z, -1)
                    self.items.append((pid, ph, z))
                    self.main_z.append(mz)
                    self.labels.append(int(ann["labels"][mz]) if mz >= 0 else 0)
                    self.locs.append(ann["loc"][ph][z])
                    self.boxes.append(ann["box"][ph][z])
            chunks.append(vol.reshape(-1, *vol.shape[2:]))
        self.images = torch.from_numpy(np.concatenate(chunks))[:, None] if chunks else torch.zeros(0)
        self.y = torch.tensor(self.labels, dtype=torch.long)

    def where(self, phase: str, keep: set[tuple[str, int]] | None = None) -> list[int]:
        return [i for i, (pid, ph, z) in enumerate(self.items) if ph == phase and (keep is None or (pid, z) in keep)]

    def at_positions(self, keep: set[tuple[str, int]]) -> list[int]:
        """Every phase's slice at the kept (patient, main-phase z) positions, matched per phase."""
        return [i for i, (pid, _, _) in enumerate(self.items) if (pid, self.main_z[i]) in keep]


def _preprocessed_volume(ctx: TransferContext, pid: str) -> np.ndarray:
    key = f"lls/{ctx.dataset.registry_name}/{pid}/{ctx.preprocess.key()}/{'x'.join(map(str, ctx.roi))}"
    if key not in ctx.cache:
        ann = ctx.dataset.annotation(pid)
        vol = ctx.dataset.volume(pid).astype(np.float32)
        p, z, h, w = vol.shape
        s = preprocess(
            {"id": pid, "image": vol.reshape(p * z, h, w), "spacing": tuple(ann["spacing"])}, ctx.preprocess
        )["image"]
        x = torch.from_numpy(np.ascontiguousarray(s))
        if tuple(x.shape[1:]) != tuple(ctx.roi):
            x = F.interpolate(x[None], size=tuple(ctx.roi), mode="bilinear", align_corners=False, antialias=True)[0]
        ctx.cache[key] = x.numpy().reshape(p, z, *ctx.roi)
    return ctx.cache[key]


def paper_positions(ds, patients: list[str], keep: set[tuple[str, int]], seed: int) -> set[tuple[str, int]]:
    """§6.2 sampling: a tumour patient gives its lesion slices plus 3-5 others, a normal one 10-20 slices."""
    rng = np.random.default_rng([seed, 6061])
    out: set[tuple[str, int]] = set()
    for pid in patients:
        zs = [z for (p, z) in sorted(keep) if p == pid]
        labels = ds.annotation(pid)["labels"]
        pos = [z for z in zs if labels[z]]
        neg = [z for z in zs if not labels[z]]
        k = int(rng.integers(3, 6)) if pos else int(rng.integers(10, 21))
        picked = pos + (rng.choice(neg, size=min(k, len(neg)), replace=False).tolist() if neg else [])
        out |= {(pid, int(z)) for z in picked}
    return out


class _Batches(torch.utils.data.IterableDataset):
    """Endless shuffled batches from a SliceSet: stage 1 (x, y) or stage 2 (x, y, cell, nb, nb_valid).

    ``cell`` is the supervised lesion cell of the main slice's box / centroid after the augmentation actually applied
    (-1 without a lesion, or when the warp moved it out of the image); ``nb`` [B, K, 1, h, w] the neighbours in the
    plan's order, a missing one zero with ``nb_valid`` False."""

    def __init__(
        self,
        data: SliceSet,
        idx: list[int],
        batch: int,
        seed: int,
        grid: tuple[int, int] | None,
        nb: np.ndarray | None,
        augment: str = "none",
        neighbour_augment: str = "shared",
        cell_rule: str = "centroid",
        aug: ReleaseAugment = ReleaseAugment(),
        device: torch.device | None = None,
    ) -> None:
        self.data, self.idx, self.batch, self.seed = data, torch.tensor(idx, dtype=torch.long), batch, seed
        self.grid, self.nb, self.augment = grid, nb, augment
        self.neighbour_augment, self.cell_rule, self.aug = neighbour_augment, cell_rule, aug
        # the warps run where the model trains (a loader without workers iterates in the training process)
        self.device = device or torch.device("cpu")
        distributed.check_shards(min(batch, len(idx)), "slice(s)")

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        n = len(self.idx)
        bs = min(self.batch, n)
        d = self.data
        while True:
            perm = self.idx[torch.randperm(n, generator=g)]
            for s in range(0, n - bs + 1, bs):
                ids = perm[s : s + bs]
                out = {"y": d.y[ids]}
                if self.nb is None:
                    out["x"] = augment_batch(d.images[ids].to(self.device), g, self.augment, aug=self.aug)[0]
                else:
                    nb = torch.from_numpy(self.nb[ids.numpy()])  # [B, K]
                    valid = nb >= 0
                    x, nbx, boxes, locs = augment_batch(
                        d.images[ids].to(self.device),
                        g,
                        self.augment,
                        nb=d.images[nb.clamp_min(0)].to(self.device),  # [B, K, 1, h, w]
                        boxes=[d.boxes[i] for i in ids.tolist()],
                        locs=[d.locs[i] for i in ids.tolist()],
                        neighbour_mode=self.neighbour_augment,
                        aug=self.aug,
                    )
                    assert nbx is not None and boxes is not None and locs is not None
                    out["x"] = x
                    out["nb"] = nbx * valid.to(nbx.device)[..., None, None, None]
                    out["nb_valid"] = valid
                    out["cell"] = torch.tensor(
                        [supervised_cell(lo, bo, self.grid, self.cell_rule) for lo, bo in zip(locs, boxes)],
                        dtype=torch.long,
                    ).view(-1, 2)
                part = distributed.shard(bs)  # under torchrun: this process's shard of the global batch
                yield {k: v[part] for k, v in out.items()}


# --------------------------------------------------------------------------------------------------- protocol


@register_protocol("lls_two_stage", "classification")
class LLSTwoStage(Protocol):
    """LooseLocationSS: stage 1 slice classification on every phase, stage 2 with the loose-location terms."""

    @dataclass
    class Config:
        stage1_fraction: float = 0.5  # share of the budget's steps spent in stage 1
        lr: float = 1e-4  # §6.5 Adam lr 1e-4
        head_lr_scale: float = 10.0  # new heads, as in the generic finetune
        weight_decay: float = 0.0
        warmup_fraction: float = 0.1
        eval_every: int = 0  # 0: five validations per stage
        w_cls: float = 0.5
        w_con: float = 1.0
        w_loop: float = 0.5
        annotation_ratio: float = 0.25  # share of each batch's positives whose lesion cell is supervised
        loose_radius: int = 1  # 1: the 3x3 neighbourhood is ignored by L_tm
        eps: float = 1e-8
        patch_hidden: int = 256  # official 1024 / 512 on ConvNeXtV2-L's 1536 channels
        main_phase: str = "N"
        phase_order: tuple[str, ...] = ("N", "A", "P")
        paper_sampling: bool = True
        augment: str = (
            "release"  # release (flip, shift-scale-rotate, noise, grid/elastic; box moves) | intensity | none
        )
        neighbour_augment: str = "shared"  # shared: the main slice's warp | release: own rotation, not aligned
        supervised_cell: str = "centroid"  # centroid | release_corner (the box's top-left corner, x read as row)

        def __post_init__(self) -> None:
            for key, allowed in (
                ("augment", AUGMENT_MODES),
                ("neighbour_augment", NEIGHBOUR_MODES),
                ("supervised_cell", CELL_RULES),
            ):
                if getattr(self, key) not in allowed:
                    raise ValueError(
                        f"lls_two_stage {key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}"
                    )

    def run(self, ctx: TransferContext) -> ProtocolResult:
        from bench.export import load_export  # bench.engine imports methods: load it at run time, not import time

        cfg = self.cfg
        _check_dataset(ctx.dataset)
        backbone, _ = load_export(ctx.export_path)
        keep, train, val, test = _slices(ctx, cfg)
        grid, channels = _feature_grid(backbone, train)
        model = LLSNet(backbone, channels, cfg.patch_hidden)
        size = tuple(train.images.shape[-2:])
        val_score = _val_scorer(model, val, cfg.main_phase, ctx.device)
        s1 = max(1, int(round(cfg.stage1_fraction * ctx.steps)))
        s2 = max(1, ctx.steps - s1)
        heads = [
            {"params": list(model.backbone.parameters())},
            {"params": list(model.head.parameters()), "lr": cfg.lr * cfg.head_lr_scale},
        ]
        t0 = time.time()
        self._stage1(ctx, model, train, keep, heads, s1, val_score)
        self._stage2(ctx, model, train, keep, heads, s2, val_score, grid, size)
        wall = time.time() - t0
        # under torchrun the main process tests and stores; the others return no rows
        rows = _test_rows(ctx, model, test, cfg.main_phase, grid) if distributed.is_main() else []
        n = sum(q.numel() for q in model.parameters())
        return ProtocolResult(
            rows,
            {r["metric"]: r["value"] for r in rows if r["case"] == SET},
            train_wall_s=wall,
            params=n,
            trainable_params=n,
        )

    def _stage1(
        self,
        ctx: TransferContext,
        model: LLSNet,
        train: SliceSet,
        keep: set[tuple[str, int]],
        heads: list[dict[str, Any]],
        steps: int,
        val_score: Callable[[], float] | None,
    ) -> None:
        """Stage 1 (§6.5, NAP): image-level CE on every phase's slice at the kept positions (matched per phase),
        each a separate 1-channel image, training the backbone and the image head; stage 2 starts from the weights
        it selects on val."""
        idx1 = train.at_positions(keep)
        loader1 = torch.utils.data.DataLoader(
            _Batches(train, idx1, ctx.batch_size, ctx.cell.seed, None, None, self.cfg.augment, device=ctx.device),
            batch_size=None,
        )

        def step1(batch: dict[str, torch.Tensor], info: StepInfo) -> StepOutput:
            return _stage1_loss(model, batch)

        self._fit(ctx, model, step1, heads, loader1, steps, "stage1", val_score)

    def _stage2(
        self,
        ctx: TransferContext,
        model: LLSNet,
        train: SliceSet,
        keep: set[tuple[str, int]],
        heads: list[dict[str, Any]],
        steps: int,
        val_score: Callable[[], float] | None,
        grid: tuple[int, int],
        size: tuple[int, int],
    ) -> None:
        """Stage 2 (N): the main-phase slice with its neighbour volume and every loss, from stage 1's selected
        weights; the patch head joins the optimizer only here, where it gets a loss."""
        cfg = self.cfg
        plan = neighbour_plan(cfg.phase_order, cfg.main_phase)
        nb = neighbour_indices(train.items, plan, train.match)
        idx2 = train.where(cfg.main_phase, keep)
        batches = _Batches(
            train,
            idx2,
            ctx.batch_size,
            ctx.cell.seed + 1,
            grid,
            nb,
            cfg.augment,
            cfg.neighbour_augment,
            cfg.supervised_cell,
            device=ctx.device,
        )
        loader2 = torch.utils.data.DataLoader(batches, batch_size=None)

        def step2(batch: dict[str, torch.Tensor], info: StepInfo) -> StepOutput:
            return _stage2_loss(model, batch, cfg, grid, size)

        groups = heads + [{"params": list(model.patch_head.parameters()), "lr": cfg.lr * cfg.head_lr_scale}]
        self._fit(ctx, model, step2, groups, loader2, steps, "stage2", val_score)

    def _fit(self, ctx, model, step_fn, groups, loader, steps, stage, eval_fn) -> None:
        from bench.engine import TrainConfig, fit

        cfg = self.cfg
        every = cfg.eval_every or max(1, steps // (ctx.evaluations or 5))
        tcfg = TrainConfig(
            steps=steps,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=int(cfg.warmup_fraction * steps),
            eval_every=every if eval_fn else 0,
            checkpoint_every=max(1, every),
            log_every=max(1, min(10, steps // 10)),
        )
        fit(
            model,
            step_fn,
            groups,
            loader,
            tcfg,
            ctx.run_dir / stage,
            device=ctx.device,
            eval_fn=eval_fn,
            desc=f"lls_two_stage {stage} {ctx.cell.key}",
            log_prefix=f"transfer/lls_two_stage/{stage}",
            progress=ctx.progress,
        )


def _check_dataset(ds: Any) -> None:
    """Fail before loading anything: the method is defined for binary 2D slices only."""
    if ds.info.task != "binary":
        raise ValueError(f"lls_two_stage needs a binary slice dataset; {ds.registry_name!r} is {ds.info.task}")
    if ds.info.spatial_dims != 2:
        raise ValueError(f"lls_two_stage needs 2D slices; {ds.registry_name!r} is {ds.info.spatial_dims}D")


def _slices(ctx: TransferContext, cfg: Any) -> tuple[set[tuple[str, int]], SliceSet, SliceSet | None, SliceSet]:
    """The train (patient, z) positions to use and the three splits' slices. Whole patients' volumes are loaded,
    kept positions or not, because a kept slice's neighbours may be slices that were not kept."""
    ds = ctx.dataset
    recs = ds.records("train")
    kept = set(subsample([r.id for r in recs], ctx.cell.label_fraction, ctx.cell.draw))
    keep = {(r.patient_id, r.meta["slice"]) for r in recs if r.id in kept}
    train_p = sorted({p for p, _ in keep})
    val_p = sorted({r.patient_id for r in ds.records("val")})
    test_p = sorted({r.patient_id for r in ds.records("test")})
    train = SliceSet(ctx, train_p, cfg.phase_order, cfg.main_phase)
    val = SliceSet(ctx, val_p, cfg.phase_order, cfg.main_phase) if val_p else None
    test = SliceSet(ctx, test_p, cfg.phase_order, cfg.main_phase)
    if cfg.paper_sampling:
        keep = paper_positions(ds, train_p, keep, ctx.cell.seed)
    return keep, train, val, test


def _feature_grid(backbone: nn.Module, train: SliceSet) -> tuple[tuple[int, int], int]:
    """The last feature map's (h, w) and channels, read off one slice: the patch head and the lesion cells are
    sized by them, whatever the backbone. In eval mode, so that no BatchNorm statistic moves."""
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        fmap = last_map(backbone.encode(train.images[:1]))
        backbone.train(was)
    return tuple(fmap.shape[-2:]), fmap.shape[1]


@torch.no_grad()
def _predict(
    model: LLSNet, data: SliceSet, idx: list[int], device: torch.device, with_cells: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Lesion probabilities (and argmax cells) in chunks of 32 slices; restores the model's mode, since validation
    runs in the middle of training."""
    was = model.training
    model.eval()
    probs, cells = [], []
    for s in range(0, len(idx), 32):
        x = data.images[idx[s : s + 32]].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            probs.append(model.image_logits(x).float().softmax(1)[:, 1].cpu())
            if with_cells:
                cells.append(argmax_cells(model.patch_logits(x).float().softmax(1)).cpu())
    model.train(was)
    return torch.cat(probs).numpy(), (torch.cat(cells).numpy() if with_cells else None)


def _val_scorer(
    model: LLSNet, val: SliceSet | None, main_phase: str, device: torch.device
) -> Callable[[], float] | None:
    """Model selection on the val main-phase slices' AUROC (None: no val slices, no selection). An undefined
    AUROC (one class only) scores -1, below any real one."""
    val_idx = val.where(main_phase) if val is not None else []
    if not val_idx:
        return None

    def val_score() -> float:
        p, _ = _predict(model, val, val_idx, device, with_cells=False)
        s = metrics.auroc(p, val.y[val_idx].numpy())
        return -1.0 if np.isnan(s) else s

    return val_score


def _stage1_loss(model: LLSNet, batch: dict[str, torch.Tensor]) -> StepOutput:
    """Stage 1's image-level CE (the patch head is outside its graph and its optimizer)."""
    return StepOutput(F.cross_entropy(model.image_logits(batch["x"]).float(), batch["y"]))


def _stage2_loss(
    model: LLSNet, batch: dict[str, torch.Tensor], cfg: Any, grid: tuple[int, int], size: tuple[int, int]
) -> StepOutput:
    """Stage 2's ``w_cls * L_cls + w_con * (L_patch + L_tm) + w_loop * L_loop``; the location terms need a lesion,
    so they are 0 on a batch without positives."""
    x, y = batch["x"], batch["y"]
    logits = model.image_logits(x).float()
    l_cls = F.cross_entropy(logits, y)
    patch = model.patch_logits(x).float()
    l_patch = patch_loss(patch, y, batch["cell"], cfg.annotation_ratio)
    pos = y == 1
    zero = logits.sum() * 0.0
    l_tm, l_loop = zero, zero
    if pos.any():
        p_main = patch[pos].softmax(1)
        l_tm = _neighbour_consistency(model, batch, pos, p_main, cfg)
        masked = x[pos] * loopback_mask(argmax_cells(p_main), grid, size).to(x.dtype)
        l_loop = F.cross_entropy(
            model.image_logits(masked).float(), torch.zeros(int(pos.sum()), dtype=torch.long, device=x.device)
        )
    loss = cfg.w_cls * l_cls + cfg.w_con * (l_patch + l_tm) + cfg.w_loop * l_loop
    return StepOutput(
        loss, {"l_cls": l_cls.detach(), "l_patch": l_patch.detach(), "l_tm": l_tm.detach(), "l_loop": l_loop.detach()}
    )


def _neighbour_consistency(
    model: LLSNet, batch: dict[str, torch.Tensor], pos: torch.Tensor, p_main: torch.Tensor, cfg: Any
) -> torch.Tensor:
    """L_tm of the positives. Only the neighbours that exist go through the model, in one batch: a missing one
    (a zero image) costs no compute, its map stays 0 and ``location_consistency`` leaves it out of the mean."""
    nbx = batch["nb"][pos]  # [n, K, 1, h, w]
    valid = batch["nb_valid"][pos]
    n, k = valid.shape
    flat = nbx.flatten(0, 1)
    use = valid.flatten()
    p_nb = torch.zeros((n * k, 2, *p_main.shape[-2:]), device=batch["x"].device)
    if use.any():
        p_nb[use] = model.patch_logits(flat[use]).float().softmax(1)
    return location_consistency(p_main, p_nb.view(n, k, 2, *p_main.shape[-2:]), valid, cfg.loose_radius, cfg.eps)


def _test_rows(
    ctx: TransferContext, model: LLSNet, test: SliceSet, main_phase: str, grid: tuple[int, int]
) -> list[dict[str, Any]]:
    """The §6.6 evaluation on the test split's main-phase slices, with each slice's record id, so that a leaderboard
    can resample these slices as it does other protocols' images."""
    test_idx = test.where(main_phase)
    p, cells = _predict(model, test, test_idx, ctx.device)
    rid = {(r.patient_id, r.meta["slice"]): r.id for r in ctx.dataset.records("test")}
    ids = [rid[(test.items[i][0], test.items[i][2])] for i in test_idx]
    return evaluate(
        p,
        cells,
        [test.items[i][0] for i in test_idx],
        test.y[test_idx].numpy(),
        [test.boxes[i] for i in test_idx],
        grid,
        ids=ids,
    )


def evaluate(
    probs: np.ndarray,
    cells: np.ndarray,
    patients: list[str],
    y: np.ndarray,
    boxes: list[Any],
    grid: tuple[int, int],
    ids: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Set-level rows: slice AUROC and accuracy, patient AUROC, localisation accuracy (undefined ones left out);
    with ``ids`` (the test slices, in row order) also each slice's lesion probability and label (class 1, the
    positive class, as the binary classification protocols store it)."""
    out = {"auroc": metrics.auroc(probs, y), "accuracy": metrics.accuracy((probs >= 0.5).astype(int), y)}
    pids = sorted(set(patients))
    pat = np.asarray(patients)
    score = np.array([(probs[pat == p] >= 0.5).sum() + 0.5 * probs[pat == p].mean() for p in pids])
    truth = np.array([int(y[pat == p].max()) for p in pids])
    out["patient_auroc"] = metrics.auroc(score, truth)
    hits = []
    for (i, j), box, lab in zip(cells, boxes, y):
        if lab and box is not None:
            r0, c0, r1, c1 = box
            hits.append(i / grid[0] < r1 and (i + 1) / grid[0] > r0 and j / grid[1] < c1 and (j + 1) / grid[1] > c0)
    out["loc_acc"] = float(np.mean(hits)) if hits else float("nan")
    rows = [{"case": SET, "class": OVERALL, "metric": m, "value": float(v)} for m, v in out.items() if not np.isnan(v)]
    if ids is not None:
        rows += prediction_rows(ids, probs, y, 1)
    return rows
