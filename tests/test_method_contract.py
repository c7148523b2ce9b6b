"""The contract every registered method must keep (parametrized over the registry, timm style).

Methods tagged "2d" run on a small ViT and 2D images, those tagged "3d" on Swin UNETR and volumes; a method tagged
with both (``random``) is checked with both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.backbones import build_backbone
from bench.export import load_export, save_export
from bench.registry import METHODS
from methods.base import StepInfo

ROI = (64, 64, 64)
ROI_2D = (64, 64)
BACKBONE = {3: "swin_unetr_tiny", 2: "vit_tiny_2d"}


def _dims(name: str) -> list[int]:
    tags = METHODS.tags(name)
    return [d for d in (3, 2) if f"{d}d" in tags] or [3]


CASES = [pytest.param(n, d, id=f"{n}-{d}d") for n in METHODS.names() for d in _dims(n)]


def _make(name: str, seed: int = 0, dims: int = 3):
    torch.manual_seed(seed)
    cls = METHODS.get(name)
    if dims == 2:
        # two blocks: the same modules and wiring as ViT-Ti/16 at a fraction of the CPU cost
        bb = build_backbone("vit_tiny_2d", img_size=64, depth=2)
    else:
        # one block per stage: the same modules and wiring at half the CPU cost of the (2,2,2,2) default
        bb = build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1))
    m = cls(bb, cls.make_config({}))
    if m.needs_corpus_labels:  # as the runner does before training: the corpus's label map
        m.bind_labels(LABELS)
    return m


LABELS = {0: "background", 1: "organ", 2: "lesion"}


def _sample(method, image: np.ndarray, roi: tuple[int, ...]) -> dict:
    """What the runner's PretrainDataset gives ``views``: with a label map only to a method that asks for one."""
    sample = {"image": image, "roi": roi}
    if method.needs_corpus_labels:
        sample["label"] = np.digitize(image[0], [0.5, 0.9]).astype(np.uint8)  # ids 0..2 of LABELS
    return sample


def _batch(method, n: int = 2, seed: int = 0, dims: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    if dims == 2:
        img = rng.random((1, 64, 64), dtype=np.float32)
        views = [method.views(_sample(method, img, ROI_2D), rng) for _ in range(n)]
    else:
        vol = rng.random((1, 72, 70, 66), dtype=np.float32)
        views = [method.views(_sample(method, vol, ROI), rng) for _ in range(n)]
    return torch.utils.data.default_collate(views)


@pytest.mark.parametrize("name,dims", CASES)
def test_export_roundtrip_strict(name, dims, tmp_path):
    m = _make(name, dims=dims)
    if getattr(m, "requires_checkpoint", False):
        pytest.skip("exports only with a user-supplied checkpoint (tests/test_external.py covers it)")
    enc = m.export_encoder()
    save_export(enc, tmp_path / "e.pt", {"method": name})
    bb, meta = load_export(tmp_path / "e.pt")
    assert meta["method"] == name and meta["backbone"] == BACKBONE[dims] and meta["spatial_dims"] == dims
    if dims == 3:
        assert meta["backbone_kwargs"]["depths"] == (1, 1, 1, 1)
    else:
        assert meta["backbone_kwargs"]["depth"] == 2 and meta["backbone_kwargs"]["img_size"] == 64
    for (k, a), (k2, b) in zip(enc.state_dict().items(), bb.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


@pytest.mark.parametrize("name,dims", CASES)
def test_training_step_contract(name, dims):
    m = _make(name, dims=dims)
    if not m.pretrains:
        pytest.skip("baseline without pretraining")
    assert f"{dims}d" in m.capabilities
    m.train()
    out = m.training_step(_batch(m, dims=dims), StepInfo(0, 10))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    encoder = m.backbone.encoder if dims == 3 else m.backbone
    enc_grads = [p.grad for p in encoder.parameters() if p.grad is not None]
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


@pytest.mark.parametrize("name,dims", CASES)
def test_state_dict_roundtrip(name, dims):
    a, b = _make(name, seed=0, dims=dims), _make(name, seed=1, dims=dims)
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
