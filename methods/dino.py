"""``dino``: self-distillation with no labels (Caron et al., ICCV 2021), the 2D baseline next to ACE.

The head is lightly's ``DINOProjectionHead`` [I], the official ``DINOHead`` (D -> 2048 -> 2048 -> 256, trunc-normal
0.02 Linear weights, L2 norm, weight-normalised 256 -> 65536 with g fixed at 1). The loss is ``main_dino.py``'s
``DINOLoss`` (:class:`DINOCriterion`): teacher softmax with centring at temperature 0.04, student temperature 0.1,
every (teacher crop i, student crop j != i) pair, averaged over the pairs; lightly's ``DINOLoss`` computes the same
but moves the centre in its forward. The recipe follows the official DINO ``main_dino.py`` defaults:

- Multi-crop: 2 global crops (RandomResizedCrop scale 0.4-1, side ``global_size``) seen by teacher and student,
  ``n_local`` = 8 local crops (scale 0.05-0.4, side ``local_size``) seen by the student only. Bicubic resizing,
  horizontal flip p 0.5. The colour jitter (p 0.8) keeps its brightness and contrast terms (0.4 each), the only ones
  that act on a grey image; greyscale conversion is moot. Gaussian blur p 1.0 / 0.1 / 0.5 (global 1 / global 2 /
  local, sigma 0.1-2), solarisation p 0.2 on global 2.
- Sizes [I]: the paper's 224 / 96 px become ``global_size=null`` = the budget's image size (square) and
  ``local_size=null`` = global * 96/224 rounded down to a multiple of the backbone's token stride (128 -> 48 on a
  ViT/16). A size that is not a multiple of the token stride raises a ValueError naming the option.
- The image embedding is ``backbone.pooled`` (the CLS token of a ViT).
- Centre: momentum 0.9 on the mean teacher output of the step's global crops, over every process (the code
  all-reduces it). The code moves it in the loss's forward, once per batch; here it moves once per optimizer step,
  in ``after_optimizer_step`` (``methods.ace.StepCentre``): the same centre sequence without accumulation, the step's
  micro-batches as one batch with it.
- Teacher: EMA of backbone and head, momentum cosine 0.996 -> 1, no gradient, exported, no stochastic depth.
- ``freeze_last_layer`` [V]: the code's ``cancel_gradients_last_layer`` sets the head's last-layer gradients to None
  for epoch 1 of 100, so AdamW skips those parameters. Here, while training progress < ``freeze_last_layer``
  (0.01), the student's last layer runs outside the autograd graph (``methods.ace.head_forward``): its ``.grad``
  stays None and the optimizer skips it alike (a zero gradient would still let AdamW's weight decay shrink it).
- Stochastic depth [V]: ``main_dino.py`` builds the student with ``drop_path_rate=0.1`` and the teacher without.
  ``drop_path_rate`` (0.1 at every budget: a budget changes the scale, not the recipe; the rate costs nothing and
  0 turns it off) sets it on the student backbone (``Backbone.set_drop_path``: linear in depth, no weight or export
  change); the teacher's is removed.
- Optimiser (conf/method/dino.yaml): AdamW lr 5e-4 x batch/256, wd 0.04 (the code's cosine 0.04 -> 0.4 is not
  reproduced: the engine's weight decay is fixed), clip 3.0 (the engine clips the total norm; the code clips each
  parameter's gradient separately), warmup 10 of 100 epochs, cosine to 1e-6; no weight decay on biases and 1-D
  parameters (``train.no_decay: ["1d"]`` = the code's ``get_params_groups``).
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

from bench.registry import METHODS
from methods.ace import StepCentre, _conv, head_forward, random_resized_crop
from methods.base import PretrainMethod, StepInfo, StepOutput, make_teacher


def square_side(roi: Sequence[int], option: str, method: str) -> int:
    roi = tuple(int(r) for r in roi)
    if len(roi) != 2 or roi[0] != roi[1]:
        raise ValueError(f"{method}: the image size {roi} is not square; set {option}")
    return roi[0]


def check_multiple(size: int, stride: int, option: str, method: str) -> int:
    if size < stride or size % stride:
        raise ValueError(
            f"{method}: {option}={size} must be a positive multiple of the backbone's token stride ({stride})"
        )
    return size


def gaussian_blur(img: torch.Tensor, rng: np.random.Generator, sigma: tuple[float, float] = (0.1, 2.0)) -> torch.Tensor:
    """PIL-style Gaussian blur with sigma drawn from ``sigma`` (px); kernel radius 3 sigma."""
    s = rng.uniform(*sigma)
    r = max(1, int(math.ceil(3 * s)))
    r = min(r, (min(img.shape[-2:]) - 1) // 2)  # reflect padding must stay inside the image
    g = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * s * s))
    g = g / g.sum()
    return _conv(img, g[:, None] * g[None, :])


def photometric(img: torch.Tensor, rng: np.random.Generator, blur_p: float, solarize_p: float) -> torch.Tensor:
    if rng.random() < 0.5:
        img = img.flip(-1)
    if rng.random() < 0.8:
        img = img * rng.uniform(0.6, 1.4)  # brightness
        mean = img.mean()
        img = ((img - mean) * rng.uniform(0.6, 1.4) + mean).clamp(0, 1)  # contrast
    if rng.random() < blur_p:
        img = gaussian_blur(img, rng)
    if rng.random() < solarize_p:
        img = torch.where(img >= 0.5, 1 - img, img)
    return img.contiguous()


def head_pair(make: Any) -> tuple[nn.Module, nn.Module]:
    """A student head and a frozen teacher copy. Weight-normalised layers cannot be deep-copied (torch #103001),
    so the teacher is built again and loaded."""
    student, teacher = make(), make()
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return student, teacher


class DINOCriterion(nn.Module):
    """``main_dino.py``'s ``DINOLoss`` at a fixed teacher temperature, without its centre update (the method moves
    ``center`` once per optimizer step). ``center`` is [1, 1, K], as lightly's ``DINOLoss`` kept it."""

    def __init__(self, out_dim: int, teacher_temp: float, student_temp: float) -> None:
        super().__init__()
        self.teacher_temp, self.student_temp = teacher_temp, student_temp
        self.register_buffer("center", torch.zeros(1, 1, out_dim))

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        """teacher [T, B, K] (the global crops), student [S, B, K] (the same global crops first, then the local
        ones): the mean over the pairs (i, j != i) of CE(softmax((t_i - c) / tau_t), log_softmax(s_j / tau_s))."""
        p_t = F.softmax((teacher.float() - self.center) / self.teacher_temp, dim=-1)
        log_p_s = F.log_softmax(student.float() / self.student_temp, dim=-1)
        ce = -torch.einsum("tbk,sbk->ts", p_t, log_p_s) / teacher.shape[1]  # [T, S], each a batch mean
        off = ~torch.eye(*ce.shape, dtype=torch.bool, device=ce.device)  # the same crop is never compared
        return ce[off].mean()


@METHODS.register("dino", tags=("2d",))
class DINO(PretrainMethod):
    @dataclass
    class Config:
        global_size: int | None = None  # None: the budget's image size (paper 224)
        local_size: int | None = None  # None: global * 96 / 224, a multiple of the token stride (paper 96)
        n_local: int = 8
        global_scale: tuple[float, float] = (0.4, 1.0)
        local_scale: tuple[float, float] = (0.05, 0.4)
        out_dim: int = 65536
        hidden_dim: int = 2048
        bottleneck_dim: int = 256
        student_temp: float = 0.1
        teacher_temp: float = 0.04
        center_momentum: float = 0.9
        freeze_last_layer: float = 0.01  # fraction of training (epoch 1 of 100)
        ema_momentum: float = 0.996
        ema_momentum_end: float = 1.0
        drop_path_rate: float = 0.1  # the student's stochastic depth (main_dino.py); the teacher has none

    capabilities: ClassVar[frozenset[str]] = frozenset({"2d", "ema"})

    def __init__(self, backbone: Any, cfg: Config | None = None) -> None:
        super().__init__(backbone, cfg)
        from lightly.models.modules.heads import DINOProjectionHead

        cfg = self.cfg
        if getattr(backbone, "spatial_dims", None) != 2:
            raise ValueError("dino: needs a 2D backbone (e.g. vit_tiny_2d)")
        if cfg.n_local < 0:
            raise ValueError(f"dino: n_local must be >= 0, got {cfg.n_local}")
        dim = backbone.feature_dim
        self.head, t_head = head_pair(
            lambda: DINOProjectionHead(dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim, norm_last_layer=True)
        )
        self.teacher = nn.ModuleDict({"backbone": make_teacher(backbone), "head": t_head})
        # main_dino.py builds the teacher without stochastic depth (a backbone built with some keeps none here either)
        self.teacher["backbone"].set_drop_path(0.0)
        backbone.set_drop_path(cfg.drop_path_rate)
        self.criterion = DINOCriterion(cfg.out_dim, cfg.teacher_temp, cfg.student_temp)
        self._centre = StepCentre()
        self.sizes(None)  # validate explicit sizes now

    def sizes(self, roi: Sequence[int] | None) -> tuple[int, int]:
        cfg, stride = self.cfg, self.backbone.token_stride
        if cfg.global_size is None and roi is None:
            return 0, 0
        g = cfg.global_size if cfg.global_size is not None else square_side(roi, "global_size", "dino")
        check_multiple(g, stride, "global_size", "dino")
        loc = cfg.local_size if cfg.local_size is not None else max(stride, (g * 96 // 224) // stride * stride)
        return g, check_multiple(loc, stride, "local_size", "dino")

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher["backbone"]), (self.head, self.teacher["head"])]

    def ema_momentum(self, progress: float) -> float:
        base, end = self.cfg.ema_momentum, self.cfg.ema_momentum_end
        return end + (base - end) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    def export_encoder(self) -> nn.Module:
        return self.teacher["backbone"]

    def views(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.cfg
        g, loc = self.sizes(sample["roi"])
        img = torch.from_numpy(np.ascontiguousarray(sample["image"], dtype=np.float32))
        out = {
            "global": torch.stack(
                [
                    photometric(random_resized_crop(img, g, tuple(cfg.global_scale), rng), rng, 1.0, 0.0),
                    photometric(random_resized_crop(img, g, tuple(cfg.global_scale), rng), rng, 0.1, 0.2),
                ]
            ),
        }
        if cfg.n_local:
            out["local"] = torch.stack(
                [
                    photometric(random_resized_crop(img, loc, tuple(cfg.local_scale), rng), rng, 0.5, 0.0)
                    for _ in range(cfg.n_local)
                ]
            )
        return out

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> StepOutput:
        frozen = step.progress < self.cfg.freeze_last_layer
        glob = batch["global"]  # [B, 2, C, g, g]
        b = glob.shape[0]
        crops = glob.transpose(0, 1).flatten(0, 1)  # [2B]: every image's crop 1, then every image's crop 2
        student = [head_forward(self.head, self.backbone.pooled(crops).float(), frozen).reshape(2, b, -1)]
        if "local" in batch:
            loc = batch["local"]  # [B, n, C, l, l]
            n = loc.shape[1]
            pooled = self.backbone.pooled(loc.transpose(0, 1).flatten(0, 1)).float()
            student.append(head_forward(self.head, pooled, frozen).reshape(n, b, -1))
        with torch.no_grad():
            t = self.teacher["head"](self.teacher["backbone"].pooled(crops).float())  # the global crops only
        loss = self.criterion(t.reshape(2, b, -1), torch.cat(student))
        if self.training:  # the centre moves after the optimizer step (after_optimizer_step)
            self._centre.add(t, step.step)
        return StepOutput(loss, {"teacher_entropy": _entropy(t, self.criterion.center, self.cfg.teacher_temp)})

    def after_optimizer_step(self, step: StepInfo) -> None:
        self._centre.apply(self.criterion.center, self.cfg.center_momentum, step.step)

    def train(self, mode: bool = True) -> DINO:
        super().train(mode)
        self.teacher["backbone"].eval()  # the code's teacher has no stochastic depth
        return self


def _entropy(t: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """Mean entropy of the teacher distribution (collapse monitor: log K uniform, 0 one-hot)."""
    p = F.softmax((t.float() - center) / temp, dim=-1)
    return -(p * p.clamp_min(1e-12).log()).sum(-1).mean().detach()
