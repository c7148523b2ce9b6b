"""ASA mechanisms (methods/asa.py): permutation and targets, token order, crop overlap matching, losses against
hand-computed values, teacher isolation, the phase schedule and the views' geometry."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.backbones import build_backbone, set_drop_path
from bench.registry import METHODS
from methods.asa import (
    ASA,
    coord_targets,
    crop,
    from_cells,
    grid_shape,
    normalized_mse,
    overlap_masks,
    permute_cells,
    phase1_losses,
    phase2_losses,
    phase2_shape,
    targets_to_index,
    to_cells,
    tokens,
    unpermute_cells,
)
from methods.base import StepInfo

ROI = (64, 64, 64)


@pytest.fixture(scope="module")
def asa() -> ASA:
    """swin_unetr_tiny (one block per stage) with narrow projectors: the mechanisms, not the 8192-wide heads,
    are under test."""
    torch.manual_seed(0)
    bb = build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1))
    return ASA(bb, ASA.make_config({"global_dim": 32, "local_dim": 16}))


class MockBackbone(torch.nn.Module):
    """Backbone stand-in with Swin UNETR's surface (hs[3] at stride 16, a decoder) and position-dependent
    tokens, so that a permuted volume has a different mean token than the original."""

    in_channels, decoder_channels, stage_channels = 1, 2, [1, 2, 4, 8, 16]

    def __init__(self) -> None:
        super().__init__()
        self.pos = torch.nn.Parameter(torch.linspace(0.5, 1.5, 64).reshape(1, 1, 4, 4, 4))
        self.mix = torch.nn.Conv3d(1, 8, 1)
        self.dec = torch.nn.Conv3d(1, 2, 1)

    @property
    def encoder(self):
        return torch.nn.ModuleList([self.mix])

    def encode(self, x):
        return [None, None, None, self.mix(F.avg_pool3d(x, 16) * self.pos), None]

    def decode(self, x, hs):
        return self.dec(x)

    def set_drop_path(self, rate):
        set_drop_path(self, rate)  # no residual blocks: nothing changes


@pytest.fixture()
def mock_asa() -> ASA:
    torch.manual_seed(0)
    m = ASA(MockBackbone(), ASA.make_config({"global_dim": 16, "local_dim": 8}))
    m.bind_corpus(20, 2)
    return m


def _batch(m: ASA, roi=ROI, n: int = 1, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vol = rng.random((1, 72, 70, 66), dtype=np.float32)
    return torch.utils.data.default_collate([m.views({"image": vol, "roi": roi}, rng) for _ in range(n)])


def _cell_index_volume(batch: int, grid, patch: int) -> torch.Tensor:
    """[B, 1, *grid*patch] volume whose every cell is constant = its row-major index."""
    n = math.prod(grid)
    cells = torch.arange(n, dtype=torch.float32)[None, :, None, None, None, None]
    return from_cells(cells.expand(batch, n, 1, patch, patch, patch).contiguous(), grid)


# --- phase 1: permutation, targets, token order -----------------------------------------------------------------
@pytest.mark.parametrize("spatial", [(64, 64, 64), (32, 48, 64)])
def test_permutation_and_targets_are_inverses(spatial):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, *spatial, generator=g)
    grid = grid_shape(spatial, 16)
    n = math.prod(grid)
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(2)])
    aug = permute_cells(x, perm, 16)
    assert not torch.equal(aug, x)
    targets = coord_targets(perm, grid)
    assert torch.equal(unpermute_cells(aug, targets, 16), x)
    assert torch.equal(from_cells(to_cells(x, 16), grid), x)
    # cell p of aug is the original cell perm[p], voxel for voxel
    p = 5
    z, y, xx = np.unravel_index(int(perm[1, p]), grid)
    dz, dy, dx = np.unravel_index(p, grid)
    assert torch.equal(
        aug[1, :, dz * 16 : (dz + 1) * 16, dy * 16 : (dy + 1) * 16, dx * 16 : (dx + 1) * 16],
        x[1, :, z * 16 : (z + 1) * 16, y * 16 : (y + 1) * 16, xx * 16 : (xx + 1) * 16],
    )


@pytest.mark.parametrize("g", [4, 8])
def test_coordinate_targets_normalisation(g):
    grid = (g, g, g)
    n = g**3
    t = coord_targets(torch.arange(n)[None], grid)[0]
    c = torch.tensor(list(itertools.product(range(g), repeat=3)), dtype=torch.float32)  # (z, y, x) row-major
    assert torch.allclose(t, 6 * c / (g - 1) - 3)
    assert t.min() == -3 and t.max() == 3
    if g == 8:  # the paper's grid: c -> 6c/7 - 3; cell (1, 2, 3) has index 1*64 + 2*8 + 3
        assert torch.allclose(t[83], torch.tensor([6 / 7 - 3, 12 / 7 - 3, 18 / 7 - 3]))
    assert torch.equal(targets_to_index(t, grid), torch.arange(n))


def test_token_order_matches_cell_order(asa):
    grid, patch = (4, 4, 4), 16
    x = _cell_index_volume(2, grid, patch)
    g = torch.Generator().manual_seed(1)
    perm = torch.stack([torch.randperm(64, generator=g) for _ in range(2)])
    aug = permute_cells(x, perm, patch)
    targets = coord_targets(perm, grid)
    # a stride-16 feature map of aug, flattened (D, H, W) row-major: token k shows the index of the cell it came from
    content = tokens(F.avg_pool3d(aug, patch))[..., 0]
    assert torch.equal(content.long(), targets_to_index(targets, grid))
    assert torch.equal(content.long(), perm)
    assert asa.stage == 3  # hs[3]: stride 2^4 = 16 = patch; at ROI 64 its grid is 4^3 (checked in the phase-2 step)


# --- phase 2: crops and overlap matching ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "roi,p2,patch",
    [
        (64, 80, 16),  # quick budget: corners {0, 16}
        (16, 20, 2),
    ],
)  # paper token geometry (grid 8, corners {0,1,2} cells)
def test_overlap_matching_every_pair_of_corners(roi, p2, patch):
    grid = (roi // patch,) * 3
    vol = torch.arange(p2**3, dtype=torch.float32).reshape(1, 1, p2, p2, p2)  # every voxel unique
    choices = [c * patch for c in range((p2 - roi) // patch + 1)]
    corners = torch.tensor(list(itertools.product(choices, repeat=3)))
    pairs = list(itertools.product(range(len(corners)), repeat=2))
    c1, c2 = corners[[a for a, _ in pairs]], corners[[b for _, b in pairs]]
    m1, m2 = overlap_masks(c1, c2, grid, patch)
    for k in range(len(pairs)):
        cells1 = to_cells(crop(vol, c1[k : k + 1], (roi,) * 3), patch)[0]  # [n, 1, p, p, p]
        cells2 = to_cells(crop(vol, c2[k : k + 1], (roi,) * 3), patch)[0]
        sel1, sel2 = cells1[m1[k]], cells2[m2[k]]
        expected = math.prod(max(0, roi - abs(int(c1[k, i] - c2[k, i]))) // patch for i in range(3))
        assert len(sel1) == len(sel2) == expected > 0
        assert torch.equal(sel1, sel2), (c1[k].tolist(), c2[k].tolist())
        # nothing outside the masks is shared
        shared = set(cells1[:, 0, 0, 0, 0].tolist()) & set(cells2[:, 0, 0, 0, 0].tolist())
        assert len(shared) == expected
    if grid[0] == 8:
        assert int(m1.sum(1).min()) == 6**3 and int(m1.sum(1).max()) == 8**3


def test_phase2_geometry():
    assert phase2_shape((128,) * 3, 16, 1.25) == (160,) * 3
    assert phase2_shape((64,) * 3, 16, 1.25) == (80,) * 3
    assert phase2_shape((96,) * 3, 16, 1.25) == (128,) * 3  # 120 rounded up to whole sub-volumes


# --- losses against hand-computed values ------------------------------------------------------------------------
def test_global_loss_is_two_minus_two_cos_over_d():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    assert normalized_mse(a, b).item() == pytest.approx((2 - 2 * 24 / 25) / 2)  # 0.04
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g)
    assert normalized_mse(a, b).item() == pytest.approx(((2 - 2 * F.cosine_similarity(a, b)) / 50).mean().item())


def test_phase1_losses_hand_values():
    grid = (4, 4, 4)
    perm = torch.randperm(64)[None]
    target = coord_targets(perm, grid)
    order = torch.zeros(1, 64, 3)  # predicting 0: mean of (6c/3 - 3)^2 over c in 0..3 = (9 + 1 + 1 + 9) / 4 = 5
    image = torch.full((1, 1, 4, 4, 4), 0.5)
    restored = torch.zeros_like(image)
    parts = phase1_losses(order, target, restored, image, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert parts["order"].item() == pytest.approx(5.0)
    assert parts["recovery"].item() == pytest.approx(0.25)
    assert parts["global"].item() == pytest.approx(1.0)  # orthogonal: (2 - 0) / 2


@pytest.mark.parametrize("normalize_local", [False, True])
def test_phase2_losses_hand_values(normalize_local):
    # grid 2^3, crop 2 one cell further along z: crop-1 cells z=1 match crop-2 cells z=0 (4 tokens)
    grid, patch = (2, 2, 2), 1
    c1, c2 = torch.tensor([[0, 0, 0]]), torch.tensor([[1, 0, 0]])
    m1, m2 = overlap_masks(c1, c2, grid, patch)
    assert m1[0].tolist() == [False] * 4 + [True] * 4 and m2[0].tolist() == [True] * 4 + [False] * 4
    # local embeddings (d = 2): the phase-2-volume cell id under each token; teacher = student + (1, 0)
    ids1 = torch.arange(8.0)  # crop 1 covers global cells 0..7 (z = 0, 1)
    ids2 = torch.arange(8.0) + 4  # crop 2 covers global cells 4..11 (z = 1, 2)
    emb = lambda ids: torch.stack([ids + 1, torch.ones_like(ids)], -1)  # noqa: E731
    l_s = torch.stack([emb(ids1), emb(ids2)])  # [2B, n, d]
    l_t = l_s + torch.tensor([1.0, 0.0])
    g_s = torch.tensor([[1.0, 0.0], [3.0, 4.0]])  # crop 1, crop 2
    g_t = torch.tensor([[4.0, 3.0], [0.0, 1.0]])
    parts = phase2_losses(g_s, g_t, l_s, l_t, m1, m2, normalize_local)
    assert parts["global"].item() == pytest.approx(1.0 + 0.04)  # (g1_s, g2_t) orthogonal + (g2_s, g1_t) cos 24/25
    if not normalize_local:  # matched rows differ by exactly (1, 0) in both terms: 1/2 * (1/2 + 1/2)
        assert parts["local"].item() == pytest.approx(0.5)
    else:  # matched rows: u = (i + 1, 1) vs v = (i + 2, 1) for global ids i = 4..7
        u = torch.stack([torch.arange(4, 8.0, dtype=torch.float64) + 1, torch.ones(4, dtype=torch.float64)], -1)
        v = u + torch.tensor([1.0, 0.0], dtype=torch.float64)
        want = ((2 - 2 * F.cosine_similarity(u, v)) / 2).mean()  # both terms equal, so their mean is this
        assert parts["local"].item() == pytest.approx(want.item(), rel=1e-4)


# --- the method end to end (tiny backbone) ----------------------------------------------------------------------
def test_phase_is_a_deterministic_function_of_the_step(asa, monkeypatch):
    asa.bind_corpus(20, 2)  # one corpus epoch = 20 // 2 = 10 steps per phase block
    assert [asa.phase_of(s) for s in range(40)] == ([1] * 10 + [2] * 10) * 2
    other = ASA(MockBackbone(), ASA.make_config({"phase_steps": 3, "global_dim": 8, "local_dim": 8}))
    other.bind_corpus(1000, 1)  # a fixed block ignores the corpus
    assert [other.phase_of(s) for s in range(9)] == [1, 1, 1, 2, 2, 2, 1, 1, 1]
    monkeypatch.setattr(asa, "_phase1", lambda batch: (torch.tensor(1.0), {}))
    monkeypatch.setattr(asa, "_phase2", lambda batch: (torch.tensor(2.0), {}))
    for s in (0, 9, 10, 19, 20, 1234):
        out = asa.training_step({}, StepInfo(s, 5000))
        assert out.loss.item() == out.logs["phase"] == asa.phase_of(s) and out.logs["phase_block"] == 10


@pytest.mark.parametrize("volumes, batch, block", [(240, 12, 20), (224, 2, 112), (25, 2, 12), (1, 4, 1)])
def test_phase_block_is_one_corpus_epoch_of_a_drop_last_loader(volumes, batch, block):
    """The code's block: len(DataLoader(range(volumes), batch_size=batch, drop_last=True)), never below 1."""
    m = ASA(MockBackbone(), ASA.make_config({"global_dim": 8, "local_dim": 8}))
    m.bind_corpus(volumes, batch)
    want = max(1, len(torch.utils.data.DataLoader(range(volumes), batch_size=batch, drop_last=True)))
    assert m.phase_block() == want == block
    assert [m.phase_of(s) for s in (0, block - 1, block, 2 * block - 1, 2 * block)] == [1, 1, 2, 2, 1]


def test_unbound_corpus_falls_back_to_the_papers_epoch_with_a_warning():
    m = ASA(MockBackbone(), ASA.make_config({"global_dim": 8, "local_dim": 8}))
    with pytest.warns(UserWarning, match="no corpus was bound"):
        assert m.phase_block() == 20  # AMOS 240 training volumes // batch 12
    with pytest.raises(ValueError, match="bind_corpus"):
        m.bind_corpus(0, 2)


def test_views_shapes():
    m = ASA(MockBackbone(), ASA.make_config({"global_dim": 8, "local_dim": 8}))
    for roi, p2, n, top in [(64, 80, 64, 16), (128, 160, 512, 32)]:
        rng = np.random.default_rng(0)
        vol = rng.random((1, 72, 70, 66), dtype=np.float32)
        views = [m.views({"image": vol, "roi": (roi,) * 3}, rng) for _ in range(8)]
        v = views[0]
        assert v["image"].shape == (1, roi, roi, roi) and v["image"].dtype == torch.float32
        assert v["image_p2"].shape == (1, p2, p2, p2)
        assert v["perm"].shape == (n,) and torch.equal(v["perm"].sort().values, torch.arange(n))
        corners = torch.stack([w["corners"] for w in views])
        assert corners.shape == (8, 2, 3) and int(corners.min()) == 0 and int(corners.max()) == top
        assert bool((corners % 16 == 0).all())
    const = m.views({"image": np.full((1, 30, 40, 50), 0.25, np.float32), "roi": ROI}, np.random.default_rng(0))
    assert torch.allclose(const["image"], torch.tensor(0.25)) and torch.allclose(const["image_p2"], torch.tensor(0.25))


def test_paper_geometry_overrides_the_budget_roi():
    """roi=[128]*3 (budget=paper: conf/method_budget/asa_paper.yaml): 8^3 grid of 16^3 sub-volumes and 160^3
    phase 2 whatever ROI the budget crops; roi=None follows the budget (quick: 64^3 -> 4^3 grid, 80^3 phase 2)."""
    from omegaconf import OmegaConf

    from bench.plan import compose

    assert compose(["method=asa", "budget=quick"]).method.config.roi is None
    config = OmegaConf.to_container(compose(["method=asa", "budget=paper"]).method.config)
    assert config["roi"] == [128, 128, 128]
    paper = ASA(MockBackbone(), ASA.make_config(config | {"global_dim": 8, "local_dim": 8}))
    vol = np.random.default_rng(0).random((1, 72, 70, 66), dtype=np.float32)
    v = paper.views({"image": vol, "roi": (96, 96, 96)}, np.random.default_rng(0))
    assert v["image"].shape == (1, 128, 128, 128) and v["image_p2"].shape == (1, 160, 160, 160)
    assert v["perm"].shape == (512,) and int(v["corners"].max()) <= 32
    for bad in ({"roi": [128, 128]}, {"roi": [120, 128, 128]}):
        with pytest.raises(ValueError, match="roi|divisible"):
            ASA(MockBackbone(), ASA.make_config(bad | {"global_dim": 8, "local_dim": 8}))


def _grads(module):
    return [p.grad for p in module.parameters()]


def _check_isolated_teacher(m: ASA, teacher_before: dict) -> None:
    assert all(g is None for g in _grads(m.teacher))
    trainable = {id(p) for g in m.param_groups(0.0) for p in g["params"]}
    assert not any(id(p) in trainable for p in m.teacher.parameters())
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


def test_phase1_step_gradients_and_teacher_input(mock_asa):
    m = mock_asa
    m.train()
    assert not m.teacher.training and m.backbone.training
    batch = _batch(m, n=2)
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    out = m.training_step(batch, StepInfo(0, 100))
    out.loss.backward()
    assert out.logs["phase"] == 1
    assert out.loss.item() == pytest.approx(out.logs["p1_order"] + out.logs["p1_recovery"] + out.logs["p1_global"])
    assert out.logs["p1_global"] > 0  # the teacher sees the original volume, the student the permuted one
    _check_isolated_teacher(m, before)
    for mod in (m.backbone, m.order_head, m.recovery_head, m.proj_global):  # encoder, decoder and heads learn
        assert all(g is not None and g.abs().sum() > 0 for g in _grads(mod)), mod
    assert all(g is None for g in _grads(m.proj_local))  # not in phase 1's graph: the optimizer skips it

    # the code's phase-1 teacher input: at initialisation teacher == student, so the global loss vanishes
    m.cfg.teacher_input = "permuted"
    with torch.no_grad():
        out = m.training_step(batch, StepInfo(0, 100))
    assert out.logs["p1_global"] == pytest.approx(0.0, abs=1e-12)


def test_phase2_step_gradients(asa):
    """Real tiny Swin UNETR: hs[3] grid = sub-volume grid, only encoder + projectors get gradients."""
    asa.train()
    asa.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in asa.teacher.state_dict().items()}
    asa.bind_corpus(10, 1)  # a 10-step block: step 10 is the first phase-2 step
    out = asa.training_step(_batch(asa, n=1), StepInfo(10, 100))
    out.loss.backward()
    assert out.logs["phase"] == 2
    assert out.loss.item() == pytest.approx((out.logs["p2_global"] + out.logs["p2_local"]) / 2)
    _check_isolated_teacher(asa, before)
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(asa.backbone.encoder))
    assert all(g is not None for g in _grads(asa.proj_global) + _grads(asa.proj_local))
    for head in (asa.backbone.net.decoder1, asa.backbone.net.encoder1, asa.order_head, asa.recovery_head):
        assert all(g is None for g in _grads(head))  # outside the graph: no update, no momentum drift
    asa.zero_grad(set_to_none=True)


def test_teacher_schedule_and_export(asa):
    assert asa.ema_momentum(0.0) == pytest.approx(0.999)
    assert asa.ema_momentum(0.5) == pytest.approx(0.9995)
    assert asa.ema_momentum(1.0) == pytest.approx(1.0)
    assert asa.export_encoder() is asa.teacher["backbone"] and asa.export_encoder() is not asa.backbone
    pairs = asa.ema_pairs()
    assert [t for _, t in pairs] == [asa.teacher["backbone"], asa.teacher["proj_global"], asa.teacher["proj_local"]]
    for s, t in pairs:
        assert [p.shape for p in s.parameters()] == [p.shape for p in t.parameters()]
    # the backbone binds a fused attention forward per module: the teacher's copies must use the teacher's weights
    for mod in asa.teacher.modules():
        if "forward" in vars(mod):
            assert vars(mod)["forward"].__self__ is mod


def test_config_is_validated():
    bb = build_backbone("swin_unetr_tiny")
    for bad in ({"teacher_input": "both"}, {"patch_size": 24}, {"phase_steps": -1}, {"resize_mode": "cubic"}):
        with pytest.raises(ValueError):
            ASA(bb, ASA.make_config(bad | {"global_dim": 8, "local_dim": 8}))
    assert METHODS.get("asa") is ASA and ASA.capabilities == {"3d", "ema"}
