"""The contract every registered method must keep (parametrized over the registry, timm style)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.backbones import build_backbone
from bench.export import load_export, save_export
from bench.registry import METHODS
from methods.base import StepInfo

ROI = (64, 64, 64)


def _make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    cls = METHODS.get(name)
    # one block per stage: the same modules and wiring at half the CPU cost of the (2,2,2,2) default
    bb = build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1))
    return cls(bb, cls.make_config({}))


def _batch(method, n: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vol = rng.random((1, 72, 70, 66), dtype=np.float32)
    views = [method.views({"image": vol, "roi": ROI}, rng) for _ in range(n)]
    return torch.utils.data.default_collate(views)


@pytest.mark.parametrize("name", METHODS.names())
def test_export_roundtrip_strict(name, tmp_path):
    m = _make(name)
    if getattr(m, "requires_checkpoint", False):
        pytest.skip("exports only with a user-supplied checkpoint (tests/test_external.py covers it)")
    enc = m.export_encoder()
    save_export(enc, tmp_path / "e.pt", {"method": name})
    bb, meta = load_export(tmp_path / "e.pt")
    assert meta["method"] == name and meta["backbone"] == "swin_unetr_tiny" and meta["backbone_kwargs"]["depths"] == (1, 1, 1, 1)
    for (k, a), (k2, b) in zip(enc.state_dict().items(), bb.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


@pytest.mark.parametrize("name", METHODS.names(tag="3d"))
def test_training_step_contract(name):
    m = _make(name)
    if not m.pretrains:
        pytest.skip("baseline without pretraining")
    m.train()
    out = m.training_step(_batch(m), StepInfo(0, 10))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    enc_grads = [p.grad for p in m.backbone.encoder.parameters() if p.grad is not None]
    assert enc_grads and any(g.abs().sum() > 0 for g in enc_grads), "no gradient reaches the encoder"
    groups = m.param_groups(0.05)
    in_opt = {id(p) for g in groups for p in g["params"]}
    for _, teacher in m.ema_pairs():
        for p in teacher.parameters():
            assert not p.requires_grad and p.grad is None
            assert id(p) not in in_opt, "a teacher parameter is in the optimizer"
    # every trainable parameter is optimised exactly once
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert sorted(map(id, trainable)) == sorted(id(p) for g in groups for p in g["params"])


@pytest.mark.parametrize("name", METHODS.names())
def test_state_dict_roundtrip(name):
    a, b = _make(name, seed=0), _make(name, seed=1)
    b.load_state_dict(a.state_dict(), strict=True)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_fused_window_attention_equals_monai():
    """The SDPA window attention computes MONAI's function (outputs and gradients)."""
    x = torch.rand(1, 1, 64, 64, 64)
    outs, grads = [], []
    for fused in (False, True):
        torch.manual_seed(0)
        bb = build_backbone("swin_unetr_tiny", fused_attention=fused)
        y = bb(x)
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append(bb.net.swinViT.layers1[0].blocks[1].attn.qkv.weight.grad.clone())
    assert torch.allclose(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-3)
