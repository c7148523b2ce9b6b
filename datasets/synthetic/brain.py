"""SynthBrainSym: a brain-symmetry suite built on the symmetric MNI152 2009a template (DATA.md Part C.3).

The template (T1 + GM/WM probability maps, voxel-exactly left/right symmetric) is read at run time
from the installed ``nilearn`` package, without importing it; nothing of it is stored in this
repository. It is resampled once to a working grid and cached in memory. Per subject:

* intensities in template space: the template T1 with a per-subject gamma (GM/WM contrast) and
  per-tissue (GM / WM / CSF) gain jitter;
* with probability ``lesion_prob``, a tumour-like lesion in ONE hemisphere, inside the brain: a
  distorted ellipsoid (anisotropic, rotated, surface roughness from a smooth noise field) with a
  textured interior (solid hypointense, or necrotic core with a bright ring), a hypointense oedema
  rim, and optional mild mass effect;
* an asymmetric geometry: a smooth random displacement field (2-4 mm RMS per component, independent
  nodes on each side), a Yakovlevian-like torque (left frontal / right occipital petalia: the mirror of
  the usual pattern, see ``_render``) and a small
  rigid head pose; without it the healthy template is exactly symmetric and |x - flip(x)| would solve
  the task;
* acquisition: multiplicative bias field, Gaussian PSF blur, Rician noise, skull-stripped (zero)
  background, a global gain, int16 output.

Arrays are RAS+ like the template: axis 0 increases toward the patient's RIGHT (MNI x > 0), so a lesion
at a larger x index than the midline is in the right hemisphere (class 1); class 2 is left, class 0 no
lesion. (Version 1 of the suite named class 1 "left" and class 2 "right": the data are unchanged, only
the names were mirrored.)

``python -m datasets.synthetic.brain --measure`` times the generator and prints the class fractions;
``--preview PATH`` writes a montage.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from datasets.synthetic._common import rotation_xyz, smooth_field
from datasets.synthetic.cache import atomic_save_nifti

GENERATOR_VERSION = "synthbrainsym-1"

LABELS: dict[int, str] = {0: "background", 1: "lesion"}
CLASSES: dict[int, str] = {0: "none", 1: "right", 2: "left"}  # 1: MNI x > 0 (RAS+), 2: x < 0

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_WM_T1 = 222.0  # median template T1 value where P(WM) > 0.9: the intensity unit (WM = 1.0)


@dataclass(frozen=True)
class BrainConfig:
    """Working grid and per-subject variation knobs.

    The grid is RAS+ in MNI millimetres. Axis 0 is centred on the midline (x = 0 lies between the
    two central voxels for an even ``shape[0]``), so ``image[::-1]`` is the exact mirror image about
    the template's symmetry plane. Voxel centres should fall on whole template millimetres (the
    defaults do), so the downsampled template is itself exactly symmetric.
    """

    shape: tuple[int, int, int] = (96, 112, 96)
    spacing_mm: float = 2.0  # isotropic; FOV 192 x 224 x 192 mm
    center_mm: tuple[float, float] = (-18.0, 20.0)  # MNI y, z at the grid centre (x is always 0)
    lesion_prob: float = 2.0 / 3.0  # P(lesion); the side is left / right with equal odds
    # geometry (all asymmetric)
    warp_mm: tuple[float, float] = (2.0, 4.0)  # RMS of each displacement component, U(a, b)
    warp_node_mm: float = 32.0  # control-node spacing of the displacement field
    torque_mm: tuple[float, float] = (0.0, 3.0)  # Yakovlevian torque: hemispheres shifted +-v/2 in y
    rotation_deg: float = 1.5  # rigid head pose, N(0, v) per axis
    translation_mm: float = 1.0  # N(0, v) per axis
    # intensities (WM = 1 before the gain)
    gamma: tuple[float, float] = (0.85, 1.2)  # T1 contrast exponent, U(a, b)
    tissue_jitter: float = 0.05  # per-tissue relative gain, N(0, v)
    bias: tuple[float, float] = (0.02, 0.08)  # bias-field log-amplitude (std), U(a, b)
    bias_node_mm: float = 64.0
    blur_vox: tuple[float, float] = (0.2, 0.6)  # Gaussian PSF sigma, U(a, b)
    noise: tuple[float, float] = (0.01, 0.04)  # Rician noise sigma (fraction of WM), U(a, b)
    gain: tuple[float, float] = (700.0, 1300.0)  # WM intensity of the stored int16 image, U(a, b)
    # lesion
    lesion_radius_mm: tuple[float, float] = (7.0, 22.0)  # mean semi-axis, U(a, b)
    lesion_roughness: float = 0.18  # surface roughness (fraction of the implicit function)
    lesion_min_abs_x_mm: float = 14.0  # lesion centre at least this far from the midline
    mass_effect: tuple[float, float] = (0.0, 0.25)  # fraction of the lesion pushed outward, U(a, b)
    ring_prob: float = 0.4  # P(necrotic core + bright ring); otherwise solid

    @property
    def origin_mm(self) -> np.ndarray:
        """MNI coordinates of voxel (0, 0, 0)."""
        n = np.asarray(self.shape, float)
        centre = np.array([0.0, self.center_mm[0], self.center_mm[1]])
        return centre - (n - 1) / 2 * self.spacing_mm

    @property
    def affine(self) -> np.ndarray:
        a = np.diag([self.spacing_mm] * 3 + [1.0])
        a[:3, 3] = self.origin_mm
        return a


# ----------------------------------------------------------------------------------------------------
# template


def template_dir() -> Path:
    """``<nilearn>/datasets/data``, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the brain suite reads the MNI152 2009a symmetric template from the installed 'nilearn' package, "
            f"which is not installed: pip install --no-deps nilearn (needs {TEMPLATE_FILES['t1']})"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def template_paths() -> dict[str, Path]:
    d = template_dir()
    out = {k: d / name for k, name in TEMPLATE_FILES.items()}
    for _k, p in out.items():
        if not p.is_file():
            raise FileNotFoundError(
                f"MNI152 2009a symmetric template file missing: {p} "
                f"(expected in the installed nilearn package; reinstall nilearn)"
            )
    return out


@dataclass
class _Template:
    t1: np.ndarray  # float32, WM = 1
    gm: np.ndarray  # probabilities, float32
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # soft intracranial mask (0..1)


@lru_cache(maxsize=4)
def _template(shape: tuple[int, int, int], spacing_mm: float, center_mm: tuple[float, float]) -> _Template:
    """The template resampled to the working grid (Gaussian anti-aliasing, then trilinear sampling)."""
    import nibabel as nib

    cfg = BrainConfig(shape=shape, spacing_mm=spacing_mm, center_mm=center_mm)
    paths = template_paths()
    imgs = {k: nib.load(str(p)) for k, p in paths.items()}
    aff = imgs["t1"].affine
    if not np.allclose(aff[:3, :3], np.eye(3)):
        raise ValueError(f"{paths['t1']}: expected a 1 mm RAS+ grid, got affine {aff.tolist()}")
    # working-grid voxel centres -> template voxel indices
    axes = [cfg.origin_mm[i] + cfg.spacing_mm * np.arange(shape[i]) - aff[i, 3] for i in range(3)]
    sigma = 0.5 * (spacing_mm - 1.0) if spacing_mm > 1 else 0.0  # anti-aliasing (template voxels)
    out = {}
    for k, img in imgs.items():
        a = np.asarray(img.dataobj, dtype=np.float32)
        a = a / (_WM_T1 if k == "t1" else 255.0)
        if sigma > 0:
            a = ndimage.gaussian_filter(a, sigma, truncate=3.0)
        # separable trilinear sampling (grid points are on whole millimetres for the defaults: exact picks)
        for ax in range(3):
            pos = axes[ax]
            lo = np.floor(pos).astype(np.intp)
            fr = (pos - lo).astype(np.float32)
            n = a.shape[ax]
            valid = (lo >= 0) & (lo <= n - 1)
            lo_c = np.clip(lo, 0, n - 1)
            hi_c = np.clip(lo + 1, 0, n - 1)
            sh = [1, 1, 1]
            sh[ax] = len(pos)
            w_hi = np.where(lo + 1 <= n - 1, fr, 0.0).astype(np.float32).reshape(sh)
            w_lo = np.where(valid, 1.0 - fr, 0.0).astype(np.float32).reshape(sh)
            a = np.take(a, lo_c, axis=ax) * w_lo + np.take(a, hi_c, axis=ax) * w_hi
        out[k] = np.ascontiguousarray(a, dtype=np.float32)
    gm, wm = out["gm"], out["wm"]
    brain = np.where(out["t1"] > 0.02, 1.0, np.clip(gm + wm, 0, 1)).astype(np.float32)
    csf = np.clip(brain - gm - wm, 0.0, 1.0).astype(np.float32)
    t1 = np.where(brain > 0, out["t1"], 0.0).astype(np.float32)
    return _Template(t1=t1, gm=gm, wm=wm, csf=csf, brain=brain)


def load_template(cfg: BrainConfig = BrainConfig()) -> _Template:
    return _template(tuple(cfg.shape), float(cfg.spacing_mm), tuple(cfg.center_mm))


# ----------------------------------------------------------------------------------------------------
# subjects


def class_of(seed: int, cfg: BrainConfig = BrainConfig()) -> int:
    """The class label of ``seed`` (0 none, 1 right, 2 left) without rendering the subject."""
    rng = np.random.default_rng([int(seed), 1])
    has = rng.random() < cfg.lesion_prob
    right = rng.random() < 0.5
    return 0 if not has else (1 if right else 2)


def health_of(seed: int, cfg: BrainConfig = BrainConfig()) -> int:
    """SA-Swin's per-volume health label of ``seed``: 1 healthy (no lesion), 0 patient (a lesion on either side)."""
    return int(class_of(seed, cfg) == 0)


def _grid_mm(cfg: BrainConfig):
    o = cfg.origin_mm
    s = cfg.spacing_mm
    return [(o[i] + s * np.arange(cfg.shape[i])).astype(np.float32) for i in range(3)]


def _place_lesion(rng: np.random.Generator, tpl: _Template, cfg: BrainConfig, side: int):
    """Centre (mm), semi-axes (mm) and rotation of a lesion inside the brain on ``side`` (+1: x > 0, the
    patient's right in RAS+; -1: x < 0, the left)."""
    gx, gy, gz = _grid_mm(cfg)
    tissue = (tpl.gm + tpl.wm) > 0.9
    xs = gx[:, None, None] * side
    cand = np.argwhere(tissue & (xs >= cfg.lesion_min_abs_x_mm))
    radius = rng.uniform(*cfg.lesion_radius_mm)
    for attempt in range(60):
        if attempt and attempt % 20 == 0:
            radius *= 0.8
        axes = radius * np.exp(rng.normal(0.0, 0.2, 3))
        rot = rotation_xyz(rng.uniform(-180, 180, 3))
        i, j, k = cand[rng.integers(len(cand))]
        c = np.array([gx[i], gy[j], gz[k]], float) + rng.uniform(-1, 1, 3) * cfg.spacing_mm / 2
        # fraction of the ellipsoid inside the brain tissue and on its side of the midline
        pts = rng.standard_normal((200, 3))
        pts /= np.linalg.norm(pts, axis=1, keepdims=True)
        pts *= rng.random((200, 1)) ** (1 / 3)
        p = c + (pts * axes) @ rot.T
        idx = np.round((p - cfg.origin_mm) / cfg.spacing_mm).astype(int)
        ok = np.all((idx >= 0) & (idx < np.asarray(cfg.shape)), axis=1)
        inside = np.zeros(len(p), bool)
        inside[ok] = tpl.brain[idx[ok, 0], idx[ok, 1], idx[ok, 2]] > 0.5
        inside &= p[:, 0] * side > 2.0
        if inside.mean() >= 0.95:
            return c, axes, rot
    return c, axes, rot


def _render_lesion(rng: np.random.Generator, tpl: _Template, cfg: BrainConfig, side: int, base: np.ndarray):
    """Paint the lesion into ``base`` (template space, in place) and return (soft mask, bbox, centre, radius)."""
    c, axes, rot = _place_lesion(rng, tpl, cfg, side)
    s = cfg.spacing_mm
    edema = rng.uniform(1.1, 1.4)  # oedema rim: outer / tumour radius
    ext = axes.max() * edema * (1 + cfg.lesion_roughness) + 2 * s
    lo = np.maximum(np.floor((c - ext - cfg.origin_mm) / s).astype(int), 0)
    hi = np.minimum(np.ceil((c + ext - cfg.origin_mm) / s).astype(int) + 1, np.asarray(cfg.shape))
    bb = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    gx, gy, gz = _grid_mm(cfg)
    x = gx[bb[0]][:, None, None] - c[0]
    y = gy[bb[1]][None, :, None] - c[1]
    z = gz[bb[2]][None, None, :] - c[2]
    # local frame
    u = [rot[0, q] * x + rot[1, q] * y + rot[2, q] * z for q in range(3)]
    r = np.sqrt((u[0] / axes[0]) ** 2 + (u[1] / axes[1]) ** 2 + (u[2] / axes[2]) ** 2).astype(np.float32)
    shape = r.shape
    rough = smooth_field(rng, shape, (s, s, s), max(6.0, axes.mean() * 0.6))[0]
    rough /= max(float(np.abs(rough).max()), 1e-6)
    f = r * (1.0 + cfg.lesion_roughness * rough)  # < 1: tumour
    fe = f / edema  # < 1: tumour + oedema (the labelled lesion)
    inside = (tpl.brain[bb] > 0.5) & ((gx[bb[0]][:, None, None] * side) > 1.0)
    soft = lambda v: np.clip((1.0 - v) * axes.mean() / s + 0.5, 0.0, 1.0)  # noqa: E731  (~1 voxel ramp)
    w_tum = soft(f) * inside
    w_les = soft(fe) * inside
    tex = smooth_field(rng, shape, (s, s, s), 4.0)[0]
    tex /= max(float(tex.std()), 1e-6)
    local = base[bb]
    # oedema: a mildly hypointense version of the tissue
    oed = local * rng.uniform(0.72, 0.88)
    out = local * (1 - w_les) + oed * w_les
    if rng.random() < cfg.ring_prob:
        rim_frac = rng.uniform(0.65, 0.8)
        core = rng.uniform(0.25, 0.45) * (1 + 0.06 * tex)
        rim = rng.uniform(0.95, 1.25) * (1 + 0.05 * tex)
        t = np.clip((f - rim_frac) / (1 - rim_frac) * 3.0, 0, 1)  # 0 in the core, 1 in the rim
        val = core * (1 - t) + rim * t
    else:
        val = rng.uniform(0.45, 0.75) * (1 + rng.uniform(0.05, 0.12) * tex)
    out = out * (1 - w_tum) + val * w_tum
    base[bb] = out.astype(np.float32)
    les = np.zeros(cfg.shape, np.float32)
    les[bb] = w_les
    return les, bb, c, float(axes.mean() * edema)


def generate_subject(seed: int, cfg: BrainConfig = BrainConfig(), label: int | None = None) -> dict:
    """One synthetic T1 brain.

    Returns ``dict(image=int16 [X,Y,Z], lesion=uint8 0/1, label=int class (0 none, 1 right, 2 left),
    affine=4x4 float64)``. ``label`` overrides the class drawn from the seed: the anatomy, warp and
    acquisition stay the same (they come from separate random streams), only the lesion changes. The
    same ``(seed, cfg, label)`` always gives bit-identical arrays.
    """
    out = _render(seed, cfg, label)
    return {k: out[k] for k in ("image", "lesion", "label", "affine")}


def _render(seed: int, cfg: BrainConfig = BrainConfig(), label: int | None = None) -> dict:
    seed = int(seed)
    cls = class_of(seed, cfg) if label is None else int(label)
    if cls not in CLASSES:
        raise ValueError(f"label must be one of {sorted(CLASSES)}, got {label!r}")
    tpl = load_template(cfg)
    rng = np.random.default_rng([seed, 2])  # anatomy and acquisition
    rng_les = np.random.default_rng([seed, 3])  # lesion
    s = cfg.spacing_mm
    shape = tuple(cfg.shape)

    # --- intensities in template space
    gamma = rng.uniform(*cfg.gamma)
    jit = rng.normal(0.0, cfg.tissue_jitter, 3)
    base = np.power(tpl.t1, np.float32(gamma)) * (1.0 + jit[0] * tpl.gm + jit[1] * tpl.wm + jit[2] * tpl.csf)
    base = base.astype(np.float32)

    # --- geometry draws (drawn whether or not there is a lesion, so label overrides keep the anatomy)
    warp_amp = rng.uniform(*cfg.warp_mm)
    disp = smooth_field(rng, shape, (s, s, s), cfg.warp_node_mm, channels=3)
    disp *= np.float32(warp_amp) / np.maximum(disp.std(axis=(1, 2, 3), keepdims=True), 1e-6)
    torque = rng.uniform(*cfg.torque_mm)
    rot = rotation_xyz(rng.normal(0.0, cfg.rotation_deg, 3))
    trans = rng.normal(0.0, cfg.translation_mm, 3)
    bias_amp = rng.uniform(*cfg.bias)
    bias = smooth_field(rng, shape, (s, s, s), cfg.bias_node_mm)[0]
    bias = np.exp(bias * np.float32(bias_amp / max(float(bias.std()), 1e-6)))
    blur = rng.uniform(*cfg.blur_vox)
    noise = rng.uniform(*cfg.noise)
    gain = rng.uniform(*cfg.gain)
    mass = rng.uniform(*cfg.mass_effect)

    # --- lesion in template space
    lesion_t = None
    centre = None
    if cls:
        side = 1 if cls == 1 else -1
        lesion_t, _bb, centre, radius = _render_lesion(rng_les, tpl, cfg, side, base)

    # --- backward map: output voxel (mm) -> template point (mm)
    gx, gy, gz = _grid_mm(cfg)
    X, Y, Z = np.meshgrid(gx, gy, gz, indexing="ij", copy=False)
    px, py, pz = X - trans[0], Y - trans[1], Z - trans[2]
    rt = rot.T.astype(np.float32)
    tx = rt[0, 0] * px + rt[0, 1] * py + rt[0, 2] * pz + disp[0]
    ty = rt[1, 0] * px + rt[1, 1] * py + rt[1, 2] * pz + disp[1]
    tz = rt[2, 0] * px + rt[2, 1] * py + rt[2, 2] * pz + disp[2]
    # torque: the left hemisphere (x < 0 in RAS+) is shifted anteriorly, the right posteriorly. That is the
    # mirror of the usual right-frontal petalia (version 1 took x < 0 for the right); it is kept so that the
    # suite's data stay as they are: the side task needs an asymmetry here, not its population direction
    ty += np.float32(torque / 2) * np.tanh(X / np.float32(15.0))
    if centre is not None and mass > 0:
        dx, dy, dz = tx - centre[0], ty - centre[1], tz - centre[2]
        k = np.float32(mass) * np.exp(-(dx * dx + dy * dy + dz * dz) / np.float32((1.6 * radius) ** 2))
        tx -= k * dx
        ty -= k * dy
        tz -= k * dz
    o = cfg.origin_mm.astype(np.float32)
    coords = np.stack([(tx - o[0]) / s, (ty - o[1]) / s, (tz - o[2]) / s])
    del tx, ty, tz, px, py, pz, X, Y, Z
    warped = ndimage.map_coordinates(base, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    brain = ndimage.map_coordinates(tpl.brain, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    lesion = np.zeros(shape, np.uint8)
    if lesion_t is not None:
        nz = np.argwhere(lesion_t > 0)
        lo, hi = nz.min(0) - 1, nz.max(0) + 1
        sel = np.all((coords >= lo[:, None, None, None]) & (coords <= hi[:, None, None, None]), axis=0)
        vals = ndimage.map_coordinates(lesion_t, coords[:, sel], order=1, mode="constant", cval=0.0, prefilter=False)
        lesion[sel] = (vals >= 0.5).astype(np.uint8)
        if not lesion.any() and len(vals):  # a tiny lesion thinned out by the warp: keep its strongest voxel
            lesion[tuple(np.argwhere(sel)[int(np.argmax(vals))])] = 1

    # --- acquisition
    img = warped * bias
    if blur > 0:
        img = ndimage.gaussian_filter(img, blur, truncate=3.0)
    n1 = rng.standard_normal(shape, dtype=np.float32) * np.float32(noise)
    n2 = rng.standard_normal(shape, dtype=np.float32) * np.float32(noise)
    img = np.sqrt((img + n1) ** 2 + n2**2)
    mask = brain > 0.5
    img = np.where(mask, img, 0.0) * np.float32(gain)
    image = np.clip(np.round(img), 0, 32767).astype(np.int16)
    lesion &= mask.astype(np.uint8)
    return {
        "image": image,
        "lesion": lesion,
        "label": cls,
        "affine": cfg.affine.copy(),
        "brain": mask,
        "coords": coords,
        "lesion_centre_mm": centre,
    }


# ----------------------------------------------------------------------------------------------------
# files, previews, measurements


def write_layout(
    root: str | os.PathLike, cases: list[tuple[str, int]], progress: bool = True, cfg: BrainConfig = BrainConfig()
) -> dict[str, int]:
    """Write ``root/imagesTr/<id>.nii.gz`` (int16 T1) and ``root/labelsTr/<id>.nii.gz`` (uint8 lesion mask).

    ``cases`` holds ``(case_id, seed)`` pairs. Each file is written under a temporary name and renamed
    into place (``datasets.synthetic.cache.atomic_save_nifti``). Nothing else is written. Returns
    ``{case_id: class label}`` (0 none, 1 right, 2 left).
    """
    from tqdm.auto import tqdm

    root = Path(root)
    out: dict[str, int] = {}
    for case_id, seed in tqdm(cases, desc="SynthBrainSym", unit="case", disable=not progress):
        if not case_id or "/" in case_id or case_id.startswith("."):
            raise ValueError(f"bad case id {case_id!r}")
        subj = generate_subject(seed, cfg)
        atomic_save_nifti(subj["image"], subj["affine"], root / "imagesTr" / f"{case_id}.nii.gz")
        atomic_save_nifti(subj["lesion"], subj["affine"], root / "labelsTr" / f"{case_id}.nii.gz")
        out[case_id] = subj["label"]
    return out


def asymmetry(image: np.ndarray) -> np.ndarray:
    """|x - flip_x(x)| as float32 (flip about the volume's x centre, i.e. the template midline)."""
    a = image.astype(np.float32)
    return np.abs(a - a[::-1])


def make_preview(path: str | os.PathLike, seeds=(0, 1, 2, 3), cfg: BrainConfig = BrainConfig()) -> None:
    """Montage PNG: per subject an axial and a coronal slice through the lesion (or the centre), with the
    lesion outlined, and the axial |x - flip(x)| map. Radiological display (patient's right on the
    image left), anterior / superior up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(seeds)
    fig, axes = plt.subplots(len(seeds), 3, figsize=(3 * 2.9, 2.9 * len(seeds)), squeeze=False)
    s = cfg.spacing_mm
    for row, seed in enumerate(seeds):
        subj = generate_subject(seed, cfg)
        img, les = subj["image"].astype(np.float32), subj["lesion"]
        if les.any():
            ci = np.round(np.argwhere(les).mean(0)).astype(int)
        else:
            ci = np.array([cfg.shape[0] // 2, int(cfg.shape[1] * 0.55), int(cfg.shape[2] * 0.6)])
        vmax = float(np.percentile(img[img > 0], 99.5)) if (img > 0).any() else 1.0
        ext_ax = [0, cfg.shape[0] * s, 0, cfg.shape[1] * s]
        ext_co = [0, cfg.shape[0] * s, 0, cfg.shape[2] * s]
        asym = asymmetry(img)

        def show(a):  # an (x, y) or (x, z) slice, x descending: RAS+ x > 0 (the patient's right) on the image left
            return a.T[::-1, ::-1]

        panels = [
            (show(img[:, :, ci[2]]), show(les[:, :, ci[2]]), ext_ax, f"axial z={ci[2]}", "gray", vmax),
            (show(img[:, ci[1], :]), show(les[:, ci[1], :]), ext_co, f"coronal y={ci[1]}", "gray", vmax),
            (show(asym[:, :, ci[2]]), None, ext_ax, "|x - flip(x)| axial", "magma", 0.5 * vmax),
        ]
        for col, (a, m, ext, title, cmap, vm) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(a, cmap=cmap, vmin=0, vmax=vm, extent=ext, interpolation="bilinear")
            if m is not None and m.any():
                ax.contour(m[::-1].astype(float), levels=[0.5], colors=["#ff3030"], linewidths=0.9, extent=ext)
            if col == 0:
                title = f"seed {seed} ({CLASSES[subj['label']]})  " + title
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
    fig.suptitle("SynthBrainSym (T1); red: lesion outline; image left = patient right", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, facecolor="white")
    plt.close(fig)


def measure(n_time: int = 10, n_classes: int = 3000, cfg: BrainConfig = BrainConfig()) -> dict:
    """Seconds per subject (mean over ``n_time`` seeds after a warm-up) and the class fractions."""
    import tempfile

    t0 = time.perf_counter()
    load_template(cfg)
    t_tpl = time.perf_counter() - t0
    generate_subject(10_000, cfg)
    times, write_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(n_time):
            t0 = time.perf_counter()
            subj = generate_subject(1000 + k, cfg)
            t1 = time.perf_counter()
            atomic_save_nifti(subj["image"], subj["affine"], Path(tmp) / "imagesTr" / "c.nii.gz")
            atomic_save_nifti(subj["lesion"], subj["affine"], Path(tmp) / "labelsTr" / "c.nii.gz")
            times.append(t1 - t0)
            write_times.append(time.perf_counter() - t0)
    classes = np.bincount([class_of(s, cfg) for s in range(n_classes)], minlength=3) / n_classes
    return {
        "template_s": t_tpl,
        "seconds_mean": float(np.mean(times)),
        "seconds_min": float(np.min(times)),
        "seconds_max": float(np.max(times)),
        "seconds_with_write_mean": float(np.mean(write_times)),
        "n_time": n_time,
        "class_fractions": {CLASSES[i]: float(classes[i]) for i in range(3)},
        "n_classes": n_classes,
    }


def _main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", action="store_true", help="time the generator and print class fractions")
    ap.add_argument("--n-time", type=int, default=10)
    ap.add_argument("--n-classes", type=int, default=3000)
    ap.add_argument("--preview", metavar="PNG", help="write a preview montage")
    ap.add_argument("--seeds", default="0,1,2,3")
    args = ap.parse_args(argv)
    cfg = BrainConfig()
    if args.preview:
        make_preview(args.preview, [int(s) for s in args.seeds.split(",")], cfg)
        print(f"wrote {args.preview}")
    if args.measure:
        print(
            f"{os.cpu_count()} CPUs visible; shape {cfg.shape}, spacing {cfg.spacing_mm} mm; "
            f"template {template_paths()['t1']}"
        )
        res = measure(args.n_time, args.n_classes, cfg)
        print(f"template load + resample: {res['template_s']:.2f} s (once per process)")
        print(
            f"generation: {res['seconds_mean']:.3f} s/subject mean over {res['n_time']} subjects "
            f"(min {res['seconds_min']:.3f}, max {res['seconds_max']:.3f}); "
            f"{res['seconds_with_write_mean']:.3f} s including writing both .nii.gz files"
        )
        print(
            f"class fractions over seeds 0..{res['n_classes'] - 1}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in res["class_fractions"].items())
            + f" (lesion_prob {cfg.lesion_prob:.3f})"
        )
    if not (args.preview or args.measure):
        ap.print_help()


if __name__ == "__main__":
    _main()
