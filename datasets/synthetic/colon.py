"""SynthColon: procedural multi-phase abdominal CT slices around the colon, with colorectal tumours.

The suite LooseLocationSS needs (METHODS.md §6): per patient, two or three contrast phases (non-contrast N, arterial
A, portal-venous P) of the same anatomy, registered up to a small in-plane shift per phase, a stack of consecutive
axial slices, per-slice labels (tumour present) and a loose lesion location. Pure numpy/scipy, deterministic per
seed (DATA.md Part C: the same machinery as the abdomen generator, in 2D per slice with z-coherent parameters).

Anatomy per slice (millimetres; x toward the patient's left, y posterior; image rows run anterior to posterior and
columns from the patient's right to left, the radiological display):

- body: a superelliptic cross-section with subcutaneous fat and an abdominal-wall muscle ring;
- lumbar spine: vertebral body (cortex, cancellous bone, intervertebral discs every ~35 mm), canal, posterior
  elements, paraspinal muscles and psoas muscles that grow caudally; aorta left and IVC right of the midline;
  lower kidney poles in the cranial slices;
- small-bowel loops (enhancing wall, fluid or gas content) and mesenteric vessels in mesenteric fat;
- the colon: ascending (right flank), descending (left flank), transverse (anterior, cranial slices) and sigmoid
  (left anterior, caudal slices) segments whose centres drift smoothly with z. Each has a thin enhancing wall,
  sacculations, haustral folds (semilunar inward projections at periodic z), and lumen content: gas anteriorly,
  mottled faeces with gas bubbles posteriorly (an air-faeces level);
- the tumour (in ``tumour_fraction`` of patients): an asymmetric wall thickening / intraluminal mass over an
  angular sector of one segment, spanning 3-6 consecutive slices, with its own enhancement per phase (peaks in the
  arterial phase, washes out in portal-venous; normal wall enhances progressively).

Intensity model: per-tissue HU tables per phase, a per-patient contrast factor U(0.75, 1.25) scaling every
enhancement, per-tissue jitter, a z-coherent smooth texture, partial-volume blur and correlated noise drawn per
phase. Each non-N phase is shifted in-plane by N(0, ``phase_shift_px``) pixels (the registration residual).

Labels: a slice is positive when the tumour covers at least ``min_tumour_px`` pixels of it; its location is the
tumour's centroid and bounding box in that slice and phase, normalised to [0, 1] by the image size (so any grid
size maps it to a cell: ``floor(g * loc)``).

Cross-phase slice correspondence (``slice_match``, per phase the index of the N slice z in that phase; the release
of LooseLocationSS reads it from per-phase annotation files): the phases are rendered at the same table positions,
so it is the identity here. Files written before it was recorded lack it and read as the identity.

Files (``write_patient``): ``<pid>.npz`` holding ``image`` int16 HU [P, Z, H, W], and ``<pid>.json`` with the
phases, spacing, per-slice labels and locations and the slice correspondence. ``python -m datasets.synthetic.colon
--preview PNG`` writes a montage; ``--time N`` measures seconds per patient.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from datasets.synthetic._common import smooth_field

GENERATOR_VERSION = "synthcolon-1"
PHASES = ("N", "A", "P")

# tissue ids of the per-slice tissue map
(
    AIR,
    FAT,
    MUSCLE,
    CORTEX,
    CANCELLOUS,
    DISC,
    CSF,
    AORTA,
    IVC,
    KIDNEY,
    SB_WALL,
    SB_FLUID,
    COLON_WALL,
    GAS,
    FAECES,
    TUMOUR,
    VESSEL,
) = range(17)

# HU per tissue and phase (N, A, P); enhancement above N is scaled by the patient's contrast factor
HU_TABLE = np.array(
    [
        [-1000, -1000, -1000],  # air
        [-100, -100, -100],  # fat
        [48, 52, 58],  # muscle
        [750, 750, 750],  # cortical bone
        [230, 230, 230],  # cancellous bone
        [85, 85, 85],  # disc
        [12, 12, 12],  # canal
        [42, 290, 170],  # aorta
        [40, 75, 160],  # IVC (unopacified in the arterial phase)
        [33, 185, 165],  # kidney
        [38, 85, 105],  # small-bowel wall
        [12, 12, 12],  # small-bowel fluid
        [36, 62, 98],  # colon wall: progressive enhancement
        [-1000, -1000, -1000],  # luminal gas
        [-20, -20, -20],  # faeces (mottled by the texture below)
        [44, 118, 82],  # tumour: arterial peak, portal wash-out
        [40, 200, 175],  # mesenteric vessels
    ],
    np.float32,
)
TEXTURE_HU = np.array([0, 6, 6, 40, 30, 6, 3, 4, 4, 8, 6, 3, 5, 0, 70, 14, 4], np.float32)


@dataclass(frozen=True)
class ColonConfig:
    size: int = 128  # H = W pixels
    pixel_mm: float = 2.8  # in-plane spacing (FOV ~358 mm)
    slices: int = 24  # consecutive axial slices around the colon
    slice_mm: float = 5.0
    p_three_phases: float = 0.7  # else N + P only (no arterial acquisition)
    tumour_fraction: float = 0.5
    min_tumour_px: int = 6  # a slice is positive from this many tumour pixels
    phase_shift_px: float = 1.0  # std of the in-plane registration residual of A and P against N
    noise_hu: tuple[float, float] = (8.0, 18.0)

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# ----------------------------------------------------------------------------------------------------- anatomy


def _drift(rng: np.random.Generator, n: int, amp_mm: float) -> np.ndarray:
    """A smooth per-slice offset (n, 2) in mm: a random walk low-pass filtered along z."""
    walk = np.cumsum(rng.standard_normal((n + 8, 2)), axis=0)
    walk = ndimage.gaussian_filter1d(walk, 2.5, axis=0)[4 : 4 + n]
    walk -= walk.mean(0)
    scale = np.abs(walk).max() or 1.0
    return walk / scale * amp_mm * rng.uniform(0.4, 1.0)


class _Patient:
    """All random draws of one patient, made up front from ``default_rng(seed)`` in a fixed order."""

    def __init__(self, seed: int, cfg: ColonConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng([seed, 0xC0])
        self.rng = rng
        self.has_tumour = bool(rng.random() < cfg.tumour_fraction)
        self.phases = PHASES if rng.random() < cfg.p_three_phases else ("N", "P")
        Z = cfg.slices
        self.z_mm = np.arange(Z) * cfg.slice_mm
        # body
        self.ax = rng.uniform(145, 178)
        self.ay = rng.uniform(100, 128)
        self.body_exp = rng.uniform(2.1, 2.6)
        self.fat = rng.uniform(8, 32)
        self.muscle = rng.uniform(7, 12)
        self.body_drift = _drift(rng, Z, 3.0)
        # spine and retroperitoneum
        self.vb = (rng.uniform(19, 23), rng.uniform(15, 18))
        self.disc_period = rng.uniform(32, 38)
        self.disc_phase = rng.uniform(0, self.disc_period)
        self.psoas0 = rng.uniform(7, 11)
        self.aorta_r = rng.uniform(8, 11)
        self.kidney_z = rng.uniform(0.15, 0.45) * Z * cfg.slice_mm  # caudal end of the lower poles
        self.kidney_r = rng.uniform(22, 30)
        # colon segments: name -> (centre function inputs)
        self.segments = self._colon(rng)
        # small bowel loops: centre, radius, z range, gas or fluid
        n_loops = int(rng.integers(12, 20))
        self.loops = []
        for _ in range(n_loops):
            c = np.array([rng.uniform(-0.45, 0.45), rng.uniform(-0.55, 0.25)])
            r = rng.uniform(8, 15)
            z0 = rng.uniform(-0.3, 0.7) * Z * cfg.slice_mm
            z1 = z0 + rng.uniform(0.3, 1.0) * Z * cfg.slice_mm
            self.loops.append((c, r, z0, z1, _drift(rng, Z, 10.0), bool(rng.random() < 0.25)))
        self.vessels = [
            (np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.5, 0.2)]), rng.uniform(1.5, 2.6), _drift(rng, Z, 6.0))
            for _ in range(int(rng.integers(6, 12)))
        ]
        # tumour
        self.tumour = self._tumour(rng) if self.has_tumour else None
        # intensities
        self.contrast = rng.uniform(0.75, 1.25)
        self.hu_jitter = rng.normal(0, 6, size=len(HU_TABLE)).astype(np.float32)
        self.noise_hu = rng.uniform(*cfg.noise_hu)
        self.blur = rng.uniform(0.45, 0.8)
        self.shifts = {p: (np.zeros(2) if p == "N" else rng.normal(0, cfg.phase_shift_px, 2)) for p in self.phases}
        self.field_seed = int(rng.integers(2**31))

    def _colon(self, rng: np.random.Generator) -> dict[str, dict]:
        Z = self.cfg.slices
        zmax = (Z - 1) * self.cfg.slice_mm
        segs = {}

        def seg(name, cx, cy, r, sx, sy, z0, z1):
            segs[name] = dict(
                c=np.array([cx, cy]),
                r=r,
                s=(sx, sy),
                z0=z0,
                z1=z1,
                drift=_drift(rng, Z, 7.0),
                sacc=rng.uniform(0.04, 0.09),
                sacc_k=int(rng.integers(3, 5)),
                sacc_phi=rng.uniform(0, 2 * np.pi),
                fold_period=rng.uniform(18, 32),
                fold_phase=rng.uniform(0, 40),
                fold_depth=rng.uniform(0.2, 0.38),
                fold_k=int(rng.integers(2, 4)),
                fold_phi=rng.uniform(0, 2 * np.pi),
                wall=rng.uniform(2.0, 3.2),
                level=rng.uniform(-0.5, 0.6),
                gas=rng.uniform(0.15, 0.9),
            )

        # positions as fractions of the body half-axes (cavity-relative) and radii in mm
        seg("ascending", -rng.uniform(0.62, 0.72), rng.uniform(-0.05, 0.25), rng.uniform(18, 26), 1.0, 1.0, -1e9, 1e9)
        seg("descending", rng.uniform(0.66, 0.76), rng.uniform(0.15, 0.35), rng.uniform(12, 17), 1.0, 1.0, -1e9, 1e9)
        z_tr = rng.uniform(0.25, 0.45) * zmax
        seg(
            "transverse",
            rng.uniform(-0.1, 0.1),
            -rng.uniform(0.55, 0.68),
            rng.uniform(15, 20),
            rng.uniform(2.2, 3.0),
            1.0,
            -1e9,
            z_tr,
        )
        z_sg = rng.uniform(0.55, 0.75) * zmax
        seg(
            "sigmoid",
            rng.uniform(0.15, 0.35),
            -rng.uniform(0.2, 0.45),
            rng.uniform(13, 18),
            rng.uniform(1.0, 1.6),
            1.0,
            z_sg,
            1e9,
        )
        return segs

    def _tumour(self, rng: np.random.Generator) -> dict:
        Z = self.cfg.slices
        names = ["ascending", "descending", "transverse", "sigmoid"]
        name = names[int(rng.choice(4, p=[0.35, 0.3, 0.15, 0.2]))]
        s = self.segments[name]
        span = min(int(rng.integers(3, 7)), Z)
        starts = range(0, Z - span + 1)
        zs = [k for k in starts if s["z0"] <= self.z_mm[k] and self.z_mm[k + span - 1] <= s["z1"]]
        if not zs:  # the segment is too short in this patient: fall back to the ascending colon (every slice)
            name, s = "ascending", self.segments["ascending"]
            zs = list(starts)
        k0 = int(rng.choice(zs))
        return dict(
            segment=name,
            z_c=float(self.z_mm[k0] + (span - 1) * self.cfg.slice_mm / 2),
            half=span * self.cfg.slice_mm / 2,
            theta=rng.uniform(-np.pi, np.pi),
            width=rng.uniform(0.6, 1.2),
            thick=rng.uniform(10, 18),
            outward=rng.uniform(0.15, 0.4),
        )


def _render_slice(pt: _Patient, k: int, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map (uint8) and tumour mask of slice ``k`` (painter's order: later tissues overwrite)."""
    z = pt.z_mm[k]
    t = np.full(xx.shape, AIR, np.uint8)
    dx, dy = pt.body_drift[k]
    bx, by = xx - dx, yy - dy
    e = pt.body_exp

    def inside(ax, ay):
        return (np.abs(bx / ax) ** e + np.abs(by / ay) ** e) < 1.0

    t[inside(pt.ax, pt.ay)] = FAT
    t[inside(pt.ax - pt.fat, pt.ay - pt.fat * 0.8)] = MUSCLE
    cav_x, cav_y = pt.ax - pt.fat - pt.muscle, pt.ay - pt.fat * 0.8 - pt.muscle
    t[inside(cav_x, cav_y)] = FAT
    # spine at the posterior cavity margin
    vy = pt.ay - pt.fat * 0.8 - 72  # vertebral body centre: ~7 cm in front of the back skin
    a, b = pt.vb
    r_vb = np.sqrt((bx / a) ** 2 + ((by - vy) / b) ** 2)
    for sx in (-1, 1):  # paraspinal muscles behind, psoas beside the vertebral body
        t[((bx - sx * 30) / 26) ** 2 + ((by - vy - b - 26) / 20) ** 2 < 1] = MUSCLE
        pr = pt.psoas0 + 0.12 * z
        t[((bx - sx * (a + pr * 0.8)) / pr) ** 2 + ((by - vy + 2) / (pr * 0.85)) ** 2 < 1] = MUSCLE
    is_disc = ((z + pt.disc_phase) % pt.disc_period) < 6.0
    t[r_vb < 1] = DISC if is_disc else CORTEX
    if not is_disc:
        t[r_vb < 0.86] = CANCELLOUS
    canal_y = vy + b + 9
    rc = np.sqrt(bx**2 + (by - canal_y) ** 2)
    t[(rc < 12) & (rc >= 7.5)] = CORTEX
    t[(np.abs(bx) < 4) & (by > canal_y) & (by < canal_y + 30)] = CORTEX
    t[rc < 7.5] = CSF
    # great vessels in front of the spine; kidney lower poles cranially
    t[(bx - 10) ** 2 + (by - vy + b + pt.aorta_r + 3) ** 2 < pt.aorta_r**2] = AORTA
    t[((bx + 24) / 12) ** 2 + ((by - vy + b + 9) / 8) ** 2 < 1] = IVC
    if z < pt.kidney_z:
        kr = pt.kidney_r * np.sqrt(max(0.0, 1 - (z / pt.kidney_z) ** 2) * 0.7 + 0.3)
        for sx in (-1, 1):
            t[((bx - sx * (a + 48)) / (kr * 0.8)) ** 2 + ((by - vy + 4) / kr) ** 2 < 1] = KIDNEY
    cavity = inside(cav_x, cav_y)
    # small bowel and mesenteric vessels
    for c, r, z0, z1, drift, gas in pt.loops:
        if not (z0 <= z <= z1):
            continue
        cx, cy = c[0] * cav_x + drift[k, 0], c[1] * cav_y + drift[k, 1]
        d = np.sqrt((bx - cx) ** 2 + (by - cy) ** 2)
        t[(d < r) & cavity] = SB_WALL
        t[(d < r - 2.2) & cavity] = GAS if gas else SB_FLUID
    for c, r, drift in pt.vessels:
        cx, cy = c[0] * cav_x + drift[k, 0], c[1] * cav_y + drift[k, 1]
        t[((bx - cx) ** 2 + (by - cy) ** 2 < r * r) & cavity] = VESSEL
    # colon
    tumour = np.zeros(xx.shape, bool)
    for name, s in pt.segments.items():
        if not (s["z0"] <= z <= s["z1"]):
            continue
        cx = s["c"][0] * cav_x + s["drift"][k, 0]
        cy = s["c"][1] * cav_y + s["drift"][k, 1]
        ux, uy = (bx - cx) / s["s"][0], (by - cy) / s["s"][1]
        rad = np.sqrt(ux**2 + uy**2)
        theta = np.arctan2(uy, ux)
        R = s["r"] * (1 + s["sacc"] * np.cos(s["sacc_k"] * theta + s["sacc_phi"]))
        fold = max(0.0, np.cos(2 * np.pi * (z + s["fold_phase"]) / s["fold_period"])) ** 6
        inner = (
            R
            - s["wall"]
            - s["r"] * s["fold_depth"] * fold * (0.5 + 0.5 * np.cos(s["fold_k"] * theta + s["fold_phi"])) ** 2
        )
        outer_cut = R
        region = (rad < outer_cut) & cavity
        t[region] = COLON_WALL
        lumen = (rad < inner) & cavity
        level = cy + s["level"] * s["r"] * s["s"][1]
        t[lumen & (by < level)] = GAS
        t[lumen & (by >= level)] = FAECES
        tu = pt.tumour
        if tu is not None and tu["segment"] == name and abs(z - tu["z_c"]) < tu["half"]:
            dz = (z - tu["z_c"]) / tu["half"]
            dth = np.angle(np.exp(1j * (theta - tu["theta"]))) / tu["width"]
            prof = np.sqrt(max(0.0, 1 - dz * dz)) * np.clip(np.cos(np.clip(dth, -1, 1) * np.pi / 2), 0, None)
            mass = (rad < R + tu["outward"] * tu["thick"] * prof) & (rad > R - s["wall"] - tu["thick"] * prof)
            mass &= (prof > 0.05) & cavity
            t[mass] = TUMOUR
            tumour = mass
    return t, tumour


def _slice_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-std noise correlated in-plane only (each slice is its own acquisition plane)."""
    out = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0, 0.7, 0.7), truncate=3.0)
    return out / np.float32(out.std() or 1.0)


def generate_patient(seed: int, cfg: ColonConfig = ColonConfig()) -> dict:
    """One patient: ``image`` int16 HU [P, Z, H, W] and its annotation dict (see the module docstring)."""
    pt = _Patient(seed, cfg)
    Z, n = cfg.slices, cfg.size
    coords = (np.arange(n, dtype=np.float32) - (n - 1) / 2) * cfg.pixel_mm
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    tissue = np.empty((Z, n, n), np.uint8)
    tumour = np.zeros((Z, n, n), bool)
    for k in range(Z):
        tissue[k], tumour[k] = _render_slice(pt, k, xx, yy)
    frng = np.random.default_rng([pt.field_seed, 1])
    texture = smooth_field(frng, (Z, n, n), (cfg.slice_mm, cfg.pixel_mm, cfg.pixel_mm), 9.0)[0]
    mottle = smooth_field(frng, (Z, n, n), (cfg.slice_mm, cfg.pixel_mm, cfg.pixel_mm), 4.0)[0]
    bubbles = (tissue == FAECES) & (mottle > 1.3)
    tissue[bubbles] = GAS
    tex = TEXTURE_HU[tissue] * np.where(tissue == FAECES, mottle, texture)
    images, labels, locs, boxes = [], [0] * Z, {}, {}
    for p in pt.phases:
        j = PHASES.index(p)
        base = HU_TABLE[:, 0] + pt.contrast * (HU_TABLE[:, j] - HU_TABLE[:, 0]) + pt.hu_jitter
        base[[AIR, GAS]] = -1000.0
        hu = base[tissue] + tex
        hu = ndimage.gaussian_filter(hu, (0, pt.blur, pt.blur))
        hu += pt.noise_hu * _slice_noise(np.random.default_rng([pt.field_seed, 2, j]), hu.shape)
        shift = pt.shifts[p]
        mask = tumour
        if np.any(shift):
            hu = ndimage.shift(hu, (0, shift[0], shift[1]), order=1, mode="nearest")
            mask = ndimage.shift(tumour.astype(np.float32), (0, shift[0], shift[1]), order=1) > 0.5
        images.append(np.clip(np.round(hu), -1024, 3071).astype(np.int16))
        locs[p], boxes[p] = [], []
        for k in range(Z):
            m = mask[k]
            if m.sum() >= cfg.min_tumour_px:
                r, c = np.nonzero(m)
                locs[p].append([round((r.mean() + 0.5) / n, 5), round((c.mean() + 0.5) / n, 5)])
                boxes[p].append(
                    [
                        round(r.min() / n, 5),
                        round(c.min() / n, 5),
                        round((r.max() + 1) / n, 5),
                        round((c.max() + 1) / n, 5),
                    ]
                )
            else:
                locs[p].append(None)
                boxes[p].append(None)
    # the slice label is defined on the main (non-contrast) phase; the others see the same lesion, shifted
    labels = [int(v is not None) for v in locs["N"]]
    ann = {
        "seed": int(seed),
        "generator": GENERATOR_VERSION,
        "phases": list(pt.phases),
        "spacing": [cfg.pixel_mm, cfg.pixel_mm],
        "slice_mm": cfg.slice_mm,
        "shape": [len(pt.phases), Z, n, n],
        "tumour": bool(any(labels)),
        "segment": pt.tumour["segment"] if pt.tumour else None,
        "labels": labels,
        "loc": locs,
        "box": boxes,
        # per phase, the index of N's slice z in that phase: every phase is rendered at the same table positions
        # (registered up to the in-plane shift), so the identity; a real scan's phases need not agree
        "slice_match": {p: list(range(Z)) for p in pt.phases},
    }
    return {"image": np.stack(images), "annotation": ann}


def has_tumour(seed: int, cfg: ColonConfig = ColonConfig()) -> bool:
    """Whether patient ``seed`` is drawn with a tumour (the first draw; no rendering)."""
    return bool(np.random.default_rng([seed, 0xC0]).random() < cfg.tumour_fraction)


# ------------------------------------------------------------------------------------------------------ files


def write_patient(root: str | os.PathLike, pid: str, seed: int, cfg: ColonConfig = ColonConfig()) -> None:
    """Write ``root/<pid>.npz`` and ``root/<pid>.json``, each under a temporary name and renamed into place."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = generate_patient(seed, cfg)
    out["annotation"]["patient"] = pid
    for path, write in (
        (root / f"{pid}.npz", lambda f: np.savez_compressed(f, image=out["image"])),
        (root / f"{pid}.json", lambda f: f.write(json.dumps(out["annotation"]).encode())),
    ):
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        try:
            with open(tmp, "wb") as f:
                write(f)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def _window(a, lo=-140.0, hi=260.0):
    return np.clip((a.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def make_preview(path: str | os.PathLike, seeds=(0, 3, 5), cfg: ColonConfig = ColonConfig()) -> None:
    """Montage PNG: per patient a tumour slice (or the middle slice) in every phase, with the tumour's box outlined
    in a separate panel, CT window WW 400 / WL 60 (LooseLocationSS's window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(seeds), 4, figsize=(10, 2.6 * len(seeds)), squeeze=False)
    for row, seed in enumerate(seeds):
        out = generate_patient(seed, cfg)
        ann, img = out["annotation"], out["image"]
        pos = [k for k, v in enumerate(ann["labels"]) if v]
        k = pos[len(pos) // 2] if pos else cfg.slices // 2
        for col in range(4):
            ax = axes[row, col]
            ax.axis("off")
            if col < 3:
                if PHASES[col] not in ann["phases"]:
                    ax.set_title(f"seed {seed}: no {PHASES[col]} phase", fontsize=8)
                    continue
                j = ann["phases"].index(PHASES[col])
                ax.imshow(_window(img[j, k]), cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"seed {seed} slice {k} phase {PHASES[col]}", fontsize=8)
            else:
                ax.imshow(_window(img[0, k]), cmap="gray", vmin=0, vmax=1)
                box = ann["box"]["N"][k]
                n = cfg.size
                if box:
                    ax.add_patch(
                        Rectangle(
                            (box[1] * n - 0.5, box[0] * n - 0.5),
                            (box[3] - box[1]) * n,
                            (box[2] - box[0]) * n,
                            fill=False,
                            color="r",
                            lw=1,
                        )
                    )
                ax.set_title(f"N + tumour box ({ann['segment'] or 'no tumour'})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def measure(n: int = 10, cfg: ColonConfig = ColonConfig()) -> float:
    """Seconds per patient (generation only, no file writing), over ``n`` seeds."""
    t0 = time.perf_counter()
    for s in range(n):
        generate_patient(s, cfg)
    return (time.perf_counter() - t0) / n


def _main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preview", metavar="PNG", help="write a preview montage")
    ap.add_argument("--seeds", default="0,3,5")
    ap.add_argument("--time", type=int, metavar="N", help="measure seconds per patient over N seeds")
    args = ap.parse_args(argv)
    if args.preview:
        make_preview(args.preview, [int(s) for s in args.seeds.split(",")])
    if args.time:
        print(
            f"{measure(args.time):.3f} s per patient ({ColonConfig().slices} slices, up to 3 phases, "
            f"{ColonConfig().size}x{ColonConfig().size})"
        )


if __name__ == "__main__":
    _main()
