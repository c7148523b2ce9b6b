"""Encoder exports: the weights a protocol receives, with the metadata to rebuild them.

Loading is always ``strict=True``: a missing or unexpected key is an error, never a silent
partial load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.backbones import Backbone, build_backbone
from bench.engine import atomic_torch_save


def save_export(backbone: Backbone, path: Path, meta: dict[str, Any], extras: dict[str, Any] | None = None) -> None:
    """The backbone (loaded strictly by every protocol) plus optional method extras (e.g. SACA's pre-trained
    block) that a protocol may use; plain tensors and numbers only, so ``weights_only`` loading keeps working."""
    meta = dict(
        meta,
        backbone=backbone.registry_name,
        backbone_kwargs=backbone.build_kwargs(),
        spatial_dims=backbone.spatial_dims,
        feature_dim=backbone.feature_dim,
    )
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    atomic_torch_save({"state_dict": state, "meta": meta, "extras": extras or {}}, path)


def load_extras(path: Path) -> dict[str, Any]:
    """The method extras of an export ({} for exports without any)."""
    return torch.load(path, map_location="cpu", weights_only=True).get("extras") or {}


def load_meta(path: Path) -> dict[str, Any]:
    """An export's metadata (method, corpus, pretraining steps and compute, backbone), without building it."""
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]


def load_export(path: Path, **override_kwargs: Any) -> tuple[Backbone, dict[str, Any]]:
    """Rebuild the backbone named in the export and load its weights strictly."""
    doc = torch.load(path, map_location="cpu", weights_only=True)
    meta = doc["meta"]
    kwargs = dict(meta["backbone_kwargs"], **override_kwargs)
    bb = build_backbone(meta["backbone"], **kwargs)
    bb.load_state_dict(doc["state_dict"], strict=True)
    return bb, meta
