"""Mechanisms of ``swinunetr_ssl`` and the shared Swin UNETR SSL ops (methods/_swin_ssl.py).

Fast: the networks are exercised on a stand-in backbone; the real-backbone step is covered by the method contract.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import METHODS
from methods._swin_ssl import (
    CutoutSpec,
    SSLHeads,
    aug_rand,
    draw_boxes,
    nt_xent,
    patch_rand_drop,
    rot_rand,
    rotate,
    tokens,
    vae_decoder,
)
from methods.base import StepInfo
from methods.swinunetr_ssl import SwinUNETRSSL, random_crops


class StubBackbone(nn.Module):
    """hs[4] = a 1x1 conv of the 32x average-pooled input: enough to run a method's heads and losses in ms."""

    spatial_dims = 3

    def __init__(self, dim: int = 32, in_channels: int = 1) -> None:
        super().__init__()
        self.feature_dim, self.in_channels = dim, in_channels
        self.encoder = nn.Conv3d(in_channels, dim, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.encoder(F.avg_pool3d(x, 32))
        return [h] * 5


def _marker_volume(n: int = 8) -> torch.Tensor:
    x = torch.zeros(1, 1, n, n, n)
    x[0, 0, 1, 2, 5] = 1.0  # an asymmetric marker at (X, Y, Z) = (1, 2, 5)
    return x


def _where(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(x[0, 0])[0])


# --- rotation --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", range(4))
def test_rotation_about_first_spatial_axis_moves_marker_as_rot90(k):
    n = 8
    p, q = 2, 5  # the marker's (Y, Z); X = 1 is the rotation axis and stays
    expected = [(p, q), (n - 1 - q, p), (n - 1 - p, n - 1 - q), (q, n - 1 - p)][k]
    assert _where(rotate(_marker_volume(n), [k], "x")) == (1, *expected)


@pytest.mark.parametrize("k", range(4))
def test_rotation_z_axis_flag_rotates_the_xy_plane(k):
    n = 8
    p, q = 1, 2  # the marker's (X, Y); Z = 5 stays
    expected = [(p, q), (n - 1 - q, p), (n - 1 - p, n - 1 - q), (q, n - 1 - p)][k]
    assert _where(rotate(_marker_volume(n), [k], "z")) == (*expected, 5)


def test_rot_rand_labels_match_the_rotation_applied_to_each_sample():
    x = _marker_volume().repeat(16, 1, 1, 1, 1)
    (r, r2), k = rot_rand([x, x * 2], np.random.default_rng(0), "x")
    assert set(k.tolist()) == {0, 1, 2, 3}  # independent draws per sample
    for i in range(16):
        assert _where(r[i : i + 1]) == _where(rotate(x[i : i + 1], [int(k[i])], "x"))
        assert torch.equal(r2[i], 2 * r[i])  # the shared-rotation form (rot_rand_for_double)


def test_two_views_get_independent_rotations():
    rng = np.random.default_rng(1)
    x = torch.zeros(64, 1, 4, 4, 4)
    _, k1 = rot_rand([x], rng)
    _, k2 = rot_rand([x], rng)
    assert not torch.equal(k1, k2)


def test_rotation_rejects_a_non_square_plane():
    with pytest.raises(ValueError, match="must be\\s+equal"):
        rotate(torch.zeros(1, 1, 8, 8, 6), [1], "x")


# --- cutout -----------------------------------------------------------------------------------------------------------
def test_box_sizes_are_relative_to_the_roi():
    spec = CutoutSpec()
    boxes = draw_boxes((96, 64, 32), np.random.default_rng(0), spec, fraction=0.3)
    for box in boxes:
        for sl, s in zip(box, (96, 64, 32)):
            side = sl.stop - sl.start
            assert 0 <= sl.start < s - int(0.05 * s)
            assert side < int(0.25 * s) and (side >= int(0.05 * s) or sl.stop == s)


@pytest.mark.parametrize("fraction", [0.05, 0.15, 0.3])
def test_noise_cutout_covers_roughly_the_target_fraction(fraction):
    x = torch.full((1, 64, 64, 64), 5.0)
    boxes = patch_rand_drop(x, np.random.default_rng(3), CutoutSpec(), fraction=fraction)
    covered = float((x != 5.0).float().mean())
    summed = sum(math.prod(s.stop - s.start for s in b) for b in boxes) / 64**3
    assert fraction <= summed < fraction + 15**3 / 64**3  # stops at the first box over the target
    assert 0.7 * fraction < covered <= summed  # overlaps are counted twice in the sum
    for b in boxes:  # noise min-max normalised within each box
        v = x[(slice(None),) + b]
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0


def test_paste_copies_the_other_sample_at_the_same_location():
    n = 4
    base = torch.arange(64**3, dtype=torch.float32).view(1, 64, 64, 64) + 10.0
    x = torch.stack([base * (i + 1) for i in range(n)])  # every voxel distinct, > 1, per sample
    out, records = aug_rand(x, np.random.default_rng(5), CutoutSpec())
    assert any(r.source is not None for r in records)
    for i, rec in enumerate(records):
        noise = torch.zeros(64, 64, 64, dtype=torch.bool)
        for b in rec.noise:
            noise[b] = True
        paste = torch.zeros_like(noise)
        for b in rec.paste:
            paste[b] = True
        if rec.source is not None:
            j = rec.source
            src = out[j] if j < i else x[j]  # the partially augmented batch, as coded
            assert torch.equal(out[i][:, paste], src[:, paste])
            assert rec.source != i
        only_noise = noise & ~paste
        assert float(out[i][:, only_noise].max()) <= 1.0  # noise in [0, 1]; the data are all > 1
        untouched = ~(noise | paste)
        assert torch.equal(out[i][:, untouched], x[i][:, untouched])
    assert not torch.equal(out, x)  # a copy was augmented, the input is not
    assert float(x.min()) == 10.0


# --- heads and losses -------------------------------------------------------------------------------------------------
def test_tokens_are_hwd_row_major():
    h = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 2, 2, 2)
    t = tokens(h)
    assert t.shape == (2, 8, 3)
    assert torch.equal(t[:, 0], h[:, :, 0, 0, 0]) and torch.equal(t[:, 1], h[:, :, 0, 0, 1])
    assert torch.equal(t[:, 2], h[:, :, 0, 1, 0]) and torch.equal(t[:, 4], h[:, :, 1, 0, 0])


def test_heads_follow_feature_dim_and_read_tokens_0_and_1():
    heads = SSLHeads(192, 1)
    assert heads.rotation_head.in_features == 192 and heads.rotation_head.out_features == 4
    assert heads.contrastive_head.in_features == 192 and heads.contrastive_head.out_features == 512
    tok = torch.randn(2, 8, 192)
    assert torch.allclose(heads.rotation(tok), heads.rotation_head(tok[:, 0]))
    assert torch.allclose(heads.contrastive(tok), heads.contrastive_head(tok[:, 1]))
    convs = [m for m in vae_decoder(768, 1) if isinstance(m, nn.Conv3d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (768, 384),
        (384, 192),
        (192, 96),
        (96, 48),
        (48, 48),
        (48, 1),
    ]
    assert sum(isinstance(m, nn.InstanceNorm3d) for m in vae_decoder(768, 1)) == 5
    rec = heads.reconstruct(torch.randn(2, 8, 192), (2, 2, 2))
    assert rec.shape == (2, 1, 64, 64, 64)


def test_nt_xent_equals_the_hand_computed_value():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.0], [3.0, 0.0]])  # normalised: (1, 0), (1, 0)
    e2 = math.exp(2.0)  # exp(cos 1 / tau 0.5)
    # anchors a=(1,0), b=(0,1), c=(1,0), d=(1,0); positives a<->c, b<->d
    hand = (-math.log(e2 / (1 + 2 * e2)) + math.log(3) - math.log(e2 / (2 * e2 + 1)) + math.log(2 * e2 + 1)) / 4
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(hand, rel=1e-6)
    assert hand == pytest.approx((3 * math.log(1 + 2 * e2) - 4 + math.log(3)) / 4)


def _nt_xent_numpy(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        den = sum(np.exp(z[i] @ z[k] / tau) for k in range(2 * n) if k != i)
        total += -np.log(np.exp(z[i] @ z[pos] / tau) / den)
    return total / (2 * n)


@pytest.mark.parametrize("n,tau", [(2, 0.5), (5, 0.5), (3, 0.1)])
def test_nt_xent_matches_a_direct_numpy_implementation(n, tau):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 7, generator=g), torch.randn(n, 7, generator=g)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(_nt_xent_numpy(z1.numpy(), z2.numpy(), tau), rel=1e-5)


# --- the method -------------------------------------------------------------------------------------------------------
def test_registered_with_official_config():
    cls = METHODS.get("swinunetr_ssl")
    cfg = cls.make_config({})
    assert (cfg.rotation_axis, cfg.tau, cfg.w_rot, cfg.w_con, cfg.w_rec) == ("x", 0.5, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="rotation_axis"):
        cls(StubBackbone(), cls.make_config({"rotation_axis": "y"}))


def test_views_crop_the_roi_and_crops_per_volume():
    vol = np.random.default_rng(0).random((1, 72, 70, 40), dtype=np.float32)
    one = random_crops(vol, (64, 64, 64), np.random.default_rng(0), 1)
    two = random_crops(vol, (64, 64, 64), np.random.default_rng(0), 2)
    assert one.shape == (1, 64, 64, 64) and two.shape == (2, 1, 64, 64, 64)
    m = SwinUNETRSSL(StubBackbone(), SwinUNETRSSL.Config(crops_per_volume=2))
    batch = torch.utils.data.default_collate(
        [m.views({"image": vol, "roi": (64, 64, 64)}, np.random.default_rng(i)) for i in range(2)]
    )
    assert batch["image"].shape == (2, 2, 1, 64, 64, 64)
    out = m.training_step(batch, StepInfo(0, 1))  # 4 crops -> NT-Xent over 8 views
    assert torch.isfinite(out.loss)


def test_training_step_is_the_weighted_sum_and_reaches_the_encoder():
    torch.manual_seed(0)
    m = SwinUNETRSSL(StubBackbone())
    x = torch.rand(2, 1, 64, 64, 64)
    out = m.training_step({"image": x}, StepInfo(0, 1))
    logs = out.logs
    assert out.loss.item() == pytest.approx((logs["loss_rot"] + logs["loss_con"] + logs["loss_rec"]).item(), rel=1e-6)
    out.loss.backward()
    assert m.backbone.encoder.weight.grad.abs().sum() > 0
    assert m.ema_pairs() == []  # no teacher


def test_a_zero_weight_skips_its_head():
    m = SwinUNETRSSL(StubBackbone(), SwinUNETRSSL.Config(w_rec=0.0))
    out = m.training_step({"image": torch.rand(2, 1, 64, 64, 64)}, StepInfo(0, 1))
    out.loss.backward()
    assert float(out.logs["loss_rec"]) == 0.0
    assert all(p.grad is None for p in m.heads.conv.parameters())
