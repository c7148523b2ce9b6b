"""SynthCXR: PA chest radiographs as DRRs of a procedural 3D thorax phantom (DATA.md Part C.1 item 6, C.3).

The phantom lives in millimetres (x toward the patient's left, y anterior, z superior). Every
structure is a 3D primitive whose line integral along the AP rays (parallel beam, along y) is computed
exactly per detector pixel, so no voxel volume is ever built:

* convex primitives (ellipsoids, superelliptic cross-sections, elliptic cylinders, paraboloid
  diaphragm domes) give one [y0, y1] interval per ray; the lungs are the hemithorax interval minus the
  union of the mediastinum, spine, heart, aortic knob, pulmonary trunk, descending aorta, SVC and the
  sub-diaphragmatic space (interval arithmetic), so overlaps are resolved exactly;
* tubes (ribs with cortex and marrow, clavicles) are 3D centre lines with elliptic cross-sections; the
  chord through the tube is evaluated from the nearest centre-line sample (a distance transform) and
  the 3D tangent (a rib running along the beam at the lateral chest wall is long in projection);
* pulmonary vessels are 3D branching trees grown from the hila inside the lungs (radius shrinking per
  generation, so the markings fade toward the periphery), projected by splatting their volume.

Attenuation mu = mu_water (1 + HU/1000), bones times a per-image multiplier; Beer-Lambert
I = I0 exp(-sum mu dl) with scatter, quantum noise and detector blur, then the log image is processed
like a CR (dynamic-range compression, unsharp masking) and windowed to 8 bits.

Findings with exact labels at controlled prevalence: Nodule, Cardiomegaly (cardiothoracic ratio of
the phantom > 0.5), Effusion (fluid layer with a meniscus blunting the costophrenic angle),
Pneumothorax (retracted lung with a visceral pleural line and no vessel markings beyond it).

``python -m datasets.synthetic.chest_xray --measure`` times the generator and prints the prevalence;
``--preview PATH`` writes a montage.
"""

from __future__ import annotations

import argparse
import os
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from datasets.synthetic._common import catmull_rom, rotation_xyz

GENERATOR_VERSION = "synthcxr-1"

FINDINGS = ["Nodule", "Cardiomegaly", "Effusion", "Pneumothorax"]
CSV_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)

MU_WATER = 0.0195  # 1/mm at ~65 keV effective energy
HU = {
    "air": -1000.0,
    "lung": -840.0,
    "fat": -100.0,
    "soft": 40.0,
    "blood": 45.0,
    "fluid": 15.0,
    "marrow": 200.0,
    "cortical": 1100.0,
}


def _mu(hu: float) -> float:
    return MU_WATER * (1.0 + hu / 1000.0)


@dataclass(frozen=True)
class CXRConfig:
    """Detector geometry, finding prevalence and per-image variation knobs."""

    size: tuple[int, int] = (256, 256)  # (H, W) pixels; 1024 x 1024 is the ChestX-ray14 size
    fov_mm: float = 400.0  # detector width; pixel spacing = fov_mm / W
    prevalence: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.2)  # in FINDINGS order, independent
    # anatomy / positioning
    scale_range: tuple[float, float] = (0.9, 1.1)  # body habitus, per axis
    tilt_deg: float = 2.0  # in-plane rotation N(0, v)
    rotation_deg: float = 3.0  # patient rotation about the vertical axis N(0, v)
    position_mm: float = 8.0  # centring N(0, v) in x and z
    inspiration_mm: float = 12.0  # diaphragm level N(0, v) (positive = deeper inspiration)
    female_prob: float = 0.5
    normal_ctr: tuple[float, float] = (0.38, 0.47)
    cardiomegaly_ctr: tuple[float, float] = (0.55, 0.68)
    # findings
    nodule_radius_mm: tuple[float, float] = (6.0, 15.0)
    effusion_height_mm: tuple[float, float] = (20.0, 70.0)  # lateral meniscus height above the dome peak
    pneumothorax_mm: tuple[float, float] = (15.0, 45.0)  # lateral / apical retraction of the lung
    # acquisition and processing
    bone_multiplier: tuple[float, float] = (1.3, 1.8)
    photons: tuple[float, float] = (1e5, 6e5)  # unattenuated quanta per pixel at 256 px (scaled by pixel area)
    scatter: tuple[float, float] = (0.05, 0.2)  # scatter fraction of the blurred primary (with a grid)
    compression: tuple[float, float] = (0.2, 0.45)  # dynamic-range compression of the log image
    unsharp: tuple[float, float] = (0.2, 0.6)
    gamma: tuple[float, float] = (0.85, 1.2)

    @property
    def spacing_mm(self) -> float:
        return self.fov_mm / self.size[1]


# ----------------------------------------------------------------------------------------------------
# interval arithmetic along the AP rays


def _clip_to(lo, hi, Llo, Lhi):
    """Interval [lo, hi] clipped to [Llo, Lhi] (empty intervals become zero-length)."""
    a = np.maximum(lo, Llo)
    b = np.minimum(hi, Lhi)
    b = np.maximum(a, b)
    return a, b


def _union_length(los, his):
    """Length of the union of k intervals per ray; ``los``/``his`` have shape (k, ...)."""
    los = np.asarray(los)
    his = np.asarray(his)
    order = np.argsort(los, axis=0)
    lo = np.take_along_axis(los, order, axis=0)
    hi = np.take_along_axis(his, order, axis=0)
    total = np.zeros(los.shape[1:], los.dtype)
    reach = np.full(los.shape[1:], -np.inf, los.dtype)
    for i in range(lo.shape[0]):
        start = np.maximum(lo[i], reach)
        total += np.maximum(hi[i] - start, 0)
        reach = np.maximum(reach, hi[i])
    return total


def _ellipsoid_interval(X, Z, c, axes, R=None):
    """[y0, y1] of the AP ray at phantom (X, Z) through an ellipsoid (centre c, semi-axes, rotation R)."""
    a = np.asarray(axes, float)
    if R is None:
        qx = (X - c[0]) / a[0]
        qz = (Z - c[2]) / a[2]
        h = a[1] * np.sqrt(np.maximum(1.0 - qx * qx - qz * qz, 0.0))
        return c[1] - h, c[1] + h
    M = R @ np.diag(1.0 / a**2) @ R.T
    qx = X - c[0]
    qz = Z - c[2]
    A = M[1, 1]
    B = M[1, 0] * qx + M[1, 2] * qz
    C = M[0, 0] * qx * qx + 2 * M[0, 2] * qx * qz + M[2, 2] * qz * qz - 1.0
    disc = np.maximum(B * B - A * C, 0.0)
    h = np.sqrt(disc) / A
    mid = c[1] - B / A
    return mid - h, mid + h


def _ellipsoid_halfwidth_x(axes, R) -> float:
    """Half of the projected x extent of an ellipsoid."""
    S = R @ np.diag(np.asarray(axes, float) ** 2) @ R.T
    return float(np.sqrt(S[0, 0]))


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


# ----------------------------------------------------------------------------------------------------
# the phantom


@dataclass
class _Lung:
    side: int  # -1 right (x < 0), +1 left
    x_apex: float  # |x| of the apex
    z_apex: float
    height: float  # apex to the lowest costophrenic recess
    w_lat: float  # max |x| of the lateral edge
    x_med: float  # min |x| of the medial edge (lower lung)
    depth: float  # max half depth (AP)
    dome_z: float  # dome peak z
    dome_x: float  # |x| of the dome peak
    kx: float
    ky: float

    def profile(self, Z, retract: float = 0.0, apex_drop: float = 0.0):
        """(xm, xl, half depth) at heights Z (|x| of medial and lateral edge)."""
        za = self.z_apex - apex_drop
        u = (za - Z) / self.height
        g = np.sqrt(np.clip(1.0 - (1.0 - np.clip(u / 0.72, 0.0, 1.0)) ** 2, 0.0, 1.0))
        gm = np.sqrt(np.clip(1.0 - (1.0 - np.clip(u / 0.25, 0.0, 1.0)) ** 2, 0.0, 1.0))
        xl = self.x_apex + (self.w_lat - self.x_apex) * g
        if retract:
            # retraction largest at the apex, vanishing toward the base
            xl = xl - retract * np.clip(1.0 - u, 0.0, 1.0) ** 0.7
        xm = self.x_apex - (self.x_apex - self.x_med) * gm
        xl = np.maximum(xl, xm)
        d = self.depth * g**0.7 * (u > 0)
        return xm, xl, d


class _Phantom:
    """All per-image parameters: patient anatomy, findings and acquisition, each from its own random stream."""

    def __init__(self, seed: int, cfg: CXRConfig, patient_seed: int | None = None):
        self.seed = int(seed)
        self.cfg = cfg
        pseed = self.seed if patient_seed is None else int(patient_seed)
        ra = np.random.default_rng([pseed, 0xA])  # anatomy (shared by a patient's images)
        rf = np.random.default_rng([self.seed, 0xF])  # findings
        rc = np.random.default_rng([self.seed, 0xC])  # acquisition
        self.rng_anat, self.rng_find, self.rng_acq = ra, rf, rc
        self.findings = {name: int(rf.random() < p) for name, p in zip(FINDINGS, cfg.prevalence)}
        # --- patient
        self.female = bool(ra.random() < cfg.female_prob)
        self.age = int(ra.integers(18, 90))
        s0 = ra.uniform(*cfg.scale_range, 3)
        sex_scale = 0.94 if self.female else 1.0
        self.sx, self.sy, self.sz = s0[0] * sex_scale, s0[1] * sex_scale, s0[2] * sex_scale
        self.fat = ra.uniform(5, 30) * (1.25 if self.female else 1.0)
        self.normal_ctr = ra.uniform(*cfg.normal_ctr)
        self.breast = ra.uniform(0.6, 1.3) if self.female else 0.0
        self.bone_dens = ra.uniform(0.85, 1.1) * (0.9 if self.age > 65 else 1.0)
        self.anat_jit = ra.normal(0, 1, 64)  # small shape jitters, indexed below
        # --- acquisition
        self.tilt = rc.normal(0, cfg.tilt_deg)
        self.rot = np.deg2rad(rc.normal(0, cfg.rotation_deg))
        self.tx, self.tz = rc.normal(0, cfg.position_mm, 2)
        self.insp = rc.normal(0, cfg.inspiration_mm)
        self.bone_mult = rc.uniform(*cfg.bone_multiplier)
        self.photons = rc.uniform(*cfg.photons)
        self.scatter = rc.uniform(*cfg.scatter)
        self.compression = rc.uniform(*cfg.compression)
        self.unsharp = rc.uniform(*cfg.unsharp)
        self.gamma = rc.uniform(*cfg.gamma)
        self._build_anatomy()

    # ------------------------------------------------------------------ geometry
    def _build_anatomy(self):
        j = self.anat_jit
        ra = self.rng_anat
        # lungs: right wider, right dome higher
        z_apex = 8.0 + 4 * j[0]
        w = 138.0 + 5 * j[1]
        depth = 82.0 + 5 * j[2]
        dome_r = -190.0 + 8 * j[3] - self.insp
        dome_l = dome_r - (14.0 + 4 * abs(j[4]))
        height = 275.0 + 10 * j[5] + 0.8 * self.insp
        self.y_post = -95.0  # posterior-most lung recess
        self.lungs = {
            -1: _Lung(-1, 55 + 3 * j[6], z_apex, height, w * 1.03, 6.0, depth, dome_r, 70.0, 0.0062, 0.0058),
            +1: _Lung(+1, 55 + 3 * j[7], z_apex - 3, height - 10, w * 0.99, 6.0, depth, dome_l, 68.0, 0.0068, 0.0058),
        }
        # mediastinum (x half-width profile), spine line
        self.med_z = np.array([80.0, 10.0, -20.0, -50.0, -80.0, -110.0, -140.0, -400.0])
        self.med_r = np.array([26.0, 23.0, 26.0, 29.0, 31.0, 31.0, 26.0, 20.0]) * (1 + 0.06 * j[8])
        self.med_l = np.array([26.0, 22.0, 23.0, 22.0, 23.0, 25.0, 24.0, 20.0]) * (1 + 0.06 * j[31])
        self.spine_y = -62.0
        # heart: size from the CTR target
        thorax_w = self.lungs[-1].w_lat + self.lungs[+1].w_lat
        self.thorax_width = thorax_w
        ctr = self.cfg.cardiomegaly_ctr if self.findings["Cardiomegaly"] else None
        target = self.rng_find.uniform(*ctr) if ctr else self.normal_ctr
        alpha = np.deg2rad(32.0 + 5 * j[9])
        base_axes = np.array([62.0, 50.0, 50.0]) * np.array([1 + 0.05 * j[10], 1 + 0.05 * j[11], 1 + 0.05 * j[12]])
        R = rotation_xyz((0.0, np.rad2deg(alpha), 8 * j[13]))
        k = target * thorax_w / (2 * _ellipsoid_halfwidth_x(base_axes, R))
        self.heart_axes = base_axes * k
        self.heart_R = R
        half = _ellipsoid_halfwidth_x(self.heart_axes, R)
        self.ctr = 2 * half / thorax_w
        # the right border sits ~30-40% of the heart width right of the midline; the base on the dome
        right_border = -(0.30 + 0.04 * j[14]) * 2 * half - 4 * k
        z_dc = 0.5 * (dome_r + dome_l) - 8.0
        S = R @ np.diag(self.heart_axes**2) @ R.T
        half_z = np.sqrt(S[2, 2])
        self.heart_c = np.array([right_border + half, self.y_post + 2 * depth * 0.62, z_dc + 0.62 * half_z])
        # great vessels
        zk = -52.0 + 5 * j[15]
        unfolded = 1 + 0.1 * (self.age > 60)  # the aortic knob grows with age
        self.knob = (np.array([22.0 + 3 * j[16], -10.0, zk]), np.array([22.0, 26.0, 19.0]) * unfolded)
        self.ptrunk = (np.array([24.0 + 2 * j[17], 12.0, zk - 40]), np.array([16.0, 20.0, 18.0]))
        self.desc_aorta = (22.0 + 2 * j[18], -42.0, 12.0)  # x, y, radius
        self.svc = (-24.0 + 2 * j[19], 8.0, 11.0, 15.0, zk - 50)  # x, y, r, z_top, z_bottom
        self.hila = {-1: np.array([-58.0, -5.0, -112.0 + 5 * j[20]]), +1: np.array([55.0, -10.0, -98.0 + 5 * j[21]])}
        # body outline (half width / half depth profiles)
        fat = self.fat
        sz_ = 28.0 + 6 * j[26]  # shoulder level
        self.shoulder_z = sz_
        self.body_z = np.array(
            [140.0, sz_ + 50, sz_ + 32, sz_ + 18, sz_, sz_ - 25, sz_ - 70, -80.0, -150.0, -260.0, -500.0]
        )
        lat_wall = 22.0 + fat
        wc = w + lat_wall
        sh = 188.0 + 6 * j[29]
        wl = np.array([56, 60, 105, 165, sh, sh - 4, max(wc + 8, sh - 20), wc, wc + 2, wc + 3, wc])
        self.body_w = wl * (1 + 0.04 * j[22])
        yb = self.y_post + depth
        self.body_d = np.array(
            [
                55,
                58,
                62,
                68,
                72,
                depth * 0.8 + fat,
                depth + 18 + fat,
                depth + 28 + fat,
                depth + 32 + fat * 1.3,
                depth + 35 + fat * 1.5,
                depth + 35 + fat * 1.5,
            ]
        )
        self.body_y = np.array([-20, -20, -18, -16, -14, yb - 12, yb - 5, yb, yb + 5, yb + 8, yb + 8])
        # ribs, vertebrae, clavicles, scapulae, humeri
        self.rib_dz = 24.5 + 1.2 * j[23]
        self.z_t1 = z_apex + 14.0 + 3 * j[24]
        self.rib_drop = np.array([30, 55, 75, 85, 92, 95, 95, 90, 80, 65, 45, 30], float) * (1 + 0.06 * j[25])
        self.rib_end = np.array([0.86, 0.80, 0.80, 0.80, 0.79, 0.78, 0.76, 0.72, 0.68, 0.63, 0.52, 0.42]) * np.pi
        self.stomach = (
            ra.random() < 0.8,
            np.array([70.0 + 8 * j[27], 5.0, dome_l - 28]),
            np.array([38.0, 30.0, 26.0]) * (0.7 + 0.3 * abs(j[28])),
        )
        self.fissure = ra.random() < 0.6

    def lung_profile(self, side, Z, collapsed=False, shrink=0.0):
        L = self.lungs[side]
        if collapsed:
            xm, xl, d = L.profile(Z, self.ptx_retract + shrink, self.ptx_drop + shrink)
            d = d * np.clip((xl - xm) / np.maximum(L.profile(Z)[1] - xm, 1e-6), 0.3, 1.0) ** 0.5
        else:
            xm, xl, d = L.profile(Z)
        return xm, xl, d

    def dome_interval(self, side, X, Z):
        """AP interval of the space below the dome of ``side`` at (X, Z)."""
        L = self.lungs[side]
        yk = self.y_post + L.depth + 15.0
        r = (L.dome_z - L.kx * (np.abs(X) - L.dome_x) ** 2 - Z) / L.ky
        h = np.sqrt(np.maximum(r, 0.0))  # a paraboloid dome: deepest recess posteriorly and laterally
        return yk - h, yk + h


# ----------------------------------------------------------------------------------------------------
# rendering


class _Renderer:
    def __init__(self, ph: _Phantom):
        self.ph = ph
        cfg = ph.cfg
        H, W = cfg.size
        self.H, self.W = H, W
        sp = cfg.spacing_mm
        self.sp = sp
        self.z_top = 95.0
        xs = -cfg.fov_mm / 2 + (np.arange(W) + 0.5) * sp
        zs = self.z_top - (np.arange(H) + 0.5) * sp
        XL, ZL = np.meshgrid(xs, zs)
        th = np.deg2rad(ph.tilt)
        c, s = np.cos(th), np.sin(th)
        dx, dz = XL - ph.tx, ZL - (ph.tz - 110.0)
        self.X = (c * dx + s * dz) / ph.sx
        self.Z = (-s * dx + c * dz) / ph.sz + (-110.0)
        self.cos, self.sin = c, s
        self.A = np.zeros((H, W))  # line integral in phantom millimetres (times mu)
        self.maps: dict[str, np.ndarray] = {}

    # phantom (x, y, z) -> pixel (row, col) float
    def to_pixel(self, x, y, z):
        ph = self.ph
        x = x + ph.rot * y  # patient rotation about the vertical axis (a shear)
        px, pz = x * ph.sx, (z + 110.0) * ph.sz
        lx = self.cos * px - self.sin * pz + ph.tx
        lz = self.sin * px + self.cos * pz + ph.tz - 110.0
        col = (lx + self.ph.cfg.fov_mm / 2) / self.sp - 0.5
        row = (self.z_top - lz) / self.sp - 0.5
        return row, col

    def box(self, x0, x1, z0, z1, y=0.0):
        """Pixel slices covering the phantom box [x0, x1] x [z0, z1] (at depth y)."""
        xs = np.array([x0, x1, x0, x1])
        zs = np.array([z0, z0, z1, z1])
        r, c = self.to_pixel(xs, np.full(4, y), zs)
        r0 = int(max(np.floor(r.min()) - 2, 0))
        r1 = int(min(np.ceil(r.max()) + 3, self.H))
        c0 = int(max(np.floor(c.min()) - 2 - abs(self.ph.rot) * 120 / self.sp, 0))
        c1 = int(min(np.ceil(c.max()) + 3 + abs(self.ph.rot) * 120 / self.sp, self.W))
        if r1 <= r0 or c1 <= c0:
            return None
        return slice(r0, r1), slice(c0, c1)

    def xz(self, bb, y=0.0):
        """Phantom X (corrected for the patient-rotation shear at depth y) and Z on a pixel box."""
        return self.X[bb] - self.ph.rot * y, self.Z[bb]

    # ------------------------------------------------------------------ soft tissue and lungs
    def body(self):
        ph = self.ph
        X, Z = self.X, self.Z
        w = np.interp(-Z, -ph.body_z, ph.body_w)
        d = np.interp(-Z, -ph.body_z, ph.body_d)
        yc = np.interp(-Z, -ph.body_z, ph.body_y)
        Xs = X - ph.rot * yc
        n = 2.4
        u = np.clip(np.abs(Xs) / w, 0, 1)
        h = d * (1 - u**n) ** (1 / n)
        los, his = [yc - h], [yc + h]
        if ph.breast > 0:
            for s in (-1, 1):
                L = ph.lungs[s]
                c = np.array([s * 88.0, ph.y_post + L.depth + 40 + ph.fat, L.dome_z + 15.0])
                a = np.array([68.0, 45.0, 62.0]) * ph.breast
                c[1] += a[1] * 0.6
                lo, hi = _ellipsoid_interval(X - ph.rot * c[1], Z, c, a)
                los.append(lo)
                his.append(hi)
        outer = _union_length(np.stack(los), np.stack(his))
        f = ph.fat
        ui = np.clip(np.abs(Xs) / np.maximum(w - f, 1), 0, 1)
        inner = np.maximum(d - f, 0) * (1 - ui**n) ** (1 / n) * 2 * (np.abs(Xs) < w - f)
        self.A += _mu(HU["fat"]) * outer + (_mu(HU["soft"]) - _mu(HU["fat"])) * inner
        self.maps["body"] = outer
        # stomach gas bubble (air-fluid level at its bottom)
        present, c, a = ph.stomach
        if present:
            lo, hi = _ellipsoid_interval(X - ph.rot * c[1], Z, c, a)
            gas = (hi - lo) * _smoothstep((Z - (c[2] - 0.15 * a[2])) / 2.0)
            dome_lo, dome_hi = ph.dome_interval(1, X, Z)
            gas = np.minimum(gas, dome_hi - dome_lo)
            self.A += (_mu(HU["air"]) - _mu(HU["soft"])) * gas

    def carve_intervals(self, X, Z, side):
        """Non-lung intervals inside the hemithorax of ``side``."""
        ph = self.ph
        out = []
        # mediastinum: a vertical elliptic cylinder spanning the whole AP depth
        mr = np.interp(-Z, -ph.med_z, ph.med_r)
        ml = np.interp(-Z, -ph.med_z, ph.med_l)
        mw = 0.5 * (mr + ml)
        q = np.clip(1 - ((X - 0.5 * (ml - mr)) / mw) ** 2, 0, None)
        h = 130.0 * np.sqrt(q)
        out.append((0.0 - h, 0.0 + h))
        # spine column
        q = np.clip(1 - (X / 30.0) ** 2, 0, None)
        h = 32.0 * np.sqrt(q)
        out.append((ph.spine_y - h, ph.spine_y + h))
        out.append(_ellipsoid_interval(X, Z, ph.heart_c, ph.heart_axes, ph.heart_R))
        out.append(_ellipsoid_interval(X, Z, *ph.knob))
        out.append(_ellipsoid_interval(X, Z, *ph.ptrunk))
        ax, ay, ar = ph.desc_aorta
        q = np.clip(1 - ((X - ax) / ar) ** 2, 0, None) * (Z < ph.knob[0][2])
        out.append((ay - ar * np.sqrt(q), ay + ar * np.sqrt(q)))
        sx, sy, sr, zt, zb = ph.svc
        q = np.clip(1 - ((X - sx) / sr) ** 2, 0, None) * (Z < zt) * (Z > zb)
        out.append((sy - 1.3 * sr * np.sqrt(q), sy + 1.3 * sr * np.sqrt(q)))
        out.append(ph.dome_interval(side, X, Z))
        return out

    def lung_intervals(self, side, X, Z, collapsed=False, shrink=0.0):
        ph = self.ph
        xm, xl, d = ph.lung_profile(side, Z, collapsed, shrink)
        ax = np.abs(X)
        inside = (X * side > 0) & (ax > xm) & (ax < xl)
        cx = 0.5 * (xm + xl)
        a = np.maximum(0.5 * (xl - xm), 1e-3)
        u = np.clip(np.abs(ax - cx) / a, 0, 1)
        n = 2.6
        h = d * (1 - u**n) ** (1 / n) * inside
        yc = ph.y_post + ph.lungs[side].depth
        return yc - h, yc + h

    def lung_chord(self, side, X, Z, collapsed=False, shrink=0.0, extra=()):
        lo, hi = self.lung_intervals(side, X, Z, collapsed, shrink)
        carves = self.carve_intervals(X, Z, side) + list(extra)
        cl = [_clip_to(a, b, lo, hi) for a, b in carves]
        removed = _union_length(np.stack([c[0] for c in cl]), np.stack([c[1] for c in cl]))
        return np.maximum(hi - lo - removed, 0.0), (lo, hi)

    def lungs(self):
        ph = self.ph
        total = np.zeros_like(self.A)
        self.maps["effusion"] = np.zeros_like(self.A)
        self.maps["pneumothorax"] = np.zeros_like(self.A)
        mu_l = _mu(HU["lung"] + 20 * ph.anat_jit[30])
        for side in (-1, 1):
            L = ph.lungs[side]
            bb = self.box(
                min(side * L.w_lat, side * 2), max(side * L.w_lat, side * 2), L.z_apex - L.height - 30, L.z_apex + 5, 0
            )
            if bb is None:
                continue
            X, Z = self.xz(bb, ph.y_post + L.depth)
            extra = []
            if ph.findings["Effusion"] and side in ph.eff_sides:
                lo, hi = self.lung_intervals(side, X, Z)
                zmen = self.meniscus(side, X)
                f = np.clip((zmen - Z) / ph.eff_ramp, 0, 1)
                extra.append((lo, lo + f * (hi - lo)))
            full, _ = self.lung_chord(side, X, Z, extra=extra)
            if ph.findings["Effusion"] and side in ph.eff_sides:
                nofl, _ = self.lung_chord(side, X, Z)
                self.maps["effusion"][bb] += nofl - full
            parench = full
            if ph.findings["Pneumothorax"] and side == ph.ptx_side:
                coll, _ = self.lung_chord(side, X, Z, collapsed=True, extra=extra)
                coll = np.minimum(coll, full)
                inner, _ = self.lung_chord(side, X, Z, collapsed=True, shrink=0.8, extra=extra)
                inner = np.minimum(inner, coll)
                pleura = coll - inner
                air = full - coll
                # pleural air without vessels; the visceral pleura is a thin soft-tissue shell of the collapsed lung
                self.A[bb] += (_mu(HU["air"]) - _mu(HU["soft"])) * air
                self.A[bb] += (_mu(HU["soft"] + 60) - _mu(HU["soft"])) * pleura
                self.maps["pneumothorax"][bb] += air
                parench = inner
                # slightly denser (less aerated) collapsed lung
                self.A[bb] += (_mu(HU["lung"] + 120) - _mu(HU["soft"])) * parench
            else:
                self.A[bb] += (mu_l - _mu(HU["soft"])) * parench
            total[bb] += parench
        self.maps["lung"] = total
        lo, hi = _ellipsoid_interval(self.X, self.Z, ph.heart_c, ph.heart_axes, ph.heart_R)
        self.maps["heart"] = hi - lo
        return total

    def meniscus(self, side, X):
        ph = self.ph
        L = ph.lungs[side]
        xm, xl = L.x_med, L.w_lat
        t = np.clip((np.abs(X) - xm) / (xl - xm), 0, 1)
        top = L.dome_z + ph.eff_height[side]  # meniscus height at the lateral chest wall
        return ph.z_cp[side] + (top - ph.z_cp[side]) * (0.3 + 0.7 * t**2)

    # ------------------------------------------------------------------ tubes (ribs, clavicles)
    def tube_group(self, curves, mu_cort, mu_marrow, cortex=1.3):
        """Add the projected chord of a set of tubes that do not overlap each other in projection.

        ``curves``: list of dicts with ``pts`` (m, 3) centre line, ``h`` / ``t`` (m,) semi-axes of the
        cross-section (h roughly superior-inferior, t along the outward normal ``nrm`` (m, 3)) and ``id``.
        """
        H, W = self.H, self.W
        P, T, N, HH, TT, ID = [], [], [], [], [], []
        for cv in curves:
            p = cv["pts"]
            if len(p) < 2:
                continue
            tan = np.gradient(p, axis=0)
            tan /= np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-9)
            P.append(p)
            T.append(tan)
            N.append(cv["nrm"])
            HH.append(np.broadcast_to(cv["h"], len(p)))
            TT.append(np.broadcast_to(cv["t"], len(p)))
            ID.append(np.full(len(p), cv["id"]))
        if not P:
            return None
        P, T, N = np.concatenate(P), np.concatenate(T), np.concatenate(N)
        HH, TT, ID = np.concatenate(HH), np.concatenate(TT), np.concatenate(ID)
        r, c = self.to_pixel(P[:, 0], P[:, 1], P[:, 2])
        ri, ci = np.round(r).astype(int), np.round(c).astype(int)
        ok = (ri >= 0) & (ri < H) & (ci >= 0) & (ci < W)
        if not ok.any():
            return None
        raster = np.ones((H, W), bool)
        owner = np.full((H, W), -1, np.int64)
        raster[ri[ok], ci[ok]] = False
        owner[ri[ok], ci[ok]] = np.nonzero(ok)[0]
        dist, (ni, nj) = ndimage.distance_transform_edt(raster, return_indices=True)
        hmax = HH.max() * max(self.ph.sx, self.ph.sz) / self.sp + 2
        sel = dist <= hmax
        k = owner[ni[sel], nj[sel]]
        rows, cols = np.nonzero(sel)
        # 2D perpendicular distance (pixels) to the tangent line through the nearest sample
        tr, tc = self.to_pixel(P[k, 0] + T[k, 0], P[k, 1] + T[k, 1], P[k, 2] + T[k, 2])
        dr, dc = tr - r[k], tc - c[k]
        nrm2 = np.hypot(dr, dc)
        nrm2 = np.maximum(nrm2, 1e-9)
        er, ec = -dc / nrm2, dr / nrm2  # unit perpendicular in the image
        d_px = np.abs((rows - r[k]) * er + (cols - c[k]) * ec)
        d_mm = d_px * self.sp / np.sqrt(self.ph.sx * self.ph.sz)
        # cross-section axes: n (outward normal, thickness t) and m = u x n (height h)
        u, n = T[k], N[k]
        n = n - (n * u).sum(1, keepdims=True) * u
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
        m = np.cross(u, n)
        # image perpendicular as a 3D direction (x, 0, z): column ~ x, row ~ -z
        ex, ez = ec, -er
        out = np.zeros((H, W))
        vals = np.zeros(len(k))
        for hh, tt, mu in ((HH[k], TT[k], mu_cort), (HH[k] - cortex, TT[k] - cortex, mu_marrow - mu_cort)):
            hh = np.maximum(hh, 0.3)
            tt = np.maximum(tt, 0.3)
            wproj = np.sqrt((hh * (m[:, 0] * ex + m[:, 2] * ez)) ** 2 + (tt * (n[:, 0] * ex + n[:, 2] * ez)) ** 2)
            wproj = np.maximum(wproj, 0.3)
            c0 = 2.0 / np.sqrt((m[:, 1] / hh) ** 2 + (n[:, 1] / tt) ** 2 + (1.0 / 12.0) ** 2)
            q = np.clip(1 - (d_mm / wproj) ** 2, 0, None)
            vals += (mu - _mu(HU["soft"]) * (mu is mu_cort)) * c0 * np.sqrt(q)
        out[rows, cols] = vals
        idmap = np.full((H, W), -1)
        idmap[rows, cols] = ID[k]
        return out, idmap

    def ribs_and_clavicles(self):
        ph = self.ph
        bm = ph.bone_mult * ph.bone_dens
        mu_c, mu_m = _mu(HU["cortical"]) * bm, _mu(HU["marrow"]) * bm
        post, ant = [], []
        for side in (-1, 1):
            L = ph.lungs[side]
            for k in range(12):
                z0 = ph.z_t1 - k * ph.rib_dz
                phi = np.linspace(0.28, ph.rib_end[k], 70)
                rise = 14.0 if k == 0 else 6.0  # the posterior arc rises a little before curving down
                zz = z0 + rise * np.sin(phi) - ph.rib_drop[k] * ((1 - np.cos(phi)) / 2) ** 1.7
                xm, xl, d = L.profile(zz)
                rib_w = np.maximum(xl, 40.0 + 8 * k) + 7.0
                rib_d = np.maximum(d, 30.0) + 7.0
                n = 2.5
                sphi, cphi = np.sin(phi), np.cos(phi)
                x = side * rib_w * np.abs(sphi) ** (2 / n)
                yc = ph.y_post + L.depth
                y = yc - rib_d * np.sign(cphi) * np.abs(cphi) ** (2 / n)
                pts = np.stack([x, y, zz], 1)
                nrm = np.stack([x / rib_w**2, (y - yc) / rib_d**2, np.zeros_like(x)], 1)
                h = np.where(phi < np.pi / 2, 6.5, 5.5) * (0.8 if k == 0 else 1.0) * (0.85 if k >= 10 else 1.0)
                t = np.full_like(phi, 2.6)
                split = np.searchsorted(phi, np.pi / 2)
                rid = (side + 1) * 20 + k
                post.append(
                    dict(pts=pts[: split + 1], nrm=nrm[: split + 1], h=h[: split + 1], t=t[: split + 1], id=rid)
                )
                ant.append(dict(pts=pts[split:], nrm=nrm[split:], h=h[split:], t=t[split:], id=rid))
        res_p = self.tube_group(post, mu_c, mu_m)
        res_a = self.tube_group(ant, mu_c, mu_m)
        bones = np.zeros_like(self.A)
        if res_p is not None and res_a is not None:
            (vp, ip), (va, ia) = res_p, res_a
            same = (ip == ia) & (ip >= 0)
            bones = np.where(same, np.maximum(vp, va), vp + va)
        elif res_p is not None:
            bones = res_p[0]
        elif res_a is not None:
            bones = res_a[0]
        # clavicles
        clav = []
        for side in (-1, 1):
            j = ph.anat_jit[40 + side]
            zc = ph.lungs[side].z_apex
            ctrl = np.array(
                [
                    [side * 22, 48, zc - 38],
                    [side * 50, 52, zc - 30 + 3 * j],
                    [side * 95, 35, zc - 14 + 3 * j],
                    [side * 130, 5, zc - 2 + 3 * j],
                    [side * 158, -12, zc + 14 + 4 * j],
                ],
                float,
            )
            pts = catmull_rom(ctrl, 24)
            nrm = np.tile([0.0, 1.0, 0.0], (len(pts), 1))
            clav.append(dict(pts=pts, nrm=nrm, h=7.5, t=6.0, id=side))
        res = self.tube_group(clav, mu_c, mu_m, cortex=1.8)
        if res is not None:
            bones = bones + res[0]
        self.A += bones
        self.maps["ribs"] = bones

    # ------------------------------------------------------------------ other bones
    def spine(self):
        ph = self.ph
        bm = ph.bone_mult * ph.bone_dens
        mu_c, mu_m, mu_s = _mu(HU["cortical"] - 350) * bm, _mu(HU["marrow"] - 70) * bm, _mu(HU["soft"])
        z = ph.z_t1 + 2 * ph.rib_dz  # C6
        level = -2
        while z > -420:
            t = np.clip((level + 2) / 16.0, 0, 1)
            height = 14 + 10 * t
            disc = 4 + 2.5 * t
            a = 12 + 12 * t
            b = 9 + 7 * t
            zc = z - height / 2
            bb = self.box(-a - 40, a + 40, zc - height, zc + height, ph.spine_y)
            if bb is not None:
                X, Z = self.xz(bb, ph.spine_y)
                # body: vertical elliptic cylinder with cortical shell and endplates
                for aa, bb_, hh, mu in ((a, b, height, mu_c - mu_s), (a - 0.7, b - 0.7, height - 1.4, mu_m - mu_c)):
                    q = np.clip(1 - (X / aa) ** 2, 0, None)
                    wz = _smoothstep((hh / 2 - np.abs(Z - zc)) / 2.0 + 0.5)
                    self.A[bb] += mu * 2 * bb_ * np.sqrt(q) * wz
                # pedicles (short cylinders along y: oval rings in projection)
                for s in (-1, 1):
                    rings = ((4.5 + 2 * t, 6.0 + 2 * t, mu_c - mu_s), (3.0 + 2 * t, 4.5 + 2 * t, mu_m - mu_c))
                    for rx, rz, mu in rings:
                        q = 1 - ((X - s * (a - 3)) / rx) ** 2 - ((Z - zc - 0.2 * height) / rz) ** 2
                        self.A[bb] += mu * 5.0 * _smoothstep(q * 3)
                    # transverse process
                    c = np.array([s * (a + 12), ph.spine_y - b - 15, zc + 0.15 * height])
                    lo, hi = _ellipsoid_interval(X, Z, c, (14.0 + 2 * t, 8.0, 5.0 + 1.5 * t))
                    self.A[bb] += (mu_m - mu_s) * 0.7 * (hi - lo)
                # spinous process (teardrop in the midline)
                c = np.array([0.0, ph.spine_y - b - 30, zc - 0.45 * height])
                lo, hi = _ellipsoid_interval(X, Z, c, (4.0, 18.0, 7.0 + 2 * t))
                self.A[bb] += (mu_m - mu_s) * 0.8 * (hi - lo)
            z -= height + disc
            level += 1

    def shoulders(self):
        ph = self.ph
        bm = ph.bone_mult * ph.bone_dens
        mu_c, mu_m, mu_s = _mu(HU["cortical"]) * bm, _mu(HU["marrow"]) * bm, _mu(HU["soft"])
        for s in (-1, 1):
            j = ph.anat_jit[44 + s]
            # humeral head + proximal shaft
            c = np.array([s * (176.0 + 4 * j), -15.0, ph.shoulder_z - 6])
            bb = self.box(c[0] - 40, c[0] + 40, c[2] - 200, c[2] + 30, c[1])
            if bb is not None:
                X, Z = self.xz(bb, c[1])
                for rr, mu in ((24.0, mu_c - mu_s), (21.5, mu_m - mu_c)):
                    lo, hi = _ellipsoid_interval(X, Z, c, (rr, rr, rr))
                    self.A[bb] += mu * (hi - lo)
                cs = c + np.array([s * 12.0, 0, -110.0])
                for rr, mu in ((13.0, mu_c - mu_s), (9.5, mu_m - mu_c)):
                    lo, hi = _ellipsoid_interval(X, Z, cs, (rr, rr, 110.0))
                    self.A[bb] += mu * (hi - lo)
            # scapula: a thin plate facing postero-laterally, with its glenoid near the humeral head
            c = np.array([s * (118.0 + 4 * j), -75.0, ph.shoulder_z - 75])
            R = rotation_xyz((0.0, s * 12.0, s * -38.0))
            bb = self.box(c[0] - 80, c[0] + 80, c[2] - 100, c[2] + 100, c[1])
            if bb is not None:
                X, Z = self.xz(bb, c[1])
                for ax, mu in (((48.0, 6.0, 82.0), mu_c - mu_s), ((46.5, 4.0, 80.5), mu_m - mu_c)):
                    lo, hi = _ellipsoid_interval(X, Z, c, ax, R)
                    self.A[bb] += mu * (hi - lo)

    def trachea(self):
        ph = self.ph
        d_air = _mu(HU["air"]) - _mu(HU["soft"])
        carina = -78.0 + 4 * ph.anat_jit[33]
        X, Z = self.X, self.Z
        tx = -3.0 + 2 * ph.anat_jit[34]
        r = 10.0
        q = np.clip(1 - ((X - ph.rot * 0 - tx) / r) ** 2, 0, None)
        wz = _smoothstep((Z - carina) / 3.0) * _smoothstep((120 - Z) / 3.0)
        self.A += d_air * 2 * r * np.sqrt(q) * wz
        # main bronchi as thin tubes toward the hila
        for s in (-1, 1):
            hil = ph.hila[s]
            p0 = np.array([tx, 0.0, carina])
            p1 = np.array([hil[0] * 0.75, -5.0, hil[2] + (15.0 if s < 0 else 8.0)])
            v = p1 - p0
            L2 = float(v[0] ** 2 + v[2] ** 2)
            tt = np.clip(((X - p0[0]) * v[0] + (Z - p0[2]) * v[2]) / L2, 0, 1)
            dx, dz = X - p0[0] - tt * v[0], Z - p0[2] - tt * v[2]
            rr = 7.0 if s < 0 else 6.0
            d2 = dx * dx + dz * dz
            self.A += d_air * 2 * np.sqrt(np.clip(rr * rr - d2, 0, None)) * 0.8

    # ------------------------------------------------------------------ vessels
    def inside_lung_pts(self, P, side, margin=0.88, collapsed=False):
        ph = self.ph
        x, y, z = P[:, 0], P[:, 1], P[:, 2]
        xm, xl, d = ph.lung_profile(side, z, collapsed)
        ax = np.abs(x)
        cx = 0.5 * (xm + xl)
        a = np.maximum(0.5 * (xl - xm), 1e-3) * margin
        u = np.abs(ax - cx) / a
        h = d * margin * (1 - np.clip(u, 0, 1) ** 2.6) ** (1 / 2.6)
        yc = ph.y_post + ph.lungs[side].depth
        ok = (x * side > 0) & (u < 1) & (np.abs(y - yc) < h)
        lo, hi = ph.dome_interval(side, x, z + 6.0)
        ok &= ~((y > lo) & (y < hi))
        # not inside the heart
        q = (P - ph.heart_c) @ ph.heart_R
        ok &= ((q / ph.heart_axes) ** 2).sum(1) > 1.05
        return ok

    def vessels(self):
        ph = self.ph
        rng = np.random.default_rng([ph.seed, 0xB])
        pts, rads = [], []
        step = 0.6 * self.sp
        for side in (-1, 1):
            hil = ph.hila[side]
            collapsed = ph.findings["Pneumothorax"] and side == ph.ptx_side
            # hilar trunks: main pulmonary artery -> hilum, upper-lobe trunk, descending (interlobar) artery
            hz, hx = hil[2], abs(hil[0])
            if side < 0:
                trunks = [
                    ([-24, 5, hz + 8], [-hx, -4, hz], 8.0),
                    ([-hx, -4, hz], [-hx + 4, -8, hz + 45], 5.0),
                    ([-hx, -4, hz], [-hx - 12, -12, hz - 65], 6.5),
                ]
            else:
                trunks = [
                    ([26, 8, hz + 22], [hx, -6, hz + 10], 7.5),
                    ([hx, -6, hz + 10], [hx - 2, -8, hz + 48], 5.0),
                    ([hx, -6, hz + 10], [hx + 8, -14, hz - 58], 6.0),
                ]
            roots, rdirs = [], []
            for p0, p1, rr in trunks:
                p0 = np.array(p0, float) + rng.normal(0, 2, 3)
                p1 = np.array(p1, float) + rng.normal(0, 3, 3)
                nn = max(int(np.linalg.norm(p1 - p0) / step), 2)
                t = np.linspace(0, 1, nn)[:, None]
                pts.append(p0 + t * (p1 - p0))
                rads.append(rr * (1 - 0.3 * t[:, 0]))
                # side branches along the trunk, pointing away from the mediastinum
                for tt in rng.uniform(0.25, 1.0, 4):
                    q = p0 + tt * (p1 - p0)
                    ax = (p1 - p0) / np.linalg.norm(p1 - p0)
                    out = np.array([side * 1.0, rng.normal(0, 0.4), rng.normal(0, 0.6)])
                    out -= (out @ ax) * ax * 0.5
                    roots.append(q)
                    rdirs.append(out / np.linalg.norm(out) + 0.6 * ax)
                roots.append(p1)
                rdirs.append(ax)
            P = np.array(roots)
            D = np.array(rdirs)
            D /= np.linalg.norm(D, axis=1, keepdims=True)
            Rr = np.full(len(P), 3.8) * rng.uniform(0.8, 1.2, len(P))
            for _gen in range(11):
                if not len(P):
                    break
                Lseg = Rr * rng.uniform(3.5, 6.5, len(Rr)) + 3.0
                ok = np.zeros(len(P), bool)
                for shrink in (1.0, 0.6, 0.35):  # shorten a branch that would leave the lung
                    trial = ~ok
                    P1t = P[trial] + D[trial] * (Lseg[trial] * shrink)[:, None]
                    good = self.inside_lung_pts(P1t, side, collapsed=collapsed)
                    idx = np.nonzero(trial)[0][good]
                    Lseg[idx] *= shrink
                    ok[idx] = True
                P, D, Rr, Lseg = P[ok], D[ok], Rr[ok], Lseg[ok]
                if not len(P):
                    break
                P1 = P + D * Lseg[:, None]
                nseg = np.maximum((Lseg / step).astype(int), 2)
                idx = np.repeat(np.arange(len(P)), nseg)
                start = np.repeat(np.cumsum(nseg) - nseg, nseg)
                t = ((np.arange(len(idx)) - start) / (nseg[idx] - 1))[:, None]
                pts.append(P[idx] + t * (P1 - P)[idx])
                rads.append(Rr[idx])
                # two children, asymmetric radii, spread around the parent direction, pulled outward
                nP = len(P)
                out = P1 - hil
                out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
                kids_D = []
                for _sgn in (1, -1):
                    rnd = rng.normal(0, 1, (nP, 3))
                    rnd -= (rnd * D).sum(1, keepdims=True) * D
                    rnd /= np.maximum(np.linalg.norm(rnd, axis=1, keepdims=True), 1e-9)
                    nd = D + rnd * rng.uniform(0.3, 0.8, (nP, 1)) + 0.3 * out
                    nd /= np.linalg.norm(nd, axis=1, keepdims=True)
                    kids_D.append(nd)
                fr = rng.uniform(0.74, 0.86, nP)
                P = np.concatenate([P1, P1])
                D = np.concatenate(kids_D)
                Rr = np.concatenate([Rr * fr, Rr * (fr - 0.1)])
                keep = Rr > 0.4
                P, D, Rr = P[keep], D[keep], Rr[keep]
        if not pts:
            return
        Q = np.concatenate(pts)
        r = np.concatenate(rads)
        row, col = self.to_pixel(Q[:, 0], Q[:, 1], Q[:, 2])
        w = np.pi * r * r * step / (self.sp * self.sp) * (ph.sx * ph.sz)  # mm^3 / pixel area -> mm of chord
        edges = [0.0, 1.2, 2.5, 4.5, 1e9]
        tot = np.zeros_like(self.A)
        H, W = self.H, self.W
        for b in range(4):
            sel = (r >= edges[b]) & (r < edges[b + 1])
            if not sel.any():
                continue
            rr, cc, ww = row[sel], col[sel], w[sel]
            r0 = np.floor(rr).astype(int)
            c0 = np.floor(cc).astype(int)
            fr_, fc = rr - r0, cc - c0
            img = np.zeros(H * W)
            for dr, dc, wt in (
                (0, 0, (1 - fr_) * (1 - fc)),
                (1, 0, fr_ * (1 - fc)),
                (0, 1, (1 - fr_) * fc),
                (1, 1, fr_ * fc),
            ):
                ri, ci = r0 + dr, c0 + dc
                ok = (ri >= 0) & (ri < H) & (ci >= 0) & (ci < W)
                img += np.bincount(ri[ok] * W + ci[ok], weights=(ww * wt)[ok], minlength=H * W)
            img = img.reshape(H, W)
            rmid = np.median(r[sel])
            sig = 0.5 * rmid / self.sp
            if sig > 0.35:
                img = ndimage.gaussian_filter(img, sig, truncate=3.0)
            tot += img
        tot = np.minimum(tot, self.maps["lung"])  # vessels only displace lung
        self.A += (_mu(HU["blood"]) - _mu(HU["lung"])) * tot
        self.maps["vessels"] = tot

    def fissure(self):
        ph = self.ph
        if not ph.fissure:
            return
        L = ph.lungs[-1]
        X, Z = self.X, self.Z
        zf = ph.hila[-1][2] + 8 + 0.06 * (np.abs(X) - 60) + 4 * ph.anat_jit[35]
        line = np.exp(-0.5 * ((Z - zf) / (0.45 * self.sp)) ** 2)
        ext = _smoothstep((np.abs(X) - 55) / 15) * _smoothstep((L.w_lat - 8 - np.abs(X)) / 15) * (X < 0)
        self.A += (_mu(HU["soft"]) - _mu(HU["lung"])) * 6.0 * line * ext * (self.maps["lung"] > 20)

    def nodule(self):
        ph = self.ph
        if not ph.findings["Nodule"]:
            self.maps["nodule"] = np.zeros_like(self.A)
            return
        rng = ph.rng_find
        lung = self.maps["lung"]
        # a point deep inside a visible lung (not behind the heart, above any fluid), drawn in phantom space
        for _attempt in range(200):
            side = -1 if rng.random() < 0.5 else 1
            L = ph.lungs[side]
            x = side * rng.uniform(L.x_med + 20, L.w_lat - 15)
            z = rng.uniform(L.dome_z - 5, L.z_apex - 25)
            X1, Z1 = np.array([x]), np.array([z])
            collapsed = bool(ph.findings["Pneumothorax"] and side == ph.ptx_side)
            ch, (lo, hi) = self.lung_chord(side, X1, Z1, collapsed=collapsed)
            hlo, hhi = _ellipsoid_interval(X1, Z1, ph.heart_c, ph.heart_axes, ph.heart_R)
            dlo, dhi = ph.dome_interval(side, X1, Z1 - 1.5 * ph.cfg.nodule_radius_mm[1])
            ok = ch[0] > 0.55 * 2 * L.depth and hhi[0] - hlo[0] <= 0 and dhi[0] - dlo[0] <= 0
            if ph.findings["Effusion"] and side in ph.eff_sides:
                ok = ok and z > self.meniscus(side, X1)[0] + 15
            if ok:
                break
        y = float(0.5 * (lo[0] + hi[0]) + rng.uniform(-0.25, 0.25) * (hi[0] - lo[0]))
        r = rng.uniform(*ph.cfg.nodule_radius_mm)
        harm = rng.normal(0, 0.08, (4, 2))
        calcified = rng.random() < 0.15
        pr, pc = self.to_pixel(np.array([x]), np.array([y]), np.array([z]))
        i, j = int(round(pr[0])), int(round(pc[0]))
        pad = int(2 * r / self.sp) + 4
        bb = (slice(max(i - pad, 0), max(i + pad + 1, 0)), slice(max(j - pad, 0), max(j + pad + 1, 0)))
        X, Z = self.xz(bb, y)
        ang = np.arctan2(Z - z, X - x)
        rr = r * (1 + sum(harm[q, 0] * np.cos((q + 2) * ang) + harm[q, 1] * np.sin((q + 2) * ang) for q in range(4)))
        d2 = (X - x) ** 2 + (Z - z) ** 2
        chord = 2 * np.sqrt(np.clip(rr * rr - d2, 0, None))
        chord = np.minimum(chord, lung[bb] + 2.0)
        hu = 400.0 if calcified else 30.0
        self.A[bb] += (_mu(hu) - _mu(HU["lung"])) * chord
        m = np.zeros_like(self.A)
        m[bb] = chord
        self.maps["nodule"] = m
        ph.nodule = dict(x=float(x), y=y, z=float(z), r=float(r), calcified=bool(calcified))

    # ------------------------------------------------------------------ detector and processing
    def expose(self) -> np.ndarray:
        ph = self.ph
        rng = ph.rng_acq
        A = self.A * ph.sy
        # mottled lung parenchyma
        tex = ndimage.gaussian_filter(rng.standard_normal(A.shape), 3.0 / self.sp)
        tex /= max(float(tex.std()), 1e-9)
        A = A + 0.02 * tex * (self.maps["lung"] > 0) * np.clip(self.maps["lung"] / 150.0, 0, 1)
        intensity = np.exp(-A)
        if ph.scatter > 0:
            intensity = intensity + ph.scatter * ndimage.gaussian_filter(intensity, 25.0 / self.sp, truncate=2.5)
        n0 = ph.photons * (256.0 / self.W) ** 2
        intensity = intensity + rng.standard_normal(intensity.shape) * np.sqrt(np.maximum(intensity, 1e-6) / n0)
        intensity = ndimage.gaussian_filter(intensity, 0.9 / self.sp)  # detector blur (~0.9 mm)
        L = -np.log(np.clip(intensity, 1e-4, None))
        # CR-like processing: dynamic-range compression and unsharp masking in the log domain
        big = ndimage.gaussian_filter(L, 30.0 / self.sp, truncate=2.5)
        body = self.maps["body"] * ph.sy > 30
        Lc = L - ph.compression * (big - (big[body].mean() if body.any() else 0.0)) * body
        small = ndimage.gaussian_filter(Lc, 2.5 / self.sp)
        Lc = Lc + ph.unsharp * (Lc - small)
        vals = Lc[body] if body.sum() > 100 else Lc.ravel()
        lo, hi = np.percentile(vals, [1.0, 99.7])
        lo = lo - 0.08 * (hi - lo)
        v = np.clip((Lc - lo) / max(hi - lo, 1e-6), 0, 1) ** ph.gamma
        return np.round(v * 255).astype(np.uint8)


def _setup_findings(ph: _Phantom):
    """Finding-specific geometry (drawn from the findings stream)."""
    rf = ph.rng_find
    cfg = ph.cfg
    ph.z_cp = {}
    for side in (-1, 1):
        L = ph.lungs[side]
        ph.z_cp[side] = L.dome_z - L.kx * (L.w_lat - L.dome_x) ** 2
    ph.eff_sides = ()
    ph.eff_height = {-1: 0.0, 1: 0.0}
    ph.eff_ramp = 20.0
    if ph.findings["Effusion"]:
        u = rf.random()
        ph.eff_sides = (-1,) if u < 0.4 else ((1,) if u < 0.75 else (-1, 1))
        for s in ph.eff_sides:
            ph.eff_height[s] = rf.uniform(*cfg.effusion_height_mm)
        ph.eff_ramp = rf.uniform(15, 35)
    ph.ptx_side = 0
    ph.ptx_retract = 0.0
    ph.ptx_drop = 0.0
    if ph.findings["Pneumothorax"]:
        ph.ptx_side = -1 if rf.random() < 0.5 else 1
        ph.ptx_retract = rf.uniform(*cfg.pneumothorax_mm)
        ph.ptx_drop = ph.ptx_retract * rf.uniform(0.8, 1.5)
    ph.nodule = None


def _render(seed: int, cfg: CXRConfig = CXRConfig(), patient_seed: int | None = None) -> dict:
    """The image with the phantom internals (label maps, CTR); ``generate_image`` is the API."""
    ph = _Phantom(seed, cfg, patient_seed)
    _setup_findings(ph)
    r = _Renderer(ph)
    r.body()
    r.lungs()
    r.vessels()
    r.fissure()
    r.nodule()
    r.trachea()
    r.spine()
    r.ribs_and_clavicles()
    r.shoulders()
    image = r.expose()
    return {
        "image": image,
        "findings": dict(ph.findings),
        "ctr": ph.ctr,
        "maps": r.maps,
        "phantom": ph,
        "A": r.A * ph.sy,
        "sex": "F" if ph.female else "M",
        "age": ph.age,
    }


def findings_of(seed: int, cfg: CXRConfig = CXRConfig()) -> dict[str, int]:
    """The finding labels of ``seed`` without rendering (the first draws of the findings stream)."""
    rf = np.random.default_rng([int(seed), 0xF])
    return {name: int(rf.random() < p) for name, p in zip(FINDINGS, cfg.prevalence)}


def generate_image(
    seed: int, cfg: CXRConfig = CXRConfig(), patient_seed: int | None = None
) -> tuple[np.ndarray, dict[str, int]]:
    """One synthetic PA chest radiograph.

    Returns ``(image, findings)``: uint8 [H, W] (display convention: the patient's right on the image
    left, superior up) and ``{finding: 0/1}`` for every name in ``FINDINGS``. ``patient_seed`` (default
    ``seed``) drives the anatomy, sex and age, so several images of one patient share them; findings,
    positioning and exposure come from ``seed``. The same arguments always give identical pixels.
    """
    out = _render(seed, cfg, patient_seed)
    return out["image"], out["findings"]


# ----------------------------------------------------------------------------------------------------
# files


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_cxr14_layout(
    root: str | os.PathLike,
    items: list[tuple[str, int, int]],
    train_val: list[str] | None = None,
    test: list[str] | None = None,
    progress: bool = True,
    cfg: CXRConfig = CXRConfig(),
) -> dict[str, dict[str, int]]:
    """Write the ChestX-ray14 layout: ``images/<name>.png``, ``Data_Entry_2017.csv``,
    ``train_val_list.txt`` and ``test_list.txt``.

    ``items`` holds ``(image file name, seed, patient id)``, e.g. ``("00000001_000.png", 123, 1)``.
    Images of one patient share the anatomy, age and sex (drawn from the seed of the patient's first
    image in ``items``); ``Follow-up #`` counts the patient's earlier images in ``items``.
    ``test`` names the test images (default none); ``train_val`` defaults to all other images. Every
    file is written under a temporary name and renamed into place; the CSV and the lists come last.
    Returns ``{image name: findings}``.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    names = [it[0] for it in items]
    if len(set(names)) != len(names):
        raise ValueError("duplicate image names in items")
    for n in names:
        if not n.endswith(".png") or "/" in n or n.startswith("."):
            raise ValueError(f"image names must be plain '*.png' file names, got {n!r}")
    test = list(test or [])
    known = set(names)
    missing = [n for n in test + list(train_val or []) if n not in known]
    if missing:
        raise ValueError(f"split lists name images not in items: {missing[:5]}")
    if train_val is None:
        tset = set(test)
        train_val = [n for n in names if n not in tset]
    first_seed: dict[int, int] = {}
    follow: dict[int, int] = {}
    rows = []
    out: dict[str, dict[str, int]] = {}
    H, W = cfg.size
    sp = cfg.spacing_mm
    for name, seed, pid in tqdm(items, desc="SynthCXR", unit="img", disable=not progress):
        pid = int(pid)
        pseed = first_seed.setdefault(pid, int(seed))
        fu = follow.get(pid, 0)
        follow[pid] = fu + 1
        res = _render(seed, cfg, pseed)
        _atomic_write_bytes(root / "images" / name, _png_bytes(res["image"]))
        f = res["findings"]
        labels = "|".join(k for k in FINDINGS if f[k]) or "No Finding"
        rows.append(f"{name},{labels},{fu},{pid},{res['age']},{res['sex']},PA,{W},{H},{sp:.3f},{sp:.3f}")
        out[name] = f
    _atomic_write_bytes(root / "Data_Entry_2017.csv", ("\n".join([CSV_HEADER] + rows) + "\n").encode())
    _atomic_write_bytes(root / "train_val_list.txt", "".join(n + "\n" for n in train_val).encode())
    _atomic_write_bytes(root / "test_list.txt", "".join(n + "\n" for n in test).encode())
    return out


# ----------------------------------------------------------------------------------------------------
# previews and measurements


def make_preview(path: str | os.PathLike, seeds=tuple(range(8)), cfg: CXRConfig = CXRConfig(), ncol: int = 4) -> None:
    """Montage PNG of the images of ``seeds`` with their finding names (and the phantom CTR) as titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(seeds)
    nrow = (len(seeds) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.6 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, seed in enumerate(seeds):
        res = _render(seed, cfg)
        ax = axes.ravel()[k]
        ax.imshow(res["image"], cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        names = [n for n in FINDINGS if res["findings"][n]] or ["No Finding"]
        if res["findings"]["Nodule"]:  # nodules are subtle at this size: circle it
            rr, cc = np.nonzero(res["maps"]["nodule"] > 0)
            rad = 0.5 * (np.ptp(cc) + 1) + 5
            ax.add_patch(plt.Circle((cc.mean(), rr.mean()), rad, fill=False, color="#ff4040", lw=0.8))
        names = textwrap.wrap(", ".join(names), 34)
        ax.set_title(
            f"seed {seed}: " + "\n".join(names) + f"\nCTR {res['ctr']:.2f}, {res['sex']} {res['age']}", fontsize=8
        )
    fig.suptitle(f"SynthCXR (PA, {cfg.size[1]}x{cfg.size[0]}); image left = patient right", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, facecolor="white")
    plt.close(fig)


def _time_worker(args):
    seeds, cfg = args
    t0 = time.perf_counter()
    found = [generate_image(s, cfg)[1] for s in seeds]
    return time.perf_counter() - t0, found


def measure(n_images: int = 200, n_prevalence: int = 2000, workers: int = 2, cfg: CXRConfig = CXRConfig()) -> dict:
    """Images per second (one process; ``workers`` processes; one process including the PNG + CSV writing)
    and the prevalence per finding, over the rendered images and over ``n_prevalence`` label draws."""
    import tempfile

    generate_image(10_000, cfg)
    seeds = list(range(1000, 1000 + n_images))
    t1, found = _time_worker((seeds, cfg))
    res = {"n_images": n_images, "single_ips": n_images / t1}
    res["rendered_prevalence"] = {k: float(np.mean([f[k] for f in found])) for k in FINDINGS}
    if workers > 1:
        import multiprocessing as mp

        chunks = [seeds[i::workers] for i in range(workers)]
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            pool.map(_time_worker, [([10_001], cfg)] * workers)
            t0 = time.perf_counter()
            pool.map(_time_worker, [(c, cfg) for c in chunks])
            res["parallel_ips"] = n_images / (time.perf_counter() - t0)
        res["workers"] = workers
    n_write = max(1, n_images // 2)
    with tempfile.TemporaryDirectory() as tmp:
        items = [(f"{i + 1:08d}_000.png", 5000 + i, i + 1) for i in range(n_write)]
        t0 = time.perf_counter()
        write_cxr14_layout(tmp, items, progress=False, cfg=cfg)
        res["write_ips"] = n_write / (time.perf_counter() - t0)
        res["n_write"] = n_write
    counts = np.zeros(len(FINDINGS))
    none = 0
    for s in range(n_prevalence):
        f = findings_of(s, cfg)
        counts += [f[k] for k in FINDINGS]
        none += not any(f.values())
    res["prevalence"] = {k: float(c / n_prevalence) for k, c in zip(FINDINGS, counts)}
    res["no_finding"] = none / n_prevalence
    res["n_prevalence"] = n_prevalence
    return res


def _main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", action="store_true", help="time the generator and print the prevalence")
    ap.add_argument("--n-images", type=int, default=200)
    ap.add_argument("--n-prevalence", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--preview", metavar="PNG", help="write a preview montage")
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    args = ap.parse_args(argv)
    cfg = CXRConfig(size=(args.size, args.size))
    if args.preview:
        make_preview(args.preview, [int(s) for s in args.seeds.split(",")], cfg)
        print(f"wrote {args.preview}")
    if args.measure:
        print(f"{os.cpu_count()} CPUs visible; size {cfg.size[1]}x{cfg.size[0]}, {cfg.spacing_mm:.3f} mm/pixel")
        res = measure(args.n_images, args.n_prevalence, args.workers, cfg)
        msg = f"generation: {res['single_ips']:.1f} images/s in one process ({60 * res['single_ips']:.0f}/min)"
        if "parallel_ips" in res:
            msg += (
                f"; {res['parallel_ips']:.1f} images/s with {res['workers']} processes "
                f"({60 * res['parallel_ips']:.0f}/min)"
            )
        print(msg + f"; {res['n_images']} images (seeds 1000..{999 + res['n_images']})")
        print(
            f"writing the ChestX-ray14 layout (render + PNG + CSV), one process: {res['write_ips']:.1f} images/s "
            f"({60 * res['write_ips']:.0f}/min); {res['n_write']} images"
        )
        print("prevalence (configured " + ", ".join(f"{k} {p:.2f}" for k, p in zip(FINDINGS, cfg.prevalence)) + "):")
        print(f"  {'':<13}{'rendered':>10}{'labels':>10}")
        print(f"  {'':<13}{'n=' + str(res['n_images']):>10}{'n=' + str(res['n_prevalence']):>10}")
        for k, v in res["prevalence"].items():
            print(f"  {k:<13}{res['rendered_prevalence'][k]:>10.3f}{v:>10.3f}")
        print(f"  {'No Finding':<13}{'':>10}{res['no_finding']:>10.3f}")
    if not (args.preview or args.measure):
        ap.print_help()


if __name__ == "__main__":
    _main()
