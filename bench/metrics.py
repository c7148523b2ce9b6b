"""Segmentation and classification metrics under the harness's metric policy (shared/DESIGN.md).

Per case and class, spacing-aware, never NaN for segmentation: both masks empty -> Dice 1, NSD 1,
HD95 0; exactly one empty -> Dice 0, NSD 0, HD95 = the image diagonal in mm.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = pred.astype(bool), ref.astype(bool)
    s = pred.sum() + ref.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(pred, ref).sum() / s)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                          border_value=0)


def _surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one mask to the other mask's surface."""
    sp, sr = _surface(pred), _surface(ref)
    dt_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dt_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return dt_ref[sp], dt_pred[sr]


def _diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(np.sqrt(np.sum((np.asarray(shape) * np.asarray(spacing)) ** 2)))


def _crop(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop to the union's bounding box + 1 voxel: surfaces and distances are unchanged."""
    idx = np.argwhere(pred | ref)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, pred.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    return np.pad(pred[sl], 1), np.pad(ref[sl], 1)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile Hausdorff distance (mm): max of the two directed 95th percentiles (as MONAI)."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any() and not ref.any():
        return 0.0
    if not pred.any() or not ref.any():
        return _diagonal(pred.shape, spacing)
    p, r = _crop(pred, ref)
    d_pr, d_rp = _surface_distances(p, r, spacing)
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice (Nikolov et al. 2021) at ``tolerance_mm``."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any() and not ref.any():
        return 1.0
    if not pred.any() or not ref.any():
        return 0.0
    p, r = _crop(pred, ref)
    d_pr, d_rp = _surface_distances(p, r, spacing)
    return float(((d_pr <= tolerance_mm).sum() + (d_rp <= tolerance_mm).sum()) / (len(d_pr) + len(d_rp)))


def segmentation_case_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray, class_ids: Sequence[int],
                              spacing: Sequence[float], tolerance_mm: float | dict[int, float] = 2.0) -> list[dict]:
    rows = []
    for k in class_ids:
        p, r = pred_labels == k, ref_labels == k
        tol = tolerance_mm.get(k, 2.0) if isinstance(tolerance_mm, dict) else tolerance_mm
        rows += [{"class": int(k), "metric": "dice", "value": dice(p, r)},
                 {"class": int(k), "metric": "nsd", "value": nsd(p, r, spacing, tol)},
                 {"class": int(k), "metric": "hd95", "value": hd95(p, r, spacing)}]
    return rows


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Binary AUROC as the Mann-Whitney statistic (ties count 1/2); NaN if only one class is present."""
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def multilabel_auroc(scores: np.ndarray, labels: np.ndarray) -> tuple[list[float], float]:
    per = [auroc(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]
    defined = [v for v in per if not np.isnan(v)]
    return per, float(np.mean(defined)) if defined else float("nan")


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))
