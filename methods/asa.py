"""``asa``: anatomical consistency, sub-volume spatial relationships and fine-grained appearance (ASA).

Recipe (shared/METHODS.md §1; [P] paper, [V] official code, [I] harness choice):

- No random cropping [V]: the whole preprocessed volume is resized (anisotropically) to the phase-1 size ``R``
  and to the phase-2 size ``P``. Sub-volume = ``patch_size`` = 16 voxels = the stride of hs[3], so one hs[3] token
  is one sub-volume; ``P = ceil(R * phase2_scale / patch) * patch``, crop corners in {0, patch, ..., P - R}.
  ``R`` is ``roi`` when set, else the budget's ROI (``sample["roi"]``):
  * paper geometry [V] (``roi=[128, 128, 128]``, set for ``budget=paper`` in conf/method/asa.yaml): 128^3
    volume, 8^3 grid of 16^3 sub-volumes, phase 2 at 160^3, corners {0, 16, 32} (6-8 overlap tokens per axis);
  * quick scaling [I] (``roi=null`` at ``budget=quick``: the budget's 64^3): 64^3 volume, 4^3 grid of the same
    16^3 sub-volumes, phase 2 at 80^3, corners {0, 16} (3-4 overlap tokens per axis). ``budget=standard`` (96^3)
    gives a 6^3 grid and phase 2 at 128^3.
  The sub-volume side stays 16 at every budget (it is tied to the hs[3] stride); only the grid shrinks.
  ``patch_size=32`` switches to hs[4], as the code does [V] (unused in the paper).
- Phase 1 [P][V]: "a CT image is divided into sub-volumes whose order is distorted ... before being fed into the
  student model. The model is then trained to predict the original sub-volume order ... and to recover the
  volume's original appearance". A uniform random permutation pi of all grid cells; ``aug_image`` cell p holds
  the original cell pi(p); target of token p is pi(p) = (z, y, x), min-max normalised to [-3, 3]
  (c -> 6c/(g-1) - 3) [V]. hs[3] tokens flattened (D, H, W) row-major are in cell order.
  * L_vop: MSE(order head(hs[3] tokens), targets); order head Linear C->C, ReLU, C->C, ReLU, C->3 [V];
  * L_var: MSE(1-channel conv(decoder(aug_image)), original volume) [V];
  * L_g: MSE between L2-normalised global embeddings: student(aug_image) vs teacher(x), projector on the mean
    hs[3] token, C -> D -> D -> D (LN + ReLU between, last without bias), D = ``global_dim`` = 8192 [V];
  * L_phase1 = lambda_order L_vop + lambda_recovery L_var + lambda_global L_g, all weights 1 [V].
- Phase 2 [P][V]: "the CT image is upsampled and cropped into two spatially related (overlapped) views". Two
  grid-aligned crops C1, C2 of the phase-2 volume; student and teacher both see both crops.
  * L_g = MSE(g1_s, g2_t) + MSE(g2_s, g1_t) on L2-normalised global embeddings (a sum, as coded) [V];
  * L_l = 1/2 [MSE(l1_s[m1], l2_t[m2]) + MSE(l1_t[m1], l2_s[m2])] on the overlap tokens; the k-th overlap token
    of C1 and of C2 cover the same voxels; local projector C -> 512 -> 512 -> 512 (LN + ReLU between, last
    without bias) [V];
  * L_phase2 = (lambda_global L_g + lambda_local L_l) / 2 [V].
- Alternation [P][V]: "the model alternates between these two learning phases". The code runs, every epoch,
  one pass of the phase-1 loader and then one pass of the phase-2 loader over the same image list, each
  ``DataLoader(batch_size, drop_last=True)``: a phase block is one corpus epoch = floor(corpus / batch) optimizer
  steps (AMOS: 240 // 12 = 20). ``phase_steps=0`` (default) reproduces that: the block is computed from the
  corpus size and the volumes per optimizer step that the harness passes to ``bind_corpus`` before training,
  never from the loader's own epoch length (the harness loader's ``samples`` is an arbitrary re-iteration
  length). A positive ``phase_steps`` fixes the block instead. The phase is a pure function of the optimizer
  step (``phase_of``), so resume and gradient accumulation see the same phase [I]. Until a corpus is bound
  (a direct call of ``training_step``, or a runner that does not call ``bind_corpus``) the block is the paper's
  AMOS epoch, 20 steps, with a one-time warning; the block in use is logged as ``phase_block``.
- Teacher [P][V]: an EMA copy of the student backbone and both projectors, updated after every optimizer step in
  both phases, momentum cosine 0.999 -> 1 over the whole run (DINO's ``cosine_scheduler``) [V]. "Once trained,
  the teacher model is transferred" [P]: ``export_encoder`` returns the teacher backbone (encoder + decoder).
- Optimiser [V] (conf/method/asa.yaml): SGD lr 1e-3, momentum 0.9, weight decay 0, no clipping, 5 warmup epochs
  of 1000 (warmup_fraction 0.005), cosine; batch 12 (4 GPUs, DataParallel). The lr is not rescaled with the batch
  (the code has no scaling rule): ``budget=paper`` runs the code's batch 12 at the code's lr
  (conf/method_budget/asa_paper.yaml sets ``budget.pretrain.batch_size: 12``, a global batch split over torchrun
  processes); the smaller budgets run batch 2 at the same lr. Batch 12 at 128^3 on swin_unetr_base needs several
  GPUs (phase 2 peaked at 34 GiB at batch 2, see Cost: about 16 GiB per volume, so ~190 GiB at 12, estimated);
  on one GPU ``budget.pretrain.batch_size=2 +method.train.accumulate=6`` gives the same 12 volumes per optimizer
  step (and the same phase block).
- Stochastic depth [V]: the code builds student and teacher with ``dropout_path_rate=0.1`` (linear in depth);
  ``drop_path_rate`` sets it on the student only (``Backbone.set_drop_path``: no weight or export change), 0.1 at
  ``budget=paper``; 0 at the smaller budgets (unchanged: a regulariser for the paper's long run, not measured
  over a few hundred steps). The teacher never has it (see Teacher below).

Choices where paper and code differ, or where neither says (each a flag, default first):

- ``teacher_input="original"``: phase-1 teacher sees the un-permuted volume, as the paper says (Fig. 2 and
  ablation S10). ``"permuted"``: the released code feeds the teacher the same ``aug_image`` as the student.
- ``normalize_local=False``: local embeddings are not L2-normalised, as coded. The paper says the local loss is
  "the l2 distance between two normalized ... sub-volume embedding": ``True``.
- ``phase_steps=0``: one corpus epoch per phase block, as the code (see Alternation); ``N > 0``: N steps.
- ``roi=null``: the budget's ROI (quick scaling); ``[128, 128, 128]``: the paper's geometry (see above).
- ``resize_mode="trilinear"`` [I]: the code's MONAI ``Resized`` uses its default ``"area"``; set
  ``resize_mode=area`` to reproduce it.
- Phase 2 "updates only the student's encoder" [P]: phase 2 never runs the decoder, the restoration conv or the
  order head, so their ``.grad`` stays None (the engine zeroes with ``set_to_none``) and torch optimizers skip
  them entirely: no update and no stale-momentum drift. The same holds for the last Swin stage (hs[4] feeds only
  the decoder). Likewise the local projector is untouched in phase 1.
  No ``requires_grad`` is toggled, so no freeze flag is needed.
- The teacher is kept in eval mode and has its stochastic depth removed (``drop_path_rate`` is the student's
  only), as the code's teacher runs after the first validation (epoch 1, when ``test`` puts it in eval mode for
  good; during epoch 1 the code's teacher still drops paths); the code's EMA also covers the order head, which
  the teacher never uses: it is not kept here.
- Random draws (permutation, crop corners) are made in ``views`` from the loader's per-sample generator (cheap
  numpy in workers); the heavy work (cell gather, crops, overlap masks) runs on the device in
  ``training_step``. ``views`` returns both phases' inputs for every sample because it does not know the step.
- Precision [I]: the code trains in fp32 (a NativeScaler without autocast). The harness's bf16 autocast on CUDA
  still runs the backbone, but the projectors and every loss run in fp32: the global loss starts at ~1e-8..1e-7
  ((2 - 2cos)/8192); on an H100 (base, 128^3) bf16 projectors moved it 8% off the all-fp32 value, fp32 ones 2%.

Cost (measured; forward + backward, batch 2). CPU, swin_unetr_tiny, ROI 64^3, 2 threads of an idle Xeon: phase 1
6.3 s, phase 2 10.2 s (simmim3d 5.0 s); with ``global_dim=256`` 6.9 s / 9.2 s, so the 8192-wide heads cost no
measurable time: phase 2 is slower because it runs the encoder four times (student and teacher, both crops).
They cost memory: 2 x 135M parameters (student + teacher) plus gradients and SGD momentum, ~2.2 GB fp32 whatever
the backbone. ``global_dim`` is never reduced automatically. H100, swin_unetr_base, ROI 128^3 (phase 2 160^3),
bf16: ~0.31 s per step in both phases, peak 23 GiB (phase 1) / 34 GiB (phase 2). The step-cost benchmark
``python -m bench.tools.method_cost --methods asa --set asa.phase_steps=1`` times both phases; its figures are in
docs/methods.md.

- [0]: Pang et al., ASA: Learning Anatomical Consistency, Sub-volume Spatial Relationships and Fine-grained
  Appearance for CT Images, MICCAI 2024, pp. 91-101
- [1]: Pang et al., POPAR: Patch Order Prediction and Appearance Recovery for Self-supervised Medical Image
  Analysis, MICCAI DART 2022
- [2]: Caron et al., Emerging Properties in Self-Supervised Vision Transformers (DINO), ICCV 2021 (projector
  pattern and momentum schedule)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import SwinUNETRBackbone
from bench.registry import METHODS
from methods.base import PretrainMethod, StepInfo, StepOutput, make_teacher

TEACHER_INPUTS = ("original", "permuted")
#: the code's phase block for the paper's corpus: AMOS 240 training volumes // batch 12 (drop_last) [V]
PAPER_EPOCH_STEPS = 240 // 12
RESIZE_MODES = ("trilinear", "area", "nearest")


# --- geometry (pure functions, unit-tested) ----------------------------------------------------------------
def grid_shape(roi: Sequence[int], patch: int) -> tuple[int, ...]:
    """Cells per axis; the ROI must tile exactly into sub-volumes of side ``patch``."""
    if any(r % patch for r in roi):
        raise ValueError(f"asa: ROI {tuple(roi)} must be divisible by patch_size={patch}")
    return tuple(r // patch for r in roi)


def phase2_shape(roi: Sequence[int], patch: int, scale: float) -> tuple[int, ...]:
    """Side of the phase-2 volume: ROI * scale rounded up to whole sub-volumes (128 -> 160, 64 -> 80)."""
    return tuple(max(r, math.ceil(r * scale / patch - 1e-9) * patch) for r in roi)


def to_cells(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, D, H, W] -> [B, n, C, p, p, p], cells in (D, H, W) row-major order."""
    b, c, *spatial = x.shape
    gd, gh, gw = grid_shape(spatial, patch)
    x = x.reshape(b, c, gd, patch, gh, patch, gw, patch).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, gd * gh * gw, c, patch, patch, patch)


def from_cells(cells: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`to_cells`."""
    b, n, c, p = cells.shape[:4]
    gd, gh, gw = grid
    x = cells.reshape(b, gd, gh, gw, c, p, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, c, gd * p, gh * p, gw * p)


def permute_cells(x: torch.Tensor, perm: torch.Tensor, patch: int) -> torch.Tensor:
    """``aug`` with cell p = cell ``perm[b, p]`` of ``x`` (perm: [B, n] indices into the row-major grid)."""
    cells = to_cells(x, patch)
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    return from_cells(cells[rows, perm], grid_shape(x.shape[2:], patch))


def coord_targets(perm: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Source (z, y, x) of every cell, min-max normalised over all numbers to [-3, 3]: c -> 6c/(g-1) - 3."""
    gd, gh, gw = grid
    z, y, x = perm // (gh * gw), (perm // gw) % gh, perm % gw
    c = torch.stack([z, y, x], dim=-1).float()
    top = max(grid) - 1
    if top < 1:
        raise ValueError(f"asa: the sub-volume grid {tuple(grid)} needs at least 2 cells along an axis")
    return 6.0 * c / top - 3.0


def targets_to_index(targets: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`coord_targets`: normalised coordinates -> row-major cell indices."""
    c = torch.round((targets + 3.0) * (max(grid) - 1) / 6.0).long()
    return (c[..., 0] * grid[1] + c[..., 1]) * grid[2] + c[..., 2]


def unpermute_cells(aug: torch.Tensor, targets: torch.Tensor, patch: int) -> torch.Tensor:
    """Put every cell of ``aug`` back where its target coordinate says it came from."""
    grid = grid_shape(aug.shape[2:], patch)
    src = targets_to_index(targets, grid)
    cells = to_cells(aug, patch)
    out = torch.empty_like(cells)
    rows = torch.arange(aug.shape[0], device=aug.device)[:, None]
    out[rows, src] = cells
    return from_cells(out, grid)


def tokens(feature: torch.Tensor) -> torch.Tensor:
    """[B, C, D, H, W] stage feature -> [B, D*H*W, C], tokens in (D, H, W) row-major = cell order."""
    return feature.flatten(2).transpose(1, 2)


def crop(volume: torch.Tensor, corners: torch.Tensor, roi: Sequence[int]) -> torch.Tensor:
    """Per-sample crops: volume [B, C, *P], corners [B, 3] voxel offsets -> [B, C, *roi]."""
    out = []
    for v, (z, y, x) in zip(volume, corners.tolist()):
        out.append(v[:, z : z + roi[0], y : y + roi[1], x : x + roi[2]])
    return torch.stack(out)


def overlap_masks(
    corners1: torch.Tensor, corners2: torch.Tensor, grid: Sequence[int], patch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean [B, n] masks of the tokens of crop 1 / crop 2 that lie in both crops.

    Both crops are aligned to the sub-volume grid, so selecting the True entries in row-major order pairs the
    k-th overlap token of crop 1 with the k-th of crop 2: the same sub-volume of the phase-2 volume.
    """
    if bool((corners1 % patch).any()) or bool((corners2 % patch).any()):
        raise ValueError("asa: crop corners must be multiples of patch_size")
    t1, t2 = corners1 // patch, corners2 // patch
    per_axis1, per_axis2 = [], []
    for ax, g in enumerate(grid):
        i = torch.arange(g, device=corners1.device)
        a, b = t1[:, ax, None], t2[:, ax, None]
        per_axis1.append((a + i >= b) & (a + i < b + g))
        per_axis2.append((b + i >= a) & (b + i < a + g))

    def outer(m: list[torch.Tensor]) -> torch.Tensor:
        return (m[0][:, :, None, None] & m[1][:, None, :, None] & m[2][:, None, None, :]).flatten(1)

    return outer(per_axis1), outer(per_axis2)


def normalized_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MSE between L2-normalised rows: mean over rows of (2 - 2 cos) / D."""
    return F.mse_loss(F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1))


def phase1_losses(
    order: torch.Tensor,
    target: torch.Tensor,
    restored: torch.Tensor,
    image: torch.Tensor,
    g_s: torch.Tensor,
    g_t: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """L_vop (coordinates), L_var (appearance), L_g (global consistency), each an MSE with mean reduction."""
    return {
        "order": F.mse_loss(order.float(), target.float()),
        "recovery": F.mse_loss(restored.float(), image.float()),
        "global": normalized_mse(g_s, g_t),
    }


def phase2_losses(
    g_s: torch.Tensor,
    g_t: torch.Tensor,
    l_s: torch.Tensor,
    l_t: torch.Tensor,
    m1: torch.Tensor,
    m2: torch.Tensor,
    normalize_local: bool,
) -> dict[str, torch.Tensor]:
    """Symmetrised global and local consistency. Inputs stack crop 1 then crop 2 along the batch:
    g_* [2B, D], l_* [2B, n, d]; m1, m2 [B, n] overlap masks of crop 1 and crop 2."""
    b = m1.shape[0]
    l_g = normalized_mse(g_s[:b], g_t[b:]) + normalized_mse(g_s[b:], g_t[:b])
    a1_s, a2_s, a1_t, a2_t = l_s[:b][m1], l_s[b:][m2], l_t[:b][m1], l_t[b:][m2]  # [N_overlap, d], matched rows
    dist = normalized_mse if normalize_local else (lambda a, c: F.mse_loss(a.float(), c.float()))
    return {"global": l_g, "local": 0.5 * (dist(a1_s, a2_t) + dist(a1_t, a2_s))}


def projector(in_dim: int, dim: int) -> nn.Sequential:
    """in -> dim -> dim -> dim, LayerNorm + ReLU between, last layer without bias (ASA's ``MLP``)."""
    return nn.Sequential(
        nn.Linear(in_dim, dim),
        nn.LayerNorm(dim),
        nn.ReLU(inplace=True),
        nn.Linear(dim, dim),
        nn.LayerNorm(dim),
        nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False),
    )


def project(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a projector in fp32 even under autocast (the code is fp32; the global loss is ~1e-8 at the start,
    where bf16 projectors add ~8% error); on a GPU these heads cost next to nothing."""
    with torch.autocast(x.device.type, enabled=False):
        return head(x.float())


def resize(image: np.ndarray, size: Sequence[int], mode: str) -> torch.Tensor:
    """[C, *S] numpy -> [C, *size] float32 tensor, every axis resized independently (anisotropic)."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    kw = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(t, size=tuple(size), mode=mode, **kw)[0].contiguous()


@METHODS.register("asa", tags=("3d",))
class ASA(PretrainMethod):
    @dataclass
    class Config:
        patch_size: int = 16  # sub-volume side = stride of the token stage (16 -> hs[3], 32 -> hs[4])
        phase2_scale: float = 1.25  # phase-2 side = ceil(ROI * scale / patch) * patch (128 -> 160)
        roi: tuple[int, int, int] | None = None  # phase-1 volume; None: the budget's ROI; paper: 128^3
        phase_steps: int = 0  # optimizer steps per phase block; 0: one corpus epoch (the code)
        teacher_input: str = "original"  # phase-1 teacher input: original (paper) | permuted (code)
        normalize_local: bool = False  # False: code; True: paper ("normalized" local embeddings)
        global_dim: int = 8192  # global projector width (hidden and output)
        local_dim: int = 512  # local projector width (hidden and output)
        lambda_order: float = 1.0
        lambda_recovery: float = 1.0
        lambda_global: float = 1.0
        lambda_local: float = 1.0
        ema_momentum: float = 0.999  # teacher momentum at the start ...
        ema_momentum_end: float = 1.0  # ... cosine to this at the end
        resize_mode: str = "trilinear"  # whole-volume resize; the code's MONAI Resized default is "area"
        drop_path_rate: float = 0.0  # the student's stochastic depth (linear in depth); code: 0.1 (budget=paper)

    capabilities: ClassVar[frozenset[str]] = frozenset({"3d", "ema"})

    def __init__(self, backbone: SwinUNETRBackbone, cfg: Config | None = None) -> None:
        super().__init__(backbone, cfg)
        cfg = self.cfg
        if cfg.teacher_input not in TEACHER_INPUTS:
            raise ValueError(f"asa: teacher_input must be one of {TEACHER_INPUTS}, got {cfg.teacher_input!r}")
        if cfg.resize_mode not in RESIZE_MODES:
            raise ValueError(f"asa: resize_mode must be one of {RESIZE_MODES}, got {cfg.resize_mode!r}")
        if cfg.phase_steps < 0:
            raise ValueError(f"asa: phase_steps must be >= 0 (0: one corpus epoch), got {cfg.phase_steps}")
        if cfg.roi is not None:
            if len(cfg.roi) != 3 or min(cfg.roi) < 1:
                raise ValueError(f"asa: roi must be three positive sides or null, got {list(cfg.roi)}")
            grid_shape(cfg.roi, cfg.patch_size)
        if cfg.phase2_scale < 1:
            raise ValueError(f"asa: phase2_scale must be >= 1, got {cfg.phase2_scale}")
        stage = int(math.log2(cfg.patch_size)) - 1  # Swin UNETR: hs[k] has stride 2^(k+1)
        if cfg.patch_size != 2 ** (stage + 1) or not 0 <= stage < len(backbone.stage_channels):
            top = 2 ** len(backbone.stage_channels)
            raise ValueError(f"asa: patch_size must be the stride of a Swin stage (2..{top}), got {cfg.patch_size}")
        self.stage = stage
        backbone.set_drop_path(cfg.drop_path_rate)
        width = backbone.stage_channels[stage]  # 8 * feature_size for hs[3]: 384 at feature_size 48
        self.order_head = nn.Sequential(
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, 3),
        )
        self.recovery_head = nn.Conv3d(backbone.decoder_channels, backbone.in_channels, kernel_size=1)
        self.proj_global = projector(width, cfg.global_dim)
        self.proj_local = projector(width, cfg.local_dim)
        self.teacher = nn.ModuleDict(
            {
                "backbone": make_teacher(backbone),
                "proj_global": make_teacher(self.proj_global),
                "proj_local": make_teacher(self.proj_local),
            }
        )
        # the deep copy carries the student's stochastic depth: the teacher must run the whole network
        self.teacher["backbone"].set_drop_path(0.0)
        self.teacher.eval()
        self.epoch_steps: int | None = None  # set by bind_corpus
        self._warned = False

    # --- schedule --------------------------------------------------------------------------------------------
    def bind_corpus(self, n_volumes: int, batch_size: int) -> None:
        """Told by the harness before training: corpus volumes and volumes per optimizer step (batch x
        accumulation). One corpus epoch = floor(n_volumes / batch_size) steps, the code's drop_last loader."""
        if n_volumes < 1 or batch_size < 1:
            raise ValueError(
                f"asa: bind_corpus needs n_volumes >= 1 and batch_size >= 1; got {n_volumes}, {batch_size}"
            )
        self.epoch_steps = max(1, n_volumes // batch_size)

    def phase_block(self) -> int:
        """Optimizer steps per phase block (see the module docstring, Alternation)."""
        if self.cfg.phase_steps:
            return self.cfg.phase_steps
        if self.epoch_steps is not None:
            return self.epoch_steps
        if not self._warned:
            warnings.warn(
                f"asa: phase_steps=0 (one corpus epoch) but no corpus was bound (bind_corpus); using the "
                f"paper's AMOS epoch of {PAPER_EPOCH_STEPS} steps",
                stacklevel=2,
            )
            self._warned = True
        return PAPER_EPOCH_STEPS

    def phase_of(self, step: int) -> int:
        """1 or 2: blocks of ``phase_block()`` optimizer steps, phase 1 first (a pure function of the step)."""
        return 1 + (step // self.phase_block()) % 2

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.backbone, self.teacher["backbone"]),
            (self.proj_global, self.teacher["proj_global"]),
            (self.proj_local, self.teacher["proj_local"]),
        ]

    def ema_momentum(self, progress: float) -> float:
        base, end = self.cfg.ema_momentum, self.cfg.ema_momentum_end
        return end + (base - end) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    def export_encoder(self) -> nn.Module:
        return self.teacher["backbone"]

    def train(self, mode: bool = True) -> ASA:
        super().train(mode)
        self.teacher.eval()  # the teacher never uses stochastic depth
        return self

    # --- data side -------------------------------------------------------------------------------------------
    def views(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Whole volume resized to the ROI (phase 1) and to the phase-2 size; the random draws of both phases."""
        cfg = self.cfg
        roi = tuple(int(r) for r in (sample["roi"] if cfg.roi is None else cfg.roi))
        grid = grid_shape(roi, cfg.patch_size)
        p2 = phase2_shape(roi, cfg.patch_size, cfg.phase2_scale)
        image = sample["image"]
        top = [(p - r) // cfg.patch_size for p, r in zip(p2, roi)]
        corners = np.stack([rng.integers(0, np.asarray(top) + 1) for _ in range(2)]) * cfg.patch_size
        return {
            "image": resize(image, roi, cfg.resize_mode),
            "image_p2": resize(image, p2, cfg.resize_mode),
            "perm": torch.from_numpy(rng.permutation(math.prod(grid)).astype(np.int64)),
            "corners": torch.from_numpy(corners.astype(np.int64)),
        }

    # --- networks --------------------------------------------------------------------------------------------
    def _tokens(self, hs: list[torch.Tensor], grid: Sequence[int]) -> torch.Tensor:
        feat = hs[self.stage]
        if tuple(feat.shape[2:]) != tuple(grid):
            raise RuntimeError(f"asa: hs[{self.stage}] grid {tuple(feat.shape[2:])} != sub-volume grid {tuple(grid)}")
        return tokens(feat)

    # --- losses ----------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> StepOutput:
        phase = self.phase_of(step.step)
        loss, logs = self._phase1(batch) if phase == 1 else self._phase2(batch)
        logs["phase"] = float(phase)
        logs["phase_block"] = float(self.phase_block())
        return StepOutput(loss, logs)

    def _phase1(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.cfg
        x = batch["image"]
        grid = grid_shape(x.shape[2:], cfg.patch_size)
        perm = batch["perm"].long()
        aug = permute_cells(x, perm, cfg.patch_size)
        target = coord_targets(perm, grid)

        hs = self.backbone.encode(aug)
        tok = self._tokens(hs, grid)
        order = self.order_head(tok)
        restored = self.recovery_head(self.backbone.decode(aug, hs))
        g_s = project(self.proj_global, tok.mean(1))
        with torch.no_grad():
            t_in = x if cfg.teacher_input == "original" else aug
            t_tok = self._tokens(self.teacher["backbone"].encode(t_in), grid)
            g_t = project(self.teacher["proj_global"], t_tok.mean(1))

        parts = phase1_losses(order, target, restored, x, g_s, g_t)
        loss = (
            cfg.lambda_order * parts["order"]
            + cfg.lambda_recovery * parts["recovery"]
            + cfg.lambda_global * parts["global"]
        )
        return loss, {f"p1_{k}": v.detach() for k, v in parts.items()}

    def _phase2(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.cfg
        vol, corners = batch["image_p2"], batch["corners"].long()
        roi = tuple(batch["image"].shape[2:])
        grid = grid_shape(roi, cfg.patch_size)
        both = torch.cat([crop(vol, corners[:, 0], roi), crop(vol, corners[:, 1], roi)])  # [2B, C, *roi]
        m1, m2 = overlap_masks(corners[:, 0], corners[:, 1], grid, cfg.patch_size)

        tok = self._tokens(self.backbone.encode(both), grid)
        g_s, l_s = project(self.proj_global, tok.mean(1)), project(self.proj_local, tok)
        with torch.no_grad():
            t_tok = self._tokens(self.teacher["backbone"].encode(both), grid)
            g_t = project(self.teacher["proj_global"], t_tok.mean(1))
            l_t = project(self.teacher["proj_local"], t_tok)

        parts = phase2_losses(g_s, g_t, l_s, l_t, m1, m2, cfg.normalize_local)
        loss = (cfg.lambda_global * parts["global"] + cfg.lambda_local * parts["local"]) / 2
        logs = {f"p2_{k}": v.detach() for k, v in parts.items()}
        return loss, logs | {"p2_overlap_fraction": m1.float().mean().detach()}
