"""bench.metrics against independent references (MONAI, scikit-learn), hand-computed cases and the empty-mask policy.

MONAI's metrics take one-hot batch-first torch tensors ``[B, C, ...]`` and return float32; the policy-defined
empty-mask cases are checked by hand, because MONAI returns NaN there (see bench/metrics.py's docstring).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from bench import metrics as M

torch = pytest.importorskip("torch")
monai_metrics = pytest.importorskip("monai.metrics")
sk_metrics = pytest.importorskip("sklearn.metrics")

SPACING = (0.7, 1.1, 2.3)  # anisotropic
TOLS = (1.5, 2.0, 3.0)  # no distance sqrt((0.7a)^2 + (1.1b)^2 + (2.3c)^2) equals one exactly: no float32 ties
# MONAI's torch.quantile computes the percentile position in float32 (0.95 * (n - 1) is off by ~n * 6e-8), which
# moves its HD95 by up to ~1e-4 of the gap between the interpolated distances; convention errors are >= 0.1 mm.
HD = {"rel": 1e-5, "abs": 1e-3}


def close(metric: str, expected: float) -> object:
    """pytest.approx for a MONAI value of ``metric`` (float32: Dice/NSD to 1e-6, HD95 as HD)."""
    return pytest.approx(expected, **(HD if metric == "hd95" else {"rel": 1e-6}))


# --------------------------------------------------------------------------------------------------- fixtures


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 2.0) -> np.ndarray:
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma)


def blob_pair(seed: int, shape: tuple[int, ...] = (28, 30, 16)) -> tuple[np.ndarray, np.ndarray]:
    """A random reference blob and a correlated, imperfect prediction of it."""
    rng = np.random.default_rng(seed)
    f = smooth_noise(rng, shape)
    g = f + 0.6 * smooth_noise(rng, shape, sigma=1.5)
    return f > np.quantile(f, 0.8), g > np.quantile(g, 0.78)


def label_pair(seed: int, n_classes: int, shape: tuple[int, ...] = (26, 24, 14)) -> tuple[np.ndarray, np.ndarray]:
    """Random reference/prediction label maps with classes 0..n_classes (0 = background, most voxels)."""
    rng = np.random.default_rng(seed)
    f = np.stack([smooth_noise(rng, shape) for _ in range(n_classes + 1)])
    f[0] += 0.12
    g = f + 0.4 * np.stack([smooth_noise(rng, shape, sigma=1.5) for _ in range(n_classes + 1)])
    return g.argmax(0).astype(np.int64), f.argmax(0).astype(np.int64)


def onehot(mask_or_labels: np.ndarray, n_classes: int | None = None) -> torch.Tensor:
    """[1, C, ...] float one-hot tensor; a boolean mask gives channels (background, foreground)."""
    x = np.asarray(mask_or_labels)
    labels = x.astype(np.int64) if n_classes is None else x
    n = 2 if n_classes is None else n_classes + 1
    return torch.from_numpy(np.stack([labels == c for c in range(n)]).astype(np.float32))[None]


def monai_reference(pred: np.ndarray, ref: np.ndarray, spacing, tols, n_classes: int | None = None) -> dict:
    """MONAI's dice / hd95 / nsd per foreground class (index 0 = class 1)."""
    p, r = onehot(pred, n_classes), onehot(ref, n_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": monai_metrics.compute_dice(p, r, include_background=False, ignore_empty=False)[0].tolist(),
            "hd95": monai_metrics.compute_hausdorff_distance(p, r, percentile=95, spacing=spacing)[0].tolist(),
            "nsd": monai_metrics.compute_surface_dice(p, r, class_thresholds=list(tols), spacing=spacing)[0].tolist(),
        }


def cube(shape: tuple[int, ...], lo: tuple[int, ...], size: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


# --------------------------------------------------------------------------------------------------- vs MONAI


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_monai_on_random_blobs(seed: int) -> None:
    pred, ref = blob_pair(seed)
    assert pred.any() and ref.any() and not np.array_equal(pred, ref)
    for tol in TOLS:
        want = monai_reference(pred, ref, SPACING, [tol])
        assert M.dice(pred, ref) == pytest.approx(want["dice"][0], rel=1e-6)
        assert M.hd95(pred, ref, SPACING) == pytest.approx(want["hd95"][0], **HD)
        assert M.nsd(pred, ref, SPACING, tol) == pytest.approx(want["nsd"][0], rel=1e-6)
        assert 0 < M.nsd(pred, ref, SPACING, tol) < 1


def test_binary_metrics_match_monai_in_2d() -> None:
    rng = np.random.default_rng(7)
    f = smooth_noise(rng, (48, 40), sigma=3.0)
    g = f + 0.5 * smooth_noise(rng, (48, 40), sigma=2.0)
    pred, ref = g > np.quantile(g, 0.7), f > np.quantile(f, 0.7)
    spacing = (0.8, 1.9)
    want = monai_reference(pred, ref, spacing, [2.0])
    assert M.dice(pred, ref) == pytest.approx(want["dice"][0], rel=1e-6)
    assert M.hd95(pred, ref, spacing) == pytest.approx(want["hd95"][0], **HD)
    assert M.nsd(pred, ref, spacing, 2.0) == pytest.approx(want["nsd"][0], rel=1e-6)


def test_hd95_is_max_of_directed_percentiles_like_monai() -> None:
    """A prediction = reference + a far-away speck: the pooled 95th percentile and the max of the directed ones
    differ; MONAI (and we) take the max of the directed 95th percentiles."""
    shape, spacing = (40, 20, 20), (1.0, 1.0, 1.0)
    ref = cube(shape, (2, 4, 4), 10)
    pred = ref.copy()
    pred[30:33, 8:11, 8:11] = True
    want = monai_reference(pred, ref, spacing, [2.0])
    got = M.hd95(pred, ref, spacing)
    assert got == pytest.approx(want["hd95"][0], **HD)
    sp, sr = M._surface(pred), M._surface(ref)
    d_pr = ndimage.distance_transform_edt(~sr)[sp]
    d_rp = ndimage.distance_transform_edt(~sp)[sr]
    assert got == pytest.approx(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
    assert got != pytest.approx(np.percentile(np.concatenate([d_pr, d_rp]), 95))


@pytest.mark.parametrize("seed", [3, 4])
def test_case_metrics_match_monai_multiclass(seed: int) -> None:
    n = 3
    pred, ref = label_pair(seed, n)
    tols = {1: 1.5, 2: 2.0, 3: 3.0}
    rows = M.segmentation_case_metrics(pred, ref, [1, 2, 3], SPACING, tols)
    want = monai_reference(pred, ref, SPACING, [tols[c] for c in (1, 2, 3)], n_classes=n)
    assert [(r["class"], r["metric"]) for r in rows] == [(c, m) for c in (1, 2, 3) for m in ("dice", "nsd", "hd95")]
    for r in rows:
        assert isinstance(r["value"], float)
        assert r["value"] == close(r["metric"], want[r["metric"]][r["class"] - 1])


# --------------------------------------------------------------------------------------------------- hand-computed


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_cubes_offset_by_k_voxels(axis: int, k: int) -> None:
    """Two 8-voxel cubes offset by k voxels along one axis: HD95 = k * spacing[axis] (the whole leading face, 64 of
    296 surface voxels, sits exactly at that distance and nothing is farther)."""
    shape = (20, 20, 20)
    lo = [5, 5, 5]
    ref = cube(shape, tuple(lo), 8)
    lo[axis] += k
    pred = cube(shape, tuple(lo), 8)
    assert M.hd95(pred, ref, SPACING) == pytest.approx(k * SPACING[axis], rel=1e-12)
    assert M.dice(pred, ref) == pytest.approx((8 - k) / 8)
    want = monai_reference(pred, ref, SPACING, [2.0])
    assert M.hd95(pred, ref, SPACING) == pytest.approx(want["hd95"][0], **HD)
    assert M.nsd(pred, ref, SPACING, 2.0) == pytest.approx(want["nsd"][0], rel=1e-6)


def test_cube_vs_itself_is_perfect() -> None:
    c = cube((12, 14, 10), (2, 3, 1), 6)
    assert M.dice(c, c) == 1.0
    assert M.nsd(c, c, SPACING, 0.0) == 1.0
    assert M.hd95(c, c, SPACING) == 0.0
    rows = M.segmentation_case_metrics(c.astype(np.uint8), c.astype(np.uint8), [1], SPACING)
    assert {r["metric"]: r["value"] for r in rows} == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}


def test_nsd_tolerance_is_inclusive_and_in_mm() -> None:
    """Cubes offset by 2 voxels along axis 0 (1 mm). Per cube, 100 of the 296 surface voxels sit at exactly 1 mm
    from the other surface: the 64-voxel leading face (-> the other's leading face) and the 6x6 interior of the
    trailing face (-> the other's trailing face); all the others are within 0.5 mm."""
    spacing = (0.5, 3.0, 3.0)
    ref = cube((16, 12, 12), (4, 2, 2), 8)
    pred = cube((16, 12, 12), (6, 2, 2), 8)
    assert M.nsd(pred, ref, spacing, 1.0) == 1.0  # every distance <= 1 mm, boundary included
    assert M.nsd(pred, ref, spacing, 0.99) == pytest.approx(1 - 2 * 100 / (2 * 296))
    assert M.nsd(pred, ref, spacing, 0.5) == pytest.approx(1 - 2 * 100 / (2 * 296))
    assert M.nsd(pred, ref, spacing, 0.49) == pytest.approx(1 - 2 * (100 + 28) / (2 * 296))  # + the 28-voxel rings


def test_nsd_exact_tie_counts_inside() -> None:
    """3 voxels of 1.1 mm is 3.3000000000000003 mm in floating point; it still lies within a 3.3 mm tolerance."""
    spacing = (1.0, 1.1, 1.0)
    ref = cube((12, 16, 12), (2, 2, 2), 8)
    pred = cube((12, 16, 12), (2, 5, 2), 8)
    assert 3 * 1.1 > 3.3
    assert M.nsd(pred, ref, spacing, 3.3) == 1.0
    assert M.hd95(pred, ref, spacing) == pytest.approx(3.3)


def test_dice_hand_computed() -> None:
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 0, 1, 1], bool)
    assert M.dice(a, b) == pytest.approx(2 * 2 / 6)
    assert M.dice(a.astype(np.uint8), b.astype(float)) == pytest.approx(2 * 2 / 6)  # non-zero = foreground


# --------------------------------------------------------------------------------------------------- policy


def test_empty_policy_binary() -> None:
    shape, spacing = (10, 12, 8), (0.5, 1.0, 3.0)
    empty = np.zeros(shape, bool)
    c = cube(shape, (2, 2, 2), 4)
    diag = math.sqrt((10 * 0.5) ** 2 + 12.0**2 + (8 * 3.0) ** 2)
    assert M.image_diagonal_mm(shape, spacing) == pytest.approx(diag)

    assert (M.dice(empty, empty), M.nsd(empty, empty, spacing), M.hd95(empty, empty, spacing)) == (1.0, 1.0, 0.0)
    for pred, ref in [(empty, c), (c, empty)]:
        assert M.dice(pred, ref) == 0.0
        assert M.nsd(pred, ref, spacing) == 0.0
        assert M.hd95(pred, ref, spacing) == pytest.approx(diag)


def test_empty_policy_in_case_metrics_never_nan() -> None:
    shape, spacing = (10, 12, 8), (0.5, 1.0, 3.0)
    pred = np.zeros(shape, np.int64)
    ref = np.zeros(shape, np.int64)
    pred[1:4, 1:4, 1:4] = 1  # class 1 only in pred
    ref[5:9, 5:9, 2:6] = 2  # class 2 only in ref
    pred[6:9, 6:9, 3:6] = 3  # class 3 in both
    ref[6:9, 6:8, 3:6] = 3
    rows = M.segmentation_case_metrics(pred, ref, [1, 2, 3, 4], spacing)  # class 4 in neither
    got = {(r["class"], r["metric"]): r["value"] for r in rows}
    diag = M.image_diagonal_mm(shape, spacing)
    for c in (1, 2):
        assert (got[c, "dice"], got[c, "nsd"]) == (0.0, 0.0)
        assert got[c, "hd95"] == pytest.approx(diag)
    assert (got[4, "dice"], got[4, "nsd"], got[4, "hd95"]) == (1.0, 1.0, 0.0)
    assert 0 < got[3, "dice"] < 1
    assert all(math.isfinite(v) for v in got.values())


# --------------------------------------------------------------------------------------------------- cropping


def localized_labels(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Label maps whose classes occupy small, separate regions (so cropping really crops); class 4 touches the
    image border in both masks and class 5 in one mask only."""
    shape = (40, 36, 16)
    pred, ref = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for c, lo in zip((1, 2, 3, 4), ((3, 4, 3), (20, 5, 2), (6, 22, 6), (28, 24, 8))):
        p, r = blob_pair(seed * 10 + c, shape=(12, 12, 8))
        box = tuple(slice(a, a + n) for a, n in zip(lo, (12, 12, 8)))
        pred[box][p], ref[box][r] = c, c
    pred[39, 30:34, 10:16] = 5
    return pred, ref


@pytest.mark.parametrize("seed", [5, 6])
def test_cropping_equals_uncropped(seed: int) -> None:
    pred, ref = localized_labels(seed)
    ids, tols = [1, 2, 3, 4, 5, 6], {1: 1.5, 3: 3.0}
    cropped = M.segmentation_case_metrics(pred, ref, ids, SPACING, tols)
    full = M.segmentation_case_metrics(pred, ref, ids, SPACING, tols, crop=False)
    assert cropped == full  # identical, not just close
    for c in ids:
        p, r = pred == c, ref == c
        if p.any() and r.any():
            box = M._union_padded(M._bbox(p), M._bbox(r), p.shape)
            assert np.prod([s.stop - s.start for s in box]) < p.size / 4
            assert any(s.start == 0 or s.stop == n for s, n in zip(box, p.shape)) == (c == 4)
        assert M.hd95(p, r, SPACING) == M.hd95(p, r, SPACING, crop=False)
        assert M.nsd(p, r, SPACING, 2.0) == M.nsd(p, r, SPACING, 2.0, crop=False)
        rows = {x["metric"]: x["value"] for x in full if x["class"] == c}
        assert rows == {
            "dice": M.dice(p, r),
            "nsd": M.nsd(p, r, SPACING, tols.get(c, 2.0), crop=False),
            "hd95": M.hd95(p, r, SPACING, crop=False),
        }
    want = monai_reference(pred, ref, SPACING, [tols.get(c, 2.0) for c in ids], n_classes=6)
    for r in cropped:
        if r["class"] <= 4:
            assert r["value"] == close(r["metric"], want[r["metric"]][r["class"] - 1])


def test_case_metrics_float_labels_and_scalar_spacing() -> None:
    """Non-integer label maps take the slow bounding-box path; a scalar spacing is isotropic."""
    pred, ref = label_pair(8, 2)
    a = M.segmentation_case_metrics(pred, ref, [1, 2], 1.3)
    b = M.segmentation_case_metrics(pred.astype(np.float32), ref.astype(np.float32), np.array([1, 2]), (1.3,) * 3)
    assert a == b


def test_invalid_inputs_raise() -> None:
    a = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError):
        M.dice(a, np.zeros((4, 4, 5), bool))
    with pytest.raises(ValueError):
        M.hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError):
        M.hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError):
        M.nsd(a, a, (1.0, 1.0, 1.0), -1.0)
    with pytest.raises(ValueError):
        M.segmentation_case_metrics(a.astype(int), a.astype(int), [1], (1.0, 1.0, 1.0), {1: float("nan")})


# --------------------------------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(labels * 0.8 + rng.standard_normal(200), 1)  # rounding creates many ties
    assert len(np.unique(scores)) < 200
    assert M.auroc(scores, labels) == pytest.approx(sk_metrics.roc_auc_score(labels, scores), rel=1e-12)
    assert M.auroc(scores, labels.astype(bool)) == pytest.approx(sk_metrics.roc_auc_score(labels, scores), rel=1e-12)


def test_auroc_hand_cases() -> None:
    assert M.auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert M.auroc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert M.auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5  # all tied: 1/2 per pair
    assert M.auroc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(3.5 / 4)
    assert math.isnan(M.auroc([0.1, 0.2, 0.3], [1, 1, 1]))  # one class: undefined
    assert math.isnan(M.auroc([0.1, 0.2, 0.3], [0, 0, 0]))
    with pytest.raises(ValueError):
        M.auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError):
        M.auroc([0.1, float("nan")], [0, 1])


def test_multilabel_auroc_skips_undefined_classes() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (120, 4))
    labels[:, 2] = 1  # class 2 has only positives
    scores = labels * 0.7 + rng.standard_normal((120, 4))
    per, mean = M.multilabel_auroc(scores, labels)
    assert len(per) == 4 and math.isnan(per[2])
    for c in (0, 1, 3):
        assert per[c] == pytest.approx(sk_metrics.roc_auc_score(labels[:, c], scores[:, c]), rel=1e-12)
    assert mean == pytest.approx(np.mean([per[c] for c in (0, 1, 3)]))
    defined = [0, 1, 3]
    assert mean == pytest.approx(sk_metrics.roc_auc_score(labels[:, defined], scores[:, defined], average="macro"))
    per, mean = M.multilabel_auroc(scores[:, [2]], labels[:, [2]])
    assert math.isnan(per[0]) and math.isnan(mean)


def test_accuracy() -> None:
    assert M.accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert M.accuracy(np.array([3]), np.array([3])) == 1.0
    pred, labels = [0, 1, 2, 2], [0, 1, 1, 2]
    assert M.accuracy(pred, labels) == pytest.approx(sk_metrics.accuracy_score(labels, pred))
    with pytest.raises(ValueError):
        M.accuracy([], [])
    with pytest.raises(ValueError):
        M.accuracy([0, 1], [0, 1, 1])
