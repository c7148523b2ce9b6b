"""The 3D representation probes (bench/protocols/probes.py): voxel_probe and knn_seg.

What must hold for them to measure the encoder and nothing else: the fit is the documented optimum (checked against
scikit-learn), the grid sampling agrees with the trilinear upsampling used at prediction, the class-balanced sampling
is undone, a constant encoder predicts nothing (no path from the image around the encoder), an encoder that carries
the anatomy scores well, and both run through the real CLI.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import Backbone, build_backbone
from bench.data import Preprocess
from bench.protocols.base import TransferContext, resolve_protocol
from bench.protocols.probes import (
    Encoded,
    GridFeatures,
    _bank,
    _grid_coords,
    logistic_regression,
    prior_weights,
    sample_voxels,
)
from bench.registry import DATASETS, SUITES
from bench.suites import Cell


def test_logistic_regression_is_scikit_learns_multinomial_optimum():
    """sklearn minimises C * sum CE + ||W||^2 / 2 (unpenalised intercept): the same optimum as mean CE + l2 / 2 *
    ||W||^2 with l2 = 1 / (C n)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, c, k = 600, 8, 3
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, c)) + np.eye(k, c)[y] * 1.5
    l2 = 1e-2
    ref = LogisticRegression(C=1 / (l2 * n), tol=1e-10, max_iter=10_000).fit(x, y)
    w, b, report = logistic_regression(torch.tensor(x).float(), torch.tensor(y), k, l2, 500, 1e-6)
    # logits are defined up to a constant per sample: compare centred ones
    ours = (x @ w.numpy().T + b.numpy()) - (x @ w.numpy().T + b.numpy()).mean(1, keepdims=True)
    theirs = ref.decision_function(x) - ref.decision_function(x).mean(1, keepdims=True)
    assert np.abs(ours - theirs).max() < 2e-3
    assert report["max_abs_grad"] < 1e-4 and 0 < report["iterations"] < 500


def test_features_sampled_at_voxel_centres_equal_the_trilinear_upsampling_used_at_prediction():
    """Training samples features with grid_sample at each voxel's centre; prediction upsamples the class scores with
    F.interpolate. A linear classifier commutes with either only if both use one convention."""
    stride, grid = 4, (3, 5, 4)
    feats = torch.randn(6, *grid)
    up = F.interpolate(feats[None], size=[g * stride for g in grid], mode="trilinear", align_corners=False)[0]
    rng = np.random.default_rng(1)
    points = np.stack([rng.integers(0, g * stride, 50) for g in grid], 1)
    sampled = F.grid_sample(
        feats[None], _grid_coords(points, grid, stride).view(1, -1, 1, 1, 3), align_corners=False, padding_mode="border"
    )[0, :, :, 0, 0].T
    expected = up[:, points[:, 0], points[:, 1], points[:, 2]].T
    assert torch.allclose(sampled, expected, atol=1e-5)


def _case(label: np.ndarray, features: torch.Tensor, cid: str = "c") -> Encoded:
    return Encoded(cid, features.half(), label, (1.0, 1.0, 1.0), label.shape)


def test_balanced_sampling_is_undone_so_uninformative_features_predict_the_majority_class():
    """Classes sampled equally from a volume that is 97% background: with features that say nothing, the population
    posterior is the prior, and every voxel must be predicted background; without the correction it is a coin flip
    between the classes."""
    label = np.zeros((16, 16, 16), np.int64)
    label[:4, :4, :8] = 1  # 128 voxels
    label[12:, 12:, :] = 2  # 256 voxels
    case = _case(label, torch.zeros(5, 4, 4, 4))
    x, y, counts = sample_voxels([case], 3, 100, 4, np.random.default_rng(0))
    assert np.bincount(y.numpy()).tolist() == [100, 100, 100]
    assert counts.tolist() == [16**3 - 384, 128, 256]
    prior = prior_weights(counts, y)
    assert torch.allclose(prior * 1 / 3, torch.tensor(counts / counts.sum()).float(), atol=1e-6)
    probe = resolve_protocol("voxel_probe", "segmentation")()
    z = x + 1e-3 * torch.randn_like(x)  # no class information
    scores, trainable, _ = probe.fit(z, y, counts, torch.device("cpu"), np.random.default_rng(0))
    pred = scores(torch.zeros(5, 4, 4, 4)).argmax(0)
    assert trainable == 3 * 5 + 3 and (pred == 0).all()


def test_knn_votes_follow_the_formula_and_the_bank_keeps_an_equal_share_per_class():
    z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    bank, classes = _bank(z, y, 3, 3, np.random.default_rng(0))
    assert sorted(classes.tolist()) == [0, 1, 2]
    knn = resolve_protocol("knn_seg", "segmentation")
    probe = knn(knn.make_config({"k": 2, "temperature": 0.5, "bank_size": 600}))
    counts = np.array([1.0, 1.0, 1.0])
    scores, trainable, report = probe.fit(z, y, counts, torch.device("cpu"), np.random.default_rng(0))
    q = torch.tensor([0.8, 0.6])
    got = scores(q.view(2, 1, 1, 1)).flatten()
    sims = F.normalize(z, dim=1) @ F.normalize(q, dim=0)
    top = sims.topk(2).indices
    expected = torch.zeros(3)
    for i in top:
        expected[y[i]] += torch.exp(sims[i] / 0.5)
    # every class's bank share differs (2, 3, 1 voxels) but the train mix is 1:1:1: votes re-weighted by mix / share
    weight = torch.tensor([1 / 3, 1 / 3, 1 / 3]) / (torch.tensor([2.0, 3.0, 1.0]) / 6)
    assert trainable == 0 and report["bank"] == 6
    assert torch.allclose(got, expected * weight, atol=1e-5)


class _FixedBackbone(Backbone):
    """A stand-in encoder: ``mode="constant"`` ignores the image; ``mode="image"`` describes each voxel by its
    intensity (soft bins of it, average-pooled at strides 2 and 4, as two stage features)."""

    spatial_dims, feature_dim, in_channels = 3, 1, 1

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.encoder = nn.Identity()

    def encode(self, x: torch.Tensor, patch_hook=None) -> list[torch.Tensor]:
        bins = torch.cat([torch.exp(-(((x - c) / 0.05) ** 2)) for c in np.linspace(0, 1, 11)], 1)
        hs = [F.avg_pool3d(bins, 2), F.avg_pool3d(bins, 4)]
        if self.mode == "constant":
            hs = [torch.ones_like(h) for h in hs]
        return hs


@pytest.fixture(scope="module")
def smoke(data_dir):
    ds = DATASETS.get("smoke")(cache_dir=str(data_dir))
    ds.prepare(progress=False)
    return ds


def _ctx(ds, tmp_path, protocol: str, seed: int = 0, cache: dict | None = None) -> TransferContext:
    return TransferContext(
        export_path=tmp_path / "export.pt",
        dataset=ds,
        cell=Cell(SUITES.get("smoke").task("seg3"), protocol, 1.0, seed),
        run_dir=tmp_path / f"run-{protocol}-{seed}",
        device=torch.device("cpu"),
        preprocess=Preprocess(-175.0, 250.0),
        roi=(32, 32, 32),
        steps=1,
        batch_size=2,
        progress=False,
        cache={} if cache is None else cache,
    )


@pytest.mark.parametrize("protocol", ["voxel_probe", "knn_seg"])
def test_an_encoder_that_ignores_the_image_predicts_no_organ_and_one_that_carries_it_does(smoke, tmp_path, protocol):
    """The probes see the image only through the encoder: constant features give every voxel one class (foreground
    Dice 0 on every case), while features that carry the intensities segment organ 1, the one that intensity alone
    tells apart (organs 2 and 3 share an intensity in the smoke data)."""
    cls = resolve_protocol(protocol, "segmentation")
    blind = cls().probe(_ctx(smoke, tmp_path, protocol), _FixedBackbone("constant"))
    seeing = cls().probe(_ctx(smoke, tmp_path, protocol), _FixedBackbone("image"))
    assert {r["case"] for r in seeing.rows} == {r.id for r in smoke.records("test")}
    assert max(r["value"] for r in blind.rows if r["metric"] == "dice") == 0.0
    organ1 = [r["value"] for r in seeing.rows if r["metric"] == "dice" and r["class"] == 1]
    assert np.mean(organ1) > 0.5
    report = json.loads((tmp_path / f"run-{protocol}-0" / "probe.json").read_text())
    assert report["samples"] > 0 and report["fit_wall_s"] >= 0


def test_grid_features_concatenate_every_stage_on_one_grid():
    torch.manual_seed(0)
    net = GridFeatures(build_backbone("swin_unetr_tiny", num_heads=(1, 2, 4, 8)), 4).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 64, 64, 64))
    assert out.shape == (1, sum(12 * 2**i for i in range(5)), 16, 16, 16)


def test_cells_of_one_export_encode_each_volume_once(smoke, tmp_path, monkeypatch):
    """Features are the probes' cost: the cells of one pretraining (both probes, every seed) share them."""
    import monai.inferers

    calls = []
    real = monai.inferers.sliding_window_inference

    def counting(inputs, *args, **kwargs):
        calls.append(1)
        return real(inputs, *args, **kwargs)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", counting)
    cache: dict = {}
    backbone = _FixedBackbone("image")
    for protocol, seed in [("voxel_probe", 0), ("voxel_probe", 1), ("knn_seg", 0)]:
        resolve_protocol(protocol, "segmentation")().probe(_ctx(smoke, tmp_path, protocol, seed, cache), backbone)
    assert len(calls) == len(smoke.records("train")) + len(smoke.records("test"))


@pytest.mark.parametrize(
    "option, says",
    [({"grid_stride": 0}, "grid_stride"), ({"sw_overlap": 1.0}, "sw_overlap"), ({"l2": -1.0}, "l2")],
)
def test_bad_probe_options_are_refused_by_name(option, says):
    with pytest.raises(ValueError, match=says):
        resolve_protocol("voxel_probe", "segmentation").make_config(option)
