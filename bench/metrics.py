"""Segmentation and classification metrics under the harness's metric policy (shared/DESIGN.md).

Segmentation metrics are computed per case and per class on binary numpy masks, spacing-aware, and are never
NaN:

* both prediction and reference empty: Dice 1, NSD 1, HD95 0;
* exactly one of them empty: Dice 0, NSD 0, HD95 = the image diagonal in mm,
  ``sqrt(sum((shape * spacing) ** 2))``.

Surface definitions follow MONAI (``monai.metrics.compute_hausdorff_distance`` / ``compute_surface_dice`` with the
default ``distance_metric="euclidean"`` and ``use_subvoxels=False``), so non-empty cases match MONAI to float
precision:

* the surface of a mask is its set of foreground voxels removed by one binary erosion with the face-connected
  (cross-shaped) structuring element, voxels outside the image counting as background;
* distances are Euclidean, in mm, from each surface voxel of one mask to the nearest surface voxel of the other
  (computed with ``scipy.ndimage.distance_transform_edt(sampling=spacing)``);
* HD95 is ``max(P95(d(pred -> ref)), P95(d(ref -> pred)))`` with linearly interpolated percentiles
  (``numpy.percentile`` default, identical to ``torch.quantile``). This is *not* the 95th percentile of the pooled
  distances that e.g. ``medpy.metric.hd95`` reports;
* NSD is the fraction of surface voxels of both masks lying within ``tolerance_mm`` (inclusive, ``d <= tol``) of
  the other mask's surface; each surface voxel counts 1 (no sub-voxel surface areas). The comparison allows a
  relative slack of 1e-9 so that distances equal to the tolerance in exact arithmetic (3 voxels of 1.1 mm against
  3.3 mm, which is 3.3000000000000003 in floating point) count as inside, as the definition says.

Differences from MONAI 1.6:

* empty masks, where the policy wins: MONAI returns NaN HD95 when either mask is empty (instead of 0 / the image
  diagonal), NaN NSD when both are empty (instead of 1), and, with its default ``ignore_empty=True``, NaN Dice when
  the reference is empty (``ignore_empty=False`` gives the policy's 1 / 0);
* precision: MONAI works in float32 (distances, and the percentile position inside ``torch.quantile``), so its HD95
  can differ from ours by ~1e-4 of the gap between the two distances the 95th percentile interpolates, and an
  NSD boundary distance equal to the tolerance is in or out depending on float32 rounding; here everything is
  float64 and exact ties are inside.

Only numpy and scipy are imported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage, stats

DEFAULT_TOLERANCE_MM = 2.0
"""NSD tolerance used when none is configured for a class."""

_TIE_RTOL = 1e-9
"""Relative slack on the NSD tolerance so that exact ties stay inside despite floating-point rounding."""

SpacingLike = float | Sequence[float] | np.ndarray
Box = tuple[slice, ...]


# --------------------------------------------------------------------------------------------------- helpers


def _as_mask(x: np.ndarray) -> np.ndarray:
    """Returns ``x`` as a boolean array (non-zero is foreground)."""
    x = np.asarray(x)
    return x if x.dtype == bool else x != 0


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape, got {pred.shape} and {ref.shape}")
    if pred.ndim == 0:
        raise ValueError("pred and ref must have at least one dimension")


def _spacing(spacing: SpacingLike, ndim: int) -> tuple[float, ...]:
    """Validates ``spacing`` (scalar = isotropic) and returns one positive float per axis."""
    sp = np.asarray(spacing, dtype=float)
    if sp.ndim == 0:
        sp = np.full(ndim, float(sp))
    sp = sp.reshape(-1)
    if sp.size != ndim:
        raise ValueError(f"spacing has {sp.size} values for a {ndim}-D image")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be finite and positive, got {tuple(sp)}")
    return tuple(float(s) for s in sp)


def _tolerance(tolerance_mm: float) -> float:
    tol = float(tolerance_mm)
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")
    return tol


def image_diagonal_mm(shape: Sequence[int], spacing: SpacingLike) -> float:
    """Length of the image diagonal in mm, the HD95 of a case where exactly one mask is empty.

    Args:
        shape: Image shape in voxels.
        spacing: Voxel spacing in mm, one value per axis (or a scalar for isotropic spacing).

    Returns:
        ``sqrt(sum((shape * spacing) ** 2))``.
    """
    sp = np.asarray(_spacing(spacing, len(shape)))
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=float) * sp) ** 2)))


def _bbox(mask: np.ndarray) -> Box | None:
    """Tight bounding box of a boolean mask as slices, or None if the mask is empty."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        proj = mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))
        idx = np.flatnonzero(proj)
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def _union_padded(a: Box | None, b: Box | None, shape: Sequence[int], margin: int = 1) -> Box:
    """Union of two boxes (at least one not None), grown by ``margin`` voxels and clipped to the image."""
    boxes = [x for x in (a, b) if x is not None]
    return tuple(
        slice(max(min(bx[d].start for bx in boxes) - margin, 0), min(max(bx[d].stop for bx in boxes) + margin, n))
        for d, n in enumerate(shape)
    )


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: foreground voxels removed by one face-connected erosion (outside = background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each pred surface voxel to the ref surface, and from each ref surface voxel to pred's.

    Both masks must be non-empty. Cropping both masks to the same box that contains all their foreground plus a
    one-voxel margin leaves the result unchanged: surfaces are local (border voxels count as surface either way)
    and distances between surface voxels do not depend on the origin.
    """
    sp, sr = _surface(pred), _surface(ref)
    d_pred_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    d_ref_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    return d_pred_ref, d_ref_pred


def _hd95_from(d_pred_ref: np.ndarray, d_ref_pred: np.ndarray) -> float:
    return float(max(np.percentile(d_pred_ref, 95), np.percentile(d_ref_pred, 95)))


def _nsd_from(d_pred_ref: np.ndarray, d_ref_pred: np.ndarray, tolerance_mm: float) -> float:
    # a distance equal to the tolerance in exact arithmetic (e.g. 3 voxels * 1.1 mm vs 3.3 mm) may round above it
    limit = tolerance_mm * (1.0 + _TIE_RTOL)
    correct = np.count_nonzero(d_pred_ref <= limit) + np.count_nonzero(d_ref_pred <= limit)
    return float(correct / (d_pred_ref.size + d_ref_pred.size))


def _dice_from(pred: np.ndarray, ref: np.ndarray) -> float:
    total = np.count_nonzero(pred) + np.count_nonzero(ref)
    if total == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(pred & ref) / total)


def _prepare(
    pred: np.ndarray, ref: np.ndarray, spacing: SpacingLike, crop: bool
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], bool, bool]:
    """Masks (cropped when asked and both non-empty), spacing, and whether each mask is non-empty."""
    pred, ref = _as_mask(pred), _as_mask(ref)
    _check_pair(pred, ref)
    sp = _spacing(spacing, pred.ndim)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if crop and has_pred and has_ref:
        box = _union_padded(_bbox(pred), _bbox(ref), pred.shape)
        pred, ref = pred[box], ref[box]
    return pred, ref, sp, has_pred, has_ref


# --------------------------------------------------------------------------------------------------- segmentation


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2|P & R| / (|P| + |R|)`` of two binary masks.

    Args:
        pred: Predicted mask (any shape; non-zero is foreground).
        ref: Reference mask, same shape as ``pred``.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.

    Raises:
        ValueError: If the shapes differ.
    """
    pred, ref = _as_mask(pred), _as_mask(ref)
    _check_pair(pred, ref)
    return _dice_from(pred, ref)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: SpacingLike, *, crop: bool = True) -> float:
    """95th percentile symmetric Hausdorff distance in mm, as MONAI defines it.

    ``max(P95(d(pred -> ref)), P95(d(ref -> pred)))`` over surface voxels, with Euclidean distances in mm and
    linearly interpolated percentiles (see the module docstring).

    Args:
        pred: Predicted mask (non-zero is foreground).
        ref: Reference mask, same shape as ``pred``.
        spacing: Voxel spacing in mm, one value per axis (or a scalar for isotropic spacing).
        crop: Compute on the bounding box of ``pred | ref`` grown by one voxel (faster, same result). False is
            only useful to check that claim.

    Returns:
        HD95 in mm: 0.0 when both masks are empty, the image diagonal in mm when exactly one is empty.

    Raises:
        ValueError: If the shapes differ or the spacing is invalid.
    """
    full_shape = np.shape(pred)
    pred, ref, sp, has_pred, has_ref = _prepare(pred, ref, spacing, crop)
    if not has_pred and not has_ref:
        return 0.0
    if not (has_pred and has_ref):
        return image_diagonal_mm(full_shape, sp)
    return _hd95_from(*_surface_distances(pred, ref, sp))


def nsd(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: SpacingLike,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    *,
    crop: bool = True,
) -> float:
    """Normalised surface Dice (Nikolov et al. 2021) with voxel-counted surfaces, as MONAI's ``compute_surface_dice``.

    ``(|{d(pred -> ref) <= tol}| + |{d(ref -> pred) <= tol}|) / (|surface(pred)| + |surface(ref)|)``.

    Args:
        pred: Predicted mask (non-zero is foreground).
        ref: Reference mask, same shape as ``pred``.
        spacing: Voxel spacing in mm, one value per axis (or a scalar for isotropic spacing).
        tolerance_mm: Accepted boundary deviation in mm (inclusive).
        crop: Compute on the bounding box of ``pred | ref`` grown by one voxel (faster, same result).

    Returns:
        NSD in [0, 1]: 1.0 when both masks are empty, 0.0 when exactly one is empty.

    Raises:
        ValueError: If the shapes differ, the spacing is invalid, or the tolerance is negative or not finite.
    """
    tol = _tolerance(tolerance_mm)
    pred, ref, sp, has_pred, has_ref = _prepare(pred, ref, spacing, crop)
    if not has_pred and not has_ref:
        return 1.0
    if not (has_pred and has_ref):
        return 0.0
    return _nsd_from(*_surface_distances(pred, ref, sp), tol)


def _class_boxes(labels: np.ndarray, class_ids: Sequence[int]) -> dict[int, Box | None]:
    """Bounding box of each class in a label map, in one pass when the labels allow it."""
    if np.issubdtype(labels.dtype, np.integer) and class_ids and min(class_ids) >= 1:
        objects = ndimage.find_objects(labels, max_label=max(class_ids))
        return {c: objects[c - 1] for c in class_ids}
    return {c: _bbox(labels == c) for c in class_ids}


def segmentation_case_metrics(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    class_ids: Sequence[int],
    spacing: SpacingLike,
    tolerance_mm: float | Mapping[int, float] = DEFAULT_TOLERANCE_MM,
    *,
    crop: bool = True,
) -> list[dict]:
    """Dice, NSD and HD95 of every requested class of one case.

    Each class is cropped to the bounding box of ``(pred == c) | (ref == c)`` grown by one voxel before the
    surfaces and distance transforms are computed; the values are identical to the uncropped computation, while
    the empty-mask HD95 still uses the full image diagonal. Surface distances are computed once per class and
    shared by NSD and HD95.

    Args:
        pred_labels: Predicted label map (integer class per voxel).
        ref_labels: Reference label map, same shape.
        class_ids: Classes to score; the caller excludes background.
        spacing: Voxel spacing in mm, one value per axis (or a scalar for isotropic spacing).
        tolerance_mm: NSD tolerance in mm, either one value for all classes or a mapping class id -> tolerance;
            classes missing from the mapping use ``DEFAULT_TOLERANCE_MM`` (2 mm).
        crop: Crop each class before the distance transforms (same result, faster). False only for checks.

    Returns:
        Rows ``{"class": int, "metric": "dice" | "nsd" | "hd95", "value": float}``, three per class in the order of
        ``class_ids``; no value is NaN.

    Raises:
        ValueError: If the shapes differ, the spacing is invalid or a tolerance is negative or not finite.
    """
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    _check_pair(pred_labels, ref_labels)
    sp = _spacing(spacing, pred_labels.ndim)
    ids = [int(c) for c in class_ids]
    if isinstance(tolerance_mm, Mapping):
        tols = {c: _tolerance(tolerance_mm.get(c, DEFAULT_TOLERANCE_MM)) for c in ids}
    else:
        tols = dict.fromkeys(ids, _tolerance(tolerance_mm))
    pred_boxes, ref_boxes = _class_boxes(pred_labels, ids), _class_boxes(ref_labels, ids)
    diagonal = image_diagonal_mm(pred_labels.shape, sp)

    rows: list[dict] = []
    for c in ids:
        pb, rb = pred_boxes[c], ref_boxes[c]
        if pb is None and rb is None:
            values = {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}
        elif pb is None or rb is None:
            values = {"dice": 0.0, "nsd": 0.0, "hd95": diagonal}
        else:
            box = _union_padded(pb, rb, pred_labels.shape) if crop else (slice(None),) * pred_labels.ndim
            p, r = pred_labels[box] == c, ref_labels[box] == c
            d_pr, d_rp = _surface_distances(p, r, sp)
            values = {"dice": _dice_from(p, r), "nsd": _nsd_from(d_pr, d_rp, tols[c]), "hd95": _hd95_from(d_pr, d_rp)}
        rows += [{"class": c, "metric": m, "value": float(values[m])} for m in ("dice", "nsd", "hd95")]
    return rows


# --------------------------------------------------------------------------------------------------- classification


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Binary area under the ROC curve, as the normalised Mann-Whitney U statistic.

    Equal to ``P(score_pos > score_neg) + 0.5 * P(score_pos == score_neg)`` over all positive/negative pairs, so tied
    scores count one half (same value as ``sklearn.metrics.roc_auc_score``).

    Args:
        scores: Real-valued scores, shape ``[N]``; higher means more likely positive.
        labels: Binary labels, shape ``[N]``, values in {0, 1} (or bool).

    Returns:
        AUROC in [0, 1], or NaN when ``labels`` holds only one class (AUROC is undefined there; callers such as
        ``multilabel_auroc`` leave such classes out of their means).

    Raises:
        ValueError: If the inputs are empty, not 1-D, of different lengths, the labels are not binary, or a score is
            not finite.
    """
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}")
    if scores.size == 0:
        raise ValueError("auroc needs at least one sample")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be binary (0/1)")
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)  # average ranks for ties
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def multilabel_auroc(scores: np.ndarray, labels: np.ndarray) -> tuple[list[float], float]:
    """Per-class binary AUROC of a multi-label problem and their mean over the classes where it is defined.

    Args:
        scores: Scores, shape ``[N, C]``.
        labels: Binary labels, shape ``[N, C]``.

    Returns:
        ``(per_class, mean)``: ``per_class`` has C values, NaN for a class whose labels hold a single value;
        ``mean`` averages the non-NaN values and is NaN only if no class is defined.

    Raises:
        ValueError: If the shapes differ or are not 2-D, or any column fails ``auroc``'s checks.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels must both be [N, C], got {scores.shape} and {labels.shape}")
    per_class = [auroc(scores[:, c], labels[:, c]) for c in range(scores.shape[1])]
    defined = [v for v in per_class if not math.isnan(v)]
    return per_class, (float(np.mean(defined)) if defined else float("nan"))


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of predictions equal to their labels.

    Args:
        pred: Predicted class labels (hard predictions, not scores), any shape.
        labels: True class labels, same shape.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: If the shapes differ or the inputs are empty.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"pred and labels must have the same shape, got {pred.shape} and {labels.shape}")
    if pred.size == 0:
        raise ValueError("accuracy needs at least one sample")
    return float(np.mean(pred == labels))


# ------------------------------------------------------------------------------------------- admissible values
#: The closed interval each stored metric lies in. A value outside it, or one that is not finite, is a failed
#: computation (a NaN voxel, a diverged model, a damaged file), never a score: it is refused before it is stored,
#: imported or ranked. A metric not listed here must still be finite.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "dice": (0.0, 1.0),
    "nsd": (0.0, 1.0),
    "hd95": (0.0, math.inf),  # mm; an empty prediction scores the image diagonal, never inf
    "auroc": (0.0, 1.0),
    "accuracy": (0.0, 1.0),
    "patient_auroc": (0.0, 1.0),
    "loc_acc": (0.0, 1.0),
    "pred_score": (0.0, 1.0),  # a predicted probability
    "pred_target": (0.0, 1.0),  # a 0-1 label
}
RANGE_TOLERANCE = 1e-6  # float rounding of a ratio that is 1 by construction


def value_problem(metric: str, value: object) -> str | None:
    """Why ``value`` cannot be a stored ``metric`` (e.g. "is nan", "is -5, outside [0, 1]"), or None if it can."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"is {value!r}, not a number"
    if not math.isfinite(v):
        return f"is {v}, not a finite number"
    lo, hi = METRIC_RANGES.get(metric, (-math.inf, math.inf))
    if v < lo - RANGE_TOLERANCE or v > hi + RANGE_TOLERANCE:
        return f"is {v:g}, outside [{lo:g}, {hi:g}]"
    return None
