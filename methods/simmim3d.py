"""``simmim3d``: SimMIM masked image modelling in 3D on Swin UNETR (the ASA paper's SimMIM baseline).

Recipe (shared/METHODS.md §2):
- random blocks of ``mask_patch``^3 voxels are masked at ratio ``mask_ratio`` (0.5, ASA paper), exactly
  ceil(ratio * n_blocks) per sample, drawn independently per sample on the data side (``views``), as SimMIM's
  ``MaskGenerator`` is part of its data transform: a sample's mask goes with the sample, whichever process of a
  data-parallel job trains on it;
- after the patch embedding the masked tokens are replaced by a learned ``mask_token``
  (trunc-normal std 0.02, no weight decay), as in SimMIM and ASA's ``SwinTransformer_MIM``;
- the full Swin UNETR CNN decoder + a 1x1x1 conv to the input channels reconstructs the voxels (ASA's port: 1 channel);
- loss: L1 between the reconstruction and the *original* volume on masked voxels only,
  sum / (n_masked voxel positions + 1e-5) / in_channels (SimMIM's ``models/simmim.py``).
- Optimiser (conf/method/simmim3d.yaml; ASA reports none): AdamW lr 1e-4 taken as the rate of the run's batch, wd
  0.05, betas (0.9, 0.999), warmup 10 %, cosine, clip 5. METHODS.md suggests 1e-4 scaled by batch/512 (the 2D
  SimMIM rule, set with ``lr_reference_batch: 512``); at the 3D budgets' batch of 2 that is 4e-7, too small to train
  in any budget here. No weight decay on 1-D parameters (biases, norms), the mask token and the relative position
  bias tables (``train.no_decay``), as SimMIM's ``build_pretrain_optimizer``.
- The cosine ends at ``train.min_lr``: 0 by default, 5 % of the peak at budget=paper (SimMIM's cosine recipe:
  MIN_LR 1e-5 at BASE_LR 2e-4; conf/method_budget/simmim3d_paper.yaml). With ``lr_reference_batch`` set, scale
  ``min_lr`` by hand: SimMIM scales it with the batch as it scales the lr, the engine keeps it absolute.

Deviation from ASA's 3D port (recorded as a flag): its full-resolution conv skip ``encoder1``
receives the *unmasked* input, so the decoder can copy the masked voxels. By default the masked
image x*(1-M) is fed to every path (``leak_stem=False``); ``leak_stem=True`` reproduces the port.

- [0]: Xie et al., SimMIM: a Simple Framework for Masked Image Modeling, CVPR 2022, arXiv 2111.09886
- [1]: Pang et al., ASA, MICCAI 2024 (SimMIM-3D baseline, 50% masking, Swin UNETR)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bench.backbones import SwinUNETRBackbone
from bench.registry import METHODS
from methods.base import PretrainMethod, StepInfo, StepOutput


def block_mask(spatial: tuple[int, ...], block: int, ratio: float, rng: np.random.Generator) -> torch.Tensor:
    """Boolean [*spatial/block] grid of one sample with exactly ceil(ratio * n) True cells, uniformly placed."""
    grid = [s // block for s in spatial]
    n = math.prod(grid)
    m = np.zeros(n, dtype=bool)
    m[rng.permutation(n)[: math.ceil(ratio * n)]] = True
    return torch.from_numpy(m.reshape(grid))


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat each cell of a [B, *grid] mask ``factor`` times along every spatial axis."""
    for d in range(1, mask.ndim):
        mask = mask.repeat_interleave(factor, dim=d)
    return mask


@METHODS.register("simmim3d", tags=("3d",))
class SimMIM3D(PretrainMethod):
    @dataclass
    class Config:
        mask_ratio: float = 0.5
        mask_patch: int = 16  # voxels per mask block side (3D analogue of SimMIM's 32 px / 4 px)
        leak_stem: bool = False  # True: ASA port's unmasked conv stem (leaks the answer)

        def __post_init__(self) -> None:
            if not 0 < self.mask_ratio < 1:
                raise ValueError(f"mask_ratio={self.mask_ratio}: expected a fraction in (0, 1)")
            if self.mask_patch < 2 or self.mask_patch % 2:  # whole tokens: Swin UNETR embeds 2^3-voxel patches
                raise ValueError(f"mask_patch={self.mask_patch}: expected an even number of voxels >= 2")

    capabilities: ClassVar[frozenset[str]] = frozenset({"3d", "masked"})

    def __init__(self, backbone: SwinUNETRBackbone, cfg: Config | None = None) -> None:
        super().__init__(backbone, cfg)
        embed = backbone.stage_channels[0]
        self.mask_token = nn.Parameter(torch.zeros(1, embed, 1, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self.head = nn.Conv3d(backbone.decoder_channels, backbone.in_channels, kernel_size=1)
        self.patch = 2  # Swin UNETR patch size: one token per 2^3 voxels

    def views(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """One random ROI crop and its block mask."""
        out = super().views(sample, rng)
        spatial = tuple(out["image"].shape[1:])
        if any(s % self.cfg.mask_patch for s in spatial):
            raise ValueError(f"simmim3d: ROI {spatial} must be divisible by mask_patch={self.cfg.mask_patch}")
        return out | {"mask": block_mask(spatial, self.cfg.mask_patch, self.cfg.mask_ratio, rng)}

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> StepOutput:
        x = batch["image"]
        c = x.shape[1]
        cfg = self.cfg
        blocks = batch["mask"]
        token_mask = upsample_mask(blocks, cfg.mask_patch // self.patch)[:, None].to(x.dtype)
        voxel_mask = upsample_mask(blocks, cfg.mask_patch)[:, None].to(x.dtype)
        x_in = x if cfg.leak_stem else x * (1 - voxel_mask)

        def replace_masked(tokens: torch.Tensor) -> torch.Tensor:
            w = token_mask.to(tokens.dtype)
            return tokens * (1 - w) + self.mask_token.to(tokens.dtype) * w

        hs = self.backbone.encode(x_in, patch_hook=replace_masked)
        recon = self.head(self.backbone.decode(x_in, hs))
        err = (recon.float() - x.float()).abs() * voxel_mask
        # SimMIM's normalisation: the mask counts positions (channels broadcast), the channels divide after the eps
        loss = err.sum() / (voxel_mask.sum() + 1e-5) / c
        return StepOutput(loss, {"masked_fraction": voxel_mask.mean().detach()})
