"""Wiring of ``swinunetr_ssl``'s training step (methods/swinunetr_ssl.py, shared/METHODS.md §3): a real step on
a tiny Swin UNETR (and, where the backbone does not matter, steps on the stand-in of tests/test_swinunetr_ssl.py),
each loss term recomputed here from the step's own input and captured intermediates (the two rotated views, the
cut-out views, the encoder's hs[4]), with numpy rotations and a numpy NT-Xent, never with the method's helpers
(rotate, nt_xent, tokens, SSLHeads' token picks).

The rotation actually applied to each view is read off the tensors (the k for which numpy's rot90 of the crop in
the configured plane gives the view), not taken from ``rot_rand``'s labels. The ROI is not a cube, so a rotation
in the wrong plane cannot match; the fixed seed draws four different rotations for the 2 crops x 2 views. The
temperature (0.3) and the loss weights (0.7 / 1.3 / 2.1) are not the defaults, so that a hard-coded value or two
weights swapped change the total.

Swaps this module rules out (each injected alone into a scratch copy of methods/swinunetr_ssl.py or
methods/_swin_ssl.py; each turned it red):

- rotation: the CE targets of the two views swapped (cat([k2, k1]));
- rotation: the label is k but the view is rotated by -k (rot90 in the other direction);
- rotation: the configured axis ignored (always about the first spatial axis);
- rotation: both views share one rotation (k2 = k1);
- cutout: view 1 cut out from the second rotated view (aug_rand(x2) for v1);
- cutout: the order reversed (cut out the crop, then rotate);
- cutout: the encoder fed the rotated views without cutout;
- cutout: done in place on the rotated view (no copy), so the target is cut out too;
- reconstruction: the target is the cut-out views (v1, v2) instead of the rotated ones (x1, x2);
- reconstruction: the target is the un-rotated crop;
- reconstruction: the targets of the two views swapped;
- contrastive: the positive of crop i's view 1 is another crop's view 2 (z2 rolled by one);
- contrastive: the temperature hard-coded at 0.5 instead of the configured one;
- heads: the contrastive head reads token 0 (the rotation head's) instead of token 1;
- weights: w_rot and w_con swapped;
- gradients: the encoder output detached (nothing reaches the backbone);
- gradients: the reconstruction head fed detached tokens (its term alone does not reach the backbone).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import methods.swinunetr_ssl as mod
from bench.backbones import build_backbone
from methods.base import StepInfo
from methods.swinunetr_ssl import SwinUNETRSSL
from tests.test_swinunetr_ssl import StubBackbone

#: a non-cubic ROI per axis: the rotation plane square, the third side different
ROIS = {"x": (64, 32, 32), "z": (32, 32, 64)}
#: rotation plane per axis, as numpy axes of one [C, X, Y, Z] crop
PLANES = {"x": (2, 3), "z": (1, 2)}
WEIGHTS = {"w_rot": 0.7, "w_con": 1.3, "w_rec": 2.1}
TAU = 0.3
SEED = 3  # torch's seed for the step: rotations (k1, k2) = ([1, 2], [3, 0]), all four different


def _method(axis: str = "x", real: bool = True, **cfg) -> SwinUNETRSSL:
    torch.manual_seed(0)
    bb = build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1)) if real else StubBackbone()
    m = SwinUNETRSSL(
        bb, SwinUNETRSSL.make_config({"rotation_axis": axis, "tau": TAU, "proj_dim": 32, **WEIGHTS, **cfg})
    )
    m.train()
    return m


def _batch(axis: str, crops_per_volume: int = 1) -> dict:
    g = torch.Generator().manual_seed(7)
    shape = (2, 1, *ROIS[axis]) if crops_per_volume == 1 else (1, crops_per_volume, 1, *ROIS[axis])
    return {"image": torch.rand(shape, generator=g)}


@contextmanager
def _captured(m: SwinUNETRSSL, monkeypatch: pytest.MonkeyPatch):
    """Records every rot_rand, aug_rand and encode call of the step: inputs and outputs, copied when made."""
    seen: dict[str, list] = {"rot": [], "aug": [], "encode": []}
    rot_rand, aug_rand, encode = mod.rot_rand, mod.aug_rand, m.backbone.encode

    def rot(xs, rng, axis="x"):
        ins = [x.detach().clone() for x in xs]
        out, k = rot_rand(xs, rng, axis)
        seen["rot"].append((ins, [o.detach().clone() for o in out]))
        return out, k

    def aug(x, rng, spec=None):
        before = x.detach().clone()
        out, records = aug_rand(x, rng, spec)
        seen["aug"].append((before, out.detach().clone()))
        return out, records

    def enc(x, *a, **kw):
        hs = encode(x, *a, **kw)
        seen["encode"].append((x.detach().clone(), [h.detach().clone() for h in hs]))
        return hs

    monkeypatch.setattr(mod, "rot_rand", rot)
    monkeypatch.setattr(mod, "aug_rand", aug)
    monkeypatch.setattr(m.backbone, "encode", enc)
    yield seen
    monkeypatch.undo()


def _step(m: SwinUNETRSSL, batch: dict, monkeypatch: pytest.MonkeyPatch, seed: int = SEED):
    with _captured(m, monkeypatch) as seen:
        torch.manual_seed(seed)
        out = m.training_step(batch, StepInfo(0, 1))
    return out, seen


def _applied_rotation(x: torch.Tensor, view: torch.Tensor, axis: str) -> list[int]:
    """Per crop, the k with rot90(crop, k) == view in the axis's plane (numpy); fails unless exactly one fits."""
    ks = []
    for a, b in zip(x.numpy(), view.numpy()):
        fits = [k for k in range(4) if np.rot90(a, k, axes=PLANES[axis]).shape == b.shape]
        fits = [k for k in fits if np.array_equal(np.rot90(a, k, axes=PLANES[axis]), b)]
        assert len(fits) == 1, f"the view is no rot90 of its crop in the {axis} plane (fits: {fits})"
        ks.append(fits[0])
    return ks


def _rotated(x: torch.Tensor, ks: list[int], axis: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.rot90(a, k, axes=PLANES[axis]).copy() for a, k in zip(x.numpy(), ks)]))


def _nt_xent_np(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """SimCLR over 2N rows: row i's positive is row (i + N) mod 2N, its denominator every other row."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        sims = np.array([z[i] @ z[j] / tau for j in range(n2) if j != i])
        pos = z[i] @ z[(i + n2 // 2) % n2] / tau
        total += np.log(np.exp(sims).sum()) - pos
    return total / n2


def _recompute(m: SwinUNETRSSL, batch: dict, seen: dict, axis: str) -> dict:
    """Every routing check on the captured tensors, and the three terms recomputed from them."""
    x = batch["image"].flatten(0, 1) if batch["image"].ndim == 6 else batch["image"]
    n = x.shape[0]
    assert len(seen["rot"]) == 2 and len(seen["aug"]) == 2 and len(seen["encode"]) == 1
    (in1, (r1,)), (in2, (r2,)) = [(ins, outs) for ins, outs in seen["rot"]]
    assert torch.equal(in1[0], x) and torch.equal(in2[0], x), "each view is a rotation of the step's crops"
    k1, k2 = _applied_rotation(x, r1, axis), _applied_rotation(x, r2, axis)
    assert k1 != k2 and len(set(k1)) == n and any(k % 2 for k in k1 + k2), "the seed no longer tells views apart"
    x1, x2 = _rotated(x, k1, axis), _rotated(x, k2, axis)
    (a1, v1), (a2, v2) = seen["aug"]
    assert torch.equal(a1, x1) and torch.equal(a2, x2), "view k is cut out from rotated view k"
    enc_in, hs = seen["encode"][0]
    assert torch.equal(enc_in, torch.cat([v1, v2])), "the encoder sees the cut-out views, view 1 then view 2"
    assert not torch.equal(v1, x1) and not torch.equal(v2, x2), "the cutout changed nothing"
    hs4 = hs[4]
    flat = hs4.flatten(2)  # token t = hs4 voxel t in (h, w, d) row-major order
    heads = m.heads
    with torch.no_grad():
        logits = F.linear(flat[:, :, 0], heads.rotation_head.weight, heads.rotation_head.bias)
        z = F.linear(flat[:, :, 1], heads.contrastive_head.weight, heads.contrastive_head.bias)
        rec = heads.conv(hs4)
    rot = F.cross_entropy(logits, torch.tensor(k1 + k2))
    con = _nt_xent_np(z[:n].numpy(), z[n:].numpy(), m.cfg.tau)
    recon = (rec - torch.cat([x1, x2])).abs().mean()
    return {"loss_rot": float(rot), "loss_con": con, "loss_rec": float(recon)}


@pytest.fixture(scope="module")
def real_step():
    """One step of the real tiny Swin UNETR (about the first spatial axis), its captures, after backward."""
    m, batch = _method("x"), _batch("x")
    with pytest.MonkeyPatch.context() as mp:
        out, seen = _step(m, batch, mp)
    out.loss.backward()
    return m, batch, out, seen


def _check_terms(m: SwinUNETRSSL, batch: dict, out, seen: dict, axis: str) -> None:
    terms = _recompute(m, batch, seen, axis)
    for name, value in terms.items():
        assert float(out.logs[name]) == pytest.approx(value, rel=1e-5, abs=1e-6), name
    w = m.cfg
    total = w.w_rot * terms["loss_rot"] + w.w_con * terms["loss_con"] + w.w_rec * terms["loss_rec"]
    assert out.loss.item() == pytest.approx(total, rel=1e-5)


def test_each_term_is_recomputed_from_the_views_it_should_read(real_step):
    m, batch, out, seen = real_step
    _check_terms(m, batch, out, seen, "x")


@pytest.mark.parametrize("axis,crops", [pytest.param("z", 1, id="axis-z"), pytest.param("x", 2, id="2-crops")])
def test_the_same_routing_about_the_z_axis_and_with_two_crops_per_volume(axis, crops, monkeypatch):
    """On the stand-in backbone (the routing does not depend on it): the paper's axis, and N = B x 2 crops."""
    m = _method(axis, real=False, crops_per_volume=crops)
    batch = _batch(axis, crops)
    out, seen = _step(m, batch, monkeypatch)
    _check_terms(m, batch, out, seen, axis)


def test_each_weight_scales_exactly_its_term(monkeypatch):
    m = _method(real=False)
    batch = _batch("x")
    base, _ = _step(m, batch, monkeypatch)
    cfg = m.cfg
    for weight, term in (("w_rot", "loss_rot"), ("w_con", "loss_con"), ("w_rec", "loss_rec")):
        m.cfg = dataclasses.replace(cfg, **{weight: WEIGHTS[weight] + 0.5})
        moved, _ = _step(m, batch, monkeypatch)
        assert moved.loss.item() - base.loss.item() == pytest.approx(0.5 * float(base.logs[term]), rel=1e-4), weight
        for t in ("loss_rot", "loss_con", "loss_rec"):
            assert float(moved.logs[t]) == pytest.approx(float(base.logs[t]), rel=1e-6)  # same draws, same terms


HEADS = {"w_rot": "rotation_head", "w_con": "contrastive_head", "w_rec": "conv"}


def _grads(m: SwinUNETRSSL) -> tuple[list[str], list[str], list[str]]:
    """(encoder parameters without a nonzero gradient, other backbone parameters with a gradient, the heads with a
    nonzero one)."""
    enc = [n for n, p in m.backbone.encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    enc_ids = {id(p) for p in m.backbone.encoder.parameters()}
    rest = [n for n, p in m.backbone.named_parameters() if id(p) not in enc_ids and p.grad is not None]
    heads = sorted(
        h
        for h in HEADS.values()
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(m.heads, h).parameters())
    )
    return enc, rest, heads


def test_the_loss_reaches_every_encoder_and_head_parameter_and_not_the_unetr_decoder(real_step):
    m = real_step[0]
    enc, rest, heads = _grads(m)
    assert enc == [], f"encoder parameters without gradient: {enc}"
    assert rest == [], f"the UNETR decoder (no part of the SSL model) got gradients: {rest}"
    assert heads == sorted(HEADS.values())
    for name, p in m.heads.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("alone", list(HEADS))
def test_each_term_alone_reaches_the_encoder_through_its_own_head(alone, monkeypatch):
    m = _method(real=False, **{w: (1.0 if w == alone else 0.0) for w in HEADS})
    out, _ = _step(m, _batch("x"), monkeypatch)
    out.loss.backward()
    enc, _, heads = _grads(m)
    assert enc == [] and heads == [HEADS[alone]], (enc, heads)
