"""Mechanisms of ``swinunetr_ssl`` and the shared Swin UNETR SSL ops (methods/_swin_ssl.py).

Fast: the networks are exercised on a stand-in backbone; the real-backbone step is covered by the method contract.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import pad_to
from bench.registry import DATASETS, METHODS
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
from methods.swinunetr_ssl import SwinUNETRSSL, foreground_crop, random_crops


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


# --- the official loader's window and foreground crop (flags; the official values at budget=paper) -------------------
def _blob_volume(shape, box, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Zeros (the window's floor: background) with positive noise inside ``box`` (slices) of the last channel."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((channels, *shape), np.float32)
    vol[(channels - 1,) + box] = rng.uniform(0.1, 1.0, size=vol[(channels - 1,) + box].shape)
    return vol


def _window(vol: np.ndarray, start, size) -> np.ndarray:
    """vol[:, start : start + size] per axis, zeros where the window leaves the volume."""
    out = np.zeros((vol.shape[0], *size), vol.dtype)
    src = tuple(slice(max(a, 0), min(a + n, s)) for a, n, s in zip(start, size, vol.shape[1:]))
    dst = tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(src, start))
    out[(slice(None),) + dst] = vol[(slice(None),) + src]
    return out


CROP_CASES = [
    # shape, blob box, channels; the expected box by hand (start, size per axis, in the ROI-padded volume): each
    # side of the blob's box rounded up to a multiple of 16, the extra split floor-first before it
    pytest.param((40, 30, 20), (slice(10, 25), slice(5, 12), slice(3, 18)), 1, (10, 1, 3), (16, 16, 16), id="inside"),
    pytest.param((40, 30, 20), (slice(0, 3), slice(25, 30), slice(17, 20)), 1, (-6, 20, 11), (16,) * 3, id="edges"),
    # padded to (16, 30, 16) first, (2, 0, 5) before: the blob is at [4, 11) x [1, 29) x [5, 10) there
    pytest.param((12, 30, 5), (slice(2, 9), slice(1, 29), slice(0, 5)), 1, (0, -1, 0), (16, 32, 16), id="small"),
    pytest.param((40, 30, 20), (slice(30, 40), slice(0, 8), slice(9, 10)), 2, (27, -4, 2), (16,) * 3, id="2-channels"),
]


@pytest.mark.parametrize("shape,box,channels,start,size", CROP_CASES)
def test_foreground_crop_grows_the_foreground_box_to_multiples_of_the_roi(shape, box, channels, start, size):
    roi = (16, 16, 16)
    vol = _blob_volume(shape, box, channels)
    vol[0, 0, 0, 0] = -0.5  # below the window's floor: background
    # the official loader pads to the ROI first; the crop of the unpadded volume is the same
    assert np.array_equal(foreground_crop(vol, roi), _window(pad_to(vol, roi), start, size))


@pytest.mark.slow
@pytest.mark.parametrize("shape,box,channels,start,size", CROP_CASES)
def test_foreground_crop_is_monai_crop_foreground_after_spatial_pad(shape, box, channels, start, size):
    """The official loader's SpatialPadd(ROI) then CropForegroundd(k_divisible=ROI, allow_smaller=True); slow only
    for importing monai.transforms."""
    from monai.transforms import CropForeground, SpatialPad

    roi = (16, 16, 16)
    vol = _blob_volume(shape, box, channels)
    vol[0, 0, 0, 0] = -0.5
    official = CropForeground(k_divisible=list(roi), allow_smaller=True)(SpatialPad(list(roi))(torch.from_numpy(vol)))
    assert np.array_equal(foreground_crop(vol, roi), np.asarray(official))


def test_foreground_crop_keeps_a_volume_without_foreground():
    vol = np.zeros((1, 20, 20, 20), np.float32)
    assert foreground_crop(vol, (16, 16, 16)) is vol  # MONAI would return an empty crop


def test_foreground_crop_flag_draws_every_crop_from_the_foreground_box():
    roi = (32, 32, 32)
    # one blob in a long volume: its box (20 x 20 x 30) grows about its centre to the single ROI [114, 146) x
    # [4, 36) x [4, 36), so every crop is that region; without the flag most crops miss the blob
    vol = _blob_volume((160, 40, 40), (slice(120, 140), slice(10, 30), slice(5, 35)))
    region = vol[:, 114:146, 4:36, 4:36]
    on = SwinUNETRSSL(StubBackbone(), SwinUNETRSSL.Config(foreground_crop=True))
    off = SwinUNETRSSL(StubBackbone())
    for seed in range(6):
        crop = on.views({"image": vol, "roi": roi}, np.random.default_rng(seed))["image"]
        assert np.array_equal(crop.numpy(), region)
    misses = [
        float(off.views({"image": vol, "roi": roi}, np.random.default_rng(s))["image"].max()) == 0.0 for s in range(6)
    ]
    assert any(misses)


def test_corpus_window_is_an_hu_window_for_ct_corpora_only():
    cls = SwinUNETRSSL
    suite = {"a_min": -175.0, "a_max": 250.0, "spacing": (1.5, 1.5, 2.0), "size": None}
    assert cls.corpus_preprocessing(cls.make_config({}), suite, "CT") == suite  # default: the suite's
    official = cls.make_config({"corpus_window": [-1000, 1000]})
    assert official.corpus_window == (-1000.0, 1000.0)
    assert cls.corpus_preprocessing(official, suite, "CT") == dict(suite, a_min=-1000.0, a_max=1000.0)
    with pytest.raises(ValueError, match="corpus_window.*HU window.*MR"):
        cls.corpus_preprocessing(official, suite, "MR")
    for bad in ([1000, -1000], [0], [0, 1, 2]):
        with pytest.raises(ValueError, match="corpus_window"):
            cls.make_config({"corpus_window": bad})


def test_budget_paper_restores_the_official_loader():
    from bench.plan import compose

    paper = compose(["method=swinunetr_ssl", "budget=paper"]).method.config
    assert list(paper.corpus_window) == [-1000, 1000] and paper.foreground_crop and paper.crops_per_volume == 2
    quick = compose(["method=swinunetr_ssl", "budget=quick"]).method.config
    assert quick.corpus_window is None and not quick.foreground_crop and quick.crops_per_volume == 1


def test_the_runner_windows_the_pretraining_corpus_with_the_flag_only(data_dir, tmp_path):
    """The smoke corpus (CT) through the runner: the flag's window on the pretraining volumes and in the
    pretraining identity (the cache key), the suite's window for transfer; an MR corpus refuses the flag."""
    from bench import runner
    from bench.plan import compose

    def plan(*extra):
        return runner.make_plan(
            compose(["method=swinunetr_ssl", f"runs_dir={tmp_path}", "device=cpu", "progress=false", *extra])
        )

    base, win = plan("suite=smoke"), plan("suite=smoke", "method.config.corpus_window=[-1000,1000]")
    assert runner.corpus_preprocess(base) == runner.suite_preprocess(base) == runner.suite_preprocess(win)
    assert (runner.corpus_preprocess(win).a_min, runner.corpus_preprocess(win).a_max) == (-1000.0, 1000.0)
    assert runner.pretrain_identity(win)["preprocess"] == asdict(runner.corpus_preprocess(win))
    assert runner.pretrain_identity(base)["preprocess"] == asdict(runner.suite_preprocess(base))
    v_base, h_base, _ = runner.load_corpus(base, 1)
    v_win, h_win, _ = runner.load_corpus(win, 1)
    assert h_base == h_win  # the same records, differently windowed
    ds = DATASETS.get("smoke")()
    for rec, a, b in zip(ds.records("train"), v_base, v_win):
        raw = ds.load(rec)["image"].astype(np.float32)
        assert np.allclose(a, np.clip((raw + 175) / 425, 0, 1), atol=1e-6)
        assert np.allclose(b, np.clip((raw + 1000) / 2000, 0, 1), atol=1e-6)
    with pytest.raises(runner.UserError, match="corpus brain.*corpus_window.*MR"):
        runner.corpus_preprocess(plan("suite=brain", "method.config.corpus_window=[-1000,1000]"))
