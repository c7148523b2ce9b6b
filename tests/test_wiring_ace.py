"""Wiring of ACE's training step (issue 29; shared/METHODS.md §5): every loss term recomputed by the test from the
step's own inputs and captured intermediate tensors, the matching targets rebuilt from the crops' pixel content,
the centre, the loss weights, the gradient reach, the frozen last layer under the engine's AdamW step, the
initialisation, the stochastic depth and the weight-decay rule.

Swaps ruled out: each was injected alone into a scratch copy of methods/ace.py (or conf/method/ace.yaml) and
turned this module red.
- crops concatenated small-first (x = cat([small, large])), so both networks see the crops in swapped order
- the global loss compares the same crop (P_t(L) with P_s(L), P_t(S) with P_s(S))
- the teacher's output not centred (no ``- center``)
- student and teacher temperatures swapped
- overlap pooling with the other crop's mask (masks = cat([mask_s, mask_l]))
- the teacher's overlap pooling from the student's tokens
- decomposition of the small crop and composition of the large one (dense_s[b:] / dense_s[:b] swapped)
- decomposition logits against the teacher's large-crop tokens (dense_t[:b] instead of dense_t[b:])
- the teacher's dense tokens from the student's dense head
- targets built from swapped offsets (matching_targets(small, large, grid))
- the large crop cut at the small crop's offset
- alpha_dec and alpha_comp swapped
- lambda_global and lambda_local swapped
- L_local without its 1/2
- the centre's batch mean from the overlap poolings only (h_non left out)
- the centre's batch mean from the student's outputs
- the centre's momentum reversed (centre * (1 - m) + mean * m)
- the centre moved inside training_step (before the optimizer step)
- the frozen last layer's gradient zeroed (the former hook) instead of kept out of the graph
- the last layer frozen whatever the progress (``<`` replaced by ``<=`` 1.0)
- the dense head at PyTorch's default initialisation
- drop_path_rate ignored (set_drop_path not called on the student)
- stochastic depth left on the teacher (the student's set before the deep copy, the teacher's not removed)
- train.no_decay [] (everything decayed) in conf/method/ace.yaml
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from timm.layers import DropPath

from bench.backbones import build_backbone
from bench.engine import TrainConfig, build_optimizer, train_step
from bench.registry import METHODS
from methods import ace
from methods.base import StepInfo

CONF = Path(__file__).resolve().parent.parent / "conf"
# distinct values, so that a swapped temperature, alpha or weight changes the numbers
SMALL = {
    "out_dim": 64,
    "hidden_dim": 32,
    "bottleneck_dim": 16,
    "student_temp": 0.2,
    "teacher_temp": 0.05,
    "center_momentum": 0.8,
    "alpha_dec": 0.95,
    "alpha_comp": 0.7,
    "lambda_global": 0.3,
    "lambda_local": 0.6,
    "logit_scale": 5.0,
    "drop_path_rate": 0.0,  # deterministic student: a re-run step gives the same tensors
}


def _method(diverge=True, **over):
    """``diverge``: the teacher's weights moved off the student's (as after some EMA steps), so that the test tells
    whose tensors a step used."""
    torch.manual_seed(0)
    bb = build_backbone("vit_tiny_2d", img_size=64, depth=2)
    cls = METHODS.get("ace")
    m = cls(bb, cls.make_config({**SMALL, **over}))
    m.train()
    with torch.no_grad():
        m.center.normal_()  # a non-zero centre, so that centring shows
        for p in m.teacher.parameters() if diverge else ():
            p.add_(0.05 * p.std().nan_to_num() * torch.randn_like(p))
    return m


def _batch(m, n=2, seed=0):
    rng = np.random.default_rng(seed)
    views = [m.views({"image": rng.random((1, 64, 64), dtype=np.float32), "roi": (64, 64)}, rng) for _ in range(n)]
    return torch.utils.data.default_collate(views)


def _capture(m, monkeypatch):
    """Records what the step routes: the backbones' ``encode`` inputs and last maps, and the heads' (input, output)."""
    cap: dict[str, list] = {}

    def spy(module, key):
        real = module.encode

        def encode(x, *a, **k):
            out = real(x, *a, **k)
            cap.setdefault(key, []).append((x, out[-1]))
            return out

        monkeypatch.setattr(module, "encode", encode)

    spy(m.backbone, "enc_s")
    spy(m.teacher["backbone"], "enc_t")
    heads = {
        "head_s": m.dino_head,
        "head_t": m.teacher["dino_head"],
        "dense_s": m.dense_head,
        "dense_t": m.teacher["dense_head"],
        "dec": m.decompose,
        "comp": m.compose,
    }
    for key, mod in heads.items():
        mod.register_forward_hook(lambda _m, inp, out, key=key: cap.setdefault(key, []).append((inp[0], out)))
    return cap


def _masked_mean(tok, mask):
    w = mask.float()[..., None]
    return (tok * w).sum(1) / w.sum(1).clamp_min(1)


def _focal0(logits, target, alpha):
    """torchvision's sigmoid_focal_loss at gamma 0, written out: alpha_t * BCE-with-logits, mean over entries."""
    p = torch.sigmoid(logits)
    ce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    return ((alpha * target + (1 - alpha) * (1 - target)) * ce).mean()


# --- the data side: targets follow the crops actually drawn ---------------------------------------------------------
def _cells_from_content(v, cell, grid):
    """Canvas cell coordinates of every token, read off the crops' pixels: the image is a ramp whose channel 0 holds
    the pixel row + 0.5 and channel 1 the column + 0.5, so a token's mean value is its centre."""
    large = v["large"] * ace.NORM_STD + ace.NORM_MEAN
    small = v["small"] * ace.NORM_STD + ace.NORM_MEAN

    def token_means(img):
        return img.reshape(2, grid, cell, grid, cell).mean((2, 4))  # [2, G, G]

    s = torch.floor(token_means(small) / cell).long()  # small token (a, b): one cell
    l_ = torch.round(token_means(large) / cell).long() - 1  # large token (i, j): top-left of its 2 x 2 cells
    return s[0, :, 0], s[1, 0, :], l_[0, :, 0], l_[1, 0, :]


def _expected_targets(sy, sx, ly, lx, grid):
    """Masks and soft targets from cell coordinates alone (METHODS.md §5.4: Gaussian sigma 1, centre 1, 5 x 5 around
    the matching sub-part, 3 x 3 around the matching composite, zero rows outside the overlap)."""
    g = lambda d2: math.exp(-d2 / 2)  # noqa: E731
    inside_l = lambda y, x: ly[0] <= y < ly[-1] + 2 and lx[0] <= x < lx[-1] + 2  # noqa: E731
    inside_s = lambda y, x: sy[0] <= y <= sy[-1] and sx[0] <= x <= sx[-1]  # noqa: E731
    mask_s = torch.tensor([[inside_l(sy[a], sx[b]) for b in range(grid)] for a in range(grid)])
    mask_l = torch.tensor(
        [[inside_s(ly[i], lx[j]) and inside_s(ly[i] + 1, lx[j] + 1) for j in range(grid)] for i in range(grid)]
    )
    dec = torch.zeros(grid * grid, 4 * grid * grid)
    for a in range(grid):
        for b in range(grid):
            if not mask_s[a, b]:
                continue
            for p in range(2 * grid):
                for q in range(2 * grid):
                    dy, dx = sy[a] - (ly[p // 2] + p % 2), sx[b] - (lx[q // 2] + q % 2)
                    if abs(dy) <= 2 and abs(dx) <= 2:
                        dec[a * grid + b, p * 2 * grid + q] = g(dy * dy + dx * dx)
    h = grid // 2
    comp = torch.zeros(grid * grid, h * h)
    for i in range(grid):
        for j in range(grid):
            if not mask_l[i, j]:
                continue
            for u in range(h):
                for w in range(h):
                    dy, dx = (ly[i] - sy[2 * u]) // 2, (lx[j] - sx[2 * w]) // 2
                    if abs(dy) <= 1 and abs(dx) <= 1:
                        comp[i * grid + j, u * h + w] = g(dy * dy + dx * dx)
    return mask_l.reshape(-1), mask_s.reshape(-1), dec, comp


def test_targets_and_masks_follow_the_crops_drawn(monkeypatch):
    """With the canvas = the image (RandomResizedCrop stubbed) and no appearance change, each token's canvas cells
    are read off its pixels; masks and targets rebuilt from those alone equal the views'."""
    m = _method(augment=False)
    grid, cell, margin = 4, 16, 4
    side = (2 * grid + margin) * cell
    ramp = torch.arange(side, dtype=torch.float32) + 0.5
    img = torch.stack([ramp[:, None].expand(side, side), ramp[None, :].expand(side, side)]).numpy()
    monkeypatch.setattr(ace, "random_resized_crop", lambda im, size, scale, rng: im)
    seen = set()
    for seed in range(8):
        v = m.views({"image": img, "roi": (64, 64)}, np.random.default_rng(seed))
        sy, sx, ly, lx = (t.tolist() for t in _cells_from_content(v, cell, grid))
        assert sy == list(range(sy[0], sy[0] + grid)) and ly == list(range(ly[0], ly[0] + 2 * grid, 2))
        seen.add((sy[0] - ly[0], sx[0] - lx[0]))
        mask_l, mask_s, dec, comp = _expected_targets(sy, sx, ly, lx, grid)
        assert mask_l.any()
        assert torch.equal(v["mask_l"], mask_l) and torch.equal(v["mask_s"], mask_s)
        assert torch.allclose(v["target_dec"], dec) and torch.allclose(v["target_comp"], comp)
    assert len(seen) > 3  # several relative placements of the two crops were checked


# --- the step -----------------------------------------------------------------------------------------------------
def test_both_networks_see_both_crops_large_first(monkeypatch):
    m = _method()
    b = _batch(m)
    cap = _capture(m, monkeypatch)
    m.training_step(b, StepInfo(5, 10))
    x = torch.cat([b["large"], b["small"]])
    (xs, _), (xt, _) = cap["enc_s"][0], cap["enc_t"][0]
    assert len(cap["enc_s"]) == len(cap["enc_t"]) == 1
    assert torch.equal(xs, x) and torch.equal(xt, x)


def test_global_loss_is_the_centred_teachers_cross_entropy_across_crops(monkeypatch):
    """Overlap-pooled tokens into the heads; L_global = 1/2 [CE(P_t(L), P_s(S)) + CE(P_t(S), P_s(L))] with
    P_t = softmax((h_t - c) / tau_t) and log P_s = log_softmax(h_s / tau_s) at the configured temperatures."""
    m = _method()
    b = _batch(m)
    c0 = m.center.clone()
    cap = _capture(m, monkeypatch)
    out = m.training_step(b, StepInfo(5, 10))
    n = b["large"].shape[0]
    masks = torch.cat([b["mask_l"], b["mask_s"]])
    tok_s = cap["enc_s"][0][1].flatten(2).transpose(1, 2)
    tok_t = cap["enc_t"][0][1].flatten(2).transpose(1, 2)
    ((in_s, h_s),) = cap["head_s"]
    (in_t, h_t), (in_non, _) = cap["head_t"]
    assert torch.allclose(in_s, _masked_mean(tok_s, masks), atol=1e-6)
    assert torch.allclose(in_t, _masked_mean(tok_t, masks), atol=1e-6)
    assert torch.allclose(in_non, _masked_mean(tok_t, ~masks), atol=1e-6)
    p_t = F.softmax((h_t - c0) / SMALL["teacher_temp"], -1)
    log_p_s = F.log_softmax(h_s / SMALL["student_temp"], -1)
    large, small = slice(0, n), slice(n, 2 * n)
    ce = lambda t, s: -(p_t[t] * log_p_s[s]).sum(-1).mean()  # noqa: E731
    expect = 0.5 * (ce(large, small) + ce(small, large))
    assert torch.isclose(out.logs["global"], expect.detach(), rtol=1e-5)


def test_composition_and_decomposition_losses_use_the_right_tensors(monkeypatch):
    """Decompose(student L) against the teacher's small-crop tokens, compose(student S) against the teacher's
    large-crop tokens, each with its own target and alpha, at the configured logit scale."""
    m = _method()
    b = _batch(m)
    cap = _capture(m, monkeypatch)
    out = m.training_step(b, StepInfo(5, 10))
    n = b["large"].shape[0]
    ((fin_s, dense_s),) = cap["dense_s"]
    ((fin_t, dense_t),) = cap["dense_t"]
    assert torch.equal(fin_s, cap["enc_s"][0][1]) and torch.equal(fin_t, cap["enc_t"][0][1])
    ((dec_in, up),) = cap["dec"]
    ((comp_in, down),) = cap["comp"]
    assert torch.equal(dec_in, dense_s[:n]) and torch.equal(comp_in, dense_s[n:])
    s = SMALL["logit_scale"]
    l_dec = _focal0(s * dense_t[n:] @ up.transpose(1, 2), b["target_dec"], SMALL["alpha_dec"])
    l_comp = _focal0(s * dense_t[:n] @ down.transpose(1, 2), b["target_comp"], SMALL["alpha_comp"])
    assert torch.isclose(out.logs["dec"], l_dec.detach(), rtol=1e-5)
    assert torch.isclose(out.logs["comp"], l_comp.detach(), rtol=1e-5)


def test_each_weight_scales_exactly_its_term():
    m = _method()
    b = _batch(m)
    out = m.training_step(b, StepInfo(5, 10))
    g, d, c = out.logs["global"], out.logs["dec"], out.logs["comp"]
    assert torch.isclose(out.loss.detach(), SMALL["lambda_global"] * g + SMALL["lambda_local"] * 0.5 * (d + c))
    m.cfg.lambda_global += 0.5
    moved = m.training_step(b, StepInfo(5, 10)).loss.detach()
    assert torch.isclose(moved - out.loss.detach(), 0.5 * g, rtol=1e-4)
    m.cfg.lambda_global -= 0.5
    m.cfg.lambda_local += 0.5
    moved = m.training_step(b, StepInfo(5, 10)).loss.detach()
    assert torch.isclose(moved - out.loss.detach(), 0.5 * 0.5 * (d + c), rtol=1e-4)


def test_gradients_reach_the_student_only_and_each_term_its_heads(monkeypatch):
    m = _method()
    b = _batch(m)
    cap = _capture(m, monkeypatch)
    m.training_step(b, StepInfo(5, 10)).loss.backward()
    for key in ("enc_t", "head_t", "dense_t"):
        assert not any(out.requires_grad for _, out in cap[key]), key
    assert all(p.grad is None for p in m.teacher.parameters())
    for mod in (m.backbone, m.dino_head, m.dense_head, m.decompose, m.compose):
        assert all(p.grad is not None for p in mod.parameters() if p.requires_grad)
        assert sum(p.grad.abs().sum() for p in mod.parameters() if p.requires_grad) > 0
    # the global term alone reaches the DINO head, the local terms alone decompose and compose
    for weights, silent, live in (
        ({"lambda_local": 0.0}, (m.decompose, m.compose), m.dino_head),
        ({"lambda_global": 0.0}, (m.dino_head,), m.decompose),
    ):
        m.zero_grad()
        for k, v in weights.items():
            setattr(m.cfg, k, v)
        m.training_step(b, StepInfo(5, 10)).loss.backward()
        for mod in silent:
            assert all(p.grad is None or not p.grad.any() for p in mod.parameters())
        assert any(p.grad is not None and p.grad.any() for p in live.parameters())
        m.cfg.lambda_global, m.cfg.lambda_local = SMALL["lambda_global"], SMALL["lambda_local"]


def test_centre_moves_once_after_the_step_with_every_teacher_output(monkeypatch):
    """Mean of the overlap and non-overlap outputs of the teacher head, momentum as configured, applied in
    after_optimizer_step; two micro-batches of one step count as one batch."""
    m = _method()
    c0 = m.center.clone()
    cap = _capture(m, monkeypatch)
    b1, b2 = _batch(m, n=2, seed=0), _batch(m, n=3, seed=1)
    m.training_step(b1, StepInfo(5, 10))
    m.training_step(b2, StepInfo(5, 10))
    assert torch.equal(m.center, c0)
    m.after_optimizer_step(StepInfo(6, 10))
    outs = torch.cat([o for _, o in cap["head_t"]])  # overlap and non-overlap, both micro-batches: 4 + 6 rows
    assert outs.shape[0] == 2 * (4 + 6)
    mom = SMALL["center_momentum"]
    assert torch.allclose(m.center, mom * c0 + (1 - mom) * outs.mean(0, keepdim=True), atol=1e-6)
    c1 = m.center.clone()
    m.after_optimizer_step(StepInfo(7, 10))  # nothing pending: unchanged
    m.training_step(b1, StepInfo(7, 10))
    m.after_optimizer_step(StepInfo(9, 10))  # a stale step's outputs (step 7, not 8) are not applied
    assert torch.equal(m.center, c1)
    m.eval()
    m.training_step(b1, StepInfo(8, 10))  # an evaluation pass leaves the centre alone
    m.after_optimizer_step(StepInfo(9, 10))
    assert torch.equal(m.center, c1)


def engine_step(m, b, step, steps=10, grad_clip=0.8):
    """One step of the engine's own loop (backward, clipping, AdamW with weight decay 0.5, EMA, after_step) on ``m``
    (ACE here, DINO in tests/test_wiring_dino.py with its own clip)."""
    cfg = TrainConfig(steps=steps, lr=1e-2, weight_decay=0.5, grad_clip=grad_clip, amp=False, no_decay=("1d",))
    opt = build_optimizer(m.param_groups(cfg.weight_decay, cfg.no_decay), cfg, torch.device("cpu"))
    return train_step(
        m,
        m.training_step,
        iter([b]),
        opt,
        cfg,
        step,
        device=torch.device("cpu"),
        base_lrs=[g["lr"] for g in opt.param_groups],
        ema_pairs=m.ema_pairs(),
        ema_momentum=m.ema_momentum,
        after_step=m.after_optimizer_step,
    ), opt


def test_frozen_last_layer_has_no_gradient_and_adamw_with_weight_decay_leaves_it():
    """The code's cancel_gradients_last_layer sets .grad = None, so AdamW neither updates nor decays the layer; the
    engine's own step (backward, clipping, AdamW with weight decay 0.5, EMA, after_step) must leave it as it was."""
    m = _method(freeze_last_layer=0.15)
    b = _batch(m)
    v = m.dino_head.last_layer.weight_v
    before, other = v.detach().clone(), m.dino_head.layers[0].weight.detach().clone()
    res, opt = engine_step(m, b, 1)  # progress 0.1 < 0.15
    assert res.finite
    assert v.grad is None and v not in opt.state
    assert torch.equal(v, before)
    assert not torch.equal(m.dino_head.layers[0].weight, other)
    engine_step(m, b, 2)  # progress 0.2: the layer trains
    assert v.grad is not None and not torch.equal(v, before)


def test_heads_start_as_the_official_code_initialises_them():
    """DINO head: the code's DINOHead (trunc-normal std 0.02 Linear weights, zero biases, g = 1 and fixed); dense
    head: the code's DenseHead (kaiming_normal_ fan-out ReLU, BatchNorm 1 / 0); the teacher's a copy."""
    m = _method(diverge=False, hidden_dim=256, bottleneck_dim=128)
    dim = m.backbone.feature_dim
    convs = [mod for mod in m.dense_head.net if isinstance(mod, torch.nn.Conv2d)]
    bns = [mod for mod in m.dense_head.net if isinstance(mod, torch.nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 3
    for conv in convs:
        w = conv.weight.detach()
        assert abs(w.std().item() / math.sqrt(2 / dim) - 1) < 0.05 and abs(w.mean().item()) < 0.01
    for bn in bns:
        assert torch.equal(bn.weight, torch.ones(dim)) and torch.equal(bn.bias, torch.zeros(dim))
    linears = [mod for mod in m.dino_head.layers if isinstance(mod, torch.nn.Linear)]
    assert len(linears) == 3
    for lin in linears:
        w = lin.weight.detach()
        assert abs(w.std().item() / 0.02 - 1) < 0.1 and w.abs().max() <= 2.0
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    g = m.dino_head.last_layer.weight_g
    assert torch.equal(g, torch.ones_like(g)) and not g.requires_grad
    for (k, a), (_, t) in zip(m.dense_head.state_dict().items(), m.teacher["dense_head"].state_dict().items()):
        assert torch.equal(a, t), k


def test_stochastic_depth_on_the_student_only():
    assert METHODS.get("ace").Config().drop_path_rate == 0.1
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for budget in ("laptop", "quick", "paper"):
            cfg = compose(config_name="config", overrides=["method=ace", f"budget={budget}"])
            assert cfg.method.config.drop_path_rate == 0.1, budget
    m = _method(drop_path_rate=0.1)
    rates = [mod.drop_prob for mod in m.backbone.modules() if isinstance(mod, DropPath)]
    assert rates and max(rates) == pytest.approx(0.1)  # linear in depth: the last block at the full rate
    assert not any(isinstance(mod, DropPath) for mod in m.teacher.modules())
    assert not any(isinstance(mod, DropPath) for mod in _method(drop_path_rate=0.0).backbone.modules())
    x = torch.rand(2, 1, 64, 64)
    m.backbone.eval()
    ref = m.backbone.pooled(x)
    m.train()
    assert m.backbone.training and not m.teacher["backbone"].training
    assert not torch.allclose(m.backbone.pooled(x), ref)  # the student drops (or rescales) paths in training
    assert torch.equal(m.teacher["backbone"].pooled(x), m.teacher["backbone"].pooled(x))


def test_weight_decay_exemptions_match_the_official_param_groups():
    """The YAML's train.no_decay against the code's utils.get_params_groups (biases and 1-D parameters exempt)."""
    rule = tuple(OmegaConf.load(CONF / "method" / "ace.yaml").train.no_decay)
    m = _method()
    decay, exempt = m.param_groups(0.04, rule)
    official = {
        id(p) for n, p in m.named_parameters() if p.requires_grad and (n.endswith(".bias") or len(p.shape) == 1)
    }
    assert {id(p) for p in exempt["params"]} == official
    assert not official & {id(p) for p in decay["params"]}
