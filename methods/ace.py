"""``ace``: anatomically consistent embeddings by composition and decomposition (ACE, WACV 2025; METHODS.md §5).

Recipe ([P] paper, [V] official code ``jlianglab/ACE``, [I] harness choice):

- Geometry [V] (``crop-comp-decomp.py``, ``ACE_v2/crop.py::PatchCrop(k=l=2)``, ``get_corresponding_indices_comp``).
  The released crop code is inconsistent (``transforms.py`` calls ``img_transforms(multi_scale=...)`` and expects
  five values, ``crop.py::img_transforms()`` takes no argument and returns four), so the paper's geometry is
  implemented from the three pieces that agree: both crops are fed at ``input_size`` px and the backbone's last map
  is a G x G token grid, G = input_size / token_stride. A *cell* is one token of the small crop (token_stride px).
  The image is RandomResizedCrop'ed (scale 0.85-1, bicubic) to a canvas of ``2G + margin_cells`` cells; the *large*
  crop C_L is 2G x 2G cells with top-left cell (x1, y1) in {0..margin}^2, resized to input_size, so each of its
  tokens covers 2 x 2 cells; the *small* crop C_S is G x G cells (no resize) with top-left (x2, y2) on the same
  parity as (x1, y1), so every large-crop token in the overlap covers exactly 4 small-crop tokens. The overlap is
  never empty [I] (draws of (x2, y2) are restricted to the ones that overlap).
  * paper geometry: ``input_size=448`` on ``swin_base_2d`` (stride 32): G = 14, canvas 32 cells = 1024 px, large
    crop 896 px -> 448, small crop 448 px, (x1, y1) in {0..4}^2 (conf/method_budget/ace_paper.yaml;
    ``vit_base_2d`` at 224 px gives the same 14 x 14 token grid);
  * quick scaling [I]: ``input_size=null`` = the budget's 2D image size, e.g. 128 px on ``vit_tiny_2d`` (patch 16):
    G = 8, canvas 20 cells = 320 px. The 4-to-1 token correspondence is exact at every size; a size that is not a
    multiple of 2 x token_stride raises a ValueError naming ``input_size``.
  Paper naming: C1 = small crop, C2 = large crop; the code's ``crop1`` is the large one. Names here are L / S.
- Per-crop appearance augmentation [V], no flip or rotation (correspondence must hold): brightness/contrast p 0.5
  (+-0.2), Gaussian blur p 0.5 (kernel 3-7), sharpen p 0.3 (alpha 0.2-0.5, lightness 0.5-1), then normalisation
  with mean 0.5056 / std 0.252. CLAHE (p 0.3 in the code) is not reproduced: neither OpenCV nor scikit-image is a
  dependency of the harness [I].
- Global consistency [V]: final tokens averaged over each crop's overlap mask -> DINO head (lightly
  ``DINOProjectionHead``: D -> 2048 -> 2048 -> 256, L2 norm, weight-normalised 256 -> 65536, norm_last_layer)
  -> L_global = 1/2 [CE(P_t(L), log P_s(S)) + CE(P_t(S), log P_s(L))], P_t = softmax((h_t - c) / 0.04),
  log P_s = log_softmax(h_s / 0.1). The centre c is updated (momentum 0.9) with the mean of *all* teacher outputs,
  overlap and non-overlap poolings [V], which is why lightly's DINOLoss (centre from the compared outputs only) is
  not used. ``global_input="cls"`` feeds the CLS token instead, as the code does for ViT [V/I].
- Local consistency [V]: dense head 3 x [1x1 conv + BN + ReLU] then per-token L2 norm (student and teacher);
  student-only decompose (Linear D->4D no bias, LN, ReLU, Linear 4D->4D, 2x2 depth-to-space, row-major) and
  compose (2x2 unfold -> Linear 4D->D no bias, LN, ReLU, Linear D->D), not re-normalised. logits_dec =
  s D_t(S) U_s(L)^T [G^2 x 4G^2], logits_comp = s D_t(L) C_s(S)^T [G^2 x G^2/4], s = 1/0.07 fixed. Soft targets:
  Gaussian (sigma 1, centre 1) 5 x 5 around the matching sub-part (decomposition) and 3 x 3 around the matching
  composite (composition), clipped at the grid border; rows outside the overlap are zero. Loss: torchvision
  ``sigmoid_focal_loss`` with gamma 0 (alpha-weighted BCE), mean over all entries, alpha 0.99 (dec) / 0.9 (comp);
  L_local = (L_dec + L_comp) / 2. Targets are built from cell coordinates (equivalent to the code's pairing of the
  k-th true entries, since both masks cover the same aligned rectangle).
- Total [V]: L = 0.1 L_global + L_local.
- Teacher [V]: EMA copy of backbone, DINO head and dense head (momentum cosine 0.996 -> 1), no gradient, exported
  (``export_encoder``). The teacher backbone runs in eval mode (the code's teacher has no stochastic depth), its
  heads in train mode (the code never switches the teacher to eval, so its BatchNorm uses batch statistics).
- Data-parallel (torchrun): the centre is averaged over the processes' batches (as DINO's code all-reduces it); the
  heads' BatchNorm is synchronised over processes on CUDA (SyncBatchNorm, as DINO's code converts it) and per process
  on the CPU, where PyTorch has no SyncBatchNorm kernel.
- Centre timing [I]: the code moves the centre inside the loss's forward, once per batch; here the teacher outputs
  of the step's micro-batches are summed and the centre moves once, in ``after_optimizer_step`` (:class:`StepCentre`):
  the same centre sequence without accumulation, one update per optimizer step with it.
- Initialisation [V]: the DINO head as the code's ``DINOHead`` (lightly's: trunc-normal std 0.02 Linear weights,
  zero biases, weight-normalised last layer with g fixed at 1); the dense head as the code's ``DenseHead``
  (``kaiming_normal_`` fan-out ReLU 1x1 convolutions, BatchNorm weight 1 / bias 0); decompose and compose at
  PyTorch's default Linear initialisation, as the code's ``UpsampleLayerMLP`` / ``DownsampleLayerMLP``.
- ``freeze_last_layer`` [V]: the code's ``cancel_gradients_last_layer`` sets the DINO head's last-layer gradients to
  None for epoch 0 of 302, so AdamW skips those parameters (no update, no weight decay, no moments). Here, while
  training progress < ``freeze_last_layer`` (default 1/302), the student's last layer runs outside the autograd
  graph (:func:`head_forward`), so its ``.grad`` stays None after the engine's backward and the optimizer skips it
  alike; a zero gradient would not do: AdamW would still decay the weights.
- Stochastic depth [V]: the code's student has it (ViT: ``--drop_path_rate 0.1``; Swin-B: 0.2 from
  ``swin_base_img224_window7.yaml``), the teacher none. ``drop_path_rate`` (default 0.1, every budget; 0.2 restores
  the Swin-B recipe on ``swin_base_2d``) is set on the student backbone (``Backbone.set_drop_path``, linear in
  depth; no weight or export change); the teacher's is removed.
- Optimiser [V] (conf/method/ace.yaml): AdamW lr 5e-4 x batch/256, wd 0.04 (the code's cosine 0.04 -> 0.4 wd
  schedule is not reproduced: the engine has a fixed weight decay), clip 0.8 (the engine clips the total norm; the
  code clips each parameter's gradient to 0.8 separately), warmup, cosine; no weight decay on biases and
  one-dimensional parameters (``train.no_decay: ["1d"]`` = the code's ``get_params_groups``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import distributed
from bench.registry import METHODS
from methods.base import PretrainMethod, StepInfo, StepOutput, make_teacher

GLOBAL_INPUTS = ("overlap", "cls")
NORM_MEAN, NORM_STD = 0.5056, 0.252


# --- geometry (pure functions, unit-tested) ----------------------------------------------------------------
def token_grid(input_size: int, stride: int) -> int:
    """G tokens per side; the composition needs an even G (2 x 2 token groups)."""
    if input_size % (2 * stride):
        raise ValueError(
            f"ace: input_size={input_size} must be a multiple of 2 x the backbone's token stride "
            f"({2 * stride}) so that the token grid is even"
        )
    return input_size // stride


def sample_offsets(rng: np.random.Generator, grid: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left cells (y, x) of the large crop (in {0..margin}) and of the small crop (same parity, overlapping)."""
    canvas = 2 * grid + margin
    large, small = np.zeros(2, np.int64), np.zeros(2, np.int64)
    for ax in range(2):
        a = int(rng.integers(0, margin + 1))
        cands = [b for b in range(a % 2, canvas - grid + 1, 2) if max(a, b) < min(a + 2 * grid, b + grid)]
        large[ax], small[ax] = a, cands[int(rng.integers(0, len(cands)))]
    return large, small


def overlap_masks(large: Sequence[int], small: Sequence[int], grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean [G, G] masks of the large-crop tokens (2 x 2 cells each) and small-crop tokens (1 cell) that lie in
    both crops. Offsets are top-left cells (y, x) of the canvas."""
    masks_l, masks_s = [], []
    i = np.arange(grid)
    for ax in range(2):
        a, b = int(large[ax]), int(small[ax])
        if (a - b) % 2:
            raise ValueError(f"ace: crop offsets {a} and {b} are not on the same parity")
        lo, hi = max(a, b), min(a + 2 * grid, b + grid)
        masks_l.append((a + 2 * i >= lo) & (a + 2 * i + 2 <= hi))
        masks_s.append((b + i >= lo) & (b + i < hi))
    return masks_l[0][:, None] & masks_l[1][None, :], masks_s[0][:, None] & masks_s[1][None, :]


def _gaussian_rows(out: np.ndarray, row: int, centre: tuple[int, int], side: int, radius: int) -> None:
    cy, cx = centre
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            y, x = cy + dy, cx + dx
            if 0 <= y < side and 0 <= x < side:
                out[row, y * side + x] = math.exp(-(dy * dy + dx * dx) / 2.0)


def matching_targets(large: Sequence[int], small: Sequence[int], grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Soft targets (Y_dec [G^2, 4G^2], Y_comp [G^2, G^2/4]).

    Y_dec row = small-crop token (cell (y2+a, x2+b)); its sub-part of the large crop on the 2G grid is
    (y2+a-y1, x2+b-x1): a 5 x 5 Gaussian there. Y_comp row = large-crop token (i, j), cells from (y1+2i, x1+2j);
    its 2 x 2 group of small-crop tokens on the G/2 grid is ((y1+2i-y2)/2, (x1+2j-x2)/2): a 3 x 3 Gaussian there.
    Rows outside the overlap are zero.
    """
    m_l, m_s = overlap_masks(large, small, grid)
    (y1, x1), (y2, x2) = (int(v) for v in large), (int(v) for v in small)
    dec = np.zeros((grid * grid, 4 * grid * grid), np.float32)
    comp = np.zeros((grid * grid, grid * grid // 4), np.float32)
    for a, b in zip(*np.nonzero(m_s)):
        _gaussian_rows(dec, a * grid + b, (y2 + a - y1, x2 + b - x1), 2 * grid, 2)
    for i, j in zip(*np.nonzero(m_l)):
        _gaussian_rows(comp, i * grid + j, ((y1 + 2 * i - y2) // 2, (x1 + 2 * j - x2) // 2), grid // 2, 1)
    return dec, comp


# --- data side ------------------------------------------------------------------------------------------------
def random_resized_crop(
    img: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    rng: np.random.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """torchvision's RandomResizedCrop sampling (10 tries, then the centre crop), bicubic, clipped to [0, 1]."""
    _, h, w = img.shape
    box = None
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
        if 0 < cw <= w and 0 < ch <= h:
            box = (int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw)
            break
    if box is None:
        s = min(h, w)
        box = ((h - s) // 2, (w - s) // 2, s, s)
    y, x, ch, cw = box
    out = F.interpolate(img[None, :, y : y + ch, x : x + cw], size=(size, size), mode="bicubic", align_corners=False)
    return out[0].clamp(0, 1)


def _conv(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    k = kernel.to(img.dtype)[None, None].expand(img.shape[0], 1, *kernel.shape)
    pad = kernel.shape[-1] // 2
    return F.conv2d(F.pad(img[None], (pad,) * 4, mode="reflect"), k, groups=img.shape[0])[0]


def appearance(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Brightness/contrast p .5, Gaussian blur p .5, sharpen p .3 (albumentations' defaults), on [0, 1] images."""
    if rng.random() < 0.5:
        img = (img * (1 + rng.uniform(-0.2, 0.2)) + rng.uniform(-0.2, 0.2)).clamp(0, 1)
    if rng.random() < 0.5:
        k = int(rng.choice([3, 5, 7]))
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for a given kernel size
        g = torch.exp(-(torch.arange(-(k // 2), k // 2 + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
        g = g / g.sum()
        img = _conv(img, g[:, None] * g[None, :])
    if rng.random() < 0.3:
        alpha, light = rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.0)
        ident = torch.zeros(3, 3)
        ident[1, 1] = 1
        sharp = -torch.ones(3, 3)
        sharp[1, 1] = 8 + light
        img = _conv(img, (1 - alpha) * ident + alpha * sharp).clamp(0, 1)
    return (img - NORM_MEAN) / NORM_STD


# --- losses ---------------------------------------------------------------------------------------------------
def masked_mean(tok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the tokens [B, N, D] where mask [B, N]; an empty set counts as 1 (the code's clamp) -> zeros."""
    m = mask.to(tok.dtype)[..., None]
    return (tok * m).sum(1) / m.sum(1).clamp_min(1)


def global_loss(h_s: torch.Tensor, h_t: torch.Tensor, center: torch.Tensor, tau_s: float, tau_t: float) -> torch.Tensor:
    """h_* [2, B, K]: (large, small) overlap outputs. 1/2 [CE(P_t(L), P_s(S)) + CE(P_t(S), P_s(L))]."""
    p_t = F.softmax((h_t.float() - center) / tau_t, dim=-1)
    log_p_s = F.log_softmax(h_s.float() / tau_s, dim=-1)
    ce_ls = -(p_t[0] * log_p_s[1]).sum(-1).mean()
    ce_sl = -(p_t[1] * log_p_s[0]).sum(-1).mean()
    return 0.5 * (ce_ls + ce_sl)


class StepCentre:
    """The teacher outputs of one optimizer step, for a centre that moves once per step.

    The official codes (DINO's ``DINOLoss.update_center``, ACE's ``DINOLoss_Overlap``) move the centre in the loss's
    forward, once per batch, which there is once per optimizer step. ``add`` sums the step's micro-batches and
    ``apply`` (the method's ``after_optimizer_step``) moves the centre once with their mean over every process: with
    ``accumulate`` > 1 the micro-batches count as one batch, as the code's one batch does, and a non-finite output
    leaves the centre's entry as it was instead of poisoning every later step."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.sum: torch.Tensor | None = None
        self.count = 0

    @torch.compiler.disable  # Python bookkeeping: under the engine's torch.compile it runs eagerly, unguarded
    def add(self, outputs: torch.Tensor, step: int) -> None:
        """``outputs`` [N, K]: the teacher's on one micro-batch of optimizer step ``step`` (``StepInfo.step``)."""
        if step != self.step:
            self.step, self.sum, self.count = step, None, 0
        s = outputs.detach().float().sum(0)
        self.sum = s if self.sum is None else self.sum + s
        self.count += outputs.shape[0]

    @torch.no_grad()
    def apply(self, center: torch.Tensor, momentum: float, done: int) -> None:
        """center <- momentum * center + (1 - momentum) * mean, the mean of optimizer step ``done - 1``
        (``after_optimizer_step`` is told the steps done)."""
        buf = center.new_zeros(center.numel() + 1)
        if self.step == done - 1 and self.sum is not None:
            buf[:-1] = self.sum.to(buf)
            buf[-1] = self.count
        self.step, self.sum, self.count = None, None, 0
        distributed.mean_(buf)  # on every process, pending or not, so that none waits on another
        mean = (buf[:-1] / buf[-1]).view_as(center)  # nothing pending anywhere: 0 / 0, kept below
        new = center * momentum + mean * (1 - momentum)
        center.copy_(torch.where(torch.isfinite(new), new, center))


def head_forward(head: nn.Module, x: torch.Tensor, frozen: bool) -> torch.Tensor:
    """``head(x)``; ``frozen``: the head's ``last_layer`` parameters stay out of the autograd graph, so that their
    ``.grad`` is None after backward, as the official ``cancel_gradients_last_layer`` leaves it, and the optimizer
    skips them (a zero gradient would still let AdamW's weight decay shrink them). Under DDP they count as unused
    parameters (the engine builds DDP with ``find_unused_parameters``), whose ``.grad`` DDP leaves None."""
    if not frozen:
        return head(x)
    # every parameter and buffer named, so that strict=True refuses a name that no longer matches the head
    tensors: dict[str, torch.Tensor] = dict(head.named_buffers())
    tensors.update((n, p.detach() if n.startswith("last_layer.") else p) for n, p in head.named_parameters())
    return torch.func.functional_call(head, tensors, (x,), strict=True)


def matching_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float) -> torch.Tensor:
    """torchvision sigmoid_focal_loss with gamma 0 = alpha-weighted BCE-with-logits, mean over all entries."""
    from torchvision.ops import sigmoid_focal_loss

    return sigmoid_focal_loss(logits.float(), target.float(), alpha=alpha, gamma=0.0, reduction="mean")


# --- heads ----------------------------------------------------------------------------------------------------
class DenseHead(nn.Module):
    """3 x [1x1 conv + BN + ReLU] on the token map, then per-token L2 normalisation."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(3):
            layers += [nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        for m in self.net:  # the code's DenseHead._init_weights (the conv biases keep PyTorch's default)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """[B, D, G, G] -> [B, G*G, D] unit-norm tokens (row-major)."""
        return F.normalize(self.net(fmap).flatten(2).transpose(1, 2), dim=-1)


class Decompose(nn.Module):
    """Each token -> 4 sub-part embeddings (row-major 2 x 2): [B, G*G, D] -> [B, 2G*2G, D]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim, bias=False),
            nn.LayerNorm(4 * dim),
            nn.ReLU(inplace=True),
            nn.Linear(4 * dim, 4 * dim),
        )

    def forward(self, tok: torch.Tensor, grid: int) -> torch.Tensor:
        x = self.mlp(tok)
        b, d = x.shape[0], x.shape[-1] // 4
        x = x.reshape(b, grid, grid, 2, 2, d).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, 4 * grid * grid, d)


class Compose(nn.Module):
    """Each 2 x 2 token group -> one composite: [B, G*G, D] -> [B, G/2*G/2, D]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(4 * dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True), nn.Linear(dim, dim)
        )

    def forward(self, tok: torch.Tensor, grid: int) -> torch.Tensor:
        b, _, d = tok.shape
        h = grid // 2
        x = tok.reshape(b, h, 2, h, 2, d).permute(0, 1, 3, 2, 4, 5).reshape(b, h * h, 4 * d)
        return self.mlp(x)


@METHODS.register("ace", tags=("2d",))
class ACE(PretrainMethod):
    @dataclass
    class Config:
        input_size: int | None = None  # crop side fed to the network; None: the budget's image size; paper 448
        margin_cells: int = 4  # canvas = 2G + margin cells (paper: 32 = 2 x 14 + 4)
        rrc_scale: tuple[float, float] = (0.85, 1.0)
        global_input: str = "overlap"  # overlap pooling (Swin, paper) | cls (the code's ViT variant)
        out_dim: int = 65536  # DINO head output
        hidden_dim: int = 2048
        bottleneck_dim: int = 256
        student_temp: float = 0.1
        teacher_temp: float = 0.04
        center_momentum: float = 0.9
        logit_scale: float = 1 / 0.07
        alpha_dec: float = 0.99
        alpha_comp: float = 0.9
        lambda_global: float = 0.1
        lambda_local: float = 1.0
        freeze_last_layer: float = 1 / 302  # fraction of training with the last DINO layer frozen (epoch 0 of 302)
        ema_momentum: float = 0.996
        ema_momentum_end: float = 1.0
        augment: bool = True
        drop_path_rate: float = 0.1  # the student's stochastic depth (code: ViT 0.1, Swin-B 0.2); the teacher has none

    capabilities: ClassVar[frozenset[str]] = frozenset({"2d", "ema"})

    def __init__(self, backbone: Any, cfg: Config | None = None) -> None:
        super().__init__(backbone, cfg)
        from lightly.models.modules.heads import DINOProjectionHead

        cfg = self.cfg
        if getattr(backbone, "spatial_dims", None) != 2 or not hasattr(backbone, "token_stride"):
            raise ValueError("ace: needs a 2D backbone with a token grid (e.g. vit_tiny_2d, swin_base_2d)")
        if cfg.global_input not in GLOBAL_INPUTS:
            raise ValueError(f"ace: global_input must be one of {GLOBAL_INPUTS}, got {cfg.global_input!r}")
        if cfg.margin_cells < 0 or cfg.margin_cells % 2:
            # an odd margin lets the small crop's parity range leave the canvas asymmetrically; the paper uses 4
            raise ValueError(f"ace: margin_cells must be an even number >= 0, got {cfg.margin_cells}")
        if cfg.input_size is not None:
            token_grid(cfg.input_size, backbone.token_stride)
        dim = backbone.feature_dim

        def dino_head() -> nn.Module:
            return DINOProjectionHead(dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim, norm_last_layer=True)

        self.dino_head = dino_head()
        # a weight-normalised layer cannot be deep-copied (torch #103001): the teacher head is built, then loaded
        t_head = dino_head()
        t_head.load_state_dict(self.dino_head.state_dict())
        t_head.requires_grad_(False)
        self.dense_head = DenseHead(dim)
        self.decompose = Decompose(dim)
        self.compose = Compose(dim)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.teacher = nn.ModuleDict(
            {"backbone": make_teacher(backbone), "dino_head": t_head, "dense_head": make_teacher(self.dense_head)}
        )
        # the code builds the teacher without stochastic depth (a backbone built with some keeps none here either)
        self.teacher["backbone"].set_drop_path(0.0)
        backbone.set_drop_path(cfg.drop_path_rate)
        self._centre = StepCentre()

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.backbone, self.teacher["backbone"]),
            (self.dino_head, self.teacher["dino_head"]),
            (self.dense_head, self.teacher["dense_head"]),
        ]

    def ema_momentum(self, progress: float) -> float:
        base, end = self.cfg.ema_momentum, self.cfg.ema_momentum_end
        return end + (base - end) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    def export_encoder(self) -> nn.Module:
        return self.teacher["backbone"]

    def after_optimizer_step(self, step: StepInfo) -> None:
        self._centre.apply(self.center, self.cfg.center_momentum, step.step)

    def train(self, mode: bool = True) -> ACE:
        super().train(mode)
        self.teacher["backbone"].eval()
        return self

    # --- data side -------------------------------------------------------------------------------------------
    def geometry(self, roi: Sequence[int]) -> tuple[int, int]:
        """(input_size, G) for the budget's image size ``roi``."""
        size = self.cfg.input_size
        if size is None:
            roi = tuple(int(r) for r in roi)
            if len(roi) != 2 or roi[0] != roi[1]:
                raise ValueError(f"ace: the image size {roi} is not square; set input_size")
            size = roi[0]
        return size, token_grid(size, self.backbone.token_stride)

    def views(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.cfg
        size, grid = self.geometry(sample["roi"])
        cell = size // grid
        canvas_cells = 2 * grid + cfg.margin_cells
        img = torch.from_numpy(np.ascontiguousarray(sample["image"], dtype=np.float32))
        canvas = random_resized_crop(img, canvas_cells * cell, tuple(cfg.rrc_scale), rng)
        large, small = sample_offsets(rng, grid, cfg.margin_cells)
        (y1, x1), (y2, x2) = large * cell, small * cell
        big = canvas[:, y1 : y1 + 2 * size, x1 : x1 + 2 * size]
        big = F.interpolate(big[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        little = canvas[:, y2 : y2 + size, x2 : x2 + size]
        if cfg.augment:
            big, little = appearance(big, rng), appearance(little, rng)
        else:
            big, little = (big - NORM_MEAN) / NORM_STD, (little - NORM_MEAN) / NORM_STD
        m_l, m_s = overlap_masks(large, small, grid)
        dec, comp = matching_targets(large, small, grid)
        return {
            "large": big.contiguous(),
            "small": little.contiguous(),
            "mask_l": torch.from_numpy(m_l.reshape(-1)),
            "mask_s": torch.from_numpy(m_s.reshape(-1)),
            "target_dec": torch.from_numpy(dec),
            "target_comp": torch.from_numpy(comp),
        }

    # --- networks --------------------------------------------------------------------------------------------
    def _features(self, backbone: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(CLS or None, last token map [B, D, G, G])."""
        if self.cfg.global_input == "overlap":
            return None, backbone.encode(x)[-1]
        cls, tok = backbone.tokens(x)
        if cls is None:
            raise ValueError("ace: global_input='cls' needs a backbone with a CLS token (a ViT)")
        g = int(round(math.sqrt(tok.shape[1])))
        return cls, tok.transpose(1, 2).reshape(tok.shape[0], tok.shape[2], g, tok.shape[1] // g)

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> StepOutput:
        cfg = self.cfg
        x = torch.cat([batch["large"], batch["small"]])  # [2B, C, S, S]: large first
        b = batch["large"].shape[0]
        masks = torch.cat([batch["mask_l"], batch["mask_s"]]).bool()  # [2B, G*G]
        grid = int(round(math.sqrt(masks.shape[1])))

        cls_s, fmap_s = self._features(self.backbone, x)
        if fmap_s.shape[-1] != grid or fmap_s.shape[-2] != grid:
            raise ValueError(
                f"ace: the backbone's token grid {tuple(fmap_s.shape[-2:])} does not match the crop "
                f"geometry ({grid} x {grid}); check input_size"
            )
        tok_s = fmap_s.flatten(2).transpose(1, 2)
        g_s = cls_s if cls_s is not None else masked_mean(tok_s, masks)
        h_s = head_forward(self.dino_head, g_s.float(), step.progress < cfg.freeze_last_layer).reshape(2, b, -1)
        dense_s = self.dense_head(fmap_s)
        up = self.decompose(dense_s[:b], grid)  # U_s(L): [B, 4G^2, D]
        down = self.compose(dense_s[b:], grid)  # C_s(S): [B, G^2/4, D]
        with torch.no_grad():
            t = self.teacher
            cls_t, fmap_t = self._features(t["backbone"], x)
            tok_t = fmap_t.flatten(2).transpose(1, 2)
            g_t = cls_t if cls_t is not None else masked_mean(tok_t, masks)
            h_t = t["dino_head"](g_t.float())
            h_non = t["dino_head"](masked_mean(tok_t, ~masks).float())
            dense_t = t["dense_head"](fmap_t)

        l_global = global_loss(h_s, h_t.reshape(2, b, -1), self.center, cfg.student_temp, cfg.teacher_temp)
        logits_dec = cfg.logit_scale * dense_t[b:] @ up.transpose(1, 2)  # D_t(S) vs U_s(L)
        logits_comp = cfg.logit_scale * dense_t[:b] @ down.transpose(1, 2)  # D_t(L) vs C_s(S)
        l_dec = matching_loss(logits_dec, batch["target_dec"], cfg.alpha_dec)
        l_comp = matching_loss(logits_comp, batch["target_comp"], cfg.alpha_comp)
        l_local = 0.5 * (l_dec + l_comp)
        loss = cfg.lambda_global * l_global + cfg.lambda_local * l_local
        if self.training:  # the centre moves after the optimizer step (after_optimizer_step)
            self._centre.add(torch.cat([h_t, h_non]), step.step)
        return StepOutput(
            loss,
            {
                "global": l_global.detach(),
                "dec": l_dec.detach(),
                "comp": l_comp.detach(),
                "overlap_fraction": batch["mask_s"].float().mean().detach(),
            },
        )
