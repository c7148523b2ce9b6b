"""SynthAbdomen: a procedural abdominal CT generator with BTCV labels (DATA.md Part C.2).

A canonical atlas of primitives in millimetres (x toward the patient's left, y anterior, z superior; z = 0 at
the centre of L1, body centred; the written affine maps it to RAS+, see ``output_affine``) is
warped per subject and rendered in Hounsfield units:

* body: superelliptic cross-section with a subcutaneous fat ring of random thickness, an abdominal-wall
  muscle ring, a flat back and a CT table; spine with vertebral bodies, discs every ~32 mm (26 mm in
  the thorax), canal, posterior elements, paraspinal muscles and psoas; ribs every ~26 mm descending
  anteriorly above the costal margin; iliac wings and sacrum at the bottom; lung bases above a
  diaphragm dome that is higher on the right; heart above the central tendon;
* organs: superellipsoids (liver with left lobe and caudate cut by a plane toward the left, spleen as
  a crescent, bean-shaped kidneys with renal sinus, right ~18 mm lower, gallbladder under the liver,
  thin inverted-V adrenals superomedial to the kidneys) and tubes swept along jittered splines
  (stomach with wall and an anterior air-fluid level, duodenal C-loop, pancreas from the C-loop to
  the splenic hilum, splenic + portal vein, aorta left of midline with iliac bifurcation, IVC right,
  esophagus to the cardia, SMA/SMV, renal veins, colon frame), painted large-first so labels are
  mutually exclusive and clipped to the abdominal cavity;
* per subject: anisotropic body scale, fat thickness, per-organ scale/centre/rotation jitter, a
  respiratory shift of the diaphragm and upper organs, one smooth deformation field shared by all
  structures, surface roughness from a shared low-frequency field, bowel clutter and gas, FOV shift
  along z, patient centring and roll;
* intensities: per-tissue HU with per-subject jitter, a contrast-phase factor on enhancing tissues,
  intra-organ texture, PSF blur and correlated noise.

``layout="shuffled"`` is the negative control: the same organ primitives, sizes and intensities, each
labelled organ placed at a random position and orientation inside the abdomen per subject.

Run ``python -m datasets.synthetic.abdomen --measure`` to time the generator and print inter-subject
Dice; ``--preview PATH`` writes a montage.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import ndimage

from datasets.synthetic._common import (
    atomic_save_nifti,
    catmull_rom,
    correlated_noise,
    dice,
    random_rotation,
    rotation_xyz,
    smooth_field,
    superellipsoid,
    tube_field,
)

GENERATOR_VERSION = "synthabdomen-2"  # 2: the affine states the grid's left-pointing x axis (v1 said RAS+)

LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic veins",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
LAYOUTS = ("atlas", "shuffled")


@dataclass(frozen=True)
class AbdomenConfig:
    """Geometry of the output volume and the per-subject variation knobs.

    The atlas is authored in millimetres with x toward the patient's LEFT (the patient's right is -x), y
    toward anterior and z toward superior, and the arrays follow it: axis 0 runs toward the patient's left,
    axis 1 toward anterior, axis 2 toward superior (LAS). The written affine says so (``output_affine``: a
    negative x step, the volume centred on the origin), so in RAS+ world coordinates, and in the arrays of
    any reader that reorients to RAS+ (nibabel's ``as_closest_canonical``, the harness's ``read_nifti``),
    the liver and the right kidney lie on the patient's right (x > 0), as in real CT.
    """

    shape: tuple[int, int, int] = (96, 80, 72)
    spacing: tuple[float, float, float] = (3.6, 3.6, 3.5)  # mm; FOV 346 x 288 x 252 mm
    z_center_mm: float = -10.0  # atlas z at the volume centre (0 = centre of L1)
    fov_shift_mm: float = 30.0  # FOV shift along z: U(-v, v)
    centring_mm: float = 3.0  # patient off-centre in x/y: N(0, v)
    roll_deg: float = 1.0  # whole-body rotation: N(0, v) per axis
    scale_range: tuple[float, float] = (0.85, 1.15)  # anisotropic body scale, per axis
    fat_mm: tuple[float, float] = (8.0, 35.0)  # anterior subcutaneous fat thickness
    organ_scale_sigma: float = 0.10  # per-organ log-normal scale (per axis)
    organ_jitter_mm: float = 6.0  # per-organ centre jitter N(0, v)
    organ_rotation_deg: float = 8.0  # per-organ rotation jitter N(0, v)
    tube_jitter_mm: float = 2.5  # per-control-point jitter of tube centre lines
    kidney_drop_mm: tuple[float, float] = (12.0, 24.0)  # right kidney lower than left by U(a, b)
    respiration_mm: float = 5.0  # diaphragm + upper-organ craniocaudal shift N(0, v)
    deformation_mm: tuple[float, float] = (3.0, 7.0)  # smooth deformation amplitude U(a, b)
    deformation_node_mm: float = 60.0  # control-node spacing of the deformation field
    roughness: float = 0.12  # surface roughness (fraction of the implicit function)
    bowel_fill: float = 0.40  # fraction of the free lower abdomen filled by bowel loops
    hu_jitter: float = 8.0  # per-subject per-tissue HU jitter N(0, v)
    contrast_range: tuple[float, float] = (0.7, 1.3)  # contrast-phase factor on enhancing tissues
    texture_hu: tuple[float, float] = (4.0, 12.0)  # intra-organ texture amplitude U(a, b)
    psf_sigma_vox: tuple[float, float] = (0.4, 0.9)  # PSF / partial-volume blur U(a, b)
    noise_hu: tuple[float, float] = (8.0, 20.0)  # correlated quantum noise U(a, b)
    noise_corr_vox: float = 0.7  # noise correlation length (Gaussian sigma, voxels)
    table: bool = True  # draw the CT couch under the patient
    intensity_mode: str = "ct"  # "ct" or "gmm" (SynthSeg-style random intensities + bias)


# ----------------------------------------------------------------------------------------------------
# tissues and intensities

_TISSUES: list[tuple[str, float, bool, float]] = [
    # name, HU, enhancing, texture multiplier
    ("air", -1000.0, False, 0.0),
    ("fat_sc", -100.0, False, 1.2),
    ("fat", -92.0, False, 1.5),
    ("muscle", 50.0, False, 1.0),
    ("lung", -850.0, False, 5.0),
    ("bone_cortical", 750.0, False, 3.0),
    ("bone", 230.0, False, 4.0),
    ("disc", 85.0, False, 1.0),
    ("csf", 15.0, False, 0.5),
    ("cartilage", 140.0, False, 2.0),
    ("heart", 120.0, True, 1.0),
    ("liver", 105.0, True, 1.0),
    ("spleen", 115.0, True, 0.8),
    ("kidney", 170.0, True, 1.0),
    ("renal_sinus", -40.0, False, 3.0),
    ("gallbladder", 10.0, False, 0.4),
    ("stomach_wall", 85.0, True, 1.0),
    ("stomach_content", 30.0, False, 1.0),
    ("gas", -990.0, False, 0.5),
    ("bowel_wall", 80.0, True, 1.0),
    ("bowel_content", 25.0, False, 2.0),
    ("stool", -60.0, False, 10.0),
    ("esophagus", 45.0, True, 0.8),
    ("aorta", 190.0, True, 0.5),
    ("ivc", 140.0, True, 0.5),
    ("portal_vein", 165.0, True, 0.5),
    ("pancreas", 95.0, True, 2.0),
    ("adrenal", 70.0, True, 0.8),
    ("hepatic_vein", 150.0, True, 0.5),
    ("table", 120.0, False, 0.5),
    ("duodenal_content", 35.0, False, 1.0),
]
_T = {name: i for i, (name, *_rest) in enumerate(_TISSUES)}
_ENHANCING_PIVOT = 40.0


# ----------------------------------------------------------------------------------------------------
# atlas helpers (all in atlas millimetres)


def _spine_y(z):
    """Centre of the vertebral bodies in y (lumbar lordosis brings L3-L4 forward)."""
    return -46.0 + 10.0 * np.exp(-(((z + 80.0) / 90.0) ** 2))


def _vert_coord(z):
    """Vertebral coordinate: integers at vertebral-body centres (0 = L1), discs at half-integers."""
    return np.where(z <= 16.0, z / 32.0, 0.5 + (z - 16.0) / 26.0)


# cavity (inner surface of the abdominal wall) and wall geometry
_CAV_CY = 5.0
_CAV_A = 112.0
_CAV_BA = 85.0
_CAV_BP = 82.0
_CAV_N = 2.2
_WALL = 12.0
_BACK = 113.0  # posterior extent of the muscle layer (paraspinal muscles) from _CAV_CY


def _se_rho(x, y, cy, a, b_ant, b_post, n):
    """Normalised radius of a superellipse with different anterior/posterior semi-axes (1 on the curve)."""
    b = np.where(y >= cy, b_ant, b_post)
    return (np.abs(x / a) ** n + np.abs((y - cy) / b) ** n) ** (1.0 / n)


class _Pose:
    """Rigid pose + per-axis scale of one organ: canonical point x -> t + R @ (s * (x - c0))."""

    def __init__(self, c0, t=None, rot=None, scale=None):
        self.c0 = np.asarray(c0, float)
        self.t = self.c0.copy() if t is None else np.asarray(t, float)
        self.R = np.eye(3) if rot is None else np.asarray(rot, float)
        self.s = np.ones(3) if scale is None else np.asarray(scale, float)

    def forward(self, pts):
        pts = np.atleast_2d(pts)
        return self.t + ((pts - self.c0) * self.s) @ self.R.T

    def inverse(self, ux, uy, uz):
        dx, dy, dz = ux - self.t[0], uy - self.t[1], uz - self.t[2]
        R = self.R.astype(np.float32)
        vx = (R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz) / np.float32(self.s[0]) + np.float32(self.c0[0])
        vy = (R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz) / np.float32(self.s[1]) + np.float32(self.c0[1])
        vz = (R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz) / np.float32(self.s[2]) + np.float32(self.c0[2])
        return vx, vy, vz


def _ellip(v, center, axes, n=2.0, rot=(0, 0, 0), taper=0.0, bend=0.0):
    """Implicit superellipsoid evaluated at canonical coordinates ``v`` = (vx, vy, vz)."""
    vx, vy, vz = v
    dx, dy, dz = vx - center[0], vy - center[1], vz - center[2]
    if any(rot):
        R = rotation_xyz(rot).astype(np.float32)
        lx = R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz
        ly = R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz
        lz = R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz
    else:
        lx, ly, lz = dx, dy, dz
    return superellipsoid(lx, ly, lz, axes, n, taper, bend)


def _tube(v, points, radii, per_segment=5, xy_ratio=1.0):
    pts = np.asarray(points, float)
    centres = catmull_rom(pts, per_segment)
    r = np.interp(np.linspace(0, 1, len(centres)), np.linspace(0, 1, len(radii)), np.asarray(radii, float))
    return tube_field(v[0], v[1], v[2], centres, r, xy_ratio)


# ----------------------------------------------------------------------------------------------------
# the canonical atlas: organs (labelled) and their sub-parts, in canonical atlas millimetres


def _tube_spec(points, radii, **kw):
    return {"points": np.asarray(points, float), "radii": np.asarray(radii, float), **kw}


def _atlas_tubes() -> dict[str, dict]:
    ys = _spine_y
    zs_a = np.array([190.0, 130.0, 70.0, 20.0, -30.0, -70.0, -98.0])
    aorta = np.stack([np.interp(zs_a, [-98, 20, 190], [5, 10, 18]), ys(zs_a) + 28.0, zs_a], 1)
    zs_v = np.array([-128.0, -80.0, -30.0, 10.0, 45.0, 80.0, 108.0])
    ivc = np.stack(
        [np.array([-22, -24, -25, -26, -27, -23, -16.0]), ys(zs_v) + np.array([24, 25, 27, 27, 27, 34, 44.0]), zs_v], 1
    )
    return {
        "aorta": _tube_spec(aorta, [12.5, 12.5, 12.0, 11.5, 11.0, 10.5, 10.0]),
        "ivc": _tube_spec(ivc, [10.0, 10.5, 11.0, 11.5, 12.0, 13.0, 14.0], xy_ratio=1.35),
        "esophagus": _tube_spec(
            [(2, -2, 200), (0, -2, 150), (4, 0, 115), (14, 2, 90), (24, 4, 76), (32, 6, 67)],
            [7.5, 8.0, 8.0, 8.5, 9.0, 10.0],
            xy_ratio=1.3,
        ),
        "stomach": _tube_spec(
            [(30, 4, 66), (48, -10, 74), (60, 12, 52), (56, 36, 26), (40, 52, 6), (12, 56, -6), (-12, 46, -2)],
            [16, 33, 34, 30, 25, 19, 11],
        ),
        "pancreas": _tube_spec(
            [(-34, 16, -24), (-26, 20, -8), (-2, 24, 2), (28, 18, 12), (52, 6, 20), (70, -12, 28)],
            [16, 15, 11, 11, 10, 8],
        ),
        "portal": _tube_spec(
            [
                (68, -24, 31),
                (50, -6, 21),
                (26, 6, 10),
                (0, 12, 3),
                (-11, 13, 2),
                (-24, 10, 16),
                (-36, 6, 29),
                (-47, 4, 37),
            ],
            [4.5, 4.5, 5.0, 5.5, 7.0, 7.0, 6.5, 5.5],
        ),
        # unlabelled context structures (BTCV has no label for them)
        "duodenum": _tube_spec(
            [
                (-12, 46, -2),
                (-34, 30, 4),
                (-48, 10, 0),
                (-52, 4, -28),
                (-46, 8, -52),
                (-14, 10, -62),
                (16, 10, -58),
                (28, 12, -40),
                (30, 16, -28),
            ],
            [11, 13, 13, 13, 12, 11, 11, 11, 10],
        ),
        "smv": _tube_spec([(-11, 13, 2), (-9, 22, -30), (-6, 26, -80), (-4, 28, -120)], [6, 5, 4, 3.5]),
        "sma": _tube_spec(
            [(10, -4, 8), (10, 12, -2), (8, 20, -30), (5, 25, -90), (3, 28, -125)], [4.5, 4.0, 3.8, 3.2, 2.8]
        ),
        "celiac": _tube_spec([(10, -6, 24), (10, 10, 28), (36, 4, 32), (60, -14, 36)], [4.0, 3.5, 2.8, 2.5]),
        "left_renal_vein": _tube_spec(
            [(50, -26, -8), (30, -10, -10), (10, 4, -12), (-12, 0, -12), (-22, -12, -12)], [5.0, 5.0, 4.5, 5.0, 6.0]
        ),
        "right_renal_vein": _tube_spec([(-46, -28, -26), (-34, -20, -22), (-24, -14, -18)], [5.0, 5.5, 6.0]),
        "right_crus": _tube_spec(
            [(-14, ys(-40) + 18, -40), (-17, ys(10) + 24, 10), (-12, ys(50) + 32, 50), (-4, -4, 78)], [5, 6, 5, 3.5]
        ),
        "left_crus": _tube_spec(
            [(16, ys(-20) + 16, -20), (26, ys(20) + 22, 20), (26, ys(55) + 30, 55), (18, -2, 78)], [4, 5, 4.5, 3]
        ),
        "iliac_art_r": _tube_spec(
            [(5, ys(-98) + 28, -98), (-22, ys(-140) + 26, -140), (-48, ys(-190) + 30, -195)], [7.5, 6.5, 6.0]
        ),
        "iliac_art_l": _tube_spec(
            [(5, ys(-98) + 28, -98), (30, ys(-140) + 26, -140), (52, ys(-190) + 30, -195)], [7.5, 6.5, 6.0]
        ),
        "iliac_vein_r": _tube_spec(
            [(-22, ys(-128) + 24, -128), (-34, ys(-160) + 16, -160), (-52, ys(-195) + 18, -200)], [9, 8, 7.5]
        ),
        "iliac_vein_l": _tube_spec(
            [(-22, ys(-128) + 24, -128), (12, ys(-150) + 14, -150), (44, ys(-195) + 16, -200)], [9, 8, 7.5]
        ),
        "colon": _tube_spec(
            [
                (-82, 4, -200),
                (-86, 6, -130),
                (-88, 10, -70),
                (-80, 30, -40),
                (-50, 62, -46),
                (-10, 72, -56),
                (30, 66, -48),
                (70, 40, -14),
                (90, 8, -20),
                (88, -4, -70),
                (84, 0, -130),
                (60, 30, -175),
                (20, 30, -200),
            ],
            [24, 24, 22, 21, 20, 19, 19, 18, 17, 16, 16, 15, 15],
        ),
    }


# liver-internal vessels (drawn in the image only, inside the liver label)
_HEPATIC_VESSELS = [
    ([(-92, 18, 38), (-62, 4, 66), (-36, -8, 86), (-26, -10, 92)], [3.0, 4.0, 5.0, 6.0]),
    ([(-52, 42, 28), (-40, 18, 60), (-30, 0, 84), (-24, -8, 92)], [2.5, 3.5, 4.5, 5.5]),
    ([(20, 34, 52), (0, 18, 70), (-14, 2, 84), (-22, -6, 92)], [2.5, 3.2, 4.0, 5.0]),
    ([(-47, 4, 37), (-70, 6, 44), (-96, 10, 40)], [5.0, 4.0, 2.5]),  # right portal branch
    ([(-47, 4, 37), (-22, 20, 46), (8, 34, 54), (32, 36, 56)], [4.5, 3.8, 3.0, 2.2]),  # left portal branch
]

# reference centres (c0) of the labelled organs in the canonical atlas
_ORGAN_CENTRES = {
    "liver": (-40.0, 10.0, 48.0),
    "spleen": (82.0, -40.0, 42.0),
    "right kidney": (-62.0, -40.0, -26.0),
    "left kidney": (62.0, -38.0, -8.0),
    "gallbladder": (-40.0, 40.0, 4.0),
    "right adrenal gland": (-34.0, -43.0, 34.0),
    "left adrenal gland": (41.0, -28.0, 12.0),
}
_TUBE_ORGANS = {"stomach": 7, "pancreas": 11, "portal": 10, "aorta": 8, "ivc": 9, "esophagus": 5}
# how strongly a structure follows the diaphragm (respiratory shift)
_RESP = {
    "liver": 1.0,
    "spleen": 1.0,
    "stomach": 0.9,
    "gallbladder": 0.9,
    "right kidney": 0.6,
    "left kidney": 0.6,
    "right adrenal gland": 0.6,
    "left adrenal gland": 0.6,
    "pancreas": 0.5,
    "portal": 0.6,
    "duodenum": 0.4,
    "esophagus": 0.3,
}


# ----------------------------------------------------------------------------------------------------
# the renderer


class _Subject:
    def __init__(self, seed: int, cfg: AbdomenConfig, layout: str):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if cfg.intensity_mode not in ("ct", "gmm"):
            raise ValueError(f"intensity_mode must be 'ct' or 'gmm', got {cfg.intensity_mode!r}")
        self.cfg = cfg
        self.layout = layout
        self.rng = np.random.default_rng(seed)
        # the shuffled poses come from their own stream, so everything else matches the atlas subject
        self.shuffle_rng = np.random.default_rng([seed, 0x5F])
        self.shape = tuple(int(v) for v in cfg.shape)
        self.spacing = np.asarray(cfg.spacing, float)
        self.affine = np.diag([*self.spacing, 1.0])
        self.affine[:3, 3] = -(np.asarray(self.shape) - 1) / 2.0 * self.spacing
        self.tissue = np.zeros(self.shape, np.uint8)
        self.label = np.zeros(self.shape, np.uint8)

    # -- subject-level random draws and coordinate maps ------------------------------------------
    def draw(self) -> None:
        cfg, rng = self.cfg, self.rng
        lo, hi = cfg.scale_range
        self.body_scale = rng.uniform(lo, hi, 3)
        self.fat_ant = rng.uniform(*cfg.fat_mm)
        self.fat_lat = self.fat_ant * rng.uniform(0.55, 0.95)
        self.fat_post = self.fat_ant * rng.uniform(0.35, 0.7)
        self.belly = rng.uniform(0.0, 1.0)
        self.fov_z = cfg.z_center_mm + rng.uniform(-cfg.fov_shift_mm, cfg.fov_shift_mm)
        self.centring = np.array([*rng.normal(0.0, cfg.centring_mm, 2), 0.0])
        self.roll = rotation_xyz(rng.normal(0.0, cfg.roll_deg, 3))
        self.resp = rng.normal(0.0, cfg.respiration_mm)
        self.kidney_drop = rng.uniform(*cfg.kidney_drop_mm)
        self.deform_amp = rng.uniform(*cfg.deformation_mm)
        self.gas_level = rng.uniform(55.0, 85.0)
        # per-organ jitter
        names = list(_ORGAN_CENTRES) + list(_TUBE_ORGANS) + ["duodenum"]
        self.jit = {n: rng.normal(0.0, cfg.organ_jitter_mm, 3) for n in names}
        self.rot = {n: rng.normal(0.0, cfg.organ_rotation_deg, 3) for n in names}
        self.scl = {n: np.exp(rng.normal(0.0, cfg.organ_scale_sigma, 3)) for n in names}
        for n, w in _RESP.items():
            self.jit[n] = self.jit[n] + np.array([0.0, 0.0, w * self.resp])
        self.jit["right kidney"][2] += (18.0 - self.kidney_drop) / 2.0
        self.jit["left kidney"][2] -= (18.0 - self.kidney_drop) / 2.0
        # children follow their parents (gallbladder under the liver, adrenals on the kidneys)
        self.jit["gallbladder"] = 0.6 * self.jit["gallbladder"] + self.jit["liver"]
        self.jit["right adrenal gland"] += 0.6 * self.jit["right kidney"]
        self.jit["left adrenal gland"] += 0.6 * self.jit["left kidney"]
        # tubes: per-point jitter + anchors
        tubes = _atlas_tubes()
        for name, spec in tubes.items():
            pts = spec["points"].copy()
            k = len(pts)
            pts += rng.normal(0.0, cfg.tube_jitter_mm, (k, 3))
            if name in self.jit and name not in ("aorta", "ivc", "esophagus"):
                pts += self.jit[name]
            elif name in ("aorta", "ivc", "esophagus"):
                pts += np.array([*(0.4 * self.jit[name][:2]), 0.0])
            w = np.linspace(0.0, 1.0, k)[:, None]
            if name == "pancreas":
                pts += w * 0.7 * self.jit["spleen"]
            if name == "portal":  # splenic end at the spleen, hilar end at the liver
                pts += (1 - w) * 0.6 * self.jit["spleen"] + w * 0.7 * self.jit["liver"]
            if name == "duodenum":
                pts += (1 - w) * 0.5 * self.jit["stomach"]
            spec["points"] = pts
            spec["rscale"] = float(np.exp(rng.normal(0.0, cfg.organ_scale_sigma * 0.7)))
        self.tubes = tubes
        # intensity draws
        n = len(_TISSUES)
        self.contrast = rng.uniform(*cfg.contrast_range)
        self.hu_jit = rng.normal(0.0, cfg.hu_jitter, n)
        self.texture_amp = rng.uniform(*cfg.texture_hu)
        self.psf = rng.uniform(*cfg.psf_sigma_vox)
        self.noise = rng.uniform(*cfg.noise_hu)
        self.gmm_means = rng.uniform(-1.0, 1.0, n)
        self.gmm_sd = rng.uniform(0.01, 0.08, n)

        # organ poses
        self.poses: dict[str, _Pose] = {}
        for name, c0 in _ORGAN_CENTRES.items():
            self.poses[name] = _Pose(c0, np.asarray(c0) + self.jit[name], rotation_xyz(self.rot[name]), self.scl[name])
        for name in _TUBE_ORGANS:
            c0 = self.tubes[name]["points"].mean(0)
            if name in ("aorta", "ivc", "esophagus"):
                self.poses[name] = _Pose(c0)  # tied to the spine; their points carry the jitter
            else:
                self.poses[name] = _Pose(c0, c0, rotation_xyz(0.5 * self.rot[name]), np.ones(3))
        if self.layout == "shuffled":
            srng = self.shuffle_rng
            for name in list(_ORGAN_CENTRES) + list(_TUBE_ORGANS):
                p = self.poses[name]
                t = np.array([srng.uniform(-75, 75), srng.uniform(-45, 55), self.fov_z + srng.uniform(-70, 60)])
                t[2] = min(t[2], 55.0)
                self.poses[name] = _Pose(p.c0, t, random_rotation(srng), p.s)

        # fields: deformation (3), roughness (1), bowel (2)
        shp, sp = self.shape, tuple(self.spacing)
        self.deform = smooth_field(rng, shp, sp, cfg.deformation_node_mm, 3) * np.float32(self.deform_amp)
        self.rough = smooth_field(rng, shp, sp, 28.0, 1)[0]
        self.bowel = smooth_field(rng, shp, sp, 16.0, 2)
        self.texture = correlated_noise(rng, shp, 1.2)
        self.noise_field = correlated_noise(rng, shp, cfg.noise_corr_vox)
        self.gmm_bias = smooth_field(rng, shp, sp, 120.0, 1)[0]

    def build_coords(self) -> None:
        idx = [
            np.arange(n, dtype=np.float32) * np.float32(s) + np.float32(o)
            for n, s, o in zip(self.shape, self.spacing, self.affine[:3, 3])
        ]
        px, py, pz = np.meshgrid(*idx, indexing="ij")
        qx = px + self.deform[0] - np.float32(self.centring[0])
        qy = py + self.deform[1] - np.float32(self.centring[1])
        qz = pz + self.deform[2]
        R = self.roll.astype(np.float32)
        s = self.body_scale.astype(np.float32)
        self.ux = (R[0, 0] * qx + R[1, 0] * qy + R[2, 0] * qz) / s[0]
        self.uy = (R[0, 1] * qx + R[1, 1] * qy + R[2, 1] * qz) / s[1]
        self.uz = (R[0, 2] * qx + R[1, 2] * qy + R[2, 2] * qz) / s[2] + np.float32(self.fov_z)
        self.world_y = py
        self.world_x = px
        self.margin = float(np.abs(self.deform).max()) + 2.0 * float(self.spacing.max())

    def atlas_to_index_bbox(self, lo, hi):
        """Voxel slices covering an atlas-space box (with a margin for the deformation)."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        off = np.array([0.0, 0.0, self.fov_z])
        world = ((corners - off) * self.body_scale) @ self.roll.T + self.centring
        wlo = world.min(0) - self.margin
        whi = world.max(0) + self.margin
        i0 = np.floor((wlo - self.affine[:3, 3]) / self.spacing).astype(int)
        i1 = np.ceil((whi - self.affine[:3, 3]) / self.spacing).astype(int) + 1
        i0 = np.clip(i0, 0, self.shape)
        i1 = np.clip(i1, 0, self.shape)
        if np.any(i1 <= i0):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(i0, i1))

    def organ_view(self, pose: _Pose, lo, hi):
        """Slices and canonical coordinates for the canonical box [lo, hi] of an organ under ``pose``."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        posed = pose.forward(corners)
        sl = self.atlas_to_index_bbox(posed.min(0), posed.max(0))
        if sl is None:
            return None, None
        v = pose.inverse(self.ux[sl], self.uy[sl], self.uz[sl])
        return sl, v

    def rough_f(self, f, sl, amount=1.0):
        return f * (1.0 + np.float32(self.cfg.roughness * amount) * self.rough[sl])

    def paint(self, sl, mask, tissue, label=0):
        if sl is None:
            return
        t = self.tissue[sl]
        t[mask] = _T[tissue]
        lab = self.label[sl]
        lab[mask] = label

    def paint_tissue(self, sl, mask, tissue):
        if sl is None:
            return
        t = self.tissue[sl]
        t[mask] = _T[tissue]

    # -- body ---------------------------------------------------------------------------------------
    def render_body(self) -> None:
        ux, uy, uz = self.ux, self.uy, self.uz
        sx, sy = self.body_scale[0], self.body_scale[1]
        belly = np.float32(self.belly * 14.0) / (1.0 + np.exp(np.clip((uz + 50.0) / 25.0, -30, 30)))
        rho_c = _se_rho(ux, uy, _CAV_CY, _CAV_A, _CAV_BA + belly, _CAV_BP, _CAV_N)
        rho_m = _se_rho(ux, uy, _CAV_CY, _CAV_A + _WALL, _CAV_BA + belly + _WALL, _BACK, _CAV_N)
        back_flat = np.abs(ux) < 60
        rho_m = np.where(
            back_flat & (uy < _CAV_CY),
            np.minimum(rho_m, _se_rho(ux, uy, _CAV_CY, _CAV_A + _WALL, 1, _BACK, 3.2)),
            rho_m,
        )
        rho_s = _se_rho(
            ux,
            uy,
            _CAV_CY,
            _CAV_A + _WALL + self.fat_lat / sx,
            _CAV_BA + belly + _WALL + self.fat_ant / sy,
            _BACK + self.fat_post / sy,
            _CAV_N,
        )
        rho_s = np.where(
            back_flat & (uy < _CAV_CY),
            np.minimum(
                rho_s, _se_rho(ux, uy, _CAV_CY, _CAV_A + _WALL + self.fat_lat / sx, 1, _BACK + self.fat_post / sy, 3.2)
            ),
            rho_s,
        )
        rough = np.float32(0.015) * self.rough
        full = (slice(None),) * 3
        if self.cfg.table:
            back_world = -(_BACK + self.fat_post / sy - _CAV_CY) * sy + self.centring[1]
            top = np.float32(back_world - 4.0) + np.float32(0.0003) * self.world_x**2
            table = (self.world_y < top) & (self.world_y > top - 7.0) & (np.abs(self.world_x) < 230)
            self.paint(full, table, "table")
        self.paint(full, rho_s * (1 + rough) < 1.0, "fat_sc")
        self.paint(full, rho_m * (1 + rough) < 1.0, "muscle")
        cav = rho_c < 1.0
        self.paint(full, cav, "fat")
        self.rho_c = rho_c
        self.cavity = cav

        # diaphragm dome, higher on the right, peripheral recesses lower (posteriorly most)
        zpk = np.maximum(100.0 - 0.006 * (ux + 55.0) ** 2, 82.0 - 0.006 * (ux - 55.0) ** 2)
        zpk = zpk - 0.004 * (uy - 5.0) ** 2 + self.resp
        hdrop = 8.0 + 70.0 / (1.0 + np.exp(np.clip((uy + 10.0) / 20.0, -30, 30)))
        rr = np.minimum(rho_c, 1.2) ** 2
        dome = zpk - hdrop * rr**4
        self.dome = dome
        self.abd = cav & (uz < dome - 2.0)
        thorax = cav & (uz > dome + 2.0)
        mediastinum = (np.abs(ux) < 16.0) & (uy < 40.0)
        self.paint(full, thorax & ~mediastinum, "lung")
        self.paint(full, cav & (np.abs(uz - dome) <= 2.0), "muscle")
        # heart on the central tendon
        sl, v = self.organ_view(_Pose((15, 50, 112)), (-60, -10, 40), (90, 110, 180))
        if sl is not None:
            f = _ellip(v, (15, 50, 112), (62, 52, 58), 2.0, (0, 0, -30))
            self.paint(sl, (f < 1) & thorax[sl], "heart")
        self.render_ribs()

    def render_ribs(self) -> None:
        sl = self.atlas_to_index_bbox((-150, -140, -80), (150, 140, 260))
        if sl is None:
            return
        ux, uy, uz = self.ux[sl], self.uy[sl], self.uz[sl]
        rho = self.rho_c[sl]
        r_xy = np.sqrt(ux * ux + (uy - _CAV_CY) ** 2)
        depth = (rho - 1.0) * r_xy / np.maximum(rho, 1e-3)  # mm outside the cavity surface
        phi = np.arctan2(np.abs(ux), -(uy - _CAV_CY))  # 0 posterior, pi anterior
        drop = 110.0 * (1.0 - np.cos(phi)) / 2.0
        zeta = uz + drop
        k = np.round((zeta - 29.0) / 26.0)  # rib 12 head at T12 (z = 29)
        dz = zeta - 29.0 - 26.0 * k
        # k = 0: 12th rib, 1: 11th, ... ; anterior end angle per rib (floating ribs are short)
        phi_end = np.interp(k, [0, 1, 2, 3, 4, 5], [1.75, 2.15, 2.6, 2.9, 3.2, 3.2])
        band = (depth > 1.0) & (depth < 7.5) & (np.abs(dz) < 4.8) & (k >= 0) & (phi > 0.45)
        bone = band & (phi < phi_end - 0.35)
        cart = band & (phi >= phi_end - 0.35) & (phi < phi_end) & (k >= 2)
        self.paint(sl, bone, "bone")
        self.paint(sl, bone & ((np.abs(dz) > 3.2) | (depth < 2.5) | (depth > 6.0)), "bone_cortical")
        self.paint(sl, cart, "cartilage")
        # xiphoid and sternum
        ant = (np.abs(ux) < 11.0) & (depth > 1.0) & (depth < 10.0) & (uy > _CAV_CY)
        self.paint(sl, ant & (uz > 75.0) & (uz <= 105.0), "cartilage")
        self.paint(sl, ant & (uz > 105.0), "bone")

    # -- musculoskeletal ----------------------------------------------------------------------------
    def render_spine(self) -> None:
        sl = self.atlas_to_index_bbox((-130, -125, -260), (130, 10, 260))
        if sl is None:
            return
        ux, uy, uz = self.ux[sl], self.uy[sl], self.uz[sl]
        ys = _spine_y(uz)
        v = _vert_coord(uz)
        dv = v - np.round(v)
        hd = np.where(uz <= 16.0, 4.5 / 32.0, 3.5 / 26.0)
        disc = np.abs(dv) > 0.5 - hd
        sacral = np.clip((-150.0 - uz) / 20.0, 0.0, 1.0)
        ax = np.clip(21.0 - 0.02 * uz, 18.0, 26.0) + 24.0 * sacral
        ay = np.clip(16.0 - 0.012 * uz, 14.0, 19.0) + 3.0 * sacral
        rb = np.sqrt((ux / ax) ** 2 + ((uy - ys) / ay) ** 2)
        body = rb < 1.0
        # psoas (grows caudally), painted before the vertebra
        t = np.clip(15.0 - uz, 0.0, None)
        prx = 5.0 + 0.13 * t
        pry = 5.0 + 0.10 * t
        pcx = ax + 0.7 * prx + 2.0
        pcy = ys + 4.0 + 0.06 * t
        psoas = (uz < 15.0) & ((((np.abs(ux) - pcx) / prx) ** 2 + ((uy - pcy) / pry) ** 2) < 1.0)
        self.paint(sl, psoas & (uz > -175.0), "muscle")
        self.paint(sl, body, "bone")
        self.paint(sl, body & (rb > 1.0 - 2.5 / ay), "bone_cortical")
        self.paint(sl, body & disc & (sacral < 0.5), "disc")
        ycan = ys - ay - 8.0
        canal = ((ux / 10.0) ** 2 + ((uy - ycan) / 8.0) ** 2) < 1.0
        arch = (((ux / 16.5) ** 2 + ((uy - ycan) / 14.0) ** 2) < 1.0) & ~canal & (uy < ycan + 4.0)
        pedicle = (np.abs(ux) > 6.0) & (np.abs(ux) < 15.0) & (uy >= ycan) & (uy < ys - ay + 2.0)
        in_vert = np.abs(dv) < 0.38
        spinous = (np.abs(ux) < 3.5) & (uy < ycan - 12.0) & (uy > ycan - 40.0) & (np.abs(dv + 0.12) < 0.3)
        tproc = (
            (np.abs(uy - ycan - 3.0) < 3.5)
            & (np.abs(ux) > 14.0)
            & (np.abs(ux) < np.where(uz < 16.0, 40.0, 28.0))
            & (np.abs(dv) < 0.15)
        )
        self.paint(sl, (arch | pedicle) & in_vert, "bone_cortical")
        self.paint(sl, spinous | tproc, "bone_cortical")
        self.paint(sl, canal, "csf")
        # iliac wings: an extruded polyline below the crest
        z_crest = -110.0
        below = (uz < z_crest) & (uz > -260.0)
        if below.any():
            k = 1.0 - 0.0025 * np.clip(z_crest - uz, 0, None)
            pts = np.array([(40, -70), (70, -64), (93, -42), (103, -12), (101, 16)], float)
            ax_ = np.abs(ux)
            best = np.full(ux.shape, np.inf, np.float32)
            for a, b in zip(pts[:-1], pts[1:]):
                ax0, ay0 = a[0] * k, a[1]
                bx0, by0 = b[0] * k, b[1]
                dx, dy = bx0 - ax0, by0 - ay0
                tt = np.clip(((ax_ - ax0) * dx + (uy - ay0) * dy) / (dx * dx + dy * dy), 0, 1)
                d = np.sqrt((ax_ - ax0 - tt * dx) ** 2 + (uy - ay0 - tt * dy) ** 2)
                best = np.minimum(best, d)
            wing = below & (best < 4.0)
            self.paint(sl, below & (best >= 5.0) & (best < 16.0) & self.cavity[sl] & (ax_ < 100), "muscle")
            self.paint(sl, wing, "bone")
            self.paint(sl, wing & (best > 2.5), "bone_cortical")

    # -- bowel ----------------------------------------------------------------------------------------
    def render_bowel(self) -> None:
        ux, uy, uz = self.ux, self.uy, self.uz
        full = (slice(None),) * 3
        top = -12.0 + 22.0 / (1.0 + np.exp(np.clip(-(ux - 10.0) / 12.0, -30, 30)))  # jejunum higher on the left
        region = self.abd & (uz < top) & (uy > _spine_y(uz) + 22.0)
        b0, b1 = self.bowel[0], self.bowel[1]
        thr = np.float32(np.quantile(b0[::3, ::3, ::3], 1.0 - self.cfg.bowel_fill))
        loops = region & (b0 > thr)
        self.paint(full, loops, "bowel_wall")
        inner = loops & (b0 > thr + 0.25) & (b1 > -0.2)
        self.paint(full, inner, "bowel_content")
        gas = inner & (b1 + np.float32(0.012) * (uy - 20.0) > 1.8)
        self.paint(full, gas, "gas")
        # colon frame
        spec = self.tubes["colon"]
        lo = spec["points"].min(0) - 30
        hi = spec["points"].max(0) + 30
        sl = self.atlas_to_index_bbox(lo, hi)
        if sl is None:
            return
        v = (self.ux[sl], self.uy[sl], self.uz[sl])
        f = self.rough_f(_tube(v, spec["points"], spec["radii"] * spec["rscale"], 4), sl, 1.5)
        colon = (f < 1.0) & self.abd[sl]
        self.paint(sl, colon, "bowel_wall")
        lumen = colon & (f < 0.82)
        self.paint(sl, lumen, "stool")
        self.paint(sl, lumen & ((self.texture[sl] > 0.9) | (self.bowel[1][sl] > 0.8)), "gas")

    # -- organs ---------------------------------------------------------------------------------------
    def render_liver(self) -> None:
        pose = self.poses["liver"]
        sl, v = self.organ_view(pose, (-120, -80, -40), (80, 90, 125))
        if sl is None:
            return
        right = _ellip(v, (-56, 2, 44), (64, 84, 76), 2.5, (0, -12, 0))
        left = _ellip(v, (10, 30, 58), (64, 40, 30), 2.2, (0, 8, -12), taper=0.65)
        caudate = _ellip(v, (-16, -14, 44), (20, 20, 30), 2.0)
        f = np.minimum(np.minimum(right, left), caudate)
        f = np.maximum(f, 1.0 + (v[0] - 68.0) / 12.0)  # cut toward the left
        f = self.rough_f(f, sl)
        mask = (f < 1.0) & self.abd[sl]
        self.paint(sl, mask, "liver", 6)
        for pts, radii in _HEPATIC_VESSELS:
            pts = np.asarray(pts, float)
            vf = _tube(v, pts, np.asarray(radii) * 0.9, 4)
            self.paint_tissue(sl, (vf < 1.0) & mask, "hepatic_vein")

    def render_spleen(self) -> None:
        pose = self.poses["spleen"]
        sl, v = self.organ_view(pose, (30, -100, -20), (130, 20, 105))
        if sl is None:
            return
        f = _ellip(v, _ORGAN_CENTRES["spleen"], (21, 56, 50), 2.2, (0, 0, 135), bend=0.55)
        f = self.rough_f(f, sl)
        self.paint(sl, (f < 1.0) & self.abd[sl], "spleen", 1)

    def render_kidney(self, side: str) -> None:
        name = f"{side} kidney"
        c = np.asarray(_ORGAN_CENTRES[name])
        sgn = -1.0 if side == "right" else 1.0  # patient's right is -x
        pose = self.poses[name]
        sl, v = self.organ_view(pose, c - 65, c + 65)
        if sl is None:
            return
        rot = (10.0, 15.0 * -sgn, 20.0 * -sgn)  # upper pole medial and posterior
        f = self.rough_f(_ellip(v, c, (28, 24, 55), 2.0, rot), sl, 0.6)
        hdir = np.array([-sgn * 0.8, 0.6, 0.0])
        notch = _ellip(v, c + 27.0 * hdir, (12, 12, 19), 2.0)
        sinus = _ellip(v, c + 9.0 * hdir, (9, 8, 27), 2.0, rot)
        mask = (f < 1.0) & (notch >= 1.0) & self.abd[sl]
        self.paint(sl, mask, "kidney", 2 if side == "right" else 3)
        self.paint_tissue(sl, mask & (sinus < 1.0), "renal_sinus")

    def render_gallbladder(self) -> None:
        c = np.asarray(_ORGAN_CENTRES["gallbladder"])
        pose = self.poses["gallbladder"]
        sl, v = self.organ_view(pose, c - 45, c + 45)
        if sl is None:
            return
        f = self.rough_f(_ellip(v, c, (16, 36, 16), 2.0, (-35, 0, 15)), sl, 0.5)
        self.paint(sl, (f < 1.0) & self.abd[sl], "gallbladder", 4)

    def render_adrenal(self, side: str) -> None:
        name = f"{side} adrenal gland"
        c = np.asarray(_ORGAN_CENTRES[name])
        pose = self.poses[name]
        sl, v = self.organ_view(pose, c - 35, c + 35)
        if sl is None:
            return
        if side == "right":
            apex = np.array([-33.0, -32.0, 38.0])
            ends = [np.array([-27.0, -52.0, 30.0]), np.array([-44.0, -50.0, 32.0])]
        else:
            apex = np.array([36.0, -18.0, 16.0])
            ends = [np.array([38.0, -38.0, 8.0]), np.array([50.0, -32.0, 12.0])]
        f = np.full(v[0].shape, np.inf, np.float32)
        for e in ends:
            d = e - apex
            length = float(np.linalg.norm(d[:2]))
            ang = np.degrees(np.arctan2(d[0], -d[1]))  # rotation about z of the limb's long axis (-y)
            f = np.minimum(f, _ellip(v, (apex + e) / 2.0, (4.2, length / 2.0 + 3.0, 18.0), 2.0, (0, 0, -ang)))
        f = self.rough_f(f, sl, 0.5)
        self.paint(sl, (f < 1.0) & self.abd[sl], "adrenal", 12 if side == "right" else 13)

    def tube_organ(self, name: str, clip, tissue: str, label: int, xy_ratio=1.0, per_segment=5):
        spec = self.tubes[name]
        pose = self.poses.get(name, _Pose(spec["points"].mean(0)))
        r = spec["radii"] * spec["rscale"]
        lo = spec["points"].min(0) - r.max() - 2
        hi = spec["points"].max(0) + r.max() + 2
        sl, v = self.organ_view(pose, lo, hi)
        if sl is None:
            return None, None, None
        f = _tube(v, spec["points"], r, per_segment, spec.get("xy_ratio", xy_ratio))
        f = self.rough_f(f, sl, 0.5)
        mask = (f < 1.0) & clip[sl]
        self.paint(sl, mask, tissue, label)
        return sl, v, (f, mask)

    def render_stomach(self) -> None:
        sl, v, res = self.tube_organ("stomach", self.abd, "stomach_wall", 7)
        if sl is None:
            return
        f, mask = res
        lumen = mask & (f < 0.86)
        self.paint_tissue(sl, lumen, "stomach_content")
        pose = self.poses["stomach"]
        # air-fluid level: gas rises anteriorly (+y) in a supine patient, in world terms
        gas_y = pose.t[1] + (self.gas_level - pose.c0[1])
        self.paint_tissue(sl, lumen & (self.uy[sl] > gas_y), "gas")

    def render_duodenum(self) -> None:
        sl, v, res = self.tube_organ("duodenum", self.abd, "bowel_wall", 0)
        if sl is None:
            return
        f, mask = res
        lumen = mask & (f < 0.72)
        self.paint_tissue(sl, lumen, "duodenal_content")
        self.paint_tissue(sl, lumen & (self.bowel[1][sl] > 1.1), "gas")

    def render_vessels(self) -> None:
        body = self.rho_c < 1.0
        for name in ("left_renal_vein", "right_renal_vein", "smv", "iliac_vein_r", "iliac_vein_l"):
            self.tube_organ(name, body, "ivc", 0)
        self.tube_organ("portal", self.abd, "portal_vein", 10)
        for name in ("celiac", "sma", "iliac_art_r", "iliac_art_l"):
            self.tube_organ(name, body, "aorta", 0)
        self.tube_organ("ivc", body, "ivc", 9)
        self.tube_organ("aorta", body, "aorta", 8)
        self.tube_organ("esophagus", body, "esophagus", 5)

    def render(self) -> None:
        self.draw()
        self.build_coords()
        self.render_body()
        self.render_bowel()
        self.render_liver()
        self.render_stomach()
        self.render_spleen()
        self.render_kidney("right")
        self.render_kidney("left")
        self.render_gallbladder()
        self.render_duodenum()
        self.tube_organ("pancreas", self.abd, "pancreas", 11)
        self.render_adrenal("right")
        self.render_adrenal("left")
        self.render_spine()
        for name in ("right_crus", "left_crus"):
            self.tube_organ(name, self.rho_c < 1.0, "muscle", 0)
        self.render_vessels()

    # -- intensities ------------------------------------------------------------------------------
    def intensities(self) -> np.ndarray:
        cfg = self.cfg
        hu = np.array([t[1] for t in _TISSUES], np.float64)
        enh = np.array([t[2] for t in _TISSUES])
        tex = np.array([t[3] for t in _TISSUES], np.float64)
        if cfg.intensity_mode == "gmm":
            means = 200.0 * self.gmm_means
            means[_T["air"]] = -1000.0
            sds = 1000.0 * self.gmm_sd
            img = means.astype(np.float32)[self.tissue] + sds.astype(np.float32)[self.tissue] * self.texture
            img = img * (1.0 + np.float32(0.2) * self.gmm_bias)
        else:
            hu = hu + self.hu_jit * np.where(np.isin(np.arange(len(hu)), [_T["air"], _T["gas"]]), 0.0, 1.0)
            hu = np.where(enh, _ENHANCING_PIVOT + self.contrast * (hu - _ENHANCING_PIVOT), hu)
            img = hu.astype(np.float32)[self.tissue]
            img += (tex * self.texture_amp).astype(np.float32)[self.tissue] * self.texture
            lung = self.tissue == _T["lung"]
            img[lung & (self.texture > 2.2)] += np.float32(500.0)  # lung vessels
        if self.psf > 0:
            img = ndimage.gaussian_filter(img, self.psf, truncate=3.0)
        img += np.float32(self.noise) * self.noise_field
        return np.clip(np.rint(img), -1024, 3071).astype(np.int16)


def generate_subject(
    seed: int, cfg: AbdomenConfig = AbdomenConfig(), layout: str = "atlas"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic abdominal CT.

    Returns ``(image, label, affine)``: int16 HU, uint8 BTCV label ids (see ``LABELS``), both in the atlas's
    LAS orientation (axis 0 toward the patient's left), and the 4x4 affine that maps them to RAS+ world
    millimetres (``output_affine``). The same ``(seed, cfg, layout)`` always gives bit-identical arrays.
    """
    subj = _render(seed, cfg, layout)
    return subj.image, subj.label, output_affine(subj.affine)


def output_affine(grid_affine: np.ndarray) -> np.ndarray:
    """The voxel-to-RAS+ affine of arrays on the atlas grid: the atlas's x (toward the patient's left) is RAS's -x.

    Version 1 wrote ``grid_affine`` itself, which declared the volume RAS+ and so put the liver on the patient's
    left for every NIfTI reader.
    """
    return np.diag([-1.0, 1.0, 1.0, 1.0]) @ grid_affine


def _render(seed: int, cfg: AbdomenConfig = AbdomenConfig(), layout: str = "atlas") -> _Subject:
    """The rendered subject with its internals (tissue map, fields); ``generate_subject`` is the API."""
    subj = _Subject(int(seed), cfg, layout)
    subj.render()
    subj.image = subj.intensities()
    return subj


# ----------------------------------------------------------------------------------------------------
# files, previews, measurements


def write_btcv_layout(
    root: str | os.PathLike,
    cases: list[tuple[str, int]],
    cfg: AbdomenConfig = AbdomenConfig(),
    layout: str = "atlas",
    labelled: bool = True,
    progress: bool = True,
) -> None:
    """Write ``root/imagesTr/imgNNNN.nii.gz`` (int16) and ``root/labelsTr/labelNNNN.nii.gz`` (uint8).

    ``cases`` holds ``(case_id, seed)`` pairs with case ids like ``"img0001"``. Every file is written
    under a temporary name in its final folder and renamed into place.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    img_dir = root / "imagesTr"
    lab_dir = root / "labelsTr"
    img_dir.mkdir(parents=True, exist_ok=True)
    if labelled:
        lab_dir.mkdir(parents=True, exist_ok=True)
    for case_id, seed in tqdm(cases, desc="SynthAbdomen", unit="case", disable=not progress):
        if not case_id.startswith("img"):
            raise ValueError(f"case id must look like 'img0001', got {case_id!r}")
        image, label, affine = generate_subject(seed, cfg, layout)
        atomic_save_nifti(image, affine, img_dir / f"{case_id}.nii.gz")
        if labelled:
            atomic_save_nifti(label, affine, lab_dir / f"label{case_id[3:]}.nii.gz")


def _window(a, lo=-175.0, hi=250.0):
    return np.clip((a.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


_LABEL_RGB = [
    "#000000",
    "#1f77ff",
    "#ffd700",
    "#ff8c00",
    "#2ecc40",
    "#00e5ff",
    "#b10dc9",
    "#ff4136",
    "#ff1493",
    "#0074d9",
    "#7fdbff",
    "#f5deb3",
    "#39ff14",
    "#ff00ff",
]


def _label_colors() -> np.ndarray:
    from matplotlib.colors import to_rgba

    return np.array([to_rgba(c) for c in _LABEL_RGB])


def make_preview(
    path: str | os.PathLike, seeds=(0, 1, 2), cfg: AbdomenConfig = AbdomenConfig(), layout: str = "atlas"
) -> None:
    """Montage PNG: per subject three axial slices, a coronal slice, and axial + coronal label overlays.

    Display is radiological (patient's right on the image left, anterior / superior up), CT window
    [-175, 250] HU.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(seeds)
    cols = _label_colors()
    ncol = 6
    fig, axes = plt.subplots(len(seeds), ncol, figsize=(2.6 * ncol, 2.5 * len(seeds)), squeeze=False)
    for row, seed in enumerate(seeds):
        image, label, affine = generate_subject(seed, cfg, layout)
        sp = np.sqrt((affine[:3, :3] ** 2).sum(0))
        zs = np.nonzero(label.any((0, 1)))[0]
        z_lo, z_hi = (zs.min(), zs.max()) if len(zs) else (0, image.shape[2] - 1)

        def centroid_z(lab, label=label):  # called in this iteration only: bind its label
            m = label == lab
            return int(np.round(np.nonzero(m)[2].mean())) if m.any() else None

        z_up = centroid_z(1) or int(z_lo + 0.8 * (z_hi - z_lo))
        z_mid = centroid_z(11) or int(z_lo + 0.5 * (z_hi - z_lo))
        z_low = centroid_z(2) or int(z_lo + 0.3 * (z_hi - z_lo))
        z_low = max(0, min(image.shape[2] - 1, z_low - int(25 / sp[2])))
        kid = np.nonzero(np.isin(label, (2, 3)))
        y_cor = int(np.round(kid[1].mean() + 8.0 / sp[1])) if len(kid[1]) else image.shape[1] // 2
        ax_ext = [0, image.shape[0] * sp[0], 0, image.shape[1] * sp[1]]
        co_ext = [0, image.shape[0] * sp[0], 0, image.shape[2] * sp[2]]

        def axial(a, k):
            return a[:, :, k].T[::-1]

        def coronal(a, j):
            return a[:, j, :].T[::-1]

        panels = [
            (axial(image, z_up), None, ax_ext, f"seed {seed}  axial z={z_up}"),
            (axial(image, z_mid), None, ax_ext, f"axial z={z_mid}"),
            (axial(image, z_low), None, ax_ext, f"axial z={z_low}"),
            (coronal(image, y_cor), None, co_ext, f"coronal y={y_cor}"),
            (axial(image, z_mid), axial(label, z_mid), ax_ext, "labels (axial)"),
            (coronal(image, y_cor), coronal(label, y_cor), co_ext, "labels (coronal)"),
        ]
        for col, (img, lab, ext, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(_window(img), cmap="gray", vmin=0, vmax=1, extent=ext, interpolation="bilinear")
            if lab is not None:
                rgba = cols[lab].copy()
                rgba[..., 3] = np.where(lab > 0, 0.55, 0.0)
                ax.imshow(rgba, extent=ext, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=cols[i]) for i in range(1, len(LABELS))]
    fig.legend(
        handles,
        [f"{i} {LABELS[i]}" for i in range(1, len(LABELS))],
        loc="lower center",
        ncol=7,
        fontsize=7,
        frameon=False,
    )
    fig.suptitle(f"SynthAbdomen ({layout}), window [-175, 250] HU; image left = patient right", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def inter_subject_dice(
    n_subjects: int, cfg: AbdomenConfig = AbdomenConfig(), layout: str = "atlas", seeds=None
) -> dict[str, float]:
    """Mean pairwise unregistered Dice per organ over ``n_subjects`` subjects (seeds 0..n-1 by default).

    Pairs where both subjects lack an organ are skipped; an organ absent in every pair gives NaN.
    """
    seeds = list(range(n_subjects)) if seeds is None else list(seeds)
    labels = [generate_subject(s, cfg, layout)[1] for s in seeds]
    out: dict[str, float] = {}
    for lab, name in LABELS.items():
        if lab == 0:
            continue
        vals = [dice(a == lab, b == lab) for a, b in combinations(labels, 2)]
        vals = [v for v in vals if not np.isnan(v)]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    return out


def measure(n_time: int = 10, n_dice: int = 6, cfg: AbdomenConfig = AbdomenConfig()) -> dict:
    """Generation time per subject (mean over ``n_time`` seeds, after one warm-up) and inter-subject Dice."""
    import tempfile

    generate_subject(10_000, cfg)
    times, write_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for s in range(n_time):
            t0 = time.perf_counter()
            image, label, affine = generate_subject(1000 + s, cfg)
            t1 = time.perf_counter()
            atomic_save_nifti(image, affine, Path(tmp) / "imagesTr" / "img0001.nii.gz")
            atomic_save_nifti(label, affine, Path(tmp) / "labelsTr" / "label0001.nii.gz")
            times.append(t1 - t0)
            write_times.append(time.perf_counter() - t0)
    res = {
        "seconds_mean": float(np.mean(times)),
        "seconds_min": float(np.min(times)),
        "seconds_max": float(np.max(times)),
        "seconds_with_write_mean": float(np.mean(write_times)),
        "n_time": n_time,
    }
    for layout in LAYOUTS:
        res[f"dice_{layout}"] = inter_subject_dice(n_dice, cfg, layout)
    res["n_dice"] = n_dice
    return res


def _main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", action="store_true", help="time the generator and print inter-subject Dice")
    ap.add_argument("--n-time", type=int, default=10)
    ap.add_argument("--n-dice", type=int, default=6)
    ap.add_argument("--preview", metavar="PNG", help="write a preview montage")
    ap.add_argument("--layout", default="atlas", choices=LAYOUTS)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args(argv)
    cfg = AbdomenConfig()
    if args.preview:
        make_preview(args.preview, [int(s) for s in args.seeds.split(",")], cfg, args.layout)
        print(f"wrote {args.preview}")
    if args.measure:
        print(f"{os.cpu_count()} CPUs visible; shape {cfg.shape}, spacing {cfg.spacing} mm")
        res = measure(args.n_time, args.n_dice, cfg)
        print(
            f"generation: {res['seconds_mean']:.3f} s/subject mean over {res['n_time']} subjects "
            f"(min {res['seconds_min']:.3f}, max {res['seconds_max']:.3f}); "
            f"{res['seconds_with_write_mean']:.3f} s including writing both .nii.gz files"
        )
        print(f"inter-subject Dice over {res['n_dice']} subjects (mean of pairs):")
        print(f"{'organ':<28}{'atlas':>8}{'shuffled':>10}")
        for name in res["dice_atlas"]:
            print(f"{name:<28}{res['dice_atlas'][name]:>8.2f}{res['dice_shuffled'][name]:>10.2f}")
    if not (args.preview or args.measure):
        ap.print_help()


if __name__ == "__main__":
    _main()
