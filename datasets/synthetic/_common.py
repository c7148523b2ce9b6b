"""Numerical helpers shared by the synthetic-anatomy generators (pure numpy/scipy).

Everything here is deterministic given its inputs (random draws come from a ``numpy.random.Generator``
passed in by the caller), so a generator built on these helpers is bit-identical per seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage


# ----------------------------------------------------------------------------------------------------
# smooth random fields


def _lerp_axis(a: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` to ``n_out`` samples (end nodes on end samples)."""
    n_in = a.shape[axis]
    if n_in == 1:
        return np.repeat(a, n_out, axis=axis)
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    shape = [1] * a.ndim
    shape[axis] = n_out
    frac = (pos - lo).astype(np.float32).reshape(shape)
    return np.take(a, lo, axis=axis) * (np.float32(1.0) - frac) + np.take(a, lo + 1, axis=axis) * frac


def upsample_linear(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear upsampling of a 3D array to ``shape``.

    Separable and elementwise (no BLAS), so the result is bit-identical whatever the thread count.
    """
    t = np.asarray(coarse, np.float32)
    for axis in range(3):
        t = _lerp_axis(t, axis, int(shape[axis]))
    return np.ascontiguousarray(t)


def coarse_shape(shape: tuple[int, ...], spacing: tuple[float, ...], node_mm: float) -> tuple[int, ...]:
    """Number of control nodes per axis for a field with one node every ``node_mm`` millimetres."""
    return tuple(max(2, int(round(n * s / node_mm)) + 1) for n, s in zip(shape, spacing))


def smooth_field(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    node_mm: float,
    channels: int = 1,
) -> np.ndarray:
    """Zero-mean, roughly unit-variance smooth noise: Gaussian control nodes, trilinearly upsampled.

    Returns an array of shape (channels, *shape), float32.
    """
    cs = coarse_shape(shape, spacing, node_mm)
    nodes = rng.standard_normal((channels, *cs)).astype(np.float32)
    return np.stack([upsample_linear(nodes[c], shape) for c in range(channels)])


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """White Gaussian noise blurred with a Gaussian of ``sigma_vox`` voxels, renormalised to unit std."""
    white = rng.standard_normal(shape, dtype=np.float32)
    if sigma_vox <= 0:
        return white
    out = ndimage.gaussian_filter(white, sigma_vox, truncate=3.0)
    std = float(out.std())
    return out / np.float32(std if std > 0 else 1.0)


# ----------------------------------------------------------------------------------------------------
# rotations


def rotation_xyz(angles_deg) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx for angles (deg) about the x, y and z axes."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, float))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation drawn uniformly from SO(3) (unit quaternion from four Gaussians)."""
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


# ----------------------------------------------------------------------------------------------------
# implicit shapes (value < 1 inside, 1 on the surface)


def superellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, axes, exponent: float = 2.0, taper: float = 0.0, bend: float = 0.0
) -> np.ndarray:
    """Implicit superellipsoid in its local frame.

    ``taper`` shrinks the y/z cross-section toward +x (0.5: half size at x = +a); ``bend`` shifts the
    x coordinate by ``bend * a * ((y/b)^2 + (z/c)^2)`` so the shape becomes a crescent (concave to +x
    for a positive bend).
    """
    a, b, c = (float(v) for v in axes)
    xn = x / a
    yn = y / b
    zn = z / c
    if bend:
        xn = xn - bend * (yn * yn + zn * zn)
    if taper:
        k = 1.0 / np.clip(1.0 - taper * 0.5 * (xn + 1.0), 0.2, None)
        yn = yn * k
        zn = zn * k
    if exponent == 2.0:
        return np.sqrt(xn * xn + yn * yn + zn * zn)
    e = float(exponent)
    return (np.abs(xn) ** e + np.abs(yn) ** e + np.abs(zn) ** e) ** (1.0 / e)


def catmull_rom(points: np.ndarray, per_segment: int = 6) -> np.ndarray:
    """Centripetal-free (uniform) Catmull-Rom spline through ``points`` (k, d); returns (m, d)."""
    p = np.asarray(points, float)
    if len(p) < 3:
        t = np.linspace(0, 1, per_segment + 1)[:, None]
        return p[0] + t * (p[-1] - p[0]) if len(p) == 2 else p
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        out.append(
            0.5
            * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    out.append(p[-1:])
    return np.vstack(out)


def tube_field(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centres: np.ndarray, radii: np.ndarray, xy_ratio: float = 1.0
) -> np.ndarray:
    """Implicit swept sphere: min over segments of distance / interpolated radius (< 1 inside).

    ``centres`` (m, 3) and ``radii`` (m,) describe a densely sampled centre line. ``xy_ratio`` > 1
    makes the cross-section wider in x than in y (an oval vein). Each segment only touches the voxels
    inside its own bounding box (the prefilter that keeps long tubes cheap).
    """
    best = np.full(x.shape, np.inf, np.float32)
    c = np.asarray(centres, np.float64)
    r = np.asarray(radii, np.float64)
    sx = 1.0 / float(xy_ratio)
    for i in range(len(c) - 1):
        a, b = c[i], c[i + 1]
        rmax = max(r[i], r[i + 1]) * max(1.0, float(xy_ratio)) * 1.3
        lo = np.minimum(a, b) - rmax
        hi = np.maximum(a, b) + rmax
        sel = (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])
        if not sel.any():
            continue
        px, py, pz = x[sel] - a[0], y[sel] - a[1], z[sel] - a[2]
        d = b - a
        dd = float(d @ d) or 1e-9
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0.0, 1.0)
        ex = (px - t * d[0]) * sx
        ey = py - t * d[1]
        ez = pz - t * d[2]
        val = np.sqrt(ex * ex + ey * ey + ez * ez) / (r[i] + t * (r[i + 1] - r[i]))
        best[sel] = np.minimum(best[sel], val.astype(np.float32))
    return best


# ----------------------------------------------------------------------------------------------------
# metrics and files


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(a, b).sum()) / (sa + sb)


def atomic_save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> None:
    """Write a NIfTI under a temporary name in the same folder, then rename it into place.

    A killed process therefore leaves at most a ``.tmp-*`` file, never a truncated file with the final name.
    """
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    img = nib.Nifti1Image(array, np.asarray(affine, np.float64))
    img.header.set_data_dtype(array.dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    try:
        img.to_filename(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
