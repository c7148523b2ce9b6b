"""Wiring of LooseLocationSS (``lls_two_stage``, methods/lls.py): each stage's training step, run as the protocol
builds it (its loader and step function, captured from ``_fit``), against the test's own recomputation.

A fake two-patient colon set whose every slice is recognisable (a background value unique to patient, phase and
slice index; a 4x4 lesion at a position unique to the slice and phase; a marker bar common to all slices) and whose
per-phase slice correspondence is not the identity (A's slice of N's z is z + 1, P's is z - 1), so a neighbour read
from the wrong phase, index or patient, or a cell read from the wrong slice, lands on a different value.

Swaps this module rules out, each verified by injecting it into a scratch copy (the test turns red):

- neighbour plan order: the two other phases swapped (P first, A last)
- neighbour plan order: N z-1 and N z+1 swapped
- the other phases' neighbours taken at the main slice's own index instead of the matched one
- a non-main slice labelled by its own index instead of its matched main-phase slice
- the lesion cell with row and column swapped
- the lesion cell from the un-augmented centroid (the transform not applied to the target)
- the lesion cell from the first neighbour's (the other phase's) lesion instead of the main slice's
- the box and centroid not moved by the warp
- the flip applied to rows instead of columns
- the neighbours not warped with the main slice under ``neighbour_augment=shared``
- the neighbours not rotated under ``neighbour_augment=release``
- w_loop scaling L_cls and w_cls scaling L_loop
- w_con scaling L_patch only (L_tm unweighted)
- L_tm with the main slice's map detached (no gradient into the current slice's side)
- L_tm's loose mask taken around a neighbour's argmax instead of the main slice's
- the loopback re-classifying the unmasked slice
- the loopback pushed to "tumour" instead of "normal"
- L_patch supervising the last positives instead of the first
- stage 1 fed the main phase only
- stage 1 not augmented (its loader given ``augment=none``)
- the patch head in stage 1's optimizer, or missing from stage 2's
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from bench.backbones import Backbone
from bench.data import Preprocess
from bench.protocols.base import TransferContext
from bench.suites import Cell, Task
from methods import lls
from methods.base import StepInfo

S = 32  # image side; TinyConv has stride 8, so a 4 x 4 grid of 8-px cells
GRID = (4, 4)
Z = 6
PH = {"N": 0, "A": 1, "P": 2}
PID = {"p1": 0, "p2": 1}
PHASES = {"p1": ["N", "A", "P"], "p2": ["N", "P"]}  # p2 has no arterial acquisition
# per phase, the index of N's slice z in that phase; p2's P is registered slice by slice
MATCH = {"p1": {"A": [1, 2, 3, 4, 5, None], "P": [None, 0, 1, 2, 3, 4]}, "p2": {"P": list(range(Z))}}
# N slice z -> the lesion's top-left pixel in N, away from the borders (a warp with reflection padding would
# mirror a lesion near one); the other phases see it a cell's width to the left
LESION = {"p1": {2: (8, 16), 3: (16, 16), 4: (12, 16)}, "p2": {1: (8, 16), 2: (16, 16)}}
COL_SHIFT = {"p1": {"N": 0, "A": -8, "P": -8}, "p2": {"N": 0, "P": -8}}


def bg(pid: str, ph: str, z: int) -> float:
    """The background intensity (after the [0, 1] window) of slice z of a phase: unique per (pid, ph, z)."""
    return 0.05 + 0.1 * PH[ph] + 0.015 * z + 0.004 * PID[pid]


def decode(v: float) -> tuple[str, str, int]:
    for pid in PID:
        for ph in PHASES[pid]:
            for z in range(Z):
                if abs(bg(pid, ph, z) - v) < 1e-4:
                    return pid, ph, z
    raise AssertionError(f"no slice has background {v}")


def matched(pid: str, ph: str, z: int) -> int | None:
    return z if ph == "N" else MATCH[pid][ph][z]


def lesion_at(pid: str, ph: str, zp: int) -> tuple[int, int] | None:
    """Top-left pixel of the lesion on slice zp of phase ph (the lesion of the N slice matched to it)."""
    for z, (r, c) in LESION[pid].items():
        if matched(pid, ph, z) == zp:
            return r, c + COL_SHIFT[pid][ph]
    return None


def label(pid: str, z: int) -> int:
    return int(z in LESION[pid])


class FakeColon:
    """The adapter surface ``lls.SliceSet`` reads: ``annotation`` and ``volume``."""

    registry_name = "fakecolon"

    def annotation(self, pid: str) -> dict:
        locs, boxes = {}, {}
        for ph in PHASES[pid]:
            locs[ph], boxes[ph] = [], []
            for zp in range(Z):
                at = lesion_at(pid, ph, zp)
                locs[ph].append(None if at is None else [(at[0] + 2) / S, (at[1] + 2) / S])
                boxes[ph].append(None if at is None else [at[0] / S, at[1] / S, (at[0] + 4) / S, (at[1] + 4) / S])
        return {
            "phases": PHASES[pid],
            "labels": [label(pid, z) for z in range(Z)],
            "loc": locs,
            "box": boxes,
            "spacing": [1.0, 1.0],
            "slice_match": {ph: list(MATCH[pid][ph]) for ph in MATCH[pid]},
        }

    def volume(self, pid: str) -> np.ndarray:
        vol = np.zeros((len(PHASES[pid]), Z, S, S), np.float32)
        for i, ph in enumerate(PHASES[pid]):
            for zp in range(Z):
                v = np.full((S, S), bg(pid, ph, zp), np.float32)
                at = lesion_at(pid, ph, zp)
                if at is not None:
                    v[at[0] : at[0] + 4, at[1] : at[1] + 4] = 1.0
                vol[i, zp] = v * 400.0 - 140.0  # HU in the window [-140, 260]
        return vol


class TinyConv(Backbone):
    spatial_dims = 2
    in_channels = 1
    feature_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1)
        )

    def encode(self, x, patch_hook=None):
        return [self.net(x)]


def _ctx(tmp_path: Path, batch_size: int) -> TransferContext:
    task = Task(name="crc", dataset="fakecolon", kind="classification", protocols=("lls_two_stage",), metric="auroc")
    return TransferContext(
        export_path=tmp_path / "export.pt",
        dataset=FakeColon(),
        cell=Cell(task, "lls_two_stage", 1.0, 0),
        run_dir=tmp_path / "run",
        device=torch.device("cpu"),
        preprocess=Preprocess(-140.0, 260.0, size=(S, S)),
        roi=(S, S),
        steps=2,
        batch_size=batch_size,
        progress=False,
    )


ALL = {(pid, z) for pid in PID for z in range(Z)}


def _capture(monkeypatch, tmp_path, stage: int, keep=ALL, batch_size: int = 12, **options):
    """Run the protocol's stage 1 or 2 set-up with ``_fit`` captured: (model, SliceSet, fit arguments)."""
    torch.manual_seed(0)
    proto = lls.LLSTwoStage(lls.LLSTwoStage.make_config({"annotation_ratio": 0.5, **options}))
    ctx = _ctx(tmp_path, batch_size)
    train = lls.SliceSet(ctx, sorted(PID), proto.cfg.phase_order, proto.cfg.main_phase)
    model = lls.LLSNet(TinyConv(), 8, hidden=8)
    heads = [{"params": list(model.backbone.parameters())}, {"params": list(model.head.parameters())}]
    seen = {}

    def fake_fit(self, ctx, model, step_fn, groups, loader, steps, stage, eval_fn):
        seen.update(step_fn=step_fn, groups=groups, loader=loader, stage=stage)

    monkeypatch.setattr(lls.LLSTwoStage, "_fit", fake_fit)
    if stage == 1:
        proto._stage1(ctx, model, train, keep, heads, 1, None)
    else:
        proto._stage2(ctx, model, train, keep, heads, 1, None, GRID, (S, S))
    return model, train, seen


def _ids(params) -> set[int]:
    return {id(p) for p in params}


# ------------------------------------------------------------------------------------------- data routing


def test_stage2_neighbours_are_the_matched_phases_and_adjacent_slices_in_order(tmp_path, monkeypatch):
    _, _, seen = _capture(monkeypatch, tmp_path, 2, augment="none")
    assert seen["stage"] == "stage2"
    batch = next(iter(seen["loader"]))
    assert batch["x"].shape == (12, 1, S, S) and batch["nb"].shape == (12, 4, 1, S, S)
    mains = [decode(v) for v in batch["x"][:, 0, 0, 0].tolist()]
    assert sorted((p, z) for p, _, z in mains) == sorted(ALL) and {ph for _, ph, _ in mains} == {"N"}
    for b, (pid, _, z) in enumerate(mains):
        # §6.1: [A at the matched z, N z-1, N z+1, P at the matched z]
        want = [
            ("A", matched(pid, "A", z) if "A" in PHASES[pid] else None),
            ("N", z - 1 if z > 0 else None),
            ("N", z + 1 if z < Z - 1 else None),
            ("P", matched(pid, "P", z)),
        ]
        for j, (ph, zz) in enumerate(want):
            assert bool(batch["nb_valid"][b, j]) == (zz is not None), (pid, z, j)
            if zz is None:
                assert torch.all(batch["nb"][b, j] == 0)
            else:
                assert decode(batch["nb"][b, j, 0, 0, 0].item()) == (pid, ph, zz), (pid, z, j)
                assert torch.allclose(batch["nb"][b, j, 0], _image(pid, ph, zz), atol=1e-5)
        assert batch["y"][b].item() == label(pid, z)
        at = LESION[pid].get(z)
        # the main (N) slice's lesion centroid cell, (row, col); the other phases' lesions sit a cell apart
        assert batch["cell"][b].tolist() == ([-1, -1] if at is None else [(at[0] + 2) // 8, (at[1] + 2) // 8])


def _image(pid: str, ph: str, zp: int) -> torch.Tensor:
    i = PHASES[pid].index(ph)
    return torch.from_numpy((FakeColon().volume(pid)[i, zp] + 140.0) / 400.0)


def test_release_corner_cell_reads_the_main_box_with_x_as_the_row(tmp_path, monkeypatch):
    _, _, seen = _capture(monkeypatch, tmp_path, 2, augment="none", supervised_cell="release_corner")
    batch = next(iter(seen["loader"]))
    for b, (pid, _, z) in enumerate(decode(v) for v in batch["x"][:, 0, 0, 0].tolist()):
        at = LESION[pid].get(z)
        # the release's patch_labels[floor(7 * box[0])][floor(7 * box[1])] with box = (x_min, y_min, ...)
        assert batch["cell"][b].tolist() == ([-1, -1] if at is None else [at[1] // 8, at[0] // 8])


def test_stage1_feeds_every_phase_at_the_kept_positions_with_the_main_slice_label(tmp_path, monkeypatch):
    keep = {("p1", 0), ("p1", 3), ("p1", 5), ("p2", 2)}
    model, train, seen = _capture(monkeypatch, tmp_path, 1, keep=keep, batch_size=64, augment="none")
    assert seen["stage"] == "stage1"
    batch = next(iter(seen["loader"]))
    got = sorted(decode(v) for v in batch["x"][:, 0, 0, 0].tolist())
    want = sorted(
        (pid, ph, matched(pid, ph, z))
        for pid, z in keep
        for ph in PHASES[pid]
        if matched(pid, ph, z) is not None  # p1's P has no slice for N's z = 0, A none for z = 5
    )
    assert got == want and len(want) == 9
    by_item = {decode(v): int(y) for v, y in zip(batch["x"][:, 0, 0, 0].tolist(), batch["y"].tolist())}
    for pid, ph, zp in want:  # labelled by the matched N slice: A's slice 4 is N's 3 (a lesion slice)
        z = next(z for z in range(Z) if matched(pid, ph, z) == zp)
        assert by_item[(pid, ph, zp)] == label(pid, z)
    assert set(batch) == {"x", "y"}


def test_stage1_slices_get_the_configured_augmentation(tmp_path, monkeypatch):
    raw = torch.stack([_image(pid, ph, zp) for pid in PID for ph in PHASES[pid] for zp in range(Z)])
    for augment, untouched in (("none", True), ("release", False)):
        _, _, seen = _capture(monkeypatch, tmp_path, 1, batch_size=64, augment=augment)
        x = next(iter(seen["loader"]))["x"][:, 0]
        same = [bool(((raw - xi).abs().flatten(1).max(1).values < 1e-5).any()) for xi in x]
        assert all(same) if untouched else sum(same) < len(same) / 2, augment


def test_each_stage_optimises_exactly_its_parts(tmp_path, monkeypatch):
    model, _, s1 = _capture(monkeypatch, tmp_path, 1, augment="none")
    g1 = set().union(*(_ids(g["params"]) for g in s1["groups"]))
    assert g1 == _ids(model.backbone.parameters()) | _ids(model.head.parameters())
    model, _, s2 = _capture(monkeypatch, tmp_path, 2, augment="none")
    g2 = set().union(*(_ids(g["params"]) for g in s2["groups"]))
    assert g2 == _ids(model.parameters())


# ---------------------------------------------------------------------------------------------- stage 1


def test_stage1_step_is_image_ce_and_reaches_backbone_and_image_head_only(tmp_path, monkeypatch):
    model, _, seen = _capture(monkeypatch, tmp_path, 1, batch_size=64)
    batch = next(iter(seen["loader"]))
    out = seen["step_fn"](batch, StepInfo(0, 1))
    logits = model.head(model.backbone.encode(batch["x"])[-1].flatten(2).mean(-1))
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, batch["y"]).item(), abs=1e-6)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    assert all(p.grad is None for p in model.patch_head.parameters())


# ---------------------------------------------------------------------------------------------- stage 2


def _expected_terms(model: lls.LLSNet, batch: dict, ratio: float) -> dict[str, float]:
    """Stage 2's terms by the test's own loops over samples, cells and neighbours (model in eval mode, so each
    forward is per-sample and the grouping of the calls cannot matter)."""
    x, y, cells = batch["x"], batch["y"], batch["cell"]
    with torch.no_grad():
        logits = model.head(model.backbone.encode(x)[-1].flatten(2).mean(-1))
        p = model.patch_head(model.backbone.encode(x)[-1]).softmax(1)  # [B, 2, 4, 4]
        l_cls = F.cross_entropy(logits, y).item()
        neg = [b for b in range(len(y)) if y[b] == 0]
        pos = [b for b in range(len(y)) if y[b] == 1]
        n_sup = math.floor(ratio * len(pos))
        terms = []
        if neg:
            terms.append(np.mean([-math.log(p[b, 0, i, j]) for b in neg for i in range(4) for j in range(4)]))
        sup = [b for b in pos[:n_sup] if cells[b, 0] >= 0]
        if sup:
            ce = [
                -math.log(p[b, int((i, j) == tuple(cells[b].tolist())), i, j])
                for b in sup
                for i in range(4)
                for j in range(4)
            ]
            terms.append(np.mean(ce))
        if pos[n_sup:]:
            terms.append(np.mean([(p[b, 0] * p[b, 1]).mean().item() for b in pos[n_sup:]]))
        l_patch = float(sum(terms))
        js, loop = [], []
        for b in pos:
            flat = int(p[b, 1].flatten().argmax())
            ci, cj = flat // 4, flat % 4
            mask = torch.ones(4, 4)
            mask[max(0, ci - 1) : ci + 2, max(0, cj - 1) : cj + 2] = 0
            for k in range(4):
                if not batch["nb_valid"][b, k]:
                    continue
                q = model.patch_head(model.backbone.encode(batch["nb"][b, k][None])[-1]).softmax(1)[0]
                a, c = mask * q, mask * p[b]
                m = (a + c) / 2
                kl = lambda u, v: (u * (torch.log(u + 1e-8) - torch.log(v + 1e-8))).sum(0)  # noqa: E731
                js.append((0.5 * kl(a, m) + 0.5 * kl(c, m)).mean().item())
            masked = x[b].clone()
            masked[:, ci * 8 : ci * 8 + 8, cj * 8 : cj * 8 + 8] = 0.0
            lo = model.head(model.backbone.encode(masked[None])[-1].flatten(2).mean(-1))
            loop.append(F.cross_entropy(lo, torch.zeros(1, dtype=torch.long)).item())
            unmasked = F.cross_entropy(logits[b : b + 1], torch.zeros(1, dtype=torch.long)).item()
            assert abs(loop[-1] - unmasked) > 1e-3  # the test can tell the masked slice from the slice
    return {"l_cls": l_cls, "l_patch": l_patch, "l_tm": float(np.mean(js)), "l_loop": float(np.mean(loop))}


@pytest.fixture
def stage2(tmp_path, monkeypatch):
    model, _, seen = _capture(monkeypatch, tmp_path, 2)  # the defaults: release augmentation, shared neighbours
    batch = next(iter(seen["loader"]))
    assert 2 <= int(batch["y"].sum()) and (batch["cell"][:, 0] >= 0).sum() >= 2 and batch["nb_valid"].any()
    # the patch head's BatchNorm statistics from this data, so that its maps differ between slices (at init they
    # are nearly constant and L_tm would be ~0); then eval mode: per-sample forwards, any grouping gives the same
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        model.patch_logits(torch.cat([batch["x"], batch["nb"].flatten(0, 1)]))
        model.head.weight.mul_(50.0)  # logits far from 0, so that masking one cell moves L_loop measurably
    model.eval()
    return model, batch, seen["step_fn"]


def test_stage2_terms_equal_the_independent_recomputation(stage2):
    model, batch, step = stage2
    out = step(batch, StepInfo(0, 1))
    want = _expected_terms(model, batch, 0.5)
    for k, v in want.items():
        assert out.logs[k].item() == pytest.approx(v, rel=1e-4, abs=1e-6), k
    total = 0.5 * want["l_cls"] + 1.0 * (want["l_patch"] + want["l_tm"]) + 0.5 * want["l_loop"]
    assert out.loss.item() == pytest.approx(total, rel=1e-4)
    assert min(want.values()) > 1e-4  # every term is live on this batch


@pytest.mark.parametrize("weight", ["w_cls", "w_con", "w_loop"])
def test_each_loss_weight_scales_exactly_its_terms(stage2, weight):
    model, batch, _ = stage2
    cfg = lls.LLSTwoStage.make_config({"annotation_ratio": 0.5})
    assert (cfg.w_cls, cfg.w_con, cfg.w_loop) == (0.5, 1.0, 0.5)  # §6.4
    base = lls._stage2_loss(model, batch, cfg, GRID, (S, S))
    cfg2 = lls.LLSTwoStage.make_config({"annotation_ratio": 0.5, weight: getattr(cfg, weight) + 1.0})
    moved = lls._stage2_loss(model, batch, cfg2, GRID, (S, S))
    logs = base.logs
    term = {"w_cls": logs["l_cls"], "w_con": logs["l_patch"] + logs["l_tm"], "w_loop": logs["l_loop"]}[weight]
    assert (moved.loss - base.loss).item() == pytest.approx(term.item(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(
    ("only", "reached", "untouched"),
    [
        ("w_cls", ("backbone", "head"), ("patch_head",)),
        ("w_con", ("backbone", "patch_head"), ("head",)),
        ("w_loop", ("backbone", "head"), ("patch_head",)),  # the argmax cell is not differentiable
    ],
)
def test_each_term_reaches_exactly_its_parts(stage2, only, reached, untouched):
    model, batch, _ = stage2
    weights = {"w_cls": 0.0, "w_con": 0.0, "w_loop": 0.0, only: 1.0}
    cfg = lls.LLSTwoStage.make_config({"annotation_ratio": 0.5, **weights})
    lls._stage2_loss(model, batch, cfg, GRID, (S, S)).loss.backward()
    for part in reached:
        assert sum(p.grad.abs().sum() for p in getattr(model, part).parameters() if p.grad is not None) > 0, part
    for part in untouched:
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in getattr(model, part).parameters()), part


def test_location_consistency_gradient_flows_into_both_sides(stage2, monkeypatch):
    model, batch, step = stage2
    seen = {}
    real = lls.location_consistency

    def spy(p_main, p_nb, valid, radius=1, eps=1e-8):
        seen.update(p_main=p_main, p_nb=p_nb)
        for t in (p_main, p_nb):
            if t.requires_grad:
                t.retain_grad()
        return real(p_main, p_nb, valid, radius, eps)

    monkeypatch.setattr(lls, "location_consistency", spy)
    step(batch, StepInfo(0, 1)).loss.backward()
    for side in ("p_main", "p_nb"):
        t = seen[side]
        assert t.requires_grad and t.grad is not None and t.grad.abs().sum() > 0, side
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------- augmentation


def _rect(r0=10, c0=13, r1=16, c1=22) -> tuple[torch.Tensor, tuple, tuple]:
    x = torch.zeros(1, 1, S, S)
    x[0, 0, r0:r1, c0:c1] = 1.0
    return x, (r0 / S, c0 / S, r1 / S, c1 / S), ((r0 + r1) / 2 / S, (c0 + c1) / 2 / S)


def test_flip_alone_mirrors_image_box_and_centroid_across_the_columns():
    x, box, loc = _rect()
    aug = lls.ReleaseAugment(p_flip=1.0, p_ssr=0.0, p_noise=0.0, p_distort=0.0)
    out, _, boxes, locs = lls.augment_batch(
        x, torch.Generator().manual_seed(0), "release", boxes=[box], locs=[loc], aug=aug
    )
    assert torch.allclose(out, torch.flip(x, [-1]), atol=1e-6)
    assert boxes[0] == pytest.approx((box[0], 1 - box[3], box[2], 1 - box[1]))
    assert locs[0][0] == pytest.approx(loc[0], abs=0.5 / S) and locs[0][1] == pytest.approx(1 - loc[1], abs=0.5 / S)


@pytest.mark.parametrize(
    "aug",
    [
        lls.ReleaseAugment(p_flip=0.0, p_ssr=1.0, p_noise=0.0, p_distort=0.0),
        lls.ReleaseAugment(p_flip=0.0, p_ssr=0.0, p_noise=0.0, p_distort=1.0),
        lls.ReleaseAugment(p_noise=0.0),  # the release's probabilities, noise aside
    ],
    ids=["shift-scale-rotate", "grid-or-elastic", "release-mix"],
)
def test_the_box_and_centroid_move_with_the_lesion(aug):
    """A bright rectangle, augmented: its pixels (one component, so no mirrored copy from the border) lie in the
    returned box, which is at most 2 px wider, and the returned centroid is within 1.5 px of theirs."""
    x, box, loc = _rect()
    checked = 0
    g = torch.Generator().manual_seed(1)
    for _ in range(24):
        out, _, boxes, locs = lls.augment_batch(x, g, "release", boxes=[box], locs=[loc], aug=aug)
        bright = (out[0, 0] > 0.5).numpy()
        if ndimage.label(bright)[1] != 1:
            continue
        checked += 1
        r, c = np.nonzero(bright)
        got = np.array(boxes[0]) * S
        assert got[0] <= r.min() and got[1] <= c.min() and got[2] >= r.max() + 1 and got[3] >= c.max() + 1
        assert np.abs(got - [r.min(), c.min(), r.max() + 1, c.max() + 1]).max() <= 2.0
        assert np.abs(np.array(locs[0]) * S - [r.mean() + 0.5, c.mean() + 0.5]).max() <= 1.5
    assert checked >= 16


def test_noise_is_additive_bounded_and_clipped():
    x = torch.full((8, 1, S, S), 0.5)
    aug = lls.ReleaseAugment(p_flip=0.0, p_ssr=0.0, p_noise=1.0, p_distort=0.0)
    out = lls.augment_batch(x, torch.Generator().manual_seed(0), "release", aug=aug)[0]
    sd = (out - x).flatten(1).std(1)
    assert torch.all(sd > 0) and torch.all(sd < 0.1 * 1.05)  # variance ~ U(0, 0.01)
    bright = lls.augment_batch(torch.ones(2, 1, S, S), torch.Generator().manual_seed(0), "release", aug=aug)[0]
    assert bright.max() <= 1.0 and bright.min() < 1.0


def _blob_centre(img: torch.Tensor) -> np.ndarray | None:
    pooled = F.avg_pool2d(img[None, None], 3, 1, 1)[0, 0].numpy()
    lab, k = ndimage.label(pooled > 0.85)
    if k != 1:
        return None
    r, c = np.nonzero(lab)
    return np.array([r.mean() + 0.5, c.mean() + 0.5])


def test_stage2_target_cell_follows_the_applied_warp_and_neighbours_keep_their_identity(tmp_path, monkeypatch):
    """The supervised cell holds the lesion of the augmented main slice (found in the image by the test); each
    neighbour, warped, is still the matched slice (a warp keeps a constant background)."""
    _, _, seen = _capture(monkeypatch, tmp_path, 2)  # augment=release, neighbour_augment=shared
    batches = iter(seen["loader"])
    checked = moved = 0
    for _ in range(4):
        batch = next(batches)
        for b in range(len(batch["y"])):
            centre = _blob_centre(batch["x"][b, 0])
            if batch["y"][b] == 1 and batch["cell"][b, 0] >= 0 and centre is not None:
                i, j = batch["cell"][b].tolist()
                assert i * 8 - 1.5 <= centre[0] <= i * 8 + 9.5 and j * 8 - 1.5 <= centre[1] <= j * 8 + 9.5
                checked += 1
            for k in range(4):
                if batch["nb_valid"][b, k]:
                    pid, ph, zp = decode(_background(batch["nb"][b, k, 0]))
                    assert ph == ("N", "N", "N", "P")[k] or (k == 0 and ph == "A")
        # the warp moved some lesions to another cell than the un-augmented one
        for b in range(len(batch["y"])):
            pid, z = _main_of(batch["nb"][b], batch["nb_valid"][b])
            at = LESION[pid].get(z)
            if at is not None and batch["cell"][b, 0] >= 0:
                moved += batch["cell"][b].tolist() != [(at[0] + 2) // 8, (at[1] + 2) // 8]
    assert checked >= 10 and moved >= 3


def _main_of(nb: torch.Tensor, valid: torch.Tensor) -> tuple[str, int]:
    """The main slice (patient, z) a row's neighbours belong to, from the N z-1 or N z+1 neighbour."""
    for k, dz in ((1, +1), (2, -1)):
        if valid[k]:
            pid, _, z = decode(_background(nb[k, 0]))
            return pid, z + dz
    raise AssertionError("no N neighbour")


def test_shared_neighbours_get_exactly_the_main_slice_warp():
    x = torch.zeros(6, 1, S, S)
    x[:, 0, 6:14, 9:25] = 0.8
    x[:, 0, 14:26, 9:13] = 0.6
    nb = x[:, None].repeat(1, 4, 1, 1, 1)
    clean = lls.ReleaseAugment(p_noise=0.0)
    out, nbo, _, _ = lls.augment_batch(x, torch.Generator().manual_seed(3), "release", nb=nb, aug=clean)
    assert not torch.allclose(out, x, atol=1e-3)  # something moved
    assert torch.allclose(nbo, out[:, None].expand_as(nbo), atol=1e-5)
    # with the release's noise on the main slice only: the neighbours still follow its geometry
    out, nbo, _, _ = lls.augment_batch(x, torch.Generator().manual_seed(3), "release", nb=nb)
    assert (nbo - out[:, None]).abs().mean() < 0.1


def test_release_neighbours_get_their_own_rotation_from_the_release_set(tmp_path, monkeypatch):
    _, _, seen = _capture(monkeypatch, tmp_path, 2, neighbour_augment="release")
    batch = next(iter(seen["loader"]))
    angles = lls.ReleaseAugment().neighbour_angles
    best = []
    for b in range(len(batch["y"])):
        for k in range(4):
            if not batch["nb_valid"][b, k]:
                continue
            pid, ph, zp = decode(_background(batch["nb"][b, k, 0]))
            if lesion_at(pid, ph, zp) is None:
                continue  # a uniform slice looks the same at every angle
            raw = _image(pid, ph, zp).numpy()
            inner = (slice(6, S - 6), slice(6, S - 6))
            errs = [
                np.abs(
                    ndimage.rotate(raw, a, reshape=False, order=1)[inner] - batch["nb"][b, k, 0].numpy()[inner]
                ).max()
                for a in angles
            ]
            assert min(errs) < 0.05 and sorted(errs)[1] > 0.2  # one angle of the set, and only one
            best.append(angles[int(np.argmin(errs))])
    assert len(best) >= 6 and any(a != 0 for a in best)


def _background(img: torch.Tensor) -> float:
    """The most common value of an un-noised slice: its background (rotations keep the centre's values)."""
    vals, counts = torch.unique(img[8:24, 8:24].round(decimals=4), return_counts=True)
    return float(vals[counts.argmax()])


def test_options_are_checked_and_default_to_the_release_augmentation():
    cfg = lls.LLSTwoStage.Config()
    assert (cfg.augment, cfg.neighbour_augment, cfg.supervised_cell) == ("release", "shared", "centroid")
    for key, bad in (("augment", True), ("neighbour_augment", "same"), ("supervised_cell", "corner")):
        with pytest.raises(ValueError, match=key):
            lls.LLSTwoStage.make_config({key: bad})
