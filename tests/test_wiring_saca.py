"""Wiring of ``saca``'s training step (issue 29), and the per-volume label path its official objective needs.

One ``training_step`` on views of tiny random volumes, its randomness fixed, on a stand-in encoder (a 1x1 conv of
the 32x pooled input: 8 tokens, deterministic), in eval mode where a tensor is recomputed (no dropout), so that
every captured tensor can be recomputed here from the step's own inputs. The pieces checked against an independent
computation: the symmetric counterpart (the crop of the X-flipped volume at the crop's own place), which tensors
enter the encoder (cut-out crop, clean counterpart, both rotated by one shared k), whose tokens the SACA block's
cross-attention reads (queries from the crop, keys/values from the counterpart), every loss term (rotation CE vs the
applied k, NT-Xent pairing, L1 vs the clean rotated crop, the symmetry BCE of the cut-out view vs its clean mirror
with the volume's health label, or of the clean/blob anchors vs the clean mirror for the self target), each weight
scaling its own term, and which parameters each term's gradient reaches. Then the plumbing: the brain corpus's
health labels (the generator's), PretrainDataset's ``volume_label``, ``auto`` settling to ``label`` on brain only,
the pretraining identity, and a runner-level pretraining on a two-subject brain corpus that trains the label
objective and records it in the export.

Swaps ruled out (each injected alone into a scratch copy; each turns this module red):
- counterpart not flipped along X (``symmetric_crop`` without ``[:, ::-1]``)
- counterpart flipped along Y instead of X
- counterpart at the crop's own X-range (not the mirrored one)
- cross-attention's keys/values from the crop, queries from the counterpart (``self.saca(fs, f)``)
- cross-attention reads the crop's own tokens (``self.crossattention(a, x)`` in ``SACABlock``)
- the counterpart x~1 cut out before encoding (``aug_rand(xs1, ...)``)
- the counterpart rotated by its own random k, not its crop's (``rot_rand([x, xs])`` split in two draws)
- rotation CE target in the wrong view order (``torch.cat([k2, k1])``)
- rotation head on token 1 of G instead of token 0
- NT-Xent positives misaligned (``nt_xent(z[:n], z[n:].roll(1, 0), ...)``)
- reconstruction target the cut-out views (``torch.cat([v1, v2])``)
- label target: the symmetry pair is the clean crop and its counterpart (x1 instead of v1 entering the SAH)
- label target: the health label inverted (``1 - health``)
- label target: view 1 paired with view 2's counterpart
- self target: anchors from the cut-out views (``[v1, v2]`` into ``asymmetric_anchors``)
- self target: targets inverted (``neg`` instead of ``~neg``)
- the SAH on SACA(F, F~)'s tokens instead of the encoder's
- w_rot and w_rec swapped in the total
- w_sym dropped from the total (``+ loss_sym``)
- views: the health label not passed (``sample.get("health")``) or inverted
- PretrainDataset: ``volume_label`` of another volume than the drawn one (``self.volume_labels[0]``)
- brain: health label = has a lesion (``class_of(...) != 0``)
- auto settles to label without volume labels (``want == "auto"``)
- the runner never binds the volume labels (auto stays self on brain)
- the runner does not pass the volume labels to PretrainDataset
- the pretraining identity lacks the volume-labels key (a brain export of the proxy objective would be reused)
- the export metadata lacks the objective
- conf/method_budget/saca_paper.yaml's crops_per_volume removed
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import PretrainDataset
from bench.registry import DATASETS
from bench.types import DataError, StepInfo
from methods.saca import SACA

ROI = (64, 64, 64)
DIM = 128  # 2 SACA heads


class StubEncoder(nn.Module):
    """hs[4] = a 1x1 conv + Linear of the 32x average-pooled input: 8 tokens at 64^3, deterministic."""

    spatial_dims = 3

    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.feature_dim, self.in_channels = dim, 1
        self.encoder = nn.ModuleDict({"conv": nn.Conv3d(1, dim, 1), "lin": nn.Linear(dim, dim)})

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.encoder["conv"](F.avg_pool3d(x, 32))
        h = self.encoder["lin"](h.movedim(1, -1)).movedim(-1, 1)
        return [h] * 5


def toks(h: torch.Tensor) -> torch.Tensor:
    b, d = h.shape[:2]
    return h.reshape(b, d, -1).permute(0, 2, 1)  # [B, N, D], h-w-d row-major


def rot(x: torch.Tensor, k: int) -> torch.Tensor:
    """One sample [C, X, Y, Z] rotated k * 90 degrees in its (Y, Z) plane (the code's axis "x")."""
    return torch.rot90(x, k, dims=(2, 3))


def volume(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random 16-voxel blocks at a per-volume gain and offset, plus fine noise: the stand-in's tokens (32^3 means)
    differ between volumes, positions and rotations, and every voxel pattern is unique (rotations identifiable)."""
    coarse = rng.random((1, *[n // 16 + 1 for n in shape]))
    big = np.kron(coarse, np.ones((1, 16, 16, 16)))[:, : shape[0], : shape[1], : shape[2]]
    return (rng.uniform(0.5, 2.0) * big + rng.uniform(-1, 1) + 0.05 * rng.random((1, *shape))).astype(np.float32)


def make_batch(health=(0, 1), k: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """The method's own views of random volumes of different sizes, collated as the loader does."""
    rng = np.random.default_rng(seed)
    m = SACA(StubEncoder(), SACA.Config(crops_per_volume=k))
    views = []
    for i, h in enumerate(health):
        views.append(m.views({"image": volume(rng, (72 + 2 * i, 70, 68)), "roi": ROI, "volume_label": h}, rng))
    return torch.utils.data.default_collate(views)


def nt_xent_ref(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """SimCLR, written out: the positive of z1[i] is z2[i] (and back); the other 2N - 2 are negatives."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        sims = [float(z[i] @ z[a]) / tau for a in range(2 * n) if a != i]
        total += -float(z[i] @ z[j]) / tau + math.log(sum(math.exp(s) for s in sims))
    return total / (2 * n)


class Capture:
    """The step's tensors: the encoder's input and every module input/output the wiring is about."""

    def __init__(self, m: SACA) -> None:
        self.enc_in: list[torch.Tensor] = []
        self.calls: dict[str, list] = {}
        enc = m.backbone.encode

        def encode(x):
            self.enc_in.append(x.detach().clone())
            return enc(x)

        m.backbone.encode = encode
        for name, mod in [
            ("saca", m.saca),
            ("self_attn", m.saca.attention),
            ("cross", m.saca.crossattention),
            ("cross_q", m.saca.crossattention.query),
            ("cross_k", m.saca.crossattention.key),
            ("cross_v", m.saca.crossattention.value),
            ("self_k", m.saca.attention.key),
            ("rot", m.heads.rotation_head),
            ("con", m.heads.contrastive_head),
            ("rec", m.heads.conv),
            ("sah", m.aaw_head),
        ]:
            mod.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(_mod, args, out):
            self.calls.setdefault(name, []).append(([a.detach().clone() for a in args], out.detach().clone()))

        return hook

    def one(self, name):
        (call,) = self.calls[name]
        return call


def run_step(batch, train: bool = False, seed: int = 1, bind: bool | None = True, **cfg):
    torch.manual_seed(0)
    m = SACA(StubEncoder(), SACA.Config(**cfg))
    if bind is not None:
        m.bind_volume_labels(bind)
    m.train(train)
    cap = Capture(m)
    torch.manual_seed(seed)
    out = m.training_step(batch, StepInfo(0, 1))
    return m, out, cap


def recover_k(view: torch.Tensor, source: torch.Tensor) -> list[int]:
    """Per sample, the one k with view[i] == rot(source[i], k) exactly."""
    ks = []
    for i in range(source.shape[0]):
        hits = [k for k in range(4) if torch.equal(view[i], rot(source[i], k))]
        assert len(hits) == 1, f"sample {i}: rotations matching exactly: {hits}"
        ks.append(hits[0])
    return ks


# --- the symmetric counterpart ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_counterpart_is_the_crop_of_the_x_flipped_volume_at_the_same_place(k):
    """Independent of the code's index arithmetic: the crop is found in the volume by search, and its counterpart
    must be the same box of the volume mirrored along X (np.flip axis 1), i.e. the mirror of the crop at the mirrored
    position, in the crop's orientation."""
    rng = np.random.default_rng(3)
    vol = rng.random((1, 76, 70, 68), dtype=np.float32)
    m = SACA(StubEncoder(), SACA.Config(crops_per_volume=k))
    v = m.views({"image": vol, "roi": ROI, "volume_label": 0}, np.random.default_rng(5))
    crops, sym = (v["image"], v["image_sym"]) if k > 1 else (v["image"][None], v["image_sym"][None])
    assert v["health"].tolist() == ([0.0] * k if k > 1 else 0.0)
    mirrored = np.ascontiguousarray(np.flip(vol, axis=1))
    xs = []
    for crop, counterpart in zip(crops.numpy(), sym.numpy()):
        starts = [
            (x, y, z)
            for x in range(76 - 64 + 1)
            for y in range(70 - 64 + 1)
            for z in range(68 - 64 + 1)
            if np.array_equal(vol[:, x : x + 64, y : y + 64, z : z + 64], crop)
        ]
        assert len(starts) == 1
        x, y, z = starts[0]
        assert np.array_equal(counterpart, mirrored[:, x : x + 64, y : y + 64, z : z + 64])
        xs.append(x)
    assert any(x != 76 - 64 - x for x in xs)  # the mirrored X-range is not the crop's own


def features(m: SACA, x: torch.Tensor) -> torch.Tensor:
    """The stand-in encoder's hs[4] tokens of ``x``, computed here (not through the step's encode)."""
    with torch.no_grad():
        h = m.backbone.encoder["conv"](F.avg_pool3d(x, 32))
        h = m.backbone.encoder["lin"](h.movedim(1, -1)).movedim(-1, 1)
    return toks(h)


# --- the step: tensors, routing and each loss term --------------------------------------------------------------------
def test_label_target_step_wiring_and_every_term_recomputed():
    batch = make_batch(health=(0, 1))
    n = 2
    w = {"w_rot": 0.7, "w_con": 1.3, "w_rec": 1.9, "w_sym": 0.45}
    m, out, cap = run_step(batch, symmetry_target="label", **w)
    assert m.symmetry_target == "label"
    (x,) = cap.enc_in
    assert x.shape[0] == 4 * n  # v1, v2, x~1, x~2: no anchors for the label target
    v1, v2, s1, s2 = x.split(n)
    image, image_sym = batch["image"], batch["image_sym"]
    # the counterparts enter clean and rotated; the crop shares its counterpart's k; cutout hits the crop only
    k1, k2 = recover_k(s1, image_sym), recover_k(s2, image_sym)
    assert k1 != k2  # the rotation target's view order matters for this draw
    clean1 = torch.stack([rot(image[i], k1[i]) for i in range(n)])
    clean2 = torch.stack([rot(image[i], k2[i]) for i in range(n)])
    for v, clean in ((v1, clean1), (v2, clean2)):
        same = (v == clean).float().mean(dim=(1, 2, 3, 4))
        assert (same > 0.3).all() and (same < 1).all()  # the crop, cut out in places
    f = features(m, x)
    f1, f2, fs1, fs2 = f.split(n)
    # SACA: queries from the crops' tokens, keys/values from their counterparts' tokens
    (q_in, kv_in), g = cap.one("saca")
    assert torch.allclose(q_in, torch.cat([f1, f2]), atol=1e-6)
    assert torch.allclose(kv_in, torch.cat([fs1, fs2]), atol=1e-6)
    (a_in, ctx_in), _ = cap.one("cross")
    (self_out_args, self_out) = cap.one("self_attn")
    assert torch.equal(a_in, self_out) and torch.allclose(self_out_args[0], torch.cat([f1, f2]), atol=1e-6)
    assert torch.allclose(cap.one("cross_k")[0][0], torch.cat([fs1, fs2]), atol=1e-6)
    assert torch.allclose(cap.one("cross_v")[0][0], torch.cat([fs1, fs2]), atol=1e-6)
    assert torch.equal(cap.one("cross_q")[0][0], self_out)
    assert torch.allclose(cap.one("self_k")[0][0], torch.cat([f1, f2]), atol=1e-6)  # self-attention: the crop's
    with torch.no_grad():
        assert torch.allclose(g, m.saca(torch.cat([f1, f2]), torch.cat([fs1, fs2])), atol=1e-5)
    # rotation: token 0 of G, CE vs the applied k's in view order
    (rot_in,), logits = cap.one("rot")
    assert torch.equal(rot_in, g[:, 0])
    loss_rot = F.cross_entropy(logits.float(), torch.tensor(k1 + k2))
    assert abs(float(loss_rot) - float(F.cross_entropy(logits.float(), torch.tensor(k2 + k1)))) > 1e-3
    # contrastive: token 1 of G, view-1 sample i positive with view-2 sample i
    (con_in,), z = cap.one("con")
    assert torch.equal(con_in, g[:, 1])
    loss_con = nt_xent_ref(z[:n], z[n:], 0.5)
    assert abs(loss_con - nt_xent_ref(z[:n], z[n:].roll(1, 0), 0.5)) > 1e-3  # the pairing matters here
    # reconstruction: the decoder reads G as a map; L1 against the clean rotated crops
    (rec_in,), rec = cap.one("rec")
    assert torch.equal(rec_in, g.transpose(1, 2).reshape(2 * n, DIM, 2, 2, 2))
    loss_rec = F.l1_loss(rec.float(), torch.cat([clean1, clean2]))
    # symmetry: token 1 of the pre-SACA tokens; the cut-out view vs its clean counterpart; target = health
    h = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        e = m.aaw_head(f[:, 1])
    e1, e2, es1, es2 = e.split(n)
    loss_sym = sum(
        F.binary_cross_entropy_with_logits(F.cosine_similarity(a, b, dim=1), h) for a, b in ((e1, es1), (e2, es2))
    )
    lg = out.logs
    for name, want in (("loss_rot", loss_rot), ("loss_con", loss_con), ("loss_rec", loss_rec), ("loss_sym", loss_sym)):
        assert float(lg[name]) == pytest.approx(float(want), rel=1e-5, abs=1e-6), name
    total = w["w_rot"] * loss_rot + w["w_con"] * loss_con + w["w_rec"] * loss_rec + w["w_sym"] * loss_sym
    assert float(out.loss.detach()) == pytest.approx(float(total), rel=1e-5)
    assert float(lg["sym_healthy"]) == 0.5
    cos = torch.cat([F.cosine_similarity(e1, es1, dim=1), F.cosine_similarity(e2, es2, dim=1)])
    assert float(lg["sym_cos_pos"]) == pytest.approx(float(cos[[1, 3]].mean()), rel=1e-5)
    assert float(lg["sym_cos_neg"]) == pytest.approx(float(cos[[0, 2]].mean()), rel=1e-5)


def test_self_target_anchors_targets_and_pairs():
    """Self target: anchors are the clean rotated crops (target 1) or one with a blob (target 0, exactly
    round(0.5 * 2N) of them), each paired with its view's clean counterpart."""
    batch = make_batch(health=(0, 1))
    n = 2
    m, out, cap = run_step(batch, bind=False, negative_fraction=0.5)
    assert m.symmetry_target == "self"
    (x,) = cap.enc_in
    assert x.shape[0] == 6 * n
    v1, v2, s1, s2, a1, a2 = x.split(n)
    k1, k2 = recover_k(s1, batch["image_sym"]), recover_k(s2, batch["image_sym"])
    clean = torch.cat([torch.stack([rot(batch["image"][i], k[i]) for i in range(n)]) for k in (k1, k2)])
    anchors = torch.cat([a1, a2])
    target = torch.tensor([float(torch.equal(a, c)) for a, c in zip(anchors, clean)])
    assert int((target == 0).sum()) == 2
    for a, c, t in zip(anchors, clean, target):
        if t == 0:
            d = torch.nonzero((a != c)[0])
            assert (d.max(0).values - d.min(0).values < 64).any()  # one local blob, not a cutout of the whole
    f = features(m, x)
    with torch.no_grad():
        e = m.aaw_head(f[:, 1])
    _, _, es1, es2, ea1, ea2 = e.split(n)
    loss_sym = F.binary_cross_entropy_with_logits(
        F.cosine_similarity(ea1, es1, dim=1), target[:n]
    ) + F.binary_cross_entropy_with_logits(F.cosine_similarity(ea2, es2, dim=1), target[n:])
    assert float(out.logs["loss_sym"]) == pytest.approx(float(loss_sym), rel=1e-5)
    assert "sym_healthy" not in out.logs
    # the SACA and the heads see the cut-out views, as for the label target
    (q_in, kv_in), _ = cap.one("saca")
    f1, f2, fs1, fs2 = f[: 4 * n].split(n)
    assert torch.allclose(q_in, torch.cat([f1, f2]), atol=1e-6)
    assert torch.allclose(kv_in, torch.cat([fs1, fs2]), atol=1e-6)


def test_paper_budget_takes_two_crop_pairs_per_volume_and_each_carries_its_volumes_health(tmp_path):
    """budget=paper sets the code's sw_batch_size 2 (conf/method_budget/saca_paper.yaml); the crops of one volume
    carry its health label, in the order the step flattens them (volume-major)."""
    from bench import runner
    from bench.plan import compose

    def crops(budget):
        args = ["method=saca", "suite=brain", f"budget={budget}", f"runs_dir={tmp_path}", "device=cpu"]
        return runner.make_plan(compose(args)).method_cfg["crops_per_volume"]

    assert (crops("paper"), crops("quick")) == (2, 1)
    batch = make_batch(health=(0, 1), k=2)
    m, out, cap = run_step(batch, symmetry_target="label", crops_per_volume=2)
    (x,) = cap.enc_in
    assert x.shape[0] == 4 * 4
    with torch.no_grad():
        e1, e2, es1, es2 = m.aaw_head(features(m, x)[:, 1]).split(4)
    h = torch.tensor([0.0, 0.0, 1.0, 1.0])
    want = sum(
        F.binary_cross_entropy_with_logits(F.cosine_similarity(a, b, dim=1), h) for a, b in ((e1, es1), (e2, es2))
    )
    assert float(out.logs["loss_sym"]) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("term", ["w_rot", "w_con", "w_rec", "w_sym"])
def test_each_weight_scales_exactly_its_term(term):
    batch = make_batch(health=(1, 0))
    _, base, _ = run_step(batch, symmetry_target="label")
    _, moved, _ = run_step(batch, symmetry_target="label", **{term: 2.5})
    name = {"w_rot": "loss_rot", "w_con": "loss_con", "w_rec": "loss_rec", "w_sym": "loss_sym"}[term]
    default = 0.5 if term == "w_sym" else 1.0
    assert float(base.logs[name]) == float(moved.logs[name]) and float(base.logs[name]) > 0
    delta = float(moved.loss.detach()) - float(base.loss.detach())
    assert delta == pytest.approx((2.5 - default) * float(base.logs[name]), rel=1e-4)


# --- gradients --------------------------------------------------------------------------------------------------------
def _reached(m: SACA) -> dict[str, bool]:
    def any_grad(mod):
        return any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in mod.parameters())

    blk = m.saca
    return {
        "encoder": any_grad(m.backbone.encoder),
        "saca_self": any_grad(blk.attention),
        "saca_cross_q": any_grad(blk.crossattention.query),
        "saca_cross_kv": any_grad(blk.crossattention.key) and any_grad(blk.crossattention.value),
        "saca_ffn": any_grad(blk.intermediate) and any_grad(blk.output) and any_grad(blk.norm),
        "rot_head": any_grad(m.heads.rotation_head),
        "con_head": any_grad(m.heads.contrastive_head),
        "decoder": any_grad(m.heads.conv),
        "sah": any_grad(m.aaw_head),
    }


def test_gradients_reach_the_backbone_the_saca_block_and_every_head():
    batch = make_batch(health=(0, 1))
    m, out, _ = run_step(batch, train=True, symmetry_target="label")
    out.loss.backward()
    assert all(_reached(m).values()), _reached(m)


def test_the_symmetry_term_reaches_the_encoder_and_its_head_only():
    """The SAH reads the encoder's tokens before SACA: L_sym's gradient reaches no SACA parameter; the SSL terms'
    gradients reach SACA (keys/values through the counterpart's tokens) and not the SAH."""
    batch = make_batch(health=(0, 1))
    m, out, _ = run_step(batch, train=True, symmetry_target="label", w_rot=0.0, w_con=0.0, w_rec=0.0)
    out.loss.backward()
    got = _reached(m)
    assert got["encoder"] and got["sah"]
    assert not any(got[k] for k in ("saca_self", "saca_cross_q", "saca_cross_kv", "saca_ffn", "rot_head"))
    m, out, _ = run_step(batch, train=True, symmetry_target="label", w_sym=0.0)
    out.loss.backward()
    got = _reached(m)
    assert not got["sah"] and got["saca_cross_kv"] and got["encoder"] and got["decoder"]


# --- the objective: settled from the corpus ---------------------------------------------------------------------------
def test_auto_settles_to_label_only_where_the_corpus_has_volume_labels():
    def made(target, **kw):
        return SACA(StubEncoder(), SACA.Config(symmetry_target=target, **kw))

    assert SACA.wants_volume_labels and SACA.Config().symmetry_target == "auto"
    m = made("auto")
    assert m.symmetry_target == "self"  # unbound: no labels known
    assert m.bind_volume_labels(True) == {"symmetry_target": "label"} and m.symmetry_target == "label"
    assert made("auto").bind_volume_labels(False) == {"symmetry_target": "self"}
    assert made("self").bind_volume_labels(True) == {"symmetry_target": "self"}
    assert made("label").bind_volume_labels(True) == {"symmetry_target": "label"}
    with pytest.raises(ValueError, match="per-volume health labels"):
        made("label").bind_volume_labels(False)
    made("label", w_sym=0.0).bind_volume_labels(False)  # no symmetry term: no labels needed
    # bound to label, a batch without health is refused
    m = made("auto")
    m.bind_volume_labels(True)
    b = make_batch()
    del b["health"]
    with pytest.raises(ValueError, match="'health'"):
        m.training_step(b, StepInfo(0, 1))


def test_pretrain_dataset_passes_the_drawn_volumes_label_and_keeps_the_draws():
    vols = [np.full((1, 4, 4, 4), float(i), np.float32) for i in range(5)]
    seen: list[dict] = []

    def views(sample, rng):
        seen.append(sample)
        return {"x": torch.tensor(float(rng.random()))}

    plain = [PretrainDataset(vols, (4, 4, 4), views, samples=8, seed=2)[i]["x"] for i in range(8)]
    assert all("volume_label" not in s for s in seen)
    which = [int(s["image"].flat[0]) for s in seen]
    assert len(set(which)) > 2
    seen.clear()
    labels = [0, 1, 1, 0, 1]
    tagged = [
        PretrainDataset(vols, (4, 4, 4), views, samples=8, seed=2, volume_labels=labels)[i]["x"] for i in range(8)
    ]
    assert [int(s["image"].flat[0]) for s in seen] == which and plain == tagged
    assert [s["volume_label"] for s in seen] == [labels[w] for w in which]
    with pytest.raises(ValueError, match="volume labels for 5 volumes"):
        PretrainDataset(vols, (4, 4, 4), views, samples=8, seed=2, volume_labels=[1])


def test_brain_corpus_health_labels_are_the_generators():
    """1 healthy, 0 patient for every corpus subject, from the generator's class (no rendering); and for a patient
    and a healthy subject, the rendered lesion mask agrees."""
    from datasets.brain import seed_of
    from datasets.synthetic import brain as gen

    for name in ("brain", "brain_lesion"):
        assert DATASETS.get(name).has_volume_labels
    labels = DATASETS.get("brain")(root="/nonexistent").volume_labels("pretrain")
    assert len(labels) == 300 and set(labels.values()) == {0, 1}
    assert all(v == int(gen.class_of(seed_of(c)) == 0) for c, v in labels.items())
    assert 0.2 < sum(labels.values()) / 300 < 0.5  # lesion_prob 2/3
    for cid in ("brain0241", "brain0242"):
        assert labels[cid] == int(not gen.generate_subject(seed_of(cid))["lesion"].any())
    assert {labels["brain0241"], labels["brain0242"]} == {0, 1}
    for name in ("smoke", "abdomen"):
        cls = DATASETS.get(name)
        assert not cls.has_volume_labels
        with pytest.raises(DataError, match="no per-volume health labels"):
            cls(root="/nonexistent").volume_labels("pretrain")


def test_only_saca_on_a_labelled_corpus_keys_its_cache_with_the_volume_labels(tmp_path):
    from bench import runner
    from bench.plan import compose

    def ident(method, suite):
        plan = runner.make_plan(compose([f"method={method}", f"suite={suite}", f"runs_dir={tmp_path}", "device=cpu"]))
        return runner.pretrain_identity(plan)

    assert ident("saca", "brain")["volume_labels"] is True
    assert "volume_labels" not in ident("saca", "abdomen")
    assert "volume_labels" not in ident("simmim3d", "brain")


def test_label_target_on_a_corpus_without_volume_labels_is_one_user_error_before_any_work(tmp_path):
    from bench import runner
    from bench.plan import compose

    runs = tmp_path / "runs"
    plan = runner.make_plan(
        compose(
            [
                "method=saca",
                "suite=smoke",
                "method.config.symmetry_target=label",
                f"runs_dir={runs}",
                f"data.cache_dir={tmp_path / 'data'}",
                "device=cpu",
                "progress=false",
                "+budget.backbone.kwargs.depths=[1,1,1,1]",
            ]
        )
    )
    with pytest.raises(runner.UserError, match="symmetry_target=label.*per-volume health labels"):
        runner.pretrain(plan)
    assert not (runs / "pretrain").exists() and not (tmp_path / "data").exists()


# --- end to end on brain ----------------------------------------------------------------------------------------------
CORPUS = ["brain0241", "brain0242"]  # a patient (right lesion) and a healthy subject


def test_brain_pretraining_trains_the_label_objective_and_records_it(tmp_path, monkeypatch):
    """The runner on a two-subject brain corpus, 2 steps: auto settles to label, each step's batch carries the drawn
    volumes' health labels (the loader's stream: key i draws volume default_rng([seed, i]).integers(2)), and the
    export's metadata names the objective."""
    from bench import runner
    from bench.plan import compose
    from datasets.brain import _SynthBrain, seed_of
    from datasets.synthetic import brain as gen

    monkeypatch.setattr(_SynthBrain, "split_ids", lambda self, split: list(CORPUS) if split == "pretrain" else [])
    seed = 4  # draws volumes (1, 0) then (0, 0): step means 0.5, then 0 (inverted labels: 0.5, then 1)
    plan = runner.make_plan(
        compose(
            [
                "method=saca",
                "suite=brain",
                f"runs_dir={tmp_path / 'runs'}",
                f"data.cache_dir={tmp_path / 'data'}",
                "device=cpu",
                "progress=false",
                f"pretrain_seed={seed}",
                "budget.roi=[64,32,32]",  # 2 tokens at hs[4]: token 1 exists
                "+suite.budget_caps.pretrain_steps=2",
                "+budget.backbone.kwargs.depths=[1,1,1,1]",
            ]
        )
    )
    export, _ = runner.pretrain(plan)
    meta = torch.load(export, weights_only=True)["meta"]
    assert meta["objective"] == {"symmetry_target": "label"} and meta["pretrain_steps"] == 2
    rows = [json.loads(line) for line in Path(export.parent / "scalars.jsonl").read_text().splitlines()]
    health = [int(gen.class_of(seed_of(c)) == 0) for c in CORPUS]
    draws = [int(np.random.default_rng([seed, i]).integers(len(CORPUS))) for i in range(4)]
    want = [np.mean([health[draws[2 * s]], health[draws[2 * s + 1]]]) for s in range(2)]
    assert want == [0.5, 0.0]
    assert [r["pretrain/saca/sym_healthy"] for r in rows] == want
    assert all(r["pretrain/saca/loss_sym"] > 0 for r in rows)
