"""2D SSL baselines built on lightly: DINO (multi-crop self-distillation) and MAE (masked autoencoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.backbones import build_backbone
from bench.registry import METHODS
from methods.base import StepInfo

DINO_SMALL = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "n_local": 2}
MAE_SMALL = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}


def _make(name, backbone="vit_tiny_2d", **over):
    torch.manual_seed(0)
    small = {"depth": 1} if backbone.startswith("vit") else {"depths": (1, 1, 1, 1)}
    bb = build_backbone(backbone, img_size=64, **small)
    cls = METHODS.get(name)
    base = DINO_SMALL if name == "dino" else MAE_SMALL
    return cls(bb, cls.make_config({**base, **over}))


def test_registered_as_2d():
    assert {"dino", "mae"} <= set(METHODS.names(tag="2d"))
    assert "ema" in METHODS.get("dino").capabilities and "2d" in METHODS.get("mae").capabilities


def test_dino_crop_sizes(views_batch):
    m = _make("dino")
    assert m.sizes((224, 224)) == (224, 96)  # the paper's sizes
    assert m.sizes((128, 128)) == (128, 48)  # quick budget on a ViT/16
    b = views_batch(m)
    assert b["global"].shape == (2, 2, 1, 64, 64) and b["local"].shape == (2, 2, 1, 16, 16)
    assert 0 <= b["global"].min() and b["global"].max() <= 1


def test_dino_size_errors_name_the_option():
    with pytest.raises(ValueError, match="global_size=100 must be a positive multiple"):
        _make("dino", global_size=100)
    with pytest.raises(ValueError, match="local_size=20"):
        _make("dino", global_size=64, local_size=20)
    with pytest.raises(ValueError, match="not square; set global_size"):
        _make("dino").views({"image": np.zeros((1, 64, 96), np.float32), "roi": (64, 96)}, np.random.default_rng(0))


def test_dino_loss_equals_manual_cross_entropy(views_batch):
    """Teacher sees the 2 global crops, the student all 4; every (teacher i, student j != i) pair, averaged."""
    m = _make("dino")
    m.train()
    b = views_batch(m)
    center = m.criterion.center.clone()
    loss = m.training_step(b, StepInfo(5, 10)).loss
    with torch.no_grad():
        views = [b["global"][:, 0], b["global"][:, 1], b["local"][:, 0], b["local"][:, 1]]
        s = [F.log_softmax(m.head(m.backbone.pooled(v)) / 0.1, -1) for v in views]
        t = [F.softmax((m.teacher["head"](m.teacher["backbone"].pooled(v)) - center) / 0.04, -1) for v in views[:2]]
        terms = [-(t[i] * s[j]).sum(-1).mean() for i in range(2) for j in range(4) if i != j]
    assert len(terms) == 6
    assert torch.isclose(loss.detach(), torch.stack(terms).mean(), rtol=1e-4)
    m.after_optimizer_step(StepInfo(6, 10))  # the centre moves after the optimizer step, as in main_dino.py
    assert not torch.equal(m.criterion.center, center)


def test_dino_teacher_gets_no_gradient_and_is_exported(views_batch):
    m = _make("dino")
    m.train()
    m.training_step(views_batch(m), StepInfo(5, 10)).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    assert m.export_encoder() is m.teacher["backbone"]
    m.zero_grad()
    m.training_step(views_batch(m), StepInfo(0, 1000)).loss.backward()  # progress 0 < freeze_last_layer
    assert m.head.last_layer.weight_v.grad is None  # None, not zero: AdamW would still decay a zero gradient


def test_dino_runs_on_convnext(views_batch):
    m = _make("dino", backbone="convnext_tiny_2d", local_size=32)
    out = m.training_step(views_batch(m), StepInfo(5, 10))
    assert torch.isfinite(out.loss)


def test_mae_masks_three_quarters_and_targets_are_patch_normalised(views_batch):
    m = _make("mae")
    x = torch.rand(2, 1, 64, 64)
    t = m.targets(x)
    assert t.shape == (2, 16, 256)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 16), atol=1e-5)
    # patch 5 (row 1, column 1 of the 4x4 grid) is pixels [16:32, 16:32]
    raw = x[0, 0, 16:32, 16:32].reshape(-1)
    assert torch.allclose(t[0, 5], (raw - raw.mean()) / (raw.var() + 1e-6).sqrt(), atol=1e-5)
    out = m.training_step(views_batch(m), StepInfo(0, 10))
    assert out.logs["masked_fraction"] == 0.75 and torch.isfinite(out.loss)


def test_mae_loss_only_on_masked_patches(monkeypatch, views_batch):
    """With a fixed mask the loss equals the MSE over the masked patches only, recomputed by hand."""
    from lightly.models import utils

    m = _make("mae")
    keep = torch.tensor([[0, 5, 10, 15], [1, 2, 3, 4]])
    mask = torch.stack([torch.tensor([i for i in range(16) if i not in k.tolist()]) for k in keep])
    monkeypatch.setattr(utils, "random_token_mask", lambda size, ratio, mask_class_token, device: (keep, mask))
    x = views_batch(m)["image"]
    loss = m.training_step({"image": x}, StepInfo(0, 10)).loss
    with torch.no_grad():
        cls, vis = m.backbone.tokens(x, idx_keep=keep)
        pred = m.decoder(cls, vis, keep, 16)
        tgt = m.targets(x)
        manual = torch.stack([((pred[b, mask[b]] - tgt[b, mask[b]]) ** 2).mean() for b in range(2)]).mean()
    assert torch.isclose(loss.detach(), manual, rtol=1e-5)


def test_mae_needs_a_vit_and_a_fitting_size():
    with pytest.raises(ValueError, match="mae: needs a ViT backbone"):
        _make("mae", backbone="convnext_tiny_2d")
    with pytest.raises(ValueError, match="input_size=40"):
        _make("mae", input_size=40)
    with pytest.raises(ValueError, match="not square; set input_size"):
        _make("mae").views({"image": np.zeros((1, 64, 96), np.float32), "roi": (64, 96)}, np.random.default_rng(0))
