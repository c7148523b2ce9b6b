"""Wiring of ASA's training step (methods/asa.py, shared/METHODS.md §1): one real step per phase on a tiny Swin
UNETR, every loss term recomputed here from the step's own inputs and captured intermediates, never with the
method's helpers (permute_cells, coord_targets, overlap_masks, phase*_losses).

The teacher is perturbed away from the student before each step: at initialisation the two are equal, and a step
that swapped student and teacher outputs would compute the same numbers. The ROI (64, 32, 32) is not a cube, so a
grid of 4 x 2 x 2 sub-volumes tells the axes apart.

Swaps this module rules out (each injected alone into a scratch copy of methods/asa.py or
conf/method_budget/asa_paper.yaml; each turned this module red):

- phase 1: the order targets from the inverse permutation (argsort) instead of the one applied to the sub-volumes;
- phase 1: the target coordinates in (x, y, z) instead of (z, y, x) order;
- phase 1: the student encodes the original volume instead of the permuted one;
- phase 1: the recovery loss against the permuted volume instead of the original;
- phase 1: the decoder (recovery) run on the original volume instead of the permuted one;
- phase 1: the teacher fed the permuted volume at teacher_input=original;
- phase 1: the teacher fed the original volume at teacher_input=permuted;
- phase 1: the student's global embedding compared with itself instead of the teacher's;
- phase 1: the student's global embedding from the first token instead of the mean of the sub-volume tokens;
- phase 1: lambda_recovery and lambda_global swapped;
- phase 1: lambda_local instead of lambda_global on the global term;
- phase 2: the global loss pairs each student crop with the teacher's same crop instead of the other one;
- phase 2: the local loss pairs student and teacher tokens of the same crop;
- phase 2: the local loss on all tokens instead of the overlap ones (masks ignored);
- phase 2: the two overlap masks swapped (crop 2's applied to crop 1);
- phase 2: the teacher encodes the crops in the other order (crop 2 then crop 1);
- phase 2: the local-normalisation flag inverted;
- phase 2: the total without its 1/2;
- phase 2: lambda_global and lambda_local swapped;
- phase 2: the decoder and the recovery conv in the graph with weight 0 (as the code), so that they get gradients;
- both: the teacher backbone is the student's module (shared), so it gets gradients;
- schedule: the phase from ``total_steps``, or from ``step + 1``, instead of the optimizer step;
- drop path: the flag ignored (student without stochastic depth at 0.1);
- drop path: the teacher keeps the student's stochastic depth (the deep copy's, never removed);
- budget=paper: asa_paper.yaml with batch 2 instead of 12, or drop path 0 instead of 0.1.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import DropPath

from bench.backbones import build_backbone
from methods.asa import ASA
from methods.base import StepInfo

ROI = (64, 32, 32)
PATCH = 16
GRID = tuple(r // PATCH for r in ROI)  # (4, 2, 2)
P2 = (80, 48, 48)  # ROI * 1.25 rounded up to whole sub-volumes
WEIGHTS = {"lambda_order": 2.0, "lambda_recovery": 3.0, "lambda_global": 5.0, "lambda_local": 7.0}
BLOCK = 3  # optimizer steps per phase block (bind_corpus(6, 2))


def _method(**cfg) -> ASA:
    torch.manual_seed(0)
    bb = build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1))
    m = ASA(bb, ASA.make_config({"global_dim": 16, "local_dim": 8, **WEIGHTS, **cfg}))
    m.bind_corpus(6, 2)
    with torch.no_grad():  # a teacher equal to the student would hide which of the two feeds each term
        g = torch.Generator().manual_seed(1)
        for p in m.teacher.parameters():
            p.add_(0.2 * p.std().nan_to_num(0.0).clamp(min=0.02) * torch.randn(p.shape, generator=g))
    m.train()
    m.zero_grad(set_to_none=True)
    return m


def _batch(m: ASA, seed: int = 0) -> dict:
    """Two noise volumes through the method's own ``views``: every 16^3 cell holds different values."""
    rng = np.random.default_rng(seed)
    views = [m.views({"image": rng.random((1, 70, 40, 36), dtype=np.float32), "roi": ROI}, rng) for _ in range(2)]
    return torch.utils.data.default_collate(views)


def _cell(v: torch.Tensor, idx: int) -> torch.Tensor:
    """Cell ``idx`` (row-major over GRID) of v [C, *ROI]."""
    z, y, x = np.unravel_index(idx, GRID)
    return v[:, z * PATCH : (z + 1) * PATCH, y * PATCH : (y + 1) * PATCH, x * PATCH : (x + 1) * PATCH]


def _tokens(h: torch.Tensor) -> torch.Tensor:
    """[B, C, D, H, W] -> [B, D*H*W, C], written differently from the method's ``tokens``."""
    b, c = h.shape[:2]
    return h.permute(0, 2, 3, 4, 1).reshape(b, -1, c)


def _ncos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MSE of L2-normalised rows = mean over rows of (2 - 2 cos) / D."""
    return ((2 - 2 * F.cosine_similarity(a.double(), b.double(), dim=-1)) / a.shape[-1]).mean()


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).square().mean()


@contextmanager
def _record(m: ASA):
    """Inputs and outputs of every network call of one step: backbone encode/decode (student and teacher) and
    the heads, as lists in call order."""
    rec: dict[str, list] = {}
    undo = []

    def wrap(obj, name, key):
        orig = getattr(obj, name)

        def call(*args, **kw):
            out = orig(*args, **kw)
            rec.setdefault(key, []).append((args, out))
            return out

        setattr(obj, name, call)
        undo.append(lambda: delattr(obj, name))

    wrap(m.backbone, "encode", "s_encode")
    wrap(m.backbone, "decode", "s_decode")
    wrap(m.teacher["backbone"], "encode", "t_encode")
    wrap(m.teacher["backbone"], "decode", "t_decode")
    heads = {
        "order": m.order_head,
        "recovery": m.recovery_head,
        "s_global": m.proj_global,
        "s_local": m.proj_local,
        "t_global": m.teacher["proj_global"],
        "t_local": m.teacher["proj_local"],
    }
    for key, mod in heads.items():
        h = mod.register_forward_hook(lambda _m, i, o, key=key: rec.setdefault(key, []).append((i[0], o)))
        undo.append(h.remove)
    try:
        yield rec
    finally:
        for u in undo:
            u()


def _decoder_modules(m: ASA) -> list[torch.nn.Module]:
    return [mod for name, mod in m.backbone.net.named_children() if name != "swinViT"]


def _nonzero(mod: torch.nn.Module) -> bool:
    grads = [p.grad for p in mod.parameters()]
    return all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)


def _no_grad(mod: torch.nn.Module) -> bool:
    return all(p.grad is None for p in mod.parameters())


# --- phase 1 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("teacher_input", ["original", "permuted"])
def test_phase1_terms_targets_teacher_input_weights_and_gradients(teacher_input):
    m = _method(teacher_input=teacher_input)
    batch = _batch(m)
    x, perm = batch["image"], batch["perm"]
    assert x.shape == (2, 1, *ROI) and perm.shape == (2, math.prod(GRID))
    with _record(m) as rec:
        out = m.training_step(batch, StepInfo(BLOCK - 1, 100))  # the last step of the first phase-1 block
    assert out.logs["phase"] == 1 and out.logs["phase_block"] == BLOCK

    # the student's input: cell p holds the original cell perm[p], built here cell by cell
    ((s_args, s_hs),) = rec["s_encode"]
    aug = s_args[0]
    want_aug = torch.empty_like(x)
    for b in range(2):
        for p in range(perm.shape[1]):
            _cell(want_aug[b], p).copy_(_cell(x[b], int(perm[b, p])))
    assert torch.equal(aug, want_aug) and not torch.equal(aug, x)

    # order labels from the content the student actually sees: the source cell of every cell of aug, (z, y, x)
    n = perm.shape[1]
    target = torch.empty(2, n, 3)
    for b in range(2):
        for p in range(n):
            src = [q for q in range(n) if torch.equal(_cell(aug[b], p), _cell(x[b], q))]
            assert len(src) == 1
            target[b, p] = 6 * torch.tensor(np.unravel_index(src[0], GRID), dtype=torch.float32) / (max(GRID) - 1) - 3
    ((o_in, order),) = rec["order"]
    tok_s = _tokens(s_hs[3])
    assert torch.equal(o_in, tok_s)  # the per-sub-volume head reads the student's hs[3] tokens
    order_term = _mse(order, target)
    assert out.logs["p1_order"].item() == pytest.approx(order_term.item(), rel=1e-5)

    # appearance recovery: the decoder of the permuted input, compared with the ORIGINAL volume
    ((d_args, dec),) = rec["s_decode"]
    assert torch.equal(d_args[0], want_aug) and d_args[1] is s_hs
    ((r_in, restored),) = rec["recovery"]
    assert r_in is dec and restored.shape == x.shape
    recovery_term = _mse(restored, x)
    assert out.logs["p1_recovery"].item() == pytest.approx(recovery_term.item(), rel=1e-5)
    assert abs(_mse(restored, aug).item() - recovery_term.item()) > 1e-3  # the target choice shows in the value

    # global consistency: the student's permuted view against the teacher's configured input
    ((t_args, t_hs),) = rec["t_encode"]
    assert torch.equal(t_args[0], x if teacher_input == "original" else want_aug)
    assert "t_decode" not in rec and "s_local" not in rec and "t_local" not in rec
    ((gs_in, g_s),) = rec["s_global"]
    ((gt_in, g_t),) = rec["t_global"]
    assert torch.allclose(gs_in, tok_s.mean(1), atol=1e-6)
    assert torch.allclose(gt_in, _tokens(t_hs[3]).mean(1), atol=1e-6)
    assert not g_t.requires_grad
    global_term = _ncos(g_s, g_t)
    assert out.logs["p1_global"].item() == pytest.approx(global_term.item(), rel=1e-5)
    assert global_term.item() > 1e-3  # large enough for a swapped weight to show at the tolerance below

    # each lambda scales exactly its own term (2, 3, 5; lambda_local = 7 must not appear)
    total = 2 * order_term + 3 * recovery_term + 5 * global_term
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-6, abs=1e-6)

    # gradients: student encoder, decoder, order head, recovery conv and global projector; not the local
    # projector (phase 2's), never the teacher
    if teacher_input != "original":
        return  # the same graph as the default's
    out.loss.backward()
    assert _nonzero(m.backbone.encoder)
    for mod in (*_decoder_modules(m), m.order_head, m.recovery_head, m.proj_global):
        assert _nonzero(mod), mod
    assert _no_grad(m.proj_local)
    assert _no_grad(m.teacher)
    assert all(not p.requires_grad for p in m.teacher.parameters())


# --- phase 2 -------------------------------------------------------------------------------------------------
def _overlap_pairs(c1: list[int], c2: list[int]) -> tuple[list[int], list[int]]:
    """Token indices (row-major over GRID) of crop 1 and crop 2 that cover the same sub-volume of the phase-2
    volume, in crop 1's token order."""
    k1, k2 = [], []
    for k in range(math.prod(GRID)):
        cell = np.add(np.unravel_index(k, GRID), np.divide(c1, PATCH).astype(int))  # phase-2 cell of this token
        other = cell - np.divide(c2, PATCH).astype(int)
        if all(0 <= o < g for o, g in zip(other, GRID)):
            k1.append(k)
            k2.append(int(np.ravel_multi_index(tuple(int(o) for o in other), GRID)))
    return k1, k2


@pytest.mark.parametrize("normalize_local", [False, True])
def test_phase2_crops_pairing_overlap_tokens_weights_and_gradients(normalize_local):
    m = _method(normalize_local=normalize_local)
    batch = _batch(m)
    vol = batch["image_p2"]
    assert vol.shape == (2, 1, *P2)
    # two crops per volume with partial overlap along different axes (the views' draw could give equal crops)
    batch["corners"] = torch.tensor([[[0, 16, 0], [16, 0, 0]], [[16, 0, 16], [0, 0, 16]]])
    with _record(m) as rec:
        out = m.training_step(batch, StepInfo(BLOCK, 100))  # the first step of the first phase-2 block
    assert out.logs["phase"] == 2

    def cut(b, c):
        z, y, x = c
        return vol[b, :, z : z + ROI[0], y : y + ROI[1], x : x + ROI[2]]

    corners = batch["corners"].tolist()
    c1 = torch.stack([cut(b, corners[b][0]) for b in range(2)])
    c2 = torch.stack([cut(b, corners[b][1]) for b in range(2)])
    assert not torch.equal(c1, c2)
    ((s_args, s_hs),) = rec["s_encode"]
    ((t_args, t_hs),) = rec["t_encode"]
    assert torch.equal(s_args[0], torch.cat([c1, c2])) and torch.equal(t_args[0], torch.cat([c1, c2]))
    assert "s_decode" not in rec and "t_decode" not in rec and "order" not in rec and "recovery" not in rec

    tok_s, tok_t = _tokens(s_hs[3]), _tokens(t_hs[3])
    ((ls_in, l_s),) = rec["s_local"]
    ((lt_in, l_t),) = rec["t_local"]
    ((gs_in, g_s),) = rec["s_global"]
    ((gt_in, g_t),) = rec["t_global"]
    assert torch.equal(ls_in, tok_s) and torch.equal(lt_in, tok_t)
    assert torch.allclose(gs_in, tok_s.mean(1), atol=1e-6) and torch.allclose(gt_in, tok_t.mean(1), atol=1e-6)
    assert not l_t.requires_grad and not g_t.requires_grad

    # global: student crop 1 with teacher crop 2, student crop 2 with teacher crop 1, summed
    global_term = _ncos(g_s[:2], g_t[2:]) + _ncos(g_s[2:], g_t[:2])
    assert out.logs["p2_global"].item() == pytest.approx(global_term.item(), rel=1e-5)

    # local: exactly the tokens of the two crops that cover the same sub-volume, matched one to one
    rows = {"s1": [], "t2": [], "t1": [], "s2": []}
    for b in range(2):
        k1, k2 = _overlap_pairs(corners[b][0], corners[b][1])
        assert 0 < len(k1) < math.prod(GRID)  # a partial overlap: the masks matter
        for k, j in zip(k1, k2):  # the paired tokens' receptive sub-volumes are voxel-identical
            assert torch.equal(_cell(c1[b], k), _cell(c2[b], j))
        rows["s1"].append(l_s[b, k1])
        rows["t1"].append(l_t[b, k1])
        rows["s2"].append(l_s[2 + b, k2])
        rows["t2"].append(l_t[2 + b, k2])
    a1_s, a1_t, a2_s, a2_t = (torch.cat(rows[k]) for k in ("s1", "t1", "s2", "t2"))
    dist = _ncos if normalize_local else _mse
    local_term = 0.5 * (dist(a1_s, a2_t) + dist(a1_t, a2_s))
    assert out.logs["p2_local"].item() == pytest.approx(local_term.item(), rel=1e-5)
    assert global_term.item() > 1e-3 and local_term.item() > 1e-3

    # (lambda_global * global + lambda_local * local) / 2 with 5 and 7; lambda_order and lambda_recovery unused
    total = (5 * global_term + 7 * local_term) / 2
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-6, abs=1e-6)

    # gradients: the student's encoder up to hs[3] and both projectors; not the last Swin stage (hs[4] feeds only
    # the decoder), the decoder, the order head or the recovery conv (outside phase 2's graph), never the teacher
    if normalize_local:
        return  # the same graph as the default's
    out.loss.backward()
    vit = m.backbone.encoder
    for mod in (vit.patch_embed, vit.layers1, vit.layers2, vit.layers3, m.proj_global, m.proj_local):
        assert _nonzero(mod), mod
    for mod in (vit.layers4, *_decoder_modules(m), m.order_head, m.recovery_head, m.teacher):
        assert _no_grad(mod), mod


# --- schedule ------------------------------------------------------------------------------------------------
def test_phase_is_the_optimizer_steps_block(monkeypatch):
    """Blocks of floor(corpus / volumes per step) optimizer steps, phase 1 first, whatever total_steps says."""
    m = ASA(build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1)), ASA.make_config({"global_dim": 8, "local_dim": 8}))
    m.bind_corpus(7, 2)  # floor(7 / 2) = 3
    monkeypatch.setattr(m, "_phase1", lambda batch: (torch.tensor(1.0), {}))
    monkeypatch.setattr(m, "_phase2", lambda batch: (torch.tensor(2.0), {}))
    for total in (5, 12, 1000):
        got = [m.training_step({}, StepInfo(s, total)).logs["phase"] for s in range(12)]
        assert got == [1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2]


# --- stochastic depth ----------------------------------------------------------------------------------------
def _drop_rates(module: torch.nn.Module) -> list[float]:
    return [mod.drop_prob for mod in module.modules() if isinstance(mod, DropPath)]


def test_drop_path_rate_is_the_students_only():
    bb = build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1))
    kwargs = bb.build_kwargs()
    m = ASA(bb, ASA.make_config({"global_dim": 8, "local_dim": 8, "drop_path_rate": 0.1}))
    # linear in depth over the 4 blocks, as the code's MONAI dropout_path_rate=0.1 (block 0 at 0: no module)
    assert _drop_rates(m.backbone) == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    assert _drop_rates(m.teacher) == [] and _drop_rates(m.export_encoder()) == []
    assert m.export_encoder().build_kwargs() == kwargs  # the export rebuilds without it
    m.train()
    assert m.backbone.training and not m.teacher.training
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.manual_seed(1)
        a = m.backbone.encode(x)[4]
        torch.manual_seed(2)
        b = m.backbone.encode(x)[4]
    assert not torch.allclose(a, b)  # the student drops paths in training

    tiny = build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1))
    plain = ASA(tiny, ASA.make_config({"global_dim": 8, "local_dim": 8}))
    assert _drop_rates(plain) == []  # default 0: the smaller budgets run without it
    with pytest.raises(ValueError, match="drop_path_rate"):
        ASA(build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1)), ASA.make_config({"drop_path_rate": 1.0}))


# --- budget=paper composes the official recipe ---------------------------------------------------------------
def test_paper_budget_composes_batch_12_roi_128_drop_path_and_the_codes_lr(tmp_path):
    from bench.engine import schedule_config
    from bench.plan import compose, make_plan

    def plan(*overrides):
        return make_plan(compose(["method=asa", "suite=smoke", f"runs_dir={tmp_path}", *overrides]))

    paper, quick = plan("budget=paper"), plan("budget=quick")
    assert paper.pretrain_batch == 12
    assert paper.method_cfg["roi"] == [128, 128, 128] and paper.method_cfg["drop_path_rate"] == 0.1
    assert schedule_config(paper.method_train, paper.pretrain_steps, paper.pretrain_batch).lr == pytest.approx(1e-3)
    assert "lr_reference_batch" not in paper.method_train  # the code's lr at the code's batch: no rescaling
    assert paper.backbone == "swin_unetr_base"
    ASA.make_config(paper.method_cfg)

    # the method YAML and the budget files, changed only where meant: quick keeps asa_quick.yaml's EMA momentum
    # and no stochastic depth; paper gets the code's geometry, stochastic depth and batch
    from omegaconf import OmegaConf

    from bench.plan import CONF_DIR

    yaml = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "asa.yaml"))
    assert quick.method_cfg == yaml["config"] | {"ema_momentum": 0.99}
    assert paper.method_cfg == yaml["config"] | {"roi": [128, 128, 128], "drop_path_rate": 0.1}
    assert quick.method_train == paper.method_train == yaml["train"]
    for name, batch in (("quick", 2), ("paper", 12)):
        budget = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "budget" / f"{name}.yaml"))
        assert OmegaConf.to_container(compose(["method=asa", f"budget={name}"]).budget.pretrain) == budget[
            "pretrain"
        ] | {"batch_size": batch}
    assert quick.pretrain_batch == 2

    # the command line wins, and the batch is ASA's only
    mine = plan("budget=paper", "budget.pretrain.batch_size=2", "method.config.drop_path_rate=0.0")
    assert mine.pretrain_batch == 2 and mine.method_cfg["drop_path_rate"] == 0.0
    other = make_plan(compose(["method=simmim3d", "suite=smoke", "budget=paper", f"runs_dir={tmp_path}"]))
    assert other.pretrain_batch == 2
