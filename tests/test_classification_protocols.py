"""Classification protocols: linear probe, finetune, kNN and few-shot on toy data with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.data import Preprocess
from bench.protocols import classification as C
from bench.protocols.base import TransferContext, protocol_values, resolve_protocol
from bench.suites import Cell, Task
from datasets.base import DatasetInfo, Record


class ToyImages:
    """16x16 images; class k lights quadrant k (multiclass) or each listed quadrant (multilabel)."""

    registry_name = "toy_images"

    def __init__(self, task: str, n: dict[str, int], noise: float = 0.3, seed: int = 0) -> None:
        labels = {0: "q0", 1: "q1", 2: "q2"} if task != "binary" else {0: "no", 1: "yes"}
        self.info = DatasetInfo(modality="XR", spatial_dims=2, task=task, labels=labels)
        rng = np.random.default_rng(seed)
        self.data: dict[str, list[tuple[Record, np.ndarray]]] = {}
        for split, count in n.items():
            items = []
            for i in range(count):
                if task == "multilabel":
                    classes = tuple(int(c) for c in np.flatnonzero(rng.random(3) < 0.4))
                else:
                    classes = (int(rng.integers(len(labels))),)
                img = rng.normal(0, noise, (1, 16, 16)).astype(np.float32)
                for c in classes:
                    r, q = divmod(c, 2)
                    img[0, 8 * r : 8 * r + 8, 8 * q : 8 * q + 8] += 1.0
                rid = f"{split}{i}"
                items.append((Record(rid, rid, f"{rid}.png", classes=classes), img))
            self.data[split] = items
        self.images = {r.id: img for items in self.data.values() for r, img in items}

    def records(self, split: str) -> list[Record]:
        return [r for r, _ in self.data[split]]

    def load(self, record: Record) -> dict:
        return {"id": record.id, "image": self.images[record.id] + 1.0, "spacing": (1.0, 1.0), "label": None}


class ToyBackbone(nn.Module):
    """pooled = a learnable linear map of 4x4 average-pooled intensities (linearly separable for ToyImages)."""

    spatial_dims, in_channels, feature_dim = 2, 1, 16

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)
        with torch.no_grad():
            noise = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
            self.proj.weight.copy_(torch.eye(16) + 0.01 * noise)
            self.proj.bias.zero_()

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


@pytest.fixture
def toy_export(monkeypatch):
    monkeypatch.setattr(C, "load_export", lambda path: (ToyBackbone(), {}))
    monkeypatch.setattr(C, "load_extras", lambda path: {})


def _ctx(ds, tmp_path: Path, protocol: str, steps: int = 60, fraction: float = 1.0) -> TransferContext:
    task = Task("toy", "toy_images", "classification", (protocol,), metric="auroc")
    return TransferContext(
        export_path=tmp_path / "export.pt",
        dataset=ds,
        cell=Cell(task, protocol, fraction, 0),
        run_dir=tmp_path / "run",
        device=torch.device("cpu"),
        preprocess=Preprocess(0.0, 3.0),
        roi=(16, 16),
        steps=steps,
        batch_size=16,
        progress=False,
    )


def _overall(result, metric="auroc") -> list[float]:
    return [r["value"] for r in result.rows if r["class"] == -1 and r["metric"] == metric]


N = {"train": 60, "val": 20, "test": 40}


@pytest.mark.parametrize("task", ["multiclass", "multilabel", "binary"])
@pytest.mark.parametrize("protocol", ["linear_probe", "knn"])
def test_separable_toy_features_are_classified_almost_perfectly(toy_export, tmp_path, task, protocol):
    cls = resolve_protocol(protocol, "classification")
    cfg = cls.make_config({"steps": 150, "lr": 0.01} if protocol == "linear_probe" else {})
    res = cls(cfg).run(_ctx(ToyImages(task, N), tmp_path, protocol))
    (auc,) = _overall(res)
    assert auc > 0.98, res.rows
    per_class = [r for r in res.rows if r["metric"] == "auroc" and r["class"] >= 0]
    assert len(per_class) == (1 if task == "binary" else 3)
    assert bool(_overall(res, "accuracy")) == (task != "multilabel")


@pytest.mark.parametrize("task", ["multiclass", "multilabel", "binary"])
@pytest.mark.parametrize("protocol", ["linear_probe", "knn", "finetune"])
def test_stored_per_image_predictions_reproduce_the_stored_auroc(toy_export, tmp_path, task, protocol):
    """The leaderboard bootstraps test images from the pred_score / pred_target rows: they must hold every test
    image once per scored class and give back exactly the AUROC the cell stored."""
    from bench.stats import mean_auroc

    cls = resolve_protocol(protocol, "classification")
    res = cls(cls.make_config({"steps": 20} if protocol == "linear_probe" else {})).run(
        _ctx(ToyImages(task, N), tmp_path, protocol, steps=20)
    )
    scored = sorted({r["class"] for r in res.rows if r["metric"] == "auroc" and r["class"] >= 0})
    frame = {(r["case"], r["class"], r["metric"]): r["value"] for r in res.rows if r["metric"].startswith("pred_")}
    images = sorted({k[0] for k in frame})
    assert len(images) == N["test"] and len(frame) == 2 * N["test"] * len(scored)
    s = np.array([[frame[i, c, "pred_score"] for c in scored] for i in images])
    y = np.array([[frame[i, c, "pred_target"] for c in scored] for i in images])
    (auc,) = _overall(res)
    assert mean_auroc(s, y) == pytest.approx(auc, abs=1e-9)


def test_finetune_trains_the_encoder_and_selects_on_val(toy_export, tmp_path):
    ctx = _ctx(ToyImages("multiclass", N), tmp_path, "finetune", steps=60)
    cls = resolve_protocol("finetune", "classification")
    res = cls(cls.make_config({"lr": 1e-2, "warmup_fraction": 0.0})).run(ctx)
    assert _overall(res)[0] > 0.95
    assert res.trainable_params == res.params > 16 * 16
    assert (ctx.run_dir / "best.pt").is_file()


def test_few_shot_stores_one_case_per_draw_with_k_examples_per_class(toy_export, tmp_path):
    cls = resolve_protocol("few_shot", "classification")
    res = cls(cls.make_config({"shots": 3, "draws": 4, "steps": 60})).run(
        _ctx(ToyImages("multiclass", N), tmp_path, "few_shot")
    )
    assert sorted({r["case"] for r in res.rows}) == [f"draw{d}" for d in range(4)]
    assert min(_overall(res)) > 0.9


def test_few_shot_indices_take_k_per_class_and_differ_between_draws():
    y = np.repeat(np.arange(3), 10)
    space = C.LabelSpace("multiclass", {0: "a", 1: "b", 2: "c"})
    a, b = C.few_shot_indices(y, space, 4, seed=0), C.few_shot_indices(y, space, 4, seed=1)
    assert np.bincount(y[a], minlength=3).tolist() == [4, 4, 4]
    assert not np.array_equal(a, b)
    assert np.array_equal(a, C.few_shot_indices(y, space, 4, seed=0))
    # a class with fewer examples than k contributes all it has
    small = np.array([0, 0, 1, 2, 2, 2])
    assert np.bincount(small[C.few_shot_indices(small, space, 2, seed=0)]).tolist() == [2, 1, 2]


def test_knn_votes_match_a_hand_computed_case():
    space = C.LabelSpace("multiclass", {0: "a", 1: "b"})
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([0, 1, 1])
    test = torch.tensor([[1.0, 0.2]])
    t = 0.5
    got = C.knn_scores(train, y, test, space, k=2, temperature=t)
    # cosine similarities to the three training points; the two nearest are points 0 and 2
    q = np.array([1.0, 0.2]) / np.hypot(1.0, 0.2)
    s0, s2 = q @ [1, 0], q @ (np.array([1, 1]) / np.sqrt(2))
    w0, w2 = np.exp(s0 / t), np.exp(s2 / t)
    np.testing.assert_allclose(got[0], [w0 / (w0 + w2), w2 / (w0 + w2)], rtol=1e-5)


def test_knn_is_deterministic_given_the_encoder_whatever_the_seed(toy_export, tmp_path):
    """kNN is one run per encoder: another transfer seed (and other global RNG states) gives identical rows."""
    from dataclasses import replace

    from bench.protocols.base import is_deterministic

    assert C.KNN.deterministic and is_deterministic("knn", "classification")
    assert not any(is_deterministic(p, "classification") for p in ("linear_probe", "finetune", "few_shot"))
    assert not is_deterministic("finetune", "segmentation") and not is_deterministic("knn", "segmentation")
    assert not is_deterministic("nosuch", "classification")
    ds, cls = ToyImages("multiclass", N), resolve_protocol("knn", "classification")
    results = []
    for seed in (0, 1):
        torch.manual_seed(100 + seed)
        np.random.seed(200 + seed)
        ctx = _ctx(ds, tmp_path / f"s{seed}", "knn", fraction=0.5)
        ctx.cell = replace(ctx.cell, seed=seed)
        results.append(cls(cls.make_config({})).run(ctx))
    assert results[0].rows == results[1].rows and results[0].summary == results[1].summary


def test_label_space_errors_name_the_record():
    space = C.LabelSpace("multiclass", {0: "a", 1: "b"})
    with pytest.raises(ValueError, match="rec7.*not in the label map"):
        space.target((5,), "rec7")
    with pytest.raises(ValueError, match="rec8.*exactly one class"):
        space.target((0, 1), "rec8")
    ml = C.LabelSpace("multilabel", {3: "x", 7: "y"})
    assert ml.target((), "r").tolist() == [0, 0] and ml.target((7,), "r").tolist() == [0, 1]


def test_rgb_images_are_averaged_for_a_grey_encoder_and_too_few_channels_fail():
    x = torch.stack([torch.zeros(4, 4), torch.ones(4, 4), 2 * torch.ones(4, 4)])
    assert torch.allclose(C._match_channels(x, 1, "r"), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="r9: image has 1 channel"):
        C._match_channels(x[:1], 3, "r9")


def test_protocol_families_share_a_name_across_task_kinds():
    from bench.protocols import segmentation

    assert resolve_protocol("linear_probe", "segmentation") is segmentation.LinearProbe
    assert resolve_protocol("linear_probe", "classification") is C.LinearProbe
    with pytest.raises(ValueError, match="knn.*no implementation for segmentation"):
        resolve_protocol("knn", "segmentation")
    values = {"name": "linear_probe", "segmentation": {"lr": 1.0}, "classification": {"steps": 3}}
    assert protocol_values(values, "classification") == {"steps": 3}
    assert protocol_values({"name": "x", "k": 1}, "classification") == {"k": 1}
