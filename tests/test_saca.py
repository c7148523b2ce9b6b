"""Mechanisms of ``saca`` (SA-Swin): symmetric counterpart, self-supervised symmetry target, SACA block, losses.

Fast: the step wiring runs on a stand-in backbone; the real-backbone step is covered by the method contract.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import build_backbone
from bench.registry import METHODS
from methods.base import StepInfo
from methods.saca import (
    SACA,
    SACABlock,
    SACAClassifier,
    add_blob,
    asymmetric_anchors,
    mirror_range,
    symmetric_crop,
    symmetric_views,
    symmetry_loss,
)

ROI = (64, 64, 64)


class StubBackbone(nn.Module):
    """hs[4] = a 1x1 conv of the 32x average-pooled input (with a Linear so init_encoder has work)."""

    spatial_dims = 3

    def __init__(self, dim: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        self.feature_dim, self.in_channels = dim, in_channels
        self.encoder = nn.ModuleDict({"conv": nn.Conv3d(in_channels, dim, 1), "lin": nn.Linear(dim, dim)})

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.encoder["conv"](F.avg_pool3d(x, 32))
        h = self.encoder["lin"](h.movedim(1, -1)).movedim(-1, 1)
        return [h] * 5


# --- symmetric counterpart --------------------------------------------------------------------------------------------
def test_counterpart_x_range_is_mirrored():
    assert mirror_range(50, 66, 72) == (6, 22)
    assert mirror_range(0, 72, 72) == (0, 72)
    assert mirror_range(4, 36, 72) == (36, 68)


def test_marker_on_one_side_appears_at_the_mirrored_position_of_the_counterpart():
    vol = np.zeros((1, 72, 40, 40), np.float32)
    vol[0, 10, 5, 7] = 1.0  # one side only; its mirror voxel is X = 72 - 1 - 10 = 61
    crop, counterpart = symmetric_crop(vol, (50, 3, 2), (16, 16, 16))  # crop X [50, 66) holds X = 61 at index 11
    assert crop.shape == counterpart.shape == (1, 16, 16, 16)
    assert crop.sum() == 0  # the crop's side has no marker
    assert np.argwhere(counterpart[0]).tolist() == [[11, 5 - 3, 7 - 2]]
    # and the crop of the marker's side shows it where the counterpart of the opposite crop does
    crop2, counterpart2 = symmetric_crop(vol, (6, 3, 2), (16, 16, 16))  # the mirrored X-range [6, 22)
    assert np.argwhere(crop2[0]).tolist() == [[4, 2, 5]] and counterpart2.sum() == 0
    assert np.array_equal(counterpart2[:, ::-1], vol[:, 50:66, 3:19, 2:18])


def test_a_symmetric_volume_gives_identical_crop_and_counterpart():
    rng = np.random.default_rng(0)
    v = rng.random((1, 80, 70, 66), dtype=np.float32)
    sym = v + v[:, ::-1]  # exactly L-R symmetric
    for seed in range(3):
        crop, counterpart = symmetric_views(sym, ROI, np.random.default_rng(seed))
        assert torch.equal(crop, counterpart)
    crop, counterpart = symmetric_views(v, ROI, np.random.default_rng(0))
    assert not torch.equal(crop, counterpart)


def test_views_emit_the_pair_health_and_crops_per_volume():
    vol = np.random.default_rng(0).random((1, 72, 70, 66), dtype=np.float32)
    m = SACA(StubBackbone())
    v = m.views({"image": vol, "roi": ROI}, np.random.default_rng(0))
    assert set(v) == {"image", "image_sym"} and v["image"].shape == v["image_sym"].shape == (1, *ROI)
    v = m.views({"image": vol, "roi": ROI, "volume_label": 1}, np.random.default_rng(0))
    assert float(v["health"]) == 1.0
    m2 = SACA(StubBackbone(), SACA.Config(crops_per_volume=2))
    v = m2.views({"image": vol, "roi": ROI, "volume_label": 0}, np.random.default_rng(0))
    assert v["image"].shape == (2, 1, *ROI) and v["health"].tolist() == [0.0, 0.0]


# --- self-supervised symmetry target ----------------------------------------------------------------------------------
def test_blob_changes_only_its_box_and_stays_in_range():
    x = torch.rand(1, 64, 64, 64) * 0.5 + 0.25
    before = x.clone()
    box = add_blob(x[0:1], np.random.default_rng(2))
    changed = (x != before)[0]
    inside = torch.zeros_like(changed)
    inside[box] = True
    assert changed.any() and not (changed & ~inside).any()
    assert float(x.min()) >= float(before.min()) and float(x.max()) <= float(before.max())
    assert float((x - before).abs().max()) >= 0.2 * float(before.max() - before.min()) * 0.99


def test_asymmetric_pairs_differ_from_the_symmetric_pair_on_one_side_only():
    rng = np.random.default_rng(0)
    v = torch.rand(3, 1, 64, 64, 64)
    sym = v + v.flip(2)  # exactly symmetric volumes
    x, counterpart = sym, sym.flip(2)  # a crop covering the whole volume and its mirror counterpart
    assert torch.equal(x, counterpart)  # -> a symmetric pair, target 1
    (a1, a2), (t1, t2) = asymmetric_anchors([x, x], rng, 0.5, (0.04, 0.12), (0.2, 0.5))
    targets = torch.cat([t1, t2])
    assert int((targets == 0).sum()) == 3 and set(targets.tolist()) == {0.0, 1.0}  # round(0.5 * 2N) negatives
    anchors = torch.cat([a1, a2])
    xx = torch.cat([x, x])
    for a, ref, t in zip(anchors, xx, targets):
        if t == 1:
            assert torch.equal(a, ref)  # positives: the clean crop, identical to its counterpart
        else:
            d = (a != ref)[0]
            assert d.any()
            idx = torch.nonzero(d)
            span = idx.max(0).values - idx.min(0).values + 1
            assert (span <= 2 * 24 + 1).all()  # inside one blob box (3 sigma, sigma <= 0.12 * 64)
            assert not torch.equal(a, a.flip(1))  # the pair is no longer mirror-symmetric


# --- losses -----------------------------------------------------------------------------------------------------------
def test_symmetry_losses_equal_hand_computed_values():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    e_m = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])  # cos = 1, 0, -1
    h = torch.tensor([1.0, 0.0, 0.0])
    nce = (math.log(1 + math.exp(-1)) + math.log(2) + math.log(1 + math.exp(-1))) / 3
    assert symmetry_loss(e, e_m, h, "cosine_nce").item() == pytest.approx(nce, rel=1e-6)
    assert symmetry_loss(e, e_m, h, "siamese").item() == pytest.approx((0 + 0 - 1) / 3, rel=1e-6)
    tau, h2 = 0.07, torch.tensor([0.0, 1.0, 0.0])  # batch softmax: the s = 0 pair is the healthy one
    z = [1 / tau, 0.0, -1 / tau]
    cos = -math.log(math.exp(z[1]) + 1e-6) + math.log(sum(math.exp(v) for v in z))
    assert symmetry_loss(e, e_m, h2, "cosine", tau).item() == pytest.approx(cos, rel=1e-5)
    with pytest.raises(ValueError, match="symmetry_loss"):
        symmetry_loss(e, e_m, h, "l2")


# --- SACA block -------------------------------------------------------------------------------------------------------
def _manual_saca(blk: SACABlock, x: torch.Tensor, xm: torch.Tensor) -> torch.Tensor:
    def attn(mod, q_in, kv_in):
        b, n, d = q_in.shape
        h = blk.heads
        q = mod.query(q_in).view(b, n, h, d // h).transpose(1, 2)
        k = mod.key(kv_in).view(b, -1, h, d // h).transpose(1, 2)
        v = mod.value(kv_in).view(b, -1, h, d // h).transpose(1, 2)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
        ctx = (p @ v).transpose(1, 2).reshape(b, n, d)
        return F.layer_norm(q_in + mod.dense(ctx), (d,), mod.norm.weight, mod.norm.bias, 1e-12)

    a = attn(blk.attention, x, x)
    c = attn(blk.crossattention, a, xm)
    ff = blk.output(F.gelu(blk.intermediate(c)))
    return F.layer_norm(c + ff, (x.shape[-1],), blk.norm.weight, blk.norm.bias, 1e-12)


def test_saca_block_is_the_post_ln_bert_layer_with_cross_attention_to_the_mirror():
    torch.manual_seed(0)
    blk = SACABlock(192).eval()
    assert blk.heads == 3 and SACABlock(768).heads == 12
    assert blk.norm.eps == 1e-12 and blk.intermediate.out_features == 4 * 192
    x, xm = torch.randn(2, 8, 192), torch.randn(2, 8, 192)
    assert torch.allclose(blk(x, xm), _manual_saca(blk, x, xm), atol=1e-5)
    assert not torch.allclose(blk(x, xm), blk(x, torch.randn(2, 8, 192)))  # keys/values are the mirror's
    blk.train()
    assert not torch.allclose(blk(x, xm), blk(x, xm))  # dropout 0.1 in training
    with pytest.raises(ValueError, match="divisible"):
        SACABlock(100, heads=3)


# --- the method -------------------------------------------------------------------------------------------------------
def test_config_defaults_and_errors():
    cfg = METHODS.get("saca").make_config({})
    assert (cfg.symmetry_target, cfg.symmetry_loss, cfg.w_sym, cfg.w_rot, cfg.w_con, cfg.w_rec) == (
        "auto",
        "cosine_nce",
        0.5,
        1.0,
        1.0,
        1.0,
    )
    with pytest.raises(ValueError, match="symmetry_target"):
        SACA(StubBackbone(), SACA.Config(symmetry_target="labels"))
    with pytest.raises(ValueError, match="symmetry_loss"):
        SACA(StubBackbone(), SACA.Config(symmetry_loss="nce"))


def test_init_is_trunc_normal_and_covers_the_encoder_by_default():
    torch.manual_seed(0)
    bb = build_backbone("swin_unetr_tiny")
    w = bb.encoder.layers3[0].blocks[0].attn.qkv.weight
    assert float(w.detach().std()) > 0.05  # PyTorch's default init at width 48
    m = SACA(bb)
    assert float(w.detach().std()) == pytest.approx(0.02, rel=0.1)  # trunc-normal(0.02), cut at +-2 as timm's
    assert float(bb.encoder.layers3[0].blocks[0].attn.qkv.bias.detach().abs().max()) == 0.0
    assert float(m.saca.attention.query.bias.detach().abs().max()) == 0.0
    bb2 = build_backbone("swin_unetr_tiny")
    before = bb2.encoder.layers3[0].blocks[0].attn.qkv.weight.clone()
    SACA(bb2, SACA.Config(init_encoder=False))
    assert torch.equal(bb2.encoder.layers3[0].blocks[0].attn.qkv.weight, before)


def _batch(n: int = 2, health: bool = False) -> dict[str, torch.Tensor]:
    x = torch.rand(n, 1, *ROI)
    b = {"image": x, "image_sym": x.flip(2)}
    if health:
        b["health"] = torch.tensor([1.0, 0.0][:n])
    return b


def test_training_step_self_target_weighted_sum_and_gradients():
    torch.manual_seed(0)
    m = SACA(StubBackbone())
    out = m.training_step(_batch(), StepInfo(0, 1))
    lg = out.logs
    total = lg["loss_rot"] + lg["loss_con"] + lg["loss_rec"] + 0.5 * lg["loss_sym"]
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-6)
    assert "sym_cos_pos" in lg and "sym_cos_neg" in lg
    out.loss.backward()
    assert m.backbone.encoder["conv"].weight.grad.abs().sum() > 0
    assert m.aaw_head.weight.grad.abs().sum() > 0 and m.saca.crossattention.key.weight.grad.abs().sum() > 0
    assert m.ema_pairs() == []  # no teacher


def test_one_symmetry_view_encodes_fewer_crops():
    calls = []
    bb = StubBackbone()
    enc = bb.encode
    bb.encode = lambda x: calls.append(x.shape[0]) or enc(x)
    out = SACA(bb, SACA.Config(symmetry_views=1)).training_step(_batch(), StepInfo(0, 1))
    assert calls == [5 * 2] and "sym_cos_pos" in out.logs and "sym_cos_neg" in out.logs
    calls.clear()
    SACA(bb).training_step(_batch(), StepInfo(0, 1))
    assert calls == [6 * 2]


def test_label_target_needs_health():
    m = SACA(StubBackbone(), SACA.Config(symmetry_target="label"))
    with pytest.raises(ValueError, match="health"):
        m.training_step(_batch(), StepInfo(0, 1))
    out = m.training_step(_batch(health=True), StepInfo(0, 1))
    assert torch.isfinite(out.loss) and "sym_cos_neg" in out.logs
    bad = _batch(health=True)
    bad["health"] = torch.tensor([2.0, 0.0])
    with pytest.raises(ValueError, match="0 \\(patient\\) or 1"):
        m.training_step(bad, StepInfo(0, 1))


def test_sym_weight_zero_skips_the_symmetry_head():
    m = SACA(StubBackbone(), SACA.Config(w_sym=0.0, symmetry_target="label"))  # no health needed then
    out = m.training_step(_batch(), StepInfo(0, 1))
    out.loss.backward()
    assert m.aaw_head.weight.grad is None and float(out.logs["loss_sym"]) == 0.0


# --- downstream classifier --------------------------------------------------------------------------------------------
def test_saca_classifier_forward_shape_and_default_mirror():
    torch.manual_seed(0)
    clf = SACAClassifier(build_backbone("swin_unetr_tiny"), n_classes=3).eval()
    assert clf.saca.heads == 3
    x = torch.rand(1, 1, *ROI)
    with torch.no_grad():
        y = clf(x)
        assert y.shape == (1, 3)
        assert torch.allclose(y, clf(x, x.flip(2)))  # the default counterpart is the L-R flip
    state = SACA(StubBackbone(192), SACA.Config(init_encoder=False)).saca.state_dict()
    clf2 = SACAClassifier(StubBackbone(192), 2, saca_state=state)
    assert torch.equal(clf2.saca.attention.query.weight, state["attention.query.weight"])
    assert clf2(torch.rand(2, 1, *ROI)).shape == (2, 2)


def test_export_extras_carry_the_pretrained_saca_block_to_the_classifier(tmp_path):
    torch.manual_seed(0)
    m = SACA(StubBackbone(128), SACA.Config(init_encoder=False, saca_dropout=0.2))
    extras = m.export_extras()
    torch.save({"extras": extras}, tmp_path / "e.pt")  # as an export file holds it
    loaded = torch.load(tmp_path / "e.pt", weights_only=True)["extras"]
    assert loaded["saca"]["dim"] == 128 and loaded["saca"]["heads"] == 2 and loaded["saca"]["dropout"] == 0.2
    clf = SACAClassifier.from_extras(StubBackbone(128), 4, loaded)
    assert clf.saca.heads == 2 and clf.saca.drop.p == 0.2
    for k, v in m.saca.state_dict().items():
        assert torch.equal(clf.saca.state_dict()[k], v), k
    with torch.no_grad():  # the exported copy does not alias the live block
        m.saca.attention.query.weight.add_(1.0)
    assert not torch.equal(extras["saca"]["state_dict"]["attention.query.weight"], m.saca.attention.query.weight)
    with pytest.raises(ValueError, match="no pre-trained SACA block"):
        SACAClassifier.from_extras(StubBackbone(128), 4, {})
    with pytest.raises(ValueError, match="width 128.*feature_dim is 64"):
        SACAClassifier.from_extras(StubBackbone(64), 4, loaded)


def test_label_target_pairs_each_cut_out_view_with_its_clean_counterpart():
    """The code's target: L_sym = BCE(cos(e(v1), e(x~1)), h) + BCE(cos(e(v2), e(x~2)), h), 4N encoded crops,
    recomputed here from the encoder's recorded input (order v1, v2, x~1, x~2)."""
    torch.manual_seed(0)
    seen = []
    bb = StubBackbone()
    enc = bb.encode
    bb.encode = lambda x: seen.append(x.detach().clone()) or enc(x)
    m = SACA(bb, SACA.Config(symmetry_target="label"))
    batch = _batch(health=True)
    out = m.training_step(batch, StepInfo(0, 1))
    (x,) = seen
    assert x.shape[0] == 4 * 2
    with torch.no_grad():
        tok = enc(x)[4].flatten(2).transpose(1, 2)[:, 1]  # token 1 of every crop
        e = m.aaw_head(tok)
        v1, v2, s1, s2 = e.split(2)
        h = batch["health"]
        want = sum(
            F.binary_cross_entropy_with_logits(F.cosine_similarity(a, b, dim=1), h) for a, b in ((v1, s1), (v2, s2))
        )
    assert float(out.logs["loss_sym"]) == pytest.approx(float(want), rel=1e-5)
    # the counterparts entered clean (no cutout): each equals the batch's counterpart under some 90-degree rotation
    for i in range(2):
        clean = batch["image_sym"][i]
        assert any(torch.equal(x[4 + i], clean.rot90(k, (2, 3))) for k in range(4))


def test_brain_suite_finetunes_every_method_with_the_saca_head(tmp_path):
    """The brain suite fixes head=saca for finetune (the same for every method); a saca export brings its block."""
    from bench.export import load_extras
    from bench.protocols.base import resolve_protocol
    from bench.registry import HEADS, SUITES

    task = SUITES.get("brain").task("side3")
    cls = resolve_protocol("finetune", task.kind)
    assert cls.make_config(task.protocol_options["finetune"]).head == "saca"
    torch.manual_seed(0)
    m = SACA(StubBackbone(128), SACA.Config(init_encoder=False))
    torch.save({"extras": m.export_extras()}, tmp_path / "saca.pt")
    torch.save({"extras": {}}, tmp_path / "other.pt")  # an export without extras (any other method)
    pre = HEADS.get("saca")(StubBackbone(128), 3, load_extras(tmp_path / "saca.pt"))
    fresh = HEADS.get("saca")(StubBackbone(128), 3, load_extras(tmp_path / "other.pt"))
    w = m.saca.attention.query.weight
    assert torch.equal(pre.saca.attention.query.weight, w)
    assert not torch.equal(fresh.saca.attention.query.weight, w)
    assert pre(torch.rand(2, 1, *ROI)).shape == (2, 3)


class _SideVolumes:
    """32^3 volumes: a bright blob in the left or right half along x, or none (the brain suite's task shape)."""

    registry_name = "toy_side"

    def __init__(self, n: dict[str, int]) -> None:
        from datasets.base import DatasetInfo, Record

        self.info = DatasetInfo(
            modality="MR", spatial_dims=3, task="multiclass", labels={0: "none", 1: "left", 2: "right"}
        )
        rng = np.random.default_rng(0)
        self.data, self.images = {}, {}
        for split, count in n.items():
            recs = []
            for i in range(count):
                c = i % 3
                img = rng.normal(0, 0.1, (1, 32, 32, 32)).astype(np.float32)
                if c:
                    x0 = 4 if c == 1 else 20
                    img[0, x0 : x0 + 8, 12:20, 12:20] += 1.0
                rid = f"{split}{i}"
                recs.append(Record(rid, rid, f"{rid}.nii.gz", classes=(c,)))
                self.images[rid] = img
            self.data[split] = recs

    def records(self, split):
        return self.data[split]

    def load(self, record):
        return {"id": record.id, "image": self.images[record.id], "spacing": (1.0, 1.0, 1.0), "label": None}


# with_block=False: the same path on an export without SACA's block (~20 s on 2 cores), in `make test-all` only
@pytest.mark.parametrize("with_block", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_classification_finetune_with_the_saca_head_runs_on_a_swin_export(tmp_path, with_block):
    """The brain suite's path end to end on a tiny 3D set: export (with or without SACA's block) -> finetune with
    head=saca -> per-class AUROC rows; the head adds the SACA block's parameters to the trained model."""
    from bench.data import Preprocess
    from bench.export import save_export
    from bench.protocols.base import TransferContext, resolve_protocol
    from bench.suites import Cell, Task

    torch.manual_seed(0)
    bb = build_backbone("swin_unetr_tiny")
    extras = SACA(bb, SACA.Config(init_encoder=False)).export_extras() if with_block else {}
    save_export(bb, tmp_path / "export.pt", {"method": "saca" if with_block else "random"}, extras=extras)
    task = Task("side3", "toy_side", "classification", ("finetune",), metric="auroc")
    ctx = TransferContext(
        export_path=tmp_path / "export.pt",
        dataset=_SideVolumes({"train": 9, "val": 6, "test": 6}),
        cell=Cell(task, "finetune", 1.0, 0),
        run_dir=tmp_path / "run",
        device=torch.device("cpu"),
        preprocess=Preprocess(0.0, 1.0),
        roi=(32, 32, 32),
        steps=3,
        batch_size=3,
        progress=False,
    )
    cls = resolve_protocol("finetune", "classification")
    res = cls(cls.make_config({"head": "saca"})).run(ctx)
    ctx.run_dir = tmp_path / "run_linear"  # a run directory resumes its own checkpoint only
    linear = cls(cls.make_config({"head": "linear"})).run(ctx)
    block = sum(p.numel() for p in SACABlock(bb.feature_dim, 0, 0.1).parameters())
    assert res.params - linear.params == block
    assert {r["class"] for r in res.rows if r["metric"] == "auroc"} == {-1, 0, 1, 2}
