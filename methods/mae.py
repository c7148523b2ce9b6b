"""``mae``: masked autoencoders (He et al., CVPR 2022), the 2D masked-image-modelling baseline next to ACE.

Built from lightly's helpers [I] (``random_token_mask``, ``get_at_index``, ``set_at_index``, ``repeat_token``,
``patchify``, the 2D sine-cosine position embedding) and timm's transformer ``Block``; the encoder is the
backbone's own ViT (``ViT2D.tokens(x, idx_keep=...)``: only the visible patches enter the blocks). The recipe
follows the official ``main_pretrain.py`` defaults:

- Views: RandomResizedCrop (scale 0.2-1, bicubic) to ``input_size`` (null: the budget's image size, square) and a
  horizontal flip p 0.5; nothing else.
- Mask ratio 0.75, uniform per image; the CLS token is always kept.
- Decoder: Linear D -> 512, mask tokens at the masked positions, fixed 2D sine-cosine position embedding (computed
  for the actual token grid, so any image size that is a multiple of the patch size works), 8 blocks of width 512
  and 16 heads, LayerNorm, Linear 512 -> p^2 C.
- Loss: MSE on the masked patches only, against per-patch normalised pixels (``norm_pix_loss=True``, the paper's
  better setting).
- The encoder's position embedding is set to the 2D sine-cosine table and frozen during pretraining, as MAE's
  ``pos_embed`` (``requires_grad=False``); the backbone keeps one definition for every method (the table is an
  ordinary weight of the export, trainable in transfer). At a budget whose image size differs from the backbone's
  build size (224) timm resamples the table to the token grid.
- Initialisation: timm's (trunc-normal 0.02 Linear weights, CLS token N(0, 1e-6)) for the encoder and PyTorch's
  for the decoder, unless ``mae_init`` (budget=paper): MAE's ``initialize_weights``, xavier-uniform Linear weights
  (the patch embedding's conv as a Linear) with zero biases, LayerNorm weight 1 and bias 0, CLS and mask tokens
  N(0, 0.02), over the encoder and the decoder alike.
- Optimiser (conf/method/mae.yaml): AdamW lr 1.5e-4 x batch/256, wd 0.05, betas (0.9, 0.95), warmup 40 of 800
  epochs, cosine to 0, no gradient clipping; no weight decay on biases and norms (timm ``add_weight_decay``: the
  CLS and mask tokens are decayed, the frozen position embeddings are not optimised at all).

Needs a ViT backbone (``vit_*_2d``); any other raises a ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import METHODS
from methods.base import PretrainMethod, StepInfo, StepOutput
from methods.ace import random_resized_crop
from methods.dino import check_multiple, square_side


class MAEDecoder(nn.Module):
    """Lightweight MAE decoder over the full token grid (CLS + N patches)."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, patch: int, channels: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(
            *[Block(dim, heads, 4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch * patch * channels)
        nn.init.normal_(self.mask_token, std=0.02)
        self.dim = dim

    def forward(self, cls: torch.Tensor, visible: torch.Tensor, idx_keep: torch.Tensor, n: int) -> torch.Tensor:
        """cls [B, D], visible [B, K, D] at patch indices idx_keep [B, K] -> predictions [B, N, p^2 C]."""
        from lightly.models import utils

        b = visible.shape[0]
        x = self.embed(torch.cat([cls[:, None], visible], dim=1))
        full = utils.repeat_token(self.mask_token.to(x.dtype), (b, n + 1))
        full = utils.set_at_index(full, idx_keep + 1, x[:, 1:])
        full = torch.cat([x[:, :1], full[:, 1:]], dim=1)
        pos = utils.get_2d_sine_cosine_positional_embedding(self.dim, int(round(n**0.5)), cls_token=True)
        full = full + torch.from_numpy(pos).to(full)[None]
        return self.pred(self.norm(self.blocks(full)))[:, 1:]


@METHODS.register("mae", tags=("2d",))
class MAE(PretrainMethod):
    @dataclass
    class Config:
        input_size: int | None = None  # None: the budget's image size (square); paper 224
        mask_ratio: float = 0.75
        decoder_dim: int = 512
        decoder_depth: int = 8
        decoder_heads: int = 16
        norm_pix_loss: bool = True
        scale: tuple[float, float] = (0.2, 1.0)
        mae_init: bool = False  # True: MAE's initialize_weights instead of timm's / PyTorch's (budget=paper)

    capabilities: ClassVar[frozenset[str]] = frozenset({"2d"})

    def __init__(self, backbone: Any, cfg: Config | None = None) -> None:
        super().__init__(backbone, cfg)
        from lightly.models import utils

        cfg = self.cfg
        from bench.backbones import ViT2D

        if not isinstance(backbone, ViT2D) or backbone.net.cls_token is None:
            raise ValueError("mae: needs a ViT backbone with a CLS token (vit_tiny_2d, vit_small_2d, vit_base_2d)")
        if not 0 < cfg.mask_ratio < 1:
            raise ValueError(f"mae: mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        if cfg.input_size is not None:
            check_multiple(cfg.input_size, backbone.token_stride, "input_size", "mae")
        pe = backbone.net.pos_embed
        if pe is not None:
            utils.initialize_positional_embedding(
                pe, strategy="sincos", num_prefix_tokens=backbone.net.num_prefix_tokens
            )
            pe.requires_grad_(False)  # MAE's fixed table; lightly's helper freezes it too, this does not rely on it
        self.patch = backbone.token_stride
        self.decoder = MAEDecoder(
            backbone.feature_dim,
            cfg.decoder_dim,
            cfg.decoder_depth,
            cfg.decoder_heads,
            self.patch,
            backbone.in_channels,
        )
        if cfg.mae_init:
            self._mae_init()

    @torch.no_grad()
    def _mae_init(self) -> None:
        # MAE's initialize_weights; the sine-cosine position embedding above is no Linear and keeps its values
        net = self.backbone.net
        for module in (net, self.decoder):
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        w = net.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear: MAE's "instead of nn.Conv2d"
        nn.init.normal_(net.cls_token, std=0.02)
        nn.init.normal_(self.decoder.mask_token, std=0.02)

    def views(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.cfg
        size = cfg.input_size if cfg.input_size is not None else square_side(sample["roi"], "input_size", "mae")
        check_multiple(size, self.patch, "input_size", "mae")
        img = torch.from_numpy(np.ascontiguousarray(sample["image"], dtype=np.float32))
        crop = random_resized_crop(img, size, tuple(cfg.scale), rng)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        return {"image": crop.contiguous()}

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """Patch pixels [B, N, p^2 C], per-patch normalised when ``norm_pix_loss``."""
        from lightly.models import utils

        t = utils.patchify(images, self.patch)
        if self.cfg.norm_pix_loss:
            mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
            t = (t - mean) / (var + 1e-6) ** 0.5
        return t

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> StepOutput:
        from lightly.models import utils

        x = batch["image"]
        b, n = x.shape[0], (x.shape[-2] // self.patch) * (x.shape[-1] // self.patch)
        idx_keep, idx_mask = utils.random_token_mask(
            (b, n), self.cfg.mask_ratio, mask_class_token=True, device=x.device
        )
        cls, visible = self.backbone.tokens(x, idx_keep=idx_keep)
        pred = self.decoder(cls, visible, idx_keep, n)
        loss = F.mse_loss(
            utils.get_at_index(pred, idx_mask).float(), utils.get_at_index(self.targets(x), idx_mask).float()
        )
        return StepOutput(loss, {"masked_fraction": torch.tensor(idx_mask.shape[1] / n)})
