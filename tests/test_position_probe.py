"""bench.tools.position_probe: crop geometry, ridge fit, subject-wise penalty choice, and the probe end to end on an
encoder stand-in whose features do or do not carry the crop's position."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.tools import position_probe as P
from bench import stats


def test_crop_corners_stay_inside_and_centres_span_zero_to_one():
    corners = P.crop_corners((40, 36, 32), 32, 500, seed=0)
    assert corners.min() == 0 and (corners <= np.array([8, 4, 0])).all() and corners[:, 0].max() == 8
    c = P.centres(np.array([[0, 0, 0], [8, 4, 0]]), (40, 36, 32), 32)
    assert np.allclose(c[0], [15.5 / 39, 15.5 / 35, 0.5]) and np.allclose(c[1], [23.5 / 39, 19.5 / 35, 0.5])
    with pytest.raises(ValueError, match="smaller"):
        P.crop_corners((20, 40, 40), 32, 1, 0)


@pytest.mark.parametrize("features", [3, 200])  # primal and dual solves
def test_fit_ridge_matches_numpy_least_squares_at_tiny_penalty(features):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, features))
    y = rng.normal(size=(120, 2))
    w, b, mean, std = P.fit_ridge(x, y, 1e-9)
    z = (x - mean) / std
    if features < 120:
        ref, *_ = np.linalg.lstsq(np.c_[z, np.ones(120)], y, rcond=None)
        assert np.allclose(w, ref[:-1], atol=1e-6) and np.allclose(b, ref[-1], atol=1e-6)
    else:  # interpolates the (centred) targets exactly
        assert np.allclose(P.predict((w, b, mean, std), x), y, atol=1e-5)


def test_r2_is_one_for_perfect_and_zero_for_the_mean():
    y = np.random.default_rng(1).normal(size=(50, 3))
    assert np.allclose(P.r2(y, y, y.mean(0)), 1.0)
    assert np.allclose(P.r2(y, np.broadcast_to(y.mean(0), y.shape), y.mean(0)), 0.0)


def test_probe_finds_position_in_informative_features_and_none_in_noise():
    rng = np.random.default_rng(2)
    n_sub, n = 20, 16
    y = rng.random((n_sub * n, 3))
    groups = np.repeat(np.arange(n_sub), n)
    informative = np.c_[y @ rng.normal(size=(3, 10)), rng.normal(size=(len(y), 30))] + 0.05 * rng.normal(
        size=(len(y), 40)
    )
    noise = rng.normal(size=(len(y), 40))
    tr, te = groups < 14, groups >= 14
    good = P.probe((informative[tr], y[tr], groups[tr]), (informative[te], y[te]))
    bad = P.probe((noise[tr], y[tr], groups[tr]), (noise[te], y[te]))
    assert good["r2"] > 0.95
    assert bad["r2"] < 0.05 and bad["lambda"] >= 100  # cross-validation shrinks noise features away


class _IntensityEncoder(torch.nn.Module):
    """Stand-in encoder: the crop's mean intensity (and its square) as features."""

    spatial_dims = 3

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3, 4))
        return torch.stack([m, m**2], 1)


def test_features_follow_the_crops_of_each_volume():
    x0 = np.linspace(0, 1, 48, dtype=np.float32)[:, None, None]
    ramp = np.broadcast_to(x0, (48, 40, 40)).copy()  # intensity = axis-0 (x) position: the crop's x is readable
    flat = np.full((48, 40, 40), 0.5, np.float32)  # nothing to read
    vols = [(f"v{i}", ramp) for i in range(6)]
    x, y, g = P.features(_IntensityEncoder(), vols, 32, 8, seed=0)
    assert x.shape == (48, 2) and y.shape == (48, 3) and list(np.bincount(g)) == [8] * 6
    tx, ty, _ = P.features(_IntensityEncoder(), vols[:2], 32, 8, seed=99)
    res = P.probe((x, y, g), (tx, ty))
    assert res["r2_xyz"][0] > 0.99  # x (axis 0) from intensity
    fx, fy, fg = P.features(_IntensityEncoder(), [(f"f{i}", flat) for i in range(6)], 32, 8, seed=0)
    gx, gy, _ = P.features(_IntensityEncoder(), [("f", flat)] * 2, 32, 8, seed=99)
    assert P.probe((fx, fy, fg), (gx, gy))["r2"] < 0.05


def test_cli_refuses_a_missing_export(tmp_path, capsys):
    assert P.main(["--exports", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_resampled_r2_equals_r2_of_the_drawn_subjects_put_together():
    # the definition: score the concatenated crops of the drawn subjects (a subject drawn twice counts twice)
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(5), 4)
    y = rng.uniform(size=(20, 3))
    pred = y + rng.normal(0, 0.1, y.shape)
    ref = np.full(3, 0.5)
    idx = P.subject_resamples(5, 7, seed=0)
    got = P.resampled_r2(y, pred, ref, groups, idx)
    for b, draw in enumerate(idx):
        rows = np.concatenate([np.flatnonzero(groups == g) for g in draw])
        assert np.isclose(got[b], P.r2(y[rows], pred[rows], ref).mean())
    everyone = np.arange(5)[None]
    assert np.isclose(P.resampled_r2(y, pred, ref, groups, everyone)[0], P.r2(y, pred, ref).mean())


def test_paired_resamples_separate_a_better_encoder_and_not_an_identical_one():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(20), 8)
    y = rng.uniform(size=(160, 3))
    ref = y.mean(0)
    worse = y + rng.normal(0, 0.25, y.shape)
    better = y + rng.normal(0, 0.15, y.shape)
    idx = P.subject_resamples(20, 2000, seed=0)
    base = P.resampled_r2(y, worse, ref, groups, idx)
    assert stats.bootstrap_p(P.resampled_r2(y, better, ref, groups, idx) - base) < 0.01
    assert stats.bootstrap_p(P.resampled_r2(y, worse, ref, groups, idx) - base) == 1.0
