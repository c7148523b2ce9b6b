"""ACE: grid-wise crop geometry, composition/decomposition targets, losses, teacher (METHODS.md §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.backbones import build_backbone
from bench.registry import METHODS
from methods import ace
from methods.base import StepInfo

E = math.exp


def _cells_large(off, i):
    """Canvas cells covered along one axis by large-crop token i (2 cells, from the pixel footprint)."""
    return set(range(off + 2 * i, off + 2 * i + 2))


@pytest.mark.parametrize("grid,margin", [(4, 4), (8, 4), (14, 4), (6, 2)])
def test_every_large_token_maps_to_exactly_four_small_tokens(grid, margin):
    """For many random draws: footprints computed from pixel coordinates, independently of overlap_masks."""
    rng = np.random.default_rng(grid)
    canvas = 2 * grid + margin
    for _ in range(300):
        large, small = ace.sample_offsets(rng, grid, margin)
        assert all(0 <= v <= margin for v in large)
        assert all(0 <= v <= canvas - grid and (v - u) % 2 == 0 for u, v in zip(large, small))
        m_l, m_s = ace.overlap_masks(large, small, grid)
        assert m_l.sum() > 0 and m_s.sum() == 4 * m_l.sum()
        # pixel footprints in canvas cells: large token (i, j) covers 2x2 cells, small token (a, b) one cell
        small_cells = {(small[0] + a, small[1] + b): (a, b) for a in range(grid) for b in range(grid)}
        covered = set()
        for i in range(grid):
            for j in range(grid):
                cells = {(y, x) for y in _cells_large(large[0], i) for x in _cells_large(large[1], j)}
                inside = [small_cells[c] for c in cells if c in small_cells]
                # in the overlap iff the whole 2x2 footprint lies inside the small crop
                assert bool(m_l[i, j]) == (len(inside) == 4)
                if m_l[i, j]:
                    assert all(m_s[a, b] for a, b in inside)
                    covered |= set(inside)
        assert covered == {(a, b) for a, b in zip(*np.nonzero(m_s))}  # each overlap small token in exactly one


def test_offsets_of_the_paper_geometry():
    rng = np.random.default_rng(0)
    seen_large, seen_small = set(), set()
    for _ in range(400):
        large, small = ace.sample_offsets(rng, 14, 4)
        seen_large.add(int(large[0]))
        seen_small.add(int(small[1]))
    assert seen_large == {0, 1, 2, 3, 4}  # (x1, y1) in {0..4}^2 on a 32-cell canvas
    assert max(seen_small) <= 32 - 14


def test_overlap_masks_reject_mixed_parity():
    with pytest.raises(ValueError, match="same parity"):
        ace.overlap_masks((0, 0), (1, 0), 4)


def test_targets_hand_built_case():
    """G = 4; large crop at cell (y, x) = (2, 0), small crop at (0, 4) (different on the two axes).

    Rows: large [2, 10) / small [0, 4) overlap [2, 4); columns: large [0, 8) / small [4, 8) overlap [4, 8).
    Large tokens in the overlap: (0, 2), (0, 3). Small tokens: rows 2-3, all columns.
    """
    m_l, m_s = ace.overlap_masks((2, 0), (0, 4), 4)
    exp_l = np.zeros((4, 4), bool)
    exp_l[0, 2] = exp_l[0, 3] = True
    exp_s = np.zeros((4, 4), bool)
    exp_s[2:4, :] = True
    assert np.array_equal(m_l, exp_l) and np.array_equal(m_s, exp_s)

    dec, comp = ace.matching_targets((2, 0), (0, 4), 4)
    assert dec.shape == (16, 64) and comp.shape == (16, 4)
    # composition: large (0, 2) covers cells y 2-3, x 4-5 = small tokens (2-3, 0-1) = composite (1, 0) of the 2x2
    # grid; 3x3 Gaussian there, clipped: (1,0) 1, (0,0) e^-.5, (1,1) e^-.5, (0,1) e^-1
    row = comp[0 * 4 + 2].reshape(2, 2)
    assert np.allclose(row, [[E(-0.5), E(-1)], [1, E(-0.5)]])
    row = comp[0 * 4 + 3].reshape(2, 2)  # large (0, 3) -> composite (1, 1)
    assert np.allclose(row, [[E(-1), E(-0.5)], [E(-0.5), 1]])
    assert not comp[[i for i in range(16) if i not in (2, 3)]].any()
    # decomposition: small (2, 0) = cell (2, 4) = large sub-part (0, 4) on the 8x8 grid; 5x5 kernel clipped at row 0
    row = dec[2 * 4 + 0].reshape(8, 8)
    expect = np.zeros((8, 8))
    for y in range(0, 3):
        for x in range(2, 7):
            expect[y, x] = E(-((y - 0) ** 2 + (x - 4) ** 2) / 2)
    assert np.allclose(row, expect)
    row = dec[3 * 4 + 3].reshape(8, 8)  # small (3, 3) = cell (3, 7) = sub-part (1, 7)
    assert row[1, 7] == 1 and np.isclose(row[3, 5], E(-4)) and row[1, 4] == 0 and np.isclose(row[0, 7], E(-0.5))
    assert np.isclose(row.sum(), (1 + 2 * E(-0.5) + E(-2)) * (1 + E(-0.5) + E(-2)))
    assert not dec[:8].any()  # small rows 0-1 are outside the overlap


def test_decompose_and_compose_layout():
    """Decompose: chunk a*2+b of token (i, j) becomes sub-part (2i+a, 2j+b); compose: the inverse grouping."""
    g, d = 4, 3
    dec = ace.Decompose(d)
    dec.mlp = nn.Identity()
    tok = torch.arange(g * g * 4 * d, dtype=torch.float32).reshape(1, g * g, 4 * d)
    out = dec(tok, g).reshape(2 * g, 2 * g, d)
    for i, j, a, b in [(0, 0, 0, 1), (1, 2, 1, 0), (3, 3, 1, 1)]:
        assert torch.equal(out[2 * i + a, 2 * j + b], tok[0, i * g + j, (2 * a + b) * d : (2 * a + b + 1) * d])
    comp = ace.Compose(d)
    comp.mlp = nn.Identity()
    tok = torch.randn(1, g * g, d)
    grouped = comp(tok, g).reshape(g // 2, g // 2, 4, d)
    grid = tok.reshape(g, g, d)
    for p, q in [(0, 0), (1, 0), (1, 1)]:
        expect = torch.stack(
            [grid[2 * p, 2 * q], grid[2 * p, 2 * q + 1], grid[2 * p + 1, 2 * q], grid[2 * p + 1, 2 * q + 1]]
        )
        assert torch.equal(grouped[p, q], expect)


def test_matching_loss_hand_computed():
    x = torch.tensor([[2.0, -1.0, 0.0]])
    t = torch.tensor([[1.0, 0.5, 0.0]])
    alpha = 0.9
    sig = lambda v: 1 / (1 + E(-v))  # noqa: E731
    terms = []
    for xv, tv in zip(x[0].tolist(), t[0].tolist()):
        bce = -(tv * math.log(sig(xv)) + (1 - tv) * math.log(1 - sig(xv)))
        terms.append((alpha * tv + (1 - alpha) * (1 - tv)) * bce)
    assert math.isclose(ace.matching_loss(x, t, alpha).item(), sum(terms) / 3, rel_tol=1e-5)


def test_global_loss_hand_computed():
    """Two crops, batch 1, K = 2: P_t = softmax((h_t - c) / tau_t), log P_s = log_softmax(h_s / tau_s)."""
    h_t = torch.tensor([[[1.0, 0.0]], [[0.0, 0.5]]])  # [2 crops (L, S), B=1, K=2]
    h_s = torch.tensor([[[0.2, 0.1]], [[0.3, 0.9]]])
    c = torch.tensor([[0.5, 0.0]])

    def softmax(v):
        e = [E(x) for x in v]
        return [x / sum(e) for x in e]

    pt_l, pt_s = softmax([(1.0 - 0.5) / 0.04, 0.0]), softmax([-0.5 / 0.04, 0.5 / 0.04])
    ls_l = [math.log(p) for p in softmax([0.2 / 0.1, 0.1 / 0.1])]
    ls_s = [math.log(p) for p in softmax([0.3 / 0.1, 0.9 / 0.1])]
    expect = 0.5 * (-(pt_l[0] * ls_s[0] + pt_l[1] * ls_s[1]) - (pt_s[0] * ls_l[0] + pt_s[1] * ls_l[1]))
    assert math.isclose(ace.global_loss(h_s, h_t, c, 0.1, 0.04).item(), expect, rel_tol=1e-5)


def test_masked_mean_clamps_an_empty_set():
    tok = torch.arange(6.0).reshape(1, 3, 2)
    assert torch.equal(ace.masked_mean(tok, torch.tensor([[True, False, True]])), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(ace.masked_mean(tok, torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(1, 2))


SMALL_HEAD = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}


def _method(**over):
    torch.manual_seed(0)
    bb = build_backbone("vit_tiny_2d", img_size=64, depth=1)
    cls = METHODS.get("ace")
    return cls(bb, cls.make_config({**SMALL_HEAD, **over}))


def test_views_geometry_and_targets(views_batch):
    m = _method()
    b = views_batch(m)
    assert b["large"].shape == b["small"].shape == (2, 1, 64, 64)  # G = 4 at 64 px on a ViT/16
    assert b["target_dec"].shape == (2, 16, 64) and b["target_comp"].shape == (2, 16, 4)
    assert torch.equal(b["mask_s"].sum(1), 4 * b["mask_l"].sum(1))
    # rows of the targets are non-zero exactly for the overlap tokens, with a 1 at the matching column
    assert torch.equal(b["target_dec"].amax(-1) == 1, b["mask_s"])
    assert torch.equal(b["target_comp"].amax(-1) == 1, b["mask_l"])


def test_small_crop_is_an_unresized_window_of_the_canvas(monkeypatch):
    """With the canvas = the image (RandomResizedCrop stubbed) the small crop is the image at the drawn cells."""
    m = _method(augment=False)
    img = np.random.default_rng(1).random((1, 192, 192), dtype=np.float32)  # canvas (2*4 + 4) * 16 px
    monkeypatch.setattr(ace, "random_resized_crop", lambda im, size, scale, rng: im)
    offsets = {}
    real = ace.sample_offsets

    def spy(rng, grid, margin):
        offsets["v"] = real(rng, grid, margin)
        return offsets["v"]

    monkeypatch.setattr(ace, "sample_offsets", spy)
    v = m.views({"image": img, "roi": (64, 64)}, np.random.default_rng(2))
    (y2, x2) = offsets["v"][1] * 16
    assert torch.allclose(
        v["small"] * ace.NORM_STD + ace.NORM_MEAN, torch.from_numpy(img[:, y2 : y2 + 64, x2 : x2 + 64]), atol=1e-6
    )


def test_training_step_teacher_gets_no_gradient_and_centre_moves(views_batch):
    m = _method()
    m.train()
    b = views_batch(m)
    before = m.center.clone()
    out = m.training_step(b, StepInfo(10, 10))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    expect = 0.1 * out.logs["global"] + 0.5 * (out.logs["dec"] + out.logs["comp"])
    assert torch.isclose(out.loss.detach(), expect)
    out.loss.backward()
    for p in m.teacher.parameters():
        assert not p.requires_grad and p.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    assert m.dino_head.last_layer.weight_v.grad.abs().sum() > 0
    assert torch.equal(m.center, before)  # the centre moves once per optimizer step, after it
    m.after_optimizer_step(StepInfo(11, 10))
    assert not torch.equal(m.center, before)
    assert m.export_encoder() is m.teacher["backbone"]
    pairs = m.ema_pairs()
    assert [s for s, _ in pairs] == [m.backbone, m.dino_head, m.dense_head]


def test_last_layer_frozen_early(views_batch):
    m = _method(freeze_last_layer=0.5)
    m.train()
    m.training_step(views_batch(m), StepInfo(0, 10)).loss.backward()
    assert m.dino_head.last_layer.weight_v.grad is None  # None, not zero: AdamW skips it (tests/test_wiring_ace.py)
    assert m.dense_head.net[0].weight.grad.abs().sum() > 0


def test_geometry_errors_name_the_option():
    m = _method()
    with pytest.raises(ValueError, match="input_size=48 must be a multiple of 2 x the backbone's token stride"):
        m.views({"image": np.zeros((1, 48, 48), np.float32), "roi": (48, 48)}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="not square; set input_size"):
        m.views({"image": np.zeros((1, 64, 96), np.float32), "roi": (64, 96)}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="input_size=40"):
        _method(input_size=40)
    with pytest.raises(ValueError, match="global_input"):
        _method(global_input="mean")
    v = _method(input_size=32).views(
        {"image": np.zeros((1, 64, 96), np.float32), "roi": (64, 96)}, np.random.default_rng(0)
    )
    assert v["large"].shape == (1, 32, 32) and v["target_comp"].shape == (4, 1)


def test_cls_global_input_runs(views_batch):
    m = _method(global_input="cls")
    m.train()
    out = m.training_step(views_batch(m), StepInfo(5, 10))
    assert torch.isfinite(out.loss)
