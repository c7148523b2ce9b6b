"""Wiring of DINO's training step (issue 29; official main_dino.py): which crops each network sees, the loss
recomputed by the test from the captured head outputs, the centre and its update after the optimizer step, the
temperatures, the frozen last layer under the engine's AdamW step, the stochastic depth and the weight-decay rule.

Swaps ruled out: each was injected alone into a scratch copy of methods/dino.py (or conf/method/dino.yaml) and
turned this module red.
- the teacher fed the local crops instead of the global ones
- the global crops flattened image-major (no transpose: rows b0c0, b0c1, b1c0, ...), so crops and images mix
- the student's local crops left out of the loss
- the same-crop pairs (i == j) included
- the loss summed over the pairs instead of averaged (or averaged over all T x S pairs)
- the teacher's output not centred
- the centre subtracted from the student's output instead of the teacher's
- student and teacher temperatures swapped
- the centre's batch mean from the student's outputs
- the centre's momentum reversed (centre * (1 - m) + mean * m)
- the centre moved inside training_step (before the optimizer step)
- the frozen last layer's gradient zeroed (the former hook) instead of kept out of the graph
- the last layer frozen whatever the progress (``<`` replaced by ``<=`` 1.0)
- drop_path_rate ignored (set_drop_path not called on the student)
- stochastic depth left on the teacher (the student's set before the deep copy, the teacher's not removed)
- drop_path_rate 0.0 in conf/method/dino.yaml (the official 0.1 lost)
- train.no_decay [] (everything decayed) in conf/method/dino.yaml
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from timm.layers import DropPath

from bench.backbones import build_backbone
from bench.registry import METHODS
from methods.base import StepInfo
from test_wiring_ace import engine_step  # the engine's own step, with DINO's clip 3.0

CONF = Path(__file__).resolve().parent.parent / "conf"
SMALL = {
    "out_dim": 64,
    "hidden_dim": 32,
    "bottleneck_dim": 16,
    "n_local": 3,
    "student_temp": 0.2,
    "teacher_temp": 0.05,
    "center_momentum": 0.8,
    "drop_path_rate": 0.0,  # deterministic student: a re-run step gives the same tensors
}


def _method(diverge=True, **over):
    """``diverge``: the teacher's weights moved off the student's (as after some EMA steps), so that the test tells
    whose tensors a step used."""
    torch.manual_seed(0)
    bb = build_backbone("vit_tiny_2d", img_size=64, depth=2)
    cls = METHODS.get("dino")
    m = cls(bb, cls.make_config({**SMALL, **over}))
    m.train()
    with torch.no_grad():
        m.criterion.center.normal_()  # a non-zero centre, so that centring shows
        for p in m.teacher.parameters() if diverge else ():
            p.add_(0.05 * p.std().nan_to_num() * torch.randn_like(p))
    return m


def _batch(m, n=2, seed=0):
    rng = np.random.default_rng(seed)
    views = [m.views({"image": rng.random((1, 64, 64), dtype=np.float32), "roi": (64, 64)}, rng) for _ in range(n)]
    return torch.utils.data.default_collate(views)


def _capture(m, monkeypatch):
    """The backbones' ``pooled`` inputs and the heads' outputs, in call order."""
    cap: dict[str, list] = {}
    for key, bb in (("pool_s", m.backbone), ("pool_t", m.teacher["backbone"])):
        real = bb.pooled

        def pooled(x, real=real, key=key):
            cap.setdefault(key, []).append(x)
            return real(x)

        monkeypatch.setattr(bb, "pooled", pooled)
    for key, head in (("head_s", m.head), ("head_t", m.teacher["head"])):
        head.register_forward_hook(lambda _m, _i, out, key=key: cap.setdefault(key, []).append(out))
    return cap


def test_teacher_sees_the_global_crops_only_and_the_student_every_crop(monkeypatch):
    m = _method()
    b = _batch(m)
    cap = _capture(m, monkeypatch)
    m.training_step(b, StepInfo(5, 10))
    glob, loc = b["global"], b["local"]  # [B, 2, ...], [B, n, ...]
    globals_ = torch.cat([glob[:, 0], glob[:, 1]])  # crop-major: every image's crop 1, then crop 2
    locals_ = torch.cat([loc[:, j] for j in range(loc.shape[1])])
    assert len(cap["pool_t"]) == 1 and torch.equal(cap["pool_t"][0], globals_)
    assert len(cap["pool_s"]) == 2
    assert torch.equal(cap["pool_s"][0], globals_) and torch.equal(cap["pool_s"][1], locals_)


def test_loss_is_the_mean_over_cross_crop_pairs_of_the_centred_teachers_cross_entropy(monkeypatch):
    """main_dino.py's DINOLoss: sum over (teacher crop i, student crop j), j != i, of
    CE(softmax((t_i - c) / tau_t), log_softmax(s_j / tau_s)), each a batch mean, divided by the number of pairs."""
    m = _method()
    b = _batch(m)
    c0 = m.criterion.center.clone().reshape(1, -1)
    cap = _capture(m, monkeypatch)
    loss = m.training_step(b, StepInfo(5, 10)).loss
    n = b["global"].shape[0]
    (t,) = cap["head_t"]
    s = torch.cat(cap["head_s"])  # globals then locals, crop-major
    teacher = [t[i * n : (i + 1) * n] for i in range(2)]
    student = [s[j * n : (j + 1) * n] for j in range(2 + SMALL["n_local"])]
    terms = [
        -(
            F.softmax((teacher[i] - c0) / SMALL["teacher_temp"], -1)
            * F.log_softmax(student[j] / SMALL["student_temp"], -1)
        )
        .sum(-1)
        .mean()
        for i in range(2)
        for j in range(len(student))
        if i != j
    ]
    assert len(terms) == 2 * (2 + SMALL["n_local"]) - 2
    assert torch.isclose(loss.detach(), torch.stack(terms).mean().detach(), rtol=1e-5)


def test_gradients_reach_the_student_only(monkeypatch):
    m = _method()
    cap = _capture(m, monkeypatch)
    m.training_step(_batch(m), StepInfo(5, 10)).loss.backward()
    assert not cap["head_t"][0].requires_grad
    assert all(p.grad is None for p in m.teacher.parameters())
    for mod in (m.backbone, m.head):
        assert all(p.grad is not None for p in mod.parameters() if p.requires_grad)
        assert sum(p.grad.abs().sum() for p in mod.parameters() if p.requires_grad) > 0


def test_centre_moves_after_the_step_with_the_teachers_outputs(monkeypatch):
    """Momentum as configured on the mean teacher output; applied in after_optimizer_step, once per optimizer step
    (two micro-batches of one step count as one batch); a stale or evaluation pass leaves it alone."""
    m = _method()
    c0 = m.criterion.center.clone()
    cap = _capture(m, monkeypatch)
    b1, b2 = _batch(m, n=2, seed=0), _batch(m, n=3, seed=1)
    m.training_step(b1, StepInfo(5, 10))
    m.training_step(b2, StepInfo(5, 10))
    assert torch.equal(m.criterion.center, c0)
    m.after_optimizer_step(StepInfo(6, 10))
    t = torch.cat(cap["head_t"])
    assert t.shape[0] == 2 * (2 + 3)
    mom = SMALL["center_momentum"]
    assert torch.allclose(m.criterion.center, mom * c0 + (1 - mom) * t.mean(0), atol=1e-6)
    c1 = m.criterion.center.clone()
    m.training_step(b1, StepInfo(7, 10))
    m.after_optimizer_step(StepInfo(9, 10))  # step 7's outputs are not step 8's
    m.eval()
    m.training_step(b1, StepInfo(9, 10))
    m.after_optimizer_step(StepInfo(10, 10))
    assert torch.equal(m.criterion.center, c1)


def test_frozen_last_layer_has_no_gradient_and_adamw_with_weight_decay_leaves_it():
    """main_dino.py's cancel_gradients_last_layer sets .grad = None for the first epoch, so AdamW neither updates
    nor decays the layer; the engine's own step (AdamW, weight decay 0.5) must leave it as it was."""
    m = _method(freeze_last_layer=0.15)
    b = _batch(m)
    v = m.head.last_layer.weight_v
    before, other = v.detach().clone(), m.head.layers[0].weight.detach().clone()
    res, opt = engine_step(m, b, 1, grad_clip=3.0)  # progress 0.1 < 0.15
    assert res.finite
    assert v.grad is None and v not in opt.state
    assert torch.equal(v, before)
    assert not torch.equal(m.head.layers[0].weight, other)
    engine_step(m, b, 2, grad_clip=3.0)  # progress 0.2: the layer trains
    assert v.grad is not None and not torch.equal(v, before)


def test_head_starts_as_the_official_dino_head():
    m = _method(diverge=False, hidden_dim=256, bottleneck_dim=128)
    for lin in (mod for mod in m.head.layers if isinstance(mod, torch.nn.Linear)):
        assert abs(lin.weight.detach().std().item() / 0.02 - 1) < 0.1
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    g = m.head.last_layer.weight_g
    assert torch.equal(g, torch.ones_like(g)) and not g.requires_grad


def test_stochastic_depth_on_the_student_only():
    """main_dino.py: drop_path_rate 0.1 on the student, the teacher without; the official value at every budget."""
    assert METHODS.get("dino").Config().drop_path_rate == 0.1
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for budget in ("laptop", "quick", "paper"):
            cfg = compose(config_name="config", overrides=["method=dino", f"budget={budget}"])
            assert cfg.method.config.drop_path_rate == 0.1, budget
    m = _method(drop_path_rate=0.1)
    rates = [mod.drop_prob for mod in m.backbone.modules() if isinstance(mod, DropPath)]
    assert rates and max(rates) == pytest.approx(0.1)
    assert not any(isinstance(mod, DropPath) for mod in m.teacher.modules())
    assert not any(isinstance(mod, DropPath) for mod in m.export_encoder().modules())
    assert not any(isinstance(mod, DropPath) for mod in _method(drop_path_rate=0.0).backbone.modules())
    x = torch.rand(2, 1, 64, 64)
    m.backbone.eval()
    ref = m.backbone.pooled(x)
    m.train()
    assert m.backbone.training and not m.teacher["backbone"].training
    assert not torch.allclose(m.backbone.pooled(x), ref)  # the student drops (or rescales) paths in training
    assert torch.equal(m.teacher["backbone"].pooled(x), m.teacher["backbone"].pooled(x))


def test_weight_decay_exemptions_match_the_official_param_groups():
    """The YAML's train.no_decay against main_dino.py's utils.get_params_groups (biases and 1-D parameters)."""
    rule = tuple(OmegaConf.load(CONF / "method" / "dino.yaml").train.no_decay)
    m = _method()
    decay, exempt = m.param_groups(0.04, rule)
    official = {
        id(p) for n, p in m.named_parameters() if p.requires_grad and (n.endswith(".bias") or len(p.shape) == 1)
    }
    assert {id(p) for p in exempt["params"]} == official
    assert not official & {id(p) for p in decay["params"]}
