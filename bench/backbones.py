"""Backbones behind one protocol: ``encode`` (stage features), ``pooled`` (a vector per image),
``feature_dim``, ``spatial_dims`` and, for 3D segmentation, the UNETR decoder.

A backbone never holds a task head: the segmentation protocol adds a 1x1x1 output conv and the
pretraining methods add their own heads, so an encoder export always loads with ``strict=True``.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import BACKBONES

PatchHook = Callable[[torch.Tensor], torch.Tensor]


class Backbone(nn.Module):
    """Interface every backbone implements (timm-like uniform surface, reduced)."""

    spatial_dims: int
    feature_dim: int
    in_channels: int
    _build_kwargs: dict[str, Any]
    #: every input side must be a multiple of this (checked against the budget's ROI before any work)
    input_multiple: int = 1

    def encode(self, x: torch.Tensor, patch_hook: PatchHook | None = None) -> list[torch.Tensor]:
        raise NotImplementedError

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[-1].flatten(2).mean(-1)

    def build_kwargs(self) -> dict[str, Any]:
        """The registry kwargs that rebuild this backbone (stored in every encoder export)."""
        return dict(self._build_kwargs)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth for a method's training only, linear in depth from 0 to ``rate`` as MONAI and timm
        build it (a paper's student at 0.1: ASA, DINO). It changes no parameter and no build kwarg: the export
        rebuilds without it, so every method's encoder is transferred alike."""
        set_drop_path(self, rate)


def set_drop_path(module: nn.Module, rate: float) -> None:
    """Every residual block's stochastic depth in ``module`` (MONAI Swin blocks' ``drop_path``, timm blocks'
    ``drop_path1``/``drop_path2``), in forward order, set to ``rate`` * i / (n - 1); ``rate`` 0 removes it."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1); got {rate}")
    from timm.layers import DropPath

    slots = [
        (m, name)
        for m in module.modules()
        for name in ("drop_path", "drop_path1", "drop_path2")
        if isinstance(getattr(m, name, None), nn.Module)
    ]
    # a timm block's two slots share one rate, as timm builds them
    blocks = list(dict.fromkeys(m for m, _ in slots))
    n = len(blocks)
    for i, m in enumerate(blocks):
        r = rate * i / (n - 1) if n > 1 else rate
        for name in ("drop_path", "drop_path1", "drop_path2"):
            if isinstance(getattr(m, name, None), nn.Module):
                setattr(m, name, DropPath(r) if r > 0 else nn.Identity())


def on_grid(stages: list[torch.Tensor], size: list[int]) -> torch.Tensor:
    """Stage features [B, C_i, ...] resampled to one grid ``size`` (area average where finer, trilinear where
    coarser) and concatenated by channel: what the 3D representation probes read, and what supervised pretraining
    supervises."""
    out = []
    for h in stages:
        finer = [a > b for a, b in zip(h.shape[2:], size)]
        if all(finer):
            h = F.interpolate(h, size=size, mode="area")  # an average over each grid cell
        elif any(finer):
            raise ValueError(f"stage features {tuple(h.shape[2:])} are finer than the grid {size} on some axes only")
        elif list(h.shape[2:]) != list(size):
            h = F.interpolate(h, size=size, mode="trilinear", align_corners=False)
        out.append(h.float())
    return torch.cat(out, 1)


def _sdpa_window_attention(self: Any, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """MONAI WindowAttention.forward computed with fused scaled-dot-product attention.

    Same function (relative-position bias and the shifted-window mask are one additive bias), but
    MONAI 1.6 takes its fused path only without autograd; this one also trains with it (about 2x
    faster forward+backward on 2 CPU cores, fewer kernels on a GPU).
    """
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    rpb = self.relative_position_bias_table[self.relative_position_index[:n, :n].reshape(-1)].reshape(n, n, -1)
    bias = rpb.permute(2, 0, 1).unsqueeze(0)
    if mask is not None:
        # windows of one volume are consecutive in the batch: view q/k/v as [volumes, windows, heads, n, d] and
        # let SDPA broadcast one [1, windows, heads, n, n] bias instead of copying it for every volume
        nw = mask.shape[0]
        bias = bias.unsqueeze(1) + mask.reshape(1, nw, 1, n, n)
        q, k, v = (t.reshape(b // nw, nw, *t.shape[1:]) for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale, dropout_p=self.attn_drop.p if self.training else 0.0
    )
    return self.proj_drop(self.proj(out.reshape(b, self.num_heads, n, -1).transpose(1, 2).reshape(b, n, c)))


class SwinUNETRBackbone(Backbone):
    """MONAI SwinUNETR without its output conv.

    ``encode`` returns the five normalised hidden states hs[0..4] (channels fs, 2fs, 4fs, 8fs, 16fs at
    strides 2..32). ``decode`` runs the UNETR decoder with the same wiring as MONAI and returns the
    full-resolution ``decoder_channels`` feature map that a task head turns into logits.
    """

    spatial_dims = 3
    input_multiple = 32  # patch 2, then four 2x merges: every stage's grid must be whole

    def __init__(
        self,
        feature_size: int = 48,
        in_channels: int = 1,
        dropout_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        fused_attention: bool = True,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
    ) -> None:
        super().__init__()
        from monai.networks.nets import SwinUNETR
        from monai.networks.nets.swin_unetr import WindowAttention

        self._build_kwargs = dict(
            feature_size=feature_size,
            in_channels=in_channels,
            dropout_path_rate=dropout_path_rate,
            use_checkpoint=use_checkpoint,
            fused_attention=fused_attention,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
        )
        net = SwinUNETR(
            in_channels=in_channels,
            out_channels=1,
            feature_size=feature_size,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            dropout_path_rate=dropout_path_rate,
            use_checkpoint=use_checkpoint,
        )
        del net.out  # task heads live outside the backbone
        if fused_attention:
            for m in net.modules():
                if isinstance(m, WindowAttention):
                    m.forward = types.MethodType(_sdpa_window_attention, m)  # type: ignore[method-assign]
        self.net = net
        self.in_channels = in_channels
        self.feature_size = feature_size
        self.feature_dim = 16 * feature_size
        self.decoder_channels = feature_size
        self.stage_channels = [feature_size * 2**i for i in range(5)]

    @property
    def encoder(self) -> nn.Module:
        """The Swin transformer: what ASA's linear probe freezes."""
        return self.net.swinViT

    def encode(self, x: torch.Tensor, patch_hook: PatchHook | None = None) -> list[torch.Tensor]:
        vit = self.net.swinViT
        if patch_hook is None:
            return list(vit(x, True))
        # Same as SwinTransformer.forward, with a hook on the patch embedding (SimMIM's mask token).
        x0 = vit.pos_drop(patch_hook(vit.patch_embed(x)))
        outs = [vit.proj_out(x0, True)]
        h = x0
        for layer in (vit.layers1, vit.layers2, vit.layers3, vit.layers4):
            h = layer[0](h.contiguous())
            outs.append(vit.proj_out(h, True))
        return outs

    def decode(self, x: torch.Tensor, hs: list[torch.Tensor]) -> torch.Tensor:
        n = self.net
        enc0 = n.encoder1(x)
        enc1 = n.encoder2(hs[0])
        enc2 = n.encoder3(hs[1])
        enc3 = n.encoder4(hs[2])
        dec4 = n.encoder10(hs[4])
        dec3 = n.decoder5(dec4, hs[3])
        dec2 = n.decoder4(dec3, enc3)
        dec1 = n.decoder3(dec2, enc2)
        dec0 = n.decoder2(dec1, enc1)
        return n.decoder1(dec0, enc0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(x, self.encode(x))


@BACKBONES.register("swin_unetr_tiny", tags=("3d",))
def swin_unetr_tiny(**kw: Any) -> SwinUNETRBackbone:
    """Swin UNETR with feature_size 12: the CPU / quick-budget backbone."""
    kw.setdefault("feature_size", 12)
    return SwinUNETRBackbone(**kw)


@BACKBONES.register("swin_unetr_base", tags=("3d",))
def swin_unetr_base(**kw: Any) -> SwinUNETRBackbone:
    """Swin UNETR with feature_size 48: the papers' backbone (ASA, Swin UNETR SSL, SA-Swin)."""
    kw.setdefault("feature_size", 48)
    return SwinUNETRBackbone(**kw)


def input_multiple(name: str) -> int:
    """What every input side of backbone ``name`` must be a multiple of, from the class its factory returns (known
    without building it), 1 where the factory does not say."""
    import typing

    try:
        cls = typing.get_type_hints(BACKBONES.get(name)).get("return")
    except (NameError, TypeError):
        return 1
    return int(getattr(cls, "input_multiple", 1))


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    bb = BACKBONES.get(name)(**kwargs)
    bb.registry_name = name
    return bb


# --- 2D backbones (timm) -----------------------------------------------------------------------------------
# Always ``pretrained=False``: nothing is downloaded, and every method starts from the same random init.


class TimmBackbone2D(Backbone):
    """A timm 2D network behind the Backbone protocol (no classifier: ``num_classes=0``).

    ``encode`` returns [B, C, h, w] maps (ViT: the final normed patch tokens on their grid; Swin and ConvNeXt:
    one map per stage; Swin's last one after its final LayerNorm, ConvNeXt's norm sits in the head after pooling);
    ``pooled`` is timm's pre-logits vector (ViT: the CLS token; Swin / ConvNeXt: the average of the last map,
    ConvNeXt with its head norm); ``token_stride`` is the input pixels per token of the last map.
    """

    spatial_dims = 2
    kind: str = ""

    def __init__(
        self,
        model_name: str,
        in_channels: int = 1,
        img_size: int | tuple[int, int] = 224,
        drop_path_rate: float = 0.0,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        import timm

        self._build_kwargs = dict(
            model_name=model_name,
            in_channels=in_channels,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            **timm_kwargs,
        )
        extra = dict(timm_kwargs)
        if self.kind == "vit":
            extra.setdefault("dynamic_img_size", True)  # any multiple of the patch size, pos-embed resampled
            extra["img_size"] = img_size
        elif self.kind == "swin":
            extra.setdefault("strict_img_size", False)  # other sizes: windows padded, masks built per input
            extra["img_size"] = img_size
        # timm models are typed nn.Module; their attributes (blocks, stages, feature_info...) are model-specific
        self.net: Any = cast(
            Any,
            timm.create_model(
                model_name,
                pretrained=False,
                num_classes=0,
                in_chans=in_channels,
                drop_path_rate=drop_path_rate,
                **extra,
            ),
        )
        self.in_channels = in_channels
        self.img_size = img_size
        self.feature_dim = int(self.net.num_features)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def build_kwargs(self) -> dict[str, Any]:
        kw = dict(self._build_kwargs)
        return {k: v for k, v in kw.items() if k != "model_name"}


def _hooked(tokens_nhwc: torch.Tensor, patch_hook: PatchHook | None) -> torch.Tensor:
    """Apply ``patch_hook`` to [B, N, C] patch tokens (row-major grid) and restore the NHWC layout."""
    if patch_hook is None:
        return tokens_nhwc
    b, h, w, c = tokens_nhwc.shape
    out = patch_hook(tokens_nhwc.reshape(b, h * w, c))
    if out.shape != (b, h * w, c):
        raise ValueError(f"patch_hook must keep the token shape {(b, h * w, c)}, got {tuple(out.shape)}")
    return out.reshape(b, h, w, c)


class ViT2D(TimmBackbone2D):
    """timm VisionTransformer. The patch hook sees the patch-embedding tokens [B, N, D] before the position
    embedding (SimMIM's mask token keeps its position); ``idx_keep`` (MAE) drops patch tokens after it."""

    kind = "vit"

    def __init__(self, model_name: str, **kw: Any) -> None:
        super().__init__(model_name, **kw)
        self.token_stride = int(self.net.patch_embed.patch_size[0])

    def tokens(
        self, x: torch.Tensor, patch_hook: PatchHook | None = None, idx_keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(CLS [B, D] or None, final normed patch tokens [B, N, D]); with ``idx_keep`` [B, K] only those
        patch tokens (row-major indices) enter the blocks and N = K."""
        vit = self.net
        t = _hooked(vit.patch_embed(x), patch_hook)  # [B, h, w, D] (dynamic_img_size)
        t = vit._pos_embed(t)  # prefix tokens prepended, pos-embed added
        npre = vit.num_prefix_tokens
        if idx_keep is not None:
            patches = torch.gather(t[:, npre:], 1, idx_keep[..., None].expand(-1, -1, t.shape[-1]))
            t = torch.cat([t[:, :npre], patches], dim=1)
        t = vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(t))))
        cls = t[:, 0] if vit.cls_token is not None else None
        return cls, t[:, npre:]

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        h, w = x.shape[-2:]
        if h % self.token_stride or w % self.token_stride:
            raise ValueError(
                f"{self.registry_name if hasattr(self, 'registry_name') else 'vit'}: image size "
                f"{(h, w)} is not a multiple of the patch size {self.token_stride}"
            )
        return h // self.token_stride, w // self.token_stride

    def encode(self, x: torch.Tensor, patch_hook: PatchHook | None = None) -> list[torch.Tensor]:
        h, w = self.grid(x)
        _, t = self.tokens(x, patch_hook)
        return [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)]


class Swin2D(TimmBackbone2D):
    """timm SwinTransformer: four stage maps, the last after the final LayerNorm."""

    kind = "swin"

    def __init__(self, model_name: str, **kw: Any) -> None:
        super().__init__(model_name, **kw)
        self.token_stride = int(self.net.feature_info[-1]["reduction"])

    def encode(self, x: torch.Tensor, patch_hook: PatchHook | None = None) -> list[torch.Tensor]:
        net = self.net
        h = _hooked(net.patch_embed(x), patch_hook)  # NHWC
        outs = []
        for i, layer in enumerate(net.layers):
            h = layer(h)
            outs.append((net.norm(h) if i == len(net.layers) - 1 else h).permute(0, 3, 1, 2).contiguous())
        return outs

    def tokens(self, x: torch.Tensor, patch_hook: PatchHook | None = None) -> tuple[None, torch.Tensor]:
        last = self.encode(x, patch_hook)[-1]
        return None, last.flatten(2).transpose(1, 2)


class ConvNeXt2D(TimmBackbone2D):
    """timm ConvNeXt: four stage maps (the stem output is the patch embedding the hook sees, as tokens)."""

    kind = "convnext"

    def __init__(self, model_name: str, **kw: Any) -> None:
        super().__init__(model_name, **kw)
        self.token_stride = int(self.net.feature_info[-1]["reduction"])

    def encode(self, x: torch.Tensor, patch_hook: PatchHook | None = None) -> list[torch.Tensor]:
        net = self.net
        h = net.stem(x)
        if patch_hook is not None:
            h = _hooked(h.permute(0, 2, 3, 1), patch_hook).permute(0, 3, 1, 2)
        outs = []
        for stage in net.stages:
            h = stage(h)
            outs.append(h)
        outs[-1] = net.norm_pre(outs[-1])
        return outs


def _timm_2d(cls: type[TimmBackbone2D], model_name: str) -> Callable[..., TimmBackbone2D]:
    def build(**kw: Any) -> TimmBackbone2D:
        kw.pop("model_name", None)
        return cls(model_name, **kw)

    return build


for _name, _cls, _timm, _doc in (
    ("vit_tiny_2d", ViT2D, "vit_tiny_patch16_224", "ViT-Ti/16: CPU tests and the quick budget"),
    ("vit_small_2d", ViT2D, "vit_small_patch16_224", "ViT-S/16"),
    ("vit_base_2d", ViT2D, "vit_base_patch16_224", "ViT-B/16 (ACE's ViT backbone, paper budget)"),
    ("swin_base_2d", Swin2D, "swin_base_patch4_window7_224", "Swin-B, window 7 (ACE's main backbone)"),
    ("convnext_tiny_2d", ConvNeXt2D, "convnext_tiny", "ConvNeXt-T (LooseLocationSS)"),
):
    _fn = _timm_2d(_cls, _timm)
    _fn.__doc__ = f"{_doc}; timm {_timm}, pretrained=False."
    BACKBONES.register(_name, tags=("2d",))(_fn)
